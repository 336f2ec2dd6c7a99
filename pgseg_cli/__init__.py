"""pgseg command-line interface (Typer). All logic lives in :mod:`pgseg_core`."""

from pgseg_core.version import __version__

__all__ = ["__version__"]
