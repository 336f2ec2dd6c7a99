"""Train loader, validation sample iterator and the fixed-order image pass over tiny synthetic shards."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from pgseg_core.config import DataConfig
from pgseg_core.data.loader import iter_images_for_cache, iter_val_samples, make_train_loader
from pgseg_core.data.shards import SplitWriter, new_index, write_index
from pgseg_core.errors import DataError


def _jpg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    with SplitWriter(d, "train", shard_size=4) as tw:
        for i in range(10):
            h, w = (40, 56) if i % 2 else (48, 48)
            tw.write(
                {
                    "__key__": f"t{i:03d}",
                    "jpg": _jpg(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)),
                    "txt": f"caption {i}",
                    "json": {"classes": ["cat"]},
                }
            )
        tw.write({"__key__": "t999", "jpg": b"not a jpeg at all", "txt": "broken"})  # skipped, not fatal
    classes = ["cat", "dog"]
    with SplitWriter(d, "val-caption", shard_size=2) as vw:
        for i in range(3):
            label = np.zeros((32, 32), np.uint8)
            label[4:12, 4:12] = 1
            label[20:30, 18:28] = 2
            vw.write(
                {
                    "__key__": f"v{i}",
                    "jpg": _jpg(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)),
                    "png": _png(label),
                    "txt": "a cat and a dog.",
                    "json": {"classes": classes, "split": "val-caption", "present": classes},
                }
            )
    write_index(
        d,
        new_index(
            {
                "train": {"shards": tw.shards, "count": 11},
                "val-caption": {"shards": vw.shards, "count": 3, "classes": classes},
            }
        ),
    )
    return d


def _first_batches(shard_dir, seed, n=3):
    cfg = DataConfig(
        train=str(shard_dir), img_size=32, crop_scale=[0.5, 1.0], num_workers=0, shuffle_buffer=8
    )
    loader = make_train_loader(cfg, batch_size=4, seed=seed)
    return list(itertools.islice(iter(loader), n))


def test_train_loader_batches(shard_dir):
    batches = _first_batches(shard_dir, seed=0)
    assert len(batches) == 3  # infinite: more batches than the 10 good samples allow per pass
    for b in batches:
        assert set(b) == {"image", "text", "key"}
        assert b["image"].shape == (4, 3, 32, 32) and b["image"].dtype == torch.float32
        assert torch.isfinite(b["image"]).all() and b["image"].abs().max() < 3.0
        assert len(b["text"]) == 4 and all(t.startswith("caption ") for t in b["text"])
        assert "t999" not in b["key"]
        for k, t in zip(b["key"], b["text"]):
            assert t == f"caption {int(k[1:])}"


def test_train_loader_is_seeded(shard_dir):
    a = [b["key"] for b in _first_batches(shard_dir, seed=5)]
    b = [b["key"] for b in _first_batches(shard_dir, seed=5)]
    assert a == b


def test_train_loader_errors(tmp_path):
    with pytest.raises(DataError, match="set data.train"):
        make_train_loader(DataConfig(train=""), batch_size=2, seed=0)
    with pytest.raises(DataError):
        make_train_loader(DataConfig(train=str(tmp_path / "none")), batch_size=2, seed=0)


def test_iter_val_samples(shard_dir):
    samples = list(iter_val_samples(shard_dir, "val-caption"))
    assert [s.key for s in samples] == ["v0", "v1", "v2"]
    s = samples[0]
    assert s.image.shape == (32, 32, 3) and s.image.dtype == np.uint8
    assert s.label.shape == (32, 32) and s.label.dtype == np.uint8
    assert set(np.unique(s.label).tolist()) == {0, 1, 2}
    assert s.classes == ["cat", "dog"] and s.split == "val-caption" and s.caption == "a cat and a dog."
    with pytest.raises(DataError, match="available splits: train, val-caption"):
        list(iter_val_samples(shard_dir, "val-heldout"))


def test_iter_images_for_cache_fixed_order(shard_dir):
    got = list(iter_images_for_cache(shard_dir, "train", img_size=24))
    assert [k for k, _, _ in got] == [f"t{i:03d}" for i in range(10)]  # the broken sample is skipped
    for key, x, caption in got:
        assert x.shape == (3, 24, 24) and x.dtype == torch.float32
        assert caption == f"caption {int(key[1:])}"
    again = list(iter_images_for_cache(shard_dir, "train", img_size=24))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(got, again))
