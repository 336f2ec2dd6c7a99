"""End-to-end CLI tests on tiny data: prep-shards -> train -> eval -> segment, and bad inputs.

Every bad input must end in ONE readable line on stderr naming the problem, a non-zero exit code and no
traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from _fixtures import make_fake_roots
from pgseg_cli.app import app
from pgseg_core.data.sources.demo import build_demo_shards

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, *needles: str, code: int = 1) -> None:
    assert result.exit_code == code, (result.exit_code, result.output)
    text = result.stderr if hasattr(result, "stderr") else result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert lines, "no error message"
    error_lines = [ln for ln in lines if ln.startswith("error:")]
    assert len(error_lines) == 1, lines
    joined = " ".join(lines)
    for needle in needles:
        assert needle.lower() in joined.lower(), (needle, lines)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, single_thread):
    """Tiny demo shards (fake sources), a 3-step pgseg-tiny run, and two real test photos."""
    root = tmp_path_factory.mktemp("cli")
    roots = make_fake_roots(root / "src")
    build_demo_shards(root / "shards", seed=1, n_train=16, n_val=4, img_size=64, roots=roots, shard_size=8)
    result = run(
        "train",
        "--model",
        "pgseg-tiny",
        "--data",
        root / "shards",
        "--out",
        root / "run",
        "--train.steps",
        "3",
        "--train.batch_size",
        "4",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(photos / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8), mode="L").save(photos / "grey.png")
    return root


def test_help_lists_every_command():
    result = run("--help")
    assert result.exit_code == 0
    for cmd in ("prep-shards", "train", "eval", "segment"):
        assert cmd in result.output
    for cmd in ("prep-shards", "train", "eval", "segment"):
        assert run(cmd, "--help").exit_code == 0


def test_prep_shards_folder_source_skips_corrupt_images(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30), (i * 60, 10, 10)).save(images / f"im{i}.jpg")
        (images / f"im{i}.txt").write_text(f"a red square number {i}")
    (images / "broken.jpg").write_bytes(b"not a jpeg at all")
    (images / "broken.txt").write_text("a broken image")
    result = run("prep-shards", "--source", "folder", "--images", images, "--out", tmp_path / "shards")
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert index["splits"]["train"]["count"] == 3
    assert "skipped 1" in result.output


def test_train_writes_checkpoint_and_metrics(tiny_run):
    run_dir = tiny_run / "run"
    assert (run_dir / "last.pt").exists() and (run_dir / "config.json").exists()
    records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 3 and np.isfinite(records[-1]["loss"])
    ck = torch.load(run_dir / "last.pt", weights_only=True)
    assert ck["format"] == "pgseg-checkpoint" and ck["step"] == 3 and ck["config"]["name"] == "pgseg-tiny"


def test_eval_reports_both_splits_and_writes_metrics(tiny_run, tmp_path):
    out = tmp_path / "metrics.json"
    result = run(
        "eval",
        "--checkpoint",
        tiny_run / "run",
        "--data",
        tiny_run / "shards",
        "--output",
        out,
        "--device",
        "cpu",
        "--bg-thresh",
        "0.3",
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert set(metrics["splits"]) == {"val-caption", "val-heldout"}
    for split in metrics["splits"].values():
        assert 0.0 <= split["mIoU"] <= 100.0 and split["num_images"] == 4
    assert metrics["eval_config"]["bg_thresh"] == 0.3
    assert "val-caption" in result.output and "mIoU" in result.output


def test_segment_writes_label_overlay_json(tiny_run, tmp_path):
    out = tmp_path / "seg"
    result = run(
        "segment",
        tiny_run / "photos",
        "--checkpoint",
        tiny_run / "run" / "last.pt",
        "--out",
        out,
        "--classes",
        "dog,apple,banana",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    for stem, size in (("a", (90, 70)), ("grey", (64, 64))):
        label = Image.open(out / f"{stem}_label.png")
        assert label.mode == "P" and label.size == size
        assert np.asarray(label).max() <= 3
        overlay = Image.open(out / f"{stem}_overlay.png")
        assert overlay.size[0] == size[0] and overlay.size[1] >= size[1]
        record = json.loads((out / f"{stem}.json").read_text())
        assert {c["name"] for c in record["classes"]} <= {"dog", "apple", "banana"}
        total = record["background_pixels"] + sum(c["pixels"] for c in record["classes"])
        assert total == size[0] * size[1]


def test_segment_skips_a_corrupt_image_and_exits_nonzero(tiny_run, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    out = tmp_path / "seg"
    result = run(
        "segment",
        tiny_run / "photos" / "a.jpg",
        bad,
        "--checkpoint",
        tiny_run / "run",
        "--out",
        out,
        "--classes",
        "dog,apple",
        "--device",
        "cpu",
    )
    assert result.exit_code == 1
    assert (out / "a_label.png").exists()
    assert "bad.jpg" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------------------------ bad inputs


def test_missing_image_file(tiny_run, tmp_path):
    result = run(
        "segment",
        tmp_path / "nope.jpg",
        "--checkpoint",
        tiny_run / "run",
        "--out",
        tmp_path / "o",
        "--classes",
        "dog",
    )
    assert_one_line_error(result, "not found", "nope.jpg")


def test_unknown_class_file_format(tiny_run, tmp_path):
    classes = tmp_path / "classes.xlsx"
    classes.write_text("dog\n")
    result = run(
        "segment",
        tiny_run / "photos",
        "--checkpoint",
        tiny_run / "run",
        "--out",
        tmp_path / "o",
        "--classes-file",
        classes,
    )
    assert_one_line_error(result, "class-file format", ".xlsx")


def test_checkpoint_of_another_model(tiny_run, tmp_path):
    other = tmp_path / "resnet.pt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, other)
    result = run(
        "segment", tiny_run / "photos", "--checkpoint", other, "--out", tmp_path / "o", "--classes", "dog"
    )
    assert_one_line_error(result, "not a pgseg checkpoint")


def test_truncated_checkpoint(tiny_run, tmp_path):
    data = (tiny_run / "run" / "last.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    result = run("eval", "--checkpoint", cut, "--data", tiny_run / "shards")
    assert_one_line_error(result, "truncated or corrupt")


def test_missing_checkpoint(tiny_run, tmp_path):
    result = run("eval", "--checkpoint", tmp_path / "missing.pt", "--data", tiny_run / "shards")
    assert_one_line_error(result, "checkpoint not found")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_that_is_not_there(tiny_run, tmp_path):
    result = run(
        "segment",
        tiny_run / "photos",
        "--checkpoint",
        tiny_run / "run",
        "--out",
        tmp_path / "o",
        "--classes",
        "dog",
        "--device",
        "cuda",
    )
    assert_one_line_error(result, "cuda", "not available")


def test_unknown_preset_and_override(tiny_run, tmp_path):
    result = run("train", "--model", "pgseg-tny", "--data", tiny_run / "shards", "--out", tmp_path / "r")
    assert_one_line_error(result, "pgseg-tiny")
    result = run(
        "train",
        "--model",
        "pgseg-tiny",
        "--data",
        tiny_run / "shards",
        "--out",
        tmp_path / "r",
        "--train.lrr",
        "1e-3",
    )
    assert_one_line_error(result, "train.lrr", "did you mean 'lr'")


def test_missing_training_data(tmp_path):
    result = run("train", "--model", "pgseg-tiny", "--data", tmp_path / "empty", "--out", tmp_path / "r")
    assert_one_line_error(result, "empty")


def test_eval_on_shards_without_val_split(tiny_run, tmp_path):
    result = run(
        "eval", "--checkpoint", tiny_run / "run", "--data", tiny_run / "shards", "--split", "val-nope"
    )
    assert_one_line_error(result, "val-nope")


def test_verbose_shows_the_traceback(tiny_run, tmp_path):
    result = runner.invoke(
        app, ["-v", "eval", "--checkpoint", str(tmp_path / "missing.pt"), "--data", str(tiny_run / "shards")]
    )
    assert result.exit_code == 1
    assert "Traceback" in result.output or "CheckpointError" in result.output


@pytest.mark.demo_data
@pytest.mark.skipif(not Path("/usr/share/tuxpaint/stamps").is_dir(), reason="demo sources not installed")
def test_prep_shards_demo_source_with_real_sources(tmp_path):
    result = run(
        "prep-shards",
        "--source",
        "demo",
        "--out",
        tmp_path / "shards",
        "--n-train",
        "10",
        "--n-val",
        "4",
        "--img-size",
        "96",
        "--photos",
        tmp_path / "photos",
    )
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert index["splits"]["train"]["count"] == 10 and len(index["vocabulary"]["caption"]) >= 20
    assert any(p.suffix == ".jpg" for p in (tmp_path / "photos").iterdir())
    assert os.path.getsize(tmp_path / "shards" / index["splits"]["train"]["shards"][0]) > 0
