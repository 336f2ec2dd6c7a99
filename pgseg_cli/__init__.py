"""pgseg command-line interface (Typer). All logic lives in :mod:`pgseg_core`."""

import os
import signal
import sys
import threading

from pgseg_core.version import __version__

__all__ = ["__version__", "main"]

_TERMINATED = threading.Event()


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM ends a command like Ctrl-C does: ``finally`` blocks run, decode workers stop, files close;
    the exit status is 128 + the signal number, as a shell reports it."""
    _TERMINATED.set()
    sys.exit(128 + signum)


def _unraisable(args: object) -> None:
    """Python runs a signal handler at the next bytecode of the main thread, which may be inside a finaliser
    (``__del__``, an h5py callback); the SystemExit raised there is printed and dropped, and the command
    would go on. Deliver SIGTERM again a moment later, outside the finaliser, instead of printing it."""
    if _TERMINATED.is_set() and isinstance(getattr(args, "exc_value", None), SystemExit):
        again = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM))
        again.daemon = True
        again.start()
        return
    sys.__unraisablehook__(args)


def main() -> None:
    """The ``pgseg`` console script: the SIGTERM handler is installed before the CLI's modules (typer,
    rich, torch) load, so a run stopped at any moment after start-up exits cleanly with status 143."""
    signal.signal(signal.SIGTERM, _terminate)
    sys.unraisablehook = _unraisable
    from .app import main as run_app

    try:
        run_app()
    finally:
        if _TERMINATED.is_set():  # the command ended while a SIGTERM was on its way: report it
            sys.exit(143)
