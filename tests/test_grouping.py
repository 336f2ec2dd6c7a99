"""Grouping: hard/Gumbel softmax, AssignAttention (hard, Gumbel, soft) and GroupingBlock."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgseg_core.models.grouping import AssignAttention, GroupingBlock, gumbel_softmax, hard_softmax

pytestmark = pytest.mark.usefixtures("single_thread")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def np_softmax(a, axis):
    a = a - a.max(axis=axis, keepdims=True)
    e = np.exp(a)
    return e / e.sum(axis=axis, keepdims=True)


def np_softmax_grad(logits, w, axis):
    """d/dlogits of sum(softmax(logits) * w) = p * (w - sum(p * w))."""
    p = np_softmax(logits, axis)
    return p * (w - (p * w).sum(axis=axis, keepdims=True))


def np_linear(x, lin):
    return x @ _np(lin.weight).T + _np(lin.bias)


def assert_one_hot(y: torch.Tensor, dim: int) -> None:
    v = y.detach()
    assert torch.all((v - 0).abs().lt(1e-6) | (v - 1).abs().lt(1e-6)), "not binary"
    torch.testing.assert_close(v.sum(dim), torch.ones_like(v.sum(dim)))


# ---------------------------------------------------------------------------------------------------------
# hard_softmax / gumbel_softmax


@pytest.mark.parametrize("dim", [-2, -1, 0])
def test_hard_softmax_is_one_hot_argmax(dim):
    logits = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = hard_softmax(logits, dim)
    assert y.shape == logits.shape
    assert_one_hot(y, dim)
    expected = np.argmax(_np(logits), axis=dim)
    np.testing.assert_array_equal(_np(y).argmax(axis=dim), expected)


@pytest.mark.parametrize("dim", [-2, -1])
def test_hard_softmax_gradient_is_softmax_gradient(dim):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 4, 6, generator=gen, dtype=torch.float64)
    (hard_softmax(logits, dim) * w).sum().backward()
    ref = np_softmax_grad(_np(logits), _np(w), dim)
    np.testing.assert_allclose(_np(logits.grad), ref, rtol=1e-9, atol=1e-12)


def test_gumbel_softmax_hard_is_one_hot_with_softmax_gradient_of_noisy_logits():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 5, 7, generator=gen, dtype=torch.float64)
    tau = 0.7
    torch.manual_seed(123)
    y = gumbel_softmax(logits, dim=-2, tau=tau, hard=True)
    assert_one_hot(y, -2)
    (y * w).sum().backward()
    # reproduce the documented noise: -log(Exp(1)) draws in float32 from the same RNG state
    torch.manual_seed(123)
    noise = -torch.empty(logits.shape, dtype=torch.float32).exponential_().log()
    noisy = (_np(logits) + _np(noise)) / tau
    np.testing.assert_array_equal(_np(y).argmax(-2), noisy.argmax(-2))
    ref = np_softmax_grad(noisy, _np(w), -2) / tau
    np.testing.assert_allclose(_np(logits.grad), ref, rtol=1e-6, atol=1e-9)


def test_gumbel_max_frequencies_follow_softmax():
    p = np.array([0.5, 0.3, 0.2])
    logits = torch.tensor(np.log(p), dtype=torch.float32).repeat(20000, 1)
    torch.manual_seed(0)
    y = gumbel_softmax(logits, dim=-1, tau=1.0, hard=True)
    freq = _np(y).mean(0)
    np.testing.assert_allclose(freq, p, atol=0.015)


def test_gumbel_softmax_soft_sums_to_one_and_is_random():
    logits = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    a = gumbel_softmax(logits, dim=-2, tau=1.0, hard=False)
    b = gumbel_softmax(logits, dim=-2, tau=1.0, hard=False)
    assert (a > 0).all() and (a < 1).all()
    torch.testing.assert_close(a.sum(-2), torch.ones(4, 5))
    assert not torch.allclose(a, b)


# ---------------------------------------------------------------------------------------------------------
# AssignAttention

B, S, N, C = 2, 4, 9, 12


@pytest.fixture
def qk():
    gen = torch.Generator().manual_seed(0)
    return (
        torch.randn(B, S, C, generator=gen, dtype=torch.float64),
        torch.randn(B, N, C, generator=gen, dtype=torch.float64),
    )


def _assign(**kw) -> AssignAttention:
    torch.manual_seed(0)
    a = AssignAttention(C, **kw).double()
    with torch.no_grad():  # large q/k weights so the logits are well spread (not all near zero)
        a.q_proj.weight.mul_(3.0)
        a.k_proj.weight.mul_(3.0)
    return a


def _np_logits(att: AssignAttention, q, k):
    ql, kl = np_linear(_np(q), att.q_proj), np_linear(_np(k), att.k_proj)
    return ql @ kl.transpose(0, 2, 1) * C**-0.5  # [B, S, N]


def _loop_output(att: AssignAttention, A: np.ndarray, k) -> np.ndarray:
    """proj(((A / (A.sum(-1) + eps)) @ v(x))) with explicit python loops."""
    v = np_linear(_np(k), att.v_proj)  # [B, N, C]
    pooled = np.zeros((A.shape[0], A.shape[1], v.shape[-1]))
    for b in range(A.shape[0]):
        for s in range(A.shape[1]):
            denom = sum(A[b, s, n] for n in range(A.shape[2])) + att.assign_eps
            acc = np.zeros(v.shape[-1])
            for n in range(A.shape[2]):
                acc += A[b, s, n] / denom * v[b, n]
            pooled[b, s] = acc
    return np_linear(pooled, att.proj)


def test_assign_logits_and_soft(qk):
    att = _assign()
    att.eval()
    out, attn, soft, logits = att(*qk)
    ref_logits = _np_logits(att, *qk)
    np.testing.assert_allclose(_np(logits), ref_logits, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(_np(soft), np_softmax(ref_logits, axis=1), rtol=1e-9, atol=1e-12)
    assert out.shape == (B, S, C) and attn.shape == soft.shape == logits.shape == (B, S, N)


def test_assign_hard_eval_is_argmax_of_soft_and_matches_loop(qk):
    att = _assign(hard=True, gumbel=True, assign_eps=1.0)
    att.eval()
    out, attn, soft, _ = att(*qk)
    assert_one_hot(attn, -2)  # each token column one-hot over groups
    np.testing.assert_array_equal(_np(attn).argmax(1), _np(soft).argmax(1))
    A = np.zeros((B, S, N))
    arg = _np_logits(att, *qk).argmax(1)
    for b in range(B):
        for n in range(N):
            A[b, arg[b, n], n] = 1.0
    np.testing.assert_allclose(_np(out), _loop_output(att, A, qk[1]), rtol=1e-9, atol=1e-10)


def test_assign_hard_eval_is_deterministic(qk):
    att = _assign()
    att.eval()
    torch.testing.assert_close(att(*qk)[1], att(*qk)[1])


def test_assign_gumbel_training_is_one_hot_and_output_matches_loop(qk):
    att = _assign(hard=True, gumbel=True, assign_eps=0.5)
    att.train()
    torch.manual_seed(5)
    out, attn, soft, _ = att(*qk)
    assert_one_hot(attn, -2)
    np.testing.assert_allclose(_np(out), _loop_output(att, _np(attn), qk[1]), rtol=1e-9, atol=1e-10)
    # noise: different draws give different assignments somewhere; the soft output stays noise-free
    torch.manual_seed(6)
    outs = [att(*qk) for _ in range(5)]
    assert any(not torch.equal(o[1], attn) for o in outs)
    for o in outs:
        torch.testing.assert_close(o[2], soft)


def test_assign_hard_without_gumbel_in_training_is_argmax(qk):
    att = _assign(hard=True, gumbel=False)
    att.train()
    _, attn, soft, _ = att(*qk)
    assert_one_hot(attn, -2)
    np.testing.assert_array_equal(_np(attn).argmax(1), _np(soft).argmax(1))


@pytest.mark.parametrize("training", [True, False])
def test_assign_soft_mode_sums_to_one_and_matches_loop(qk, training):
    att = _assign(hard=False)
    att.train(training)
    out, attn, soft, _ = att(*qk)
    torch.testing.assert_close(attn.sum(1), torch.ones(B, N, dtype=torch.float64))
    A = np_softmax(_np_logits(att, *qk), axis=1)
    np.testing.assert_allclose(_np(attn), A, rtol=1e-9, atol=1e-12)
    assert not np.all((A < 1e-6) | (A > 1 - 1e-6)), "soft mode should not be one-hot"
    np.testing.assert_allclose(_np(out), _loop_output(att, A, qk[1]), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("training", [True, False])
def test_assign_straight_through_reaches_q_and_k(qk, training):
    att = _assign(hard=True, gumbel=True)
    att.train(training)
    q = qk[0].clone().requires_grad_(True)
    k = qk[1].clone().requires_grad_(True)
    torch.manual_seed(0)
    out = att(q, k)[0]
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=out.dtype)
    (out * w).sum().backward()
    for name in ("q_proj", "k_proj", "v_proj", "proj"):
        grad = getattr(att, name).weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert q.grad.abs().sum() > 0 and k.grad.abs().sum() > 0


def test_assign_eps_divides_by_count_plus_eps():
    """One group gets every token: out = proj(sum_n v_n / (N + eps))."""
    att = AssignAttention(4, hard=False, assign_eps=2.0).double()
    with torch.no_grad():
        att.q_proj.weight.zero_()
        att.q_proj.bias.zero_()
    att.eval()
    q = torch.randn(1, 2, 4, dtype=torch.float64)
    k = torch.randn(1, 5, 4, dtype=torch.float64)
    out, attn, _, _ = att(q, k)
    np.testing.assert_allclose(_np(attn), 0.5)  # zero logits: uniform over the 2 groups
    v = np_linear(_np(k), att.v_proj)[0]
    ref = np_linear((0.5 * v.sum(0) / (0.5 * 5 + 2.0))[None], att.proj)
    np.testing.assert_allclose(_np(out)[0, 0], ref[0], rtol=1e-9)


# ---------------------------------------------------------------------------------------------------------
# GroupingBlock


@pytest.mark.parametrize("s_in,s_out", [(6, 6), (6, 3)])
def test_grouping_block_shapes_and_composition(s_in, s_out):
    torch.manual_seed(0)
    blk = GroupingBlock(C, num_heads=2, num_group_token=s_in, num_output_group=s_out).double()
    blk.eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B, N, C, generator=gen, dtype=torch.float64)
    grp = torch.randn(B, s_in, C, generator=gen, dtype=torch.float64)
    res = blk(x, grp)
    assert res.tokens.shape == (B, s_out, C) and res.centres.shape == (B, s_out, C)
    assert res.hard.shape == res.soft.shape == res.logits.shape == (B, s_out, N)
    torch.testing.assert_close(res.soft.sum(1), torch.ones(B, N, dtype=torch.float64))
    assert_one_hot(res.hard, -2)
    # centres = pre_assign_attn(LN(MLP_tokens(LN(g)ᵀ)ᵀ), LN(x)); post-norm => LN statistics per centre
    with torch.no_grad():
        gt = blk.norm_tokens(grp)
        projected = blk.norm_post_tokens(blk.mlp_inter(gt.transpose(1, 2)).transpose(1, 2))
        xn = blk.norm_x(x)
        centres = blk.pre_assign_attn(projected, xn)
        out, *_ = blk.assign(centres, xn)
        new = out + centres
        new = new + blk.mlp_channels(blk.norm_new_x(new))
    torch.testing.assert_close(res.centres, centres)
    torch.testing.assert_close(res.tokens, new)
    np.testing.assert_allclose(_np(res.centres).mean(-1), 0.0, atol=1e-9)
    np.testing.assert_allclose(_np(res.centres).std(-1), 1.0, atol=1e-3)


def test_grouping_block_training_grads_and_hard_columns():
    torch.manual_seed(0)
    blk = GroupingBlock(C, num_heads=2, num_group_token=5, num_output_group=3).double()
    blk.train()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(B, N, C, generator=gen, dtype=torch.float64, requires_grad=True)
    grp = torch.randn(B, 5, C, generator=gen, dtype=torch.float64, requires_grad=True)
    res = blk(x, grp)
    assert_one_hot(res.hard, -2)
    w = torch.randn(res.tokens.shape, generator=gen, dtype=torch.float64)
    (res.tokens * w).sum().backward()
    for name, p in blk.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0 and grp.grad.abs().sum() > 0
