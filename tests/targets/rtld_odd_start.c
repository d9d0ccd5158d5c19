/* A program whose _start hides main: it computes main's address in another register and
 * copies it to %rdi, so a stripped build gives a tracer no way to find main.
 * Built with -nostartfiles (no crt1/crti: no _init, nothing in init_array but what is
 * below); -DWITH_CTOR adds a constructor, the executable's one initialiser. */
void rtld_mark(const char *what);

__asm__(".text\n.globl _start\n.type _start,@function\n_start:\n"
        "  xor %ebp, %ebp\n  mov %rdx, %r9\n  pop %rsi\n  mov %rsp, %rdx\n"
        "  and $-16, %rsp\n  push %rax\n  push %rsp\n  xor %r8d, %r8d\n  xor %ecx, %ecx\n"
        "  lea main(%rip), %rax\n  mov %rax, %rdi\n  call *__libc_start_main@GOTPCREL(%rip)\n  hlt\n"
        ".size _start, .-_start\n");

#ifdef WITH_CTOR
__attribute__((constructor)) static void exe_ctor(void) { rtld_mark("exe-ctor"); }
#endif

int main(int argc, char **argv, char **envp) {
    (void)argc, (void)argv, (void)envp;
    rtld_mark("main");
    return 0;
}
