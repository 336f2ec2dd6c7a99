"""Typed errors of the pgseg library.

Every error raised for bad user input is a :class:`PgsegError` whose message is one readable line that
names the offending thing and, where there is one, the fix. The CLI turns these into a single red line
on stderr and a non-zero exit; anything else is a bug and shows a traceback.
"""

from __future__ import annotations


class PgsegError(Exception):
    """Base class for user-facing errors (bad input, missing files, unavailable devices)."""

    exit_code = 1


class ConfigError(PgsegError):
    """A configuration key, value or preset is invalid."""


class DataError(PgsegError):
    """A dataset, shard, image or class file is missing, unreadable or malformed."""


class CheckpointError(PgsegError):
    """A checkpoint is missing, truncated, of another model kind, or otherwise unloadable."""


class DownloadError(CheckpointError):
    """Released weights cannot be fetched (offline, unreachable, refused, or a hash mismatch); the message
    names the URL to fetch by hand and the path to put the file at."""


class DeviceError(PgsegError):
    """The device the user asked for is not available."""


class DependencyError(PgsegError):
    """An optional dependency (or a package-shipped weight file) is missing."""


class OutputError(PgsegError):
    """An output path cannot be written (a file where a folder is needed, no permission, a full disk), or
    it belongs to another run and would be overwritten without being asked to."""
