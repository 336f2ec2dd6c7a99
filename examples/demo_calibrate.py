"""Pick bg_thresh from a calibration sweep (used by examples/demo.sh).

Usage: python examples/demo_calibrate.py METRICS_JSON [SPLIT]
Reads the sweep that ``pgseg eval --sweep bg_thresh=...`` wrote for SPLIT (default val-caption) and prints
the value with the best mIoU (the lowest such value on a tie). The demo calibrates on its own split built
with another seed, never on the splits it reports.
"""

import json
import sys


def best_value(metrics: dict, split: str) -> float:
    sweep = metrics["splits"][split].get("sweep")
    if not sweep or not sweep.get("points"):
        raise SystemExit(f"error: {split} in the metrics file has no sweep; run pgseg eval with --sweep")
    best = max(sweep["points"], key=lambda p: (round(p["mIoU"], 6), -p["value"]))
    return float(best["value"])


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: python examples/demo_calibrate.py METRICS_JSON [SPLIT]")
    with open(sys.argv[1], encoding="utf-8") as f:
        data = json.load(f)
    print(f"{best_value(data, sys.argv[2] if len(sys.argv) > 2 else 'val-caption'):g}")
