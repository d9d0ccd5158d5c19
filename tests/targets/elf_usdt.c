/* USDT target for tests/test_sdt.py: probes with varied argument forms.
 *
 * Built with -DELF_USDT_SEMAPHORES, every probe gets a semaphore in .probes, declared by
 * hand the way systemtap's `dtrace -h` header does.
 */
#ifdef ELF_USDT_SEMAPHORES
#define _SDT_HAS_SEMAPHORES 1
#define ELF_SEMAPHORE(name) \
    __extension__ unsigned short elftest_##name##_semaphore \
        __attribute__((unused)) __attribute__((section(".probes")))
ELF_SEMAPHORE(start);
ELF_SEMAPHORE(tick);
ELF_SEMAPHORE(mixed);
#endif
#include <sys/sdt.h>
#include <stdio.h>

long elf_usdt_global = 5;

__attribute__((noinline)) static long work(long n, char c, short s) {
    long total = 0;
    for (long i = 0; i < n; i++) {
        total += i * c + s;
        STAP_PROBE2(elftest, tick, i, total);
    }
    return total;
}

int main(int argc, char **argv) {
    (void)argv;
    STAP_PROBE(elftest, start);
    long total = work(argc + 2, (char)argc, (short)(argc * 3));
    signed char small = (signed char)total;
    STAP_PROBE5(elftest, mixed, small, -7, elf_usdt_global, (unsigned short)total, &elf_usdt_global);
    printf("%ld\n", total);
    return 0;
}
