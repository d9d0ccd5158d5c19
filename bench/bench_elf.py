"""ELF reading cost: dtproc.elf against pyelftools, per whole symbol or relocation table.

    PYTHONPATH=src python bench/bench_elf.py [--quick] [--runs N]

"cold" means no dtproc cache (``ElfFile.clear_cache()`` before each run): open, read the
headers, parse the table.  The files themselves are in the page cache either way.  "cached"
is the same request again (``ElfFile.open`` hits its identity cache).  For pyelftools,
"cold" is a fresh ``ELFFile`` walking every entry, "again" a second walk over the same
``ELFFile`` (it keeps nothing parsed, so that is the best it offers).  pyelftools runs a
quarter as often: it is slow.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from _harness import Options, Table, measure, options, report
from dtproc.elf import ElfFile

FILES = {
    "libc.so.6": "/lib/x86_64-linux-gnu/libc.so.6",
    "python3.11": "/usr/bin/python3.11",
    "libstdc++.so.6": "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
}
QUERIES_PER_RUN = 100


def ours_symbols(path: str) -> int:
    return len(ElfFile.open(path).symbols)


def ours_full_symbols(path: str) -> int:
    return len(ElfFile.open(path).full_symbols())


def ours_first_queries(path: str) -> int:
    """Cold table plus the first lookup and the first address query (builds both indexes)."""
    elf = ElfFile.open(path)
    elf.symbols.lookup("main")
    elf.symbols.at(elf.entry)
    return len(elf.symbols)


def ours_relocations(path: str) -> int:
    return len(ElfFile.open(path).relocations())


def ours_relocation_objects(path: str) -> int:
    return len(list(ElfFile.open(path).relocations()))


def ours_plt(path: str) -> int:
    return len(ElfFile.open(path).plt_entries())


def pyelftools_symbols(elf: ELFFile) -> int:
    count = 0
    for section in elf.iter_sections():
        if isinstance(section, SymbolTableSection) and section["sh_type"] != "SHT_NOBITS":
            count += sum(bool(sym.name) for sym in section.iter_symbols())
    return count


def pyelftools_relocations(elf: ELFFile) -> int:
    count = 0
    for section in elf.iter_sections():
        if isinstance(section, RelocationSection) and section["sh_flags"] & 2:
            count += sum(1 for _ in section.iter_relocations())
    return count


def pyelftools_cold(walk: Callable[[ELFFile], int], path: str) -> int:
    with open(path, "rb") as f:
        return walk(ELFFile(f))


Method = tuple[str, Callable[[str], int], bool]  # column, function of the path, cold


PYELFTOOLS = ["pyelftools cold", "pyelftools again"]


def comparison(
    title: str, what: str, methods: list[Method], walk: Callable[[ELFFile], int], opts: Options
) -> Table:
    """One row per file: our *methods*, then pyelftools *walk* cold and again."""
    table = Table(
        f"{title}, whole table (ratio to pyelftools cold)",
        f"file ({what})",
        [m[0] for m in methods] + PYELFTOOLS,
        baseline=PYELFTOOLS[0],
    )
    slow = max(1, opts.runs // 4)
    for label, path in FILES.items():
        row = f"{label} ({methods[0][1](path)})"
        for column, fn, cold in methods:
            setup = ElfFile.clear_cache if cold else None
            table.add(row, column, measure(functools.partial(fn, path), opts.runs, setup=setup))
        cold_walk = functools.partial(pyelftools_cold, walk, path)
        table.add(row, PYELFTOOLS[0], measure(cold_walk, slow, warmup=1))
        with open(path, "rb") as f:
            again = functools.partial(walk, ELFFile(f))
            table.add(row, PYELFTOOLS[1], measure(again, slow, warmup=1))
    return table


SYMBOL_METHODS: list[Method] = [
    ("dtproc cold", ours_symbols, True),
    ("dtproc cold + lookup + at", ours_first_queries, True),
    ("dtproc cached", ours_symbols, False),
    ("dtproc cold full_symbols", ours_full_symbols, True),
]
RELOCATION_METHODS: list[Method] = [
    ("dtproc cold", ours_relocations, True),
    ("dtproc cold, every object", ours_relocation_objects, True),
    ("dtproc cold plt_entries", ours_plt, True),
]


def query_table(opts: Options) -> Table:
    libc = ElfFile.open(FILES["libc.so.6"]).full_symbols()
    malloc = libc.lookup("malloc")
    assert malloc is not None
    queries: dict[str, Callable[[], object]] = {
        "lookup('malloc')": lambda: libc.lookup("malloc"),
        "at(malloc + 10)": lambda: libc.at(malloc.value + 10),
        "glob('str*'), listed": lambda: list(libc.glob("str*")),
    }
    table = Table("Queries on libc's full symbol table, per query", "query", ["dtproc"])
    for name, query in queries.items():
        stats = measure(functools.partial(_repeat, query), opts.runs)
        table.add(name, "dtproc", stats.scaled(QUERIES_PER_RUN))
    return table


def _repeat(query: Callable[[], object]) -> None:
    for _ in range(QUERIES_PER_RUN):
        query()


def main() -> None:
    opts, _ = options(__doc__.splitlines()[0], runs=20)
    tables = [
        comparison(
            "Symbol tables (.dynsym + .symtab)", "symbols", SYMBOL_METHODS, pyelftools_symbols, opts
        ),
        comparison(
            "Dynamic relocations (RELR not counted)",
            "relocations",
            RELOCATION_METHODS,
            pyelftools_relocations,
            opts,
        ),
        query_table(opts),
    ]
    report("elf", opts, tables)


if __name__ == "__main__":
    main()
