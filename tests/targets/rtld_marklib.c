/* A library whose constructor leaves a marker (see rtld_markers.c). Built as a shared
 * library for the dynamic variants, linked in as an object for the static ones. */
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

/* Append "WHAT\n" to the file named by RTLD_MARKS in ENVP (raw system calls, no stdio and
 * no getenv: a preinit_array function runs before libc has set up environ). */
void rtld_mark_env(char **envp, const char *what) {
    const char *path = NULL;
    for (char **e = envp; e != NULL && *e != NULL; e++)
        if (strncmp(*e, "RTLD_MARKS=", 11) == 0)
            path = *e + 11;
    if (path == NULL)
        return;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd < 0)
        return;
    char line[64];
    size_t n = strlen(what);
    memcpy(line, what, n);
    line[n] = '\n';
    if (write(fd, line, n + 1) < 0)
        _exit(3);
    close(fd);
}

void rtld_mark(const char *what) { rtld_mark_env(environ, what); }

__attribute__((constructor)) static void lib_ctor(void) { rtld_mark("lib-ctor"); }
