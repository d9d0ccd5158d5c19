/* Target for the uprobe backend tests: the same workload under both probe backends.
 *
 *   ub_push(a, b): asm, starts with `push %rbp` (the kernel emulates it); no CFI, so an
 *                  unwinder must read its code to see the prologue
 *   ub_rip(a, b):  asm, starts with `mov disp(%rip), %rax` (the kernel single-steps it)
 *   ub_leaf(a):    C with CFI, reached through ub_top -> ub_mid (stacks to unwind)
 *   ub_many(...):  eight arguments: arg6 and arg7 are on the stack at entry
 *   ub_cond(a):    asm: a conditional tail call to ub_leaf when a != 0, else returns -1
 * All return something computed from their arguments (return probes see it in rax).
 *
 * Usage: ub_work [wait] N THREADS
 *   Each of THREADS threads (0: the main thread itself) runs the loop N times.
 *   "wait": print "ready pid=P" and wait for a byte on stdin before starting (the threads
 *   are created then), print "done sum=S" after, then run again for each "g" read from
 *   stdin; any other byte or EOF ends the program.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

long ub_global;

long ub_push(long a, long b);
long ub_rip(long a, long b);
long ub_cond(long a);

__asm__(".text\n"
        ".globl ub_push\n.type ub_push,@function\n"
        "ub_push:\n"
        "  push %rbp\n"
        "  mov %rsp, %rbp\n"
        "  lea (%rdi,%rsi), %rax\n"
        "  pop %rbp\n"
        "  ret\n"
        ".size ub_push, .-ub_push\n"
        ".globl ub_rip\n.type ub_rip,@function\n"
        "ub_rip:\n"
        "  mov ub_global(%rip), %rax\n"
        "  add %rdi, %rax\n"
        "  mov %rax, ub_global(%rip)\n"
        "  lea (%rdi,%rsi), %rax\n"
        "  ret\n"
        ".size ub_rip, .-ub_rip\n"
        ".globl ub_cond\n.type ub_cond,@function\n"
        "ub_cond:\n"
        "  test %rdi, %rdi\n"
        "  jne ub_leaf\n"
        "  mov $-1, %rax\n"
        "  ret\n"
        ".size ub_cond, .-ub_cond\n");

__attribute__((noinline)) long ub_leaf(long a) {
    __asm__ volatile("" ::: "memory");
    return a * 2 + 1;
}

__attribute__((noinline)) long ub_mid(long a) { return ub_leaf(a + 1) + 1; }

__attribute__((noinline)) long ub_top(long a) { return ub_mid(a) + 1; }

__attribute__((noinline)) long ub_many(long a, long b, long c, long d, long e, long f, long g,
                                       long h) {
    __asm__ volatile("" ::: "memory");
    return a + b + c + d + e + f + g + h;
}

static long n_loops;

static long loop(void) {
    long sum = 0;
    for (long i = 0; i < n_loops; i++) {
        sum += ub_push(i, 3 * i + 7);
        sum += ub_rip(i, 5 * i + 1);
        sum += ub_top(i);
        sum += ub_many(i, 1, 2, 3, 4, 5, 6 * i, 7 * i);
        sum += ub_cond(i % 3);
    }
    return sum;
}

static void *thread_main(void *arg) {
    *(long *)arg = loop();
    return NULL;
}

static long run(int threads) {
    if (threads == 0)
        return loop();
    pthread_t tids[64];
    long sums[64];
    for (int t = 0; t < threads; t++) {
        int err = pthread_create(&tids[t], NULL, thread_main, &sums[t]);
        if (err) {
            fprintf(stderr, "pthread_create: %s\n", strerror(err));
            exit(3);
        }
    }
    long sum = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(tids[t], NULL);
        sum += sums[t];
    }
    return sum;
}

static int read_byte(void) {
    char c;
    return read(0, &c, 1) == 1 ? c : -1;
}

int main(int argc, char **argv) {
    int handshake = argc > 1 && !strcmp(argv[1], "wait");
    if (handshake) {
        argv++;
        argc--;
    }
    if (argc < 3) {
        fprintf(stderr, "usage: ub_work [wait] N THREADS\n");
        return 2;
    }
    n_loops = atol(argv[1]);
    int threads = atoi(argv[2]);
    if (threads > 64)
        threads = 64;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!handshake) {
        run(threads);
        return 0;
    }
    printf("ready pid=%d\n", getpid());
    read_byte();
    do
        printf("done sum=%ld\n", run(threads));
    while (read_byte() == 'g');
    return 0;
}
