"""pgseg command-line interface (Typer). All logic lives in :mod:`pgseg_core`."""

import signal
import sys

from pgseg_core.version import __version__

__all__ = ["__version__", "main"]


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM ends a command like Ctrl-C does: ``finally`` blocks run, decode workers stop, files close;
    the exit status is 128 + the signal number, as a shell reports it."""
    sys.exit(128 + signum)


def main() -> None:
    """The ``pgseg`` console script: the SIGTERM handler is installed before the CLI's modules (typer,
    rich, torch) load, so a run stopped at any moment after start-up exits cleanly with status 143."""
    signal.signal(signal.SIGTERM, _terminate)
    from .app import main as run_app

    run_app()
