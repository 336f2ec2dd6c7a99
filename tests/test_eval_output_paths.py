"""Output paths of ``eval``, ``convert`` and ``export-onnx`` and the path of eval's feature cache (issue 13).

A path that cannot be written is one ``error:`` line (exit 1) before any work: before the first image is
encoded, before the source checkpoint is read. A write that fails after the work (a full disk, simulated by
a fault-injecting writer) loses nothing: eval prints its tables and then the one error line, and an earlier
metrics file, converted pair or ONNX export stays as it was. A run killed between the two files of a pair
never leaves a config / sidecar beside files it does not describe.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _eval_fakes import FakeDataset
from pgseg_cli.app import app

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--device", "cpu", "--eval.short_side", "64", "--eval.crop", "64", "--eval.stride", "32"]
PROC = Path("/proc/pgseg-no-such-dir")  # a folder nobody (not even root) can create

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def one_error_line(result, *needles: str, code: int = 1) -> str:
    """The single ``error:`` line (the last line on stderr) of a failed command without a traceback."""
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    for needle in needles:
        assert needle.lower() in errors[0].lower(), (needle, errors[0])
    return errors[0]


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob(".*.tmp")]


class SpyDataset(FakeDataset):
    """FakeDataset that counts the images handed out (none handed out: nothing was encoded)."""

    def __init__(self, n: int = 2) -> None:
        super().__init__(n)
        self.iterated = 0

    def __iter__(self):
        for sample in self.samples:
            self.iterated += 1
            yield sample


@pytest.fixture
def opened(monkeypatch) -> list[SpyDataset]:
    """The datasets eval opened (``pgseg_core.api._open_dataset`` replaced by :class:`SpyDataset`)."""
    import pgseg_core.api as api

    datasets: list[SpyDataset] = []

    def fake_open(name, root, split):
        datasets.append(SpyDataset(2))
        return datasets[-1]

    monkeypatch.setattr(api, "_open_dataset", fake_open)
    return datasets


def eval_args(ck: Path, root: Path, *extra) -> list:
    return ["eval", "--checkpoint", ck, "--dataset", "pc60", "--data-root", root, *FAST, *extra]


def unwritable(kind: str, tmp_path: Path, name: str) -> Path:
    """A path that cannot be written: under /proc, under a regular file, or an existing folder."""
    if kind == "proc":
        return PROC / name
    if kind == "under_file":
        (tmp_path / "somefile").write_text("not a folder")
        return tmp_path / "somefile" / name
    folder = tmp_path / name
    folder.mkdir()
    return folder


# ------------------------------------------------------------------------------------------------------
# eval: the metrics file


@pytest.mark.parametrize("kind", ["proc", "under_file", "folder"])
def test_eval_unwritable_output_is_one_line_before_any_image(kind, tiny_checkpoint, tmp_path, opened):
    out = unwritable(kind, tmp_path, "metrics.json")
    result = invoke(*eval_args(tiny_checkpoint, tmp_path, "--output", out))
    line = one_error_line(result)
    assert str(out if kind == "folder" else out.parent) in line
    assert opened == []  # refused before the checkpoint was loaded and the dataset opened


def test_eval_default_metrics_path_that_cannot_be_written_is_refused_before_evaluating(
    tiny_checkpoint, tmp_path, opened
):
    run = tmp_path / "run"
    run.mkdir()
    ck = run / "tiny.pt"
    shutil.copy(tiny_checkpoint, ck)
    (run / "metrics_pc60_groupvit.json").mkdir()  # something in the way of the default metrics file
    result = invoke(*eval_args(ck, tmp_path))
    one_error_line(result, str(run / "metrics_pc60_groupvit.json"), "beside the checkpoint", "--output")
    assert opened == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_eval_checkpoint_in_a_read_only_folder_suggests_output(tiny_checkpoint, tmp_path, opened):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_checkpoint, run / "tiny.pt")
    run.chmod(0o555)
    try:
        result = invoke(*eval_args(run / "tiny.pt", tmp_path))
    finally:
        run.chmod(0o755)
    one_error_line(result, "permission", "beside the checkpoint", "--output")
    assert opened == []


def _full_disk_json(path, data):
    """atomic_write_json whose write fails half-way with ENOSPC (a disk that filled up meanwhile)."""
    from pgseg_core.utils.io import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write('{"splits": ')
        raise OSError(errno.ENOSPC, "No space left on device")

    return atomic_write(path, write)


def test_eval_metrics_write_failure_prints_the_tables_then_one_error(
    tiny_checkpoint, tmp_path, opened, monkeypatch
):
    import pgseg_core.eval.report as report_mod

    out = tmp_path / "metrics.json"
    out.write_text('{"old": true}\n')
    monkeypatch.setattr(report_mod, "atomic_write_json", _full_disk_json)
    result = invoke(*eval_args(tiny_checkpoint, tmp_path, "--output", out, "--no-per-class"))
    line = one_error_line(result, str(out), "disk is full", "printed above")
    assert opened[0].iterated == 2
    table = result.output.index("mIoU (%)")
    assert table < result.output.index(line) and "val" in result.output[table:]
    assert "metrics written to" not in result.output
    assert out.read_text() == '{"old": true}\n' and no_temp_files(tmp_path)


def test_evaluate_checkpoint_keeps_the_report_when_the_write_fails(
    tiny_checkpoint, tmp_path, opened, monkeypatch
):
    import pgseg_core.eval.report as report_mod
    from pgseg_core.api import evaluate_checkpoint
    from pgseg_core.eval.report import MetricsWriteError

    monkeypatch.setattr(report_mod, "atomic_write_json", _full_disk_json)
    overrides = {"eval.short_side": 64, "eval.crop": 64, "eval.stride": 32}
    with pytest.raises(MetricsWriteError) as info:
        evaluate_checkpoint(tiny_checkpoint, dataset="pc60", data_root=tmp_path, device="cpu",
                            eval_overrides=overrides, out=tmp_path / "m.json")  # fmt: skip
    report = info.value.report
    assert report.splits["val"]["num_images"] == 2 and report.splits["val"]["mIoU"] >= 0
    assert report.write_error == str(info.value) and report.written_to == ""
    assert not (tmp_path / "m.json").exists() and no_temp_files(tmp_path)


def test_eval_removes_temp_files_of_killed_writers_only(tiny_checkpoint, tmp_path, opened):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".metrics.json.{dead.pid}.abcd1234.tmp"
    live = tmp_path / f".metrics.json.{os.getpid()}.abcd1234.tmp"
    stale.write_text("half")
    live.write_text("being written")
    result = invoke(*eval_args(tiny_checkpoint, tmp_path, "--output", tmp_path / "metrics.json"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "metrics.json").read_text())["splits"]["val"]["num_images"] == 2
    assert not stale.exists() and live.exists()


# ------------------------------------------------------------------------------------------------------
# eval: the feature cache


@pytest.mark.parametrize("kind", ["proc", "under_file"])
def test_eval_cache_that_cannot_be_written_is_one_line_before_any_image(
    kind, tiny_checkpoint, tmp_path, opened
):
    cache = unwritable(kind, tmp_path, "features.h5")
    result = invoke(*eval_args(tiny_checkpoint, tmp_path, "--output", tmp_path / "m.json", "--cache", cache))
    one_error_line(result, "feature cache", str(cache))
    assert [d.iterated for d in opened] == [0]
    assert not (tmp_path / "m.json").exists()


def test_eval_cache_held_by_another_process_is_one_line(tiny_checkpoint, tmp_path, opened):
    cache = tmp_path / "features.h5"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import h5py, sys, time; f = h5py.File(sys.argv[1], 'a'); print('open', "
         "flush=True); time.sleep(120)", str(cache)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "open"
        result = invoke(
            *eval_args(tiny_checkpoint, tmp_path, "--output", tmp_path / "m.json", "--cache", cache)
        )
    finally:
        holder.kill()
        holder.wait()
    one_error_line(result, str(cache), "another process")
    assert [d.iterated for d in opened] == [0]


def test_eval_cache_on_a_nearly_full_disk_stops_whole_and_resumes(
    tiny_checkpoint, tmp_path, opened, monkeypatch
):
    """HDF5 can crash the process after a write that failed for a full disk: the cache refuses the entry
    that would not fit (one line), keeps the images before it, and the next run resumes from them."""
    from types import SimpleNamespace

    import pgseg_core.cache.features as features

    real = shutil.disk_usage
    calls: list = []

    def usage(path):  # room for the file and the first image, then the disk is full
        calls.append(path)
        return real(path)._replace(free=4096) if len(calls) > 2 else real(path)

    monkeypatch.setattr(features, "shutil", SimpleNamespace(disk_usage=usage))
    cache, out = tmp_path / "f.h5", tmp_path / "m.json"
    result = invoke(*eval_args(tiny_checkpoint, tmp_path, "--output", out, "--cache", cache))
    one_error_line(result, str(cache), "nearly full", "cached so far are kept")
    assert not out.exists()
    monkeypatch.undo()
    monkeypatch.setattr(features, "shutil", shutil)
    import pgseg_core.api as api

    monkeypatch.setattr(api, "_open_dataset", lambda name, root, split: SpyDataset(2))
    result = invoke(*eval_args(tiny_checkpoint, tmp_path, "--output", out, "--cache", cache))
    assert result.exit_code == 0, result.output
    m = json.loads(out.read_text())["cache"]
    assert (m["images_from_cache"], m["images_encoded"]) == (1, 1)


# ------------------------------------------------------------------------------------------------------
# convert


@pytest.mark.parametrize("kind", ["proc", "under_file", "folder"])
def test_convert_to_an_unwritable_stem_is_one_line(kind, tiny_checkpoint, tmp_path, monkeypatch):
    import pgseg_core.checkpoint.convert as convert_mod

    read: list = []
    monkeypatch.setattr(convert_mod, "read_any_checkpoint", lambda *a, **k: read.append(a))
    dst = unwritable(kind, tmp_path, "conv.safetensors")
    result = invoke("convert", tiny_checkpoint, dst)
    one_error_line(result, str(dst if kind == "folder" else dst.parent))
    assert read == []  # refused before the source was read


def _convert_twice(tiny_checkpoint, tmp_path, monkeypatch, fault: str):
    """Convert once for real, then again with ``fault`` injected; returns (dst stem, old bytes, result)."""
    import pgseg_core.checkpoint.convert as convert_mod

    dst = tmp_path / "out" / "conv"
    first = invoke("convert", tiny_checkpoint, dst)
    assert first.exit_code == 0, first.output
    old = {p.name: p.read_bytes() for p in dst.parent.iterdir()}
    if fault == "weights":
        import safetensors.torch
        from safetensors import SafetensorError

        def full(tensors, tmp, metadata=None):
            Path(tmp).write_bytes(b"half a file")
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

        monkeypatch.setattr(safetensors.torch, "save_file", full)
    else:  # the weights are in place, then the process dies before the config is written

        def killed(path, data):
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(convert_mod, "atomic_write_json", killed)
    return dst, old, invoke("convert", tiny_checkpoint, dst)


def test_convert_full_disk_keeps_the_old_pair(tiny_checkpoint, tmp_path, monkeypatch):
    dst, old, result = _convert_twice(tiny_checkpoint, tmp_path, monkeypatch, "weights")
    one_error_line(result, f"{dst}.safetensors", "disk may be full")
    assert {p.name: p.read_bytes() for p in dst.parent.iterdir()} == old  # both files untouched
    assert no_temp_files(dst.parent)


def test_convert_failing_after_the_weights_leaves_no_stale_config(tiny_checkpoint, tmp_path, monkeypatch):
    dst, old, result = _convert_twice(tiny_checkpoint, tmp_path, monkeypatch, "config")
    one_error_line(result, f"{dst}.json")
    assert sorted(p.name for p in dst.parent.iterdir()) == ["conv.safetensors"]  # no config of other weights
    assert no_temp_files(dst.parent)


_KILLED_CONVERT = """
import os, sys
from pathlib import Path
import safetensors.torch
def killed(tensors, tmp, metadata=None):
    Path(tmp).write_bytes(b"half a file")
    os._exit(9)  # kill -9 in the middle of the weights
safetensors.torch.save_file = killed
from pgseg_core.checkpoint import convert_checkpoint
convert_checkpoint(sys.argv[1], sys.argv[2])
"""


def test_convert_killed_while_writing_keeps_the_old_pair_and_the_next_run_cleans_up(
    tiny_checkpoint, tmp_path
):
    dst = tmp_path / "conv"
    assert invoke("convert", tiny_checkpoint, dst).exit_code == 0
    weights, config = Path(f"{dst}.safetensors"), Path(f"{dst}.json")
    assert weights.stat().st_mode == config.stat().st_mode  # the umask's mode, not safetensors' 0600
    old = {p.name: p.read_bytes() for p in (weights, config)}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.run([sys.executable, "-c", _KILLED_CONVERT, str(tiny_checkpoint), str(dst)], env=env,
                           capture_output=True, timeout=300)  # fmt: skip
    assert child.returncode == 9, child.stderr
    assert {p.name: p.read_bytes() for p in (weights, config)} == old
    assert len(list(tmp_path.glob(".conv.safetensors.*.tmp"))) == 1  # what kill -9 leaves
    assert invoke("convert", tiny_checkpoint, dst).exit_code == 0
    assert no_temp_files(tmp_path)  # removed by the next run


# ------------------------------------------------------------------------------------------------------
# export-onnx


@pytest.mark.parametrize("kind", ["proc", "under_file", "folder"])
def test_export_onnx_to_an_unwritable_path_is_one_line(kind, tiny_checkpoint, tmp_path, monkeypatch):
    import pgseg_core.checkpoint as checkpoint_mod

    loaded: list = []
    monkeypatch.setattr(checkpoint_mod, "load_checkpoint", lambda *a, **k: loaded.append(a))
    out = unwritable(kind, tmp_path, "enc.onnx")
    result = invoke("export-onnx", "--checkpoint", tiny_checkpoint, "-o", out, "--size", "64")
    one_error_line(result, str(out if kind == "folder" else out.parent))
    assert loaded == []  # refused before the checkpoint was read


def _fake_onnx_export(monkeypatch, fail_graph: bool):
    """torch.onnx.export that writes a stand-in graph (or fails with a full disk), no onnx check."""
    import onnx
    import torch

    def export(model, args, f, **kwargs):
        if fail_graph:
            raise OSError(errno.ENOSPC, "No space left on device")
        Path(f).write_bytes(b"new graph")

    monkeypatch.setattr(torch.onnx, "export", export)
    monkeypatch.setattr(onnx.checker, "check_model", lambda *a, **k: None)


def test_export_onnx_full_disk_keeps_the_old_export(tiny_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "enc.onnx"
    out.write_bytes(b"old graph")
    out.with_suffix(".json").write_text('{"old": true}')
    _fake_onnx_export(monkeypatch, fail_graph=True)
    result = invoke("export-onnx", "--checkpoint", tiny_checkpoint, "-o", out, "--size", "64")
    one_error_line(result, str(out), "disk is full")
    assert out.read_bytes() == b"old graph" and out.with_suffix(".json").read_text() == '{"old": true}'
    assert no_temp_files(tmp_path)


def test_export_onnx_failing_before_the_sidecar_leaves_a_graph_the_backend_refuses(
    tiny_checkpoint, tmp_path, monkeypatch
):
    import pgseg_core.segment.onnx as onnx_mod
    from pgseg_core.errors import CheckpointError

    out = tmp_path / "enc.onnx"
    out.write_bytes(b"old graph")
    out.with_suffix(".json").write_text('{"format": "pgseg-onnx-image-encoder", "checkpoint_digest": "x"}')
    _fake_onnx_export(monkeypatch, fail_graph=False)

    def killed(path, data):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(onnx_mod, "atomic_write_json", killed)
    result = invoke("export-onnx", "--checkpoint", tiny_checkpoint, "-o", out, "--size", "64")
    one_error_line(result, str(out.with_suffix(".json")))
    assert out.read_bytes() == b"new graph" and not out.with_suffix(".json").exists()
    pytest.importorskip("onnxruntime")
    with pytest.raises(CheckpointError, match="sidecar"):
        onnx_mod.OnnxEncoder(out)


# ------------------------------------------------------------------------------------------------------
# kill -9 of a running eval: the metrics file is old or new, the cache resumes, no temp file stays


def test_eval_killed_at_a_random_point_then_rerun_gives_the_uninterrupted_result(
    tiny_checkpoint, tmp_path, monkeypatch
):
    import random

    import pgseg_core.api as api

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PGSEG_TEST_NIMG": "6", "PGSEG_TEST_MARK_AT": "1"}
    out, cache, mark = tmp_path / "metrics.json", tmp_path / "f.h5", tmp_path / "started"
    out.write_text('{"old": true}\n')
    args = [*eval_args(tiny_checkpoint, tmp_path), "--output", out, "--cache", cache, "--no-per-class"]
    child = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "_eval_child.py"), *map(str, args)],
        env={**env, "PGSEG_TEST_MARK": str(mark)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while not mark.exists() and child.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(random.uniform(0.0, 1.0))  # in the loop, in a cache write or in the final write
        child.kill()
    finally:
        child.wait(timeout=60)
    text = out.read_text()
    assert text == '{"old": true}\n' or json.loads(text)["splits"]["val"]["num_images"] == 6  # never half
    # the same evaluation in this process: resume from the cache, then without any cache
    monkeypatch.setattr(api, "_open_dataset", lambda name, root, split: FakeDataset(6))
    assert invoke(*args).exit_code == 0
    resumed = json.loads(out.read_text())
    assert resumed["cache"]["images"] == 6 and no_temp_files(tmp_path)
    fresh = tmp_path / "fresh.json"
    assert invoke(*args[: args.index("--output")], "--output", fresh).exit_code == 0
    assert (
        resumed["splits"]["val"]["per_class"] == json.loads(fresh.read_text())["splits"]["val"]["per_class"]
    )
