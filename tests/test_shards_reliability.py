"""prep-shards and shard reading under kill -9, a full disk and bad output paths (issue 13).

A shard set is built in ``.OUT.PID.partial`` and published at OUT with index.json last; readers refuse a
shard folder without index.json. Kill tests run ``python -m pgseg_cli``'s ``main`` in a subprocess with the
demo builder pointed at the fake sources of ``_fixtures.make_fake_roots``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_cli import assert_one_line_error
from _fixtures import make_fake_roots
from pgseg_cli.app import app
from pgseg_core.cache.stem import build_stem_cache
from pgseg_core.data.shard_set import recover_shard_set, shard_folder_state
from pgseg_core.data.shards import SplitWriter, resolve_shards
from pgseg_core.data.sources.demo import build_demo_shards
from pgseg_core.data.sources.folder import write_folder_shards
from pgseg_core.errors import DataError, OutputError
from pgseg_core.eval.datasets.coco_object import convert_coco_object
from pgseg_core.eval.datasets.readers import DemoDataset

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()
SMALL = dict(n_train=6, n_val=2, img_size=64, shard_size=4)


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def digest(folder: Path) -> dict[str, str]:
    """{file name: sha256} of a shard folder (index.json included)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def leftovers(parent: Path) -> list[str]:
    """Build folders and temporary files anywhere under ``parent`` (none may remain after a rerun)."""
    return sorted(
        str(p.relative_to(parent))
        for p in parent.rglob("*")
        if p.name.endswith((".partial", ".old", ".tmp")) and "src" not in p.relative_to(parent).parts
    )


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    return make_fake_roots(tmp_path_factory.mktemp("shard-src") / "src")


# ----------------------------------------------------------------------------------------------------------
# publishing


def test_build_is_invisible_until_complete_and_leaves_nothing_beside(tmp_path, roots):
    out = tmp_path / "shards"
    seen = []

    def progress(done, total):
        partial = list(tmp_path.glob(".shards.*.partial"))
        seen.append((out.exists(), len(partial), any((p / "index.json").exists() for p in partial)))

    build_demo_shards(out, seed=1, roots=roots, progress=progress, **SMALL)
    assert seen and all(s == (False, 1, False) for s in seen), seen
    assert (out / "index.json").is_file()
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def test_existing_set_refused_without_overwrite_replaced_with_it(tmp_path, roots):
    out = tmp_path / "shards"
    build_demo_shards(out, seed=1, roots=roots, **{**SMALL, "n_train": 12})
    before = digest(out)
    with pytest.raises(OutputError, match="already holds a shard set"):
        build_demo_shards(out, seed=2, roots=roots, **SMALL)
    assert digest(out) == before
    build_demo_shards(out, seed=2, roots=roots, overwrite=True, **SMALL)
    index = json.loads((out / "index.json").read_text())
    assert index["seed"] == 2
    # the larger old set's extra shard is gone: the folder holds exactly the new set
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["index.json", *(s for e in index["splits"].values() for s in e["shards"])]
    )
    fresh = tmp_path / "fresh"
    build_demo_shards(fresh, seed=2, roots=roots, **SMALL)
    assert digest(out) == digest(fresh)  # byte-identical to a build into a new folder
    assert leftovers(tmp_path) == []


def test_output_folder_rules(tmp_path, roots):
    (tmp_path / "empty").mkdir()
    build_demo_shards(tmp_path / "empty", seed=1, roots=roots, **SMALL)  # an empty folder is used
    assert (tmp_path / "empty" / "index.json").is_file()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"holds files that are not shards \(e.g. notes.txt\)"):
        build_demo_shards(other, seed=1, roots=roots, overwrite=True, **SMALL)
    assert (other / "notes.txt").read_text() == "mine"
    incomplete = tmp_path / "incomplete"  # an older pgseg's interrupted build: tars, no index.json
    incomplete.mkdir()
    (incomplete / "train-000000.tar").write_bytes(b"old")
    assert shard_folder_state(incomplete) == ("incomplete", None)
    with pytest.raises(OutputError, match="shards without index.json"):
        build_demo_shards(incomplete, seed=1, roots=roots, **SMALL)
    build_demo_shards(incomplete, seed=1, roots=roots, overwrite=True, **SMALL)
    assert (incomplete / "index.json").is_file()


@pytest.mark.parametrize("where", ["file", "under-file", "proc"])
def test_bad_out_paths_are_one_line(tmp_path, where):
    (tmp_path / "afile").write_text("x")
    out = {
        "file": tmp_path / "afile",
        "under-file": tmp_path / "afile" / "sub",
        "proc": Path("/proc/pgseg-x"),
    }
    result = run("prep-shards", "--source", "demo", "--out", out[where], "--n-train", "1", "--n-val", "1")
    assert_one_line_error(result, "afile" if where != "proc" else "/proc/pgseg-x")
    assert not list(tmp_path.glob(".*.partial"))


def test_cli_refuses_a_shard_set_without_overwrite(tmp_path, roots):
    out = tmp_path / "shards"
    build_demo_shards(out, seed=1, roots=roots, **SMALL)
    result = run("prep-shards", "--source", "demo", "--out", out, "--n-train", "1")
    assert_usage_error(result, "already holds a shard set", "--overwrite")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "train-000000.tar").write_bytes(b"x")
    result = run("prep-shards", "--source", "folder", "--images", tmp_path, "--out", bare)
    assert_usage_error(result, "without index.json", "--overwrite")


def assert_usage_error(result, *needles: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    text = result.stderr if hasattr(result, "stderr") else result.output
    assert "Traceback" not in result.output and "'--out'" in text
    joined = " ".join(text.split())
    for needle in needles:
        assert needle in joined, (needle, text)


def test_folder_source_publishes_the_same_way(tmp_path):
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(5):
        Image.new("RGB", (20, 16), (i * 40, 0, 0)).save(images / f"{i}.png")
        (images / f"{i}.txt").write_text(f"caption {i}")
    out = images / "shards"  # inside the image folder: excluded from the scan
    seen = []
    write_folder_shards(images, out, shard_size=2, progress=lambda d, t: seen.append(out.exists()))
    assert seen and not any(seen)
    before = digest(out)
    with pytest.raises(OutputError, match="already holds a shard set"):
        write_folder_shards(images, out)
    assert digest(out) == before
    write_folder_shards(images, out, shard_size=3, overwrite=True)
    assert json.loads((out / "index.json").read_text())["splits"]["train"]["count"] == 5
    assert len(list(out.glob("*.tar"))) == 2 and leftovers(tmp_path) == []
    with pytest.raises(OutputError, match="holds files that are not shards"):
        write_folder_shards(images, images, overwrite=True)  # the image folder itself is never replaced


# ----------------------------------------------------------------------------------------------------------
# full disk


def _fail_after(monkeypatch, n_ok: int) -> None:
    import webdataset as wds

    real = wds.TarWriter.write
    calls = {"n": 0}

    def write(self, obj):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, obj)

    monkeypatch.setattr(wds.TarWriter, "write", write)


def test_full_disk_keeps_the_previous_set(tmp_path, roots, monkeypatch):
    out = tmp_path / "shards"
    build_demo_shards(out, seed=1, roots=roots, **SMALL)
    before = digest(out)
    _fail_after(monkeypatch, 5)
    with pytest.raises(
        OutputError, match=r"cannot write the shards of .*shards: No space left.*disk is full"
    ):
        build_demo_shards(out, seed=2, roots=roots, overwrite=True, **SMALL)
    assert digest(out) == before and leftovers(tmp_path) == []
    fresh = tmp_path / "fresh"
    with pytest.raises(OutputError, match="disk is full"):
        build_demo_shards(fresh, seed=2, roots=roots, **SMALL)
    assert not fresh.exists() and leftovers(tmp_path) == []  # no partial set published


def test_full_disk_cli_is_one_line(tmp_path, monkeypatch):
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(4):
        Image.new("RGB", (20, 16), (i * 40, 0, 0)).save(images / f"{i}.png")
        (images / f"{i}.txt").write_text(f"caption {i}")
    _fail_after(monkeypatch, 2)
    result = run("prep-shards", "--source", "folder", "--images", images, "--out", tmp_path / "shards")
    assert_one_line_error(result, "no space left", "disk is full", str(tmp_path / "shards"))
    assert not (tmp_path / "shards").exists() and leftovers(tmp_path) == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the fault-injecting writer covers it")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_full_disk_on_a_real_1mb_tmpfs(tiny_tmpfs, roots):
    out = tiny_tmpfs / "shards"
    build_demo_shards(out, seed=1, roots=roots, **SMALL)
    before = digest(out)
    with pytest.raises(OutputError, match="disk is full"):
        build_demo_shards(out, seed=2, roots=roots, overwrite=True, n_train=300, n_val=2, img_size=96)
    assert digest(out) == before
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["shards"]  # the partial set is gone


# ----------------------------------------------------------------------------------------------------------
# readers


@pytest.fixture
def no_index(tmp_path):
    d = tmp_path / "shards"
    with SplitWriter(d, "train", shard_size=2) as w:
        for i in range(3):
            w.write({"__key__": f"k{i}", "txt": "a caption", "jpg": b"x"})
    return d


def test_readers_refuse_a_folder_without_index(no_index):
    msg = r"has no index.json: the shard set is incomplete \(an interrupted prep-shards\?\).*rebuild it"
    with pytest.raises(DataError, match=msg):
        resolve_shards(no_index)
    with pytest.raises(DataError, match=msg):
        DemoDataset(no_index)  # eval on shards
    with pytest.raises(DataError, match=msg):
        build_stem_cache(None, str(no_index), no_index.parent / "stem.h5", 64, "cpu")
    # explicit tar lists and patterns are read as given
    assert resolve_shards(str(no_index / "train-{000000..000001}.tar")) == [
        str(no_index / "train-000000.tar"),
        str(no_index / "train-000001.tar"),
    ]
    assert len(resolve_shards(str(no_index / "train-*.tar"))) == 2


def test_train_refuses_a_folder_without_index(no_index, tmp_path):
    result = run("train", "--model", "pgseg-tiny", "--data", no_index, "--out", tmp_path / "run",
                 "--train.steps", "1", "--device", "cpu")  # fmt: skip
    assert_one_line_error(result, "has no index.json", "interrupted prep-shards")


# ----------------------------------------------------------------------------------------------------------
# what killed builds leave


def test_recovery_restores_or_removes_leftovers_of_dead_builds(tmp_path, roots):
    out = tmp_path / "shards"
    build_demo_shards(out, seed=1, roots=roots, **SMALL)
    before = digest(out)
    pid = dead_pid()
    # killed between "OUT -> .old" and ".partial -> OUT": OUT missing, both folders complete
    os.rename(out, tmp_path / f".shards.{pid}.old")
    partial = tmp_path / f".shards.{pid}.partial"
    partial.mkdir()
    (partial / "train-000000.tar").write_bytes(b"new")
    live = tmp_path / f".shards.{os.getppid()}.partial"  # a live process's build is left alone
    live.mkdir()
    with pytest.raises(DataError, match=r"\.old holds the previous shard set"):
        resolve_shards(out)
    assert len(recover_shard_set(out)) == 2
    assert digest(out) == before and not partial.exists() and live.is_dir()
    # killed after the new set was published, before the old one was deleted
    (tmp_path / f".shards.{pid}.old").mkdir()
    recover_shard_set(out)
    assert not (tmp_path / f".shards.{pid}.old").exists() and digest(out) == before


def test_coco_object_bad_output_is_one_line(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    import pgseg_core.eval.datasets.coco_object as co

    val = tmp_path / "coco" / "annotations" / "val2017"
    val.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(val / "a.png")
    stale = val / f".a_instanceTrainIds.png.{dead_pid()}.abcd.tmp"
    stale.write_bytes(b"half")

    def full(path, writer):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(co, "atomic_write", full)
    with pytest.raises(OutputError, match=r"cannot write .*a_instanceTrainIds.png: No space left"):
        convert_coco_object(tmp_path / "coco")
    assert not stale.exists()  # a killed run's temporary file is removed first
    result = run("prep-shards", "--source", "coco-object", "--coco-root", tmp_path / "coco")
    assert_one_line_error(result, "a_instanceTrainIds.png", "disk is full")


# ----------------------------------------------------------------------------------------------------------
# kill -9 through a subprocess

SCRIPT = """
import os, signal, shutil, sys, tempfile
from pathlib import Path
sys.path.insert(0, {tests!r})
from _fixtures import make_fake_roots
import pgseg_core.data.sources.demo.build as build
import pgseg_core.data.shard_set as shard_set

roots = make_fake_roots(Path(tempfile.mkdtemp(dir=sys.argv[1])) / "src")
real = build.load_demo_sources
build.load_demo_sources = lambda r, size, vocab: real(r or roots, size, vocab)
kill_at = sys.argv[2]
real_rename, real_rmtree = os.rename, shutil.rmtree

def rename(src, dst):
    if kill_at == "between-renames" and str(src).endswith(".partial"):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_rename(src, dst)

def rmtree(path, *a, **k):
    if kill_at == "before-delete-old" and str(path).endswith(".old"):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_rmtree(path, *a, **k)

shard_set.os.rename, shard_set.shutil.rmtree = rename, rmtree
from pgseg_cli import main
sys.argv = ["pgseg", "-q", *sys.argv[3:]]
main()
"""
KILL_ARGS = ["--n-train", "80", "--n-val", "4", "--img-size", "64", "--shard-size", "10"]


def _start(tmp_path: Path, out: Path, kill_at: str, seed: int, *extra: str) -> subprocess.Popen:
    script = tmp_path / "prep.py"
    script.write_text(SCRIPT.format(tests=str(REPO / "tests")))
    srcs = tmp_path / "srcs"
    srcs.mkdir(exist_ok=True)
    cmd = [
        sys.executable,
        str(script),
        str(srcs),
        kill_at,
        "prep-shards",
        "--source",
        "demo",
        "--out",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd += [*KILL_ARGS, "--seed", str(seed), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_at_random(proc: subprocess.Popen, parent: Path, rng: random.Random, sig=signal.SIGKILL) -> str:
    """Send ``sig`` to ``proc`` at a random point of its build (once its .partial folder exists); returns
    when."""
    deadline = time.monotonic() + 60
    while not list(parent.glob(".shards.*.partial")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    delay = rng.uniform(0.0, 1.5)
    time.sleep(delay)
    finished = proc.poll() is not None
    proc.send_signal(sig)
    proc.wait(timeout=30)
    return f"{delay:.2f}s into the build" + (" (it had finished)" if finished else "")


def _assert_whole(out: Path, allowed: list[dict[str, str]], note: str) -> None:
    assert (out / "index.json").is_file(), note
    assert digest(out) in allowed, note  # exactly one complete build, never a mix


def test_kill_9_at_random_points_never_publishes_a_partial_or_mixed_set(tmp_path, roots):
    """Four builds run side by side in their own folders: a first build and a replacing build, each
    SIGKILLed at a random point, and two replacing builds SIGKILLed at the two instants of the publish."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    rng = random.Random()
    seed_note = f"random state {rng.getstate()[1][:2]}"
    size = dict(n_train=80, n_val=4, img_size=64, shard_size=10, roots=roots)
    ref_a, ref_b = tmp_path / "ref-a", tmp_path / "ref-b"
    build_demo_shards(ref_a, seed=1, **size)
    build_demo_shards(ref_b, seed=2, **size)
    set_a, set_b = digest(ref_a), digest(ref_b)
    work = {k: tmp_path / k for k in ("first", "replace", "renames", "delete", "term")}
    for k, folder in work.items():
        folder.mkdir()
        if k != "first":
            shutil.copytree(ref_a, folder / "shards")
    procs = {
        "first": _start(tmp_path, work["first"] / "shards", "none", 2),
        "replace": _start(tmp_path, work["replace"] / "shards", "none", 2, "--overwrite"),
        "renames": _start(tmp_path, work["renames"] / "shards", "between-renames", 2, "--overwrite"),
        "delete": _start(tmp_path, work["delete"] / "shards", "before-delete-old", 2, "--overwrite"),
        "term": _start(tmp_path, work["term"] / "shards", "none", 2, "--overwrite"),
    }
    with ThreadPoolExecutor(3) as pool:
        signals = {"first": signal.SIGKILL, "replace": signal.SIGKILL, "term": signal.SIGTERM}
        when = dict(
            zip(signals, pool.map(lambda k: _kill_at_random(procs[k], work[k], rng, signals[k]), signals))
        )
    for k in ("renames", "delete"):
        assert procs[k].wait(timeout=120) == -signal.SIGKILL, k

    # 1. a first build killed at a random point: OUT is absent (or, if it had finished, complete)
    out, note = work["first"] / "shards", f"{seed_note}, killed {when['first']}"
    if out.exists():
        _assert_whole(out, [set_b], note)
    else:
        train = ("train", "--model", "pgseg-tiny", "--device", "cpu", "--out", tmp_path / "run", "--data")
        assert_one_line_error(run(*train, out), "no shards at")
        for partial in work["first"].glob(".shards.*.partial"):  # the unfinished build is not data either
            if not (partial / "index.json").exists():
                assert_one_line_error(run(*train, partial), "has no index.json", "interrupted prep-shards")

    # 2. a build replacing set A (--overwrite) killed at a random point: A or B, whole, never a mix
    out, note = work["replace"] / "shards", f"{seed_note}, killed {when['replace']}"
    if out.exists():
        _assert_whole(out, [set_a, set_b], note)
    else:  # the kill fell between the two renames of the publish
        (old,) = work["replace"].glob(".shards.*.old")
        assert digest(old) == set_a, note

    # 3. killed between the two renames: OUT absent, the previous set whole in .old, named by readers
    out = work["renames"] / "shards"
    assert not out.exists()
    (old,) = work["renames"].glob(".shards.*.old")
    assert digest(old) == set_a
    result = run("train", "--model", "pgseg-tiny", "--data", out, "--out", tmp_path / "r3", "--device", "cpu")
    assert_one_line_error(result, "holds the previous shard set")

    # 4. killed after publishing, before deleting the old set: OUT is the new set
    _assert_whole(work["delete"] / "shards", [set_b], "killed before deleting the old set")
    assert len(list(work["delete"].glob(".shards.*.old"))) == 1

    # 5. SIGTERM ends the build like Ctrl-C: exit 143, its temporary folder removed, nothing left beside;
    #    one that arrives while publishing waits until the set is swapped
    note = f"{seed_note}, SIGTERM {when['term']}"
    rc = procs["term"].returncode
    _assert_whole(work["term"] / "shards", [set_a, set_b], note)
    # 0 or -SIGTERM: it had published and was exiting (Python restores the default handler at exit)
    done = rc in (0, -signal.SIGTERM) and digest(work["term"] / "shards") == set_b
    assert rc == 128 + signal.SIGTERM or done, (rc, note)
    assert leftovers(work["term"]) == [], note

    # every rerun completes and leaves nothing beside the set
    for k, folder in work.items():
        if k == "renames":  # the next build restores the previous set first
            assert recover_shard_set(folder / "shards") and digest(folder / "shards") == set_a
        build_demo_shards(folder / "shards", seed=2, overwrite=True, **size)
        _assert_whole(folder / "shards", [set_b], f"rerun in {k}")
        assert leftovers(folder) == [], k
