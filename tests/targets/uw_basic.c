/* Target for tests/test_unwind_offline.py and tests/test_cfi.py: stacks of every shape a C
 * unwinder meets.  Each scenario ends in uw_leaf(tag), where the test's gdb breakpoint sits;
 * the tag (first argument, in %rdi) says which scenario the stop belongs to.
 *
 *   1  a plain call chain with frames of different sizes (and a variable-length array)
 *   2  a qsort comparator: the leaf is called from inside libc
 *   3  a signal handler run by raise(): the stack goes through glibc's __restore_rt
 *   4  a signal handler whose restorer is our own code without CFI (raw rt_sigaction)
 *   5  recursion UW_DEPTH deep
 *   6  a second thread
 *   7  clock_gettime, so a breakpoint in the vDSO sees a stack through it
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define UW_DEPTH 200

volatile int uw_sink;

/* The local array gives the leaf a stack frame, so a frame-pointer build pushes %rbp. */
__attribute__((noinline)) void uw_leaf(int tag) {
    volatile int scratch[4];
    scratch[tag & 3] = tag;
    uw_sink += scratch[tag & 3];
}

/* 1: frames of different sizes; results are used after each call so no call is a tail call. */
__attribute__((noinline)) static int uw_chain_c(int x) {
    volatile char buf[48];
    buf[0] = (char)x;
    uw_leaf(1);
    return buf[0] + 1;
}

__attribute__((noinline)) static int uw_chain_b(int n) {
    volatile char vla[n + 16]; /* makes %rbp the CFA register */
    vla[0] = (char)n;
    return uw_chain_c(vla[0]) + vla[0];
}

__attribute__((noinline)) static int uw_chain_a(int n) {
    int r = uw_chain_b(n + 1);
    return r * 3 + uw_sink;
}

/* 2 */
static int uw_compared;

static int uw_compare(const void *a, const void *b) {
    if (!uw_compared++)
        uw_leaf(2);
    return *(const int *)a - *(const int *)b;
}

__attribute__((noinline)) static void uw_sort(void) {
    int values[64];
    for (int i = 0; i < 64; i++)
        values[i] = (i * 37) % 64;
    qsort(values, 64, sizeof values[0], uw_compare);
    uw_sink += values[0];
}

/* 3 */
static void uw_handler(int sig) {
    uw_leaf(sig == SIGUSR1 ? 3 : 4);
    uw_sink++;
}

__attribute__((noinline)) static void uw_signal(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = uw_handler;
    sigaction(SIGUSR1, &sa, NULL);
    raise(SIGUSR1);
    uw_sink++;
}

/* 4: rt_sigreturn without CFI, right after a function with CFI, so the row for pc - 1 (the
 * return address of the handler is uw_restorer itself) describes the wrong code. */
void uw_restorer(void);
__asm__(".text\n"
        ".type uw_before_restorer, @function\n"
        "uw_before_restorer:\n"
        "  .cfi_startproc\n"
        "  ret\n"
        "  .cfi_endproc\n"
        ".size uw_before_restorer, .-uw_before_restorer\n"
        ".globl uw_restorer\n"
        ".type uw_restorer, @function\n"
        "uw_restorer:\n"
        "  mov $15, %rax\n"
        "  syscall\n"
        "  hlt\n"
        ".size uw_restorer, .-uw_restorer\n");

struct uw_kernel_sigaction {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)(void);
    unsigned long mask;
};

#define UW_SA_RESTORER 0x04000000UL

__attribute__((noinline)) static void uw_own_restorer(void) {
    struct uw_kernel_sigaction ksa = {uw_handler, UW_SA_RESTORER, uw_restorer, 0};
    syscall(SYS_rt_sigaction, SIGUSR2, &ksa, NULL, sizeof ksa.mask);
    syscall(SYS_tgkill, getpid(), gettid(), SIGUSR2);
    uw_sink++;
}

/* 5 */
__attribute__((noinline)) static int uw_recurse(int n) {
    volatile int here = n; /* read after the call: no tail-recursion elimination */
    if (n == 0) {
        uw_leaf(5);
        return 0;
    }
    return uw_recurse(n - 1) + here;
}

/* 6 */
static void *uw_thread(void *arg) {
    uw_leaf(6);
    return arg;
}

__attribute__((noinline)) static void uw_threaded(void) {
    pthread_t t;
    pthread_create(&t, NULL, uw_thread, NULL);
    pthread_join(t, NULL);
}

/* 7 */
__attribute__((noinline)) static void uw_vdso(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uw_sink += (int)ts.tv_nsec & 1;
}

int main(int argc, char **argv) {
    const char *which = argc > 1 ? argv[1] : "1234567";
    if (strchr(which, '1'))
        uw_sink += uw_chain_a(argc);
    if (strchr(which, '2'))
        uw_sort();
    if (strchr(which, '3'))
        uw_signal();
    if (strchr(which, '4'))
        uw_own_restorer();
    if (strchr(which, '5'))
        uw_sink += uw_recurse(UW_DEPTH);
    if (strchr(which, '6'))
        uw_threaded();
    if (strchr(which, '7'))
        uw_vdso();
    return 0;
}
