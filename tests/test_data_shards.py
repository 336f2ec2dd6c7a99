"""Shard writing, index.json, shard specs and the folder-of-captioned-images source."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pgseg_core.data.shards import (
    SplitWriter,
    expand_braces,
    new_index,
    read_index,
    resolve_shards,
    write_index,
)
from pgseg_core.data.sources.folder import write_folder_shards
from pgseg_core.errors import DataError

from _fixtures import read_tar_samples


def _image(path, size=(20, 16), seed=0):
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    _image(d / "a.jpg", seed=1)
    _image(d / "b.png", seed=2)
    _image(d / "sub" / "c.jpg", seed=3)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    return d


def test_split_writer_rolls_shards_and_removes_stale(tmp_path):
    (tmp_path / "train-000009.tar").write_bytes(b"stale")
    with SplitWriter(tmp_path, "train", shard_size=2) as w:
        for i in range(5):
            w.write({"__key__": f"k{i}", "txt": f"caption {i}", "json": {"i": i}})
    assert w.shards == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert not (tmp_path / "train-000009.tar").exists()
    assert not list(tmp_path.glob("*.tmp"))
    got = read_tar_samples(tmp_path / "train-000001.tar")
    assert got["k2"]["txt"] == b"caption 2" and json.loads(got["k3"]["json"]) == {"i": 3}
    with pytest.raises(ValueError):
        SplitWriter(tmp_path, "train").write({"__key__": "has.dot", "txt": "x"})


def test_sidecar_captions_and_corrupt_image_skipped(folder, tmp_path):
    (folder / "a.txt").write_text("a red square\n")
    (folder / "b.txt").write_text("  noisy   picture ")
    (folder / "sub" / "c.txt").write_text("third")
    (folder / "broken.txt").write_text("never written")
    seen = []
    out = tmp_path / "shards"
    summary = write_folder_shards(folder, out, shard_size=2, progress=lambda d, t: seen.append((d, t)))
    assert summary["count"] == 3
    assert summary["skipped"]["unreadable"] == 1
    assert seen[-1] == (4, 4)
    index = read_index(out)
    assert index["splits"]["train"]["count"] == 3 and len(index["splits"]["train"]["shards"]) == 2
    samples = {}
    for name in index["splits"]["train"]["shards"]:
        samples.update(read_tar_samples(out / name))
    metas = sorted((json.loads(s["json"]) for s in samples.values()), key=lambda m: m["original_path"])
    assert [m["original_path"] for m in metas] == ["a.jpg", "b.png", "sub/c.jpg"]
    assert metas[1]["caption"] == "noisy picture" and (metas[1]["width"], metas[1]["height"]) == (20, 16)
    for s in samples.values():
        assert Image.open(__import__("io").BytesIO(s["jpg"])).format == "JPEG"
        assert s["txt"].decode() == json.loads(s["json"])["caption"]


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl"])
def test_caption_files(folder, tmp_path, fmt):
    if fmt == "tsv":
        text = "image\tcaption\na.jpg\tfirst one\nsub/c.jpg\tthird\tpart\nmissing.jpg\tnope\n"
    elif fmt == "csv":
        text = 'file,text\na.jpg,"first, with comma"\n./sub/c.jpg,third\nmissing.jpg,nope\n'
    else:
        text = (
            "\n".join(
                json.dumps(r)
                for r in [
                    {"image": "a.jpg", "caption": "first"},
                    {"file": "c.jpg", "text": "third"},
                    {"path": "missing.jpg", "caption": "nope"},
                ]
            )
            + "\n"
        )
    cap = tmp_path / f"captions.{fmt}"
    cap.write_text(text)
    out = tmp_path / "out"
    summary = write_folder_shards(folder, out, captions=cap)
    assert summary["count"] == 2
    assert summary["skipped"]["missing_image"] == 1
    assert summary["skipped"]["no_caption"] == 2  # b.png and broken.jpg
    caps = sorted(s["txt"].decode() for s in read_tar_samples(out / "train-000000.tar").values())
    if fmt == "tsv":
        assert caps == ["first one", "third part"]  # whitespace is collapsed
    elif fmt == "csv":
        assert caps == ["first, with comma", "third"]
    else:
        assert caps == ["first", "third"]


def test_caption_file_autodetected_in_folder(folder, tmp_path):
    (folder / "captions.jsonl").write_text(json.dumps({"image": "b.png", "caption": "bee"}) + "\n")
    assert write_folder_shards(folder, tmp_path / "o")["count"] == 1


def test_caption_format_errors(folder, tmp_path):
    bad = tmp_path / "captions.xml"
    bad.write_text("<x/>")
    with pytest.raises(DataError, match=r"captions\.tsv, captions\.csv or captions\.jsonl"):
        write_folder_shards(folder, tmp_path / "o", captions=bad)
    broken = tmp_path / "captions.jsonl"
    broken.write_text('{"image": "a.jpg", "caption": "ok"}\n{oops\n')
    with pytest.raises(DataError, match=r"captions\.jsonl:2"):
        write_folder_shards(folder, tmp_path / "o", captions=broken)
    with pytest.raises(DataError, match="none of the images"):
        write_folder_shards(folder, tmp_path / "o")  # no sidecars, no caption file
    with pytest.raises(DataError, match="not found"):
        write_folder_shards(tmp_path / "nope", tmp_path / "o")


def test_read_index_validation(tmp_path):
    with pytest.raises(DataError, match="has no index.json: the shard set is incomplete"):
        read_index(tmp_path)
    with pytest.raises(DataError, match="no shard index"):
        read_index(tmp_path / "index.json")
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        read_index(tmp_path)
    write_index(tmp_path, {**new_index({"train": {"shards": [], "count": 0}}), "schema": 99})
    with pytest.raises(DataError, match="schema 99"):
        read_index(tmp_path / "index.json")
    write_index(tmp_path, new_index({"train": {"shards": "x.tar", "count": 1}}))
    with pytest.raises(DataError, match="split 'train'"):
        read_index(tmp_path)


def test_expand_braces():
    assert expand_braces("d/train-{000000..000002}.tar") == [
        "d/train-000000.tar",
        "d/train-000001.tar",
        "d/train-000002.tar",
    ]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(DataError):
        expand_braces("x-{1..y}.tar")


def test_resolve_shards_forms(tmp_path):
    d = tmp_path / "sh"
    with SplitWriter(d, "train", shard_size=1) as w:
        for i in range(3):
            w.write({"__key__": f"k{i}", "txt": "t"})
    with SplitWriter(d, "val-caption", shard_size=5) as v:
        v.write({"__key__": "v0", "txt": "t"})
    expect = [str(d / f"train-00000{i}.tar") for i in range(3)]
    # a directory without index.json is an incomplete set: refused, naming the explicit form
    with pytest.raises(DataError, match=r"has no index.json.*interrupted prep-shards.*train-\*\.tar"):
        resolve_shards(d)
    # explicit tar lists keep working without an index
    assert resolve_shards(str(d / "train-{000000..000002}.tar")) == expect
    assert resolve_shards(str(d / "train-*.tar")) == expect
    write_index(
        d,
        new_index(
            {
                "train": {"shards": w.shards, "count": 3},
                "val-caption": {"shards": v.shards, "count": 1, "classes": ["a"]},
            }
        ),
    )
    assert resolve_shards(d) == expect
    assert resolve_shards(str(d / "index.json")) == expect
    assert resolve_shards(d, "val-caption") == [str(d / "val-caption-000000.tar")]
    assert resolve_shards(str(d / "train-{000000..000002}.tar")) == expect
    assert resolve_shards(str(d / "train-*.tar")) == expect
    assert resolve_shards(expect[1]) == [expect[1]]
    with pytest.raises(DataError, match="available splits: train, val-caption"):
        resolve_shards(d, "val-heldout")
    with pytest.raises(DataError, match="missing"):
        resolve_shards(str(d / "train-{000000..000009}.tar"))
    with pytest.raises(DataError, match="no shards match"):
        resolve_shards(str(d / "nope-*.tar"))
    with pytest.raises(DataError, match="no shards at"):
        resolve_shards(tmp_path / "nowhere")
    (d / "train-000001.tar").unlink()
    with pytest.raises(DataError, match="missing shard"):
        resolve_shards(d)
