"""HDF5 feature cache: round trip, cached == uncached metrics without the encoder, refusal of foreign caches,
and resuming after a writer killed mid-run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from _eval_fakes import CountingColourModel, FakeDataset
from pgseg_core.cache.features import FEATURE_CACHE_SCHEMA, CacheMeta, FeatureCache, feature_config_hash
from pgseg_core.config import EvalConfig, ModelConfig
from pgseg_core.errors import DataError
from pgseg_core.eval.runs import evaluate_dataset
from pgseg_core.eval.sweep import parse_sweep
from pgseg_core.inference import ClassSpec, extract_image_features

ROOT = Path(__file__).resolve().parents[1]


def _cfg(**kw) -> EvalConfig:
    base = dict(short_side=64, max_long=256, mode="slide", crop=48, stride=32, bg_thresh=0.5, top_k=0)
    base.update(kw)
    return EvalConfig(**base)


def _meta(**kw) -> CacheMeta:
    base = dict(
        checkpoint_sha256="ab" * 32,
        config_hash=feature_config_hash(ModelConfig(), _cfg()),
        protocol="groupvit",
        dataset="fake21/val",
    )
    base.update(kw)
    return CacheMeta(**base)


def test_round_trip_is_exact_and_file_is_documented(tmp_path) -> None:
    img = np.random.default_rng(0).integers(0, 256, (50, 90, 3), dtype=np.uint8)
    feats = extract_image_features(CountingColourModel(), img, _cfg(), "cpu")
    path = tmp_path / "f.h5"
    with FeatureCache.open(path, _meta()) as cache:
        assert not cache.has("a/b")
        cache.put("a/b", feats)  # a key with a slash
        assert cache.has("a/b") and len(cache) == 1
    with FeatureCache.open(path, _meta()) as cache:
        got = cache.get("a/b")
        assert cache.keys() == ["a/b"]
    assert got.windows == feats.windows and got.grid == feats.grid
    assert (got.orig_size, got.resized_size, got.padded_size) == (
        feats.orig_size,
        feats.resized_size,
        feats.padded_size,
    )
    assert got.logit_scale == feats.logit_scale
    assert torch.equal(got.group_emb, feats.group_emb) and torch.equal(got.image_emb, feats.image_emb)
    assert len(got.assign_soft) == 2 and all(
        torch.equal(a, b) for a, b in zip(got.assign_soft, feats.assign_soft)
    )
    with h5py.File(path, "r") as f:
        assert f.attrs["schema"] == FEATURE_CACHE_SCHEMA and f.attrs["kind"] == "pgseg-feature-cache"
        assert f.attrs["checkpoint_sha256"] == "ab" * 32 and f.attrs["protocol"] == "groupvit"
        grp = f["images"]["a%2Fb"]
        assert grp.attrs["complete"] == 1 and grp.attrs["key"] == "a/b"
        ds = grp["assign_soft_0"]
        assert ds.dtype == np.float32 and ds.compression == "gzip" and ds.chunks[0] == 1
    with FeatureCache.open(path) as ro:  # read-only, no checks: what other commands use to read
        assert ro.has("a/b") and ro.attrs["dataset"] == "fake21/val"
        with pytest.raises(ValueError, match="read-only"):
            ro.put("c", feats)


def test_cached_equals_uncached_and_encoder_not_called(tmp_path) -> None:
    ds = FakeDataset(4)
    model = CountingColourModel()
    plain = evaluate_dataset(model, ds, class_names="groupvit", eval_cfg=_cfg(), device="cpu")
    with FeatureCache.open(tmp_path / "f.h5", _meta()) as cache:
        first = evaluate_dataset(
            model, ds, class_names="groupvit", eval_cfg=_cfg(), device="cpu", cache=cache
        )
    assert first.splits["val"]["images_encoded"] == 4
    model.encode_calls = 0
    with FeatureCache.open(tmp_path / "f.h5", _meta()) as cache:
        again = evaluate_dataset(
            model, ds, class_names="groupvit", eval_cfg=_cfg(), device="cpu", cache=cache
        )
        # other bg_thresh, class list, templates, top-k and rule: still only the cache
        other = [
            evaluate_dataset(
                model, ds, class_names="groupvit", eval_cfg=cfg, device="cpu", cache=cache, class_spec=spec
            )
            for cfg, spec in [
                (_cfg(bg_thresh=0.8), None),
                (_cfg(top_k=1), None),
                (_cfg(templates=["a photo of the {}.", "{}"]), None),
                (_cfg(rule="prob", logit_scale=20.0), None),
                (_cfg(), ClassSpec.from_names(["green", "red"], ["sky"])),
            ]
        ]
        swept = evaluate_dataset(
            model,
            ds,
            class_names="groupvit",
            eval_cfg=_cfg(),
            device="cpu",
            cache=cache,
            sweep=parse_sweep("bg_thresh=0.3:1.0:0.05"),
        )
    assert model.encode_calls == 0
    assert again.splits["val"]["images_from_cache"] == 4 and again.splits["val"]["images_encoded"] == 0
    for key in ("mIoU", "mAcc", "aAcc", "per_class"):
        assert plain.splits["val"][key] == first.splits["val"][key] == again.splits["val"][key]
    assert len({o.splits["val"]["mIoU"] for o in other}) > 1
    assert len(swept.splits["val"]["sweep"]["points"]) == 15
    # cached sweep point == uncached single run at that value
    point = swept.splits["val"]["sweep"]["points"][4]
    single = evaluate_dataset(
        CountingColourModel(),
        ds,
        class_names="groupvit",
        eval_cfg=_cfg(bg_thresh=point["value"]),
        device="cpu",
    )
    assert single.splits["val"]["mIoU"] == point["mIoU"]


def test_foreign_cache_is_refused_with_the_attribute_named(tmp_path) -> None:
    path = tmp_path / "f.h5"
    with FeatureCache.open(path, _meta()):
        pass
    for change, attr in [
        ({"checkpoint_sha256": "cd" * 32}, "checkpoint_sha256"),
        ({"config_hash": feature_config_hash(ModelConfig(), _cfg(short_side=96))}, "config_hash"),
        ({"protocol": "sclip"}, "protocol"),
        ({"dataset": "voc21/val"}, "dataset"),
    ]:
        with pytest.raises(DataError) as info:
            FeatureCache.open(path, _meta(**change))
        msg = str(info.value)
        assert attr in msg and "use another cache file or delete" in msg and "\n" not in msg
    # only class-independent settings enter the config hash
    assert feature_config_hash(ModelConfig(), _cfg()) == feature_config_hash(
        ModelConfig(), _cfg(bg_thresh=0.1, top_k=3, templates=["{}"], rule="prob", prob_thresh=0.3)
    )
    assert feature_config_hash(ModelConfig(), _cfg()) != feature_config_hash(
        ModelConfig(), _cfg(mode="whole")
    )
    # a file that is not a cache, and an HDF5 file of another kind
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all" * 10)
    with pytest.raises(DataError, match="cannot read feature cache"):
        FeatureCache.open(junk, _meta())
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["kind"] = "pgseg-stem-cache"
    with pytest.raises(DataError, match="not a pgseg feature cache"):
        FeatureCache.open(other, _meta())
    with pytest.raises(DataError, match="not found"):
        FeatureCache.open(tmp_path / "missing.h5")


_WRITER = textwrap.dedent(
    """
    import os, sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from _eval_fakes import CountingColourModel, FakeDataset
    from pgseg_core.cache.features import CacheMeta, FeatureCache
    from pgseg_core.config import EvalConfig
    from pgseg_core.inference import extract_image_features

    cfg = EvalConfig(short_side=64, max_long=256, mode="slide", crop=48, stride=32, bg_thresh=0.5, top_k=0)
    meta = CacheMeta({ck!r}, {ch!r}, "groupvit", "fake21/val")
    model = CountingColourModel()
    cache = FeatureCache.open({path!r}, meta)
    for i, s in enumerate(FakeDataset({n_total})):
        feats = extract_image_features(model, s.image, cfg, "cpu")
        if i == {kill_at}:
            # die half-way through this image's entry: group and a first dataset written, no marker
            grp = cache._f["images"].create_group(s.key)
            grp.attrs["key"] = s.key
            grp.create_dataset("group_emb", data=feats.group_emb.numpy())
            cache._f.flush()
            os._exit(9)
        cache.put(s.key, feats)
    """
)


def test_killed_write_resumes_from_last_complete_image(tmp_path) -> None:
    path = tmp_path / "f.h5"
    meta = _meta()
    script = _WRITER.format(
        root=str(ROOT),
        tests=str(ROOT / "tests"),
        ck=meta.checkpoint_sha256,
        ch=meta.config_hash,
        path=str(path),
        n_total=5,
        kill_at=3,
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"},
    )
    assert proc.returncode == 9, proc.stderr
    with FeatureCache.open(path) as ro:  # readable after the kill, up to the last complete image
        assert ro.keys() == ["img_000", "img_001", "img_002"] and ro.dropped == 1
    ds = FakeDataset(5)
    model = CountingColourModel()
    with FeatureCache.open(path, meta) as cache:
        assert cache.dropped == 1 and len(cache) == 3
        res = evaluate_dataset(model, ds, class_names="groupvit", eval_cfg=_cfg(), device="cpu", cache=cache)
    m = res.splits["val"]
    assert m["images_from_cache"] == 3 and m["images_encoded"] == 2
    with FeatureCache.open(path) as ro:
        assert len(ro) == 5 and ro.dropped == 0
    fresh = evaluate_dataset(CountingColourModel(), ds, class_names="groupvit", eval_cfg=_cfg(), device="cpu")
    assert fresh.splits["val"]["mIoU"] == m["mIoU"] and fresh.splits["val"]["per_class"] == m["per_class"]


def test_sigkill_during_writes_leaves_a_readable_cache(tmp_path) -> None:
    """A writer killed by SIGKILL at an arbitrary moment: the file opens, keeps only complete images,
    resumes."""
    import signal
    import time

    path = tmp_path / "f.h5"
    meta = _meta()
    script = _WRITER.format(
        root=str(ROOT),
        tests=str(ROOT / "tests"),
        ck=meta.checkpoint_sha256,
        ch=meta.config_hash,
        path=str(path),
        n_total=400,
        kill_at=-1,
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # wait until a few images are in, then kill mid-stream
            time.sleep(0.2)
            if path.exists() and path.stat().st_size > 200_000:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with FeatureCache.open(path, meta) as cache:
        n = len(cache)
        assert 0 < n < 400
        for key in cache.keys():
            feats = cache.get(key)
            assert feats.group_emb.shape[0] == len(feats.windows)


def test_real_model_scores_from_cache_are_bit_identical_to_predict(tmp_path) -> None:
    """Cached scoring of a real model (pgseg-tiny) equals predict bit for bit. Its projection heads return
    row-major group embeddings (F.linear); caches written when they were Conv1d outputs ([B, D, S] buffers)
    carry ``group_emb_d_major`` and are scored in that layout."""
    from pgseg_core.config import load_config
    from pgseg_core.models.factory import create_model
    from pgseg_core.inference import compute_class_embeddings, predict, scores_from_features

    torch.manual_seed(0)
    cfg = load_config("pgseg-tiny")
    model = create_model(cfg.model).eval()
    emb = compute_class_embeddings(model, ["cat", "dog", "tree"], ["a photo of a {}."], "cpu")
    img = np.random.default_rng(2).integers(0, 256, (70, 130, 3), dtype=np.uint8)
    ec = replace(cfg.eval, short_side=96, crop=64, stride=32, mode="slide", bg_thresh=0.3)
    predict(model, img, emb, ec, "cpu")  # warm-up: the first forward of a shape may round differently
    label, scores = predict(model, img, emb, ec, "cpu")
    with FeatureCache.open(tmp_path / "f.h5", _meta()) as cache:
        cache.put("x", extract_image_features(model, img, ec, "cpu"))
    with FeatureCache.open(tmp_path / "f.h5", _meta()) as cache:
        feats = cache.get("x")
    assert not feats.group_emb_d_major
    label_c, scores_c = scores_from_features(feats, emb, ec)
    np.testing.assert_array_equal(label_c, label)
    np.testing.assert_array_equal(scores_c, scores)
    for rule_cfg in (replace(ec, rule="prob", logit_scale=30.0), replace(ec, top_k=1, bg_thresh=0.9)):
        np.testing.assert_array_equal(
            scores_from_features(feats, emb, rule_cfg)[1], predict(model, img, emb, rule_cfg, "cpu")[1]
        )
