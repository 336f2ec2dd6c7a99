"""pgseg eval on the real benchmark readers: every mmseg layout built tiny in tmp, through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from pgseg_cli.app import app
from test_benchmarks import build

NUM_CLASSES = {
    "voc21": 20,
    "voc20": 20,
    "pc60": 59,
    "pc59": 59,
    "coco-object": 80,
    "coco-stuff-171": 171,
    "ade20k-150": 150,
    "cityscapes": 19,
}
WITH_BACKGROUND = {"voc21", "pc60", "coco-object"}


@pytest.mark.parametrize("name", sorted(NUM_CLASSES))
@pytest.mark.parametrize("protocol", ["groupvit", "sclip"])
def test_eval_cli_reads_each_layout(name, protocol, tiny_checkpoint, tmp_path):
    root, labels, _ = build(name, tmp_path / "data")
    out = tmp_path / "m.json"
    res = CliRunner().invoke(
        app,
        [
            "eval",
            "--checkpoint",
            str(tiny_checkpoint),
            "--dataset",
            name,
            "--data-root",
            str(root),
            "--protocol",
            protocol,
            "--output",
            str(out),
            "--device",
            "cpu",
            "--eval.short_side",
            "32",
            "--eval.crop",
            "32",
            "--eval.stride",
            "16",
            "--no-per-class",
        ],
    )
    assert res.exit_code == 0, res.output
    m = json.loads(out.read_text())
    split = m["splits"]["val"]
    assert split["num_images"] == len(labels)
    names = list(split["per_class"])
    assert len(names) == NUM_CLASSES[name] + (name in WITH_BACKGROUND)
    assert (names[0] == "background") == (name in WITH_BACKGROUND)
    # the tiny labels hold non-ignore pixels, so aAcc and mIoU are defined
    labelled = sum(int((lab != 255).sum()) for lab in labels)
    assert labelled > 0 and 0.0 <= split["aAcc"] <= 100.0
    assert np.isfinite(split["mIoU"])


def test_missing_split_file_is_one_line(tiny_checkpoint, tmp_path):
    root, _, _ = build("voc21", tmp_path / "data")
    for f in root.rglob("val.txt"):
        f.unlink()
    res = CliRunner().invoke(
        app,
        [
            "eval",
            "--checkpoint",
            str(tiny_checkpoint),
            "--dataset",
            "voc21",
            "--data-root",
            str(root),
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert len([ln for ln in res.output.splitlines() if ln.startswith("error:")]) == 1
