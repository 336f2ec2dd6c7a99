"""``pgseg segment`` and ``pgseg export-onnx`` end to end on the pgseg-tiny preset with random weights.

Covers every input form (file, directory, --recursive, glob, stdin), every output format (the COCO RLE
decodes back to the label map), --jsonl on stdout, --skip-existing (no inference on the rerun), the text
embedding cache, every bad input with its message and exit code, and torch/onnxruntime mask parity.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import pgseg_core.inference.batch as batch_mod
from pgseg_cli.app import app
from pgseg_core.checkpoint import save_checkpoint
from pgseg_core.config import load_config
from pgseg_core.models.pgseg import PGSeg
from _fixtures import varied_model
from test_image_loading import write_tiff

runner = CliRunner()
CLASSES = "cat,dog,tree,car,sky,person"


def run(*args, input: str | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input, catch_exceptions=False)


def seg(ckpt: Path, out: Path, *inputs, extra: tuple = (), input: str | None = None):
    return run(
        "segment",
        *inputs,
        "-c",
        ckpt,
        "-o",
        out,
        "--classes",
        CLASSES,
        "--device",
        "cpu",
        "--workers",
        "0",
        "--bg-thresh",
        "0",
        "--top-k",
        "0",
        *extra,
        input=input,
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory, single_thread):
    root = tmp_path_factory.mktemp("segcli")
    cfg = load_config("pgseg-tiny")
    save_checkpoint(root / "tiny.pt", varied_model(cfg), cfg, 0)
    rng = np.random.default_rng(0)
    photos = root / "photos"
    (photos / "trip" / "day2").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(photos / "a.jpg")
    grad = np.tile(np.linspace(0, 255, 80, dtype=np.uint8)[None, :, None], (64, 1, 3))
    grad[:, :, 1] = 255 - grad[:, :, 1]
    Image.fromarray(grad).save(photos / "trip" / "b.png")
    Image.fromarray(rng.integers(0, 255, (48, 40), dtype=np.uint8), mode="L").save(
        photos / "trip" / "day2" / "c.png"
    )
    return root


def files_under(out: Path) -> set[str]:
    return {
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and ".pgseg_cache" not in p.parts
    }


# ------------------------------------------------------------------------------------------------ input forms


def test_file_and_directory_inputs(env, tmp_path):
    result = seg(env / "tiny.pt", tmp_path / "o", env / "photos" / "a.jpg", env / "photos" / "trip")
    assert result.exit_code == 0, result.output
    assert files_under(tmp_path / "o") == {
        "a_label.png",
        "a_overlay.png",
        "a.json",
        "b_label.png",
        "b_overlay.png",
        "b.json",
    }


def test_recursive_directory_mirrors_sub_folders(env, tmp_path):
    result = seg(env / "tiny.pt", tmp_path / "o", env / "photos", extra=("--recursive", "--format", "png"))
    assert result.exit_code == 0, result.output
    assert files_under(tmp_path / "o") == {"a_label.png", "trip/b_label.png", "trip/day2/c_label.png"}
    assert Image.open(tmp_path / "o" / "trip/day2/c_label.png").size == (40, 48)


def test_quoted_glob_is_expanded(env, tmp_path):
    pattern = str(env / "photos" / "**" / "*.png")
    result = seg(env / "tiny.pt", tmp_path / "o", pattern, extra=("--format", "json"))
    assert result.exit_code == 0, result.output
    assert files_under(tmp_path / "o") == {"trip/b.json", "trip/day2/c.json"}


def test_stdin_pipeline_with_jsonl(env, tmp_path):
    paths = f"{env / 'photos' / 'a.jpg'}\n{env / 'photos' / 'trip' / 'b.png'}\n"
    result = seg(env / "tiny.pt", tmp_path / "o", "-", extra=("--jsonl", "--format", "png,json"), input=paths)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]  # only records on stdout
    assert [Path(r["image"]).name for r in records] == ["a.jpg", "b.png"]
    assert all(r["status"] == "ok" and Path(r["outputs"]["png"]).is_file() for r in records)
    assert records[0]["width"] == 90 and records[0]["height"] == 70
    assert "segmented 2 image(s)" in result.stderr and "segmented" not in result.stdout


# ------------------------------------------------------------------------------------------------ outputs


def test_every_output_format(env, tmp_path):
    from pycocotools import mask as mask_utils

    out = tmp_path / "o"
    result = seg(
        env / "tiny.pt", out, env / "photos" / "a.jpg", extra=("--format", "png,overlay,json,coco-rle")
    )
    assert result.exit_code == 0, result.output
    label = np.asarray(Image.open(out / "a_label.png"))
    assert Image.open(out / "a_label.png").mode == "P" and label.shape == (70, 90)
    overlay = Image.open(out / "a_overlay.png")
    assert overlay.mode == "RGB" and overlay.size[0] == 90 and overlay.size[1] > 70
    record = json.loads((out / "a.json").read_text())
    names = CLASSES.split(",")
    assert record["classes"], "bg_thresh 0 must label every pixel with a class"
    for c in record["classes"]:
        assert c["name"] == names[c["index"] - 1] and c["pixels"] == int((label == c["index"]).sum())
    rle = json.loads((out / "a_rle.json").read_text())
    assert sorted(a["category_id"] for a in rle["annotations"]) == sorted(
        int(v) for v in np.unique(label) if v
    )
    for ann in rle["annotations"]:
        seg_rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
        np.testing.assert_array_equal(
            mask_utils.decode(seg_rle), (label == ann["category_id"]).astype(np.uint8)
        )


def test_skip_existing_does_no_inference(env, tmp_path, monkeypatch):
    calls = []
    real = batch_mod.extract_features
    monkeypatch.setattr(batch_mod, "extract_features", lambda m, x: calls.append(x.shape[0]) or real(m, x))
    out = tmp_path / "o"
    first = seg(env / "tiny.pt", out, env / "photos", extra=("--recursive",))
    assert first.exit_code == 0 and calls
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    calls.clear()
    second = seg(env / "tiny.pt", out, env / "photos", extra=("--recursive", "--skip-existing"))
    assert second.exit_code == 0, second.output
    assert calls == [] and "skipped 3 existing" in second.output
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    (out / "trip" / "b.json").unlink()  # one output missing: only that image runs again
    third = seg(env / "tiny.pt", out, env / "photos", extra=("--recursive", "--skip-existing"))
    assert third.exit_code == 0 and calls == [1] and "segmented 1 image(s)" in third.output
    assert (out / "trip" / "b.json").is_file()


def test_text_embedding_cache_hit(env, tmp_path, monkeypatch):
    calls = []
    real = PGSeg.class_embeddings
    monkeypatch.setattr(
        PGSeg, "class_embeddings", lambda self, n, t, **k: calls.append(n) or real(self, n, t, **k)
    )
    out = tmp_path / "o"
    image = env / "photos" / "a.jpg"
    assert "text cache miss" in seg(env / "tiny.pt", out, image).output and len(calls) == 1
    assert "text cache hit" in seg(env / "tiny.pt", out, image).output and len(calls) == 1
    assert list((out / ".pgseg_cache").glob("text-*.safetensors"))
    other = seg(
        env / "tiny.pt", out, image, extra=("--template", "a photo of the {}.", "--template", "a {}.")
    )
    assert other.exit_code == 0 and "text cache miss" in other.output and len(calls) == 2
    off = seg(env / "tiny.pt", out, image, extra=("--no-text-cache",))
    assert "text cache off" in off.output and len(calls) == 3


def test_worker_processes_and_batches_give_the_same_masks(env, tmp_path):
    a = seg(
        env / "tiny.pt", tmp_path / "a", env / "photos", extra=("-r", "--format", "png", "--batch-size", "1")
    )
    b = run(
        "segment",
        env / "photos",
        "-r",
        "-c",
        env / "tiny.pt",
        "-o",
        tmp_path / "b",
        "--classes",
        CLASSES,
        "--device",
        "cpu",
        "--workers",
        "1",
        "--batch-size",
        "3",
        "--bg-thresh",
        "0",
        "--top-k",
        "0",
        "--format",
        "png",
    )
    assert a.exit_code == 0 and b.exit_code == 0, b.output
    for rel in ("a_label.png", "trip/b_label.png", "trip/day2/c_label.png"):
        np.testing.assert_array_equal(
            np.asarray(Image.open(tmp_path / "a" / rel)), np.asarray(Image.open(tmp_path / "b" / rel))
        )


def test_synonyms_and_background_words_from_a_class_file(env, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("# my classes\nbackground: sky, wall\ncat, kitty\ndog\n")
    result = run(
        "segment",
        env / "photos" / "a.jpg",
        "-c",
        env / "tiny.pt",
        "-o",
        tmp_path / "o",
        "--classes-file",
        classes,
        "--device",
        "cpu",
        "--workers",
        "0",
        "--jsonl",
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[0])
    assert {c["name"] for c in record["classes"]} <= {"cat", "dog"}


# ------------------------------------------------------------------------------------------------ bad inputs


def _bad_files(root: Path, monkeypatch) -> dict[str, tuple[Path, str]]:
    from PIL import Image as PILImage

    root.mkdir()
    (root / "text.jpg").write_text("this is not an image")
    rng = np.random.default_rng(1)
    PILImage.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "full.png")
    data = (root / "full.png").read_bytes()
    (root / "cut.png").write_bytes(data[: len(data) // 2])
    (root / "full.png").unlink()
    write_tiff(root / "float.tif", 8, 8, 3, 32, 3)
    PILImage.new("RGB", (120, 100)).save(root / "huge.png")
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 10_000)  # 12,000 px: PIL would only warn
    return {
        "not an image": (root / "text.jpg", "not a readable image"),
        "truncated": (root / "cut.png", "truncated"),
        "unsupported mode": (root / "float.tif", "unsupported image mode"),
        "decompression bomb": (root / "huge.png", "decompression-bomb limit"),
        "missing": (root / "gone.jpg", "not found"),
    }


def test_each_bad_input_is_reported_and_skipped(env, tmp_path, monkeypatch):
    bad = _bad_files(tmp_path / "bad", monkeypatch)
    good = env / "photos" / "a.jpg"
    out = tmp_path / "o"
    for kind, (path, needle) in bad.items():
        result = seg(env / "tiny.pt", out, path, good, extra=("--jsonl", "--format", "png"))
        assert result.exit_code == 1, (kind, result.output)
        assert "Traceback" not in result.output
        failed = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
        assert len(failed) == 1 and path.name in failed[0] and needle in failed[0], (kind, result.stderr)
        assert "segmented 1 image(s)" in result.stderr and "failed 1" in result.stderr
        records = [json.loads(ln) for ln in result.stdout.splitlines()]
        assert sorted(r["status"] for r in records) == ["failed", "ok"], kind
        assert (out / "a_label.png").is_file()


def test_only_bad_inputs_exit_nonzero(env, tmp_path, monkeypatch):
    bad = _bad_files(tmp_path / "bad", monkeypatch)
    result = seg(env / "tiny.pt", tmp_path / "o", *[p for p, _ in bad.values()])
    assert result.exit_code == 1
    assert "segmented 0 image(s)" in result.output and "failed 5" in result.output


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len([ln for ln in lines if ln.startswith("error:")]) == 1, lines
    for needle in needles:
        assert needle.lower() in " ".join(lines).lower(), (needle, lines)


def test_a_bad_template_is_a_one_line_error(env, tmp_path):
    result = seg(env / "tiny.pt", tmp_path / "o", env / "photos" / "a.jpg", extra=("--template", "a photo"))
    assert_one_line_error(result, "template", "{}")


@pytest.mark.parametrize(
    "extra, needles",
    [
        (("--format", "png,svg"), ("'--format'", "unknown output format svg")),
        (("--bg-thresh", "1.5"), ("'--bg-thresh'", "less than or equal to 1")),
        (("--backend", "onnx"), ("'--onnx'", "--backend onnx needs --onnx")),
        (("--backend", "tensorrt"), ("'--backend'", "unknown backend")),
        (("--batch-size", "0"), ("'--batch-size'",)),
        (("--top-k", "-3"), ("'--top-k'",)),
        (("--export-onnx", "a.onnx", "--onnx", "b.onnx"), ("'--export-onnx'", "not both")),
        (("--export-onnx", "a.onnx", "--cache", "f.h5"), ("'--cache'", "torch backend only")),
    ],
)
def test_bad_options_are_usage_errors_naming_the_flag(env, tmp_path, extra, needles):
    result = seg(env / "tiny.pt", tmp_path / "o", env / "photos" / "a.jpg", extra=extra)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], (needle, errors)
    assert not (tmp_path / "o").exists()  # nothing ran


def test_bad_class_and_template_files(env, tmp_path):
    base = (
        "segment",
        env / "photos" / "a.jpg",
        "-c",
        env / "tiny.pt",
        "-o",
        tmp_path / "o",
        "--device",
        "cpu",
    )
    (tmp_path / "classes.json").write_text('["cat"]')
    assert_one_line_error(
        run(*base, "--classes-file", tmp_path / "classes.json"), "class-file format", ".json"
    )
    assert_one_line_error(run(*base, "--classes", "cat,,dog"), "empty class name")
    usage = run(*base)
    assert usage.exit_code == 2 and "name at least one class" in usage.output
    (tmp_path / "t.txt").write_text("# nothing\n")
    assert_one_line_error(
        run(*base, "--classes", "cat", "--templates-file", tmp_path / "t.txt"), "no template"
    )
    assert_one_line_error(
        run(*base, "--classes", "cat", "--templates-file", tmp_path / "nope.txt"), "templates file not found"
    )


# ------------------------------------------------------------------------------------------------ ONNX


def test_onnx_backend_gives_the_same_masks_as_torch(env, tmp_path):
    pytest.importorskip("onnxruntime")
    model = tmp_path / "tiny.onnx"
    result = run("export-onnx", "-c", env / "tiny.pt", "-o", model, "--size", "64")
    assert result.exit_code == 0, result.output
    sidecar = json.loads(model.with_suffix(".json").read_text())
    assert (
        sidecar["outputs"] == ["group_emb", "image_emb", "assign_0", "assign_1"]
        and sidecar["logit_scale"] > 0
    )
    t = seg(env / "tiny.pt", tmp_path / "t", env / "photos", extra=("-r", "--format", "png,json"))
    o = seg(
        env / "tiny.pt",
        tmp_path / "x",
        env / "photos",
        extra=("-r", "--format", "png,json", "--backend", "onnx", "--onnx", model, "--batch-size", "2"),
    )
    assert t.exit_code == 0 and o.exit_code == 0, o.output
    assert "onnx on cpu" in o.output
    labels_seen = set()
    for rel in ("a", "trip/b", "trip/day2/c"):
        lt = np.asarray(Image.open(tmp_path / "t" / f"{rel}_label.png"))
        lo = np.asarray(Image.open(tmp_path / "x" / f"{rel}_label.png"))
        np.testing.assert_array_equal(lt, lo)
        labels_seen |= set(np.unique(lt).tolist())
        st = json.loads((tmp_path / "t" / f"{rel}.json").read_text())["classes"]
        so = json.loads((tmp_path / "x" / f"{rel}.json").read_text())["classes"]
        assert [c["pixels"] for c in st] == [c["pixels"] for c in so]
        np.testing.assert_allclose([c["score"] for c in st], [c["score"] for c in so], atol=1e-4)
    assert len(labels_seen) >= 2, "parity on a constant label map would prove little"
    # segment --export-onnx: export, then segment with it
    y = seg(
        env / "tiny.pt",
        tmp_path / "y",
        env / "photos" / "a.jpg",
        extra=("--export-onnx", tmp_path / "m.onnx"),
    )
    assert y.exit_code == 0 and "onnx on cpu" in y.output and (tmp_path / "m.json").is_file()
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "y" / "a_label.png")),
        np.asarray(Image.open(tmp_path / "t" / "a_label.png")),
    )


def test_onnx_from_another_checkpoint_is_refused(env, tmp_path):
    pytest.importorskip("onnxruntime")
    model = tmp_path / "tiny.onnx"
    assert run("export-onnx", "-c", env / "tiny.pt", "-o", model, "--size", "64").exit_code == 0
    cfg = load_config("pgseg-tiny")
    save_checkpoint(tmp_path / "other.pt", varied_model(cfg, seed=99), cfg, 0)
    result = seg(
        tmp_path / "other.pt",
        tmp_path / "o",
        env / "photos" / "a.jpg",
        extra=("--backend", "onnx", "--onnx", model),
    )
    assert_one_line_error(result, "exported from another checkpoint")
    assert_one_line_error(
        seg(
            env / "tiny.pt",
            tmp_path / "o",
            env / "photos" / "a.jpg",
            extra=("--backend", "onnx", "--onnx", tmp_path / "none.onnx"),
        ),
        "ONNX model not found",
    )
    usage = run("export-onnx", "-c", env / "tiny.pt", "-o", tmp_path / "m.onnx", "--size", "50")
    assert usage.exit_code == 2 and "'--size': must be a multiple of 16 pixels, got 50" in usage.output
    usage = run("export-onnx", "-c", env / "tiny.pt", "-o", tmp_path / "m.onx")
    assert usage.exit_code == 2 and "'--out': must name a .onnx file" in usage.output


# ---------------------------------------------------------------------------------------------- feature cache


def test_feature_cache_reuse_skips_the_image_encoder(env, tmp_path, monkeypatch):
    """segment --cache: the second run, with other classes, reads every image's features from the HDF5 cache
    (the eval --cache schema) and never calls the image encoder; its masks equal an uncached run's."""
    import h5py

    import pgseg_core.inference as inference_mod

    calls = []
    real = PGSeg.encode_image
    monkeypatch.setattr(PGSeg, "encode_image", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    cache = tmp_path / "features.h5"
    first = seg(
        env / "tiny.pt", tmp_path / "o1", env / "photos", extra=("--recursive", "--cache", str(cache))
    )
    assert first.exit_code == 0, first.output
    assert calls and "0 image(s) read, 3 encoded" in first.output
    with h5py.File(cache, "r") as f:
        assert f.attrs["dataset"] == "segment" and len(f["images"].keys()) == 3
    calls.clear()
    other = ("--recursive", "--cache", str(cache), "--classes", "tree,sky", "--top-k", "1")
    second = seg(env / "tiny.pt", tmp_path / "o2", env / "photos", extra=other)
    assert second.exit_code == 0, second.output
    assert calls == [] and "3 image(s) read, 0 encoded" in second.output
    # identical to running the same settings without a cache
    third = seg(env / "tiny.pt", tmp_path / "o3", env / "photos", extra=other[:1] + other[3:])
    assert third.exit_code == 0 and calls
    for rel in ("a_label.png", "trip/b_label.png", "trip/day2/c_label.png"):
        assert np.array_equal(
            np.asarray(Image.open(tmp_path / "o2" / rel)), np.asarray(Image.open(tmp_path / "o3" / rel))
        ), rel
    assert inference_mod.extract_image_features  # the cache path is the documented two-half API


def test_feature_cache_of_another_checkpoint_is_refused(env, tmp_path):
    cache = tmp_path / "features.h5"
    assert (
        seg(
            env / "tiny.pt", tmp_path / "o1", env / "photos" / "a.jpg", extra=("--cache", str(cache))
        ).exit_code
        == 0
    )
    cfg = load_config("pgseg-tiny")
    save_checkpoint(tmp_path / "other.pt", varied_model(cfg, seed=9), cfg, 0)
    res = seg(tmp_path / "other.pt", tmp_path / "o2", env / "photos" / "a.jpg", extra=("--cache", str(cache)))
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert len([ln for ln in res.output.splitlines() if ln.startswith("error:")]) == 1
    onnx = seg(
        env / "tiny.pt",
        tmp_path / "o3",
        env / "photos" / "a.jpg",
        extra=("--cache", str(cache), "--backend", "onnx", "--onnx", str(tmp_path / "m.onnx")),
    )
    assert onnx.exit_code != 0 and "torch backend only" in onnx.output


@pytest.mark.parametrize("rule", ["groupvit", "prob"])
def test_feature_cache_gives_the_same_masks_under_either_rule(env, tmp_path, rule):
    """``segment`` with and without ``--cache`` follows the checkpoint's ``eval.rule`` alike: the label PNGs
    are byte-identical (the batched path and the cache path share the rule selection and the accumulator)."""
    from pgseg_core.config import apply_overrides

    cfg = apply_overrides(load_config("pgseg-tiny"), {"eval.rule": rule})
    ckpt = tmp_path / f"tiny_{rule}.pt"
    save_checkpoint(ckpt, varied_model(cfg), cfg, 0)
    common = (
        "segment",
        env / "photos",
        "-r",
        "-c",
        ckpt,
        "--classes",
        CLASSES,
        "--device",
        "cpu",
        "--workers",
        "0",
        "--bg-thresh",
        "0.5",
        "--top-k",
        "2",
        "--format",
        "png",
        "--no-text-cache",
    )
    plain = run(*common, "-o", tmp_path / "plain", "--batch-size", "2")
    cached = run(*common, "-o", tmp_path / "cached", "--cache", tmp_path / "features.h5")
    assert plain.exit_code == 0, plain.output
    assert cached.exit_code == 0, cached.output
    for rel in ("a_label.png", "trip/b_label.png", "trip/day2/c_label.png"):
        assert (tmp_path / "plain" / rel).read_bytes() == (tmp_path / "cached" / rel).read_bytes(), rel
