"""Input resolution for ``pgseg segment``: files, directories, glob patterns and paths read from stdin.

Every resolved image keeps a *relative* path (``rel``) that decides where its outputs go under ``--out``:

* a file given directly: its name (``photos/cat.jpg`` -> ``cat.jpg``);
* a file found in a directory: its path below that directory (``photos/`` + ``--recursive`` ->
  ``indoor/cat.jpg``), so the output tree mirrors the input sub-folders;
* a file matched by a glob: its path below the pattern's fixed prefix (``"photos/**/*.jpg"`` ->
  ``indoor/cat.jpg``); patterns are expanded here, so quoted patterns work on every shell;
* ``-``: newline-separated paths on stdin (blank lines ignored), each resolved like a command-line item, so
  ``find photos -name '*.jpg' | pgseg segment - ...`` works.

Duplicates (the same file reached twice) are kept once. A path that does not exist, a pattern that matches
nothing, or a directory without images is reported in ``missing`` and does not stop the others.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

__all__ = ["IMAGE_SUFFIXES", "InputImage", "ResolvedInputs", "resolve_inputs", "STDIN"]

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)
STDIN = "-"
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class InputImage:
    """One image to segment.

    Attributes:
        path: the file as given or found (not resolved: messages show what the user typed).
        rel: POSIX relative path used to place the outputs under ``--out`` (always ends in the file name).
    """

    path: Path
    rel: str


@dataclass
class ResolvedInputs:
    """Result of :func:`resolve_inputs`.

    Attributes:
        images: images in the order found (directories and globs sorted), duplicates removed.
        missing: ``(item, reason)`` for every item that gave nothing (missing path, empty pattern, ...).
    """

    images: list[InputImage] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _walk(root: Path, recursive: bool) -> list[Path]:
    if not recursive:
        return sorted(p for p in root.iterdir() if p.is_file() and _is_image(p))
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # skip .pgseg_cache and friends
        found += [Path(dirpath) / f for f in sorted(filenames) if _is_image(Path(f))]
    return found


def _glob_root(pattern: str) -> Path:
    """The directory prefix of ``pattern`` before its first component with a wildcard."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if _GLOB_CHARS & set(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _rel(path: Path, root: Path) -> str:
    try:
        return PurePosixPath(*path.relative_to(root).parts).as_posix()
    except ValueError:
        return path.name


def resolve_inputs(
    items: Iterable[str], *, recursive: bool = False, stdin: Iterable[str] | None = None
) -> ResolvedInputs:
    """Expand command-line inputs into image files with their output-relative paths.

    Args:
        items: files, directories, glob patterns (``*``, ``?``, ``[...]``, ``**`` with ``recursive``
            semantics of :func:`glob.glob`) and ``-`` for stdin.
        recursive: descend into sub-directories of directory inputs (hidden ones are skipped).
        stdin: the lines to read for ``-`` (e.g. ``sys.stdin``); each line is one path, directory or pattern.

    Returns:
        :class:`ResolvedInputs` (images and the items that gave nothing). Never raises for a bad item.
        Files given explicitly (directly, by a glob, or on stdin) are taken whatever their suffix: a
        non-image then fails at decode time with a clear message. Directory walks keep only known image
        suffixes (:data:`IMAGE_SUFFIXES`).
    """
    result = ResolvedInputs()
    seen: set[str] = set()

    def add(path: Path, rel: str) -> None:
        key = os.path.realpath(path)
        if key in seen:
            return
        seen.add(key)
        result.images.append(InputImage(path=path, rel=rel))

    def one(item: str) -> None:
        if item == "":
            return
        path = Path(item)
        if _GLOB_CHARS & set(item) and not path.exists():
            matches = sorted(glob.glob(item, recursive=True))
            files = [Path(m) for m in matches if Path(m).is_file()]
            dirs = [Path(m) for m in matches if Path(m).is_dir()]
            root = _glob_root(item)
            for f in files:
                add(f, _rel(f, root))
            for d in dirs:
                for f in _walk(d, recursive):
                    add(f, _rel(f, root))
            if not files and not any(_walk(d, recursive) for d in dirs):
                result.missing.append((item, "pattern matched no image"))
            return
        if path.is_dir():
            found = _walk(path, recursive)
            if not found:
                hint = "" if recursive else " (add --recursive to look in sub-folders)"
                result.missing.append((item, f"no images in directory{hint}"))
            for f in found:
                add(f, _rel(f, path))
        elif path.exists():
            add(path, path.name)
        else:
            result.missing.append((item, "not found"))

    for item in items:
        if item == STDIN:
            if stdin is None:
                result.missing.append((item, "'-' needs paths on stdin, but none was given"))
                continue
            for line in stdin:
                one(line.rstrip("\r\n").strip())
        else:
            one(item)
    return result
