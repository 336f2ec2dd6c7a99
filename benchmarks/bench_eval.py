"""Evaluation speed: images/s of the groupvit protocol at the paper model size, and the cost of a threshold
sweep from the HDF5 feature cache vs recomputing every point.

Random weights (the groupvit-s preset, ViT-S GroupViT as released) on synthetic VOC-sized images with random
labels: the numbers measure speed only, not accuracy. Every figure is a ratio of timings taken in the same
run, so it holds on the machine it was measured on. The contenders (full evaluation, one-pass sweep, cache
write pass, cached sweep, recomputed sweep) run interleaved round-robin (``--rounds``, default 7) and each
reports the median of its rounds with the min and max beside it (``timings_ms``).

    python benchmarks/bench_eval.py --device cpu --images 2
    python benchmarks/bench_eval.py --device cuda --images 20 --out benchmarks/results/bench_eval_cuda.json

Target (issue 5): a cached 15-point bg_thresh sweep costs less than 2 full evaluations.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _timing import round_robin, uptime  # noqa: E402
from pgseg_core.cache.features import CacheMeta, FeatureCache, feature_config_hash  # noqa: E402
from pgseg_core.config import load_config  # noqa: E402
from pgseg_core.eval.runs import evaluate_dataset  # noqa: E402
from pgseg_core.eval.protocol import resolve_protocol  # noqa: E402
from pgseg_core.eval.sweep import parse_sweep  # noqa: E402
from pgseg_core.models.factory import create_model  # noqa: E402
from pgseg_core.inference import ClassSpec  # noqa: E402
from pgseg_core.utils.device import resolve_device  # noqa: E402

# twenty everyday object words (the size of a VOC vocabulary; any words work for a speed test)
WORDS = [
    "plane",
    "bike",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "table",
    "dog",
    "horse",
    "motorbike",
    "person",
    "plant",
    "sheep",
    "sofa",
    "train",
    "monitor",
]


class SyntheticDataset:
    """VOC-like dataset: smooth random images of ``size`` with random 21-class labels (0 = background)."""

    def __init__(self, n: int, size: tuple[int, int], seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        h, w = size
        self.samples = []
        for i in range(n):
            coarse = rng.integers(0, 256, (h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
            img = np.kron(coarse, np.ones((25, 25, 1), dtype=np.uint8))[:h, :w]
            label = np.kron(rng.integers(0, 21, (h // 50 + 1, w // 50 + 1)), np.ones((50, 50)))[:h, :w]
            self.samples.append(
                SimpleNamespace(
                    key=f"synthetic_{i:04d}", image=np.ascontiguousarray(img), label=label.astype(np.uint8)
                )
            )
        self.info = SimpleNamespace(name="synthetic-voc", has_background=True, num_classes=20)

    def class_spec(self, protocol: str) -> ClassSpec:
        return ClassSpec.from_names(WORDS)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--model", default="groupvit-s", help="model preset (random weights)")
    ap.add_argument("--images", type=int, default=2, help="synthetic images")
    ap.add_argument("--size", default="375x500", help="image HxW (VOC-like by default)")
    ap.add_argument("--sweep", default="bg_thresh=0.3:1.0:0.05", help="sweep spec (15 points by default)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument(
        "--rounds",
        type=int,
        default=7,
        help="interleaved rounds: each round times every contender once (median and spread reported)",
    )
    ap.add_argument("--out", default="", help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    uptime_at_start = uptime()
    h, w = (int(v) for v in args.size.lower().split("x"))
    torch.manual_seed(0)
    cfg = load_config(args.model)
    model = create_model(cfg.model).to(dev).eval()
    eval_cfg = resolve_protocol("groupvit", "voc21", "groupvit").eval_cfg
    sweep = parse_sweep(args.sweep)
    ds = SyntheticDataset(args.images, (h, w))

    def run(**kw):
        return evaluate_dataset(model, ds, class_names="groupvit", eval_cfg=eval_cfg, device=dev, **kw)

    evaluate_dataset(
        model, SyntheticDataset(1, (h, w), seed=1), class_names="groupvit", eval_cfg=eval_cfg, device=dev
    )  # warm-up
    rounds = max(int(args.rounds), 1)
    with tempfile.TemporaryDirectory() as tmp:
        meta = CacheMeta("benchmark", feature_config_hash(cfg.model, eval_cfg), "groupvit", "synthetic-voc")
        with FeatureCache.open(Path(tmp) / "f.h5", meta) as cache:
            run(cache=cache)  # the cache the cached sweep reads
        written = iter(range(10**6))

        def write_pass():  # a fresh cache file on every call
            with FeatureCache.open(Path(tmp) / f"w{next(written)}.h5", meta) as fresh:
                run(cache=fresh)

        def cached_sweep():
            with FeatureCache.open(Path(tmp) / "f.h5", meta) as cache:
                res = run(cache=cache, sweep=sweep)
            assert res.splits["val"]["images_encoded"] == 0

        def recompute_sweep():  # what a sweep costs without features: one full evaluation per value
            for value in sweep.values:
                point_cfg = dataclasses.replace(eval_cfg, **{sweep.key: value})
                evaluate_dataset(model, ds, class_names="groupvit", eval_cfg=point_cfg, device=dev)

        contenders = {
            "full_eval": run,
            "one_pass_sweep_no_cache": lambda: run(sweep=sweep),
            "cache_write_pass": write_pass,
            "cached_sweep": cached_sweep,
            "recompute_sweep": recompute_sweep,
        }
        timings = round_robin(contenders, rounds=rounds, warmup=0, device=dev)
    sec = {k: t["median_ms"] / 1e3 for k, t in timings.items()}
    t_full, t_one_pass, t_write = sec["full_eval"], sec["one_pass_sweep_no_cache"], sec["cache_write_pass"]
    t_cached, t_recompute = sec["cached_sweep"], sec["recompute_sweep"]
    n = len(ds)
    result = {
        "benchmark": "bench_eval",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name(),
        "note": "random weights, synthetic images: speed only; timings taken on a shared machine are noisy",
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "model": args.model,
        "protocol": "groupvit (short side 448, slide 448/224, top-5)",
        "images": n,
        "rounds": rounds,
        "timings_ms": timings,
        "uptime_at_start": uptime_at_start,
        "image_size": [h, w],
        "sweep": {"key": sweep.key, "points": len(sweep.values)},
        "seconds": {  # medians of the interleaved rounds
            "full_eval": round(t_full, 3),
            "one_pass_sweep_no_cache": round(t_one_pass, 3),
            "cache_write_pass": round(t_write, 3),
            "cached_sweep": round(t_cached, 3),
            "recompute_sweep": round(t_recompute, 3),
        },
        "images_per_s": round(n / t_full, 4),
        "ratios": {
            "cached_sweep_over_full_eval": round(t_cached / t_full, 4),
            "recompute_over_cached_sweep": round(t_recompute / t_cached, 2),
            "one_pass_sweep_over_full_eval": round(t_one_pass / t_full, 4),
            "cache_write_over_full_eval": round(t_write / t_full, 4),
        },
        "target_cached_sweep_below_2_full_evals": t_cached < 2 * t_full,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
