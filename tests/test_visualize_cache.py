"""visualize-prototypes with an HDF5 feature cache: the ``viz`` section round trip, reuse without the encoder,
rendering from the cache alone, sharing the file with ``segment --cache``, and the errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pgseg_cli.app import app
from pgseg_core.api import visualize_prototypes
from pgseg_core.cache.features import CacheMeta, FeatureCache
from pgseg_core.checkpoint import save_checkpoint
from pgseg_core.config import load_config
from pgseg_core.errors import ConfigError, DataError
from pgseg_core.models.factory import create_model
from pgseg_core.models.pgseg import PGSeg
from pgseg_core.viz import prototype_report
from pgseg_core.viz.prototype_cache import VIZ_SECTION, get_trace, has_trace, put_trace
from pgseg_core.viz.prototypes import prepare_image, state_from_trace, trace_image

runner = CliRunner()


def _photo(seed: int, h: int = 70, w: int = 90) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), rng.integers(0, 255, 3), dtype=np.uint8)
    for _ in range(4):
        y, x = rng.integers(0, h - 10), rng.integers(0, w - 10)
        img[y : y + rng.integers(8, 30), x : x + rng.integers(8, 30)] = rng.integers(0, 255, 3)
    return img


@pytest.fixture(scope="module")
def env(tmp_path_factory, single_thread):
    root = tmp_path_factory.mktemp("vizcache")
    ckpts = {}
    for name, overrides, seed in (
        ("pgseg", {}, 0),
        ("released", {"model.npr.released_code": True}, 0),
        ("groupvit", {"model.npr.enabled": False}, 0),
        ("other", {}, 5),
    ):
        torch.manual_seed(seed)
        cfg = load_config("pgseg-tiny", overrides)
        ckpts[name] = save_checkpoint(root / f"{name}.pt", create_model(cfg.model).eval(), cfg, step=0)
    photos = root / "photos"
    photos.mkdir()
    Image.fromarray(_photo(1)).save(photos / "a.png")
    Image.fromarray(_photo(2, 96, 64)).save(photos / "b.png")
    return {"root": root, "ckpt": ckpts, "photos": photos}


def _assert_states_equal(a, b):
    assert a.name == b.name and a.grid == b.grid and a.npr == b.npr and a.released_code == b.released_code
    assert np.array_equal(a.image, b.image)
    assert len(a.stages) == len(b.stages)
    for sa, sb in zip(a.stages, b.stages):
        for field in (
            "assign_hard",
            "assign_soft",
            "group_map",
            "group_probs",
            "centres",
            "input_tokens",
            "cell_masks",
            "prototypes",
            "responsibilities",
            "proto_probs",
            "proto_map",
            "similarity",
            "match",
            "hrs_keep_gp",
            "hrs_keep_pg",
            "hrs_score_gp",
            "hrs_score_pg",
        ):
            va, vb = getattr(sa, field), getattr(sb, field)
            assert (va is None) == (vb is None), field
            if va is not None:
                assert va.dtype == vb.dtype and np.array_equal(va, vb), field


@pytest.mark.parametrize("which", ["pgseg", "released", "groupvit"])
def test_trace_round_trip_gives_the_same_state(env, which, tmp_path):
    from pgseg_core.checkpoint import load_checkpoint

    model, _ = load_checkpoint(env["ckpt"][which])
    model.eval()
    sample = prepare_image(_photo(3), 64, 2048, name="img")
    trace = trace_image(model, sample)
    fresh = state_from_trace(trace, "img", sample.image)
    with FeatureCache.open(tmp_path / "c.h5", CacheMeta("ck", "cfg", "checkpoint", "segment")) as cache:
        put_trace(cache, "k1", "img", sample.image, trace, 64, 2048)
        assert has_trace(cache, "k1") and has_trace(cache, "k1", 64, 2048)
        assert not has_trace(cache, "k1", 96, 2048) and not has_trace(cache, "k2")
        assert not cache.has("k1")  # the viz section does not pretend to hold inference features
    with FeatureCache.open(tmp_path / "c.h5") as cache:  # read-only reopen
        name, image, cached = get_trace(cache, "k1")
    _assert_states_equal(state_from_trace(cached, name, image), fresh)
    assert fresh.npr == (which != "groupvit") and fresh.released_code == (which == "released")


def test_an_incomplete_viz_entry_is_dropped_on_reopen(env, tmp_path):
    from pgseg_core.checkpoint import load_checkpoint

    model, _ = load_checkpoint(env["ckpt"]["pgseg"])
    sample = prepare_image(_photo(3), 48, 2048, name="img")
    trace = trace_image(model.eval(), sample)
    path = tmp_path / "c.h5"
    with FeatureCache.open(path, CacheMeta("ck", "cfg", "checkpoint", "segment")) as cache:
        put_trace(cache, "done", "img", sample.image, trace, 48, 2048)
        put_trace(cache, "killed", "img", sample.image, trace, 48, 2048)
    with h5py.File(path, "a") as f:  # what a writer killed before the complete marker leaves
        del f[VIZ_SECTION]["killed"].attrs["complete"]
    with FeatureCache.open(path, CacheMeta("ck", "cfg", "checkpoint", "segment")) as cache:
        assert cache.dropped == 1 and cache.section_keys(VIZ_SECTION) == ["done"]
    with h5py.File(path, "r") as f:
        assert list(f[VIZ_SECTION].keys()) == ["done"]


def test_second_run_reads_the_cache_and_never_runs_the_encoder(env, tmp_path, monkeypatch):
    cache = tmp_path / "viz.h5"
    first = visualize_prototypes(
        [str(env["photos"])],
        env["ckpt"]["pgseg"],
        tmp_path / "o1",
        cache=cache,
        patches_per_prototype=2,
        device="cpu",
    )
    assert first["feature_cache"]["images_encoded"] == 2 and first["feature_cache"]["images_from_cache"] == 0
    calls = []
    real = PGSeg.encode_image
    monkeypatch.setattr(PGSeg, "encode_image", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    second = visualize_prototypes(
        [str(env["photos"])],
        env["ckpt"]["pgseg"],
        tmp_path / "o2",
        cache=cache,
        patches_per_prototype=2,
        device="cpu",
    )
    assert calls == []
    assert (
        second["feature_cache"]["images_from_cache"] == 2 and second["feature_cache"]["images_encoded"] == 0
    )
    for rec in first["outputs"]:
        assert (tmp_path / "o1" / rec["json"]).read_text() == (tmp_path / "o2" / rec["json"]).read_text()
        for key in ("panel", "matching"):
            assert np.array_equal(
                np.asarray(Image.open(tmp_path / "o1" / rec[key])),
                np.asarray(Image.open(tmp_path / "o2" / rec[key])),
            ), rec[key]
    for g in first["patch_grids"]:
        assert np.array_equal(
            np.asarray(Image.open(tmp_path / "o1" / g["png"])),
            np.asarray(Image.open(tmp_path / "o2" / g["png"])),
        )
    # another resize is another trace: encoded again, stored beside the first
    third = visualize_prototypes(
        [str(env["photos"] / "a.png")],
        env["ckpt"]["pgseg"],
        tmp_path / "o3",
        cache=cache,
        short_side=32,
        device="cpu",
    )
    assert calls and third["feature_cache"]["images_encoded"] == 1


def test_cache_alone_renders_without_a_model(env, tmp_path, monkeypatch):
    cache = tmp_path / "viz.h5"
    fresh = visualize_prototypes(
        [str(env["photos"])], env["ckpt"]["released"], tmp_path / "o1", cache=cache, device="cpu"
    )

    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr("pgseg_core.checkpoint.load_checkpoint", no_model)
    monkeypatch.setattr(prototype_report, "trace_image", no_model)
    cached = visualize_prototypes([], None, tmp_path / "o2", cache=cache)
    assert cached["processed"] == 2 and cached["npr"] and cached["released_code"]
    assert cached["feature_cache"]["images_from_cache"] == 2
    assert sorted(r["image"] for r in cached["outputs"]) == ["a", "b"]
    by_name = {r["image"]: r for r in cached["outputs"]}
    for rec in fresh["outputs"]:
        assert (tmp_path / "o1" / rec["json"]).read_text() == (
            tmp_path / "o2" / by_name[rec["image"]]["json"]
        ).read_text()
    assert "released-code mode" in (tmp_path / "o2" / "index.html").read_text()
    assert visualize_prototypes([], None, tmp_path / "o3", cache=cache, max_images=1)["processed"] == 1


def _run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _one_error(result) -> str:
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_cli_shares_the_file_with_segment(env, tmp_path):
    cache = tmp_path / "shared.h5"
    seg = _run(
        "segment",
        env["photos"],
        "--checkpoint",
        env["ckpt"]["pgseg"],
        "--out",
        tmp_path / "seg",
        "--classes",
        "cat,dog",
        "--cache",
        cache,
        "--device",
        "cpu",
    )
    assert seg.exit_code == 0, seg.output
    # a cache with inference features only: the cache-only mode says what to run
    msg = _one_error(_run("visualize-prototypes", "--cache", cache, "--out", tmp_path / "v0"))
    assert "holds no visualize-prototypes data" in msg and "run visualize-prototypes on images" in msg
    viz = _run(
        "visualize-prototypes",
        env["photos"],
        "-c",
        env["ckpt"]["pgseg"],
        "--cache",
        cache,
        "--out",
        tmp_path / "v1",
        "--device",
        "cpu",
    )
    assert viz.exit_code == 0, viz.output
    assert "0 image(s) from the cache, 2 encoded" in viz.output
    again = _run("visualize-prototypes", "--cache", cache, "--out", tmp_path / "v2")
    assert again.exit_code == 0 and "rendered 2 image(s)" in again.output, again.output
    seg2 = _run(
        "segment",
        env["photos"],
        "--checkpoint",
        env["ckpt"]["pgseg"],
        "--out",
        tmp_path / "seg2",
        "--classes",
        "tree",
        "--cache",
        cache,
        "--device",
        "cpu",
    )
    assert seg2.exit_code == 0 and "2 image(s) read, 0 encoded" in seg2.output, seg2.output
    with h5py.File(cache, "r") as f:
        assert len(f["images"]) == 2 and len(f[VIZ_SECTION]) == 2


def test_cli_refuses_a_cache_of_another_checkpoint(env, tmp_path):
    cache = tmp_path / "viz.h5"
    assert (
        _run(
            "visualize-prototypes",
            env["photos"] / "a.png",
            "-c",
            env["ckpt"]["pgseg"],
            "--cache",
            cache,
            "--out",
            tmp_path / "o",
            "--device",
            "cpu",
        ).exit_code
        == 0
    )
    msg = _one_error(
        _run(
            "visualize-prototypes",
            env["photos"] / "a.png",
            "-c",
            env["ckpt"]["other"],
            "--cache",
            cache,
            "--out",
            tmp_path / "o2",
            "--device",
            "cpu",
        )
    )
    assert "checkpoint_sha256" in msg and "use another cache file" in msg
    msg = _one_error(
        _run("visualize-prototypes", "--cache", cache, "-c", env["ckpt"]["other"], "--out", tmp_path / "o3")
    )
    assert "another checkpoint" in msg


def _usage_error(result) -> str:
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_cli_bad_cache_inputs_are_one_line(env, tmp_path):
    msg = _usage_error(_run("visualize-prototypes", "--out", tmp_path / "o"))
    assert "nothing to visualize" in msg
    msg = _usage_error(_run("visualize-prototypes", env["photos"], "--out", tmp_path / "o"))
    assert "'--checkpoint': required to encode images" in msg
    msg = _one_error(
        _run("visualize-prototypes", "--cache", tmp_path / "missing.h5", "--out", tmp_path / "o")
    )
    assert "feature cache not found" in msg
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    msg = _one_error(_run("visualize-prototypes", "--cache", junk, "--out", tmp_path / "o"))
    assert "junk.h5" in msg


def test_api_errors_are_typed(env, tmp_path):
    with pytest.raises(ConfigError):
        visualize_prototypes([], None, tmp_path / "o")
    with pytest.raises(ConfigError):
        visualize_prototypes([str(env["photos"])], None, tmp_path / "o")
    with pytest.raises(DataError):
        visualize_prototypes([], None, tmp_path / "o", cache=Path(tmp_path / "none.h5"))
