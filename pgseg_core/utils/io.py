"""File helpers: atomic writes (a temporary file beside the target, then ``os.replace``) and text reads
that fail with a :class:`~pgseg_core.errors.DataError` naming the file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from pgseg_core.errors import DataError

__all__ = ["atomic_write", "atomic_write_json", "atomic_torch_save", "read_text_file"]


def atomic_write(path: str | Path, writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically (no partial file on failure)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | Path, data: Any) -> Path:
    def _w(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")

    return atomic_write(path, _w)


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def read_text_file(path: str | Path, what: str, encoding: str = "utf-8") -> str:
    """The text of ``path``.

    Raises:
        DataError: ``cannot read {what} {path}: {reason}`` when the file cannot be opened or decoded.
    """
    try:
        return Path(path).read_text(encoding=encoding)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {what} {path}: {e}") from e
