/* Target for tests/test_ifunc.py: a program that uses IFUNCs of libc in every way that binds
 * a GOT slot.
 *
 * strlen, memcpy and strchr are called through lazy PLT slots before "ready"; wcsrchr and
 * strrchr only have their addresses taken (GLOB_DAT slots, bound at load time to the
 * implementation, whose addresses it prints); strstr is called, the first time, only after a byte
 * arrives on stdin ("go"), and strlen once more then.  After that it prints "done" and waits
 * for stdin to close.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <wchar.h>

int main(int argc, char **argv) {
    char buf[64];
    const char *text = argc > 1 ? argv[1] : "hello, world";
    size_t n = strlen(text);
    memcpy(buf, text, n + 1);
    char *comma = strchr(buf, ',');
    printf("ready %zu %d wcsrchr=%p strrchr=%p\n", n, comma ? (int)(comma - buf) : -1,
           (void *)wcsrchr, (void *)strrchr);
    fflush(stdout);
    char c;
    if (read(0, &c, 1) == 1) {
        printf("done %d %zu\n", strstr(buf, "wor") != NULL, strlen(buf + 1));
        fflush(stdout);
    }
    while (read(0, &c, 1) > 0) {
    }
    return 0;
}
