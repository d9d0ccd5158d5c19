/* Target for tests/test_elf.py: a few symbols of every kind the ELF reader must handle.
 *
 * It prints the runtime addresses of main, printf and a global, then waits until its stdin
 * closes, so a test can compare them with load_bias() applied to /proc/PID/maps.
 */
#include <stdio.h>
#include <unistd.h>

int elf_global_counter = 42;
static int elf_static_counter;
__thread int elf_tls_value;

int elf_function(int x) { return x * 2 + elf_static_counter++; }

__attribute__((noinline)) static int elf_static_function(int x) { return x + elf_global_counter; }

static int elf_ifunc_impl(void) { return 7; }
static int (*elf_ifunc_resolver(void))(void) { return elf_ifunc_impl; }
int elf_ifunc(void) __attribute__((ifunc("elf_ifunc_resolver")));

/* A zero-sized assembly label with code after it and no sized symbol in between. */
__asm__(".text\n"
        ".globl elf_zero_label\n"
        "elf_zero_label:\n"
        "  nop\n  nop\n  nop\n  ret\n");

int main(int argc, char **argv) {
    (void)argv;
    printf("%p %p %p\n", (void *)main, (void *)printf, (void *)&elf_global_counter);
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0) {
    }
    return elf_function(argc) + elf_static_function(argc) + elf_ifunc() + elf_tls_value;
}
