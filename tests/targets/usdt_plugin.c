/* A USDT probe in a shared library (no semaphore) for tests/test_usdt_sites.py to find after
 * the program dlopens it.  Memory operands: a stack slot and a rip-relative static. */
#define STAP_SDT_ARG_CONSTRAINT m
#include <sys/sdt.h>
#include <stdio.h>

static long usdt_plugin_calls = 1000;

void usdt_plugin_run(long n) {
    usdt_plugin_calls += n;
    long doubled = n * 2;
    STAP_PROBE2(usdtplug, plugin__run, doubled, usdt_plugin_calls);
    printf("plugin-run %ld %ld\n", doubled, usdt_plugin_calls);
}
