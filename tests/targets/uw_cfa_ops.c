/* Target for tests/test_cfi.py: call frame instructions that compilers rarely emit, spelled out.
 *
 *   uw_ops_all      every register rule kind, remember/restore state, CFA expressions,
 *                   the _sf forms, GNU_args_size, GNU_negative_offset_extended, advance_loc1/2/4
 *   uw_ops_signal   a signal frame ('S' augmentation) whose return address is undefined
 *   uw_ops_dwarf64  CFI only in a hand-made 64-bit DWARF .debug_frame (CIE version 4, set_loc)
 *
 * The functions are never called: the tests read their tables only.
 */
__asm__(".text\n"
        ".globl uw_ops_all\n"
        ".type uw_ops_all, @function\n"
        "uw_ops_all:\n"
        "  .cfi_startproc\n"
        "  push %rbp\n"
        "  .cfi_adjust_cfa_offset 8\n"
        "  .cfi_offset %rbp, -16\n"
        "  mov %rsp, %rbp\n"
        "  .cfi_def_cfa_register %rbp\n"
        "  push %rbx\n"
        "  .cfi_escape 0x2e, 0x10\n"             /* GNU_args_size 16 */
        "  .cfi_escape 0x11, 0x03, 0x03\n"       /* offset_extended_sf rbx, 3 * -8 */
        "  .cfi_remember_state\n"
        "  .cfi_undefined %r12\n"
        "  .cfi_same_value %r13\n"
        "  .cfi_register %r14, %rax\n"
        "  .cfi_val_offset %r15, -8\n"
        "  .cfi_escape 0x10, 0x01, 0x02, 0x76, 0x08\n" /* expression rdx: breg6 +8 */
        "  .cfi_escape 0x16, 0x02, 0x02, 0x76, 0x10\n" /* val_expression rcx: breg6 +16 */
        "  .cfi_escape 0x2f, 0x04, 0x02\n"       /* GNU_negative_offset_extended rsi, 2 */
        "  nop\n"
        "  .cfi_restore_state\n"
        "  nop\n"
        "  .cfi_escape 0x0f, 0x02, 0x76, 0x10\n" /* def_cfa_expression: breg6 +16 */
        "  nop\n"
        "  .cfi_escape 0x12, 0x07, 0x7e\n"       /* def_cfa_sf rsp, -2 * -8 */
        "  .cfi_escape 0x13, 0x7d\n"             /* def_cfa_offset_sf -3 * -8 */
        "  nop\n"
        "  .cfi_escape 0x05, 0x0c, 0x02\n"       /* offset_extended r12, 2 * -8 */
        "  nop\n"
        "  .cfi_escape 0x06, 0x0c\n"             /* restore_extended r12 */
        "  .cfi_escape 0x14, 0x0d, 0x01\n"       /* val_offset r13, 1 * -8 */
        "  .cfi_escape 0x15, 0x0e, 0x7f\n"       /* val_offset_sf r14, -1 * -8 */
        "  .cfi_escape 0x08, 0x10\n"             /* same_value rip (restored below) */
        "  .cfi_escape 0x02, 0x01\n"             /* advance_loc1 1 */
        "  .cfi_escape 0xd0\n"                   /* restore rip */
        "  .cfi_escape 0x03, 0x01, 0x00\n"       /* advance_loc2 1 */
        "  .cfi_escape 0x00\n"                   /* nop */
        "  .cfi_escape 0x04, 0x01, 0x00, 0x00, 0x00\n" /* advance_loc4 1 */
        "  .cfi_escape 0x07, 0x03\n"             /* undefined rbx */
        "  nop\n  nop\n  nop\n  nop\n  nop\n  nop\n  nop\n  nop\n"
        "  .cfi_escape 0x09, 0x03, 0x06\n"       /* register rbx in rbp */
        "  nop\n  nop\n  nop\n  nop\n  nop\n  nop\n  nop\n  nop\n"
        "  pop %rbx\n"
        "  pop %rbp\n"
        "  ret\n"
        "  .cfi_endproc\n"
        ".size uw_ops_all, .-uw_ops_all\n"
        "\n"
        ".globl uw_ops_signal\n"
        ".type uw_ops_signal, @function\n"
        "uw_ops_signal:\n"
        "  .cfi_startproc\n"
        "  .cfi_signal_frame\n"
        "  .cfi_undefined %rip\n"
        "  nop\n"
        "  ret\n"
        "  .cfi_endproc\n"
        ".size uw_ops_signal, .-uw_ops_signal\n"
        "\n"
        ".globl uw_ops_dwarf64\n"
        ".type uw_ops_dwarf64, @function\n"
        "uw_ops_dwarf64:\n"
        "  push %rbp\n"
        "  pop %rbp\n"
        "  ret\n"
        ".Luw_ops_dwarf64_end:\n"
        ".size uw_ops_dwarf64, .-uw_ops_dwarf64\n"
        "\n"
        ".section .debug_frame,\"\",@progbits\n"
        ".Luw_cie:\n"
        "  .long 0xffffffff\n"
        "  .quad .Luw_cie_end - .Luw_cie_id\n"
        ".Luw_cie_id:\n"
        "  .quad 0xffffffffffffffff\n"
        "  .byte 4\n"                      /* version */
        "  .byte 0\n"                      /* augmentation "" */
        "  .byte 8, 0\n"                   /* address size, segment selector size */
        "  .byte 1, 0x78, 16\n"            /* code align 1, data align -8, RA column 16 */
        "  .byte 0x0c, 0x07, 0x08\n"       /* def_cfa rsp+8 */
        "  .byte 0x90, 0x01\n"             /* offset rip, cfa-8 */
        "  .balign 8, 0\n"
        ".Luw_cie_end:\n"
        "  .long 0xffffffff\n"
        "  .quad .Luw_fde_end - .Luw_fde_id\n"
        ".Luw_fde_id:\n"
        "  .quad .Luw_cie - .debug_frame\n"
        "  .quad uw_ops_dwarf64\n"
        "  .quad .Luw_ops_dwarf64_end - uw_ops_dwarf64\n"
        "  .byte 0x41\n"                   /* advance_loc 1 */
        "  .byte 0x0e, 0x10\n"             /* def_cfa_offset 16 */
        "  .byte 0x86, 0x02\n"             /* offset rbp, cfa-16 */
        "  .byte 0x01\n"                   /* set_loc uw_ops_dwarf64 + 2 */
        "  .quad uw_ops_dwarf64 + 2\n"
        "  .byte 0x0e, 0x08\n"             /* def_cfa_offset 8 */
        "  .byte 0xc6\n"                   /* restore rbp */
        "  .balign 8, 0\n"
        ".Luw_fde_end:\n"
        ".text\n");

int main(void) { return 0; }
