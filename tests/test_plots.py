"""Figures on tiny data: training curves (train writes them, ``pgseg plot`` redraws and overlays), eval
figures beside metrics.json, TensorBoard events; every figure byte-identical for the same inputs."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _fixtures import make_fake_roots
from pgseg_cli.app import app
from pgseg_core.data.sources.demo import build_demo_shards

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


TRAIN = ("--model", "pgseg-tiny", "--train.batch_size", "4", "--device", "cpu", "--train.log_every", "1")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, single_thread):
    """Tiny demo shards and two 4-step pgseg-tiny runs (checkpoint every 2 steps; the second with lr x10)."""
    root = tmp_path_factory.mktemp("plots")
    build_demo_shards(
        root / "shards",
        seed=1,
        n_train=16,
        n_val=4,
        img_size=64,
        roots=make_fake_roots(root / "src"),
        shard_size=8,
    )
    for name, extra in (("run", ()), ("run_fast", ("--train.lr", "1e-3"))):
        res = run("train", "--data", root / "shards", "--out", root / name, "--train.steps", "4",
                  "--train.ckpt_every", "2", *TRAIN, *extra)  # fmt: skip
        assert res.exit_code == 0, res.output
        assert f"training curves: {root / name / 'curves.png'}" in res.output.replace("\n", "")
    return root


def test_train_writes_curves_and_plot_redraws_them_identically(runs, tmp_path):
    curves = runs / "run" / "curves.png"
    assert curves.is_file() and curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = run("plot", runs / "run", "--out", tmp_path / "again.png")
    assert res.exit_code == 0, res.output
    assert "4 logged steps" in res.output
    assert sha(tmp_path / "again.png") == sha(curves)  # deterministic: same rows, same bytes


def test_plot_overlays_several_runs(runs, tmp_path):
    from PIL import Image

    res = run("plot", runs / "run", runs / "run_fast" / "metrics.jsonl", "--out", tmp_path / "both.png")
    assert res.exit_code == 0, res.output
    assert "run, run_fast" in res.output
    assert Image.open(tmp_path / "both.png").size[0] > 300
    res = run("plot", runs / "run", runs / "run_fast")
    assert res.exit_code == 2 and "--out" in res.output


def test_curves_panels_follow_metrics_jsonl(runs):
    from pgseg_core.viz.curves import load_run

    curves, skipped = load_run(runs / "run")
    assert skipped == 0 and [r["step"] for r in curves.rows] == [1, 2, 3, 4]
    keys = curves.keys()
    assert keys[0] == "loss" and keys[-4:] == ["lr", "logit_scale", "images_per_s", "grad_norm"]
    loss_terms = [k for k in curves.rows[0] if k.startswith("loss")]
    assert set(loss_terms) <= set(keys) and len(loss_terms) >= 2


def test_a_torn_line_is_skipped_and_a_run_without_metrics_is_one_line(runs, tmp_path):
    from pgseg_core.viz.curves import plot_runs

    lines = (runs / "run" / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 5, "lo')
    result = plot_runs([tmp_path])
    assert result.skipped_lines == 1 and result.rows == 4 and Path(result.path) == tmp_path / "curves.png"
    res = run("plot", tmp_path / "nothing")
    assert res.exit_code == 1 and "metrics.jsonl" in res.output and "Traceback" not in res.output


def test_smoothing_is_a_debiased_moving_average():
    import numpy as np

    from pgseg_core.viz.curves import smooth

    x = np.array([4.0, 4.0, 4.0])
    assert np.allclose(smooth(x), 4.0)  # debiased: a constant stays constant from the first point
    y = smooth(np.array([0.0, 10.0]), weight=0.5)
    assert y[0] == 0.0 and y[1] == pytest.approx(0.5 * 10 / (1 - 0.25))


def test_missing_matplotlib_is_one_line_naming_the_extra(runs, tmp_path, monkeypatch):
    from pgseg_core.errors import DependencyError
    from pgseg_core.viz.curves import plot_runs

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(DependencyError, match=r"pgseg\[plots\]"):
        plot_runs([runs / "run"], tmp_path / "x.png")
    res = run("train", "--data", runs / "shards", "--out", tmp_path / "r", "--train.steps", "1", *TRAIN)
    assert res.exit_code == 0 and not (tmp_path / "r" / "curves.png").exists()  # on by default: skipped
    res = run("train", "--data", runs / "shards", "--out", tmp_path / "r2", "--train.steps", "1", *TRAIN,
              "--train.curves", "false")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "r2" / "curves.png").exists()
    assert json.loads((tmp_path / "r2" / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1


def test_tensorboard_events_hold_every_metrics_row(runs, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb_run"
    res = run("train", "--data", runs / "shards", "--out", out, "--train.steps", "3", *TRAIN,
              "--train.tensorboard", "true", "--train.curves", "false")  # fmt: skip
    assert res.exit_code == 0, res.output
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "lr", "logit_scale", "images_per_s", "grad_norm"} <= tags and "step" not in tags
    events = acc.Scalars("loss")
    assert [e.step for e in events] == [1, 2, 3]
    assert [e.value for e in events] == pytest.approx([r["loss"] for r in rows], rel=1e-6)


EVAL = ("--device", "cpu", "--no-per-class")


def test_eval_writes_its_figures_beside_the_metrics_deterministically(runs, tmp_path):
    from pgseg_core.eval.figures import figure_paths

    sweep = ("--sweep", "bg_thresh=0.1:0.9:0.4")
    for name in ("a", "b"):
        res = run("eval", "-c", runs / "run", "--data", runs / "shards", *EVAL, *sweep,
                  "--output", tmp_path / name / "metrics.json")  # fmt: skip
        assert res.exit_code == 0, res.output
        assert "% of the command" in res.output
    a, b = figure_paths(tmp_path / "a" / "metrics.json"), figure_paths(tmp_path / "b" / "metrics.json")
    assert sorted(a) == ["confusion", "per_class", "predictions", "sweep"]
    for key in a:
        assert a[key].is_file(), key
        assert sha(a[key]) == sha(b[key]), f"{key} differs between two identical evals"


def test_eval_figures_can_be_turned_off_and_the_grid_sized(runs, tmp_path):
    from PIL import Image

    res = run("eval", "-c", runs / "run", "--data", runs / "shards", *EVAL, "--no-figures",
              "--output", tmp_path / "off" / "m.json")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "off").iterdir()) == ["m.json"]
    res = run("eval", "-c", runs / "run", "--data", runs / "shards", *EVAL, "--grid-images", "0",
              "--output", tmp_path / "g0" / "m.json")  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "g0").iterdir()) == [
        "m.json",
        "m_confusion.png",
        "m_per_class.png",
    ]
    heights = []
    for n in (1, 3):
        res = run("eval", "-c", runs / "run", "--data", runs / "shards", *EVAL, "--grid-images", str(n),
                  "--split", "val-caption", "--output", tmp_path / f"g{n}" / "m.json")  # fmt: skip
        assert res.exit_code == 0, res.output
        heights.append(Image.open(tmp_path / f"g{n}" / "m_predictions.png").size[1])
    assert heights[1] > 2 * heights[0]  # three rows against one


def test_kept_confusion_matches_the_reported_metrics(runs, tmp_path):
    import numpy as np

    from pgseg_core.api import evaluate_checkpoint
    from pgseg_core.eval.figures import EvalFigureOptions
    from pgseg_core.eval.metrics import metrics_from_confusion
    from pgseg_core.eval.observe import observing

    with observing(keep=2) as observer:
        report = evaluate_checkpoint(runs / "run", runs / "shards", device="cpu", out=tmp_path / "m.json")
    assert len(observer.splits) == len(report.splits) == 2 and report.figures is None
    for (name, m), obs in zip(report.splits.items(), observer.splits):
        again = metrics_from_confusion(obs.confusion, obs.names)
        assert again["mIoU"] == pytest.approx(m["mIoU"], nan_ok=True)
        assert len(obs.samples) == 2 and obs.samples[0].pred.shape == obs.samples[0].label.shape
        assert (
            obs.confusion.sum()
            == int(np.sum(obs.samples[0].label != 255))
            + int(sum(np.sum(s.label != 255) for s in obs.samples[1:]))
            or m["num_images"] > 2
        )
    opts = EvalFigureOptions(grid_images=3)
    report = evaluate_checkpoint(
        runs / "run", runs / "shards", device="cpu", out=tmp_path / "n.json", figures=opts
    )
    assert 0 < report.figures.fraction < 1 and len(report.figures.files) == 3


def test_top_confused_ranks_by_misassigned_pixels():
    import numpy as np

    from pgseg_core.viz.eval_charts import top_confused

    conf = np.array([[50, 0, 0, 0], [0, 10, 9, 0], [0, 1, 10, 0], [0, 0, 0, 7]])
    assert top_confused(conf, 2) == [1, 2]
    assert top_confused(conf, 10) == [1, 2]  # classes without confusion are left out
    assert top_confused(np.diag([3, 4]), 5) == []


def test_eval_without_matplotlib_skips_the_charts_or_fails_when_asked(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    res = run("eval", "-c", runs / "run", "--data", runs / "shards", *EVAL, "--output", tmp_path / "m.json")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m_predictions.png"]  # the grid is PIL
    res = run("eval", "-c", runs / "run", "--data", runs / "shards", *EVAL, "--figures",
              "--output", tmp_path / "x.json")  # fmt: skip
    assert res.exit_code == 1 and "pgseg[plots]" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x.json").exists()  # checked before the evaluation


def test_figure_benchmark_runs_at_its_quick_size(tmp_path):
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(root / "benchmarks" / "bench_figures.py"), "--quick", "--eval-seconds", "60",
           "--out", str(out)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert data["seconds"]["curves"][0] > 0 and data["seconds"]["eval_figures"][0] > 0
    assert 0 < data["eval_fraction_first"] < 1


def test_a_curves_file_that_cannot_be_written_does_not_stop_training(runs, tmp_path):
    out = tmp_path / "run"
    (out / "curves.png").mkdir(parents=True)  # a folder where the figure goes: the write fails
    res = run("train", "--data", runs / "shards", "--out", out, "--train.steps", "2", *TRAIN)
    assert res.exit_code == 0, res.output
    assert (out / "last.pt").is_file() and "curves.png not drawn" in res.output


def test_a_resumed_run_continues_its_tensorboard_events(runs, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb_resume"
    tb = ("--train.tensorboard", "true", "--train.curves", "false", "--train.ckpt_every", "2")
    res = run("train", "--data", runs / "shards", "--out", out, "--train.steps", "2", *TRAIN, *tb)
    assert res.exit_code == 0, res.output
    res = run("train", "--data", runs / "shards", "--out", out, "--train.steps", "4", *TRAIN, *tb, "--resume")
    assert res.exit_code == 0, res.output
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3, 4]
