"""The training loader's position (docs/TRAINING.md §1): a loader resumed from ``state_dict()`` hands out the
batches an uninterrupted loader would have, bit for bit, with 0 and 2 DataLoader workers."""

from __future__ import annotations

import io
import itertools
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pgseg_core.config import DataConfig
from pgseg_core.data.loader import make_train_loader

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two shards of six 48-px JPEGs each."""
    import webdataset as wds

    d = tmp_path_factory.mktemp("pos_shards")
    names = []
    for s in range(2):
        names.append(f"train-{s:06d}.tar")
        with wds.TarWriter(str(d / names[-1])) as sink:
            for i in range(6):
                arr = np.random.default_rng(s * 10 + i).integers(0, 256, (48, 48, 3), dtype=np.uint8)
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, format="JPEG", quality=90)
                sink.write({"__key__": f"s{s}i{i}", "jpg": buf.getvalue(), "txt": f"thing {s} {i}"})
    index = {
        "schema": 1, "kind": "pgseg-shards", "created_by": "pgseg tests", "seed": 0,
        "splits": {"train": {"shards": names, "count": 12}},
        "vocabulary": {"caption": [], "heldout": []}, "sources": [], "skipped": {},
    }  # fmt: skip
    (d / "index.json").write_text(json.dumps(index))
    return d


def _loader(shards, workers: int, rank: int = 0):
    cfg = DataConfig(
        train=str(shards), img_size=32, crop_scale=[0.3, 1.0], num_workers=workers, shuffle_buffer=5
    )
    return make_train_loader(cfg, batch_size=3, seed=7, rank=rank)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("k", [3, 4])
def test_a_resumed_loader_continues_the_batch_stream_exactly(shards, workers, k):
    full = list(itertools.islice(iter(_loader(shards, workers)), k + 4))
    first = _loader(shards, workers)
    it = iter(first)
    for _ in range(k):
        next(it)
    state = json.loads(json.dumps(first.state_dict()))  # plain data: survives any checkpoint format
    assert state["batches"] == k
    resumed = _loader(shards, workers)
    resumed.load_state_dict(state)
    rest = list(itertools.islice(iter(resumed), 4))
    for a, b in zip(full[k:], rest):
        assert a["key"] == b["key"] and a["text"] == b["text"]
        assert torch.equal(a["image"], b["image"])


def test_the_loader_leaves_the_callers_rng_alone_and_ranks_differ(shards):
    torch.manual_seed(3)
    before = torch.get_rng_state()
    a = next(iter(_loader(shards, 0, rank=0)))
    assert torch.equal(torch.get_rng_state(), before)
    b = next(iter(_loader(shards, 0, rank=1)))
    assert a["key"] != b["key"] or not torch.equal(a["image"], b["image"])


def test_a_position_of_another_setup_is_refused(shards):
    loader = _loader(shards, 0)
    it = iter(loader)
    next(it)
    with pytest.raises(RuntimeError, match="before the loader is iterated"):
        loader.load_state_dict(loader.state_dict())
    other = _loader(shards, 2)
    with pytest.raises(ValueError, match="data.num_workers"):
        other.load_state_dict(loader.state_dict())
