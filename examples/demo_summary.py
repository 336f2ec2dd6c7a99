"""Print the demo's closing summary from the files the pipeline wrote and write its page OUT/index.html
(used by examples/demo.sh)."""

import json
import sys
from pathlib import Path


def main() -> None:
    out = Path(sys.argv[1])
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else None
    trained = json.loads((out / "run" / "metrics.json").read_text())
    untrained = json.loads((out / "untrained" / "metrics.json").read_text())
    print("\n=== pgseg demo summary ===")
    print(f"{'split':<14}{'trained mIoU':>14}{'untrained mIoU':>16}{'gain':>8}")
    for split, m in trained["splits"].items():
        u = untrained["splits"][split]["mIoU"]
        print(f"{split:<14}{m['mIoU']:>14.1f}{u:>16.1f}{m['mIoU'] - u:>+8.1f}")
    if trained.get("hIoU") is not None:
        print(
            f"seen/unseen (no background): {trained['seen_mIoU']:.1f} / {trained['unseen_mIoU']:.1f}, "
            f"hIoU {trained['hIoU']:.1f}"
        )
    print(
        "bg_thresh (chosen on the seed-1 calibration split): "
        f"trained {trained['eval_config']['bg_thresh']:g}, "
        f"untrained {untrained['eval_config']['bg_thresh']:g}"
    )
    seg = out / "segment"
    print(f"overlays of the real photos: {seg}/*_overlay.png (label maps *_label.png, JSON *.json)")
    print(f"checkpoint: {out / 'run' / 'last.pt'}")
    from pgseg_core.viz.demo_page import write_demo_page

    page = write_demo_page(out)
    missing = f"; not found: {', '.join(page.missing)}" if page.missing else ""
    print(f"results page (curves, per-class IoU, predictions, real photos): {page.path}{missing}")
    if seconds is not None:
        print(f"total time: {seconds // 60} min {seconds % 60} s")


if __name__ == "__main__":
    main()
