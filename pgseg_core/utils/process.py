"""Processes and signals: decode workers that never outlive their run, writes a polite stop waits for."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator

__all__ = ["end_with_parent", "deferred_signals"]


def end_with_parent(parent_pid: int) -> None:
    """Make this (worker) process end when its parent ``parent_pid`` dies, however it dies.

    On Linux the kernel sends SIGTERM to this process when the parent exits (``PR_SET_PDEATHSIG``), so a
    decode worker never outlives a ``kill -9`` of its run; elsewhere this is a no-op beyond the next check.
    When the parent is already gone (it died before this call), the process exits at once with status 1.
    The signal follows the parent *thread* that started this process: call it in processes started by a
    thread that lives as long as they are needed (DataLoader workers of the main thread).
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # no libc prctl (e.g. a static or non-glibc build): best effort
            pass
    if os.getppid() != parent_pid:
        os._exit(1)


@contextlib.contextmanager
def deferred_signals(signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Hold SIGTERM / Ctrl-C that arrive inside the block until it ends, then deliver them.

    For short writes that must not be cut in half by a polite stop (a feature-cache entry, the renames that
    publish a shard set); ``kill -9`` cannot be held, and the writers' own recovery covers it. The handlers
    are swapped for recorders in the main thread (Python runs every signal handler there, whichever thread
    the kernel picked), restored at the end, and each signal that came is raised again so the restored
    handler (or the default action) sees it. In other threads the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.getsignal(s) for s in signums}
    for s in signums:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        for s in dict.fromkeys(caught):
            signal.raise_signal(s)
