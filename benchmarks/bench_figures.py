"""Cost of the figures: ``curves.png`` and the eval figures at the demo's shape, against the time of the
commands that draw them.

Synthetic inputs of the demo's shape (docs/DEMO_RECIPE.md): a ``metrics.jsonl`` of ``--steps`` steps logged
every 10 (the loss terms of pgseg-demo), and an evaluation of the two demo splits (30 seen and 8 unseen
classes plus background) with a 9-point bg_thresh sweep and 8 grid images of 224 × 224. The figures are
drawn ``--repeat`` times in one process (the first includes importing matplotlib, as in a real command);
the JSON records every timing, so the fraction of a command can be computed against that command's own
time (``--eval-seconds`` / ``--train-seconds``, measured separately on the same machine).

    python benchmarks/bench_figures.py --quick
    python benchmarks/bench_figures.py --eval-seconds 60 --train-seconds 900 \
        --out benchmarks/results/bench_figures_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pgseg_core.eval.figures import EvalFigureOptions, write_eval_figures  # noqa: E402
from pgseg_core.eval.observe import EvalObserver  # noqa: E402
from pgseg_core.viz.curves import load_run, plot_curves  # noqa: E402

LOSSES = ("loss", "loss_itc", "loss_multi_label", "loss_pg", "loss_pg_1", "loss_pg_2", "loss_pg_text")


def _metrics_jsonl(path: Path, steps: int, rng) -> None:
    with open(path, "w") as f:
        for s in range(10, steps + 1, 10):
            row = {k: float(3.0 / (1 + s / 200) + rng.random() * 0.1) for k in LOSSES}
            row.update(step=s, lr=1e-4, grad_norm=float(rng.random()), logit_scale=14.0, images_per_s=20.0)
            f.write(json.dumps(row) + "\n")


def _eval_inputs(rng, size: int, grid: int):
    metrics, observer = {"splits": {}}, EvalObserver(keep=grid)
    for split, n in (("val-caption", 30), ("val-heldout", 8)):
        names = ["background"] + [f"{split[4:]}_{i}" for i in range(n)]
        conf = rng.integers(0, 2000, (n + 1, n + 1)) + np.diag(rng.integers(5000, 20000, n + 1))
        points = [{"value": v, "mIoU": float(rng.random() * 20), "mIoU_fg": 5.0, "mAcc": 1.0, "aAcc": 1.0}
                  for v in np.round(np.arange(0.1, 0.95, 0.1), 2)]  # fmt: skip
        metrics["splits"][split] = {
            "mIoU": 10.0,
            "per_class": {c: {"IoU": float(rng.random() * 60)} for c in names},
            "sweep": {"key": "bg_thresh", "points": points},
        }
        for i in range(grid):
            image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            label = rng.integers(0, n + 1, (size, size)).astype(np.uint8)
            observer.add_sample(f"{split}-{i:08d}", image, label, label[::-1].copy())
        observer.end_split(names, conf)
    return metrics, observer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--eval-seconds", type=float, default=None, help="the demo eval's own time, for the fraction"
    )
    ap.add_argument("--train-seconds", type=float, default=None, help="the demo training's time")
    ap.add_argument("--ckpt-every", type=int, default=100, help="checkpoint interval (pgseg-demo: 100)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    steps, size, grid, repeat = (100, 32, 2, 1) if args.quick else (args.steps, 224, 8, args.repeat)
    rng = np.random.default_rng(0)
    curves_s, eval_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _metrics_jsonl(tmp / "metrics.jsonl", steps, rng)
        metrics, observer = _eval_inputs(rng, size, grid)
        for _ in range(repeat):
            t = time.perf_counter()
            plot_curves([load_run(tmp)[0]], tmp / "curves.png")
            curves_s.append(time.perf_counter() - t)
            done = write_eval_figures(
                metrics, observer, tmp / "metrics.json", EvalFigureOptions(grid_images=8)
            )
            eval_s.append(done.seconds)
    result = {
        "benchmark": "bench_figures",
        "command": " ".join(["bench_figures.py", *sys.argv[1:]]),
        "python": platform.python_version(),
        "matplotlib": __import__("matplotlib").__version__,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "note": "on a shared, loaded machine: compare only with commands timed under the same load",
        "shape": {
            "steps": steps,
            "logged_rows": steps // 10,
            "grid_images": grid,
            "image_size": size,
            "classes": [31, 9],
            "sweep_points": 9,
        },  # fmt: skip
        "seconds": {"curves": [round(s, 3) for s in curves_s], "eval_figures": [round(s, 3) for s in eval_s]},
    }
    if args.eval_seconds:
        result["eval_fraction_first"] = round(eval_s[0] / (eval_s[0] + args.eval_seconds), 4)
    if args.train_seconds:
        draws = max(1, steps // args.ckpt_every)  # the periodic checkpoints and the end of the run
        result["curves_draws"] = draws
        later = float(np.median(curves_s[1:])) if len(curves_s) > 1 else curves_s[0]
        result["train_fraction"] = round((curves_s[0] + (draws - 1) * later) / args.train_seconds, 4)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
