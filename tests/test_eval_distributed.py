"""``torchrun ... -m pgseg_cli eval`` (docs/TRAINING.md §6): two gloo processes split the images, all-reduce
the confusion matrices and report exactly the 1-process metrics."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pgseg_cli.app import app
from pgseg_core.data.shards import SplitWriter, new_index, write_index
from test_train_distributed import free_port

pytestmark = pytest.mark.usefixtures("single_thread")

REPO = Path(__file__).resolve().parents[1]


def _encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def val_shards(tmp_path_factory):
    """Five labelled 64-px composites (cat, dog) in a val-caption split."""
    d = tmp_path_factory.mktemp("val")
    rng = np.random.default_rng(0)
    classes = ["cat", "dog"]
    with SplitWriter(d, "val-caption", shard_size=2) as vw:
        for i in range(5):
            label = np.zeros((64, 64), np.uint8)
            label[4 + i : 30, 4:30] = 1
            label[34:60, 30 + i : 60] = 2
            label[0, :] = 255
            image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            meta = {"classes": classes, "split": "val-caption"}
            jpg, png = _encode(image, "JPEG"), _encode(label, "PNG")
            vw.write({"__key__": f"v{i}", "jpg": jpg, "png": png, "txt": "a cat and a dog.", "json": meta})
    with SplitWriter(d, "train", shard_size=4) as tw:
        for i in range(4):
            image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            tw.write({"__key__": f"t{i}", "jpg": _encode(image, "JPEG"), "txt": f"a cat number {i}"})
    val = {"shards": vw.shards, "count": 5, "classes": classes}
    write_index(d, new_index({"train": {"shards": tw.shards, "count": 4}, "val-caption": val}))
    return d


def _args(ck: Path, shards: Path, out: Path) -> list[str]:
    return ["eval", "--checkpoint", str(ck), "--data", str(shards), "--output", str(out), "--device", "cpu"]


def _metrics(path: Path) -> dict:
    report = json.loads(path.read_text())
    drop = ("seconds", "images_encoded", "images_from_cache")  # how, not what
    return {split: {k: v for k, v in m.items() if k not in drop} for split, m in report["splits"].items()}


def _two_ranks(ck: Path, shards: Path, out: Path, *extra: str) -> list[tuple[str, str]]:
    """``pgseg eval`` as two gloo ranks on 127.0.0.1; (stdout, stderr) of each."""
    port, procs = str(free_port()), []
    for rank in range(2):
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port}  # fmt: skip
        cmd = [sys.executable, "-m", "pgseg_cli", *_args(ck, shards, out), *extra]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    return outs


def test_two_processes_give_the_one_process_metrics_exactly(tiny_checkpoint, val_shards, tmp_path):
    one = tmp_path / "one.json"
    result = CliRunner().invoke(app, _args(tiny_checkpoint, val_shards, one), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    two, cache = tmp_path / "two.json", tmp_path / "feats.h5"
    outs = _two_ranks(tiny_checkpoint, val_shards, two, "--cache", str(cache))
    assert "mIoU" in outs[0][0] and "mIoU" not in outs[1][0]  # rank 0 prints the tables
    a, b = _metrics(one), _metrics(two)
    assert a == b
    assert a["val-caption"]["num_images"] == 5
    # each rank wrote its own part of the feature cache; a second run reads every image from them
    assert sorted(p.name for p in tmp_path.glob("feats.*")) == ["feats.rank0of2.h5", "feats.rank1of2.h5"]
    _two_ranks(tiny_checkpoint, val_shards, two, "--cache", str(cache))
    again = json.loads(two.read_text())["splits"]["val-caption"]
    assert again["images_from_cache"] == 5 and again["images_encoded"] == 0
    assert _metrics(two) == a


def test_training_logs_a_zero_shot_eval_row_every_eval_every_steps(val_shards, tmp_path):
    out = tmp_path / "run"
    args = ["train", "-m", "pgseg-tiny", "-d", str(val_shards), "-o", str(out), "--device", "cpu",
            "--train.steps", "4", "--train.batch_size", "2", "--train.eval_every", "2",
            "--train.eval_images", "3"]  # fmt: skip
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_val-caption_mIoU" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(0.0 <= r["eval_val-caption_mIoU"] <= 100.0 for r in evals)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
