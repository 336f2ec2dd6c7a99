"""NPR: the no-grad EM vs a plain numpy EM (docs/METHOD.md §3.2), gradient isolation, momentum buffers,
and the text-side NPR in released (1-d) and default ([B, L, D] with mask) modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgseg_core.models.npr import NPR, TextNPR, em_prototypes

pytestmark = pytest.mark.usefixtures("single_thread")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def np_em(x: np.ndarray, mu: np.ndarray, iters: int, mask: np.ndarray | None = None, norm_axis: int = 2):
    """Plain EM with explicit per-sample loops.

    x [B, N, C], mu [B, K, C]. E-step: softmax over K of x·muᵀ, (mask), column-normalise over tokens with
    1e-6; M-step: mu = zᵀ x, L2-normalise with 1e-6 (over channels, or over K when ``norm_axis`` = 1).
    Returns (mu, z of the last E-step).
    """
    x = x.astype(np.float64)
    mu = mu.astype(np.float64).copy()
    B, N, _ = x.shape
    K = mu.shape[1]
    z = np.zeros((B, N, K))
    for _ in range(iters):
        new_mu = np.zeros_like(mu)
        for b in range(B):
            logits = x[b] @ mu[b].T  # [N, K]
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            zb = e / e.sum(axis=1, keepdims=True)
            if mask is not None:
                zb = zb * mask[b][:, None]
            for k in range(K):
                zb[:, k] = zb[:, k] / (1e-6 + zb[:, k].sum())
            z[b] = zb
            m = zb.T @ x[b]  # [K, C]
            if norm_axis == 2:
                m = m / (1e-6 + np.sqrt((m**2).sum(axis=1, keepdims=True)))
            else:
                m = m / (1e-6 + np.sqrt((m**2).sum(axis=0, keepdims=True)))
            new_mu[b] = m
        mu = new_mu
    return mu, z


def _np_unit(a: np.ndarray) -> np.ndarray:
    """Each row (last axis) divided by 1e-6 + its L2 norm."""
    return a / (1e-6 + np.sqrt((a**2).sum(axis=-1, keepdims=True)))


def _unit(shape, seed, axis=-1):
    a = np.random.default_rng(seed).normal(size=shape)
    return a / np.linalg.norm(a, axis=axis, keepdims=True)


# ---------------------------------------------------------------------------------------------------------
# em_prototypes


@pytest.mark.parametrize("iters", [1, 3, 10])
def test_em_prototypes_matches_numpy(iters):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 11, 6)) * 2.0
    mu0 = np.repeat(_unit((1, 4, 6), 1), 2, axis=0)
    mu, z = em_prototypes(torch.tensor(x, dtype=torch.float32), torch.tensor(mu0, dtype=torch.float32), iters)
    ref_mu, ref_z = np_em(x, mu0, iters)
    assert mu.shape == (2, 4, 6) and z.shape == (2, 11, 4)
    np.testing.assert_allclose(_np(mu), ref_mu, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_np(z), ref_z, rtol=1e-4, atol=1e-6)
    # outputs: unit-norm prototypes, column-normalised responsibilities, no gradient
    np.testing.assert_allclose(np.linalg.norm(_np(mu), axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(_np(z).sum(axis=1), 1.0, atol=1e-5)
    assert not mu.requires_grad and not z.requires_grad


def test_em_prototypes_with_mask_matches_numpy_and_ignores_masked_tokens():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 8, 5))
    mask = np.ones((3, 8), dtype=bool)
    mask[0, 5:] = False
    mask[2, 2:] = False
    mu0 = np.repeat(_unit((1, 3, 5), 4), 3, axis=0)
    mu, z = em_prototypes(
        torch.tensor(x, dtype=torch.float32),
        torch.tensor(mu0, dtype=torch.float32),
        4,
        mask=torch.tensor(mask),
    )
    ref_mu, ref_z = np_em(x, mu0, 4, mask=mask.astype(np.float64))
    np.testing.assert_allclose(_np(mu), ref_mu, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_np(z), ref_z, rtol=1e-4, atol=1e-6)
    assert np.all(_np(z)[~mask] == 0)
    # changing masked tokens does not change anything
    x2 = x.copy()
    x2[~mask] = 100.0
    mu2, z2 = em_prototypes(
        torch.tensor(x2, dtype=torch.float32),
        torch.tensor(mu0, dtype=torch.float32),
        4,
        mask=torch.tensor(mask),
    )
    torch.testing.assert_close(mu2, mu)
    torch.testing.assert_close(z2, z)


def test_em_prototypes_needs_an_iteration():
    with pytest.raises(ValueError):
        em_prototypes(torch.zeros(1, 2, 3), torch.ones(1, 2, 3), 0)


def test_em_prototypes_has_no_grad_even_for_grad_inputs():
    x = torch.randn(1, 5, 4, requires_grad=True)
    mu = torch.nn.functional.normalize(torch.randn(1, 2, 4), dim=-1)
    out_mu, out_z = em_prototypes(x, mu, 2)
    assert out_mu.grad_fn is None and out_z.grad_fn is None


# ---------------------------------------------------------------------------------------------------------
# NPR module

B, N, C, K = 3, 10, 8, 4


def _npr(update_buffer=True, iters=3, momentum=0.9):
    torch.manual_seed(0)
    return NPR(C, K, em_iters=iters, momentum=momentum, update_buffer=update_buffer, mapping_hidden=16)


def _tokens(seed=0, requires_grad=False):
    x = torch.randn(B, N, C, generator=torch.Generator().manual_seed(seed)) * 2
    return x.requires_grad_(requires_grad)


def test_npr_buffer_init_is_unit_norm_and_registered():
    npr = _npr()
    assert npr.mu.shape == (1, K, C)
    np.testing.assert_allclose(np.linalg.norm(_np(npr.mu), axis=-1), 1.0, atol=1e-5)
    assert "mu" in dict(npr.named_buffers())
    assert "mu" not in dict(npr.named_parameters())
    assert "mu" in npr.state_dict()


def test_npr_forward_matches_numpy_em():
    npr = _npr()
    npr.eval()
    x = _tokens()
    mu0 = _np(npr.mu)
    out = npr(x)
    ref_mu, ref_z = np_em(_np(x), np.repeat(mu0, B, axis=0), npr.em_iters)
    assert out.prototypes.shape == (B, K, C)
    assert out.recon.shape == (B, N, C) and out.assign.shape == (B, N, K)
    np.testing.assert_allclose(_np(out.prototypes), ref_mu, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_np(out.assign), ref_z, rtol=1e-4, atol=1e-6)
    # recon = mapping_x(Z Mu) with the last Z and last Mu
    expected = npr.mapping_x(torch.tensor(ref_z @ ref_mu, dtype=torch.float32))
    torch.testing.assert_close(out.recon, expected, rtol=1e-4, atol=1e-4)


def test_npr_gradient_reaches_only_mapping_x():
    npr = _npr()
    npr.train()
    x = _tokens(requires_grad=True)
    out = npr(x)
    assert not out.prototypes.requires_grad
    w = torch.randn(out.recon.shape, generator=torch.Generator().manual_seed(1))
    (out.recon * w).sum().backward()
    assert x.grad is None or float(x.grad.abs().sum()) == 0.0
    for name, p in npr.mapping_x.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    # also with the plain sum as loss
    x2 = _tokens(requires_grad=True)
    npr(x2).recon.sum().backward()
    assert x2.grad is None or float(x2.grad.abs().sum()) == 0.0


def test_npr_momentum_update_in_training():
    m = 0.75
    npr = _npr(update_buffer=True, momentum=m)
    npr.train()
    x = _tokens()
    mu0 = _np(npr.mu).copy()
    out = npr(x)
    ref_mu, _ = np_em(_np(x), np.repeat(mu0, B, axis=0), npr.em_iters)
    # prototypes were computed from the *old* buffer
    np.testing.assert_allclose(_np(out.prototypes), ref_mu, rtol=1e-4, atol=1e-5)
    # the EMA of the batch mean, re-normalised per prototype (docs/METHOD.md §3.2)
    expected = _np_unit(m * mu0 + (1 - m) * ref_mu.mean(axis=0, keepdims=True))
    np.testing.assert_allclose(_np(npr.mu), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(_np(npr.mu), axis=-1), 1.0, atol=1e-5)
    # a second forward starts from the updated buffer and updates again
    out2 = npr(x)
    ref_mu2, _ = np_em(_np(x), np.repeat(expected, B, axis=0), npr.em_iters)
    np.testing.assert_allclose(_np(out2.prototypes), ref_mu2, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        _np(npr.mu), _np_unit(m * expected + (1 - m) * ref_mu2.mean(0, keepdims=True)), rtol=1e-4, atol=1e-4
    )


def test_npr_released_mode_never_updates_buffer():
    npr = _npr(update_buffer=False)
    npr.train()
    mu0 = npr.mu.clone()
    for seed in range(3):
        npr(_tokens(seed))
    torch.testing.assert_close(npr.mu, mu0, rtol=0, atol=0)


def test_npr_eval_never_updates_buffer():
    npr = _npr(update_buffer=True)
    npr.eval()
    mu0 = npr.mu.clone()
    for seed in range(3):
        npr(_tokens(seed))
    torch.testing.assert_close(npr.mu, mu0, rtol=0, atol=0)


def test_npr_momentum_update_method():
    npr = _npr(momentum=0.9)
    mu0 = npr.mu.clone()
    batch = torch.randn(5, K, C)
    npr.momentum_update(batch)
    expected = _np_unit(0.9 * _np(mu0) + 0.1 * _np(batch).mean(0, keepdims=True))
    np.testing.assert_allclose(_np(npr.mu), expected, rtol=1e-5, atol=1e-6)


def test_npr_buffer_stays_unit_norm_when_batch_prototypes_disagree():
    """Without re-normalisation an EMA of disagreeing unit vectors shrinks (here below norm 0.8 after 30
    updates), which would soften the first E-step; the buffer stays on the unit sphere instead."""
    npr = _npr(momentum=0.5)
    gen = torch.Generator().manual_seed(3)
    plain = _np(npr.mu).copy()
    for _ in range(30):
        batch = torch.nn.functional.normalize(torch.randn(6, K, C, generator=gen), dim=-1)
        npr.momentum_update(batch)
        plain = 0.5 * plain + 0.5 * _np(batch).mean(0, keepdims=True)
    np.testing.assert_allclose(np.linalg.norm(_np(npr.mu), axis=-1), 1.0, atol=1e-5)
    assert np.linalg.norm(plain, axis=-1).max() < 0.8  # the unnormalised EMA would have shrunk


# ---------------------------------------------------------------------------------------------------------
# TextNPR


def test_text_npr_released_mode_matches_1d_numpy_em_and_updates_every_forward():
    Kt, W, m = 4, 12, 0.8
    torch.manual_seed(0)
    tnpr = TextNPR(Kt, 1, em_iters=5, momentum=m, released_code=True)
    assert tnpr.mu.shape == (1, Kt, 1)
    np.testing.assert_allclose(np.linalg.norm(_np(tnpr.mu)[0, :, 0]), 1.0, atol=1e-5)  # unit norm over K
    feats = torch.randn(3, W, generator=torch.Generator().manual_seed(1))
    for training in (True, False):  # the released buffer update runs on every forward, even in eval
        tnpr.train(training)
        mu0 = _np(tnpr.mu).copy()
        r = tnpr(feats)
        ref, _ = np_em(_np(feats)[:, :, None], np.repeat(mu0, 3, axis=0), 5, norm_axis=1)
        assert r.shape == (3, Kt, 1) and not r.requires_grad
        np.testing.assert_allclose(_np(r), ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(_np(r)[:, :, 0], axis=1), 1.0, atol=1e-4)
        np.testing.assert_allclose(
            _np(tnpr.mu), m * mu0 + (1 - m) * ref.mean(0, keepdims=True), rtol=1e-4, atol=1e-5
        )


def test_text_npr_released_mode_detaches_input():
    torch.manual_seed(0)
    tnpr = TextNPR(3, 1, em_iters=2, released_code=True)
    feats = torch.randn(2, 6, requires_grad=True)
    assert not tnpr(feats).requires_grad


def test_text_npr_default_mode_with_mask():
    Kt, L, D, m = 3, 7, 5, 0.9
    torch.manual_seed(0)
    tnpr = TextNPR(Kt, D, em_iters=4, momentum=m, released_code=False)
    assert tnpr.mu.shape == (1, Kt, D)
    gen = torch.Generator().manual_seed(2)
    toks = torch.randn(2, L, D, generator=gen)
    mask = torch.ones(2, L, dtype=torch.bool)
    mask[0, 4:] = False
    mask[1, 6:] = False
    # eval: no buffer update
    tnpr.eval()
    mu0 = _np(tnpr.mu).copy()
    r = tnpr(toks, mask)
    ref, _ = np_em(_np(toks), np.repeat(mu0, 2, axis=0), 4, mask=_np(mask))
    assert r.shape == (2, Kt, D)
    np.testing.assert_allclose(_np(r), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(_np(tnpr.mu), mu0)
    # training: EMA of the batch mean
    tnpr.train()
    r = tnpr(toks, mask)
    np.testing.assert_allclose(_np(r), ref, rtol=1e-4, atol=1e-5)
    expected = _np_unit(m * mu0 + (1 - m) * ref.mean(0, keepdims=True))
    np.testing.assert_allclose(_np(tnpr.mu), expected, rtol=1e-4, atol=1e-5)
    # masked (padding) tokens do not matter
    toks2 = toks.clone()
    toks2[~mask] = 50.0
    tnpr.eval()
    torch.testing.assert_close(tnpr(toks2, mask), tnpr(toks, mask))
