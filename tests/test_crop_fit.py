"""Windows whose size is not a multiple of 16 (eval.crop_fit, docs/EVAL.md): padding at the end (default),
even padding (SCLIP family) or dropping the remainder (GroupViT), against a hand-framed computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pgseg_core.cache.features import feature_config_hash
from pgseg_core.config import EvalConfig, load_config
from pgseg_core.eval.protocol import resolve_protocol
from pgseg_core.inference import (
    TorchEncoder,
    compute_class_embeddings,
    extract_features,
    image_to_tensor,
    predict,
    predict_batch,
    prepare_image,
    resize_scores,
    select_rule,
)
from pgseg_core.inference.preprocess import fit_to_stride, map_frame
from tests._fixtures import varied_model

pytestmark = pytest.mark.usefixtures("single_thread")


def test_fit_to_stride_shapes_and_placement():
    x = torch.arange(2 * 3 * 37 * 21, dtype=torch.float32).reshape(2, 3, 37, 21) + 1
    end = fit_to_stride(x, "end")
    assert (
        end.shape[-2:] == (48, 32)
        and torch.equal(end[..., :37, :21], x)
        and end[..., 37:, :].abs().sum() == 0
    )
    centre = fit_to_stride(x, "centre")  # 11 rows: 5 top, 6 bottom; 11 columns: 5 left, 6 right
    assert centre.shape[-2:] == (48, 32) and torch.equal(centre[..., 5:42, 5:26], x)
    assert centre[..., :5, :].abs().sum() == 0 and centre[..., 42:, :].abs().sum() == 0
    floor = fit_to_stride(x, "floor")
    assert floor.shape[-2:] == (32, 16) and torch.equal(floor, x[..., :32, :16])
    small = fit_to_stride(x[..., :10, :], "floor")  # a side under 16 is padded
    assert small.shape[-2:] == (16, 16) and torch.equal(small[..., :10, :], x[..., :10, :16])
    aligned = torch.zeros(1, 3, 32, 48)
    assert all(
        fit_to_stride(aligned, m) is aligned or fit_to_stride(aligned, m).shape == aligned.shape
        for m in ("end", "centre", "floor")
    )
    with pytest.raises(ValueError):
        fit_to_stride(x, "middle")
    assert map_frame((37, 21), (48, 32), "centre") == ((48, 32), (5, 5))
    assert map_frame((37, 21), (32, 16), "floor") == ((37, 21), (0, 0))
    assert map_frame((37, 21), (48, 32), "end") == ((48, 32), (0, 0))


@pytest.fixture(scope="module")
def setup():
    cfg = load_config("pgseg-tiny")
    model = varied_model(cfg)
    emb = compute_class_embeddings(model, ["cat", "dog", "car"], ["a photo of a {}."], "cpu")
    rng = np.random.default_rng(7)
    image = (rng.random((45, 70, 3)) * 255).astype(np.uint8)
    image[:, 30:] = (200, 30, 30)
    return model, emb, image


def _by_hand(model, emb, image, cfg, fit):
    """One window (mode whole): frame the encoder input and the maps explicitly."""
    x = image_to_tensor(image, cfg.short_side, cfg.max_long)  # [3,H,W], H, W not multiples of 16
    h, w = x.shape[-2:]
    assert h % 16 and w % 16
    rule = select_rule(cfg, emb, model.logit_scale_value())
    if fit == "floor":
        feats = extract_features(model, x[None, :, : h // 16 * 16, : w // 16 * 16])
        maps = rule.crop_maps(feats, (h, w))[0]  # the kept pixels' grid stretched over the window
    else:
        ph, pw = (-h) % 16, (-w) % 16
        top, left = (ph // 2, pw // 2) if fit == "centre" else (0, 0)
        padded = F.pad(x, (left, pw - left, top, ph - top))
        feats = extract_features(model, padded[None])
        maps = rule.crop_maps(feats, (h + ph, w + pw))[0, :, top : top + h, left : left + w]
    label, scores = rule.label(resize_scores(maps, image.shape[:2]))
    return label.numpy(), scores.numpy()


@pytest.mark.parametrize("fit", ["end", "centre", "floor"])
def test_predict_frames_windows_as_crop_fit_says(setup, fit):
    model, emb, image = setup
    cfg = EvalConfig(short_side=45, mode="whole", crop=64, stride=32, bg_thresh=0.3, top_k=3, crop_fit=fit)
    label, scores = predict(model, image, emb, cfg, "cpu")
    ref_label, ref_scores = _by_hand(model, emb, image, cfg, fit)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(label, ref_label)
    ((bl, bs),) = predict_batch(
        TorchEncoder(model, "cpu", bf16=False),
        [prepare_image(image, cfg)],
        emb,
        model.logit_scale_value(),
        cfg,
        "cpu",
    )
    np.testing.assert_allclose(bs, scores, rtol=1e-5, atol=1e-6)


def test_crop_fit_changes_scores_and_the_cache_key(setup):
    model, emb, image = setup
    base = EvalConfig(short_side=45, mode="whole", crop=64, stride=32, bg_thresh=0.3, top_k=3)
    outs = {
        f: predict(model, image, emb, EvalConfig(**{**base.__dict__, "crop_fit": f}), "cpu")[1]
        for f in ("end", "centre", "floor")
    }
    assert not np.allclose(outs["end"], outs["centre"]) and not np.allclose(outs["end"], outs["floor"])
    mc = load_config("pgseg-tiny").model
    old_style = {k: getattr(base, k) for k in ("short_side", "max_long", "mode", "crop", "stride")}
    assert feature_config_hash(mc, base) == feature_config_hash(mc, old_style)  # "end" keeps older caches
    assert feature_config_hash(
        mc, EvalConfig(**{**base.__dict__, "crop_fit": "floor"})
    ) != feature_config_hash(mc, base)


def test_protocols_pick_their_references_crop_fit():
    assert resolve_protocol("groupvit", "voc21").eval_cfg.crop_fit == "floor"
    assert resolve_protocol("sclip", "voc21").eval_cfg.crop_fit == "centre"
    assert EvalConfig().crop_fit == "end"
