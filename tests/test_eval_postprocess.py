"""Evaluation completeness (docs/EVAL.md): SCLIP's area threshold, PAMR, the 80 templates of the
training-free protocol and PGSeg's COCO-Object spelling. Oracles are plain numpy loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgseg_core.eval.datasets import load_class_spec
from pgseg_core.eval.protocol import resolve_protocol
from pgseg_core.inference.postprocess import area_filter, pamr, pamr_affinity
from pgseg_core.prompt_templates import template_set

pytestmark = pytest.mark.usefixtures("single_thread")


def np_area_filter(scores: np.ndarray, thresh: float) -> np.ndarray:
    if thresh == 0:  # off (SCLIP's area_thd=None)
        return scores
    k = scores.shape[0]
    winner = scores.argmax(axis=0)
    counts = [int((winner == c).sum()) for c in range(k)]
    fg_total = sum(counts[1:])
    out = scores.copy()
    for c in range(1, k):
        if not counts[c] > thresh * fg_total:
            out[c] = 0.0
    return out


@pytest.mark.parametrize("thresh", [0.0, 0.1, 0.3])
def test_area_filter_matches_numpy(thresh):
    rng = np.random.default_rng(0)
    scores = rng.random((5, 12, 10)).astype(np.float32)
    scores[3] *= 0.3  # class 3 rarely wins
    scores[0, :4] += 1.0  # background wins the top rows, outside the non-background total
    got = area_filter(torch.tensor(scores), thresh).numpy()
    np.testing.assert_array_equal(got, np_area_filter(scores, thresh))
    if thresh == 0.3:
        assert (got[1:] == 0).all(axis=(1, 2)).any()  # something was dropped


def np_pamr(image: np.ndarray, scores: np.ndarray, iters: int, dilations) -> np.ndarray:
    """PAMR with explicit per-pixel loops; replicate padding = clamped indices."""
    c, h, w = image.shape
    offsets = [(dy, dx) for d in dilations for dy in (-d, 0, d) for dx in (-d, 0, d)]

    def at(a, y, x):
        return a[:, min(max(y, 0), h - 1), min(max(x, 0), w - 1)]

    aff = np.zeros((h, w, 8 * len(dilations)))
    for y in range(h):
        for x in range(w):
            hood = np.stack([at(image, y + dy, x + dx) for dy, dx in offsets], axis=1)  # [C, 9D]
            sigma = hood.std(axis=1, ddof=1)
            logits = []
            for dy, dx in offsets:
                if dy == 0 and dx == 0:
                    continue
                diff = np.abs(image[:, y, x] - at(image, y + dy, x + dx))
                logits.append(np.mean(-diff / (1e-8 + 0.1 * sigma)))
            e = np.exp(np.array(logits) - max(logits))
            aff[y, x] = e / e.sum()
    out = scores.astype(np.float64)
    for _ in range(iters):
        new = np.zeros_like(out)
        for y in range(h):
            for x in range(w):
                j = 0
                for dy, dx in offsets:
                    if dy == 0 and dx == 0:
                        continue
                    new[:, y, x] += aff[y, x, j] * at(out, y + dy, x + dx)
                    j += 1
        out = new
    return out


def test_pamr_matches_a_per_pixel_loop():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(3, 7, 9))
    scores = rng.random((4, 7, 9))
    got = pamr(torch.tensor(image), torch.tensor(scores), iters=3, dilations=(1, 2))
    np.testing.assert_allclose(got.numpy(), np_pamr(image, scores, 3, (1, 2)), rtol=1e-5, atol=1e-6)
    aff = pamr_affinity(torch.tensor(image), (1, 2))
    assert aff.shape == (16, 7, 9)
    np.testing.assert_allclose(aff.sum(0).numpy(), 1.0, atol=1e-5)
    assert pamr(torch.tensor(image), torch.tensor(scores), iters=0) is not None


def test_pamr_snaps_scores_to_a_colour_edge():
    """Two flat colour halves (edge at column 8) with mild noise; the scores' boundary is at column 11.
    After PAMR the arg-max follows the colour edge."""
    rng = np.random.default_rng(2)
    h, w = 16, 16
    image = np.zeros((3, h, w))
    image[:, :, 8:] = 1.0
    image += rng.normal(scale=0.02, size=image.shape)
    scores = np.zeros((2, h, w))
    scores[0, :, :11] = 0.6
    scores[1, :, :11] = 0.4
    scores[0, :, 11:] = 0.2
    scores[1, :, 11:] = 0.8
    before = scores.argmax(0)
    after = pamr(torch.tensor(image), torch.tensor(scores), iters=10, dilations=(1, 2)).numpy().argmax(0)
    truth = np.zeros((h, w), dtype=int)
    truth[:, 8:] = 1
    assert (before == truth).mean() == pytest.approx(13 / 16)
    assert (after == truth).mean() >= 0.95  # 98.8 % here: 3 pixels of column 10 stay wrong
    assert (after[:, :8] == 0).all() and (after[:, 11:] == 1).all()
    with pytest.raises(ValueError):
        pamr(torch.zeros(3, 4, 4), torch.zeros(2, 5, 4))


def test_sclip_protocol_uses_the_80_templates_and_the_voc21_area_threshold():
    voc = resolve_protocol("sclip", "voc21").eval_cfg
    assert voc.templates == template_set("imagenet80") and voc.area_thresh == 0.1
    pc = resolve_protocol("sclip", "pc60").eval_cfg
    assert len(pc.templates) == 80 and pc.area_thresh == 0.0
    # the GroupViT protocol keeps its single template; a user can name the set too
    assert resolve_protocol("groupvit", "voc21").eval_cfg.templates == ["a photo of a {}."]
    user = resolve_protocol("groupvit", "voc21", overrides={"eval.templates": "imagenet80"}).eval_cfg
    assert len(user.templates) == 80


def test_coco_object_class_names_follow_the_checkpoint_familys_reference_evaluation():
    gv = resolve_protocol("groupvit", "coco-object", "groupvit")
    pg = resolve_protocol("groupvit", "coco-object", "pgseg")
    assert gv.class_names == "groupvit" and pg.class_names == "pgseg"
    names_gv = load_class_spec("coco-object", "groupvit").names
    names_pg = load_class_spec("coco-object", "pgseg").names
    diff = [(a, b) for a, b in zip(names_gv, names_pg) if a != b]
    assert diff == [("airplane", "aeroplane")] and len(names_gv) == len(names_pg) == 80
    # other datasets: PGSeg evaluated with GroupViT's names
    assert resolve_protocol("groupvit", "voc21", "pgseg").class_names == "groupvit"
    assert load_class_spec("voc21", "pgseg").names == load_class_spec("voc21", "groupvit").names


# ---------------------------------------------------------------------------------------------------------
# wiring: the prob rule's labels, and PAMR inside the inference paths


def _rule(**kw):
    from pgseg_core.config import EvalConfig
    from pgseg_core.inference import select_rule

    emb = torch.nn.functional.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    return select_rule(EvalConfig(rule="prob", **kw), emb, 10.0, with_background=True)


def test_prob_rule_labels_after_the_area_threshold():
    rng = np.random.default_rng(4)
    probs = rng.dirichlet([1.0, 1.0, 0.3], size=(10, 12)).transpose(2, 0, 1).astype(np.float32)  # [3,H,W]
    rule = _rule(area_thresh=0.3, prob_thresh=0.4)
    label, scores = rule.label(torch.tensor(probs))
    ref_scores = np_area_filter(np.concatenate([np.zeros_like(probs[:1]), probs]), 0.3)
    ref_label = ref_scores.argmax(0)
    ref_label[ref_scores.max(0) < 0.4] = 0
    np.testing.assert_array_equal(scores.numpy(), ref_scores)
    np.testing.assert_array_equal(label.numpy(), ref_label)
    assert (ref_scores[1:] == 0).all(axis=(1, 2)).any()  # a class was dropped here
    from pgseg_core.config import EvalConfig
    from pgseg_core.errors import ConfigError
    from pgseg_core.inference import select_rule

    emb = torch.eye(3, 8)
    with pytest.raises(ConfigError, match="area_thresh"):
        select_rule(EvalConfig(rule="groupvit", area_thresh=0.1), emb, 10.0)
    with pytest.raises(ConfigError, match="area_thresh"):
        select_rule(EvalConfig(rule="prob", area_thresh=0.1), emb, 10.0, with_background=False)


def test_pamr_runs_in_every_inference_path_and_needs_the_image():
    from pgseg_core.config import EvalConfig, load_config
    from pgseg_core.errors import ConfigError
    from pgseg_core.inference import (
        TorchEncoder,
        compute_class_embeddings,
        extract_image_features,
        predict,
        predict_batch,
        prepare_image,
        scores_from_features,
    )
    from tests._fixtures import varied_model

    cfg = load_config("pgseg-tiny")
    model = varied_model(cfg)
    emb = compute_class_embeddings(model, ["cat", "dog", "car"], ["a photo of a {}."], "cpu")
    rng = np.random.default_rng(5)
    image = (rng.random((40, 70, 3)) * 255).astype(np.uint8)
    image[:, 35:] = (40, 200, 40)
    plain = EvalConfig(short_side=48, mode="slide", crop=32, stride=16, bg_thresh=0.3, top_k=3)
    refined = EvalConfig(**{**plain.__dict__, "pamr_iters": 3, "pamr_dilations": [1, 2]})
    l0, s0 = predict(model, image, emb, plain, "cpu")
    l1, s1 = predict(model, image, emb, refined, "cpu")
    assert not np.array_equal(s0, s1)
    feats = extract_image_features(model, image, refined, "cpu")
    l2, s2 = scores_from_features(feats, emb, refined, image=image)
    np.testing.assert_array_equal(s2, s1)
    np.testing.assert_array_equal(l2, l1)
    enc = TorchEncoder(model, "cpu", bf16=False)
    ((l3, s3),) = predict_batch(
        enc, [prepare_image(image, refined)], emb, model.logit_scale_value(), refined, "cpu"
    )
    np.testing.assert_allclose(s3, s1, atol=1e-5)
    with pytest.raises(ConfigError, match="pamr_iters"):
        scores_from_features(feats, emb, refined)
    with pytest.raises(ConfigError, match="PAMR"):
        scores_from_features(feats, emb, refined, image=image[:30])
