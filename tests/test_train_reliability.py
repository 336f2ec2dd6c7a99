"""`pgseg train` reliability (issue 13): a run directory is never overwritten or mixed by accident, bad
values and paths end in one line, a full disk keeps the previous checkpoint, and a run killed with
``kill -9`` at a random point resumes to the right step with every metrics row once and no stray temp file."""

from __future__ import annotations

import gc
import json
import os
import random
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
from pgseg_core.checkpoint import load_checkpoint, read_checkpoint_file

pytestmark = pytest.mark.usefixtures("single_thread")

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Eight captioned 64-px JPEGs in one training shard."""
    return write_captioned_shard(tmp_path_factory.mktemp("shards"), 8)


def _args(shards: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        "train", "--model", "pgseg-tiny", "--data", str(shards), "--out", str(out), "--device", "cpu",
        "--train.steps", str(steps), "--train.batch_size", "4", "--train.log_every", "1", *extra,
    ]  # fmt: skip


def train(shards: Path, out: Path, steps: int, *extra: str):
    return runner.invoke(app, _args(shards, out, steps, *extra), catch_exceptions=False)


def _steps(out: Path) -> list[int]:
    return [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def _temps(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob(".*.tmp"))


def one_line_error(result, *needles: str, code: int = 1) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    text = result.stderr if code == 1 else result.output
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if code == 1:  # log lines (INFO ...) may precede it; the error is one line
        assert [ln.startswith("error:") for ln in lines].count(True) == 1, lines
        lines = [ln for ln in lines if ln.startswith("error:")]
    joined = " ".join(ln.strip(" │╭╰─") for ln in lines)
    for needle in needles:
        assert needle in joined, (needle, lines)
    return joined


# ---------------------------------------------------------------------------------------------------------
# refuse / resume / overwrite


@pytest.fixture
def three_step_run(shards, tmp_path):
    out = tmp_path / "run"
    assert train(shards, out, 3).exit_code == 0
    return out


def test_existing_run_is_refused_without_resume_or_overwrite(shards, three_step_run):
    out = three_step_run
    before = (out / "last.pt").read_bytes(), (out / "metrics.jsonl").read_text()
    result = train(shards, out, 2)
    one_line_error(result, "already holds a training run", "--resume", "--overwrite", code=2)
    assert ((out / "last.pt").read_bytes(), (out / "metrics.jsonl").read_text()) == before
    # a folder with only metrics.jsonl (a run killed before its first checkpoint) is a run too
    (out / "last.pt").unlink()
    one_line_error(train(shards, out, 2), "metrics.jsonl", "--resume", code=2)


def test_resume_and_overwrite_together_is_a_usage_error(shards, three_step_run):
    result = train(shards, three_step_run, 2, "--resume", "--overwrite")
    one_line_error(result, "--resume and --overwrite exclude each other", code=2)
    assert read_checkpoint_file(three_step_run / "last.pt")["step"] == 3


def test_library_refuses_the_same_way(shards, three_step_run):
    from pgseg_core.api import train as api_train
    from pgseg_core.errors import ConfigError, OutputError

    with pytest.raises(OutputError, match="already holds a training run") as e:
        api_train("pgseg-tiny", str(shards), three_step_run, overrides={"train.steps": 2}, device="cpu")
    assert "--" not in str(e.value)  # the library names no CLI flag
    with pytest.raises(ConfigError, match="exclude each other"):
        api_train("pgseg-tiny", str(shards), three_step_run, resume=True, overwrite=True, device="cpu")


def test_overwrite_starts_over_and_keeps_the_stem_cache(shards, three_step_run):
    out = three_step_run
    (out / "stem_cache.h5").write_bytes(b"stem features")  # depends only on data + stem: kept
    result = train(shards, out, 2, "--overwrite")
    assert result.exit_code == 0, result.output
    assert "trained 2 steps on cpu" in result.output
    assert read_checkpoint_file(out / "last.pt")["step"] == 2
    assert _steps(out) == [1, 2]
    assert (out / "stem_cache.h5").read_bytes() == b"stem features"


def test_resume_reports_the_steps_of_this_call(shards, three_step_run):
    result = train(shards, three_step_run, 5, "--resume")
    assert result.exit_code == 0, result.output
    assert "trained 2 steps (4-5) on cpu" in result.output
    assert _steps(three_step_run) == [1, 2, 3, 4, 5]
    again = train(shards, three_step_run, 5, "--resume")
    assert again.exit_code == 0 and "trained 0 steps (already at step 5)" in again.output
    assert read_checkpoint_file(three_step_run / "last.pt")["metrics"]["step"] == 5  # left as it was


def test_resume_drops_rows_logged_after_the_checkpoint(shards, three_step_run):
    """A killed run logged steps 4-6 (and a torn line) after its step-3 checkpoint: they are dropped once."""
    out = three_step_run
    rows = (out / "metrics.jsonl").read_text()
    extra = "".join(json.dumps({"step": s, "loss": 9.0}) + "\n" for s in (4, 5, 6))
    (out / "metrics.jsonl").write_text(rows + extra + '{"step": 7, "lo')
    result = train(shards, out, 6, "--resume")
    assert result.exit_code == 0, result.output
    assert "trained 3 steps (4-6)" in result.output
    assert _steps(out) == [1, 2, 3, 4, 5, 6]
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] != 9.0 for r in recs)


def test_resume_without_a_checkpoint_starts_at_step_zero(shards, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 9.0}) + "\n")  # killed before step 2
    result = train(shards, out, 2, "--resume")
    assert result.exit_code == 0, result.output
    assert "trained 2 steps on cpu" in result.output
    assert _steps(out) == [1, 2] and read_checkpoint_file(out / "last.pt")["step"] == 2
    assert all(json.loads(ln)["loss"] != 9.0 for ln in (out / "metrics.jsonl").read_text().splitlines())
    # --resume on a new folder is a plain start, so a script can always pass it
    assert train(shards, tmp_path / "new", 1, "--resume").exit_code == 0


# ---------------------------------------------------------------------------------------------------------
# bad values and paths: one line, nothing written


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("--train.steps", "-5", "train.steps must be >= 0, got -5"),
        ("--train.batch_size", "0", "train.batch_size must be >= 1, got 0"),
        ("--train.lr", "-1", "train.lr must be > 0"),
        ("--train.ckpt_every", "0", "train.ckpt_every must be >= 1"),
        ("--eval.bg_thresh", "2", "eval.bg_thresh must lie in [0, 1]"),
    ],
)
def test_out_of_range_option_is_one_line_and_writes_nothing(shards, tmp_path, key, value, message):
    out = tmp_path / "run"
    one_line_error(train(shards, out, 2, key, value), message)
    assert not out.exists()


def test_out_that_is_a_file_or_cannot_be_created(shards, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    one_line_error(train(shards, a_file, 1), "is a file, not a folder")
    one_line_error(train(shards, a_file / "sub", 1), "cannot create the folder", "is a file, not a folder")
    one_line_error(train(shards, Path("/proc/pgseg-x"), 1), "cannot create the folder /proc/pgseg-x")
    assert a_file.read_text() == "not a folder"


# ---------------------------------------------------------------------------------------------------------
# a full disk


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(shards, three_step_run, monkeypatch):
    """torch's zip writer reports a full disk as RuntimeError('... unexpected pos ...'): one line, the step-3
    checkpoint intact, no temp file; the next --resume drops the rows of the failed steps."""
    out = three_step_run
    before = (out / "last.pt").read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 7997184 vs 7997076")

    monkeypatch.setattr(torch, "save", full_disk)
    result = train(shards, out, 5, "--resume", "--train.ckpt_every", "1")
    one_line_error(result, f"cannot write {out / 'last.pt'}", "unexpected pos", "disk may be full")
    assert (out / "last.pt").read_bytes() == before and _temps(out) == []
    assert _steps(out) == [1, 2, 3, 4]  # step 4 was logged before its checkpoint failed
    monkeypatch.setattr(torch, "save", real_save)
    assert train(shards, out, 5, "--resume").exit_code == 0
    assert _steps(out) == [1, 2, 3, 4, 5] and read_checkpoint_file(out / "last.pt")["step"] == 5


def test_save_checkpoint_errors_are_one_line(tmp_path, tiny_checkpoint, monkeypatch):
    from pgseg_core.checkpoint import save_checkpoint
    from pgseg_core.config import load_config
    from pgseg_core.errors import OutputError
    from pgseg_core.models.factory import create_model

    cfg = load_config("pgseg-tiny")
    model = create_model(cfg.model)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot write .*file/last.pt") as e:
        save_checkpoint(tmp_path / "file" / "last.pt", model, cfg, 1)
    assert "\n" not in str(e.value)
    target = tmp_path / "last.pt"
    target.write_bytes(tiny_checkpoint.read_bytes())

    def enospc(obj, f, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", enospc)
    with pytest.raises(OutputError, match="No space left on device .the disk is full"):
        save_checkpoint(target, model, cfg, 1)
    assert target.read_bytes() == tiny_checkpoint.read_bytes() and _temps(tmp_path) == []


def _mount_tmpfs(path: Path, size: int) -> bool:
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return False
    path.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return res.returncode == 0


def test_full_tmpfs_during_a_checkpoint_keeps_the_previous_one(shards, three_step_run, tmp_path):
    """The same on a real full disk: a tmpfs with room for one checkpoint and a half (root only)."""
    size = (three_step_run / "last.pt").stat().st_size
    disk = tmp_path / "tmpfs"
    if not _mount_tmpfs(disk, size * 3 // 2 + 64 * 1024):
        pytest.skip("cannot mount a tmpfs here (needs root on Linux)")
    try:
        out = disk / "run"
        out.mkdir()
        for name in ("last.pt", "metrics.jsonl", "config.json"):
            (out / name).write_bytes((three_step_run / name).read_bytes())
        result = train(shards, out, 5, "--resume")
        one_line_error(result, f"cannot write {out / 'last.pt'}", "disk may be full")
        assert read_checkpoint_file(out / "last.pt")["step"] == 3 and _temps(out) == []
    finally:
        # the in-process run's traceback keeps torch's failed zip writer (an open file) alive until collected
        result = None
        gc.collect()
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], check=False)


# ---------------------------------------------------------------------------------------------------------
# kill -9 at a random point, then --resume


def _wait_for_rows(proc: subprocess.Popen, metrics: Path, n: int, deadline: float) -> None:
    while time.time() < deadline and proc.poll() is None:
        try:
            if metrics.read_text().count("\n") >= n:
                return
        except FileNotFoundError:
            pass
        time.sleep(0.01)


def test_kill_9_at_a_random_point_then_resume(shards, tmp_path):
    """``PGSEG_KILL_SEED`` replays a failure: the seed picks after how many metrics rows (and how long after)
    the training process gets SIGKILL; the resume runs in this process (no second interpreter start)."""
    seed = int(os.environ.get("PGSEG_KILL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    steps, every, rows = 12, 3, rng.randint(1, 11)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = _args(shards, out, steps, "--train.ckpt_every", str(every))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgseg_cli", "-q", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_rows(proc, out / "metrics.jsonl", rows, time.time() + 90)
        time.sleep(rng.uniform(0, 0.15))  # lands inside a step, a metrics write or a checkpoint write
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    why = f"PGSEG_KILL_SEED={seed}: killed after {rows} rows"
    if (out / "last.pt").exists():  # the checkpoint on disk is always whole
        assert read_checkpoint_file(out / "last.pt")["step"] % every == 0, why
    # a temp file of the dead process, as a kill during a checkpoint write leaves it
    (out / f".last.pt.{proc.pid}.a1b2c3d4.tmp").write_bytes(b"half")
    result = train(shards, out, steps, "--train.ckpt_every", str(every), "--resume")
    assert result.exit_code == 0, (why, result.output)
    assert "trained " in result.output, (why, result.output)
    assert _steps(out) == list(range(1, steps + 1)), why
    model, info = load_checkpoint(out)
    assert info.step == steps, why
    assert _temps(out) == [], why
