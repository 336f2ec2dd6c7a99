"""MVP-SEG end to end through the CLI on tiny data: train a few steps (dense cache), evaluate (mIoU(S),
mIoU(U), hIoU), segment, export the dense tower; the training-free baseline through eval and segment."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from _fixtures import make_fake_roots
from _mvp_fixtures import tiny_open_clip
from pgseg_cli.app import app
from pgseg_core.data.sources.demo import build_demo_shards

runner = CliRunner()
SMALL = ["--mvp.short_side", "64", "--mvp.max_long", "64"]


def run(*args):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvp")
    build_demo_shards(
        root / "shards", seed=1, n_train=2, n_val=3, img_size=64, roots=make_fake_roots(root / "src")
    )
    return root, tiny_open_clip(root / "clip")


def test_train_eval_segment_export(setup):
    root, ref = setup
    run_dir = root / "run"
    run("train", "--method", "mvp-seg", "--backbone", ref, "--data", root / "shards", "--out", run_dir,
        "--mvp.steps", "3", "--mvp.batch_size", "2", *SMALL)  # fmt: skip
    ck = torch.load(run_dir / "mvp.pt", weights_only=True)
    assert ck["format"] == "pgseg-mvp-checkpoint" and ck["backbone"] == ref
    assert (
        set(ck["state"]) == {"prompts.ctx", "log_tau1", "log_tau2"}
        and ck["state"]["prompts.ctx"].shape[0] == 4
    )
    assert ck["seen_classes"][0] == "background" and "elephant" not in ck["seen_classes"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all("loss_oc" in r for r in rows)
    assert (run_dir / "dense_cache.h5").is_file()

    metrics = root / "m.json"
    out = run(
        "eval", "-c", run_dir / "mvp.pt", "--data", root / "shards", "--output", metrics, "--no-per-class"
    ).output
    assert "hIoU" in out
    m = json.loads(metrics.read_text())
    assert set(m["splits"]) == {"val-caption", "val-heldout", "all"}
    assert m["splits"]["all"]["num_images"] == 6 and m["protocol"]["zero_shot_split"] == "demo-30-8"
    assert m["seen_mIoU"] is not None and m["unseen_mIoU"] is not None

    img = root / "img.png"
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)).save(img)
    seg = root / "seg"
    run("segment", img, "-c", run_dir / "mvp.pt", "--classes", "cat,dog", "-o", seg)
    label = np.asarray(Image.open(seg / "img_label.png"))
    assert label.shape == (40, 50) and label.max() <= 2
    assert json.loads((seg / "img.json").read_text())["width"] == 50

    onnx_path = root / "dense.onnx"
    run("export-onnx", "-c", run_dir / "mvp.pt", "-o", onnx_path, "--size", "64")
    side = json.loads(onnx_path.with_suffix(".json").read_text())
    assert side["method"] == "mvp-seg" and side["outputs"] == ["dense"] and side["tau1"] > 0
    ort = pytest.importorskip("onnxruntime")
    from pgseg_core.backbones import load_backbone

    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    got = ort.InferenceSession(str(onnx_path)).run(None, {"images": x})[0]
    want = load_backbone(ref).dense(torch.from_numpy(x)).detach().numpy()
    assert side["input_size"] == [64, 64] and got.shape == (2, 32, 4, 4) and np.allclose(got, want, atol=1e-4)


def test_baseline_eval_with_cache_and_segment(setup):
    root, ref = setup
    cache = root / "dense.h5"
    args = ["eval", "-c", f"baseline:{ref}", "--data", root / "shards", "--cache", cache, "--no-per-class"]
    first = root / "b1.json"
    run(*args, "--output", first, "--mvp.templates", "imagenet80", *SMALL)
    second = root / "b2.json"
    run(*args, "--output", second, "--mvp.templates", "imagenet80", *SMALL)
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    assert a["cache"]["images_encoded"] == 6 and b["cache"]["images_from_cache"] == 6
    assert b["cache"]["images_encoded"] == 0 and a["splits"]["all"]["mIoU"] == b["splits"]["all"]["mIoU"]
    assert a["eval_config"]["templates"] == "imagenet80" and a["checkpoint"]["family"] == "baseline"
    seg = root / "bseg"
    img = root / "img2.png"
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(img)
    run("segment", img, "-c", f"baseline:{ref}", "--classes", "cat", "-o", seg, "--format", "png")
    assert (seg / "img2_label.png").is_file()

    # --bg-thresh: GroupViT's background rule on the baseline; at 1.0 no class reaches it
    third = root / "b3.json"
    run(*args, "--output", third, "--bg-thresh", "1.0", *SMALL)
    c = json.loads(third.read_text())
    per_class = c["splits"]["all"]["per_class"]
    assert c["eval_config"]["bg_thresh"] == 1.0 and per_class["background"]["pred_pixels"] > 0
    assert all(v["pred_pixels"] == 0 for k, v in per_class.items() if k != "background")
    assert a["eval_config"]["bg_thresh"] == 0.0
    seg2 = root / "bseg2"
    run("segment", img, "-c", f"baseline:{ref}", "--classes", "cat,dog", "-o", seg2, "--format", "png",
        "--bg-thresh", "1.0")  # fmt: skip
    assert not np.asarray(Image.open(seg2 / "img2_label.png")).any()


def test_train_with_background_threshold(setup):
    """mvp.bg_thresh > 0: background pixels are not learned (no background prompt class) and inference
    thresholds it; the checkpoint's value is the default and --bg-thresh overrides it."""
    root, ref = setup
    run_dir = root / "run_thr"
    run("train", "--method", "mvp-seg", "--backbone", ref, "--data", root / "shards", "--out", run_dir,
        "--mvp.steps", "2", "--mvp.batch_size", "2", "--mvp.bg_thresh", "0.5", *SMALL)  # fmt: skip
    ck = torch.load(run_dir / "mvp.pt", weights_only=True)
    assert "background" not in ck["seen_classes"] and ck["config"]["bg_thresh"] == 0.5
    assert "cat" in ck["seen_classes"]
    got = {}
    for thr in ("", "1.0"):
        out = root / f"thr{thr}.json"
        flag = ["--bg-thresh", thr] if thr else []
        run("eval", "-c", run_dir / "mvp.pt", "--data", root / "shards", "--output", out, *flag)
        got[thr] = json.loads(out.read_text())
    assert got[""]["eval_config"]["bg_thresh"] == 0.5 and got["1.0"]["eval_config"]["bg_thresh"] == 1.0
    per_class = got["1.0"]["splits"]["all"]["per_class"]
    assert all(v["pred_pixels"] == 0 for k, v in per_class.items() if k != "background")


def test_cache_benchmark_quick(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_mvp_cache.py"
    out = tmp_path / "b.json"
    subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(out)], check=True, capture_output=True
    )
    result = json.loads(out.read_text())
    assert result["ratios"]["cached_over_plain_steps_per_s"] > 0 and result["settings"]["quick"]
    assert result["cache"]["steps_per_s"] > 0 and "load average" in result["uptime"]


def test_benchmark_reader_paths_and_zs_split_for_pgseg(setup, tiny_checkpoint, tmp_path):
    from test_benchmarks import build

    root, ref = setup
    data, _, _ = build("voc20", tmp_path / "voc")
    small = ["--mvp.short_side", "32", "--mvp.max_long", "64"]
    run("train", "--method", "mvp-seg", "--backbone", ref, "--data", f"dataset:voc20/val:{data}",
        "--out", tmp_path / "run", "--mvp.steps", "2", "--mvp.batch_size", "2", *small)  # fmt: skip
    seen = torch.load(tmp_path / "run" / "mvp.pt", weights_only=True)["seen_classes"]
    assert len(seen) == 15 and "sheep" not in seen and "background" not in seen  # voc20: no background
    out = tmp_path / "m.json"
    run("eval", "-c", tmp_path / "run" / "mvp.pt", "--dataset", "voc20", "--data-root", data,
        "--zs-split", "voc-15-5", "--output", out, "--no-per-class")  # fmt: skip
    m = json.loads(out.read_text())
    assert set(m["splits"]) == {"val", "all"} and len(m["splits"]["all"]["per_class"]) == 20
    assert m["splits"]["val"]["num_images"] == 3 and m["seen_mIoU"] is not None
    # a PGSeg checkpoint gets the same three numbers from its per-class IoUs
    out2 = tmp_path / "p.json"
    run("eval", "-c", tiny_checkpoint, "--dataset", "voc20", "--data-root", data, "--zs-split", "voc-15-5",
        "--output", out2, "--no-per-class", "--eval.short_side", "32", "--eval.crop", "32",
        "--eval.stride", "16")  # fmt: skip
    p = json.loads(out2.read_text())
    assert p["protocol"]["zero_shot_split"] == "voc-15-5" and p["seen_mIoU"] is not None
    assert "hIoU" in p


def test_flags_that_do_not_apply_are_usage_errors(tmp_path):
    base = ["eval", "-c", "baseline:open_clip:ViT-B-16:/nowhere.pt", "--data", tmp_path]
    for extra, flag in (
        (["--sweep", "bg_thresh=0.1:0.5:0.1"], "--sweep"),
        (["--eval.short_side", "32"], "eval.short_side"),
    ):
        result = runner.invoke(app, [str(a) for a in base + extra])
        assert result.exit_code == 2 and flag in result.output, result.output
    seg = [
        "segment",
        str(tmp_path),
        "-c",
        "baseline:x",
        "--classes",
        "cat",
        "-o",
        str(tmp_path / "o"),
        "--bg-words",
        "sky",
    ]
    result = runner.invoke(app, seg)
    assert result.exit_code == 2 and "--bg-words" in result.output


def test_ignore_background_scores_the_classes_alone(setup, tiny_checkpoint, tmp_path):
    """--ignore-background: the VOC20 / PC59 convention on demo shards, for the baseline and for a PGSeg
    checkpoint: no background channel, background pixels uncounted, every class's pixels counted as before."""
    from pgseg_core.data.loader import iter_val_samples

    root, ref = setup
    shards = root / "shards"
    labels = [np.asarray(s.label) for s in iter_val_samples(shards, "val-caption")]
    classes = next(iter_val_samples(shards, "val-caption")).classes
    gt_fg = {c: sum(int((lab == 1 + i).sum()) for lab in labels) for i, c in enumerate(classes)}
    assert sum(gt_fg.values()) > 0 and sum(int((lab == 0).sum()) for lab in labels) > 0

    def evaluate(checkpoint, name, *extra):
        out = tmp_path / f"{name}.json"
        run("eval", "-c", checkpoint, "--data", shards, "--split", "val-caption", "--output", out,
            "--no-per-class", "--no-figures", *extra)  # fmt: skip
        return json.loads(out.read_text())

    with_bg = evaluate(f"baseline:{ref}", "b", *SMALL)
    no_bg = evaluate(f"baseline:{ref}", "nb", "--ignore-background", *SMALL)
    per_class = no_bg["splits"]["val-caption"]["per_class"]
    assert "background" not in per_class and "background" in with_bg["splits"]["val-caption"]["per_class"]
    assert {c: per_class[c]["gt_pixels"] for c in classes} == gt_fg
    assert sum(v["pred_pixels"] for v in per_class.values()) == sum(gt_fg.values())  # each scored once
    assert no_bg["dataset"]["background"] == "ignored" and with_bg["dataset"]["background"] == "scored"

    pgseg_small = ["--eval.short_side", "32", "--eval.crop", "32", "--eval.stride", "16"]
    p = evaluate(tiny_checkpoint, "p", "--ignore-background", "--zs-split", "demo-30-8", *pgseg_small)
    split = p["splits"]["val-caption"]
    assert split["has_background"] is False and "background" not in split["per_class"]
    assert {c: split["per_class"][c]["gt_pixels"] for c in classes} == gt_fg
    assert split["mIoU_fg"] == split["mIoU"] and p["seen_mIoU"] is not None

    bad = ["eval", "-c", tiny_checkpoint, "--dataset", "voc21", "--data-root", tmp_path]  # fmt: skip
    for extra, flag, says in (
        (["--ignore-background"], "--ignore-background", "voc20"),
        (["--ignore-background", "--bg-thresh", "0.5"], "--bg-thresh", "not scored"),
        (["--ignore-background", "--sweep", "bg_thresh=0.1:0.5:0.1"], "--sweep", "not scored"),
    ):
        result = runner.invoke(app, [str(a) for a in bad + extra])
        assert result.exit_code == 2 and flag in result.output and says in result.output, result.output


def test_runs_share_a_dense_cache_and_method_flags_are_checked(setup, tmp_path):
    root, ref = setup
    shared = tmp_path / "dense.h5"
    common = ["train", "--method", "mvp-seg", "--backbone", ref, "--data", root / "shards",
              "--dense-cache", shared, "--mvp.steps", "1", "--mvp.batch_size", "2", *SMALL]  # fmt: skip
    first = run(*common, "--out", tmp_path / "a").output
    second = run(*common, "--out", tmp_path / "b", "--mvp.lambda_oc", "0").output
    counts = [
        re.search(r"on (\d+) image\(s\) \(\w+, (\d+) encoded once\)", " ".join(o.split()))
        for o in (first, second)
    ]
    (n1, enc1), (n2, enc2) = (tuple(int(v) for v in m.groups()) for m in counts)
    assert n1 == n2 > 0 and enc1 == n1 and enc2 == 0 and shared.is_file()
    assert not (tmp_path / "a" / "dense_cache.h5").exists()

    for extra, flag in (
        (["--backbone", ref], "--backbone"),  # default --method pgseg
        (["--dense-cache", shared], "--dense-cache"),
        (["--method", "mvp-seg", "--backbone", ref, "--nproc", "2"], "--nproc"),
    ):
        result = runner.invoke(app, [str(a) for a in ["train", "--data", root / "shards", *extra]])
        assert result.exit_code == 2 and flag in result.output, result.output
