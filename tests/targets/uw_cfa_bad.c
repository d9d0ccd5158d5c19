/* Target for tests/test_cfi.py: call frame programs that are well framed but wrong, which the
 * CFA interpreter must reject with an error instead of crashing or looping.
 *
 *   uw_bad_restore   DW_CFA_restore_state with nothing remembered
 *   uw_bad_nesting   DW_CFA_remember_state nested 100 deep
 *   uw_bad_opcode    an opcode DWARF does not define (0x3f)
 *   uw_bad_truncated a DW_CFA_offset_extended cut off by the end of the FDE
 */
#define UW_BAD(name, escapes)                                                                  \
    __asm__(".text\n"                                                                          \
            ".globl " #name "\n"                                                               \
            ".type " #name ", @function\n" #name ":\n"                                         \
            "  .cfi_startproc\n"                                                               \
            "  nop\n" escapes "  ret\n"                                                        \
            "  .cfi_endproc\n"                                                                 \
            ".size " #name ", .-" #name "\n")

UW_BAD(uw_bad_restore, "  .cfi_escape 0x0b\n");
UW_BAD(uw_bad_nesting, "  .rept 100\n  .cfi_remember_state\n  .endr\n");
UW_BAD(uw_bad_opcode, "  .cfi_escape 0x3f\n");
UW_BAD(uw_bad_truncated, "  .cfi_escape 0x05, 0x83\n");

int main(void) { return 0; }
