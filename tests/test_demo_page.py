"""The demo's closing page (OUT/index.html) built from tiny real outputs of the demo's commands, and loaded
in headless Chromium: every image present and decoded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from _fixtures import make_fake_roots
from pgseg_cli.app import app
from pgseg_core.data.sources.demo import build_demo_shards

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def run(*args):
    res = runner.invoke(app, ["-q", *[str(a) for a in args]], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory, single_thread):
    """The demo's folder layout from its own commands at a tiny size (no real demo run)."""
    out = tmp_path_factory.mktemp("demo_out")
    roots = make_fake_roots(out / "src")
    build_demo_shards(out / "shards", seed=1, n_train=16, n_val=4, img_size=64, roots=roots, shard_size=8)
    train = (
        "train",
        "--model",
        "pgseg-tiny",
        "--data",
        out / "shards",
        "--device",
        "cpu",
        "--train.batch_size",
        "4",
    )
    run(*train, "--out", out / "run", "--train.steps", "2", "--train.log_every", "1")
    run(*train, "--out", out / "untrained", "--train.steps", "0")
    ev = ("eval", "--data", out / "shards", "--device", "cpu", "--no-per-class", "--grid-images", "2")
    run(
        *ev,
        "-c",
        out / "run",
        "--sweep",
        "bg_thresh=0.3:0.9:0.3",
        "--output",
        out / "calib" / "metrics_run.json",
    )
    run(*ev, "-c", out / "run")
    run(*ev, "-c", out / "untrained")
    photos = out / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("street", "kitchen"):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(photos / f"{name}.jpg")
    run("segment", photos, "-c", out / "run", "-o", out / "segment", "--classes", "cat,dog,car",
        "--device", "cpu", "--format", "overlay", "--workers", "0")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "demo_summary.py"), str(out), "42"],
                         capture_output=True, text=True, env=env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "index.html" in res.stdout and "not found" not in res.stdout
    return out


def test_the_page_shows_every_demo_figure(demo_out):
    text = (demo_out / "index.html").read_text()
    for rel in (
        "run/curves.png",
        "per_class_trained_vs_untrained.png",
        "run/metrics_predictions.png",
        "untrained/metrics_predictions.png",
        "run/metrics_confusion.png",
        "calib/metrics_run_sweep.png",
        "segment/street_overlay.png",
        "segment/kitchen_overlay.png",
    ):
        assert f'src="{rel}"' in text, rel
        assert (demo_out / rel).is_file()
    assert "not found" not in text
    assert "how little of what it learned on composites transfers" in text
    trained = json.loads((demo_out / "run" / "metrics.json").read_text())
    assert f"{trained['splits']['val-caption']['mIoU']:.1f}" in text


def test_a_missing_figure_is_named_not_shown_broken(demo_out, tmp_path):
    from pgseg_core.errors import DataError
    from pgseg_core.viz.demo_page import write_demo_page

    copy = tmp_path / "out"
    shutil.copytree(demo_out, copy, ignore=shutil.ignore_patterns("*.h5", "*.tar", "last.pt"))
    (copy / "run" / "curves.png").unlink()
    shutil.rmtree(copy / "segment")
    page = write_demo_page(copy)
    assert page.missing == ["run/curves.png", "segment/*_overlay.png"]
    text = Path(page.path).read_text()
    assert 'src="run/curves.png"' not in text and "not found: run/curves.png" in text
    (copy / "run" / "metrics.json").unlink()
    with pytest.raises(DataError, match="metrics.json"):
        write_demo_page(copy)


def _chromium() -> str | None:
    return next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
    )


def test_headless_chromium_loads_every_image(demo_out):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on PATH (scripts/setup_env.sh dev --with-demo-data installs it)")
    page = (demo_out / "index.html").read_text()
    probe = (
        "<script>window.addEventListener('load', () => { document.title = JSON.stringify("
        "[...document.images].map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])); });</script>"
    )
    check = demo_out / "check_images.html"  # beside the page: the same relative image paths
    check.write_text(page.replace("</body>", probe + "</body>"))
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
           "--virtual-time-budget=10000", "--dump-dom", check.as_uri()]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    title = res.stdout.split("<title>", 1)[1].split("</title>", 1)[0]
    images = json.loads(title.replace("&quot;", '"').replace("&amp;", "&"))
    assert len(images) == page.count("<img ") >= 8
    broken = [src for src, complete, width in images if not complete or width == 0]
    assert not broken, f"images that did not load: {broken}"
