/* Rendezvous target: each kind of initialiser leaves a marker (rtld_marklib.c's rtld_mark),
 * so a tracer stopped at exec, preinit, postinit or main can see which have run.
 * Order for a dynamic build: exe-preinit (ld.so's _dl_init), lib-ctor (ld.so), exe-ctor
 * (__libc_start_main), main. usage: rtld_markers [N]: re-exec itself N times first. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

void rtld_mark(const char *what);
void rtld_mark_env(char **envp, const char *what);

static void exe_preinit(int argc, char **argv, char **envp) {
    (void)argc, (void)argv;
    rtld_mark_env(envp, "exe-preinit");
}
__attribute__((section(".preinit_array"), used)) static void (*preinit[])(int, char **, char **) = {
    exe_preinit};

__attribute__((constructor)) static void exe_ctor(void) { rtld_mark("exe-ctor"); }

int main(int argc, char **argv) {
    rtld_mark("main");
    long left = argc > 1 ? atol(argv[1]) : 0;
    if (left > 0) {
        char next[32];
        snprintf(next, sizeof next, "%ld", left - 1);
        execl("/proc/self/exe", argv[0], next, (char *)NULL);
        return 2;
    }
    return 0;
}
