"""The demo composite builder on a small fake source tree (no Debian packages needed)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pgseg_core.data.shards import read_index
from pgseg_core.data.sources.demo import (
    DemoRoots,
    build_demo_shards,
    export_demo_photos,
    load_vocab,
    make_caption,
)
from pgseg_core.errors import DataError

from _fixtures import make_fake_roots, read_tar_samples


def _splitread_tar_samples(out: Path, split: str) -> dict[str, dict[str, bytes]]:
    index = read_index(out)
    got: dict[str, dict[str, bytes]] = {}
    for name in index["splits"][split]["shards"]:
        got.update(read_tar_samples(out / name))
    return got


@pytest.fixture(scope="module")
def fake_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    roots = make_fake_roots(root / "src")
    ticks: list[tuple[int, int]] = []
    summary = build_demo_shards(
        root / "a",
        seed=3,
        n_train=12,
        n_val=6,
        img_size=64,
        roots=roots,
        shard_size=5,
        progress=lambda d, t: ticks.append((d, t)),
    )
    return root, roots, {**summary, "ticks": ticks}


def test_progress_counts_every_composite_of_all_splits(fake_build):
    assert fake_build[2]["ticks"] == [(d, 30) for d in range(1, 31)]  # 12 train, 3 × 6 labelled


def test_index_schema_and_vocabulary(fake_build):
    root, _, summary = fake_build
    index = read_index(root / "a")
    assert summary["splits"] == {"train": 12, "val-caption": 6, "val-heldout": 6, "train-seen": 6}
    assert index["schema"] == 1 and index["kind"] == "pgseg-shards" and index["seed"] == 3
    assert index["splits"]["train"]["shards"] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert index["vocabulary"] == {
        "caption": ["cat", "dog", "apple", "banana", "lemon"],
        "heldout": ["elephant", "penguin", "butterfly"],
    }
    assert index["splits"]["val-caption"]["classes"] == index["vocabulary"]["caption"]
    assert index["splits"]["val-heldout"]["classes"] == index["vocabulary"]["heldout"]
    assert "orange" in index["dropped_classes"] and "pear" in index["dropped_classes"]
    assert index["skipped"]["unreadable"] == 1 and index["skipped"]["rejected"] >= 1
    names = {s["name"]: s for s in index["sources"]}
    assert names["tuxpaint"]["licence"] == "GPL-2.0" and names["tuxpaint"]["items"] == 5
    assert names["openclipart"]["items"] == 3 and names["backgrounds"]["items"] == 2
    assert index["class_items"]["dog"] == {"tuxpaint": 1}


def test_train_samples_name_only_caption_classes(fake_build):
    root, _, _ = fake_build
    index = read_index(root / "a")
    heldout = index["vocabulary"]["heldout"]
    samples = _splitread_tar_samples(root / "a", "train")
    assert len(samples) == 12
    for key, s in samples.items():
        assert set(s) == {"jpg", "txt", "json"}
        caption = s["txt"].decode()
        classes = json.loads(s["json"])["classes"]
        assert 1 <= len(classes) <= 3 and set(classes) <= set(index["vocabulary"]["caption"])
        for c in classes:
            assert re.search(rf"\b{c}\b", caption), (key, caption)
        for h in heldout:
            assert h not in caption
        img = Image.open(io.BytesIO(s["jpg"]))
        assert img.format == "JPEG" and img.mode == "RGB" and img.size == (64, 64)


@pytest.mark.parametrize("split", ["val-caption", "val-heldout"])
def test_val_label_maps_match_classes(fake_build, split):
    root, _, _ = fake_build
    samples = _splitread_tar_samples(root / "a", split)
    assert len(samples) == 6
    for key, s in samples.items():
        meta = json.loads(s["json"])
        classes = meta["classes"]
        assert meta["split"] == split
        label = np.asarray(Image.open(io.BytesIO(s["png"])))
        assert label.dtype == np.uint8 and label.shape == (64, 64)
        ids = set(np.unique(label).tolist()) - {0}
        assert ids == {1 + classes.index(c) for c in meta["present"]}, key
        assert (label == 0).any()
        for c in meta["present"]:
            assert re.search(rf"\b{c}\b", s["txt"].decode())


def test_deterministic_bytes_and_seed_sensitivity(fake_build, tmp_path):
    root, roots, _ = fake_build
    build_demo_shards(tmp_path / "b", seed=3, n_train=12, n_val=6, img_size=64, roots=roots, shard_size=5)
    build_demo_shards(tmp_path / "c", seed=4, n_train=12, n_val=6, img_size=64, roots=roots, shard_size=5)
    index = read_index(root / "a")
    for split in index["splits"].values():
        for name in split["shards"]:
            assert (root / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    first = "train-000000.tar"
    assert (root / "a" / first).read_bytes() != (tmp_path / "c" / first).read_bytes()


def test_missing_sources_name_the_package(tmp_path):
    roots = make_fake_roots(tmp_path / "src")
    roots.tuxpaint = tmp_path / "no-tuxpaint"
    with pytest.raises(DataError, match="apt-get install tuxpaint-stamps-default"):
        build_demo_shards(tmp_path / "o", n_train=1, n_val=1, img_size=64, roots=roots)
    roots = make_fake_roots(tmp_path / "src2")
    roots.emoji_font = tmp_path / "NotoColorEmoji.ttf"
    with pytest.raises(DataError, match="fonts-noto-color-emoji"):
        build_demo_shards(tmp_path / "o", n_train=1, n_val=1, img_size=64, roots=roots)
    roots = make_fake_roots(tmp_path / "src3")
    roots.openclipart = None
    roots.tuxpaint = None
    with pytest.raises(DataError, match="no demo object source"):
        build_demo_shards(tmp_path / "o", n_train=1, n_val=1, img_size=64, roots=roots)


def test_export_demo_photos(tmp_path):
    cv = tmp_path / "opencv"
    cv.mkdir()
    Image.new("RGB", (40, 30), (10, 200, 10)).save(cv / "fruits.jpg")
    (cv / "apple.jpg").write_bytes(b"not a jpeg")  # unreadable: skipped with a warning
    roots = DemoRoots(package_photos=False, opencv_doc=cv, wallpapers=None)
    written = export_demo_photos(tmp_path / "photos", roots)
    assert written == [str(tmp_path / "photos" / "opencv-doc-fruits.jpg")]
    listing = json.loads((tmp_path / "photos" / "photos.json").read_text())["photos"]
    assert listing[0]["licence"] == "Apache-2.0 / BSD-3-Clause"
    with pytest.raises(DataError, match="pgseg\\[demo\\]"):
        export_demo_photos(
            tmp_path / "none", DemoRoots(package_photos=False, opencv_doc=None, wallpapers=None)
        )


def test_packaged_vocabulary_is_consistent():
    vocab = load_vocab()
    caption = [c["name"] for c in vocab["caption"]]
    heldout = [c["name"] for c in vocab["heldout"]]
    assert 24 <= len(caption) <= 30 and 6 <= len(heldout) <= 10
    assert not set(caption) & set(heldout)
    for spec in vocab["caption"] + vocab["heldout"]:
        assert spec.get("tuxpaint") or spec.get("openclipart") or spec.get("emoji"), spec["name"]


def test_make_caption_names_every_phrase():
    rng = np.random.default_rng(0)
    for k in (1, 2, 3, 4):
        phrases = ["a cat", "an apple", "a bunch of grapes", "a dog"][:k]
        caption = make_caption(rng, phrases)
        assert caption.endswith(".")
        for p in phrases:
            assert p in caption


REAL_TUXPAINT = Path("/usr/share/tuxpaint/stamps")


@pytest.mark.demo_data
@pytest.mark.skipif(not REAL_TUXPAINT.is_dir(), reason="needs apt-get install tuxpaint-stamps-default")
def test_real_sources_build(tmp_path):
    summary = build_demo_shards(tmp_path / "real", n_train=8, n_val=4, img_size=96, shard_size=4)
    vocab = load_vocab()
    assert summary["vocabulary"]["caption"] == [c["name"] for c in vocab["caption"]]
    assert summary["vocabulary"]["heldout"] == [c["name"] for c in vocab["heldout"]]
    assert not summary["dropped_classes"]
    for name, per_source in summary["class_items"].items():
        assert sum(per_source.values()) >= 3, (name, per_source)
    names = {s["name"] for s in summary["sources"]}
    assert names >= {"tuxpaint", "openclipart", "noto-emoji", "scikit-image"}


def test_train_seen_split_has_exact_masks_of_caption_classes_only(fake_build):
    from pgseg_core.data.loader import iter_val_samples

    root, _, _ = fake_build
    index = read_index(root / "a")
    entry = index["splits"]["train-seen"]
    assert entry["count"] == 6 and "classes" not in entry  # eval's default selection skips it
    assert entry["seen_classes"] == index["vocabulary"]["caption"]
    samples = list(iter_val_samples(root / "a", "train-seen"))
    assert len(samples) == 6
    for s in samples:
        assert s.classes == index["vocabulary"]["caption"] and s.split == "train-seen"
        ids = set(np.unique(s.label).tolist()) - {0, 255}
        assert ids and max(ids) <= len(s.classes)
