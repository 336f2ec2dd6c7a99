"""pgseg_core.utils.process: signals held during short writes, delivered after them."""

from __future__ import annotations

import os
import signal
import threading
import time

from pgseg_core.utils.process import deferred_signals


def test_a_sigterm_inside_the_block_waits_for_its_end():
    seen: list[tuple[int, bool]] = []
    inside = {"now": False}
    old = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append((signum, inside["now"])))
    try:
        with deferred_signals():
            inside["now"] = True
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            for _ in range(1000):  # bytecodes: a handler would run here if it were not held
                pass
            assert seen == []
            inside["now"] = False
        assert seen == [(signal.SIGTERM, False)]  # delivered once, after the block
        assert signal.getsignal(signal.SIGTERM) is not None  # the caller's handler is back
    finally:
        signal.signal(signal.SIGTERM, old)


def test_without_a_signal_the_handlers_are_restored_unchanged():
    def handler(signum, frame):
        pass

    old = signal.signal(signal.SIGTERM, handler)
    try:
        with deferred_signals():
            pass
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, old)


def test_outside_the_main_thread_the_block_just_runs():
    ran = []

    def body():
        with deferred_signals():
            ran.append(True)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert ran == [True]
