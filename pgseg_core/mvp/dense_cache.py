"""Frozen dense features in the HDF5 feature cache (docs/MVP_SEG.md §6, docs/FEATURE_CACHE.md).

The backbone is frozen, so its dense map of an image never changes: it is stored in the ``dense`` section
of a :class:`pgseg_core.cache.features.FeatureCache`, keyed by the sha256 of the image's pixels (content,
not file name). The cache's attributes name the backbone (``checkpoint_sha256`` = the backbone weights'
sha256) and the resize settings (``config_hash``), so another backbone or resize is refused.

Entry ``/dense/<image sha256>``: ``dense`` float32 [D, h, w] (L2-normalised over D), attributes
``orig_size``, ``resized_size``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from ..cache.features import CacheMeta, FeatureCache

__all__ = ["image_content_key", "open_dense_cache", "DENSE_SECTION", "dense_config_hash"]

DENSE_SECTION = "dense"


def image_content_key(image: np.ndarray) -> str:
    """sha256 of a uint8 image's shape and pixels."""
    arr = np.ascontiguousarray(image)
    h = hashlib.sha256(repr(arr.shape).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def dense_config_hash(reference: str, short_side: int, max_long: int) -> str:
    """16-hex-digit hash of what decides the dense map besides the weights."""
    blob = json.dumps({"backbone": reference, "short_side": short_side, "max_long": max_long}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def open_dense_cache(
    path: str | Path, backbone, short_side: int, max_long: int, dataset: str = ""
) -> FeatureCache:
    """Open (or create) the cache for ``backbone`` at this resize.

    Raises:
        DataError: a cache written for another backbone, resize or dataset.
        OutputError: an unwritable path.
    """
    kind = backbone.reference.split(":", 1)[0]
    meta = CacheMeta(
        checkpoint_sha256=backbone.identity,
        config_hash=dense_config_hash(kind, short_side, max_long),
        protocol="mvp-dense",
        dataset=dataset,
    )
    return FeatureCache.open(path, meta)


def read_dense(cache: FeatureCache, key: str, device: torch.device | str) -> torch.Tensor | None:
    """The cached [1, D, h, w] map of ``key``, or None."""
    if cache is None or not cache.has_section(DENSE_SECTION, key):
        return None
    arrays, _ = cache.get_section(DENSE_SECTION, key)
    return torch.from_numpy(arrays["dense"]).to(device)[None]


def write_dense(cache: FeatureCache, key: str, dense: torch.Tensor, orig_size, resized_size) -> None:
    """Store one image's [1, D, h, w] map."""
    attrs = {"orig_size": list(orig_size), "resized_size": list(resized_size)}
    cache.put_section(DENSE_SECTION, key, {"dense": dense[0].float().cpu().numpy()}, attrs)
