"""A child process that must not outlive the thread that started it (the worker, a grammar
compile process): the kernel kills it, whatever it is doing."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """The kernel sends this process SIGKILL when the thread that started it exits (Linux
    ``PR_SET_PDEATHSIG``), even inside a C call holding the GIL; elsewhere a caller's own
    parent check is the only guard. Exits at once if ``parent`` is already gone.

    Invariant: the parent starts such a child from a thread that lives as long as the child
    should (the process's main thread, a pool thread that runs until shutdown)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
