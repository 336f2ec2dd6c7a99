"""Kill, closed-pipe, full-disk and bad-path behaviour of ``pgseg segment`` and ``pgseg visualize-prototypes``
(issue 13, docs/RELIABILITY.md).

The signal and pipe tests run the real CLI in a subprocess (``python -m pgseg_cli``) on the pgseg-tiny preset
with random weights; the others run it in-process. Every subprocess is bounded in time and killed on failure.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pgseg_cli.app import app

ROOT = Path(__file__).resolve().parents[1]
LINUX = sys.platform.startswith("linux")
linux_only = pytest.mark.skipif(not LINUX, reason="reads /proc and relies on PR_SET_PDEATHSIG")
N_IMAGES = 30
N_MANY = 80
runner = CliRunner()


# --------------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    """In-process runs with one intra-op thread (tiny models run far faster without contention)."""


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """30 tiny random images (a run over them lasts long enough to be interrupted)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / f"im{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """80 distinct tiny images (inputs naming the same file twice are segmented once): a run that is
    still going when it is signalled."""
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(1)
    for i in range(N_MANY):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / f"m{i:03d}.png")
    return root


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "pgseg_cli", *[str(a) for a in args]]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def seg_args(ckpt: Path, out: Path, *inputs, workers: int = 0) -> list:
    return [
        "segment", *inputs, "-c", ckpt, "-o", out, "--classes", "cat,dog,sky", "--device", "cpu",
        "--workers", workers, "--batch-size", "2",
    ]  # fmt: skip


def run_inproc(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def one_error_line(result) -> str:
    assert "Traceback" not in result.output, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def children_of(pid: int) -> set[int]:
    """PIDs of the child processes of ``pid`` (every thread's children)."""
    kids: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids.update(int(k) for k in (task / "children").read_text().split())
        except OSError:
            pass
    return kids


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(cond, timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


def kill_all(proc: subprocess.Popen, pids: set[int]) -> None:
    """Cleanup after a failed assertion: end the run and the workers this test started."""
    for pid in [proc.pid, *pids]:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    proc.wait(timeout=30)


def dead_pid() -> int:
    """The PID of a process that has ended (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def temps_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".*.tmp"))


# --------------------------------------------------------------------------------------------------------
# a closed stdout


@linux_only
@pytest.mark.parametrize("workers", [0, 2])
def test_closed_stdout_ends_segment_quietly(tiny_checkpoint, photos, tmp_path, workers):
    """``pgseg segment ... --jsonl | head -2``: exit 0, no message, no traceback, workers gone."""
    out = tmp_path / "out"
    with open(tmp_path / "stderr.txt", "wb") as errf:
        proc = subprocess.Popen(
            cli(*seg_args(tiny_checkpoint, out, photos, workers=workers), "--jsonl"),
            stdout=subprocess.PIPE, stderr=errf, env=env(),
        )  # fmt: skip
        kids: set[int] = set()
        try:
            lines = [proc.stdout.readline() for _ in range(2)]
            kids = children_of(proc.pid)
            proc.stdout.close()  # the reader goes away, as head does
            rc = proc.wait(timeout=120)
        except BaseException:
            kill_all(proc, kids)
            raise
    stderr = (tmp_path / "stderr.txt").read_text()
    assert rc == 0, stderr
    assert "Traceback" not in stderr and "error" not in stderr.lower(), stderr
    assert json.loads(lines[0])["status"] == "ok"
    assert len(list(out.glob("*_label.png"))) < N_IMAGES  # the closed pipe ended the run
    assert len(kids) == workers
    assert wait_until(lambda: not any(running(k) for k in kids), 10)


def test_closed_stdout_after_the_summary_line_exits_zero(tiny_checkpoint, photos, tmp_path):
    """The closing summary on stdout (no --jsonl) to a reader that is gone: exit 0, not rich's exit 1."""
    proc = subprocess.Popen(
        cli(*seg_args(tiny_checkpoint, tmp_path / "out", photos / "im00.png")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(),
    )  # fmt: skip
    proc.stdout.close()
    try:
        stderr = proc.communicate(timeout=120)[1].decode()
    except BaseException:
        kill_all(proc, set())
        raise
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "error" not in stderr.lower(), stderr


# --------------------------------------------------------------------------------------------------------
# signals: no orphan decode workers


@linux_only
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_decode_workers_end_with_a_signalled_segment(tiny_checkpoint, many, tmp_path, sig):
    """SIGTERM or SIGKILL of a running segment: its two decode workers end with it (no ~600 MB orphans)."""
    out = tmp_path / "out"
    with open(tmp_path / "stderr.txt", "wb") as errf:
        proc = subprocess.Popen(
            cli(*seg_args(tiny_checkpoint, out, many, workers=2)),
            stdout=subprocess.DEVNULL, stderr=errf, env=env(),
        )  # fmt: skip
        kids: set[int] = set()
        try:
            busy = lambda: any(out.glob("*_label.png")) or proc.poll() is not None  # noqa: E731
            assert wait_until(busy, 120, step=0.01)  # the workers are decoding ahead of the model
            kids = children_of(proc.pid)
            assert len(kids) == 2 and proc.poll() is None, (tmp_path / "stderr.txt").read_text()
            proc.send_signal(sig)
            rc = proc.wait(timeout=60)
            gone = wait_until(lambda: not any(running(k) for k in kids), 3)  # torch's own watchdog: 5 s+
        finally:
            kill_all(proc, kids)
    assert rc == (128 + sig if sig == signal.SIGTERM else -sig)  # interrupted, not finished
    assert gone, f"decode workers {sorted(k for k in kids if running(k))} outlived the run"
    if sig == signal.SIGTERM:
        assert "Traceback" not in (tmp_path / "stderr.txt").read_text()


_FORKER = """
import os, sys, time
from pgseg_core.utils.process import end_with_parent
parent = int(sys.argv[1]) if len(sys.argv) > 1 else os.getpid()
child = os.fork()
if child == 0:
    end_with_parent(parent)
    print(os.getpid(), flush=True)
    time.sleep(120)
    os._exit(0)
_, status = os.waitpid(child, 0)
print("exit", os.waitstatus_to_exitcode(status), flush=True)
"""


@linux_only
def test_a_worker_ends_when_its_parent_is_killed():
    """end_with_parent: a sleeping child of a process killed with SIGKILL ends at once (the kernel signals
    it), where without it it would sleep on, an orphan."""
    proc = subprocess.Popen([sys.executable, "-c", _FORKER], stdout=subprocess.PIPE, env=env())
    child = 0
    try:
        child = int(proc.stdout.readline())
        proc.kill()
        proc.wait(timeout=30)
        assert wait_until(lambda: not running(child), 3), "the child outlived its killed parent"
    finally:
        kill_all(proc, {child} if child else set())


def test_a_worker_whose_parent_is_already_gone_exits():
    done = subprocess.run(
        [sys.executable, "-c", _FORKER, "1"], capture_output=True, text=True, env=env(), timeout=60
    )  # a parent PID that is not the child's parent: it exits with status 1 instead of running on
    assert done.stdout.split() == ["exit", "1"], done.stderr


# --------------------------------------------------------------------------------------------------------
# kill -9 at a random point, then --skip-existing


@linux_only
def test_kill_9_then_skip_existing_completes_every_image_once(tiny_checkpoint, many, tmp_path):
    """kill -9 after a random number of images, rerun with --skip-existing: every image exactly once, every
    output decodes, nothing done twice, no temporary file left."""
    inputs = many
    out = tmp_path / "out"
    fmts = ("--format", "png,overlay,json,coco-rle")
    after = random.randint(1, 30)  # kill once this many label PNGs exist
    with open(tmp_path / "first.jsonl", "wb") as first:
        proc = subprocess.Popen(
            cli(*seg_args(tiny_checkpoint, out, inputs, workers=2), *fmts, "--jsonl"),
            stdout=first, stderr=subprocess.DEVNULL, env=env(),
        )  # fmt: skip
        kids: set[int] = set()
        try:
            ready = lambda: len(list(out.glob("*_label.png"))) >= after or proc.poll() is not None  # noqa: E731
            assert wait_until(ready, 120, step=0.005)
            kids = children_of(proc.pid)
            proc.kill()
            proc.wait(timeout=30)
        finally:
            kill_all(proc, kids)
    written = [json.loads(ln) for ln in (tmp_path / "first.jsonl").read_text().splitlines() if ln.strip()]
    assert len(written) < N_MANY, f"the run ended before kill -9 (after {after})"

    result = run_inproc(*seg_args(tiny_checkpoint, out, inputs), *fmts, "--skip-existing", "--jsonl")
    assert result.exit_code == 0, result.output
    records = [json.loads(ln) for ln in result.stdout.splitlines() if ln.startswith("{")]
    assert sorted(r["image"] for r in records) == sorted(str(p) for p in inputs.glob("*.png"))  # each once
    assert {r["status"] for r in records} <= {"ok", "skipped"}
    skipped = {r["image"] for r in records if r["status"] == "skipped"}
    assert {r["image"] for r in written} <= skipped, f"after {after}"  # nothing done twice
    for image in inputs.glob("*.png"):
        stem = out / image.stem
        for png in (f"{stem}_label.png", f"{stem}_overlay.png"):
            Image.open(png).load()
        json.loads(Path(f"{stem}.json").read_text())
        json.loads(Path(f"{stem}_rle.json").read_text())
    assert temps_under(out) == [], f"after {after}"


# --------------------------------------------------------------------------------------------------------
# stale temporary files, permissions


def test_stale_temps_of_dead_runs_are_removed(tiny_checkpoint, photos, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "textcache"
    (out / "sub").mkdir(parents=True)
    cache.mkdir()
    sub_in = tmp_path / "in" / "sub"
    sub_in.mkdir(parents=True)
    (sub_in / "x.png").symlink_to(photos / "im00.png")
    gone, live = dead_pid(), os.getpid()
    stale = [out / f".a_label.png.{gone}.ab12cd34.tmp", out / "sub" / f".x.json.{gone}.zz.tmp"]
    stale.append(cache / f".text-0.safetensors.{gone}.q1.tmp")
    kept = [out / f".b.png.{live}.ab12cd34.tmp", out / "notes.tmp", out / ".other.tmp"]
    for p in stale + kept:
        p.write_bytes(b"partial")
    result = run_inproc(*seg_args(tiny_checkpoint, out, tmp_path / "in"), "-r", "--text-cache", cache)
    assert result.exit_code == 0, result.output
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in kept)  # a live run's temp files and files not ours stay
    assert (out / "sub" / "x_label.png").is_file()


@linux_only
@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_outputs_have_the_umask_permissions(tiny_checkpoint, photos, tmp_path, umask):
    """Label PNG, overlay, JSON, RLE and the text cache are 0o666 & ~umask (were 0600 from mkstemp). A
    subprocess, since the umask is read when the library is imported."""
    out = tmp_path / "out"
    before = os.umask(umask)
    try:
        done = subprocess.run(
            cli(*seg_args(tiny_checkpoint, out, photos / "im00.png"), "--format", "png,overlay,json,rle"),
            capture_output=True, env=env(), timeout=120,
        )  # fmt: skip
    finally:
        os.umask(before)
    assert done.returncode == 0, done.stderr.decode()
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) == 5  # 4 outputs + the text cache
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {
        p.name: oct(0o666 & ~umask) for p in files
    }


# --------------------------------------------------------------------------------------------------------
# bad --out paths: one line before any model work


def _bad_outs(tmp_path: Path) -> dict[str, Path]:
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    outs = {"a file": a_file, "under a file": a_file / "sub"}
    if LINUX:
        outs["uncreatable"] = Path("/proc/pgseg-out")
    return outs


@pytest.mark.parametrize("command", ["segment", "visualize-prototypes"])
def test_a_bad_out_is_one_line_before_any_model_work(tiny_checkpoint, photos, tmp_path, monkeypatch, command):
    import pgseg_core.checkpoint as checkpoint_pkg
    import pgseg_core.segment.segmenter as segmenter_mod

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(checkpoint_pkg, "load_checkpoint", no_model)
    monkeypatch.setattr(segmenter_mod.Segmenter, "load", no_model)
    for why, out in _bad_outs(tmp_path).items():
        if command == "segment":
            result = run_inproc(*seg_args(tiny_checkpoint, out, photos / "im00.png"))
        else:
            args = ("visualize-prototypes", photos / "im00.png", "-c", tiny_checkpoint, "--out", out)
            result = run_inproc(*args, "--device", "cpu")
        assert result.exit_code == 1, (why, result.output)
        line = one_error_line(result)
        assert str(out) in line, (why, line)
        assert "choose" in line or "folder" in line, (why, line)


# --------------------------------------------------------------------------------------------------------
# a full disk


def _full_disk_after(monkeypatch, n_ok: int) -> list[str]:
    """PNG saves fail with ENOSPC after ``n_ok`` successful ones, writing part of the file first."""
    real_save = Image.Image.save
    calls: list[str] = []

    def save(self, fp, *a, **k):
        calls.append(str(fp))
        if len(calls) > n_ok:
            Path(fp).write_bytes(b"\x89PNG partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *a, **k)

    monkeypatch.setattr(Image.Image, "save", save)
    return calls


def test_a_full_disk_stops_segment_with_one_line(tiny_checkpoint, photos, tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = _full_disk_after(monkeypatch, 3)  # image 0: label + overlay, image 1: label; then full
    result = run_inproc(*seg_args(tiny_checkpoint, out, photos), "--format", "png,overlay,json")
    assert result.exit_code == 1, result.output
    line = one_error_line(result)
    assert "No space left" in line and "free space" in line and "im01_overlay.png" in line, line
    assert len(calls) == 4  # the run stopped at the first failed write
    Image.open(out / "im00_label.png").load()
    Image.open(out / "im00_overlay.png").load()
    json.loads((out / "im00.json").read_text())
    assert not (out / "im01_overlay.png").exists() and not (out / "im02_label.png").exists()
    assert temps_under(out) == []


# --------------------------------------------------------------------------------------------------------
# visualize-prototypes: stale temps, index.html last


def _viz(ckpt: Path, out: Path, *inputs):
    args = ("visualize-prototypes", *inputs, "-c", ckpt, "--out", out, "--patches", "2", "--device", "cpu")
    return run_inproc(*args, "--short-side", "48")


def test_visualize_removes_stale_temps_and_writes_index_last(tiny_checkpoint, photos, tmp_path, monkeypatch):
    import pgseg_core.utils.io as io_mod

    out = tmp_path / "viz"
    (out / "images").mkdir(parents=True)
    gone = dead_pid()
    stale = [out / f".index.html.{gone}.x1.tmp", out / "images" / f".im00_panel.png.{gone}.x2.tmp"]
    live = out / f".summary.json.{os.getpid()}.x3.tmp"
    for p in [*stale, live]:
        p.write_bytes(b"partial")
    order: list[str] = []
    real = io_mod.atomic_write

    def recording(path, writer):
        order.append(Path(path).name)
        return real(path, writer)

    monkeypatch.setattr(io_mod, "atomic_write", recording)
    import pgseg_core.viz.palette as palette_mod
    import pgseg_core.viz.prototype_report as report_mod

    monkeypatch.setattr(report_mod, "atomic_write", recording)
    monkeypatch.setattr(palette_mod, "atomic_write", recording)
    result = _viz(tiny_checkpoint, out, photos / "im00.png", photos / "im01.png")
    assert result.exit_code == 0, result.output
    assert not any(p.exists() for p in stale) and live.exists()
    assert order[-1] == "index.html" and order.count("index.html") == 1, order
    assert {"im00_panel.png", "im01_panel.png", "summary.json"} <= set(order)


def test_visualize_interrupted_by_a_full_disk_leaves_no_index(tiny_checkpoint, photos, tmp_path, monkeypatch):
    out = tmp_path / "viz"
    _full_disk_after(monkeypatch, 1)  # the first panel is written, the next PNG fails
    result = _viz(tiny_checkpoint, out, photos / "im00.png", photos / "im01.png")
    assert result.exit_code == 1, result.output
    line = one_error_line(result)
    assert "No space left" in line and "free space" in line, line
    assert not (out / "index.html").exists()  # never a page linking to files that were not written
    assert temps_under(out) == []
