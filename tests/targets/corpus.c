/* One target, many behaviours: the transparency corpus for the Tracee core.
 * usage: corpus MODE [ARG]
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_signal(int sig) {
    char buf[48];
    int n = snprintf(buf, sizeof buf, "caught %d\n", sig);
    write(1, buf, n);
}

static long iterations = 200000;

static void *worker(void *arg) {
    long id = (long)arg, sum = 0;
    for (long i = 0; i < iterations; i++) sum += (i * (id + 1)) % 7;
    return (void *)sum;
}

static int mode_threads(int n) {
    pthread_t t[64];
    for (long i = 0; i < n; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    for (int i = 0; i < n; i++) {
        void *res;
        pthread_join(t[i], &res);
        printf("thread %d sum %ld\n", i, (long)res);
    }
    return 0;
}

static int mode_fork(void) {
    pid_t a = fork();
    if (a == 0) { printf("fork child\n"); fflush(stdout); _exit(7); }
    int sa, sb;
    waitpid(a, &sa, 0);
    pid_t b = vfork();
    if (b == 0) { execl("/bin/echo", "echo", "vfork child", (char *)NULL); _exit(127); }
    waitpid(b, &sb, 0);
    printf("fork status %d vfork status %d\n", WEXITSTATUS(sa), WEXITSTATUS(sb));
    return 0;
}

static int mode_catch(void) {
    int sigs[] = {SIGUSR1, SIGUSR2, SIGALRM, SIGTERM, SIGCHLD, SIGWINCH, SIGTRAP};
    for (unsigned i = 0; i < sizeof sigs / sizeof sigs[0]; i++) signal(sigs[i], on_signal);
    for (unsigned i = 0; i < sizeof sigs / sizeof sigs[0]; i++) raise(sigs[i]);
    signal(SIGINT, SIG_IGN);
    raise(SIGINT);
    alarm(1);
    pause();
    printf("done\n");
    return 3;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "exit";
    int arg = argc > 2 ? atoi(argv[2]) : 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(mode, "exit")) {
        printf("to stdout\n");
        fprintf(stderr, "to stderr\n");
        return arg;
    }
    if (!strcmp(mode, "signal")) { raise(arg); return 99; }
    if (!strcmp(mode, "abort")) abort();
    if (!strcmp(mode, "segv")) { volatile int *p = NULL; return *p; }
    if (!strcmp(mode, "int3")) { __asm__ volatile("int3"); return 5; }
    if (!strcmp(mode, "catch")) return mode_catch();
    if (!strcmp(mode, "threads")) {
        if (argc > 3) iterations = atol(argv[3]);
        return mode_threads(arg ? arg : 8);
    }
    if (!strcmp(mode, "fork")) return mode_fork();
    if (!strcmp(mode, "exec")) {
        if (arg <= 0) { printf("exec chain done\n"); return 11; }
        char next[16];
        snprintf(next, sizeof next, "%d", arg - 1);
        execl("/proc/self/exe", argv[0], "exec", next, (char *)NULL);
        return 127;
    }
    if (!strcmp(mode, "ticker")) {
        for (long i = 0;; i++) { printf("tick %ld\n", i); usleep(5000); }
    }
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
