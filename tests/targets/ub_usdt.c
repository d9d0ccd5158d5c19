/* USDT target for the uprobe backend tests: one probe with a semaphore and three arguments.
 *
 *   ub:tick(i, frame, global): i in a register, frame a volatile local (a memory operand
 *   based on %rsp or %rbp: in the sampled stack copy), global a variable (a %rip-relative
 *   memory operand: only in the target's memory).
 * The probe fires only while its semaphore is raised; the target counts how often it did.
 *
 * Usage: ub_usdt N -- print "ready pid=P sem=ADDR", wait for a byte, run N iterations, print
 * "done fired=F", wait for a byte or EOF, exit.
 */
#define _SDT_HAS_SEMAPHORES 1
__extension__ unsigned short ub_tick_semaphore __attribute__((unused))
__attribute__((section(".probes")));
#include <sys/sdt.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

volatile long ub_usdt_global = 42;

static void wait_byte(void) {
    char c;
    if (read(0, &c, 1) < 0)
        perror("read");
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 10;
    long fired = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready pid=%d sem=%p\n", getpid(), (void *)&ub_tick_semaphore);
    wait_byte();
    for (long i = 0; i < n; i++) {
        volatile long frame = 7 * i + 1;
        ub_usdt_global += i;
        if (__builtin_expect(ub_tick_semaphore, 0))
            fired++;
        STAP_PROBE3(ub, tick, i, frame, ub_usdt_global);
    }
    printf("done fired=%ld\n", fired);
    wait_byte();
    return 0;
}
