"""Probes: which sites a D program's descriptions name, and the backends that catch hits.

``sites`` and the providers (``pid``, ``usdt``) say *which* probes and *where*;
the backends say *how* a hit is caught: ptrace breakpoints (any action; the
target stops per hit) or kernel uprobes through perf_event (no stop per hit;
counters, or samples of registers and the user stack). ``session`` ties a
compiled program, the processes and the backends together.
"""
