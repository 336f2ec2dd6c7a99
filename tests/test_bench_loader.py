"""benchmarks/bench_loader.py --quick: runs, interleaves every decoder, writes its JSON (no timing claim)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_loader_quick(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_loader", ROOT / "benchmarks" / "bench_loader.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "b.json"
    bench.main(["--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["images_per_s_per_core"]) == {"pil", "draft"}
    assert all(len(v) == 2 for v in result["raw_seconds"].values())
    assert result["ratio_to_pil"]["pil"] == 1.0
    env = result["environment"]
    assert env["load_avg_1_5_15"] and "bench_loader.py" in env["command"] and "torch" in env
