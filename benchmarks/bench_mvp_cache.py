"""MVP-SEG prompt-training speed: steps/s reading frozen dense maps from the HDF5 feature cache vs running
the frozen image tower at every step (ratio measured in one run).

Random weights on synthetic images with random seen-class labels: the numbers measure speed only. The
backbone is a local open_clip model (``--backbone open_clip:MODEL:WEIGHTS``) or, by default, a small
random ViT config written to a temporary folder (``--quick`` shrinks everything for a test).

    python benchmarks/bench_mvp_cache.py --quick
    python benchmarks/bench_mvp_cache.py --backbone open_clip:ViT-B-16:/path/weights.pt --images 32 --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pgseg_core.backbones import load_backbone  # noqa: E402
from pgseg_core.mvp.config import MVPConfig  # noqa: E402
from pgseg_core.mvp.data import LabelledData  # noqa: E402
from pgseg_core.mvp.dense_cache import open_dense_cache  # noqa: E402
from pgseg_core.mvp.model import MVPSeg  # noqa: E402
from pgseg_core.mvp.predict import DensePredictor  # noqa: E402
from pgseg_core.mvp.train import first_pass, fit_prompts  # noqa: E402

SMALL_VIT = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": 4, "width": 192, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
CLASSES = ["cat", "dog", "horse", "cow", "bird", "tree", "car", "boat"]


def _default_backbone(tmp: Path, quick: bool) -> str:
    import open_clip

    cfg = json.loads(json.dumps(SMALL_VIT))
    if quick:
        cfg["vision_cfg"].update(image_size=64, layers=2, width=64)
    path = tmp / "bench-vit.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    weights = tmp / "bench-vit.pt"
    torch.save(open_clip.create_model("bench-vit", pretrained=None).state_dict(), weights)
    return f"open_clip:{path}:{weights}"


def _data(n: int, size: int) -> LabelledData:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        image = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        label = rng.integers(0, len(CLASSES) + 1, (size, size)).astype(np.uint8)
        samples.append(SimpleNamespace(key=f"s{i}", image=image, label=label, classes=CLASSES))
    return LabelledData([("train", lambda: iter(samples))], True, CLASSES, "synthetic")


def _run(ref: str, args, tmp: Path, use_cache: bool) -> dict:
    cfg = MVPConfig(steps=args.steps, batch_size=args.batch, short_side=args.size, max_long=args.size)
    bb = load_backbone(ref, args.device)
    model = MVPSeg(bb, cfg, generator=torch.Generator().manual_seed(0))
    pred = DensePredictor(bb, None, [], cfg.short_side, cfg.max_long)
    vocab = ["background", *CLASSES]
    if use_cache:
        pred.cache = open_dense_cache(tmp / "dense.h5", bb, cfg.short_side, cfg.max_long)
    t0 = time.perf_counter()
    examples = first_pass(pred, _data(args.images, args.size), vocab, use_cache, None)
    first = time.perf_counter() - t0
    out = tmp / ("cached" if use_cache else "plain")
    out.mkdir(exist_ok=True)
    _, seconds = fit_prompts(model, pred, examples, vocab, cfg, out, None)
    if pred.cache is not None:
        pred.cache.close()
    return {"first_pass_s": first, "train_s": seconds, "steps_per_s": cfg.steps / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a test runs this)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/bench_mvp_cache.json"))
    args = ap.parse_args()
    if args.quick:
        args.images, args.steps, args.batch, args.size = 2, 2, 2, 64
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        ref = args.backbone or _default_backbone(tmp, args.quick)
        plain = _run(ref, args, tmp, use_cache=False)
        cached = _run(ref, args, tmp, use_cache=True)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": args.device,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "cpu_count": os.cpu_count(),
        "backbone": "small random ViT" if args.backbone is None else args.backbone,
        "settings": {k: getattr(args, k) for k in ("images", "steps", "batch", "size", "quick")},
        "no_cache": plain,
        "cache": cached,
        "ratios": {"cached_over_plain_steps_per_s": cached["steps_per_s"] / plain["steps_per_s"]},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["ratios"]))


if __name__ == "__main__":
    main()
