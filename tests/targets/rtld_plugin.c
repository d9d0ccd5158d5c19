/* A library to dlopen and dlclose: plugin_work is called after each load, so a breakpoint
 * placed on it when the library appears fires once per load. PLUGIN_ID tells builds apart.
 * It calls into libc, so that a load into a new namespace (dlmopen) brings a libc of its own,
 * and plugin_count, whose first instruction is rip-relative: a breakpoint there runs it out
 * of line, from a scratch slot near the library. */
#include <string.h>

#ifndef PLUGIN_ID
#define PLUGIN_ID 0
#endif

__attribute__((visibility("hidden"))) volatile long plugin_calls;
static const char *volatile word = "plugin";

long plugin_count(void);
__asm__(".text\n.globl plugin_count\n.type plugin_count,@function\nplugin_count:\n"
        "  mov plugin_calls(%rip), %rax\n  ret\n.size plugin_count, .-plugin_count\n");

__attribute__((noinline)) long plugin_work(long x) {
    plugin_calls++;
    return x * 3 + PLUGIN_ID + (long)strlen(word) + plugin_count() * 0;
}
