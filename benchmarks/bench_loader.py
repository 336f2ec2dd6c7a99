"""Training-image decode speed: images/s per CPU core of each decoder against plain PIL, in one run.

Every decoder turns the same JPEG bytes (512-px short side, quality 95, as img2dataset writes them; synthetic
images by default, ``--source photos`` for the demo's real photos) into
one augmented training crop (RandomResizedCrop(224, scale 0.08-1), flip, normalise), single-threaded in
this process, so images/s is per core. The decoders are interleaved (each repeat runs every decoder once,
in a rotated order) and the report gives the median and the spread (min, max) over repeats, and each
decoder's median ratio to ``pil``. With CUDA, the GPU path's batched images/s is reported too.

    python benchmarks/bench_loader.py --out benchmarks/results/bench_loader_cpu_run1.json
    python benchmarks/bench_loader.py --source photos --out benchmarks/results/bench_loader_cpu_photos.json
    python benchmarks/bench_loader.py --quick --out /tmp/b.json      # a few images, for tests

Record numbers only from an idle machine: the JSON keeps the load average next to them.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pgseg_core.config import DataConfig  # noqa: E402
from pgseg_core.data.decode import train_sample_decoder  # noqa: E402


def make_jpegs(n: int, size: tuple[int, int], seed: int = 0) -> list[bytes]:
    """``n`` photo-like JPEGs (smooth colour fields plus texture) of ``size`` (w, h), quality 95."""
    rng = np.random.default_rng(seed)
    w, h = size
    out = []
    for _ in range(n):
        low = rng.uniform(0, 255, (h // 32 + 1, w // 32 + 1, 3)).astype(np.uint8)
        base = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.float32)
        img = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=95)
        out.append(buf.getvalue())
    return out


def make_photo_jpegs(n: int, short_side: int = 512) -> list[bytes]:
    """``n`` JPEGs cycled from the real photos the demo exports (package sample photos: astronaut, coffee,
    chelsea, china, flower, grace_hopper, ...), each resized to ``short_side`` on its short side, aspect
    kept, and saved at quality 95, as img2dataset's papers' settings write them.

    Raises:
        DataError: no photo source installed (``pip install 'pgseg[demo]'``).
    """
    import tempfile

    from pgseg_core.data.sources.demo.photos import export_demo_photos

    with tempfile.TemporaryDirectory() as tmp:
        photos = []
        for path in export_demo_photos(tmp):
            with Image.open(path) as im:
                img = im.convert("RGB")
            scale = short_side / min(img.size)
            img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), Image.BICUBIC)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=95)
            photos.append(buf.getvalue())
    return [photos[i % len(photos)] for i in range(n)]


def build_decoders(crop: int) -> dict:
    """Report name -> decoder: ``pil`` (data.decode cpu, the reference), ``draft`` (PIL with DCT scaling),
    ``turbo`` (libjpeg-turbo via simplejpeg: what data.decode auto uses when simplejpeg is installed)."""
    from pgseg_core.data.decode import DraftDecoder, TurboDecoder

    scale = [0.08, 1.0]
    out = {"pil": train_sample_decoder(DataConfig(img_size=crop, crop_scale=scale, decode="cpu"), crop)}
    out["draft"] = DraftDecoder(crop, scale, True)
    try:
        import simplejpeg  # noqa: F401
    except ImportError:
        return out
    out["turbo"] = TurboDecoder(crop, scale, True)
    return out


def time_decoder(fn, jpegs: list[bytes]) -> float:
    t = time.perf_counter()
    for data in jpegs:
        fn(data)
    return time.perf_counter() - t


def run(args) -> dict:
    torch.set_num_threads(1)
    if args.source == "photos":
        jpegs = make_photo_jpegs(args.images, min(args.width, args.height))
    else:
        jpegs = make_jpegs(args.images, (args.width, args.height))
    decoders = build_decoders(args.crop)
    for fn in decoders.values():  # warm-up
        time_decoder(fn, jpegs[:2])
    seconds: dict[str, list[float]] = {name: [] for name in decoders}
    names = list(decoders)
    for r in range(args.repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            torch.manual_seed(r)
            seconds[name].append(time_decoder(decoders[name], jpegs))
    per_core = {name: [len(jpegs) / s for s in secs] for name, secs in seconds.items()}
    summary = {
        name: {"median": statistics.median(v), "min": min(v), "max": max(v)} for name, v in per_core.items()
    }
    ratio = {name: summary[name]["median"] / summary["pil"]["median"] for name in summary}
    result = {"images_per_s_per_core": summary, "ratio_to_pil": ratio, "raw_seconds": seconds}
    if torch.cuda.is_available():
        result["gpu"] = time_gpu_path(jpegs, args)
    return result


def time_gpu_path(jpegs: list[bytes], args) -> dict:
    """``data.decode gpu``: worker-side header + crop draw per core, and the batched GPU decode images/s."""
    from pgseg_core.data.gpu_decode import GpuBatchDecoder, GpuSamplePrep

    prep, dec = GpuSamplePrep(args.crop, (0.08, 1.0), True), GpuBatchDecoder(args.crop, "cuda")
    t = time.perf_counter()
    entries = [prep(d) for d in jpegs]
    prep_s = time.perf_counter() - t
    dec.decode(entries[:4])  # warm-up (nvJPEG handles, kernels)
    runs = []
    for _ in range(args.repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for i in range(0, len(entries), args.gpu_batch):
            dec.decode(entries[i : i + args.gpu_batch])
        torch.cuda.synchronize()
        runs.append(len(entries) / (time.perf_counter() - t))
    return {
        "worker_prep_images_per_s_per_core": len(jpegs) / prep_s,
        "gpu_decode_images_per_s": {"median": statistics.median(runs), "min": min(runs), "max": max(runs)},
        "batch": args.gpu_batch,
    }


def environment(argv: list[str]) -> dict:
    import PIL
    import torchvision
    from PIL import features

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_avg_1_5_15": load,
        "uptime": _uptime(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "libjpeg_turbo": bool(features.check_feature("libjpeg_turbo")),
        "simplejpeg": _version("simplejpeg"),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "command": " ".join([Path(sys.executable).name, *argv]),
    }


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _uptime() -> str:
    try:
        import subprocess

        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, ValueError):
        return ""


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--width", type=int, default=683)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument(
        "--source", choices=["synthetic", "photos"], default="synthetic",
        help="synthetic: smooth colour fields + noise (entropy-heavy, the worst case); photos: the demo's "
        "real photos resized to the short side (min of --width, --height)",
    )  # fmt: skip
    p.add_argument("--gpu-batch", type=int, default=256, help="batch size of the GPU path (CUDA only)")
    p.add_argument(
        "--quick", action="store_true", help="8 images, 2 repeats (a smoke test, not a measurement)"
    )
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_loader_cpu_run1.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.repeats = 8, 2
    result = {"benchmark": "bench_loader", "settings": vars(args) | {"out": str(args.out)}}
    result["environment"] = environment(["benchmarks/bench_loader.py", *(argv or sys.argv[1:])])
    result.update(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for name, s in result["images_per_s_per_core"].items():
        print(f"{name:>6}: {s['median']:7.1f} images/s/core (min {s['min']:.1f}, max {s['max']:.1f}), "
              f"{result['ratio_to_pil'][name]:.2f}x pil")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
