/* Runs machine code with a chosen register state and reports the state it ends in.
 *
 * The oracle for dtproc.insn: an instruction executed in place, or its out-of-line slot,
 * must end in the same state as the emulation says. Reads a script on stdin, one command
 * a line (numbers in hex):
 *
 *   map ADDR LEN PROT    map pages over [ADDR, ADDR+LEN), PROT "rwx" or "rw", filled with
 *                        0xCC (int3) so that any fall-through lands on a trap
 *   write ADDR HEX       store bytes
 *   fill ADDR LEN SEED   store xorshift64 words (x ^= x<<13, x>>7, x<<17; first from SEED|1)
 *   regs RAX RBX RCX RDX RSI RDI RBP RSP R8 .. R15 RIP EFLAGS
 *   xmm N HEX            16 bytes of xmmN
 *   run                  enter at RIP with those registers; stop at the first signal
 *   dump ADDR LEN        print memory
 *   hash ADDR LEN        print an FNV-1a hash of memory (to compare big areas cheaply)
 *   reset                unmap everything mapped
 *
 * "run" prints "result SIG RIP SI_ADDR", "regs ..." (same order) and "xmm N HEX" lines;
 * "dump" prints "mem ADDR HEX", "hash" prints "hash ADDR HEX". Entry and exit go through a signal handler: entering, it
 * replaces the interrupted context with the requested registers, so sigreturn loads every
 * one of them (eflags and rsp included); the trap at the end hands the final context to the
 * handler, which records it and puts the harness's own context back.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <ucontext.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

static const int reg_index[18] = {
    REG_RAX, REG_RBX, REG_RCX, REG_RDX, REG_RSI, REG_RDI, REG_RBP, REG_RSP, REG_R8,
    REG_R9,  REG_R10, REG_R11, REG_R12, REG_R13, REG_R14, REG_R15, REG_RIP, REG_EFL,
};

static volatile int phase; /* 0 idle, 1 entering, 2 running the code under test */
static gregset_t saved_gregs;
static unsigned char saved_fp[512];
static uint64_t in_regs[18], out_regs[18];
static unsigned char in_xmm[16][16], out_xmm[16][16];
static int out_sig;
static uint64_t out_addr;

struct region {
    uintptr_t addr;
    size_t len;
};
static struct region regions[256];
static int nregions;

static void mark_fp_live(mcontext_t *mc) {
    /* With XSAVE frames, components marked "init" in the header are reset on sigreturn,
     * whatever the legacy area holds: mark x87 and SSE as present. */
    unsigned char *fp = (unsigned char *)mc->fpregs;
    uint32_t magic;
    memcpy(&magic, fp + 464, sizeof magic);
    if (magic == 0x46505853U) {
        uint64_t features;
        memcpy(&features, fp + 512, sizeof features);
        features |= 3;
        memcpy(fp + 512, &features, sizeof features);
    }
}

static void handler(int sig, siginfo_t *si, void *ctx) {
    /* The code under test may have set AC (popf); the kernel keeps it for the handler,
     * where it would make every unaligned access fault. */
    __asm__ volatile("pushfq; andq $~0x40000, (%%rsp); popfq" ::: "memory", "cc");
    ucontext_t *uc = ctx;
    greg_t *g = uc->uc_mcontext.gregs;
    unsigned char *fp = (unsigned char *)uc->uc_mcontext.fpregs;
    if (phase == 1) {
        memcpy(saved_gregs, g, sizeof saved_gregs);
        memcpy(saved_fp, fp, sizeof saved_fp);
        for (int i = 0; i < 18; i++)
            g[reg_index[i]] = (greg_t)in_regs[i];
        memcpy(fp + 160, in_xmm, sizeof in_xmm); /* xmm0-15 in the FXSAVE layout */
        mark_fp_live(&uc->uc_mcontext);
        phase = 2;
        return;
    }
    if (phase != 2)
        abort();
    out_sig = sig;
    out_addr = (uint64_t)(uintptr_t)si->si_addr;
    for (int i = 0; i < 18; i++)
        out_regs[i] = (uint64_t)g[reg_index[i]];
    memcpy(out_xmm, fp + 160, sizeof out_xmm);
    memcpy(g, saved_gregs, sizeof saved_gregs);
    memcpy(fp, saved_fp, sizeof saved_fp);
    mark_fp_live(&uc->uc_mcontext);
    phase = 0;
}

static void run(void) {
    struct itimerval limit = {{0, 0}, {0, 200000}}, off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &limit, NULL); /* the code under test may loop forever */
    phase = 1;
    __asm__ volatile("int3" ::: "memory");
    setitimer(ITIMER_REAL, &off, NULL);
    printf("result %d %llx %llx\nregs", out_sig, (unsigned long long)out_regs[16],
           (unsigned long long)out_addr);
    for (int i = 0; i < 18; i++)
        printf(" %llx", (unsigned long long)out_regs[i]);
    printf("\n");
    for (int n = 0; n < 16; n++) {
        printf("xmm %d ", n);
        for (int i = 0; i < 16; i++)
            printf("%02x", out_xmm[n][i]);
        printf("\n");
    }
}

static int hexval(char c) {
    return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

static size_t unhex(const char *s, unsigned char *out, size_t max) {
    size_t n = 0;
    while (n < max && s[0] > ' ' && s[1] > ' ') {
        out[n++] = (unsigned char)(hexval(s[0]) << 4 | hexval(s[1]));
        s += 2;
    }
    return n;
}

static void map(uintptr_t addr, size_t len, const char *prot) {
    uintptr_t start = addr & ~(uintptr_t)0xFFF;
    size_t size = ((addr + len + 0xFFF) & ~(uintptr_t)0xFFF) - start;
    int p = PROT_READ | PROT_WRITE | (strchr(prot, 'x') ? PROT_EXEC : 0);
    void *got = mmap((void *)start, size, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (got != (void *)start || nregions == 256) {
        printf("error cannot map %lx+%zx\n", (unsigned long)start, size);
        exit(2);
    }
    memset(got, 0xCC, size);
    mprotect(got, size, p);
    regions[nregions].addr = start;
    regions[nregions++].len = size;
}

int main(void) {
    static unsigned char altstack[1 << 18];
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack};
    sigaltstack(&ss, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    int sigs[] = {SIGTRAP, SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGALRM};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        sigaction(sigs[i], &sa, NULL);

    static unsigned char buf[1 << 16];
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, stdin) > 0) {
        unsigned long long a, b, seed;
        int n, off;
        char prot[8];
        if (sscanf(line, "map %llx %llx %7s", &a, &b, prot) == 3) {
            map((uintptr_t)a, (size_t)b, prot);
        } else if (sscanf(line, "write %llx %n", &a, &off) == 1) {
            memcpy((void *)(uintptr_t)a, buf, unhex(line + off, buf, sizeof buf));
        } else if (sscanf(line, "fill %llx %llx %llx", &a, &b, &seed) == 3) {
            uint64_t x = seed | 1;
            for (unsigned long long i = 0; i + 8 <= b; i += 8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                memcpy((unsigned char *)(uintptr_t)a + i, &x, sizeof x);
            }
        } else if (strncmp(line, "regs ", 5) == 0) {
            char *p = line + 5;
            for (int i = 0; i < 18; i++)
                in_regs[i] = strtoull(p, &p, 16);
        } else if (sscanf(line, "xmm %d %n", &n, &off) == 1 && n >= 0 && n < 16) {
            unhex(line + off, in_xmm[n], 16);
        } else if (strncmp(line, "run", 3) == 0) {
            run();
        } else if (sscanf(line, "dump %llx %llx", &a, &b) == 2) {
            printf("mem %llx ", a);
            for (unsigned long long i = 0; i < b; i++)
                printf("%02x", ((unsigned char *)(uintptr_t)a)[i]);
            printf("\n");
        } else if (sscanf(line, "hash %llx %llx", &a, &b) == 2) {
            uint64_t h = 0xcbf29ce484222325ULL;
            for (unsigned long long i = 0; i < b; i++)
                h = (h ^ ((unsigned char *)(uintptr_t)a)[i]) * 0x100000001b3ULL;
            printf("hash %llx %llx\n", a, (unsigned long long)h);
        } else if (strncmp(line, "reset", 5) == 0) {
            while (nregions > 0) {
                nregions--;
                munmap((void *)regions[nregions].addr, regions[nregions].len);
            }
        }
    }
    free(line);
    return 0;
}
