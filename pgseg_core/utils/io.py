"""File helpers: atomic writes, stale temporary files of killed runs, output-path checks, text reads.

Atomic writes go to a temporary file beside the target, ``.NAME.PID.XXXXXXXX.tmp``, which is then renamed
over the target (``os.replace``): a reader sees the old file or the new one, never half of one. The PID in the
name lets a later run tell a temporary file of a process that is gone (killed with ``kill -9``, a power cut)
from one a live process is still writing: :func:`remove_stale_temps` deletes only the first kind. Files are
created with the permissions the umask gives (0644 under the usual 022), like any other program's output.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

from pgseg_core.errors import DataError, OutputError

__all__ = [
    "atomic_write",
    "atomic_write_json",
    "atomic_torch_save",
    "read_text_file",
    "remove_stale_temps",
    "pid_alive",
    "ensure_dir",
    "check_writable_file",
    "output_error",
]

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a zombie counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def output_error(path: str | Path, e: OSError, what: str = "write") -> OutputError:
    """One line for an OSError on a user path: the path, the reason, and the fix for the usual reasons."""
    reason = e.strerror or str(e)
    fixes = {
        errno.ENOSPC: "the disk is full: free space or write somewhere else",
        errno.EDQUOT: "the disk quota is used up: free space or write somewhere else",
        errno.EACCES: "no permission: choose a path you can write",
        errno.EPERM: "not permitted: choose a path you can write",
        errno.EROFS: "read-only file system: choose a path you can write",
        errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
        errno.EISDIR: "it is a folder: name a file",
        errno.ENOENT: "a folder on the way does not exist and cannot be created",
        errno.EEXIST: "a file is in the way of a folder: choose another path",
    }
    fix = fixes.get(e.errno or -1, "choose another path")
    return OutputError(f"cannot {what} {path}: {reason} ({fix})")


def ensure_dir(path: str | Path) -> Path:
    """Create the folder ``path`` (and its parents) if missing.

    Raises:
        OutputError: ``path`` is a file, or cannot be created (permission, read-only, a file on the way).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} is a file, not a folder: choose another output folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(path, e, "create the folder") from e
    return path


def check_writable_file(path: str | Path) -> Path:
    """Fail early, before a long computation, when the file ``path`` could not be written later: create
    its folder and a temporary file beside it (removed again). An existing file is left untouched.

    Raises:
        OutputError: ``path`` is a folder, or its folder cannot be created or written.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder: name the file to write")
    ensure_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise output_error(path, e) from e
    os.close(fd)
    os.unlink(tmp)
    return path


def remove_stale_temps(folder: str | Path, *, recursive: bool = False) -> int:
    """Delete the temporary files that :func:`atomic_write` left in ``folder`` when its process died.

    Only files named like ours (``.NAME.PID.XXXX.tmp``) whose PID no longer runs are removed; a live
    process's temporary files are left alone. Returns how many were removed (0 when ``folder`` is missing).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        m = _TEMP.match(path.name)
        if m and path.is_file() and not pid_alive(int(m["pid"])):
            try:
                path.unlink()
                removed += 1
            except OSError:
                pass  # another run removed it first, or no permission: not ours to fail on
    return removed


def atomic_write(path: str | Path, writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically (no partial file on failure).

    The file gets the umask's permissions. ``writer``'s own errors propagate unchanged; an OSError of the
    temporary file itself (no permission, a file where the folder should be) propagates as is, for the
    caller or the CLI to name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, _FILE_MODE)
        writer(tmp)
        os.chmod(tmp, _FILE_MODE)  # again: some writers (safetensors) replace the file with their own
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """:func:`atomic_write` of ``data`` as indented JSON with a trailing newline."""

    def _w(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")

    return atomic_write(path, _w)


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    """:func:`atomic_write` of ``torch.save(obj)``."""
    import torch

    try:
        return atomic_write(path, lambda tmp: torch.save(obj, tmp))
    except RuntimeError as e:  # torch's zip writer reports a failed write (full disk) as a RuntimeError
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise OutputError(
            f"cannot write {path}: {first} (the disk may be full: free space or write somewhere else)"
        ) from e


def read_text_file(path: str | Path, what: str, encoding: str = "utf-8") -> str:
    """The text of ``path``.

    Raises:
        DataError: ``cannot read {what} {path}: {reason}`` when the file cannot be opened or decoded.
    """
    try:
        return Path(path).read_text(encoding=encoding)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {what} {path}: {e}") from e
