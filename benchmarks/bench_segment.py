"""Segmentation speed: pgseg torch vs pgseg onnxruntime vs transformers' GroupViTModel, same weights, one run.

Model: the ``groupvit-s`` preset (GroupViT-S as released) with random weights. Measured on the CPU with
``--threads`` intra-op threads (default 2) and, when CUDA is present, on the GPU too.

What is timed (the contenders of a section interleaved round-robin, ``--rounds`` rounds after ``--warmup``
runs; each reports the median of its rounds with min and max):

* ``crop``: one 448×448 crop through the image side.
  - ``pgseg_torch``: ``extract_features`` (encode_image(dense=True) + chained soft assignments).
  - ``pgseg_onnxruntime``: the exported encoder (``pgseg export-onnx``) on ONNX Runtime + the same
    post-processing.
  - ``hf_vision``: transformers' ``GroupViTModel.vision_model`` + ``visual_projection`` (image features).
  - ``hf_segmentation``: transformers' ``GroupViTModel(input_ids, pixel_values, output_segmentation=True)``,
    the documented HF way to segment: it also runs the text tower on the C class prompts on every call.
* ``image``: one 448×672 image (short side 448, slide 448/224: 2 windows) end to end through pgseg's
  segment path (prepare + :func:`pgseg_core.inference.predict_batch`, class embeddings precomputed), torch
  and onnxruntime, and ``hf_segmentation``: the same windows through HF's ``output_segmentation=True``
  forward, averaged and arg-maxed (the end-to-end target is pgseg_torch >= 1.5x this).
* GPU only: images/s of the image path at ``--gpu-batch`` images per batch, fp32 and bf16 autocast.

Every number is printed with its ratio to a reference measured in the same run (``x`` > 1: faster than the
reference); ``--out`` writes JSON (device, versions, command, load, every sample). The HF model gets the
same weights through ``pgseg_core.checkpoint.hf.pgseg_to_hf`` with its position embeddings resized
(bicubic, as pgseg does at run time) to the 28×28 grid of a 448 input, so both compute the same function
(tests/test_parity_hf.py).

Usage::

    python benchmarks/bench_segment.py --threads 2 --rounds 7 --out benchmarks/results/bench_segment_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _timing import environment, print_table, ratios, round_robin, write_results  # noqa: E402
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
from pgseg_core.inference.preprocess import pad_to_stride  # noqa: E402
from pgseg_core.inference.windows import (  # noqa: E402
    WindowAccumulator,
    channel_argmax,
    image_windows,
    resize_scores,
)

CLASSES = ["cat", "dog", "person", "car", "tree", "sky", "building", "road", "grass", "water"]


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


def crop_contenders(model, cfg, crop, args, tmp: Path, results: dict) -> dict:
    """The 448×448 crop contenders (closures), with the checks that they compute the same thing."""
    contenders = {"pgseg_torch": lambda: extract_features(model, crop)}
    if not args.skip_onnx:
        from pgseg_core.segment.onnx import OnnxEncoder, export_onnx

        path = tmp / "model.onnx"
        t0 = time.perf_counter()
        export_onnx(model, path, size=448)
        results["onnx_export_s"] = time.perf_counter() - t0
        results["_onnx_encoder"] = OnnxEncoder(path, threads=args.threads)
        contenders["pgseg_onnxruntime"] = lambda: results["_onnx_encoder"](crop)
    if not args.skip_hf:
        from pgseg_core.models.text import tokenize

        hf = build_hf(model, cfg)
        vm = hf.vision_model
        contenders["hf_vision"] = lambda: hf.visual_projection(vm(pixel_values=crop).pooler_output)
        ours = torch.nn.functional.normalize(model.encode_image(crop).image_emb, dim=-1)
        theirs = torch.nn.functional.normalize(contenders["hf_vision"](), dim=-1)
        results["hf_image_emb_max_abs_diff"] = float((ours - theirs).abs().max())
        prompts = [cfg.eval.templates[0].format(c) for c in CLASSES]
        ids = tokenize(prompts, cfg.model.text.context_length)
        contenders["hf_segmentation"] = lambda: hf(input_ids=ids, pixel_values=crop, output_segmentation=True)
        results["_hf"] = (hf, ids)
    return contenders


def hf_segment_image(hf, ids, image, eval_cfg) -> np.ndarray:
    """transformers' documented way to segment, over the same slide windows as pgseg: every window through
    ``GroupViTModel(output_segmentation=True)`` (text prompts included), its per-pixel logits averaged over
    the windows, resized to the image and arg-maxed (no background rule: a speed reference only)."""
    prepared = prepare_image(image, eval_cfg)
    height, width = prepared.x.shape[-2:]
    acc = None
    for y1, y2, x1, x2 in image_windows(height, width, eval_cfg):
        crop = pad_to_stride(prepared.x[None, :, y1:y2, x1:x2])
        logits = hf(input_ids=ids, pixel_values=crop, output_segmentation=True).segmentation_logits
        logits = torch.nn.functional.interpolate(logits, size=crop.shape[-2:], mode="bilinear")
        if acc is None:
            acc = WindowAccumulator(logits.shape[1], (height, width), "cpu")
        acc.add([(y1, y2, x1, x2)], logits)
    return channel_argmax(resize_scores(acc.mean(), prepared.size)).numpy()


def image_contenders(model, image, class_emb, scale, eval_cfg, results: dict) -> dict:
    """The 448×672 end-to-end contenders (pgseg's segment path with each encoder; HF's segmentation)."""
    cpu = torch.device("cpu")
    encoders = {"pgseg_torch": TorchEncoder(model, cpu)}
    if "_onnx_encoder" in results:
        encoders["pgseg_onnxruntime"] = results["_onnx_encoder"]

    def run(enc):
        return predict_batch(enc, [prepare_image(image, eval_cfg)], class_emb, scale, eval_cfg, cpu)

    if "pgseg_onnxruntime" in encoders:  # same masks as torch on this image?
        ((lt, _),), ((lo, _),) = run(encoders["pgseg_torch"]), run(encoders["pgseg_onnxruntime"])
        results["onnx_label_agreement"] = float((lt == lo).mean())
    contenders = {name: (lambda enc=enc: run(enc)) for name, enc in encoders.items()}
    if "_hf" in results:
        hf, ids = results["_hf"]
        contenders["hf_segmentation"] = lambda: hf_segment_image(hf, ids, image, eval_cfg)
    return contenders


def gpu_images_per_s(model, image, class_emb, scale, eval_cfg, args) -> dict:
    dev = torch.device("cuda")
    gmodel, gce = model.to(dev), class_emb.to(dev)
    prepared = [prepare_image(image, eval_cfg) for _ in range(args.gpu_batch)]
    steps = {}
    for name, bf16 in (("pgseg_torch_fp32", False), ("pgseg_torch_bf16", True)):
        enc = TorchEncoder(gmodel, dev, bf16=bf16)
        steps[name] = lambda enc=enc: predict_batch(
            enc, prepared, gce, scale, eval_cfg, dev, max_crops=4 * args.gpu_batch
        )
    timings = round_robin(steps, rounds=args.rounds, warmup=args.warmup + 1, device=dev)
    gpu: dict = {
        "device_name": torch.cuda.get_device_name(dev),
        "batch": args.gpu_batch,
        "timings_ms": timings,
    }
    for name, t in timings.items():
        gpu[f"{name}_images_per_s"] = args.gpu_batch / (t["median_ms"] / 1e3)
    return gpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median, min, max reported)")
    ap.add_argument("--model", default="groupvit-s", help="model preset (random weights)")
    ap.add_argument("--gpu-batch", type=int, default=16)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-onnx", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(args.model, {"model.npr.enabled": False})  # GroupViT: what HF implements
    model = create_model(cfg.model).eval()
    spec = ClassSpec.from_names(CLASSES)
    class_emb = embed_classes(model, spec, list(cfg.eval.templates), "cpu")
    scale = model.logit_scale_value()
    crop = torch.randn(1, 3, 448, 448)
    image = np.random.default_rng(0).integers(0, 255, (448, 672, 3), dtype=np.uint8)
    eval_cfg = load_config("groupvit-s").eval  # short side 448, slide 448 / 224
    results: dict = {"env": environment(torch.device("cpu"), model=f"{args.model} (random weights)")}
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        crops = crop_contenders(model, cfg, crop, args, Path(tmp), results)
        images = image_contenders(model, image, class_emb, scale, eval_cfg, results)
        results["crop_448"] = round_robin(crops, rounds=args.rounds, warmup=args.warmup)
        results["image_448x672"] = round_robin(images, rounds=args.rounds, warmup=args.warmup)
        results.pop("_onnx_encoder", None)
        results.pop("_hf", None)
    if torch.cuda.is_available():
        with torch.no_grad():
            results["gpu_448x672"] = gpu_images_per_s(model, image, class_emb, scale, eval_cfg, args)
    results["speedup_vs"] = {
        "crop_vs_hf_vision": ratios(results["crop_448"], "hf_vision") if not args.skip_hf else None,
        "crop_vs_pgseg_torch": ratios(results["crop_448"], "pgseg_torch"),
        "image_vs_pgseg_torch": ratios(results["image_448x672"], "pgseg_torch"),
        "image_vs_hf_segmentation": ratios(results["image_448x672"], "hf_segmentation")
        if not args.skip_hf
        else None,
    }
    results["env"].update(classes=len(CLASSES), warmup=args.warmup, rounds=args.rounds)
    print_table("crop_448", results["crop_448"], "hf_vision" if not args.skip_hf else "pgseg_torch")
    print_table(
        "image_448x672", results["image_448x672"], "hf_segmentation" if not args.skip_hf else "pgseg_torch"
    )
    if "onnx_label_agreement" in results:
        print(f"onnx vs torch label agreement on the image: {results['onnx_label_agreement']:.4f}")
    if "gpu_448x672" in results:
        print("gpu:", json.dumps({k: v for k, v in results["gpu_448x672"].items() if k != "timings_ms"}))
    if args.out:
        write_results(args.out, results)


if __name__ == "__main__":
    main()
