"""benchmarks/bench_train.py --quick: runs the three contenders interleaved and writes its JSON report."""

from __future__ import annotations

import json

import pytest

from _fixtures import load_benchmark

pytestmark = pytest.mark.usefixtures("single_thread")


def test_bench_train_quick_writes_a_report(tmp_path):
    bench = load_benchmark("bench_train")
    out = tmp_path / "bench.json"
    bench.main(["--quick", "--out", str(out)])
    report = json.loads(out.read_text())
    assert {"command", "device", "torch", "load_average", "results", "ratios"} <= set(report)
    results = report["results"]
    assert {"groupvit", "pgseg"} <= set(results)
    for r in results.values():
        assert r["step_s_min"] <= r["step_s_median"] <= r["step_s_max"]
        assert r["flops_per_step"] > 0 and r["images_per_s"] > 0
    # PGSeg adds NPR and L_PG to GroupViT: it counts more FLOPs per step
    assert results["pgseg"]["flops_per_step"] > results["groupvit"]["flops_per_step"]
    if "hf-groupvit" in results:  # same weights, same work: the counted FLOPs agree closely
        ratio = results["groupvit"]["flops_per_step"] / results["hf-groupvit"]["flops_per_step"]
        assert 0.8 < ratio < 1.25, ratio
        assert report["ratios"]["groupvit_over_hf"] > 0
