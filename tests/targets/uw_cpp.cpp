/* Target for tests/test_unwind_offline.py: C++ stacks with inlining and exceptions in flight.
 * Each scenario ends in uw_leaf(tag), where the test's gdb breakpoint sits:
 *
 *   10  a local's destructor run by a landing pad while an exception propagates
 *   11  a catch block
 *   12  the exception object's destructor, run from __cxa_end_catch inside libstdc++
 *   13  a callback of _Unwind_Backtrace, inside libgcc's unwinder
 */
#include <cstdio>
#include <stdexcept>
#include <unwind.h>

extern "C" __attribute__((noinline)) void uw_leaf(int tag) {
    static volatile int sink;
    sink += tag;
    asm volatile("" ::: "memory");
}

struct Guard {
    int tag;
    ~Guard() { uw_leaf(tag); }
};

struct Boom {
    int tag;
    ~Boom() { uw_leaf(tag); }
};

static volatile int uw_flag = 1;

inline int may_throw(int x) {
    Guard g{10};
    if (x && uw_flag)
        throw std::runtime_error("uw");
    return x;
}

__attribute__((noinline)) static int catcher(int x) {
    try {
        return may_throw(x);
    } catch (const std::exception &) {
        uw_leaf(11);
        return -1;
    }
}

__attribute__((noinline)) static void boom() {
    try {
        throw Boom{12};
    } catch (const Boom &) {
        uw_flag = 1;
    }
}

static _Unwind_Reason_Code trace(struct _Unwind_Context *, void *arg) {
    int *calls = static_cast<int *>(arg);
    if ((*calls)++ == 0)
        uw_leaf(13);
    return _URC_NO_REASON;
}

__attribute__((noinline)) static void backtrace() {
    int calls = 0;
    _Unwind_Backtrace(trace, &calls);
    std::printf("%d\n", calls > 0);
}

int main() {
    int r = catcher(1);
    boom();
    backtrace();
    return r == -1 ? 0 : 1;
}
