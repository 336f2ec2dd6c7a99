"""Content hashes of files (feature-cache keys of images).

A checkpoint's identity is :func:`pgseg_core.checkpoint.checkpoint_sha256`, built on :func:`file_sha256`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["file_sha256", "image_cache_key"]


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Full hex SHA-256 of one file.

    Raises:
        OSError: the file cannot be read.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def image_cache_key(path: str | Path) -> str:
    """Feature-cache key of an image file: ``"sha256:" + file_sha256(path)`` (renames and copies still hit;
    the key ``segment --cache`` and ``visualize-prototypes --cache`` share)."""
    return "sha256:" + file_sha256(path)
