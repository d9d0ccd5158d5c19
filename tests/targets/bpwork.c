/* Breakpoint target: functions whose first instruction takes each displacement path.
 * usage: bpwork MODE [THREADS] [CALLS]
 *   threads N C : N threads, each calls every work function C times; prints the sums
 *   fork C      : parent and children (fork, vfork+exec, exec of self) call work()
 *   trap        : the program's own int3 and raise(SIGTRAP), caught by its handler
 *   libc C      : calls getppid() C times
 *   wait        : prints "ready", then calls work() once per line read from stdin
 *   forkloop    : 4 threads call work() while main forks, vforks+execs and forks+execs
 *                 children that call work() and check their sums, until SIGHUP; prints
 *                 "ready" first and exits 42 if every child ended as it should
 *   churn       : short-lived threads (4 at a time) call work() until SIGHUP; prints
 *                 "ready" first and exits 42 if every thread's sum was right
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

volatile long counter = 1;

__attribute__((noinline)) long work(long x) { return x * 2 + counter; }

/* Starts with push %rbp (emulated). */
__attribute__((noinline, optimize("no-omit-frame-pointer"))) long work_push(long x) {
    __asm__ volatile("" ::: "memory");
    return x + 3;
}

/* Starts with a rip-relative load (run out of line). */
long work_rip(long x);
__asm__(".globl work_rip\n.type work_rip,@function\nwork_rip:\n"
        "  mov counter(%rip), %rax\n  add %rdi, %rax\n  ret\n.size work_rip, .-work_rip\n");

/* Starts with a conditional branch (emulated from eflags). */
long work_branch(long x);
__asm__(".globl work_branch\n.type work_branch,@function\nwork_branch:\n"
        "  test %rdi, %rdi\n  jz 1f\n  lea 1(%rdi), %rax\n  ret\n1: xor %eax, %eax\n  ret\n"
        ".size work_branch, .-work_branch\n");

static long calls = 1000;

static void *worker(void *arg) {
    long id = (long)arg, sum = 0;
    for (long i = 0; i < calls; i++)
        sum += work(i) + work_push(i) + work_rip(i) + work_branch(i - (i & 1));
    return (void *)(sum + id);
}

static void on_trap(int sig) { write(1, "trapped\n", 8); (void)sig; }

static volatile sig_atomic_t hangup;
static void on_hup(int sig) { hangup = 1; (void)sig; }

static void *spinner(void *arg) {
    long sum = 0;
    for (long i = 0; !hangup; i++) {
        sum += work(i);
        if ((i & 255) == 0) usleep(100);
    }
    return (void *)(sum + (long)arg);
}

static int child_sum_ok(void) {
    long s = 0;
    for (long i = 0; i < 1000; i++) s += work(i);
    return s == 999000 + 1000 * counter;
}

static int expect(pid_t pid, int code, const char *what) {
    int st;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != code) {
        fprintf(stderr, "%s child status %#x\n", what, st);
        return 1;
    }
    return 0;
}

static void *short_lived(void *arg) {
    (void)arg;
    return (void *)(long)!child_sum_ok();
}

static int churn(void) {
    signal(SIGHUP, on_hup);
    printf("ready\n");
    long bad = 0;
    while (!hangup) {
        pthread_t t[4];
        int n = 0;
        while (n < 4 && pthread_create(&t[n], NULL, short_lived, NULL) == 0) n++;
        bad += 4 - n;
        for (int i = 0; i < n; i++) {
            void *r;
            pthread_join(t[i], &r);
            bad += (long)r;
        }
    }
    printf("bad %ld\n", bad);
    return bad ? 1 : 42;
}

static int forkloop(const char *self) {
    signal(SIGHUP, on_hup);
    pthread_t t[4];
    for (long i = 0; i < 4; i++) pthread_create(&t[i], NULL, spinner, (void *)i);
    printf("ready\n");
    long rounds = 0, bad = 0;
    while (!hangup) {
        pid_t p = fork();
        if (p == 0) _exit(child_sum_ok() ? 7 : 1);
        bad += expect(p, 7, "fork");
        p = vfork();
        if (p == 0) { work(1); execl("/bin/true", "true", (char *)NULL); _exit(127); }
        bad += expect(p, 0, "vfork");
        p = fork();
        if (p == 0) { execl(self, self, "forkchild", (char *)NULL); _exit(127); }
        bad += expect(p, 9, "exec");
        rounds++;
        usleep(2000);
    }
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    printf("rounds %s bad %ld\n", rounds > 0 ? "some" : "none", bad);
    return bad ? 1 : 42;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "threads";
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(mode, "threads")) {
        int n = argc > 2 ? atoi(argv[2]) : 8;
        calls = argc > 3 ? atol(argv[3]) : 1000;
        pthread_t t[64];
        for (long i = 0; i < n; i++) pthread_create(&t[i], NULL, worker, (void *)i);
        for (int i = 0; i < n; i++) {
            void *r;
            pthread_join(t[i], &r);
            printf("thread %d: %ld\n", i, (long)r);
        }
        return 0;
    }
    if (!strcmp(mode, "fork")) {
        calls = argc > 2 ? atol(argv[2]) : 10;
        long s = 0;
        for (long i = 0; i < calls; i++) s += work(i);
        pid_t a = fork();
        if (a == 0) {
            long c = 0;
            for (long i = 0; i < calls; i++) c += work(i);
            printf("fork child %ld\n", c);
            _exit(5);
        }
        int st;
        waitpid(a, &st, 0);
        pid_t b = vfork();
        if (b == 0) { work(1); execl("/bin/true", "true", (char *)NULL); _exit(127); }
        int st2;
        waitpid(b, &st2, 0);
        for (long i = 0; i < calls; i++) s += work(i);
        printf("parent %ld fork=%d vfork=%d\n", s, WEXITSTATUS(st), WEXITSTATUS(st2));
        if (argc > 3) {  /* then exec ourselves: the new image must be clean */
            execl("/proc/self/exe", argv[0], "libc", "3", (char *)NULL);
            return 127;
        }
        return 0;
    }
    if (!strcmp(mode, "trap")) {
        signal(SIGTRAP, on_trap);
        __asm__ volatile("int3");
        raise(SIGTRAP);
        printf("work %ld\n", work(2));
        return 0;
    }
    if (!strcmp(mode, "libc")) {
        long n = argc > 2 ? atol(argv[2]) : 10, s = 0;
        for (long i = 0; i < n; i++) s += getppid() > 0;
        printf("getppid %ld\n", s);
        return 0;
    }
    if (!strcmp(mode, "forkloop")) return forkloop("/proc/self/exe");
    if (!strcmp(mode, "churn")) return churn();
    if (!strcmp(mode, "forkchild")) return child_sum_ok() ? 9 : 1;
    if (!strcmp(mode, "wait")) {
        char line[64];
        printf("ready\n");
        while (fgets(line, sizeof line, stdin)) printf("%ld\n", work(atol(line)));
        return 0;
    }
    return 2;
}
