/* The rtld agent's target: loads and unloads libraries in a loop.
 * usage: rtld_loop MODE N LIB...
 *   loop    N: dlopen, call plugin_work, dlclose, N times, taking the LIBs in turn
 *   wait    N: print "ready", wait for a line on stdin, then as loop
 *   threads N: one thread per LIB, each loops N times over its own LIB (the main thread
 *              only waits), so every load happens off the main thread, several at once
 *   newlm   N: as loop, but each load goes into a new namespace (dlmopen LM_ID_NEWLM)
 *   hold    N: dlmopen every LIB into a new namespace, print "loaded", wait for a line
 * Prints the sum of the plugin_work results and exits 0; exits 2 on a dl error. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef long (*work_fn)(long);

static long iterations;

static void *load(const char *lib, int newlm) {
    void *h = newlm ? dlmopen(LM_ID_NEWLM, lib, RTLD_NOW | RTLD_LOCAL)
                    : dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        fprintf(stderr, "rtld_loop: %s\n", dlerror());
        exit(2);
    }
    return h;
}

static long once(const char *lib, long i, int newlm) {
    void *h = load(lib, newlm);
    work_fn work = (work_fn)dlsym(h, "plugin_work");
    if (work == NULL) {
        fprintf(stderr, "rtld_loop: %s\n", dlerror());
        exit(2);
    }
    long r = work(i);
    if (dlclose(h) != 0) {
        fprintf(stderr, "rtld_loop: %s\n", dlerror());
        exit(2);
    }
    return r;
}

static long loop(char **libs, int nlibs, int newlm) {
    long sum = 0;
    for (long i = 0; i < iterations; i++)
        sum += once(libs[i % nlibs], i, newlm);
    return sum;
}

static void *worker(void *lib) {
    long sum = 0;
    for (long i = 0; i < iterations; i++)
        sum += once(lib, i, 0);
    return (void *)sum;
}

static long threads(char **libs, int nlibs) {
    pthread_t tids[16];
    long sum = 0;
    if (nlibs > 16)
        nlibs = 16;
    for (int i = 0; i < nlibs; i++)
        pthread_create(&tids[i], NULL, worker, libs[i]);
    for (int i = 0; i < nlibs; i++) {
        void *r;
        pthread_join(tids[i], &r);
        sum += (long)r;
    }
    return sum;
}

static void wait_line(const char *say) {
    char line[16];
    printf("%s\n", say);
    fflush(stdout);
    if (fgets(line, sizeof line, stdin) == NULL)
        exit(2);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: rtld_loop MODE N LIB...\n");
        return 2;
    }
    const char *mode = argv[1];
    iterations = atol(argv[2]);
    char **libs = argv + 3;
    int nlibs = argc - 3;
    long sum;
    if (strcmp(mode, "threads") == 0) {
        sum = threads(libs, nlibs);
    } else if (strcmp(mode, "hold") == 0) {
        for (int i = 0; i < nlibs; i++)
            load(libs[i], 1);
        wait_line("loaded");
        sum = 0;
    } else {
        if (strcmp(mode, "wait") == 0)
            wait_line("ready");
        sum = loop(libs, nlibs, strcmp(mode, "newlm") == 0);
    }
    printf("sum %ld\n", sum);
    return 0;
}
