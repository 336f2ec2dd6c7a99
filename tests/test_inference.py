"""GroupViT inference rule (docs/METHOD.md §4.2-4.3) against hand-computed and loop references."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pgseg_core.config import EvalConfig
from pgseg_core.errors import ConfigError, DataError
from pgseg_core.inference import (
    CropFeatures,
    compute_class_embeddings,
    crop_scores,
    extract_features,
    group_probabilities,
    predict,
    rescale_size,
    resize_short_side,
    slide_windows,
)

COLOURS = {"red": 0, "green": 1, "blue": 2}


class ColourModel(torch.nn.Module):
    """Fake PGSeg-contract model: stage 0 groups tokens by their dominant colour channel.

    Stage 0: 3 groups, logits = 20·(mean normalised colour of the 16×16 patch); stage 1: identity 3 -> 3.
    Group embeddings are the unit colour axes, class embeddings of "red"/"green"/"blue" too, so a red
    region is labelled "red". The image embedding is the mean patch colour.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, ...]] = []

    def encode_image(self, images: torch.Tensor, dense: bool = False) -> SimpleNamespace:
        b, _, h, w = images.shape
        assert h % 16 == 0 and w % 16 == 0, (h, w)
        self.calls.append(tuple(images.shape))
        tokens = F.avg_pool2d(images, 16)  # [B,3,h,w]
        gh, gw = tokens.shape[-2:]
        a0 = (20.0 * tokens.flatten(2)).softmax(dim=1)  # [B,3,N]
        a1 = torch.eye(3).expand(b, 3, 3).clone()
        return SimpleNamespace(
            image_emb=tokens.mean(dim=(2, 3)),
            group_emb=3.0 * torch.eye(3).expand(b, 3, 3).clone(),  # not normalised on purpose
            assign_soft=[a0, a1],
            assign_hard=[F.one_hot(a.argmax(1), a.shape[1]).transpose(1, 2).float() for a in (a0, a1)],
            grid=(gh, gw),
        )

    def class_embeddings(self, names: list[str], templates: list[str]) -> torch.Tensor:
        rows = []
        for n in names:
            v = torch.full((3,), 0.05)
            v[COLOURS.get(n, sum(map(ord, n)) % 3)] = 1.0
            rows.append(v)
        return F.normalize(torch.stack(rows), dim=-1)

    def logit_scale_value(self) -> float:
        return 100.0


def _cfg(**kw) -> EvalConfig:
    base = dict(short_side=64, max_long=256, mode="slide", crop=48, stride=32, bg_thresh=0.5, top_k=0)
    base.update(kw)
    return EvalConfig(**base)


# ------------------------------------------------------------------------------------------------------
# group probabilities


def _random_assign(b: int, s: int, n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(b, s, n, generator=gen).softmax(dim=1)


def test_group_probabilities_matches_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    h, w = 3, 4
    a0 = _random_assign(2, 5, h * w, gen)
    a1 = _random_assign(2, 3, 5, gen)
    a2 = _random_assign(2, 2, 3, gen)
    out = group_probabilities([a0, a1, a2], (h, w))
    assert out.shape == (2, 2, h, w)
    ref = torch.zeros(2, 2, h * w)
    for bi in range(2):
        for n in range(h * w):
            for s2 in range(2):
                total = 0.0
                for s1 in range(3):
                    for s0 in range(5):
                        total += float(a0[bi, s0, n] * a1[bi, s1, s0] * a2[bi, s2, s1])
                ref[bi, s2, n] = total
    torch.testing.assert_close(out, ref.reshape(2, 2, h, w), atol=1e-6, rtol=1e-5)
    # probabilities over the final groups still sum to one per token
    torch.testing.assert_close(out.sum(dim=1), torch.ones(2, h, w))


def test_group_probabilities_single_stage_and_token_order() -> None:
    a0 = torch.zeros(1, 2, 6)
    a0[0, 0, [0, 1, 2]] = 1.0  # first row of a 2x3 grid
    a0[0, 1, [3, 4, 5]] = 1.0
    out = group_probabilities([a0], (2, 3))
    assert out[0, 0].tolist() == [[1, 1, 1], [0, 0, 0]]
    assert out[0, 1].tolist() == [[0, 0, 0], [1, 1, 1]]


def test_group_probabilities_rejects_bad_chain() -> None:
    with pytest.raises(ValueError):
        group_probabilities([torch.rand(1, 4, 6)], (2, 2))
    with pytest.raises(ValueError):
        group_probabilities([torch.rand(1, 4, 6), torch.rand(1, 2, 5)], (2, 3))


# ------------------------------------------------------------------------------------------------------
# crop scores


def _two_group_feats(image_emb: list[float]) -> CropFeatures:
    """Group 0 owns the left token column, group 1 the right one (1x2 token grid)."""
    g = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    probs = torch.tensor([[[[0.9, 0.2]], [[0.1, 0.8]]]])  # [1,2,1,2]
    return CropFeatures(group_emb=g, image_emb=torch.tensor([image_emb]), group_probs=probs)


def test_crop_scores_top1_and_background() -> None:
    feats = _two_group_feats([1.0, 0.0, 0.0])  # image-level top-1 class = class 0
    t = torch.eye(3)
    e = math.e
    pre00 = e / (e + 2)  # softmax([1,0,0])[0], group 0
    pre10 = 1 / (e + 2)  # softmax([0,1,0])[0], group 1
    out = crop_scores(feats, t, logit_scale=1.0, bg_thresh=0.95, top_k=1, out_size=(2, 4))
    assert out.shape == (1, 4, 2, 4)
    left, right = out[0, :, :, :2], out[0, :, :, 2:]
    # only class 0 survives: Aff[s] = [pre[s,0], 0, 0]
    torch.testing.assert_close(left[1], torch.full((2, 2), pre00))
    torch.testing.assert_close(right[1], torch.full((2, 2), pre10))
    assert out[0, 2:].abs().max() == 0
    # thr = min(0.95, max Aff) = pre00: the right group (pre10 < thr) is background, the left is not
    assert out[0, 0, :, :2].sum() == 0
    assert (out[0, 0, :, 2:] == 1).all()
    # a low bg_thresh removes the background
    out = crop_scores(feats, t, logit_scale=1.0, bg_thresh=0.1, top_k=1, out_size=(2, 4))
    assert out[0, 0].sum() == 0


def test_crop_scores_all_classes_matches_formula() -> None:
    gen = torch.Generator().manual_seed(1)
    b, s, c, d, h, w = 2, 3, 4, 5, 2, 3
    g = F.normalize(torch.randn(b, s, d, generator=gen), dim=-1)
    a = F.normalize(torch.randn(b, d, generator=gen), dim=-1)
    t = F.normalize(torch.randn(c, d, generator=gen), dim=-1)
    probs = torch.randn(b, s, h, w, generator=gen).softmax(dim=1)
    feats = CropFeatures(group_emb=g, image_emb=a, group_probs=probs)
    scale, top_k = 10.0, 2
    out = crop_scores(feats, t, scale, bg_thresh=0.95, top_k=top_k, out_size=(h, w))
    assert out.shape == (b, c + 1, h, w)
    for bi in range(b):
        aff = scale * g[bi] @ t.T
        pre = aff.softmax(-1)
        img = (scale * a[bi] @ t.T).softmax(-1)
        keep = set(img.argsort(descending=True)[:top_k].tolist())
        masked = aff.clone()
        for ci in range(c):
            if ci not in keep:
                masked[:, ci] = -float("inf")
        aff2 = masked.softmax(-1) * pre
        thr = min(0.95, float(aff2.max()))
        for y in range(h):
            for x in range(w):
                grp = int(probs[bi, :, y, x].argmax())  # same size: no resize effect
                torch.testing.assert_close(out[bi, 1:, y, x], aff2[grp])
                expect_bg = 1.0 if float(aff2[grp].max()) < thr else 0.0
                assert float(out[bi, 0, y, x]) == expect_bg
        # classes outside the top-k never score
        for ci in range(c):
            if ci not in keep:
                assert out[bi, 1 + ci].abs().max() == 0


def test_crop_scores_without_background_and_topk_zero() -> None:
    feats = _two_group_feats([0.0, 0.0, 1.0])
    out_all = crop_scores(feats, torch.eye(3), 1.0, 0.95, top_k=0, out_size=(1, 2), with_background=False)
    out_big = crop_scores(feats, torch.eye(3), 1.0, 0.95, top_k=99, out_size=(1, 2), with_background=False)
    assert out_all.shape == (1, 3, 1, 2)
    torch.testing.assert_close(out_all, out_big)
    # with all classes kept, Aff = softmax(Aff)·pre = pre²
    e = math.e
    torch.testing.assert_close(out_all[0, :, 0, 0], torch.tensor([e, 1, 1]) ** 2 / (e + 2) ** 2)


# ------------------------------------------------------------------------------------------------------
# geometry


@pytest.mark.parametrize(
    "h,w",
    [(448, 448), (449, 600), (672, 672), (300, 200), (40, 1000), (1, 1), (895, 897)],
)
def test_slide_windows_cover_with_stride_counts(h: int, w: int) -> None:
    crop, stride = 448, 224
    wins = slide_windows(h, w, crop, stride)
    h_grids = max(h - crop + stride - 1, 0) // stride + 1
    w_grids = max(w - crop + stride - 1, 0) // stride + 1
    assert len(wins) == h_grids * w_grids
    count = np.zeros((h, w), dtype=np.int64)
    for y1, y2, x1, x2 in wins:
        assert 0 <= y1 < y2 <= h and 0 <= x1 < x2 <= w
        assert (y2 - y1, x2 - x1) == (min(crop, h), min(crop, w))
        count[y1:y2, x1:x2] += 1
    assert count.min() >= 1

    # the count is separable: rows-covered × columns-covered, each from the per-axis starts
    def axis_counts(size: int, grids: int) -> np.ndarray:
        c = np.zeros(size, dtype=np.int64)
        for i in range(grids):
            end = min(i * stride + crop, size)
            c[max(end - crop, 0) : end] += 1
        return c

    np.testing.assert_array_equal(count, np.outer(axis_counts(h, h_grids), axis_counts(w, w_grids)))


def test_slide_windows_known_layout() -> None:
    wins = slide_windows(672, 500, 448, 224)
    assert wins == [(0, 448, 0, 448), (0, 448, 52, 500), (224, 672, 0, 448), (224, 672, 52, 500)]
    with pytest.raises(ValueError):
        slide_windows(10, 10, 0, 1)


def test_resize_short_side_keep_ratio() -> None:
    assert rescale_size(300, 500, 448, 2048) == (448, 747)
    assert rescale_size(500, 300, 448, 2048) == (747, 448)
    assert rescale_size(100, 2000, 448, 2048) == (102, 2048)  # long side caps the scale
    img = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    out = resize_short_side(img, 60, 1000)
    assert out.dtype == np.uint8 and out.shape == (60, 100, 3)
    flat = np.full((30, 50, 3), 77, dtype=np.uint8)
    assert (resize_short_side(flat, 15, 1000) == 77).all()
    t = torch.rand(2, 3, 30, 50)
    assert resize_short_side(t, 60, 1000).shape == (2, 3, 60, 100)
    assert resize_short_side(t[0], 60, 1000).shape == (3, 60, 100)


# ------------------------------------------------------------------------------------------------------
# end to end with the fake model


def _red_green_image(h: int, w: int) -> np.ndarray:
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[:, : w // 2, 0] = 255
    img[:, w // 2 :, 1] = 255
    return img


def test_extract_features_normalises() -> None:
    feats = extract_features(ColourModel(), torch.randn(2, 3, 32, 48))
    assert feats.group_probs.shape == (2, 3, 2, 3)
    torch.testing.assert_close(feats.group_emb.norm(dim=-1), torch.ones(2, 3))
    torch.testing.assert_close(feats.image_emb.norm(dim=-1), torch.ones(2))


@pytest.mark.parametrize("mode", ["slide", "whole"])
def test_predict_end_to_end(mode: str) -> None:
    model = ColourModel()
    names = ["green", "blue", "red"]
    emb = compute_class_embeddings(model, names, ["a photo of a {}."], "cpu")
    image = _red_green_image(50, 90)  # resized to 64 x 115, padded to multiples of 16
    label, scores = predict(model, image, emb, _cfg(mode=mode), "cpu")
    assert label.shape == (50, 90) and label.dtype == np.int64
    assert scores.shape == (4, 50, 90) and scores.dtype == np.float32
    assert label.min() >= 0 and label.max() <= len(names)
    assert np.isfinite(scores).all() and scores.min() >= 0 and scores.max() <= 1 + 1e-5
    # every encoder input is a multiple of 16; slide uses crop-size windows clamped to the image
    for shape in model.calls:
        assert shape[2] % 16 == 0 and shape[3] % 16 == 0
    # red half -> "red" (label 3), green half -> "green" (label 1), away from the seam
    assert (label[:, :35] == 3).mean() > 0.95
    assert (label[:, 55:] == 1).mean() > 0.95


def test_predict_crop_batch_does_not_change_result() -> None:
    model = ColourModel()
    emb = compute_class_embeddings(model, ["red", "green"], ["{}"], "cpu")
    image = np.random.default_rng(3).integers(0, 256, (70, 130, 3), dtype=np.uint8)
    l1, s1 = predict(model, image, emb, _cfg(), "cpu", crop_batch=1)
    l2, s2 = predict(model, image, emb, _cfg(), "cpu", crop_batch=16)
    np.testing.assert_array_equal(l1, l2)
    np.testing.assert_allclose(s1, s2, atol=1e-6)


def test_predict_rejects_bad_inputs() -> None:
    model = ColourModel()
    emb = compute_class_embeddings(model, ["red"], ["{}"], "cpu")
    with pytest.raises(DataError):
        predict(model, np.zeros((10, 10), dtype=np.uint8), emb, _cfg(), "cpu")
    with pytest.raises(DataError):
        predict(model, np.zeros((10, 10, 3), dtype=np.float32), emb, _cfg(), "cpu")
    with pytest.raises(ConfigError):
        predict(model, np.zeros((10, 10, 3), dtype=np.uint8), emb, _cfg(stride=0), "cpu")
    with pytest.raises(ConfigError):
        compute_class_embeddings(model, [], ["{}"], "cpu")
    with pytest.raises(ConfigError):
        compute_class_embeddings(model, ["red"], ["no placeholder"], "cpu")
