"""Symbol-table cost: dtproc.elf against pyelftools, in milliseconds per full table.

    PYTHONPATH=src python bench/bench_elf.py [--repeat N]

"cold" means no dtproc cache (ElfFile.clear_cache()): open, read headers, parse every
symbol table.  The files themselves are in the page cache either way.  "cached" is the same
request again (ElfFile.open hits its identity cache).  For pyelftools, "cold" is a fresh
ELFFile iterating every symbol of .dynsym and .symtab, "again" a second pass over the same
ELFFile (it keeps no parsed symbols, so that is the best it offers).  Timings are medians.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from dtproc.elf import ElfFile

FILES = {
    "libc.so.6": "/lib/x86_64-linux-gnu/libc.so.6",
    "python3.11": "/usr/bin/python3.11",
}


def _median_ms(
    fn: Callable[[], object], repeat: int, setup: Callable[[], object] | None = None
) -> float:
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _ours_cold(path: str) -> int:
    return len(ElfFile.open(path).symbols)


def _ours_full_cold(path: str) -> int:
    return len(ElfFile.open(path).full_symbols())


def _pyelftools_count(elf: ELFFile) -> int:
    count = 0
    for section in elf.iter_sections():
        if isinstance(section, SymbolTableSection) and section["sh_type"] != "SHT_NOBITS":
            for sym in section.iter_symbols():
                count += bool(sym.name)
    return count


def _pyelftools_cold(path: str) -> int:
    with open(path, "rb") as f:
        return _pyelftools_count(ELFFile(f))


def _ours_first_queries(path: str) -> int:
    """Cold table plus the first lookup and the first address query (builds both indexes)."""
    table = ElfFile.open(path).symbols
    table.lookup("main")
    table.at(ElfFile.open(path).entry)
    return len(table)


def _row(label: str, what: str, count: int | str, value: float, unit: str = "ms") -> None:
    print(f"{label:<12} {what:<36} {count:>8} {value:>9.3f} {unit}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    n = args.repeat
    slow = max(3, n // 4)
    print(f"{'file':<12} {'what':<36} {'symbols':>8} {'time':>12}")
    for label, path in FILES.items():
        rows: list[tuple[str, Callable[[str], int], Callable[[], object] | None, int]] = [
            ("dtproc cold (open + .symbols)", _ours_cold, ElfFile.clear_cache, n),
            ("dtproc cold + first lookup + at", _ours_first_queries, ElfFile.clear_cache, n),
            ("dtproc cached (open + .symbols)", _ours_cold, None, n),
            ("dtproc cold full_symbols (+debug)", _ours_full_cold, ElfFile.clear_cache, n),
            ("pyelftools cold", _pyelftools_cold, None, slow),
        ]
        for what, fn, setup, repeat in rows:
            count = fn(path)
            _row(label, what, count, _median_ms(functools.partial(fn, path), repeat, setup))
        with open(path, "rb") as f:
            elf = ELFFile(f)
            count = _pyelftools_count(elf)
            ms = _median_ms(functools.partial(_pyelftools_count, elf), slow)
            _row(label, "pyelftools again (same ELFFile)", count, ms)
    libc = ElfFile.open(FILES["libc.so.6"]).full_symbols()
    malloc = libc.lookup("malloc")
    assert malloc is not None
    queries = {
        "lookup('malloc')": lambda: libc.lookup("malloc"),
        "at(malloc + 10)": lambda: libc.at(malloc.value + 10),
        "glob('str*') (list)": lambda: list(libc.glob("str*")),
    }
    for what, query in queries.items():
        ms = _median_ms(functools.partial(_hundred, query), 9)
        _row("libc full", what, "", ms * 10, "us")


def _hundred(query: Callable[[], object]) -> None:
    for _ in range(100):
        query()


if __name__ == "__main__":
    main()
