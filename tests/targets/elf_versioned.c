/* Shared library for tests/test_elf.py: one function exported in two versions.
 * Link with a version script that defines ELFTEST_1 and ELFTEST_2.
 */
int elf_ver_old(int x) { return x + 1; }
int elf_ver_new(int x) { return x + 2; }
int elf_plain(int x) { return x + 3; }

__asm__(".symver elf_ver_old, elf_ver_fn@ELFTEST_1");
__asm__(".symver elf_ver_new, elf_ver_fn@@ELFTEST_2");
