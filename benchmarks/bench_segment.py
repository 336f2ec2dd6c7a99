"""Segmentation speed: pgseg torch vs pgseg onnxruntime vs transformers' GroupViTModel, same weights, one run.

Model: the ``groupvit-s`` preset (GroupViT-S as released) with random weights. Measured on the CPU with
``--threads`` intra-op threads (default 2) and, when CUDA is present, on the GPU too.

What is timed (median of ``--repeats`` after ``--warmup`` runs):

* ``crop``: one 448×448 crop through the image side.
  - ``pgseg_torch``: ``extract_features`` (encode_image(dense=True) + chained soft assignments).
  - ``pgseg_onnxruntime``: the exported encoder (``pgseg export-onnx``) on ONNX Runtime + the same
    post-processing.
  - ``hf_vision``: transformers' ``GroupViTModel.vision_model`` + ``visual_projection`` (image features).
  - ``hf_segmentation``: transformers' ``GroupViTModel(input_ids, pixel_values, output_segmentation=True)``,
    the documented HF way to segment: it also runs the text tower on the C class prompts on every call.
* ``image``: one 448×672 image (short side 448, slide 448/224: 2 windows) end to end through pgseg's
  segment path (prepare + :func:`pgseg_core.inference.predict_batch`, class embeddings precomputed), torch
  and onnxruntime.
* GPU only: images/s of the image path at ``--gpu-batch`` images per batch, fp32 and bf16 autocast.

Every number is printed with its ratio to ``pgseg_torch`` measured in the same run; ``--out`` writes JSON
(device, versions, command, numbers). The HF model gets the same weights through
``pgseg_core.checkpoint.hf.pgseg_to_hf`` with its position embeddings resized (bicubic, as pgseg does at run
time) to the 28×28 grid of a 448 input, so both compute the same function (tests/test_parity_hf.py).

Usage::

    python benchmarks/bench_segment.py --threads 2 --repeats 5 --out benchmarks/results/bench_segment_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pgseg_core.config import load_config  # noqa: E402
from pgseg_core.models.factory import create_model  # noqa: E402
from pgseg_core.inference import (  # noqa: E402
    ClassSpec,
    TorchEncoder,
    embed_classes,
    extract_features,
    predict_batch,
    prepare_image,
)

CLASSES = ["cat", "dog", "person", "car", "tree", "sky", "building", "road", "grass", "water"]


def median_seconds(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_hf(model, cfg):
    from transformers import GroupViTConfig, GroupViTModel

    from pgseg_core.checkpoint.hf import hf_config_from_model_config, pgseg_to_hf
    from pgseg_core.models.vision import interpolate_pos_embed

    spec = hf_config_from_model_config(cfg.model)
    spec["vision_config"]["image_size"] = 448
    hf = GroupViTModel(GroupViTConfig(**spec)).eval()
    state = pgseg_to_hf(model.state_dict())
    key = next(k for k in state if k.endswith("embeddings.position_embeddings"))
    state[key] = interpolate_pos_embed(state[key], model.img_encoder.grid, (28, 28))
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise SystemExit(f"HF weights do not match: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return hf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--gpu-batch", type=int, default=16)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-onnx", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config("groupvit-s")
    model = create_model(cfg.model).eval()
    spec = ClassSpec.from_names(CLASSES)
    class_emb = embed_classes(model, spec, list(cfg.eval.templates), "cpu")
    scale = model.logit_scale_value()
    rng = np.random.default_rng(0)
    crop = torch.randn(1, 3, 448, 448)
    image = rng.integers(0, 255, (448, 672, 3), dtype=np.uint8)
    eval_cfg = cfg.eval  # short side 448, slide 448 / 224
    cpu = torch.device("cpu")
    results: dict = {"crop_448_ms": {}, "image_448x672_ms": {}}

    with torch.no_grad():
        t = median_seconds(lambda: extract_features(model, crop), args.warmup, args.repeats)
        results["crop_448_ms"]["pgseg_torch"] = t * 1e3
        torch_enc = TorchEncoder(model, cpu)
        t = median_seconds(
            lambda: predict_batch(
                torch_enc, [prepare_image(image, eval_cfg)], class_emb, scale, eval_cfg, cpu
            ),
            args.warmup,
            args.repeats,
        )
        results["image_448x672_ms"]["pgseg_torch"] = t * 1e3

        if not args.skip_onnx:
            from pgseg_core.segment.onnx import OnnxEncoder, export_onnx

            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "groupvit-s.onnx"
                t0 = time.perf_counter()
                export_onnx(model, path, size=448)
                results["onnx_export_s"] = time.perf_counter() - t0
                onnx_enc = OnnxEncoder(path, threads=args.threads)
                t = median_seconds(lambda: onnx_enc(crop), args.warmup, args.repeats)
                results["crop_448_ms"]["pgseg_onnxruntime"] = t * 1e3
                t = median_seconds(
                    lambda: predict_batch(
                        onnx_enc, [prepare_image(image, eval_cfg)], class_emb, scale, eval_cfg, cpu
                    ),
                    args.warmup,
                    args.repeats,
                )
                results["image_448x672_ms"]["pgseg_onnxruntime"] = t * 1e3
                # same masks as torch on this image?
                ((lt, _),) = predict_batch(
                    torch_enc, [prepare_image(image, eval_cfg)], class_emb, scale, eval_cfg, cpu
                )
                ((lo, _),) = predict_batch(
                    onnx_enc, [prepare_image(image, eval_cfg)], class_emb, scale, eval_cfg, cpu
                )
                results["onnx_label_agreement"] = float((lt == lo).mean())

        if not args.skip_hf:
            from pgseg_core.models.text import tokenize

            hf = build_hf(model, cfg)
            vm = hf.vision_model
            t = median_seconds(
                lambda: hf.visual_projection(vm(pixel_values=crop).pooler_output), args.warmup, args.repeats
            )
            results["crop_448_ms"]["hf_vision"] = t * 1e3
            ours = torch.nn.functional.normalize(model.encode_image(crop).image_emb, dim=-1)
            theirs = torch.nn.functional.normalize(
                hf.visual_projection(vm(pixel_values=crop).pooler_output), dim=-1
            )
            results["hf_image_emb_max_abs_diff"] = float((ours - theirs).abs().max())
            ids = tokenize([eval_cfg.templates[0].format(c) for c in CLASSES], cfg.model.text.context_length)
            t = median_seconds(
                lambda: hf(input_ids=ids, pixel_values=crop, output_segmentation=True),
                args.warmup,
                args.repeats,
            )
            results["crop_448_ms"]["hf_segmentation"] = t * 1e3

    if torch.cuda.is_available():
        dev = torch.device("cuda")
        gmodel = model.to(dev)
        gce = class_emb.to(dev)
        prepared = [prepare_image(image, eval_cfg) for _ in range(args.gpu_batch)]
        gpu: dict = {"device_name": torch.cuda.get_device_name(dev), "batch": args.gpu_batch}
        for name, bf16 in (("pgseg_torch_fp32", False), ("pgseg_torch_bf16", True)):
            enc = TorchEncoder(gmodel, dev, bf16=bf16)

            def step(enc=enc):
                predict_batch(enc, prepared, gce, scale, eval_cfg, dev, max_crops=4 * args.gpu_batch)
                sync(dev)

            t = median_seconds(step, args.warmup + 1, args.repeats)
            gpu[f"{name}_images_per_s"] = args.gpu_batch / t
        results["gpu_448x672"] = gpu

    ref_crop = results["crop_448_ms"]["pgseg_torch"]
    ref_image = results["image_448x672_ms"]["pgseg_torch"]
    results["ratios_vs_pgseg_torch"] = {
        "crop": {k: v / ref_crop for k, v in results["crop_448_ms"].items()},
        "image": {k: v / ref_image for k, v in results["image_448x672_ms"].items()},
    }
    import importlib.metadata as md

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    results["env"] = {
        "device": "cpu" if not torch.cuda.is_available() else "cpu+cuda",
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "onnxruntime": version("onnxruntime"),
        "transformers": version("transformers"),
        "python": platform.python_version(),
        "model": "groupvit-s (random weights)",
        "classes": len(CLASSES),
        "warmup": args.warmup,
        "repeats": args.repeats,
        "command": "python " + " ".join(sys.argv),
    }
    for section in ("crop_448_ms", "image_448x672_ms"):
        ref = results[section]["pgseg_torch"]
        print(f"{section}:")
        for k, v in results[section].items():
            print(f"  {k:20s} {v:9.1f} ms   x{v / ref:5.2f} of pgseg_torch")
    if "onnx_label_agreement" in results:
        print(f"onnx vs torch label agreement on the image: {results['onnx_label_agreement']:.4f}")
    if "gpu_448x672" in results:
        print("gpu:", json.dumps(results["gpu_448x672"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
