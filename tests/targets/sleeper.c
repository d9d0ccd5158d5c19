/* A target that reports readiness on stdout, then sleeps; optional threads and signal handlers.
 * usage: sleeper [nthreads] [catch-signals]   (catch-signals: 1 = install handlers printing "caught N")
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t last;

static void handler(int sig) {
    char buf[32];
    int n = snprintf(buf, sizeof buf, "caught %d\n", sig);
    write(1, buf, n);
    last = sig;
}

static void *spin(void *arg) {
    (void)arg;
    for (;;) pause();
    return NULL;
}

int main(int argc, char **argv) {
    int nthreads = argc > 1 ? atoi(argv[1]) : 0;
    int catch = argc > 2 ? atoi(argv[2]) : 0;
    if (catch) {
        for (int s = 1; s < 32; s++) {
            if (s == SIGKILL || s == SIGSTOP) continue;
            signal(s, handler);
        }
    }
    for (int i = 0; i < nthreads; i++) {
        pthread_t t;
        pthread_create(&t, NULL, spin, NULL);
    }
    printf("ready %d\n", getpid());
    fflush(stdout);
    for (;;) pause();
}
