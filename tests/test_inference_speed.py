"""The faster inference helpers give the exact values of the plain formulas they replace.

crop_scores builds each group's channel values first and gathers them per pixel; channel_argmax and
pixel_groups take the argmax over channels on channels-last blocks. Both must equal, bit for bit, the
per-pixel formulas (docs/METHOD.md §4.3) written out here, ties and background words included.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pgseg_core.inference import windows
from pgseg_core.inference.classes import ClassEmbeddings
from pgseg_core.inference.features import CropFeatures
from pgseg_core.inference.rules import crop_probabilities, crop_scores, pixel_groups


def _features(b=2, s=5, d=8, h=3, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return CropFeatures(
        group_emb=F.normalize(torch.randn(b, s, d, generator=g), dim=-1),
        image_emb=F.normalize(torch.randn(b, d, generator=g), dim=-1),
        group_probs=torch.rand(b, s, h, w, generator=g).round(decimals=1),  # ties between groups
    )


def _class_emb(c=6, d=8, background_words=False, seed=1):
    g = torch.Generator().manual_seed(seed)
    rows = c + 2 * int(background_words)
    owner = torch.arange(c).tolist() + [c] * (rows - c)
    emb = F.normalize(torch.randn(rows, d, generator=g), dim=-1)
    return ClassEmbeddings(emb, torch.tensor(owner), c, background_words)


def _reference_scores(feats, ce, scale, bg_thresh, top_k, out_size, with_background):
    """The per-pixel formula: class maps M·Aff, background where the pixel's best class is below thr."""
    from pgseg_core.inference.rules import _top_k_affinity

    t = ce.emb
    aff = _top_k_affinity(feats, ce, t, scale, top_k)
    idx = F.interpolate(feats.group_probs, size=out_size, mode="bilinear", align_corners=False).argmax(dim=1)
    b = idx.shape[0]
    maps = aff[torch.arange(b)[:, None, None], idx].permute(0, 3, 1, 2)  # [B,C',H,W]
    bg_words = None
    if ce.has_background_words:
        bg_words, maps, aff = maps[:, -1], maps[:, :-1], aff[..., :-1]
    if not with_background:
        return maps
    thr = torch.clamp(aff.amax(dim=(1, 2)), max=bg_thresh)
    background = (maps.amax(dim=1) < thr[:, None, None]).float()
    if bg_words is not None:
        background = torch.maximum(background, bg_words)
    return torch.cat([background[:, None], maps], dim=1)


@pytest.mark.parametrize("background_words", [False, True])
@pytest.mark.parametrize("with_background", [True, False])
@pytest.mark.parametrize("bg_thresh,top_k", [(0.95, 3), (0.0, 0), (1.0, 2)])
def test_crop_scores_equal_the_per_pixel_formula(background_words, with_background, bg_thresh, top_k):
    if background_words and not with_background:
        pytest.skip("background words need a background class")
    feats, ce = _features(), _class_emb(background_words=background_words)
    got = crop_scores(feats, ce, 50.0, bg_thresh, top_k, (13, 17), with_background)
    ref = _reference_scores(feats, ce, 50.0, bg_thresh, top_k, (13, 17), with_background)
    assert got.shape == ref.shape and torch.equal(got, ref)


def test_crop_probabilities_equal_the_per_pixel_formula():
    feats, ce = _features(), _class_emb(background_words=True)
    got = crop_probabilities(feats, ce, 40.0, (13, 17))
    idx = F.interpolate(feats.group_probs, size=(13, 17), mode="bilinear", align_corners=False).argmax(dim=1)
    prob = ce.reduce(40.0 * torch.einsum("bsd,md->bsm", feats.group_emb, ce.emb)).softmax(dim=-1)
    ref = prob[torch.arange(2)[:, None, None], idx].permute(0, 3, 1, 2)
    assert torch.equal(got, ref)


@pytest.mark.parametrize("block", [1, 7, 1 << 22])  # one row per block, partial blocks, one block
def test_channel_argmax_equals_argmax_with_ties(monkeypatch, block):
    monkeypatch.setattr(windows, "_ARGMAX_BLOCK", block)
    for k in (1, 2, 11, 40):
        scores = torch.randint(0, 3, (k, 9, 13)).float()  # many ties: the first channel must win
        assert torch.equal(windows.channel_argmax(scores), scores.argmax(dim=0))
    probs = torch.rand(3, 4, 5, 6).round(decimals=1)
    assert torch.equal(
        pixel_groups(probs, (11, 7)), F.interpolate(probs, size=(11, 7), mode="bilinear").argmax(1)
    )
