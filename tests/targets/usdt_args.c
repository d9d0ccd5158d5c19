/* USDT target for tests/test_usdt_sites.py: one probe per argument form, with semaphores.
 *
 * Each probe prints the values it passed, so a test can compare them with what it computed
 * from the argument specs at a breakpoint.  main prints the semaphores before and after the
 * probes (the test holds them in between), and with argv[1] it dlopens that USDT plugin and
 * runs it.  STAP_SDT_ARG_CONSTRAINT is set per probe to force each operand form:
 * r = register, m = memory (register+offset, rip-relative global), i = constant.
 */
#define _SDT_HAS_SEMAPHORES 1
#define USDT_SEMAPHORE(name) \
    __extension__ unsigned short usdtest_##name##_semaphore \
        __attribute__((unused)) __attribute__((section(".probes")))
USDT_SEMAPHORE(reg__args);
USDT_SEMAPHORE(mem__args);
USDT_SEMAPHORE(global__args);
USDT_SEMAPHORE(const__args);
USDT_SEMAPHORE(inlined);
#include <sys/sdt.h>
#include <dlfcn.h>
#include <stdio.h>

struct rec {
    long a;
    int b;
    long arr[4];
};

long usdt_global = -1234567;
long usdt_table[4] = {11, 22, 33, 44};
static long usdt_hidden = 99;

/* The test puts a breakpoint here to act between phases. */
__attribute__((noinline)) void usdt_checkpoint(int phase) {
    __asm__ __volatile__("" ::"r"(phase) : "memory");
}

static void print_semaphores(void) {
    printf("sem %u %u %u %u %u\n", usdtest_reg__args_semaphore, usdtest_mem__args_semaphore,
           usdtest_global__args_semaphore, usdtest_const__args_semaphore,
           usdtest_inlined_semaphore);
    fflush(stdout);
}

#undef STAP_SDT_ARG_CONSTRAINT
#define STAP_SDT_ARG_CONSTRAINT r
__attribute__((noinline)) void usdt_regs(long a, int b, unsigned char c) {
    STAP_PROBE3(usdtest, reg__args, a, b, c);
    printf("reg-args %ld %d %u\n", a, b, c);
}

#undef STAP_SDT_ARG_CONSTRAINT
#define STAP_SDT_ARG_CONSTRAINT m
__attribute__((noinline)) void usdt_mem(struct rec *r, long i) {
    volatile long local = r->a * 3;
    STAP_PROBE4(usdtest, mem__args, r->a, r->b, r->arr[i], local);
    printf("mem-args %ld %d %ld %ld\n", r->a, r->b, r->arr[i], local);
}

__attribute__((noinline)) void usdt_globals(void) {
#ifdef __PIE__
    STAP_PROBE2(usdtest, global__args, usdt_global, usdt_hidden);
    printf("global-args %ld %ld\n", usdt_global, usdt_hidden);
#else
    STAP_PROBE3(usdtest, global__args, usdt_global, usdt_hidden, usdt_table[2]);
    printf("global-args %ld %ld %ld\n", usdt_global, usdt_hidden, usdt_table[2]);
#endif
}

#undef STAP_SDT_ARG_CONSTRAINT
#define STAP_SDT_ARG_CONSTRAINT i
__attribute__((noinline)) void usdt_consts(void) {
    STAP_PROBE3(usdtest, const__args, -7, 42, &usdt_global);
    printf("const-args %d %d %lu\n", -7, 42, (unsigned long)&usdt_global);
}

#undef STAP_SDT_ARG_CONSTRAINT
#define STAP_SDT_ARG_CONSTRAINT nor
/* Inlined into two functions: three sites, two probes (main's two copies share one). */
static inline __attribute__((always_inline)) void usdt_inline(long v) {
    STAP_PROBE1(usdtest, inlined, v);
    printf("inlined %ld\n", v);
}

__attribute__((noinline)) void usdt_other(long v) {
    usdt_inline(v + 100);
}

int main(int argc, char **argv) {
    struct rec r = {7, -3, {100, 200, 300, 400}};
    print_semaphores();
    usdt_regs(-5000000000L, -42, 200);
    usdt_mem(&r, argc + 1);
    usdt_globals();
    usdt_consts();
    usdt_inline(argc);
    usdt_inline(argc * 10);
    usdt_other(argc);
    usdt_checkpoint(1);
    print_semaphores();
    if (argc > 1) {
        void *lib = dlopen(argv[1], RTLD_NOW);
        if (lib == NULL) {
            printf("dlopen: %s\n", dlerror());
            return 1;
        }
        usdt_checkpoint(2);
        void (*run)(long) = (void (*)(long))dlsym(lib, "usdt_plugin_run");
        run(argc + 40);
    }
    return 0;
}
