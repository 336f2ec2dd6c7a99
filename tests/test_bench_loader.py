"""benchmarks/bench_loader.py --quick: runs, interleaves every decoder, writes its JSON (no timing claim)."""

from __future__ import annotations

import json

from _fixtures import load_benchmark


def test_bench_loader_quick(tmp_path):
    bench = load_benchmark("bench_loader")
    out = tmp_path / "b.json"
    bench.main(["--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["images_per_s_per_core"]) == {"pil", "draft", "turbo"}
    assert all(len(v) == 2 for v in result["raw_seconds"].values())
    assert result["ratio_to_pil"]["pil"] == 1.0
    env = result["environment"]
    assert env["load_avg_1_5_15"] and "bench_loader.py" in env["command"] and "torch" in env
    assert env["simplejpeg"]


def test_bench_loader_real_photos(tmp_path):
    """--source photos: the demo's real photos at 512 px short side, quality 95 (needs the demo extras)."""
    import io

    import pytest
    from PIL import Image

    pytest.importorskip("skimage")
    bench = load_benchmark("bench_loader")
    jpegs = bench.make_photo_jpegs(3)
    for data in jpegs:
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "JPEG" and min(im.size) == 512
    out = tmp_path / "p.json"
    bench.main(["--quick", "--source", "photos", "--out", str(out)])
    assert json.loads(out.read_text())["settings"]["source"] == "photos"
