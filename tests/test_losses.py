"""Losses vs plain numpy / python / scipy re-computations: InfoNCE, Hungarian matching, HRS and L_PG."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from pgseg_core.losses import (
    hrs_kept_fraction,
    hrs_mask,
    hungarian_match,
    image_text_contrastive,
    prototype_group_loss,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def _l2(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def np_ce(logits: np.ndarray, targets) -> float:
    """Mean cross-entropy of rows ``logits`` [M, K] with integer targets."""
    losses = []
    for row, t in zip(logits, targets):
        m = row.max()
        lse = m + math.log(sum(math.exp(v - m) for v in row))
        losses.append(lse - row[t])
    return float(np.mean(losses))


# ---------------------------------------------------------------------------------------------------------
# image-text contrastive


def np_itc(img, txt, logit_scale, max_scale=100.0):
    i, t = _l2(img), _l2(txt)
    s = min(math.exp(logit_scale), max_scale)
    y = list(range(len(i)))
    return 0.5 * (np_ce(s * i @ t.T, y) + np_ce(s * t @ i.T, y))


@pytest.mark.parametrize("logit_scale", [math.log(1 / 0.07), 0.0, 10.0])
def test_image_text_contrastive_matches_numpy(logit_scale):
    gen = torch.Generator().manual_seed(0)
    img = torch.randn(5, 8, generator=gen) * 3
    txt = torch.randn(5, 8, generator=gen)
    ls = torch.tensor(logit_scale)
    loss = image_text_contrastive(img, txt, ls)
    assert loss.ndim == 0
    np.testing.assert_allclose(float(loss), np_itc(_np(img), _np(txt), logit_scale), rtol=1e-5)


def test_image_text_contrastive_clamps_scale_at_100():
    gen = torch.Generator().manual_seed(1)
    img, txt = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    clamped = image_text_contrastive(img, txt, torch.tensor(10.0))  # exp(10) ~ 22026 -> 100
    at_100 = image_text_contrastive(img, txt, torch.tensor(math.log(100.0)))
    np.testing.assert_allclose(float(clamped), float(at_100), rtol=1e-5)
    # the unclamped value would be very different
    unclamped = np_itc(_np(img), _np(txt), 10.0, max_scale=float("inf"))
    assert abs(unclamped - float(clamped)) > 1.0


def test_image_text_contrastive_gradients():
    gen = torch.Generator().manual_seed(2)
    img = torch.randn(4, 6, generator=gen, requires_grad=True)
    txt = torch.randn(4, 6, generator=gen, requires_grad=True)
    ls = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    image_text_contrastive(img, txt, ls).backward()
    for t in (img, txt, ls):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    # the clamped scale receives no gradient
    ls2 = torch.tensor(10.0, requires_grad=True)
    image_text_contrastive(img.detach(), txt.detach(), ls2).backward()
    assert float(ls2.grad) == 0.0


def test_image_text_contrastive_is_invariant_to_embedding_norm_and_low_for_matched_pairs():
    gen = torch.Generator().manual_seed(3)
    img = torch.randn(6, 16, generator=gen)
    ls = torch.tensor(math.log(100.0))
    matched = image_text_contrastive(img, img * 7.0, ls)
    assert float(matched) < 0.05
    torch.testing.assert_close(image_text_contrastive(img * 3, img, ls), matched)


# ---------------------------------------------------------------------------------------------------------
# Hungarian matching


def _cos(g, p):
    return _l2(g) @ _l2(p).T


def _best_total(sim: np.ndarray, maximize: bool) -> float:
    K = sim.shape[0]
    totals = [sum(sim[k, perm[k]] for k in range(K)) for perm in itertools.permutations(range(K))]
    return max(totals) if maximize else min(totals)


def _check_match(groups, protos, maximize):
    perm = hungarian_match(groups, protos, maximize=maximize)
    B, K, _ = groups.shape
    assert perm.shape == (B, K) and perm.dtype == torch.long
    for b in range(B):
        pb = perm[b].tolist()
        assert sorted(pb) == list(range(K)), "not a permutation"
        sim = _cos(_np(groups[b]), _np(protos[b]))
        achieved = sum(sim[k, pb[k]] for k in range(K))
        assert achieved == pytest.approx(_best_total(sim, maximize), abs=1e-6)
    return perm


@pytest.mark.parametrize("K", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("maximize", [True, False])
def test_hungarian_random_vs_brute_force(K, maximize):
    gen = torch.Generator().manual_seed(K)
    groups = torch.randn(3, K, 6, generator=gen)
    protos = torch.randn(3, K, 6, generator=gen)
    _check_match(groups, protos, maximize)


def test_hungarian_identity_and_known_permutation():
    gen = torch.Generator().manual_seed(0)
    groups = torch.randn(2, 5, 8, generator=gen)
    perm = _check_match(groups, groups.clone() * 2.5, maximize=True)  # cosine: scale does not matter
    assert perm.tolist() == [list(range(5))] * 2
    # prototypes are the groups shuffled: P[j] = G[order[j]], so group k <-> prototype order^-1(k)
    order = torch.tensor([3, 0, 4, 1, 2])
    perm = _check_match(groups, groups[:, order], maximize=True)
    inv = torch.argsort(order)
    assert perm.tolist() == [inv.tolist()] * 2
    # minimising on the identity problem avoids the diagonal (the released-code quirk)
    perm_min = _check_match(groups, groups.clone(), maximize=False)
    sim = _cos(_np(groups[0]), _np(groups[0]))
    assert sum(sim[k, perm_min[0, k]] for k in range(5)) < 5.0 - 1e-3


@pytest.mark.parametrize("maximize", [True, False])
def test_hungarian_ties(maximize):
    v = torch.randn(1, 1, 6, generator=torch.Generator().manual_seed(4))
    groups = v.expand(2, 4, 6).clone()  # all groups identical: every permutation is optimal
    protos = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(5))
    _check_match(groups, protos, maximize)
    # two identical prototypes among distinct ones
    groups = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(6))
    protos = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(7))
    protos[:, 1] = protos[:, 2]
    _check_match(groups, protos, maximize)


def test_hungarian_is_no_grad_and_device_preserving():
    groups = torch.randn(1, 3, 4, requires_grad=True)
    perm = hungarian_match(groups, torch.randn(1, 3, 4))
    assert not perm.requires_grad and perm.device == groups.device


# ---------------------------------------------------------------------------------------------------------
# HRS


SIM = torch.tensor([[[0.9, 0.1, 0.5], [0.2, 0.8, 0.4], [0.6, 0.3, 0.1]]], dtype=torch.float64)
# min-max over dim 1 (each column):
#   col 0: min .2 max .9 -> [1, 0, .5714]
#   col 1: min .1 max .8 -> [0, 1, .2857]
#   col 2: min .1 max .5 -> [1, .75, 0]
# norm = [[1, 0, 1], [0, 1, .75], [.5714, .2857, 0]]; diagonal = [1, 1, 0]; column 0 = [1, 0, .5714]


@pytest.mark.parametrize(
    "threshold,released,expected",
    [
        (0.1, False, [True, True, False]),
        (0.1, True, [True, False, True]),
        (0.6, False, [True, True, False]),
        (0.6, True, [True, False, False]),
        (0.5, True, [True, False, True]),
        (0.99, False, [True, True, False]),
        (1.0, False, [True, True, True]),
        (0.0, False, [True, True, False]),
    ],
)
def test_hrs_mask_hand_example(threshold, released, expected):
    got = hrs_mask(SIM, threshold, released_code=released)
    assert got.dtype == torch.bool and got.shape == (1, 3)
    assert got[0].tolist() == expected


def test_hrs_mask_batched_matches_loop():
    sim = torch.rand(4, 5, 5, generator=torch.Generator().manual_seed(0))
    for released in (False, True):
        got = hrs_mask(sim, 0.3, released_code=released)
        s = _np(sim)
        for b in range(4):
            for k in range(5):
                j = 0 if released else k
                colj = s[b, :, j]
                assert bool(got[b, k]) == np_hrs_keep(colj, k, 0.3, released), (b, k, released)


def np_hrs_keep(col, k: int, threshold: float, released: bool) -> bool:
    """HRS of pair k from one key column ``col`` (all queries vs that key). Released: ``col`` is column 0,
    its entry k min-max normalised (1e-6) above phi; default: ``col`` is column k, its matched entry
    col[k] within phi·(max - min) of the best."""
    lo, hi = float(np.min(col)), float(np.max(col))
    if released:
        return (col[k] - lo) / (hi - lo + 1e-6) > threshold
    return hi - col[k] <= threshold * (hi - lo)


@pytest.mark.parametrize("K", [8, 64])
def test_hrs_default_keeps_only_near_best_pairs_on_constructed_features(K):
    """Constructed groups / prototypes with a known kept set: prototype k = unit(group k + a_k·noise),
    where noise_k is orthogonal to every group. The similarities are computed here in numpy and the kept
    set by brute force over the columns."""
    rng = np.random.default_rng(K)
    C = 3 * K
    basis, _ = np.linalg.qr(rng.normal(size=(C, C)))
    groups = basis[:K] * 2.0  # orthogonal groups, norm 2
    noise = basis[K : 2 * K]  # orthogonal to every group
    a = np.linspace(0.0, 4.0, K)  # pair k's confidence falls with a_k
    protos = basis[:K] + a[:, None] * noise
    gn = groups / np.linalg.norm(groups, axis=1, keepdims=True)
    pn = protos / np.linalg.norm(protos, axis=1, keepdims=True)
    sim = gn @ pn.T  # query group i vs key prototype j: diagonal cos = 1/sqrt(1+a^2), off-diagonal 0
    for phi in (0.0, 0.1, 0.5, 1.0):
        expected = [np_hrs_keep(sim[:, k], k, phi, False) for k in range(K)]
        got = hrs_mask(torch.tensor(sim)[None], phi)[0].tolist()
        assert got == expected
    # here every matched entry is its column's best, so the default rule keeps all at any phi >= 0,
    # and the released column-0 rule keeps only key 0 (column 0 is 0 off the diagonal)
    assert all(hrs_mask(torch.tensor(sim)[None], 0.0)[0].tolist())
    assert hrs_mask(torch.tensor(sim)[None], 0.1, released_code=True)[0].tolist() == [True] + [False] * (
        K - 1
    )
    # swap: each group is closest to the *next* prototype (shifted similarity); matched entry 0.5 of the
    # best: phi = 0.1 drops every pair, phi = 0.6 keeps every pair
    shifted = np.eye(K)[:, np.roll(np.arange(K), 1)] + 0.5 * np.eye(K)
    for phi, keep in ((0.1, False), (0.6, True)):
        assert hrs_mask(torch.tensor(shifted)[None], phi)[0].tolist() == [keep] * K


def test_hrs_kept_fraction_on_random_features_is_well_below_one():
    """The default rule at phi = 0.1 on random K = 64 features, max-matched, keeps well under 100 %
    (the former "above phi" rule kept 100 %); the fraction equals the mean of the two directions' masks."""
    gen = torch.Generator().manual_seed(0)
    g, p = torch.randn(8, 64, 48, generator=gen), torch.randn(8, 64, 48, generator=gen)
    matched = torch.gather(p, 1, hungarian_match(g, p).unsqueeze(-1).expand_as(p))
    frac = hrs_kept_fraction(g, matched, 0.1)
    gn, pn = _l2(_np(g)), _l2(_np(matched))
    kept = []
    for b in range(8):
        for sim in (gn[b] @ pn[b].T, pn[b] @ gn[b].T):
            kept += [np_hrs_keep(sim[:, k], k, 0.1, False) for k in range(64)]
    assert float(frac) == pytest.approx(np.mean(kept), abs=1e-6)
    assert 0.3 < float(frac) < 0.95
    assert not frac.requires_grad and frac.ndim == 0


# ---------------------------------------------------------------------------------------------------------
# L_PG


def np_pg_loss(g, p, logit_scale, threshold, released, max_scale=100.0):
    """Reference L_PG with python loops: for each direction and image, row k = key k against every query
    (a column of the query-key similarity), kept if its HRS value exceeds phi; CE mean over kept rows,
    summed over the two directions."""
    s = min(math.exp(logit_scale), max_scale)
    B, K, _ = g.shape
    total = 0.0
    for direction in ("gp", "pg"):
        rows, targets = [], []
        for b in range(B):
            gn, pn = _l2(g[b]), _l2(p[b])
            sim = gn @ pn.T if direction == "gp" else pn @ gn.T  # sim[i, j]: query i vs key j
            for k in range(K):
                if np_hrs_keep(sim[:, 0 if released else k], k, threshold, released):
                    rows.append([s * sim[i, k] for i in range(K)])
                    targets.append(k)
        if rows:
            total += np_ce(np.array(rows), targets)
    return total


@pytest.mark.parametrize("released", [False, True])
@pytest.mark.parametrize("threshold", [0.1, 0.5])
@pytest.mark.parametrize("logit_scale", [math.log(10.0), 6.0])
def test_prototype_group_loss_matches_loop(released, threshold, logit_scale):
    gen = torch.Generator().manual_seed(11)
    g = torch.randn(3, 5, 7, generator=gen, requires_grad=True)
    p = torch.randn(3, 5, 7, generator=gen)
    ls = torch.tensor(logit_scale, requires_grad=True)
    loss = prototype_group_loss(g, p, ls, threshold, released)
    ref = np_pg_loss(_np(g), _np(p), logit_scale, threshold, released)
    np.testing.assert_allclose(loss.item(), ref, rtol=1e-5)
    loss.backward()
    assert g.grad is not None and torch.isfinite(g.grad).all() and g.grad.abs().sum() > 0
    if math.exp(logit_scale) < 100:
        assert ls.grad is not None and float(ls.grad) != 0.0


def test_prototype_group_loss_some_rows_dropped_changes_value():
    """The HRS selection matters: a loss over all rows differs from the default one when rows are dropped."""
    gen = torch.Generator().manual_seed(12)
    g, p = torch.randn(2, 4, 5, generator=gen), torch.randn(2, 4, 5, generator=gen)
    ls = torch.tensor(math.log(10.0))
    all_rows = np_pg_loss(_np(g), _np(p), math.log(10.0), 1.0, False)  # phi = 1 keeps every row
    got = float(prototype_group_loss(g, p, ls, 0.1, False))
    assert got == pytest.approx(np_pg_loss(_np(g), _np(p), math.log(10.0), 0.1, False), rel=1e-5)
    assert got != pytest.approx(all_rows, rel=1e-3)
    assert float(prototype_group_loss(g, p, ls, 1.0, False)) == pytest.approx(all_rows, rel=1e-5)


def test_prototype_group_loss_perfect_match_is_small():
    g = torch.eye(4).unsqueeze(0) * 3.0
    loss = prototype_group_loss(g, torch.eye(4).unsqueeze(0), torch.tensor(math.log(100.0)), 0.1)
    assert float(loss) < 1e-3  # logits 100 vs 0 on every row
    # an anti-matched pairing (rows shifted) is large
    shifted = torch.eye(4)[[1, 2, 3, 0]].unsqueeze(0)
    bad = prototype_group_loss(g, shifted, torch.tensor(math.log(100.0)), 1.0)
    assert float(bad) > 50


def test_prototype_group_loss_empty_selection_is_zero_with_graph():
    gen = torch.Generator().manual_seed(13)
    g = torch.randn(2, 4, 5, generator=gen, requires_grad=True)
    p = torch.randn(2, 4, 5, generator=gen)
    ls = torch.tensor(math.log(10.0), requires_grad=True)
    loss = prototype_group_loss(g, p, ls, threshold=-1.0)  # below the best by a negative margin: none
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert g.grad is not None and float(g.grad.abs().sum()) == 0.0
    assert torch.isfinite(g.grad).all()
