"""Content hashes of checkpoints (provenance in metrics.json, feature-cache keys)."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["file_sha256", "image_cache_key", "checkpoint_sha256"]

_WEIGHT_SUFFIXES = {".pt", ".pth", ".bin", ".safetensors", ".json"}


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Full hex SHA-256 of one file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def image_cache_key(path: str | Path) -> str:
    """Feature-cache key of an image file: ``"sha256:" + file_sha256(path)`` (renames and copies still hit;
    the key ``segment --cache`` and ``visualize-prototypes --cache`` share)."""
    return "sha256:" + file_sha256(path)


def checkpoint_sha256(path: str | Path) -> str:
    """Hex SHA-256 identifying a checkpoint of any supported layout.

    - a file: its SHA-256;
    - a run directory with ``last.pt``: the SHA-256 of ``last.pt``;
    - a ``pgseg convert`` pair ``NAME`` (``NAME.safetensors`` + ``NAME.json``) or a Hugging Face directory
      (``config.json`` + weights): the SHA-256 of the sorted (name, file hash) list of its weight and
      config files.

    Raises:
        FileNotFoundError: nothing to hash at ``path``.
    """
    p = Path(path)
    if p.is_file():
        return file_sha256(p)
    if p.is_dir() and (p / "last.pt").is_file():
        return file_sha256(p / "last.pt")
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.is_file() and q.suffix in _WEIGHT_SUFFIXES)
    else:
        files = sorted(q for q in (p.with_suffix(".safetensors"), p.with_suffix(".json")) if q.is_file())
    if not files:
        raise FileNotFoundError(f"no checkpoint files at {p}")
    h = hashlib.sha256()
    for q in files:
        h.update(f"{q.name}:{file_sha256(q)}\n".encode())
    return h.hexdigest()
