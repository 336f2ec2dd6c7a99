"""Worker processes that never outlive the process that started them."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

__all__ = ["end_with_parent"]


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
