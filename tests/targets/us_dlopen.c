/* Target for tests/test_ustack.py: main dlopens the library named by argv[1] and calls its
 * us_plugin_call, which calls us_leaf back in the executable. */
#include <dlfcn.h>
#include <stdio.h>

static volatile int us_sink;

__attribute__((noinline)) int us_leaf(int x) {
    us_sink += x;
    return us_sink;
}

int main(int argc, char **argv) {
    void *lib = argc > 1 ? dlopen(argv[1], RTLD_NOW) : NULL;
    if (lib == NULL) {
        fprintf(stderr, "us_dlopen: %s\n", dlerror());
        return 1;
    }
    int (*call)(int (*)(int), int) = (int (*)(int (*)(int), int))dlsym(lib, "us_plugin_call");
    return call(us_leaf, 1) == 3 ? 0 : 1;
}
