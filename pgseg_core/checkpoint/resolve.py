"""Which files define a checkpoint, and its one identity (the SHA-256 that ``metrics.json`` records).

A user names a checkpoint by a path of one of these kinds (:func:`resolve` tells which); the files that
define it are:

* ``"file"``: a torch file (``.pt``, ``.pth``, ``.bin``) or a bare ``.safetensors``: that file;
* ``"run"``: a run directory: its ``last.pt``, else its ``checkpoint.pt``;
* ``"pair"``: a ``pgseg convert`` pair ``NAME.safetensors`` + ``NAME.json``, named by either file or by
  ``NAME``: both files;
* ``"hf"``: a Hugging Face GroupViT directory (``config.json`` + weights), its ``config.json``, or its
  ``model.safetensors`` / ``pytorch_model.bin``: the ``config.json`` and the weights read
  (``model.safetensors``, else the shard index ``model.safetensors.index.json`` and its shards, else
  ``pytorch_model.bin``).

A name that is no path but a released model's (``groupvit-gcc-yfcc``, ``nvidia/groupvit-gcc-yfcc@REV``; see
:mod:`.registry`, docs/WEIGHTS.md) resolves to its cached local checkpoint, downloaded first when missing; a
path that exists always wins over a name.

The identity :func:`checkpoint_sha256` is the hex SHA-256 of the one file, or for several files the SHA-256 of
their sorted ``"NAME:FILE_SHA256\\n"`` lines. The same checkpoint named in any of the ways above has the same
identity; a retrained, edited or replaced checkpoint has another. Reading (:mod:`.io`), the feature cache, the
text-embedding cache key and the ONNX sidecar all use this one resolution and this one identity (a short form
is its first 16 hex digits).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..utils.hashing import file_sha256
from .formats import CHECKPOINT_FORMAT
from .registry import fetch_weights

__all__ = ["ResolvedCheckpoint", "resolve", "checkpoint_sha256", "run_dir_file", "read_json"]

RUN_DIR_FILES = ("last.pt", "checkpoint.pt")  # a run directory's checkpoint, first found wins
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # a weight file named inside an HF directory


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """The files that define a checkpoint named by a user path (see the module docstring).

    Attributes:
        path: the path as given (for a released model named by its name: its local path).
        kind: ``"file"``, ``"run"``, ``"pair"`` or ``"hf"``.
        weights: the tensor files to read, in order (one, or an HF checkpoint's shards).
        meta: the JSON read beside the weights: a pair's ``NAME.json`` or an HF ``config.json``; else None.
        index: an HF shard index (``model.safetensors.index.json``); else None.
        source: what names an inferred config: the directory of a run or of an HF checkpoint named by its
            directory or ``config.json``, else the weight file.
        name: the registry name a released model was named by, else None.
    """

    path: Path
    kind: str
    weights: tuple[Path, ...]
    source: Path
    meta: Path | None = None
    index: Path | None = None
    name: str | None = None

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file whose bytes define the checkpoint, sorted."""
        extra = tuple(p for p in (self.meta, self.index) if p is not None)
        return tuple(sorted(set(self.weights + extra)))

    @cached_property
    def sha256(self) -> str:
        """The identity: 64 hex digits (see :func:`checkpoint_sha256`); computed once, on first use.

        Raises:
            OSError: a file cannot be read.
        """
        files = self.files
        if len(files) == 1:
            return file_sha256(files[0])
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.name}:{file_sha256(f)}\n".encode())
        return h.hexdigest()


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``.

    Raises:
        CheckpointError: unreadable, not JSON, or not an object.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


def run_dir_file(folder: Path) -> Path:
    """The checkpoint file of a run directory: ``last.pt``, else ``checkpoint.pt``.

    Raises:
        CheckpointError: the directory has neither.
    """
    for name in RUN_DIR_FILES:
        if (folder / name).exists():
            return folder / name
    raise CheckpointError(
        f"{folder} is a directory without last.pt (nor an HF GroupViT directory with "
        "config.json and model.safetensors); pass the checkpoint file"
    )


def _hf_weights(folder: Path) -> tuple[tuple[Path, ...], Path | None] | None:
    """(weight files, shard index or None) of an HF directory; None when it holds no weights."""
    if (folder / "model.safetensors").exists():
        return (folder / "model.safetensors",), None
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(read_json(index).get("weight_map", {}).values()))
        return tuple(folder / s for s in shards), index
    if (folder / "pytorch_model.bin").exists():
        return (folder / "pytorch_model.bin",), None
    return None


def _pair(path: Path) -> tuple[Path, Path] | None:
    """(weights, meta) of a ``pgseg convert`` pair named by either file or by their common stem."""
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    weights, meta = Path(f"{stem}.safetensors"), Path(f"{stem}.json")
    if weights.exists() and meta.exists():
        try:
            if json.loads(meta.read_text()).get("format") == CHECKPOINT_FORMAT:
                return weights, meta
        except (OSError, json.JSONDecodeError, AttributeError):
            return None
    return None


def _resolve_dir(path: Path) -> ResolvedCheckpoint:
    if not any((path / n).exists() for n in RUN_DIR_FILES) and (path / "config.json").exists():
        hf = _hf_weights(path)
        if hf is not None:
            return ResolvedCheckpoint(path, "hf", hf[0], path, meta=path / "config.json", index=hf[1])
    return ResolvedCheckpoint(path, "run", (run_dir_file(path),), path)


def _resolve_json(path: Path) -> ResolvedCheckpoint:
    data = read_json(path)
    if data.get("model_type") == "groupvit":
        hf = _hf_weights(path.parent)
        if hf is None:
            raise CheckpointError(
                f"{path.parent} has an HF GroupViT config.json but no model.safetensors or pytorch_model.bin"
            )
        return ResolvedCheckpoint(path, "hf", hf[0], path.parent, meta=path, index=hf[1])
    if data.get("format") == CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} names weights {path.with_suffix('.safetensors').name}, which is missing"
        )
    raise CheckpointError(f"{path} is a JSON file, not a checkpoint")


def _name_hint(text: str) -> str:
    """`` (did you mean the released model NAME?)`` for a near miss of a registry name; else a pointer to
    the list of names."""
    import difflib

    from .registry import load_registry

    close = difflib.get_close_matches(text, list(load_registry()), n=1, cutoff=0.6)
    if close:
        return f" (did you mean the released model {close[0]}?)"
    return " (nor a released model's name; 'pgseg models' lists them)"


def resolve(path: str | Path) -> ResolvedCheckpoint:
    """The files that define the checkpoint ``path`` names: a file, a run directory, a ``pgseg convert`` pair
    named by either file or by ``NAME``, an HF GroupViT directory / its ``config.json`` / its weight file, or
    a released model's registry name (:func:`.registry.fetch_weights`: its cached copy, downloaded first when
    missing).

    Reads at most the small JSON files involved (a pair's ``NAME.json``, an HF ``config.json`` or shard
    index); no weights, unless a released model has to be downloaded.

    Raises:
        CheckpointError: nothing there, a directory that is neither a run nor an HF checkpoint, a JSON file
            that is not a checkpoint, or a pair / HF config whose weights are missing. DownloadError: a
            released model that is not cached and cannot be downloaded (one line: what to fetch, where).
    """
    if not Path(path).exists() and _pair(Path(path)) is None:  # a path (or a pair's stem) wins over a name
        local = fetch_weights(str(path))
        if local is not None:
            res = resolve(local)
            name = str(path)
            return ResolvedCheckpoint(local, res.kind, res.weights, res.source, res.meta, res.index, name)
    path = Path(path)
    if path.is_dir():
        return _resolve_dir(path)
    pair = _pair(path)
    if pair is not None:
        return ResolvedCheckpoint(path, "pair", (pair[0],), pair[0], meta=pair[1])
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}{_name_hint(str(path))}")
    if path.suffix == ".json":
        return _resolve_json(path)
    config = path.parent / "config.json"
    if path.name in HF_WEIGHT_FILES and config.exists() and read_json(config).get("model_type") == "groupvit":
        return ResolvedCheckpoint(path, "hf", (path,), path, meta=config)
    return ResolvedCheckpoint(path, "file", (path,), path)


def checkpoint_sha256(path: str | Path) -> str:
    """The identity of the checkpoint ``path`` names: 64 hex digits (``checkpoint.sha256`` in metrics.json).

    The SHA-256 of its one file, or of the sorted ``"NAME:FILE_SHA256\\n"`` lines of its files (a ``pgseg
    convert`` pair, an HF checkpoint): the same for every way of naming the same checkpoint (:func:`resolve`).
    Short form (text-embedding cache, ONNX sidecar, ``metrics.json``'s ``sha256_16``): the first 16 digits.

    Raises:
        CheckpointError: ``path`` names no checkpoint (:func:`resolve`). OSError: a file cannot be read.
    """
    return resolve(path).sha256
