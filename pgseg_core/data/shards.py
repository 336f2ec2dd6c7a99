"""WebDataset shard writing, ``index.json`` (schema 1), and shard specifications -> tar paths.

A shard directory holds ``<split>-%06d.tar`` files plus one ``index.json`` (docs/ARCHITECTURE.md,
"Shards"). Only the public webdataset API is used (``wds.TarWriter``). The sources that fill shards are in
:mod:`pgseg_core.data.sources`.

A shard set is written through :class:`pgseg_core.data.shard_set.ShardSet`, which builds it in a private
temporary folder and publishes it with ``index.json`` last, so a shard directory without ``index.json`` is
never complete: :func:`resolve_shards` refuses one (explicit tar lists, brace patterns and globs are read as
given).
"""

from __future__ import annotations

import glob as _glob
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..utils.io import atomic_write, ensure_dir, output_error
from ..version import __version__

log = logging.getLogger("pgseg.data.shards")

INDEX_NAME = "index.json"
SCHEMA = 1
KIND = "pgseg-shards"
_TAR_MTIME = 1_704_067_200.0  # fixed member timestamp (2024-01-01) so identical inputs give identical bytes
_SHARD_RE = r"-(\d{6})\.tar$"

Progress = Callable[[int, int], None]


# ----------------------------------------------------------------------------------------------------------
# writing


class SplitWriter:
    """Write the samples of one split into ``<split>-%06d.tar`` shards of at most ``shard_size`` samples.

    Each shard is written as ``<name>.tmp``, flushed to disk and renamed when full, so readers never see a
    partial tar. On :meth:`close`, stale ``<split>-NNNNNN.tar`` files left in ``out_dir`` by an earlier,
    larger build are deleted. Use as a context manager; on an exception the unfinished shard is removed.
    A whole shard set is written through :class:`ShardSet`, which gives each split a writer.

    Args:
        out_dir: shard directory (created if missing).
        split: split name, also the shard file prefix ("train", "val-caption", ...).
        shard_size: samples per shard (>= 1).
        shown_as: the path named in error messages (default ``out_dir``).

    Raises:
        OutputError: a shard cannot be written (full disk, no permission): one line naming ``shown_as``.
    """

    def __init__(
        self, out_dir: str | Path, split: str, shard_size: int = 1000, *, shown_as: str | Path | None = None
    ):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", split):
            raise ValueError(f"split name {split!r} must be letters, digits, '-' or '_'")
        self.out_dir = ensure_dir(out_dir)
        self.shown_as = Path(shown_as) if shown_as is not None else self.out_dir
        self.split = split
        self.shard_size = int(shard_size)
        self.count = 0
        self.shards: list[str] = []
        self._tar: Any = None
        self._file: Any = None
        self._in_shard = 0

    def _open(self) -> None:
        import webdataset as wds

        name = f"{self.split}-{len(self.shards):06d}.tar"
        self._file = open(self.out_dir / (name + ".tmp"), "wb")
        self._tar = wds.TarWriter(self._file, encoder=False, mtime=_TAR_MTIME)
        self._name = name
        self._in_shard = 0

    def _finish(self) -> None:
        self._tar.close()  # webdataset's TarWriter leaves a file object it did not open open
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.out_dir / (self._name + ".tmp"), self.out_dir / self._name)
        self.shards.append(self._name)
        self._tar = self._file = None

    def write(self, sample: dict[str, Any]) -> None:
        """Add one sample.

        Args:
            sample: ``{"__key__": str, ext: bytes | str | dict}``; dicts are stored as JSON (sorted keys),
                strings as UTF-8. Keys must not contain dots.
        """
        key = sample.get("__key__")
        if not isinstance(key, str) or not key or "." in key:
            raise ValueError(f"sample key must be a non-empty string without dots, got {key!r}")
        out: dict[str, Any] = {"__key__": key}
        for ext, value in sample.items():
            if ext == "__key__":
                continue
            if isinstance(value, dict | list):
                value = json.dumps(value, sort_keys=True, ensure_ascii=False)
            if isinstance(value, str):
                value = value.encode("utf-8")
            out[ext] = bytes(value)
        try:
            if self._tar is None:
                self._open()
            self._tar.write(out)
            self._in_shard += 1
            self.count += 1
            if self._in_shard >= self.shard_size:
                self._finish()
        except OSError as e:
            raise output_error(self.shown_as, e, "write the shards of") from e

    def close(self) -> list[str]:
        """Finish the last shard, delete stale shards of this split, and return the shard file names."""
        try:
            if self._tar is not None:
                self._finish()
        except OSError as e:
            raise output_error(self.shown_as, e, "write the shards of") from e
        keep = set(self.shards)
        for p in self.out_dir.glob(f"{self.split}-*.tar"):
            if re.fullmatch(re.escape(self.split) + _SHARD_RE, p.name) and p.name not in keep:
                log.info("removing stale shard %s", p)
                p.unlink()
        return list(self.shards)

    def abort(self) -> None:
        """Drop the unfinished shard (already finished shards stay); never raises for the file itself."""
        if self._tar is not None:
            try:
                self._tar.close()
                self._file.close()
            except OSError:
                pass  # a full disk fails the final flush too; the file is deleted anyway
            finally:
                (self.out_dir / (self._name + ".tmp")).unlink(missing_ok=True)
                self._tar = self._file = None

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()


def new_index(
    splits: dict[str, dict[str, Any]],
    *,
    seed: int | None = None,
    vocabulary: dict[str, list[str]] | None = None,
    sources: list[dict[str, Any]] | None = None,
    skipped: dict[str, int] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Assemble an ``index.json`` dict (schema 1; see docs/ARCHITECTURE.md).

    Args:
        splits: ``{split: {"shards": [file names], "count": n, ...}}``.
        seed: generator seed, or None for data that was not generated.
        vocabulary: ``{"caption": [...], "heldout": [...]}``.
        sources: ``[{"name", "licence", "items", ...}]``.
        skipped: counters of inputs that were left out.
        **extra: additional top-level keys.

    Returns:
        The index dict.
    """
    index: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": KIND,
        "created_by": f"pgseg {__version__}",
        "seed": seed,
        "splits": splits,
        "vocabulary": vocabulary or {"caption": [], "heldout": []},
        "sources": sources or [],
        "skipped": skipped or {},
    }
    index.update(extra)
    return index


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` via a temporary file (flushed to disk) and a rename."""
    text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"

    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, _write)


def write_index(out_dir: str | Path, index: dict[str, Any]) -> Path:
    """Write ``<out_dir>/index.json`` atomically and return its path."""
    return write_json_atomic(Path(out_dir) / INDEX_NAME, index)


# ----------------------------------------------------------------------------------------------------------
# reading


def read_index(path_or_dir: str | Path) -> dict[str, Any]:
    """Load and validate an ``index.json``.

    Args:
        path_or_dir: the index file, or the shard directory holding it.

    Returns:
        The index dict (schema 1).

    Raises:
        DataError: the index is missing, not JSON, of another schema/kind, or its ``splits`` are malformed.
    """
    path = Path(path_or_dir)
    if path.is_dir():
        if not (path / INDEX_NAME).is_file():
            raise DataError(_no_index_message(path))
        path = path / INDEX_NAME
    if not path.is_file():
        raise DataError(f"no shard index at {path}: build shards with `pgseg prep-shards` first")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read shard index {path}: {e}; rebuild the shards") from e
    if not isinstance(index, dict) or index.get("kind") != KIND:
        raise DataError(f'{path} is not a pgseg shard index (expected "kind": "{KIND}")')
    schema = index.get("schema")
    if schema != SCHEMA:
        raise DataError(
            f"{path} has shard-index schema {schema!r} but this pgseg reads schema {SCHEMA}; "
            "rebuild the shards with this version"
        )
    splits = index.get("splits")
    if not isinstance(splits, dict) or not splits:
        raise DataError(f'{path}: "splits" must be a non-empty mapping; rebuild the shards')
    for name, entry in splits.items():
        ok = (
            isinstance(entry, dict)
            and isinstance(entry.get("shards"), list)
            and all(isinstance(s, str) for s in entry["shards"])
            and isinstance(entry.get("count"), int)
            and entry["count"] >= 0
        )
        if not ok:
            raise DataError(
                f'{path}: split \'{name}\' needs "shards" (list of file names) and "count" (int); '
                "rebuild the shards"
            )
    return index


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{000000..000003}`` numeric ranges and ``{a,b}`` alternatives (nested left to right).

    Args:
        pattern: e.g. ``"dir/train-{000000..000003}.tar"``.

    Returns:
        The expanded strings in order (the pattern itself if it has no braces).

    Raises:
        DataError: a malformed range such as ``{5..x}``.
    """
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    head, body, tail = pattern[: m.start()], m.group(1), pattern[m.end() :]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = int(rng.group(1)), int(rng.group(2))
        width = len(rng.group(1)) if rng.group(1).startswith("0") else 0
        step = 1 if hi >= lo else -1
        options = [str(i).zfill(width) for i in range(lo, hi + step, step)]
    elif ".." in body:
        raise DataError(f"malformed brace range '{{{body}}}' in '{pattern}': use e.g. {{000000..000003}}")
    else:
        options = body.split(",")
    return [s for opt in options for s in expand_braces(head + opt + tail)]


def _shards_from_index(index_path: Path, split: str) -> list[str]:
    index = read_index(index_path)
    splits = index["splits"]
    if split not in splits:
        raise DataError(
            f"split '{split}' is not in {index_path}; available splits: {', '.join(sorted(splits))}"
        )
    root = index_path.parent
    paths = [str(root / name) for name in splits[split]["shards"]]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise DataError(
            f"{index_path} lists {len(missing)} missing shard(s), e.g. {missing[0]}; rebuild the shards"
        )
    if not paths:
        raise DataError(f"split '{split}' in {index_path} has no shards; rebuild with more samples")
    return paths


def resolve_shards(spec: str | Path, split: str = "train") -> list[str]:
    """Turn a shard specification into a list of tar paths.

    Args:
        spec: a directory with ``index.json``, an ``index.json`` path, a brace pattern
            ``"dir/train-{000000..000003}.tar"``, a glob ``"dir/train-*.tar"``, a single ``.tar`` file, or
            a URL (``http://...``, ``pipe:...``; expanded but not checked), or for ``train`` dataset names
            (``cc12m``, ``cc3m+cc12m``: :mod:`pgseg_core.data.sources.named`). A directory without
            ``index.json`` is refused: it is an interrupted build (or not a shard set); its tar files can
            still be named explicitly by a pattern.
        split: the split to take from an index or directory ("train", "val-caption", "val-heldout").

    Returns:
        Shard paths/URLs in a stable order.

    Raises:
        DataError: nothing found, a directory without ``index.json``, shards listed but missing, or the
            split is absent (lists the splits).
    """
    s = str(spec).strip()
    if not s:
        raise DataError("no shards given: pass a shard directory, index.json, brace pattern or glob")
    if "://" in s or s.startswith("pipe:"):
        return expand_braces(s)
    p = Path(s).expanduser()
    if p.is_dir():
        if (p / INDEX_NAME).is_file():
            return _shards_from_index(p / INDEX_NAME, split)
        raise DataError(_no_index_message(p))
    if p.suffix == ".json":
        if not p.is_file():
            raise DataError(f"shard index {p} not found")
        return _shards_from_index(p, split)
    if "{" in s:
        paths = expand_braces(str(p))
        missing = [q for q in paths if not os.path.exists(q)]
        if missing:
            raise DataError(f"shard pattern '{s}' names {len(missing)} missing file(s), e.g. {missing[0]}")
        return paths
    if any(c in s for c in "*?["):
        found = sorted(_glob.glob(str(p)))
        if not found:
            raise DataError(f"no shards match '{s}'")
        return found
    if p.is_file():
        return [str(p)]
    if split == "train":
        from .sources.named import is_dataset_spec, resolve_train_sources

        if is_dataset_spec(s):  # named datasets (docs/WEB_DATA.md §2): every shard of every member
            return [u for src in resolve_train_sources(s) for u in src.urls]
    aside = sorted(p.parent.glob(f".{_glob.escape(p.name)}.*.old")) if p.parent.is_dir() else []
    if aside:
        raise DataError(
            f"no shards at '{s}', but {aside[0]} holds the previous shard set of an interrupted "
            "prep-shards: run prep-shards again (it restores that set first)"
        )
    raise DataError(
        f"no shards at '{s}': expected a directory with {INDEX_NAME}, an {INDEX_NAME} file, a brace "
        "pattern like dir/train-{000000..000003}.tar, or a glob"
    )


def _no_index_message(folder: Path) -> str:
    tars = sorted(folder.glob("*.tar"))
    also = (
        f", or name its tar files explicitly ({folder}/{tars[0].name.rsplit('-', 1)[0]}-*.tar)"
        if tars
        else ""
    )
    return (
        f"{folder} has no {INDEX_NAME}: the shard set is incomplete (an interrupted prep-shards?) or not a "
        f"shard set; rebuild it with pgseg prep-shards{also}"
    )
