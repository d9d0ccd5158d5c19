/* Functions with known return shapes, for dtproc.insn.return_sites (compiled with -O2). */
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) int leaf(int x) {
    return x * 3 + 1;
}

/* A sibling call: gcc -O2 ends it with "jmp leaf". */
__attribute__((noinline)) int tail(int x) {
    return leaf(x + 1);
}

int (*volatile hook)(int) = leaf;

/* A tail call through a pointer: "mov hook(%rip),%rax; jmp *%rax". */
__attribute__((noinline)) int tail_indirect(int x) {
    return hook(x + 2);
}

/* Dense cases become a jump table: an indirect jump that is not a return. */
__attribute__((noinline)) int dispatch(int x, int y) {
    switch (x) {
    case 0: return y + 11;
    case 1: return y * 7;
    case 2: return y - 5;
    case 3: return y ^ 0x55;
    case 4: return y << 3;
    case 5: return y / 3;
    case 6: return y % 11;
    case 7: return ~y;
    case 8: return y * y;
    default: return 0;
    }
}

__attribute__((cold, noinline)) void report(int x) {
    fprintf(stderr, "negative %d\n", x);
}

/* An unlikely path that gcc moves to "cold_split.cold", reached by a conditional jump. */
__attribute__((noinline)) int cold_split(int n, const int *p) {
    int s = 0;
    for (int i = 0; i < n; i++) {
        if (__builtin_expect(p[i] < 0, 0)) {
            report(p[i]);
            s -= p[i] * 3;
            continue;
        }
        s += p[i];
    }
    return s;
}

/* Several returns that gcc keeps apart. */
__attribute__((noinline)) int several(int x, int *p) {
    if (x < 0)
        return -1;
    if (p == NULL)
        return 0;
    *p = x;
    for (int i = 0; i < x; i++)
        p[0] += i;
    return p[0];
}

int main(int argc, char **argv) {
    (void)argv;
    int v = 0, a[4] = {1, 2, 3, 4};
    return tail(argc) + tail_indirect(argc) + dispatch(argc, 3) + cold_split(argc, a) +
           several(argc, &v);
}
