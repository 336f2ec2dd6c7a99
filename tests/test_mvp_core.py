"""MVP-SEG maths against small independent computations, and the frozen-backbone guarantee."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pgseg_core.mvp.fusion import fuse_views
from pgseg_core.mvp.gpr import gate_masks, global_class_scores
from pgseg_core.mvp.losses import classification_loss, image_labels, segmentation_loss, total_loss
from pgseg_core.mvp.oc_loss import orthogonal_constraint_loss


def test_oc_loss_matches_pairwise_loop():
    g = torch.Generator().manual_seed(0)
    ctx = torch.randn(4, 5, 7, generator=g)
    expected = 0.0
    means = [ctx[i].mean(0) for i in range(4)]
    for i, j in itertools.combinations(range(4), 2):
        a, b = means[i], means[j]
        expected += abs(float(a @ b)) / (float(a.norm()) * float(b.norm()))
    assert float(orthogonal_constraint_loss(ctx)) == pytest.approx(expected, rel=1e-5)


def test_oc_loss_zero_for_orthogonal_and_max_for_parallel():
    ctx = torch.zeros(3, 2, 3)
    for i in range(3):
        ctx[i, :, i] = 1.0
    assert float(orthogonal_constraint_loss(ctx)) == pytest.approx(0.0, abs=1e-7)
    same = torch.ones(3, 2, 3)
    same[1] *= -2  # |cos| counts anti-parallel vectors too
    assert float(orthogonal_constraint_loss(same)) == pytest.approx(3.0, rel=1e-6)
    assert float(orthogonal_constraint_loss(torch.randn(1, 2, 3))) == 0.0


def test_fusion_is_softmax_of_scaled_sum_over_classes():
    g = torch.Generator().manual_seed(1)
    m = torch.rand(3, 2, 4, 2, 3, generator=g) * 2 - 1
    fused = fuse_views(m, 5.0)
    b, y, x = 1, 1, 2
    logits = [5.0 * sum(float(m[i, b, c, y, x]) for i in range(3)) for c in range(4)]
    z = sum(math.exp(v) for v in logits)
    for c in range(4):
        assert float(fused[b, c, y, x]) == pytest.approx(math.exp(logits[c]) / z, rel=1e-5)
    assert torch.allclose(fused.sum(1), torch.ones(2, 2, 3))


def test_gpr_scores_and_gate_match_loop():
    g = torch.Generator().manual_seed(2)
    m0 = torch.rand(2, 3, 2, 2, generator=g) * 2 - 1
    gamma, tau2 = 4.0, 0.5
    scores = global_class_scores(m0, gamma, tau2)
    for b in range(2):
        for c in range(3):
            vals = [float(v) for v in m0[b, c].flatten()]
            w = [math.exp(gamma * v) for v in vals]
            pooled = sum(v * wi for v, wi in zip(vals, w)) / sum(w)
            assert float(scores[b, c]) == pytest.approx(1 / (1 + math.exp(-pooled / tau2)), rel=1e-5)
    fused = torch.softmax(torch.rand(2, 3, 2, 2, generator=g), 1)
    gated = gate_masks(fused, scores)
    assert float(gated[1, 2, 0, 1]) == pytest.approx(float(fused[1, 2, 0, 1]) * float(scores[1, 2]), rel=1e-6)
    # γ -> 0 is mean pooling
    mean_pool = torch.sigmoid(m0.flatten(2).mean(-1) / tau2)
    assert torch.allclose(global_class_scores(m0, 0.0, tau2), mean_pool, atol=1e-6)


def test_losses_match_hand_computation():
    gated = torch.tensor([[[[0.5, 0.2]], [[0.25, 0.6]]]])  # [1, 2, 1, 2]
    target = torch.tensor([[[0, 255]]])
    assert float(segmentation_loss(gated, target, eps=0.0)) == pytest.approx(-math.log(0.5), rel=1e-6)
    target2 = torch.tensor([[[1, 1]]])
    expected = -(math.log(0.25) + math.log(0.6)) / 2
    assert float(segmentation_loss(gated, target2, eps=0.0)) == pytest.approx(expected, rel=1e-6)
    assert float(segmentation_loss(gated, torch.full((1, 1, 2), 255))) == 0.0
    scores = torch.tensor([[0.9, 0.2]])
    labels = image_labels(torch.tensor([[[0, 0, 255]]]), 2)
    assert labels.tolist() == [[1.0, 0.0]]
    expected_cls = -(math.log(0.9) + math.log(0.8)) / 2
    assert float(classification_loss(scores, labels)) == pytest.approx(expected_cls, rel=1e-5)
    total = total_loss(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0), (0.5, 0.25, 2.0))
    assert float(total) == pytest.approx(0.5 + 0.5 + 6.0)


def test_cell_targets_sample_cell_centres():
    import numpy as np

    from pgseg_core.mvp.train import _cell_targets

    label = np.arange(64).reshape(8, 8) % 7
    got = _cell_targets(label, (3, 2), 4, (8, 8))  # the third row of cells lies in the padding
    assert got.tolist() == [[label[2, 2], label[2, 6]], [label[6, 2], label[6, 6]], [255, 255]]
    half = _cell_targets(label, (1, 1), 4, (4, 4))  # the image was resized to half: centre (2, 2) -> (4, 4)
    assert half.tolist() == [[label[4, 4]]]


def test_bg_thresh_rule_matches_hand_computation(tmp_path):
    """bg_thresh > 0: the classes after "background" are scored alone and background is the constant
    threshold (GroupViT's rule); 0: background is one more text class."""
    from _mvp_fixtures import tiny_open_clip
    from pgseg_core.backbones import load_backbone
    from pgseg_core.mvp.predict import DensePredictor
    from pgseg_core.mvp.templates import template_set

    bb = load_backbone(tiny_open_clip(tmp_path))
    with torch.no_grad():
        dense = bb.dense(torch.randn(1, 3, 48, 64))  # [1, D, 3, 4], L2-normalised
    names = ["background", "cat", "dog"]
    plain = DensePredictor(bb, None, template_set("groupvit"))
    thresh = DensePredictor(bb, None, template_set("groupvit"), bg_thresh=0.6)
    emb = bb.class_embeddings(["cat", "dog"], template_set("groupvit"))
    logits = torch.einsum("bdhw,cd->bchw", dense, emb) * bb.logit_scale
    want_fg = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
    got = thresh.grid_scores(dense, names)
    assert torch.allclose(got[:, 1:], want_fg, atol=1e-5) and bool((got[:, 0] == 0.6).all())
    assert plain.grid_scores(dense, names).shape == (1, 3, 3, 4)
    assert torch.allclose(plain.grid_scores(dense, names).sum(dim=1), torch.ones(1, 3, 4), atol=1e-5)
    # without "background" first there is nothing to threshold
    assert torch.allclose(thresh.grid_scores(dense, ["cat", "dog"]), want_fg, atol=1e-5)
    from pgseg_core.errors import ConfigError
    from pgseg_core.mvp.config import MVPConfig

    with pytest.raises(ConfigError, match="bg_thresh"):
        MVPConfig().with_overrides({"mvp.bg_thresh": 1.5})
