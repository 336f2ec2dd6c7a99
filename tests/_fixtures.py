"""Shared test helpers: a fake demo source tree (no Debian packages needed), captioned shards, gradient
comparisons up to float rounding."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from pgseg_core.data.sources.demo import DemoRoots


def _sprite(path: Path, colour, size=(90, 70), shape="ellipse"):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    box = (5, 5, size[0] - 6, size[1] - 6)
    if shape == "ellipse":
        draw.ellipse(box, fill=(*colour, 255))
    elif shape == "polygon":
        draw.polygon([(size[0] // 2, 3), (size[0] - 4, size[1] - 4), (4, size[1] - 4)], fill=(*colour, 255))
    else:  # opaque rectangle: not a cut-out, must be rejected
        img = Image.new("RGBA", size, (*colour, 255))
    img.save(path)


def make_fake_roots(root: Path) -> DemoRoots:
    """Tux Paint / OpenClipart look-alike trees whose paths match the real vocabulary globs."""
    tux, oca, bgs = root / "tux", root / "oca", root / "bg"
    _sprite(tux / "animals/mammals/dogs/dog.png", (150, 100, 50))
    (tux / "animals/mammals/dogs/dog.txt").write_text("A dog.\nfr.utf8=Un chien.\n")
    _sprite(tux / "food/fruit/apple_red.png", (220, 20, 20))
    _sprite(tux / "food/fruit/banana.png", (240, 220, 30), shape="polygon")
    _sprite(tux / "animals/mammals/elephant.png", (120, 120, 130), size=(120, 100))
    _sprite(tux / "animals/birds/penguin.png", (20, 20, 20), shape="polygon")
    _sprite(tux / "symbols/math/1.png", (0, 0, 0))  # matches no class
    _sprite(oca / "animals/mammals/housecats/gatto_a.png", (200, 200, 200))
    _sprite(oca / "food/fruit/lemon_whole.png", (250, 250, 0))
    _sprite(oca / "animals/bugs/butterfly_b.png", (200, 50, 200), shape="polygon")
    _sprite(oca / "food/fruit/orange.png", (255, 128, 0), shape="rect")  # rejected: opaque rectangle
    _sprite(oca / "food/fruit/lemon_bw.png", (90, 90, 90))  # excluded by the *_bw glob
    (oca / "food/fruit/pear.png").write_bytes(b"\x89PNG broken")  # unreadable, counted
    bgs.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (120, 150, 3), dtype=np.uint8)).save(bgs / "noise.jpg")
    grad = np.tile(np.linspace(0, 255, 160, dtype=np.uint8)[None, :, None], (100, 1, 3))
    Image.fromarray(grad).save(bgs / "gradient.png")
    return DemoRoots(
        tuxpaint=tux,
        openclipart=oca,
        emoji_font=None,
        package_photos=False,
        opencv_doc=None,
        wallpapers=None,
        backgrounds=[bgs],
    )


def read_tar_samples(tar_path: Path) -> dict[str, dict[str, bytes]]:
    """All samples of a webdataset tar as {key: {extension: bytes}}."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar_path) as tf:
        for m in tf.getmembers():
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return out


def varied_model(cfg, seed: int = 3):
    """pgseg-tiny with random weights drawn wide (std 0.3) and logit_scale 100, so that groups, and therefore
    labels, differ within an image (the default init gives one class everywhere)."""
    import math

    import torch

    from pgseg_core.models.factory import create_model

    torch.manual_seed(seed)
    model = create_model(cfg.model).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
        model.logit_scale.fill_(math.log(100.0))
    return model


def write_captioned_shard(d: Path, n: int) -> Path:
    """``n`` captioned 64-px random JPEGs in one pgseg training shard ``d/train-000000.tar`` with its
    ``index.json`` (schema 1); returns ``d``."""
    import io
    import json

    import webdataset as wds

    with wds.TarWriter(str(d / "train-000000.tar")) as sink:
        for i in range(n):
            arr = np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="JPEG", quality=90)
            sink.write({"__key__": f"s{i:06d}", "jpg": buf.getvalue(), "txt": f"a red thing number {i}"})
    index = {
        "schema": 1, "kind": "pgseg-shards", "created_by": "pgseg tests", "seed": 0,
        "splits": {"train": {"shards": ["train-000000.tar"], "count": n}},
        "vocabulary": {"caption": [], "heldout": []}, "sources": [], "skipped": {},
    }  # fmt: skip
    (d / "index.json").write_text(json.dumps(index))
    return d


def load_benchmark(name: str):
    """The module ``benchmarks/<name>.py`` (benchmarks are scripts, not a package), imported for a test."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exact_zero_grads(model, loss_fn) -> dict:
    """Per parameter of ``model``, the bool mask of the elements whose gradient is 0 in exact arithmetic: at
    most 1e-9 of the largest gradient in a float64 copy (``loss_fn(model64)`` returns the loss; it must cast
    its inputs to float64). Parameters without such elements are left out.

    Those elements (biases followed by a BatchNorm or a softmax over the groups, e.g. the grouping blocks'
    ``mlp_inter.fc2.bias``; the key part of an attention's ``in_proj_bias``) get float32 gradients of pure
    rounding noise, which two equivalent computations do not share: comparisons treat them apart."""
    import copy

    twin = copy.deepcopy(model).double()
    twin.zero_grad(set_to_none=True)
    loss_fn(twin).backward()
    grads = {n: p.grad.abs() for n, p in twin.named_parameters() if p.grad is not None}
    top = max(g.max().item() for g in grads.values())
    masks = {n: g <= 1e-9 * top for n, g in grads.items()}
    return {n: m for n, m in masks.items() if bool(m.any())}


def assert_grads_close(ga: dict, gb: dict, zero: dict, rel: float = 1e-4, floor: float = 1e-6) -> None:
    """Gradients (or any tensors by name) equal up to float rounding: each within ``rel`` of its own scale
    plus ``floor`` of the largest; the elements masked in ``zero`` (exact gradient 0, see
    :func:`exact_zero_grads`) only within 1e-4 of the largest, the size of their rounding noise."""
    assert ga.keys() == gb.keys()
    top = max(g.abs().max().item() for g in ga.values())
    for k in ga:
        err = (ga[k] - gb[k]).abs()
        mask = zero.get(k, torch.zeros_like(err, dtype=torch.bool))
        if mask.any():
            assert err[mask].max().item() <= 1e-4 * top, (k, "exact-zero elements", err[mask].max().item())
        if (~mask).any():
            bound = rel * ga[k][~mask].abs().max().item() + floor * top
            assert err[~mask].max().item() <= bound, (k, err[~mask].max().item(), bound)
