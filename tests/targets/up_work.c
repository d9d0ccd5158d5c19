/* Target for uprobe tests: two probe functions whose first instruction is fixed by asm.
 *
 *   work_push(a, b): starts with `push %rbp` (the kernel emulates it: no single-step)
 *   work_rip(a, b):  starts with `mov disp(%rip), %rax` (the kernel single-steps it
 *                    out of line)
 * Both return a + b (work_rip also adds to a global).
 *
 * Usage: up_work [auto] MODE N [THREADS]
 *   MODE count:   the main thread calls work_push(i, 3i+7) and work_rip(i, 5i+1), i < N
 *   MODE push, rip: the main thread calls only that one function N times (for benchmarks)
 *   MODE threads: THREADS threads (created after "go") each run the count loop
 *   MODE fork:    the count loop in the parent, then a forked child runs it twice
 *   MODE stack:   work_push(&buf, i) where buf is a stack array holding STACK_MAGIC, i
 *   MODE exec:    exec this program again as "up_work auto threads N THREADS"
 *   MODE sem:     like count, but a call only happens while up_sem (a USDT-style
 *                 semaphore in .probes) is non-zero; prints how many calls it made
 * Protocol (unless "auto"): print "ready pid=P push=A rip=A sem=A", wait for a byte on
 * stdin, run, print "done sum=S ns=T calls=C" (T: loop time), wait for a byte or EOF, call
 * work_push(-1, -1) once more (a hit that makes the kernel flush a pending LOST record), exit.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define STACK_MAGIC 0x5ca1ab1e0ddba11ULL

long up_global;
volatile unsigned short up_sem __attribute__((section(".probes"), used));

long work_push(long a, long b);
long work_rip(long a, long b);

__asm__(".text\n"
        ".globl work_push\n.type work_push,@function\n"
        "work_push:\n"
        "  push %rbp\n"
        "  mov %rsp, %rbp\n"
        "  lea (%rdi,%rsi), %rax\n"
        "  pop %rbp\n"
        "  ret\n"
        ".size work_push, .-work_push\n"
        ".globl work_rip\n.type work_rip,@function\n"
        "work_rip:\n"
        "  mov up_global(%rip), %rax\n"
        "  add %rdi, %rax\n"
        "  mov %rax, up_global(%rip)\n"
        "  lea (%rdi,%rsi), %rax\n"
        "  ret\n"
        ".size work_rip, .-work_rip\n");

static long n_calls;
static long calls_made;

static long count_loop(long n) {
    long sum = 0;
    for (long i = 0; i < n; i++) {
        sum += work_push(i, 3 * i + 7);
        sum += work_rip(i, 5 * i + 1);
    }
    return sum;
}

static long one_loop(long (*fn)(long, long), long n) {
    long sum = 0;
    for (long i = 0; i < n; i++)
        sum += fn(i, 1);
    return sum;
}

static void *thread_main(void *arg) {
    (void)arg;
    count_loop(n_calls);
    return NULL;
}

static long stack_loop(long n) {
    long sum = 0;
    for (long i = 0; i < n; i++) {
        volatile uint64_t buf[4] = {STACK_MAGIC, (uint64_t)i, ~STACK_MAGIC, 0};
        sum += work_push((long)buf, i);
    }
    return sum;
}

static long sem_loop(long n) {
    long sum = 0;
    for (long i = 0; i < n; i++) {
        if (up_sem) {
            sum += work_push(i, 3 * i + 7);
            calls_made++;
        }
    }
    return sum;
}

static long run(const char *mode, long n, int threads) {
    if (!strcmp(mode, "count"))
        return count_loop(n);
    if (!strcmp(mode, "push"))
        return one_loop(work_push, n);
    if (!strcmp(mode, "rip"))
        return one_loop(work_rip, n);
    if (!strcmp(mode, "stack"))
        return stack_loop(n);
    if (!strcmp(mode, "sem"))
        return sem_loop(n);
    if (!strcmp(mode, "threads")) {
        pthread_t tids[64];
        n_calls = n;
        for (int t = 0; t < threads; t++) {
            int err = pthread_create(&tids[t], NULL, thread_main, NULL);
            if (err) {
                fprintf(stderr, "pthread_create: %s\n", strerror(err));
                exit(3);
            }
        }
        for (int t = 0; t < threads; t++)
            pthread_join(tids[t], NULL);
        return 0;
    }
    if (!strcmp(mode, "fork")) {
        long sum = count_loop(n);
        pid_t child = fork();
        if (child < 0) {
            perror("fork");
            exit(3);
        }
        if (child == 0) {
            count_loop(2 * n);
            _exit(0);
        }
        int status;
        waitpid(child, &status, 0);
        return sum;
    }
    if (!strcmp(mode, "exec")) {
        char nbuf[32], tbuf[32];
        snprintf(nbuf, sizeof nbuf, "%ld", n);
        snprintf(tbuf, sizeof tbuf, "%d", threads);
        execl("/proc/self/exe", "up_work", "auto", "threads", nbuf, tbuf, (char *)NULL);
        perror("execl");
        exit(3);
    }
    fprintf(stderr, "unknown mode %s\n", mode);
    exit(2);
}

static void wait_byte(void) {
    char c;
    if (read(0, &c, 1) < 0)
        perror("read");
}

int main(int argc, char **argv) {
    int handshake = 1;
    if (argc > 1 && !strcmp(argv[1], "auto")) {
        handshake = 0;
        argv++;
        argc--;
    }
    if (argc < 3) {
        fprintf(stderr, "usage: up_work [auto] MODE N [THREADS]\n");
        return 2;
    }
    const char *mode = argv[1];
    long n = atol(argv[2]);
    int threads = argc > 3 ? atoi(argv[3]) : 8;
    if (threads > 64)
        threads = 64;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (handshake) {
        printf("ready pid=%d push=%p rip=%p sem=%p\n", getpid(), (void *)work_push,
               (void *)work_rip, (void *)&up_sem);
        wait_byte();
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long sum = run(mode, n, threads);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ns = (t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec);
    printf("done sum=%ld ns=%ld calls=%ld\n", sum, ns, calls_made);
    if (handshake) {
        wait_byte();
        work_push(-1, -1);
    }
    return 0;
}
