"""benchmarks/bench_loader.py --quick: runs, interleaves every decoder, writes its JSON (no timing claim)."""

from __future__ import annotations

import json

from _fixtures import load_benchmark


def test_bench_loader_quick(tmp_path):
    bench = load_benchmark("bench_loader")
    out = tmp_path / "b.json"
    bench.main(["--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["images_per_s_per_core"]) == {"pil", "draft"}
    assert all(len(v) == 2 for v in result["raw_seconds"].values())
    assert result["ratio_to_pil"]["pil"] == 1.0
    env = result["environment"]
    assert env["load_avg_1_5_15"] and "bench_loader.py" in env["command"] and "torch" in env
