"""HDF5 cache of frozen-stem features for training the demo variant.

When the image stem is frozen (the EfficientNet-Lite0 hybrid of ``pgseg-demo``), its output for a
training image never changes, so ``pgseg train`` encodes every training image once and trains the
grouping stages on the cached features (with feature-map flips as augmentation). Layout::

    /feats     float16 [N, 112, h, w]   stem features (chunks of 16 images, uncompressed)
    /captions  utf-8   [N]              caption of each image
    /keys      utf-8   [N]              shard sample keys
    attrs: schema=1, kind="pgseg-stem-cache", stem, img_size, data_fingerprint, complete (rows written)

Writes are resumable: ``complete`` is updated after each batch, so an interrupted build continues from
the last complete batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import DataError

__all__ = ["StemCache", "build_stem_cache", "data_fingerprint", "STEM_CACHE_SCHEMA"]

_log = logging.getLogger("pgseg.cache.stem")
STEM_CACHE_SCHEMA = 1


def data_fingerprint(shards: list[str]) -> str:
    """Hash of the shard names and sizes (a changed dataset invalidates the cache)."""
    items = []
    for s in shards:
        p = Path(s)
        items.append([p.name, p.stat().st_size if p.exists() else -1])
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


@dataclass
class StemCache:
    feats: torch.Tensor  # [N, 112, h, w] float16
    captions: list[str]
    path: str

    def __len__(self) -> int:
        return self.feats.shape[0]

    def batches(self, batch_size: int, seed: int, hflip: bool = True):
        """Endless random batches: (feats [B, 112, h, w] float32, captions list[str]); epochs reshuffle."""
        g = torch.Generator().manual_seed(seed)
        n = len(self)
        if n < batch_size:
            raise DataError(
                f"stem cache {self.path} holds {n} images, fewer than the batch size {batch_size}; "
                "build more training data or lower train.batch_size"
            )
        while True:
            order = torch.randperm(n, generator=g)
            for start in range(0, n - batch_size + 1, batch_size):
                idx = order[start : start + batch_size]
                feats = self.feats[idx].float()
                if hflip:
                    flip = torch.rand(batch_size, generator=g) < 0.5
                    feats[flip] = feats[flip].flip(-1)
                yield feats, [self.captions[i] for i in idx.tolist()]


def build_stem_cache(
    model,
    shards_spec: str,
    path: str | Path,
    img_size: int,
    device: torch.device,
    batch_size: int = 64,
    progress: Callable[[int, int | None], None] | None = None,
) -> StemCache:
    """Encode every training image once with the model's frozen stem (resumable HDF5 cache).

    Args:
        model: a PGSeg with a frozen hybrid stem.
        shards_spec: training shards (dir / index.json / pattern).
        path: HDF5 file to create or continue.
        img_size: square input size in pixels (a multiple of 16).
        progress: optional callback(done, total).

    Raises:
        DataError: the file exists but belongs to other data/settings (delete it or choose another path).
    """
    import h5py

    from ..data.shards import read_index, resolve_shards

    shards = resolve_shards(shards_spec, "train")
    fingerprint = data_fingerprint(shards)
    try:
        total = int(read_index(shards_spec)["splits"]["train"]["count"])
    except Exception:
        total = None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "a") as f:
        _init_or_check(f, path, fingerprint, img_size)
        done = int(f.attrs["complete"])
        if total is None or done < total:
            if done:
                _log.info("resuming stem cache %s at %d images", path, done)
            was_training = model.training  # the training loop calls this with the model in train mode
            model.eval()
            try:
                done = _encode_rest(
                    f, model, shards_spec, img_size, device, batch_size, done, total, progress
                )
            finally:
                model.train(was_training)
            if total is None:
                total = done
        n = int(f.attrs["complete"])
        feats = torch.from_numpy(f["feats"][:n])
        captions = [c.decode() if isinstance(c, bytes) else str(c) for c in f["captions"][:n]]
    if n == 0:
        raise DataError(f"no training images found in {shards_spec}")
    return StemCache(feats=feats, captions=captions, path=str(path))


def _init_or_check(f, path: Path, fingerprint: str, img_size: int) -> None:
    """Create the empty datasets and attributes of a new cache file, or check that an existing one was
    built from the same data and settings.

    Raises:
        DataError: the file holds features of other data or settings.
    """
    import h5py

    h = w = img_size // 16
    if "feats" in f:
        if (
            f.attrs.get("data_fingerprint") != fingerprint
            or int(f.attrs.get("img_size", -1)) != img_size
            or int(f.attrs.get("schema", -1)) != STEM_CACHE_SCHEMA
        ):
            raise DataError(f"stem cache {path} was built from other data or settings; delete it to rebuild")
        return
    f.attrs.update(
        {
            "schema": STEM_CACHE_SCHEMA,
            "kind": "pgseg-stem-cache",
            "stem": "efficientnet_lite0",
            "img_size": img_size,
            "data_fingerprint": fingerprint,
            "complete": 0,
        }
    )
    f.create_dataset(
        "feats",
        shape=(0, 112, h, w),
        maxshape=(None, 112, h, w),
        dtype="float16",
        chunks=(16, 112, h, w),
    )
    str_dt = h5py.string_dtype("utf-8")
    f.create_dataset("captions", shape=(0,), maxshape=(None,), dtype=str_dt, chunks=(1024,))
    f.create_dataset("keys", shape=(0,), maxshape=(None,), dtype=str_dt, chunks=(1024,))


def _encode_rest(
    f,
    model,
    shards_spec: str,
    img_size: int,
    device: torch.device,
    batch_size: int,
    done: int,
    total: int | None,
    progress: Callable[[int, int | None], None] | None,
) -> int:
    """Encode the training images after the first ``done`` (model in eval mode) and append them to ``f``
    batch by batch, updating ``complete`` after each; returns the number of rows written in all."""
    from ..data.loader import iter_images_for_cache

    buf_x, buf_cap, buf_key = [], [], []

    def flush() -> None:
        nonlocal done
        x = torch.stack(buf_x).to(device)
        with torch.no_grad():
            feats = model.stem_features(x).float().cpu().numpy().astype(np.float16)
        n = len(buf_x)
        for name, data in (("feats", feats), ("captions", buf_cap), ("keys", buf_key)):
            f[name].resize(done + n, axis=0)
            f[name][done : done + n] = data
        done += n
        f.attrs["complete"] = done
        f.flush()
        buf_x.clear()
        buf_cap.clear()
        buf_key.clear()
        if progress:
            progress(done, total)

    for i, (key, img, caption) in enumerate(iter_images_for_cache(shards_spec, "train", img_size)):
        if i < done:
            continue
        buf_x.append(img)
        buf_cap.append(caption)
        buf_key.append(key)
        if len(buf_x) == batch_size:
            flush()
    if buf_x:
        flush()
    return done
