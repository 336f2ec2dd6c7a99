"""Test helpers: img2dataset-style shard folders (KEY.jpg / KEY.txt / KEY.json, NNNNN_stats.json) with
deliberately bad members."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg_bytes(seed: int, size: tuple[int, int] = (80, 64), quality: int = 90) -> bytes:
    """A random-colour JPEG (w x h) with a gradient, so crops differ."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 256, 3)
    grad = np.linspace(0, 120, w)[None, :, None]
    arr = np.clip(base[None, None, :] + grad + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


def write_img2dataset_shard(
    folder: Path,
    shard: int,
    n: int,
    *,
    corrupt: tuple[int, ...] = (),
    size=(80, 64),
    stats: bool = True,
    tag: str = "a",
) -> Path:
    """Write ``folder/NNNNN.tar`` as img2dataset does (key ``SSSSSIIII``), and its ``_stats.json``.

    Samples whose index is in ``corrupt`` get JPEG bytes cut in half (a corrupt image)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{shard:05d}.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            key = f"{shard:05d}{i:04d}"
            jpg = jpeg_bytes(shard * 1000 + i, size)
            if i in corrupt:
                jpg = jpg[: len(jpg) // 3]
            _add(tar, f"{key}.jpg", jpg)
            _add(tar, f"{key}.txt", f"{tag} photo number {i} of shard {shard}".encode())
            meta = {"url": f"http://example/{key}.jpg", "key": key, "status": "success", "caption": "x"}
            _add(tar, f"{key}.json", json.dumps(meta).encode())
    if stats:
        (folder / f"{shard:05d}_stats.json").write_text(
            json.dumps({"count": n, "successes": n, "failed_to_download": 0, "failed_to_resize": 0})
        )
    return path


def truncate(path: Path, keep: float = 0.6) -> None:
    """Cut a file to ``keep`` of its length (a tar copied half-way, a disk that filled up)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def make_web_dataset(root: Path, name: str, *, shards: int = 2, per_shard: int = 12) -> Path:
    """``root/name/`` with ``shards`` good-ish tars: shard 0 holds one corrupt JPEG, the last tar is
    truncated (its stats still claim every sample)."""
    folder = root / name
    for s in range(shards):
        write_img2dataset_shard(folder, s, per_shard, corrupt=(3,) if s == 0 else (), tag=name)
    truncate(folder / f"{shards - 1:05d}.tar")
    return folder
