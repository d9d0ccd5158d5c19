/* Target for tests/test_ustack.py and bench/bench_ustack.py: threads parked deep in a stack.
 *
 * usage: us_deep DEPTH [THREADS]
 *
 * The main thread (and each of THREADS more) recurses DEPTH calls into us_recurse and parks in
 * pause(), so a debugger that attaches finds DEPTH + 1 us_recurse frames between the libc
 * frame of pause() and main (or start_thread).  Every thread is parked once each one's
 * /proc/PID/task/TID/syscall shows pause (34).
 */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

static volatile int us_sink;

__attribute__((noinline)) static int us_recurse(int n) {
    volatile int here = n; /* read after the call: no tail-recursion elimination */
    if (n == 0) {
        for (;;)
            pause();
    }
    return us_recurse(n - 1) + here;
}

static void *us_thread(void *arg) {
    us_sink += us_recurse((int)(long)arg);
    return NULL;
}

int main(int argc, char **argv) {
    int depth = argc > 1 ? atoi(argv[1]) : 15;
    int threads = argc > 2 ? atoi(argv[2]) : 0;
    for (int i = 0; i < threads; i++) {
        pthread_t t;
        pthread_create(&t, NULL, us_thread, (void *)(long)depth);
    }
    us_sink += us_recurse(depth);
    return us_sink;
}
