"""Golden outputs: the files every command writes from a fixed tiny checkpoint stay the same.

``tests/golden/outputs.json`` records each file that ``segment`` (all formats, with and without ``--cache``,
the torch and the ONNX backend), ``eval`` (demo shards, plain and with a sweep) and ``visualize-prototypes``
write for a pgseg-tiny checkpoint with fixed random weights:

- label maps, overlays, HTML and other files: the sha256 of the bytes (text after the run's temporary root is
  replaced by ``<ROOT>``), so one changed pixel or character fails;
- JSON: the parsed object with timings dropped; strings, integers and keys must match exactly and floats
  within ``FLOAT_RTOL`` / ``FLOAT_ATOL``. The last digits of float scores depend on the CPU's matmul kernels
  (the same commit gives different last bits on two x86 machines), so an exact hash of them is not portable;
- the prototype panels of ``visualize-prototypes`` (continuous heat maps): the image size and 32 x 32 block
  means, each within ``PANEL_ATOL`` of 255.

The PNG figures eval draws beside its metrics (pgseg_core.eval.figures) are left out: their bytes depend on
the matplotlib / FreeType version (tests/test_plots.py checks that two renders are identical).

Regenerate (only for an intended behaviour change, and say so in the commit) with
``PGSEG_WRITE_GOLDEN=1 python -m pytest tests/test_golden_outputs.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from _fixtures import make_fake_roots, varied_model
from pgseg_cli.app import app
from pgseg_core.config import apply_overrides, load_config
from pgseg_core.checkpoint import save_checkpoint
from pgseg_core.data.sources.demo import build_demo_shards
from pgseg_core.eval.figures import FIGURE_SUFFIXES

MANIFEST = Path(__file__).parent / "golden" / "outputs.json"
# the checkpoint file itself is written under a random temporary name, which torch.save records in the
# archive, so its sha256 differs between runs (the weights do not)
VOLATILE_KEYS = {"seconds", "images_per_s", "written_to", "sha256", "sha256_16"}
runner = CliRunner()


def _run(*args) -> None:
    result = runner.invoke(app, ["-q", *[str(a) for a in args]], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def _strip(obj, root: str):
    if isinstance(obj, dict):
        return {k: _strip(v, root) for k, v in obj.items() if k not in VOLATILE_KEYS}
    if isinstance(obj, list):
        return [_strip(v, root) for v in obj]
    if isinstance(obj, str):
        return obj.replace(root, "<ROOT>")
    return obj


FLOAT_RTOL, FLOAT_ATOL = 1e-4, 1e-6
PANEL_ATOL = 2.0  # on 0..255 block means
BLOCK = 32


def _record(path: Path, root: str):
    """What the manifest keeps of one output file (see the module docstring)."""
    data = path.read_bytes()
    if path.suffix == ".json":
        return {"json": _strip(json.loads(data), root)}
    if path.name.endswith("_panel.png"):
        img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
        h, w = (img.shape[0] // BLOCK) * BLOCK, (img.shape[1] // BLOCK) * BLOCK
        blocks = img[:h, :w].reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK, 3).mean(axis=(1, 3))
        return {"size": list(img.shape), "blocks": np.round(blocks, 1).tolist()}
    if path.suffix in (".html", ".txt", ".jsonl"):
        data = data.decode("utf-8").replace(root, "<ROOT>").encode()
    return hashlib.sha256(data).hexdigest()


def _same_json(got, want) -> bool:
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and got.keys() == want.keys()
            and all(_same_json(got[k], want[k]) for k in want)
        )
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(_same_json, got, want))
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        return bool(np.isclose(got, want, rtol=FLOAT_RTOL, atol=FLOAT_ATOL))
    return type(got) is type(want) and got == want


def _matches(got, want) -> bool:
    if isinstance(want, str) or isinstance(got, str):
        return got == want
    if "json" in want:
        return "json" in got and _same_json(got["json"], want["json"])
    if got.get("size") != want["size"]:
        return False
    return bool(np.abs(np.asarray(got["blocks"]) - np.asarray(want["blocks"])).max() <= PANEL_ATOL)


def _make_inputs(root: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    photos = root / "photos"
    photos.mkdir()
    Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(photos / "a.jpg")
    grad = np.tile(np.linspace(0, 255, 80, dtype=np.uint8)[None, :, None], (64, 1, 3))
    grad[:, :, 1] = 255 - grad[:, :, 1]
    Image.fromarray(grad).save(photos / "b.png")
    yy, xx = np.mgrid[0:100, 0:130]
    blobs = np.stack([(xx * 2) % 256, (yy * 3) % 256, ((xx + yy) * 5) % 256], -1).astype(np.uint8)
    Image.fromarray(blobs).save(photos / "c.png")
    cfg = load_config("pgseg-tiny")
    save_checkpoint(root / "tiny.pt", varied_model(cfg), cfg, 0)
    prob_cfg = apply_overrides(cfg, {"eval.rule": "prob"})
    save_checkpoint(root / "tiny_prob.pt", varied_model(prob_cfg), prob_cfg, 0)
    build_demo_shards(
        root / "shards",
        seed=1,
        n_train=2,
        n_val=4,
        img_size=64,
        roots=make_fake_roots(root / "src"),
        shard_size=8,
    )
    return {
        "photos": photos,
        "ck": root / "tiny.pt",
        "ck_prob": root / "tiny_prob.pt",
        "shards": root / "shards",
    }


def _produce(root: Path) -> dict:
    """Run every command; return {relative output path: record}."""
    x = _make_inputs(root)
    seg = (
        "segment",
        x["photos"],
        "--classes",
        "cat,dog,tree,car,sky,person",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--top-k",
        "3",
        "--format",
        "png,overlay,json,coco-rle",
        "--no-text-cache",
    )
    _run(*seg, "-c", x["ck"], "-o", root / "out/seg", "--batch-size", "2")
    _run(*seg, "-c", x["ck"], "-o", root / "out/seg_bs1", "--batch-size", "1", "--bg-thresh", "0.6")
    _run(*seg, "-c", x["ck"], "-o", root / "out/seg_cache", "--cache", root / "feat.h5")
    _run(
        *seg, "-c", x["ck"], "-o", root / "out/seg_cache2", "--cache", root / "feat.h5"
    )  # read from the cache
    _run(*seg, "-c", x["ck_prob"], "-o", root / "out/seg_prob_cache", "--cache", root / "feat_prob.h5")
    _run("export-onnx", "-c", x["ck"], "-o", root / "enc.onnx", "--size", "64")
    _run(
        *seg,
        "-c",
        x["ck"],
        "-o",
        root / "out/seg_onnx",
        "--backend",
        "onnx",
        "--onnx",
        root / "enc.onnx",
        "--format",
        "png,json",
    )
    _run(
        "eval",
        "-c",
        x["ck"],
        "--data",
        x["shards"],
        "--device",
        "cpu",
        "--output",
        root / "out/eval/metrics.json",
    )
    _run(
        "eval",
        "-c",
        x["ck"],
        "--data",
        x["shards"],
        "--device",
        "cpu",
        "--sweep",
        "bg_thresh=0.1:0.9:0.2",
        "--cache",
        root / "eval.h5",
        "--output",
        root / "out/eval/metrics_sweep.json",
    )
    _run(
        "eval",
        "-c",
        x["ck_prob"],
        "--data",
        x["shards"],
        "--device",
        "cpu",
        "--output",
        root / "out/eval/metrics_prob.json",
    )
    _run(
        "visualize-prototypes",
        x["photos"],
        "-c",
        x["ck"],
        "--out",
        root / "out/viz",
        "--patches",
        "2",
        "--device",
        "cpu",
        "--short-side",
        "48",
    )
    out = root / "out"
    return {
        p.relative_to(out).as_posix(): _record(p, str(root))
        for p in sorted(out.rglob("*"))
        if p.is_file() and ".pgseg_cache" not in p.parts and not p.name.endswith(FIGURE_SUFFIXES)
    }  # eval's PNG figures: matplotlib's text rendering varies by version (tests/test_plots.py checks them)


def test_outputs_match_the_recorded_goldens(tmp_path, single_thread):
    got = _produce(tmp_path)
    if os.environ.get("PGSEG_WRITE_GOLDEN") == "1":
        MANIFEST.parent.mkdir(exist_ok=True)
        MANIFEST.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"wrote {len(got)} golden records to {MANIFEST}")
    want = json.loads(MANIFEST.read_text())
    assert sorted(got) == sorted(want), "the set of output files changed"
    changed = [name for name in want if not _matches(got[name], want[name])]
    assert not changed, f"outputs differ from the goldens: {changed}"
