"""Training speed: images/s and model-FLOP utilisation (MFU) of one training step, GroupViT-S and PGSeg-S,
and the ratio of our GroupViT step to transformers' GroupViTModel doing the same forward + backward on the
same weights.

Random weights, random images, fixed captions: speed only. One "step" is forward + loss + backward (no
optimizer update, so that the HF contender does the same work): ours through ``forward_train`` (hard Gumbel
assignment, as HF trains), HF through ``GroupViTModel(..., return_loss=True)``. Stochastic depth is off in
our models here (``drop_path_rate`` 0; the presets use 0.1): transformers' GroupViT has none, and with it
ours would do extra work that HF's does not. The contenders are timed interleaved (A B C A B C ...) so that
a load change hits all of them; each figure is the median of the repeats with its min and max, and each
ratio is also given as the median of the per-round ratios (``*_paired``: both steps of a pair ran back to
back, so a load change between rounds cancels). FLOPs are counted once per model on the same step with
``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions, forward and backward); MFU =
FLOPs per step x steps per second / peak FLOP/s of the device (``--peak-tflops``, or a table of known GPUs in
bf16; none on a CPU).

    python benchmarks/bench_train.py --quick                       # tiny models, a smoke test (seconds)
    python benchmarks/bench_train.py --device cpu --batch 8 --repeats 5
    python benchmarks/bench_train.py --device cuda --batch 256 --bf16 --repeats 10 \\
        --out benchmarks/results/bench_train_cuda.json

Targets (issue 15): on one H100 in bf16 >= 35 % MFU for GroupViT-S, PGSeg-S <= 1.10x GroupViT-S per step;
on the CPU ours <= 1.0x HF's step time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pgseg_core.config import load_config  # noqa: E402
from pgseg_core.models.factory import create_model  # noqa: E402
from pgseg_core.models.text import tokenize  # noqa: E402

#: dense bf16 peak TFLOP/s by device-name fragment (vendor data sheets)
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


def _models(quick: bool) -> dict[str, torch.nn.Module]:
    """Our GroupViT and PGSeg at the paper size (or tiny with --quick), same seed, no stochastic depth."""
    if quick:
        gv = load_config("pgseg-tiny", {"model.npr.enabled": False}).model
        pg = load_config("pgseg-tiny").model
    else:
        gv, pg = load_config("groupvit-s").model, load_config("pgseg-s").model
    gv = dataclasses.replace(gv, vision=dataclasses.replace(gv.vision, drop_path_rate=0.0))
    pg = dataclasses.replace(pg, vision=dataclasses.replace(pg.vision, drop_path_rate=0.0))
    out = {}
    for name, cfg in (("groupvit", gv), ("pgseg", pg)):
        torch.manual_seed(0)
        out[name] = create_model(cfg)
    return out


def _hf_twin(ours: torch.nn.Module):
    """transformers' GroupViTModel with our GroupViT's weights, or None without transformers."""
    try:
        from transformers import GroupViTConfig, GroupViTModel
    except ImportError:
        return None
    from pgseg_core.checkpoint.hf import hf_config_from_model_config, pgseg_to_hf

    hf = GroupViTModel(GroupViTConfig(**hf_config_from_model_config(ours.cfg)))
    hf.load_state_dict(pgseg_to_hf(ours.state_dict()), strict=True)
    return hf


def _step_fn(name: str, model, images: torch.Tensor, ids: torch.Tensor, amp):
    """A closure running one forward + loss + backward of ``model``."""
    model.train()
    if name.startswith("hf"):

        def step() -> None:
            with amp:
                loss = model(input_ids=ids, pixel_values=images, return_loss=True).loss
            loss.backward()
            model.zero_grad(set_to_none=True)

    else:
        model.img_encoder.set_hard_assignment(True)

        def step() -> None:
            with amp:
                loss = model.forward_train(ids, images=images)["loss"]
            loss.backward()
            model.zero_grad(set_to_none=True)

    return step


def _flops(step) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _paired(a: list[float], b: list[float]) -> float:
    """Median over the rounds of a[i] / b[i] (the two steps of round i ran one after the other)."""
    return statistics.median(x / y for x, y in zip(a, b))


def _peak(device: torch.device, given: float | None) -> float | None:
    if given:
        return given * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_BF16_TFLOPS.items():
            if key in name:
                return tflops * 1e12
    return None


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(1)
    models = _models(args.quick)
    size = models["groupvit"].cfg.vision.img_size
    images = torch.randn(args.batch, 3, size, size, device=device)
    captions = [f"a photo of object number {i} next to a small table" for i in range(args.batch)]
    ids = tokenize(captions, models["groupvit"].cfg.text.context_length).to(device)
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16) if args.bf16 and device.type == "cuda" else nullcontext()
    )
    contenders = {name: m.to(device) for name, m in models.items()}
    hf = _hf_twin(models["groupvit"]) if not args.no_hf else None
    if hf is not None:
        contenders["hf-groupvit"] = hf.to(device)
    steps = {n: _step_fn(n, m, images, ids, amp) for n, m in contenders.items()}
    for step in steps.values():  # warm-up (allocator, lazy init, MiniLM/tokenizer caches)
        step()
    flops = {n: _flops(s) for n, s in steps.items()}
    times: dict[str, list[float]] = {n: [] for n in steps}
    for _ in range(args.repeats):  # interleaved: A B C A B C ...
        for n, step in steps.items():
            _sync(device)
            t = time.perf_counter()
            step()
            _sync(device)
            times[n].append(time.perf_counter() - t)
    peak = _peak(device, args.peak_tflops)
    result = {}
    for n, ts in times.items():
        med = statistics.median(ts)
        result[n] = {
            "step_s_median": med, "step_s_min": min(ts), "step_s_max": max(ts),
            "images_per_s": args.batch / med, "flops_per_step": flops[n],
            "mfu": (flops[n] / med / peak) if peak else None,
        }  # fmt: skip
    ratios = {"pgseg_over_groupvit": result["pgseg"]["step_s_median"] / result["groupvit"]["step_s_median"]}
    ratios["pgseg_over_groupvit_paired"] = _paired(times["pgseg"], times["groupvit"])
    if "hf-groupvit" in result:
        ratios["groupvit_over_hf"] = (
            result["groupvit"]["step_s_median"] / result["hf-groupvit"]["step_s_median"]
        )
        ratios["groupvit_over_hf_paired"] = _paired(times["groupvit"], times["hf-groupvit"])
    return {"results": result, "ratios": ratios, "peak_flops": peak}


def _provenance(args: argparse.Namespace) -> dict:
    try:
        import transformers

        tv = transformers.__version__
    except ImportError:
        tv = None
    dev = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu"
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "device": args.device, "device_name": dev, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": tv, "python": platform.python_version(),
        "load_average": list(os.getloadavg()), "batch": args.batch, "repeats": args.repeats,
        "bf16": bool(args.bf16), "quick": bool(args.quick),
        "note": "measured on a shared machine unless stated otherwise: timings are not claims",
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's peak TFLOP/s for MFU")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers' GroupViTModel")
    ap.add_argument("--quick", action="store_true", help="tiny models, batch 2, 2 repeats (a smoke test)")
    ap.add_argument(
        "--out", default=None, help="JSON file (default benchmarks/results/bench_train_DEVICE.json)"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.repeats = 2, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {**_provenance(args), **run(args)}
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"bench_train_{args.device.split(':')[0]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for n, r in report["results"].items():
        mfu = f"  MFU {100 * r['mfu']:.1f} %" if r["mfu"] else ""
        print(f"{n:12s} {r['step_s_median'] * 1e3:9.1f} ms/step  {r['images_per_s']:8.1f} img/s  "
              f"{r['flops_per_step'] / 1e9:9.2f} GFLOP/step{mfu}")  # fmt: skip
    print("ratios:", {k: round(v, 3) for k, v in report["ratios"].items()}, "->", out)
    return report


if __name__ == "__main__":
    main()
