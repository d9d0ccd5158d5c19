"""Layer 1: thin, typed kernel interfaces for Linux x86-64 (no policy lives here).

ptrace and wait go through ctypes because the stdlib has no binding for them;
memory goes through ``/proc/PID/mem``; everything else is ``os`` and ``/proc``.
Errors surface as ``OSError`` with the real errno: the layers above translate
them once (``dtproc.errors.from_oserror``).
"""
