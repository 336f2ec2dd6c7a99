"""Package version (single source: the installed distribution metadata)."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("pgseg")
except metadata.PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"
