"""Benchmark readers, class-name files and the COCO-Object converter on tiny datasets built in tmp_path.

Every layout gets 2-3 images of a few pixels; labels are checked exactly in the canonical convention
(with background: 0 background, 1 + i class i; without: 0..C-1; 255 ignore everywhere).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pgseg_core.errors import ConfigError, DataError
from pgseg_core.eval.datasets import (
    PROTOCOLS,
    DatasetInfo,
    SegDataset,
    class_file,
    dataset_names,
    load_class_spec,
    open_dataset,
)
from pgseg_core.eval.datasets.coco_object import (
    COCO_OBJECT_LUT,
    COCO_THING_IDS,
    COCO_THING_NAMES,
    coco_object_label,
    convert_coco_object,
)

BENCHMARKS = ["voc21", "voc20", "pc60", "pc59", "coco-object", "coco-stuff-171", "ade20k-150", "cityscapes"]
SIZES = [(5, 7), (6, 4), (3, 3)]  # (H, W) of the three images


# ---------------------------------------------------------------------------------------------- builders


def _image(path: Path, hw: tuple[int, int], seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(path)


def _label(path: Path, values: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(values.astype(np.uint8), mode="L")
    if palette:  # VOC-style palette PNG: colours differ from the indices
        im = im.convert("P")
        pal = np.zeros((256, 3), dtype=np.uint8)
        pal[:, 0] = np.arange(256)[::-1]
        pal[:, 2] = (np.arange(256) * 7) % 256
        im.putpalette(pal.flatten().tolist())
    im.save(path)


def _raw_labels(max_raw: int, extra: tuple[int, ...] = (255,)) -> list[np.ndarray]:
    """Three raw label maps holding 0, max_raw, 255 and a few values in between."""
    out = []
    for i, (h, w) in enumerate(SIZES):
        vals = np.array([0, max_raw, *extra, 1, max_raw // 2, (i * 3) % (max_raw + 1)], dtype=np.int64)
        out.append(np.resize(vals, h * w).reshape(h, w))
    return out


def make_voc(
    data: Path,
    year: str = "VOC2012",
    ann: str = "SegmentationClass",
    sets: str = "Segmentation",
    max_raw: int = 20,
    order=("b", "a", "c"),
    palette: bool = True,
) -> list[np.ndarray]:
    """VOCdevkit/<year> tree; split file in a non-sorted order. Returns raw labels in split order."""
    base = data / "VOCdevkit" / year
    raws = _raw_labels(max_raw)
    for i, (key, raw) in enumerate(zip(order, raws)):
        _image(base / "JPEGImages" / f"{key}.jpg", raw.shape, i)
        _label(base / ann / f"{key}.png", raw, palette=palette)
    (base / "ImageSets" / sets).mkdir(parents=True)
    (base / "ImageSets" / sets / "val.txt").write_text("\n".join(order) + "\n\n")
    return raws


def make_folder(
    base: Path,
    img_dir: str,
    ann_dir: str,
    img_suffix: str,
    seg_suffix: str,
    max_raw: int,
    keys=("x2", "x0", "x1"),
) -> list[np.ndarray]:
    """Folder-split tree; returns raw labels in sorted key order."""
    raws = _raw_labels(max_raw)
    for i, (key, raw) in enumerate(zip(keys, raws)):
        _image(base / img_dir / f"{key}{img_suffix}", raw.shape, i)
        _label(base / ann_dir / f"{key}{seg_suffix}", raw)
    return [raws[keys.index(k)] for k in sorted(keys)]


def _reduce(raw: np.ndarray) -> np.ndarray:
    return np.where(raw == 0, 255, np.where(raw == 255, 255, raw - 1))


def build(name: str, data: Path) -> tuple[Path, list[np.ndarray], list[str]]:
    """Tiny dataset ``name`` under ``data``; returns (root to pass, expected canonical labels, keys)."""
    if name in ("voc21", "voc20"):
        raws = make_voc(data)
        exp = raws if name == "voc21" else [_reduce(r) for r in raws]
        return data, exp, ["b", "a", "c"]
    if name in ("pc60", "pc59"):
        raws = make_voc(data, "VOC2010", "SegmentationClassContext", "SegmentationContext", 59, palette=False)
        exp = raws if name == "pc60" else [_reduce(r) for r in raws]
        return data, exp, ["b", "a", "c"]
    if name in ("coco-object", "coco-stuff-171"):
        obj = name == "coco-object"
        suffix, max_raw = ("_instanceTrainIds.png", 80) if obj else ("_labelTrainIds.png", 170)
        base = data / "coco_stuff164k"
        raws = make_folder(base, "images/val2017", "annotations/val2017", ".jpg", suffix, max_raw)
        return data, raws, ["x0", "x1", "x2"]
    if name == "ade20k-150":
        base = data / "ade" / "ADEChallengeData2016"
        raws = make_folder(base, "images/validation", "annotations/validation", ".jpg", ".png", 150)
        return data, [_reduce(r) for r in raws], ["x0", "x1", "x2"]
    if name == "cityscapes":
        base = data / "cityscapes"
        keys = ("zurich/z_000001", "aachen/a_000002", "aachen/a_000001")
        raws = make_folder(
            base,
            "leftImg8bit/val",
            "gtFine/val",
            "_leftImg8bit.png",
            "_gtFine_labelTrainIds.png",
            18,
            keys=keys,
        )
        return data, raws, sorted(keys)
    raise AssertionError(name)


# ---------------------------------------------------------------------------------------------- readers


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_layout_yields_canonical_labels_in_order(name, tmp_path):
    root, expected, keys = build(name, tmp_path / "data")
    ds = open_dataset(name, root)
    assert isinstance(ds, SegDataset) and isinstance(ds.info, DatasetInfo)
    assert len(ds) == 3 and ds.keys == keys
    samples = list(ds)
    assert [s.key for s in samples] == keys
    for s, exp in zip(samples, expected):
        assert s.label.dtype == np.uint8 and s.image.dtype == np.uint8
        assert s.image.shape == (*exp.shape, 3)
        np.testing.assert_array_equal(s.label, exp)
        assert s.classes == ds.classes and len(s.classes) == ds.info.num_classes
        assert s.split == "val"
    assert ds.skipped == 0
    # canonical range: < num_labels or 255
    allv = np.concatenate([s.label.ravel() for s in samples])
    assert ((allv < ds.info.num_labels) | (allv == 255)).all()


@pytest.mark.parametrize(
    "name,bg,c,reduce",
    [
        ("voc21", True, 20, False),
        ("voc20", False, 20, True),
        ("pc60", True, 59, False),
        ("pc59", False, 59, True),
        ("coco-object", True, 80, False),
        ("coco-stuff-171", False, 171, False),
        ("ade20k-150", False, 150, True),
        ("cityscapes", False, 19, False),
    ],
)
def test_dataset_info(name, bg, c, reduce, tmp_path):
    root, _, _ = build(name, tmp_path / "data")
    info = open_dataset(name, root).info
    assert (info.name, info.has_background, info.num_classes, info.reduce_zero_label) == (name, bg, c, reduce)
    assert info.num_labels == c + int(bg)
    assert info.split == "val" and Path(info.root).is_dir()


def test_voc_palette_read_as_indices_and_exact_values(tmp_path):
    raws = make_voc(tmp_path)
    with Image.open(tmp_path / "VOCdevkit/VOC2012/SegmentationClass/b.png") as im:
        assert im.mode == "P"
    ds = open_dataset("voc21", tmp_path / "VOCdevkit" / "VOC2012")  # the dataset's own folder works too
    first = next(iter(ds))
    np.testing.assert_array_equal(first.label, raws[0])
    assert {0, 20, 255} <= set(np.unique(first.label).tolist())
    voc20 = next(iter(open_dataset("voc20", tmp_path / "VOCdevkit")))  # and the VOCdevkit folder
    np.testing.assert_array_equal(voc20.label[raws[0] == 0], 255)
    np.testing.assert_array_equal(voc20.label[raws[0] == 20], 19)
    np.testing.assert_array_equal(voc20.label[raws[0] == 255], 255)


def test_reduce_zero_label_on_every_raw_value(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    raw = np.array([list(range(151)) + [255]], dtype=np.uint8)
    _image(base / "images/validation/a.jpg", raw.shape)
    _label(base / "annotations/validation/a.png", raw)
    label = next(iter(open_dataset("ade20k-150", base))).label[0]
    assert label[0] == 255 and label[-1] == 255
    np.testing.assert_array_equal(label[1:151], np.arange(150))


def test_random_access_and_lazy_iteration(tmp_path):
    root, expected, keys = build("voc21", tmp_path)
    ds = open_dataset("voc21", root)
    np.testing.assert_array_equal(ds[2].label, expected[2])
    # lazy: deleting a later image after opening only matters when it is reached
    (tmp_path / "VOCdevkit/VOC2012/JPEGImages/c.jpg").write_bytes(b"not a jpeg")
    it = iter(ds)
    assert next(it).key == "b"
    assert [s.key for s in it] == ["a"]
    assert ds.skipped == 1
    with pytest.raises(DataError, match="cannot decode sample c"):
        ds[2]


# ---------------------------------------------------------------------------------------------- errors


def test_unknown_dataset_suggests_closest(tmp_path):
    with pytest.raises(DataError, match=r"unknown dataset 'ade20k'.*did you mean 'ade20k-150'"):
        open_dataset("ade20k", tmp_path)
    with pytest.raises(DataError, match="did you mean 'coco-stuff-171'"):
        open_dataset("coco-stuff", tmp_path)


def test_missing_root_and_missing_tree(tmp_path):
    with pytest.raises(DataError, match="dataset root not found: " + re.escape(str(tmp_path / "nope"))):
        open_dataset("voc21", tmp_path / "nope")
    with pytest.raises(DataError, match=r"no JPEGImages/ and SegmentationClass/ folders in .*VOC2012"):
        open_dataset("voc21", tmp_path)


def test_missing_split_file_and_folder(tmp_path):
    make_voc(tmp_path)
    with pytest.raises(DataError, match=r"split file not found: .*ImageSets/Segmentation/train\.txt"):
        open_dataset("voc21", tmp_path, split="train")
    build("coco-stuff-171", tmp_path)
    with pytest.raises(DataError, match=r"split folder not found: .*images/train2017"):
        open_dataset("coco-stuff-171", tmp_path, split="train")


def test_image_without_label_is_named(tmp_path):
    make_voc(tmp_path)
    (tmp_path / "VOCdevkit/VOC2012/SegmentationClass/a.png").unlink()
    with pytest.raises(
        DataError,
        match=r"1 image\(s\) without a label file, e.g. .*JPEGImages/a\.jpg "
        r"\(expected .*SegmentationClass/a\.png\)",
    ):
        open_dataset("voc21", tmp_path)
    (tmp_path / "VOCdevkit/VOC2012/JPEGImages/c.jpg").unlink()
    with pytest.raises(DataError, match=r"image\(s\) of the val split not found, e.g. .*c\.jpg"):
        open_dataset("voc21", tmp_path)


def test_label_size_mismatch_is_named(tmp_path):
    make_voc(tmp_path)
    _label(tmp_path / "VOCdevkit/VOC2012/SegmentationClass/a.png", np.zeros((2, 2)), palette=True)
    ds = open_dataset("voc21", tmp_path)
    with pytest.raises(DataError, match=r"label .*Class/a\.png is 2x2 but its image .*a\.jpg is 4x6"):
        list(ds)


@pytest.mark.parametrize(
    "name,bad,expect",
    [
        ("voc21", 21, "0..20"),
        ("voc20", 21, "0..20"),
        ("ade20k-150", 151, "0..150"),
        ("cityscapes", 19, "0..18"),
    ],
)
def test_label_values_out_of_range_are_named(name, bad, expect, tmp_path):
    root, _, keys = build(name, tmp_path)
    ds = open_dataset(name, root)
    path = ds.items[0][2]
    raw = np.asarray(Image.open(path)).copy()
    raw[0, 0] = bad
    _label(path, raw)
    with pytest.raises(
        DataError,
        match=rf"label values {bad} out of range in .*{re.escape(path.name)}: "
        rf"expected {re.escape(expect)} and 255",
    ):
        list(ds)


def test_16_bit_label_png(tmp_path):
    base = tmp_path / "cityscapes"
    _image(base / "leftImg8bit/val/c/a_leftImg8bit.png", (2, 3))
    path = base / "gtFine/val/c/a_gtFine_labelTrainIds.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(np.array([[0, 18, 255], [1, 2, 3]], dtype=np.uint16)).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    np.testing.assert_array_equal(
        next(iter(open_dataset("cityscapes", base))).label, [[0, 18, 255], [1, 2, 3]]
    )
    Image.fromarray(np.array([[0, 300, 255], [1, 2, 3]], dtype=np.uint16)).save(path)
    with pytest.raises(DataError, match=r"label values 300 out of range in .*a_gtFine_labelTrainIds\.png"):
        list(open_dataset("cityscapes", base))


def test_colour_label_is_rejected(tmp_path):
    make_voc(tmp_path)
    Image.new("RGB", (6, 4), (128, 0, 0)).save(tmp_path / "VOCdevkit/VOC2012/SegmentationClass/a.png")
    with pytest.raises(DataError, match=r"a\.png is a RGB colour image: expected a single-channel index PNG"):
        list(open_dataset("voc21", tmp_path))


def test_unknown_option(tmp_path):
    make_voc(tmp_path)
    with pytest.raises(ConfigError, match="takes no option crowd"):
        open_dataset("voc21", tmp_path, crowd="ignore")


# ---------------------------------------------------------------------------------------------- class files


def test_dataset_names():
    assert dataset_names()[:8] == BENCHMARKS
    assert {"coco-object-instances", "demo"} <= set(dataset_names())


@pytest.mark.parametrize("name", BENCHMARKS)
def test_class_files_parse_with_right_count(name, tmp_path):
    counts = {
        "voc21": 20,
        "voc20": 20,
        "pc60": 59,
        "pc59": 59,
        "coco-object": 80,
        "coco-stuff-171": 171,
        "ade20k-150": 150,
        "cityscapes": 19,
    }
    specs = {p: load_class_spec(name, p) for p in PROTOCOLS}
    for proto, spec in specs.items():
        assert class_file(name, proto).is_file()
        assert len(spec) == counts[name], (name, proto)
        assert "background" not in [n.lower() for n in spec.names]
        # background words only where the dataset has a background class (and never in the groupvit files)
        with_bg = name in ("voc21", "pc60", "coco-object")
        assert bool(spec.background_words) == (with_bg and proto == "sclip"), (name, proto)
        # no background word is also a class phrase (it would tie with the class)
        phrases = {p for entry in spec.prompts for p in entry}
        assert not set(spec.background_words) & phrases
    assert len({len(s) for s in specs.values()}) == 1  # protocols of one dataset agree on C


def test_class_file_contents_follow_the_protocols():
    voc = load_class_spec("voc21", "groupvit").names
    assert voc[10] == "table" and voc[15] == "plant" and voc[19] == "monitor" and voc[0] == "aeroplane"
    assert load_class_spec("voc20", "groupvit").names == voc
    pc = load_class_spec("pc60", "groupvit").names
    assert pc[0] == "airplane" and "plant" in pc and "monitor" in pc and pc[-1] == "wood"
    assert load_class_spec("pc59", "sclip").names[0] == "aeroplane"
    assert load_class_spec("pc60", "sclip").background_words == ("background",)
    assert load_class_spec("coco-object", "groupvit").names == list(COCO_THING_NAMES)
    stuff = load_class_spec("coco-stuff-171", "groupvit").names
    assert stuff[:80] == list(COCO_THING_NAMES) and stuff[80] == "banner" and stuff[-1] == "wood"
    sclip_voc = load_class_spec("voc21", "sclip")
    assert sclip_voc.prompts[14][0] == "person" and len(sclip_voc.prompts[14]) == 7
    assert "sky" in sclip_voc.background_words and "bed" in sclip_voc.background_words
    assert "bed" not in load_class_spec("coco-object", "sclip").background_words  # a COCO class
    assert load_class_spec("ade20k-150", "groupvit").names[:3] == ["wall", "building", "sky"]
    assert load_class_spec("cityscapes", "groupvit").names[-1] == "bicycle"


def test_dataset_class_spec_protocols_and_files(tmp_path):
    root, _, _ = build("voc21", tmp_path / "data")
    ds = open_dataset("voc21", root)
    assert ds.class_spec().names == ds.classes == load_class_spec("voc21", "groupvit").names
    assert ds.class_spec("sclip").background_words
    with pytest.raises(ConfigError, match="unknown class protocol 'sclp': did you mean 'sclip'"):
        ds.class_spec("sclp")
    good = tmp_path / "mine.txt"
    good.write_text("background: sky\n" + "\n".join(f"c{i}, thing {i}" for i in range(20)) + "\n")
    assert ds.class_spec(good).background_words == ("sky",)
    bad = tmp_path / "bad.txt"
    bad.write_text("background\n" + "\n".join(f"c{i}" for i in range(21)) + "\n")
    with pytest.raises(DataError, match=r"bad\.txt has 21 classes but voc21 has 20 \(background is implicit"):
        ds.class_spec(bad)
    with pytest.raises(DataError, match="class file not found"):
        ds.class_spec(tmp_path / "missing.txt")


# ---------------------------------------------------------------------------------------------- COCO-Object


def _expected_coco_object(v: int) -> int | None:
    """Independent statement of GroupViT's mapping: raw = COCO id - 1."""
    if v == 255 or 91 <= v <= 181:
        return 0
    if v + 1 in COCO_THING_IDS:
        return COCO_THING_IDS.index(v + 1) + 1
    return None  # not a COCO-Stuff id


def test_coco_object_mapping_on_all_256_values():
    assert len(COCO_THING_IDS) == 80 == len(set(COCO_THING_IDS))
    for v in range(256):
        exp = _expected_coco_object(v)
        assert COCO_OBJECT_LUT[v] == (-1 if exp is None else exp), v
    assert COCO_OBJECT_LUT[0] == 1 and COCO_OBJECT_LUT[89] == 80  # person, toothbrush
    assert COCO_OBJECT_LUT[10] == 11 and COCO_OBJECT_LUT[12] == 12  # fire hydrant (id 11), stop sign (id 13)
    valid = np.array([v for v in range(256) if _expected_coco_object(v) is not None], dtype=np.uint8)
    assert len(valid) == 80 + 91 + 1
    np.testing.assert_array_equal(coco_object_label(valid[None]), [[_expected_coco_object(v) for v in valid]])
    with pytest.raises(ValueError, match=r"values \[11, 200\] are not COCO-Stuff ids"):
        coco_object_label(np.array([[0, 11, 200]], dtype=np.uint8))


def _stuff_tree(root: Path) -> tuple[Path, np.ndarray]:
    """coco_stuff164k with a raw PNG holding every valid value, a bad one and an mmseg *_labelTrainIds.png."""
    ann = root / "coco_stuff164k" / "annotations"
    valid = np.array([v for v in range(256) if _expected_coco_object(v) is not None], dtype=np.uint8)
    raw = np.resize(valid, 16 * 16).reshape(16, 16)
    _label(ann / "val2017" / "000000000001.png", raw)
    _label(ann / "val2017" / "000000000002.png", raw[::-1])
    _label(ann / "val2017" / "000000000003.png", np.array([[0, 11]]))  # 11 is no COCO-Stuff id
    _label(ann / "val2017" / "000000000001_labelTrainIds.png", np.zeros((16, 16)))  # not a raw map
    _label(ann / "train2017" / "000000000009.png", raw.T)
    return root / "coco_stuff164k", raw


def test_convert_coco_object_writes_resumes_and_counts_bad(tmp_path):
    root, raw = _stuff_tree(tmp_path)
    val = root / "annotations" / "val2017"
    s = convert_coco_object(tmp_path, splits=["val"])  # a data/ folder above coco_stuff164k works
    assert s["splits"]["val2017"] == {
        "converted": 2,
        "existing": 0,
        "bad": 1,
        "bad_files": [
            f"{val / '000000000003.png'}: values [11] are not COCO-Stuff ids "
            "(things 0..89, stuff 91..181, 255)"
        ],
    }
    assert "train2017" not in s["splits"]
    out = np.asarray(Image.open(val / "000000000001_instanceTrainIds.png"))
    expected = np.vectorize(_expected_coco_object)(raw)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(
        np.asarray(Image.open(val / "000000000002_instanceTrainIds.png")), expected[::-1]
    )
    assert not (val / "000000000003_instanceTrainIds.png").exists()
    assert not (val / "000000000001_labelTrainIds_instanceTrainIds.png").exists()
    assert not [p for p in val.iterdir() if p.name.startswith(".")]  # no temporary files left
    # resume: finished files are skipped, a removed one is redone; all splits by default
    stamp = (val / "000000000002_instanceTrainIds.png").stat().st_mtime_ns
    (val / "000000000001_instanceTrainIds.png").unlink()
    s2 = convert_coco_object(root)
    assert (s2["converted"], s2["existing"], s2["bad"]) == (2, 1, 1)
    assert s2["splits"]["train2017"]["converted"] == 1
    assert (val / "000000000002_instanceTrainIds.png").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(np.asarray(Image.open(val / "000000000001_instanceTrainIds.png")), expected)


def test_convert_coco_object_with_worker_processes(tmp_path):
    root, raw = _stuff_tree(tmp_path)
    s = convert_coco_object(root, workers=2)
    assert (s["converted"], s["existing"], s["bad"]) == (3, 0, 1)
    out = np.asarray(Image.open(root / "annotations/train2017/000000000009_instanceTrainIds.png"))
    np.testing.assert_array_equal(out, np.vectorize(_expected_coco_object)(raw.T))


def test_convert_coco_object_errors(tmp_path):
    with pytest.raises(DataError, match="COCO-Stuff root not found"):
        convert_coco_object(tmp_path / "missing")
    with pytest.raises(DataError, match="no annotations/ folder"):
        convert_coco_object(tmp_path)
    root, _ = _stuff_tree(tmp_path)
    with pytest.raises(DataError, match=r"split folder not found: .*annotations/test2017"):
        convert_coco_object(root, splits=["test"])


def test_converted_labels_read_as_coco_object(tmp_path):
    root, raw = _stuff_tree(tmp_path)
    (root / "annotations/val2017/000000000003.png").unlink()
    for stem in ("000000000001", "000000000002"):
        _image(root / "images/val2017" / f"{stem}.jpg", (16, 16))
    convert_coco_object(root, ["val"])
    ds = open_dataset("coco-object", root)
    assert ds.keys == ["000000000001", "000000000002"]
    np.testing.assert_array_equal(next(iter(ds)).label, np.vectorize(_expected_coco_object)(raw))


# ---------------------------------------------------------------------------------------------- pycocotools


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _coco_scene(root: Path, categories: list[dict] | None = None) -> dict[str, np.ndarray]:
    """Two images with a bed (large), a dog on it (small, painted last), a crowd of people, stuff and
    unlabelled pixels. Writes both the instances json and the matching raw COCO-Stuff PNGs."""
    base = root / "coco_stuff164k"
    h, w = 12, 10
    anns, images, crowd_masks = [], [], {}
    ann_id = 1
    for img_id, stem in ((7, "000000000007"), (3, "000000000003")):
        _image(base / "images/val2017" / f"{stem}.jpg", (h, w), img_id)
        images.append({"id": img_id, "file_name": f"{stem}.jpg", "height": h, "width": w})
        raw = np.full((h, w), 100, dtype=np.uint8)  # stuff everywhere (COCO id 101)
        raw[:, -1] = 255  # unlabelled column
        bed = np.zeros((h, w), bool)
        bed[2:10, 1:8] = True
        dog = np.zeros((h, w), bool)
        dog[4:6, 3 : 5 + img_id % 2] = True
        crowd = np.zeros((h, w), bool)
        crowd[0:2, 0:4] = True
        # raw map drawn like the instances: larger first, smaller on top
        for mask, cid in ((bed, 65), (crowd, 1), (dog, 18)):
            raw[mask] = cid - 1
        _label(base / "annotations/val2017" / f"{stem}.png", raw)
        for mask, cid, is_crowd in ((dog, 18, 0), (crowd, 1, 1), (bed, 65, 0)):  # json order: smallest first
            anns.append(
                {
                    "id": ann_id,
                    "image_id": img_id,
                    "category_id": cid,
                    "iscrowd": is_crowd,
                    "area": float(mask.sum()),
                    "bbox": [0, 0, 1, 1],
                    "segmentation": _rle(mask),
                }
            )
            ann_id += 1
        crowd_masks[stem] = crowd
    cats = categories or [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 65, "name": "bed"}]
    (base / "annotations").mkdir(parents=True, exist_ok=True)
    (base / "annotations/instances_val2017.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    return crowd_masks


def test_pycocotools_path_matches_the_raw_png_converter(tmp_path, capsys):
    crowd_masks = _coco_scene(tmp_path)
    root = tmp_path / "coco_stuff164k"
    convert_coco_object(root, ["val"])
    from_png = list(open_dataset("coco-object", root))
    from_json = list(open_dataset("coco-object-instances", root))
    assert capsys.readouterr().out == ""  # pycocotools' progress prints are swallowed
    assert [s.key for s in from_json] == [s.key for s in from_png] == ["000000000003", "000000000007"]
    for a, b in zip(from_png, from_json):
        np.testing.assert_array_equal(a.label, b.label)
        np.testing.assert_array_equal(a.image, b.image)
    label = from_json[1].label
    assert label[4, 3] == COCO_THING_IDS.index(18) + 1  # the dog stays on top of the bed
    assert label[3, 2] == COCO_THING_IDS.index(65) + 1 and label[0, 0] == 1 and label[11, 9] == 0
    ignore = list(open_dataset("coco-object-instances", root, crowd="ignore"))
    np.testing.assert_array_equal(ignore[1].label[crowd_masks["000000000007"]], 255)
    np.testing.assert_array_equal(
        ignore[1].label[~crowd_masks["000000000007"]], label[~crowd_masks["000000000007"]]
    )
    assert open_dataset("coco-object-instances", root).class_spec().names == list(COCO_THING_NAMES)


def test_pycocotools_path_errors(tmp_path):
    with pytest.raises(DataError, match="annotation file not found"):
        open_dataset("coco-object-instances", tmp_path)
    _coco_scene(
        tmp_path,
        categories=[
            {"id": 1, "name": "person"},
            {"id": 12, "name": "street sign"},
            {"id": 18, "name": "dog"},
            {"id": 65, "name": "bed"},
        ],
    )
    with pytest.raises(DataError, match=r"unknown category id 12 \('street sign'\)"):
        open_dataset("coco-object-instances", tmp_path)
    _coco_scene(
        tmp_path,
        categories=[{"id": 1, "name": "human"}, {"id": 18, "name": "dog"}, {"id": 65, "name": "bed"}],
    )
    with pytest.raises(DataError, match="category id 1 is 'human' .* but 'person' in COCO"):
        open_dataset("coco-object-instances", tmp_path)
    _coco_scene(tmp_path)
    _image(tmp_path / "coco_stuff164k/images/val2017/000000000003.jpg", (5, 5))
    with pytest.raises(DataError, match=r"000000000003\.jpg is 5x5 but the annotations say 10x12"):
        list(open_dataset("coco-object-instances", tmp_path / "coco_stuff164k"))


# ---------------------------------------------------------------------------------------------- demo


def test_demo_shards_adapter(tmp_path):
    from _fixtures import make_fake_roots
    from pgseg_core.data.sources.demo import build_demo_shards
    from pgseg_core.data.loader import iter_val_samples

    build_demo_shards(
        tmp_path / "shards", seed=0, n_train=2, n_val=3, img_size=32, roots=make_fake_roots(tmp_path / "src")
    )
    ds = open_dataset("demo", tmp_path / "shards", split="val-caption")
    index = json.loads((tmp_path / "shards/index.json").read_text())
    classes = index["splits"]["val-caption"]["classes"]
    assert ds.info.has_background and ds.info.num_classes == len(classes) and len(ds) == 3
    assert ds.class_spec("groupvit").names == classes == ds.class_spec("sclip").names
    got = list(ds)
    ref = list(iter_val_samples(tmp_path / "shards", "val-caption"))
    assert [s.key for s in got] == [s.key for s in ref] and len(got) == 3
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a.label, b.label)
    assert open_dataset("demo", tmp_path / "shards").info.split == "val-caption"
    with pytest.raises(DataError, match="classes come from index.json"):
        load_class_spec("demo")
    with pytest.raises(DataError, match="no labelled split 'val-other'.*val-caption, val-heldout"):
        open_dataset("demo", tmp_path / "shards", split="val-other")


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_prep_shards_coco_object(tmp_path):
    from pgseg_cli.app import app

    runner = CliRunner()
    root, raw = _stuff_tree(tmp_path)
    result = runner.invoke(
        app, ["-q", "prep-shards", "--source", "coco-object", "--coco-root", str(root), "--coco-split", "val"]
    )
    assert result.exit_code == 0, result.output
    assert "val2017: 2 converted, 0 already there, 1 bad" in result.stdout
    assert "skipped 1 bad label map(s)" in result.stderr
    out = root / "annotations/val2017/000000000001_instanceTrainIds.png"
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.vectorize(_expected_coco_object)(raw))
    again = runner.invoke(app, ["-q", "prep-shards", "--source", "coco-object", "--coco-root", str(root)])
    assert again.exit_code == 0 and "val2017: 0 converted, 2 already there, 1 bad" in again.stdout
    assert "train2017: 1 converted" in again.stdout
    bad = runner.invoke(app, ["prep-shards", "--source", "coco-object", "--coco-root", str(tmp_path / "no")])
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    assert "root not found" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    for args, needle in (
        (["--source", "coco-object"], "'--coco-root': --source coco-object needs"),
        (["--source", "demo"], "'--out': --source demo needs"),
        (["--source", "folder", "--out", str(tmp_path / "s")], "'--images': --source folder needs"),
        (["--source", "demx"], "unknown source 'demx'"),
    ):
        bad = runner.invoke(app, ["prep-shards", *args])  # usage errors: exit 2, naming the flag
        assert bad.exit_code == 2 and "Traceback" not in bad.output
        assert needle in bad.output, bad.output
