"""Markdown table of the demo ablation (used by examples/ablation.sh).

Usage: python examples/ablation_summary.py OUT_DIR
Reads OUT_DIR/<variant>-s<seed>/metrics.json for the variants groupvit, released and intent, and prints per
split the mIoU of each seed, their mean and the spread (max - min), then whether both PGSeg modes beat
GroupViT by more than the larger seed spread (the papers' claim is PGSeg > GroupViT).
"""

import json
import sys
from pathlib import Path

VARIANTS = {
    "groupvit": "GroupViT (NPR off)",
    "released": "PGSeg, released-code mode",
    "intent": "PGSeg, intent mode (default)",
}


def collect(out: Path) -> dict[str, dict[str, list[float]]]:
    """{variant: {split: [mIoU per seed, seed order]}} from the runs found under ``out``."""
    table: dict[str, dict[str, list[float]]] = {}
    for variant in VARIANTS:
        for path in sorted(out.glob(f"{variant}-s*/metrics.json")):
            splits = json.loads(path.read_text())["splits"]
            for split, m in splits.items():
                table.setdefault(variant, {}).setdefault(split, []).append(float(m["mIoU"]))
    return table


def render(table: dict[str, dict[str, list[float]]]) -> str:
    if not table:
        raise SystemExit("error: no <variant>-s<seed>/metrics.json found")
    splits = sorted({s for per in table.values() for s in per})
    lines = ["| split | variant | mIoU per seed | mean | spread |", "|---|---|---|---|---|"]
    verdicts = []
    for split in splits:
        stats = {}
        for variant, name in VARIANTS.items():
            vals = table.get(variant, {}).get(split)
            if not vals:
                continue
            mean, spread = sum(vals) / len(vals), max(vals) - min(vals)
            stats[variant] = (mean, spread)
            seeds = ", ".join(f"{v:.1f}" for v in vals)
            lines.append(f"| {split} | {name} | {seeds} | {mean:.1f} | {spread:.1f} |")
        if "groupvit" in stats:
            for variant in ("released", "intent"):
                if variant in stats:
                    gain = stats[variant][0] - stats["groupvit"][0]
                    noise = max(stats[variant][1], stats["groupvit"][1])
                    word = "beats" if gain > noise else ("trails" if gain < -noise else "ties with")
                    what = f"{gain:+.1f} mIoU, seed spread {noise:.1f}"
                    verdicts.append(f"- {split}: {VARIANTS[variant]} {word} GroupViT ({what})")
    return "\n".join(lines + [""] + verdicts) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python examples/ablation_summary.py OUT_DIR")
    sys.stdout.write(render(collect(Path(sys.argv[1]))))
