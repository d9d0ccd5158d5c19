/* The dtproc command's target: known call counts, several returns, IFUNCs, dlopen, exec.
 * usage: cli_target MODE [N]
 *   count N   : calls work() N times, work2() 2N times, strlen() N times; prints the counts
 *   ret N     : calls pick(i) N times (pick has two returns); prints how many took each
 *   loop      : prints "ready", then calls work() forever, printing a checksum every 2^16 calls
 *   dlopen P  : dlopens plugin P, calls its plugin_work() 3 times, dlcloses it
 *   exec N    : calls work() once, then execs itself with N-1 (ends at 0)
 *   args      : calls six_args(1, 2, 3, 4, 5, 6) and eight_args(..., 7, 8)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

volatile long sink;

__attribute__((noinline)) long work(long x) { return sink += x; }
__attribute__((noinline)) long work2(long x) { return sink ^= x; }

__attribute__((noinline)) int pick(int i) {
    if (i % 3 == 0) { sink++; return 1; }
    sink--;
    return 2;
}

__attribute__((noinline)) long six_args(long a, long b, long c, long d, long e, long f) {
    return sink = a + b + c + d + e + f;
}

__attribute__((noinline)) long eight_args(long a, long b, long c, long d, long e, long f,
                                          long g, long h) {
    return sink = a + b + c + d + e + f + g + h;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "count";
    long n = argc > 2 ? atol(argv[2]) : 10;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(mode, "count")) {
        char buf[32];
        size_t total = 0;
        for (long i = 0; i < n; i++) {
            work(i);
            work2(i);
            work2(i + 1);
            snprintf(buf, sizeof buf, "%ld", i);
            total += strlen(buf);
        }
        printf("work=%ld work2=%ld strlen=%ld total=%zu\n", n, 2 * n, n, total);
        return 0;
    }
    if (!strcmp(mode, "ret")) {
        long ones = 0, twos = 0;
        for (long i = 0; i < n; i++) {
            if (pick((int)i) == 1) ones++; else twos++;
        }
        printf("ones=%ld twos=%ld\n", ones, twos);
        return 0;
    }
    if (!strcmp(mode, "loop")) {
        printf("ready %d\n", getpid());
        for (unsigned long i = 0;; i++) {
            work((long)i);
            if ((i & 0xffff) == 0) printf("tick %lu %ld\n", i >> 16, (long)(sink & 0xff));
        }
    }
    if (!strcmp(mode, "dlopen")) {
        void *h = dlopen(argv[2], RTLD_NOW);
        if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
        long (*fn)(long) = (long (*)(long))dlsym(h, "plugin_work");
        for (int i = 0; i < 3; i++) fn(i);
        dlclose(h);
        printf("plugin done\n");
        return 0;
    }
    if (!strcmp(mode, "exec")) {
        work(n);
        if (n <= 0) { printf("exec done\n"); return 0; }
        char next[16];
        snprintf(next, sizeof next, "%ld", n - 1);
        execl("/proc/self/exe", argv[0], "exec", next, (char *)NULL);
        return 127;
    }
    if (!strcmp(mode, "args")) {
        six_args(1, 2, 3, 4, 5, 6);
        eight_args(1, 2, 3, 4, 5, 6, 7, 8);
        return 0;
    }
    return 2;
}
