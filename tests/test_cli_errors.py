"""The CLI's safety net (issue 13): whatever a command raises from a user path or value is one ``error:``
line and exit 1 (a traceback only with ``-v``), also while its progress bar is live; a closed stdout ends a
command quietly with exit 0; SIGTERM ends a running ``pgseg eval`` with status 143, no traceback, the
feature cache readable and no metrics file or temporary file half-written."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pgseg_cli.app import app

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--device", "cpu", "--eval.short_side", "64", "--eval.crop", "64", "--eval.stride", "32"]

runner = CliRunner()

# every command, the library function it calls (module, name) and arguments that reach that call
COMMANDS = {
    "prep-shards": ("pgseg_core.api", "prep_shards", ["--out", "shards"]),
    "train": ("pgseg_core.api", "train", ["--data", "shards", "--out", "run"]),
    "eval": ("pgseg_core.api", "evaluate_checkpoint", ["--checkpoint", "ck.pt", "--data", "shards"]),
    "segment": ("pgseg_core.api", "segment_files", ["a.jpg", "-c", "ck.pt", "--classes", "cat", "-o", "o"]),
    "visualize-prototypes": ("pgseg_core.api", "visualize_prototypes", ["a.jpg", "-c", "ck.pt", "-o", "o"]),
    "export-onnx": ("pgseg_core.api", "export_onnx", ["-c", "ck.pt", "-o", "enc.onnx"]),
    "convert": ("pgseg_core.checkpoint", "convert_checkpoint", ["ck.pt", "conv"]),
}

ERRORS = {
    "oserror": (OSError(errno.EACCES, "Permission denied", "/data/out/file.bin"), "/data/out/file.bin"),
    "oserror-nospace": (OSError(errno.ENOSPC, "No space left on device", "/data/x"), "disk is full"),
    "valueerror": (ValueError("a bad value 1e9"), "a bad value 1e9"),
}


def _raising(exc: BaseException):
    """A stand-in for a library function: counts a little progress (the bar is live), then raises."""

    def fake(*args, **kwargs):
        progress = kwargs.get("progress")
        if progress is not None:
            progress("phase", 1, 4, {})
        raise exc

    return fake


def _invoke(monkeypatch, command: str, exc: BaseException, *pre: str):
    import importlib

    module, name, args = COMMANDS[command]
    monkeypatch.setattr(importlib.import_module(module), name, _raising(exc))
    return runner.invoke(app, [*pre, command, *args], catch_exceptions=False)


@pytest.mark.parametrize("error", sorted(ERRORS))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_error_inside_any_command_is_one_line(command, error, monkeypatch):
    exc, needle = ERRORS[error]
    result = _invoke(monkeypatch, command, exc)
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines  # the bar is gone, one line stays
    assert needle in lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["eval", "convert"])
def test_verbose_shows_the_traceback(command, monkeypatch):
    result = _invoke(monkeypatch, command, ValueError("a bad value 1e9"), "-v")
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and "a bad value 1e9" in result.stderr
    assert [ln for ln in result.stderr.splitlines() if ln.startswith("error:")] == [
        "error: a bad value 1e9 (a value pgseg could not use; -v shows where)"
    ]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_closed_stdout_ends_any_command_quietly(command, monkeypatch):
    result = _invoke(monkeypatch, command, BrokenPipeError(errno.EPIPE, "Broken pipe"))
    assert result.exit_code == 0, result.output
    assert result.output == ""


def test_a_closed_pipe_does_not_silence_the_next_command_of_the_process(monkeypatch):
    from pgseg_cli._console import _Console, out

    with pytest.raises(Exception):
        _Console.on_broken_pipe(out)  # what rich calls on a closed stdout: silences the console, exits
    assert out.quiet
    import pgseg_core.checkpoint

    summary = {"notes": [], "source_format": "pgseg", "weights": "c.safetensors", "config": "c.json",
               "tensors": 1, "parameters": 1}  # fmt: skip
    monkeypatch.setattr(pgseg_core.checkpoint, "convert_checkpoint", lambda *a, **k: summary)
    result = runner.invoke(app, ["convert", "ck.pt", "c"])
    assert result.exit_code == 0 and "converted pgseg -> c.safetensors" in result.stdout


def test_a_bug_is_not_hidden():
    """Anything that is not a user-path or user-value error keeps its traceback (it is a bug to report)."""
    from pgseg_cli._console import handle_errors

    @handle_errors
    def broken() -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        broken()


class _ClosedPipe:
    """A file whose reader went away."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    def isatty(self) -> bool:
        return False


def test_the_consoles_on_a_closed_pipe():
    """rich alone would exit with status 1 at the first write to a closed pipe: results (stdout) end the
    command with status 0, logs and progress (stderr) are dropped and the command carries on."""
    import typer

    from pgseg_cli._console import _Console

    results = _Console(file=_ClosedPipe())
    with pytest.raises(typer.Exit) as info:
        results.print("mIoU table")
    assert info.value.exit_code == 0 and results.quiet
    logs = _Console(file=_ClosedPipe(), stderr=True)
    logs.print("INFO something")  # no exception
    logs.print("INFO more")
    assert logs.quiet


# ------------------------------------------------------------------------------------------------------
# real processes: pgseg eval (tests/_eval_child.py: the CLI's main() on an in-memory dataset)


def _child(args: list, tmp_path: Path, n_images: int, **popen) -> tuple[subprocess.Popen, Path]:
    mark = tmp_path / "started"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PGSEG_TEST_NIMG": str(n_images),
        "PGSEG_TEST_MARK": str(mark),
        "PGSEG_TEST_MARK_AT": "2",
    }
    cmd = [sys.executable, str(ROOT / "tests" / "_eval_child.py"), *map(str, args)]
    return subprocess.Popen(cmd, env=env, **popen), mark


def _eval_args(ck: Path, tmp_path: Path, *extra) -> list:
    return ["eval", "--checkpoint", ck, "--dataset", "pc60", "--data-root", tmp_path, *FAST, *extra]


def test_sigterm_ends_a_running_eval_with_143_and_no_traceback(tiny_checkpoint, tmp_path):
    from pgseg_core.cache.features import FeatureCache

    out, cache = tmp_path / "metrics.json", tmp_path / "f.h5"
    args = _eval_args(tiny_checkpoint, tmp_path, "--output", out, "--cache", cache)
    child, mark = _child(args, tmp_path, 400, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not mark.exists() and child.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert mark.exists(), "the evaluation loop never started"
        child.send_signal(signal.SIGTERM)
        stdout, stderr = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 143, (child.returncode, stderr)
    assert "Traceback" not in stderr and "error:" not in stderr and stdout == ""
    assert not out.exists() and not [p for p in tmp_path.glob(".*.tmp")]
    with FeatureCache.open(cache) as ro:  # closed cleanly: opens, complete images only
        assert 2 <= len(ro) < 400 and ro.dropped == 0


def test_a_closed_stdout_after_eval_exits_0_with_the_metrics_written(tiny_checkpoint, tmp_path):
    out = tmp_path / "metrics.json"
    child, _ = _child(
        _eval_args(tiny_checkpoint, tmp_path, "--output", out), tmp_path, 3,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    child.stdout.close()  # the reader went away (pgseg eval ... | head -0)
    try:
        stderr = child.stderr.read().decode()
        child.wait(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, stderr
    assert "Traceback" not in stderr and "error:" not in stderr
    assert json.loads(out.read_text())["splits"]["val"]["num_images"] == 3


# ------------------------------------------------------------------------------------------------------
# a SIGTERM whose SystemExit a finaliser swallowed is delivered again


def test_a_swallowed_sigterm_is_delivered_again(monkeypatch):
    import types

    import pgseg_cli

    sent = []
    monkeypatch.setattr(pgseg_cli.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    monkeypatch.setattr(pgseg_cli, "_TERMINATED", pgseg_cli.threading.Event())
    pgseg_cli._TERMINATED.set()
    pgseg_cli._unraisable(types.SimpleNamespace(exc_value=SystemExit(143)))
    deadline = time.time() + 5
    while not sent and time.time() < deadline:
        time.sleep(0.01)
    assert sent == [(os.getpid(), signal.SIGTERM)]


def test_other_unraisable_errors_are_still_reported(monkeypatch):
    import types

    import pgseg_cli

    reported = []
    monkeypatch.setattr(pgseg_cli.sys, "__unraisablehook__", reported.append)
    monkeypatch.setattr(pgseg_cli, "_TERMINATED", pgseg_cli.threading.Event())
    args = types.SimpleNamespace(exc_value=SystemExit(143))  # no SIGTERM came: not ours to resend
    pgseg_cli._unraisable(args)
    assert reported == [args]


def test_a_command_that_finished_after_sigterm_still_exits_143(monkeypatch):
    import pgseg_cli
    import pgseg_cli.app

    monkeypatch.setattr(pgseg_cli, "_TERMINATED", pgseg_cli.threading.Event())
    monkeypatch.setattr(pgseg_cli.app, "main", lambda: pgseg_cli._TERMINATED.set())
    old_handler, old_hook = signal.getsignal(signal.SIGTERM), sys.unraisablehook
    try:
        with pytest.raises(SystemExit) as e:
            pgseg_cli.main()
    finally:
        signal.signal(signal.SIGTERM, old_handler)
        sys.unraisablehook = old_hook
    assert e.value.code == 143
