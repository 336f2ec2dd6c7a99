"""Transformer building blocks vs plain numpy re-computations: shapes, values, gradients, BN statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import erf

from pgseg_core.models.layers import Attention, Block, CrossAttention, CrossAttnBlock, MixerMlp, ProjectMLP

pytestmark = pytest.mark.usefixtures("single_thread")

# ---------------------------------------------------------------------------------------------------------
# plain numpy references (float64)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def np_linear(x, lin):
    out = x @ _np(lin.weight).T
    return out + _np(lin.bias) if lin.bias is not None else out


def np_softmax(a, axis=-1):
    a = a - a.max(axis=axis, keepdims=True)
    e = np.exp(a)
    return e / e.sum(axis=axis, keepdims=True)


def np_layernorm(x, ln):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + ln.eps) * _np(ln.weight) + _np(ln.bias)


def np_gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def np_mlp(x, mlp):  # timm Mlp: fc1 -> GELU -> fc2
    return np_linear(np_gelu(np_linear(x, mlp.fc1)), mlp.fc2)


def np_mha(q, k, v, heads):
    """q [B,S,C], k/v [B,N,C] already projected -> [B,S,C], loops over heads."""
    B, S, C = q.shape
    d = C // heads
    out = np.zeros_like(q)
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        att = np_softmax(q[..., sl] @ k[..., sl].transpose(0, 2, 1) / np.sqrt(d), axis=-1)
        out[..., sl] = att @ v[..., sl]
    return out


def np_attention(x, attn: Attention):
    C = x.shape[-1]
    W, b = _np(attn.qkv.weight), _np(attn.qkv.bias)
    q = x @ W[:C].T + b[:C]
    k = x @ W[C : 2 * C].T + b[C : 2 * C]
    v = x @ W[2 * C :].T + b[2 * C :]
    return np_linear(np_mha(q, k, v, attn.num_heads), attn.proj)


def np_cross_attention(q_in, kv_in, attn: CrossAttention):
    q = np_linear(q_in, attn.q_proj)
    k = np_linear(kv_in, attn.k_proj)
    v = np_linear(kv_in, attn.v_proj)
    return np_linear(np_mha(q, k, v, attn.num_heads), attn.proj)


# ---------------------------------------------------------------------------------------------------------
# helpers


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial weights everywhere (LN weights != 1, biases != 0) so every term matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3
            p.copy_(1.0 + noise if (p.ndim == 1 and name.endswith("weight")) else noise)


def assert_all_params_get_grads(module: torch.nn.Module, loss: torch.Tensor) -> None:
    module.zero_grad(set_to_none=True)
    loss.backward()
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def _weighted_sum(out: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """A loss whose gradient is not killed by LayerNorm/softmax invariances (unlike out.sum())."""
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return (out * w).sum()


B, N, S, C = 2, 7, 3, 16


@pytest.fixture
def x():
    return torch.randn(B, N, C, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.fixture
def g():
    return torch.randn(B, S, C, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------


def test_attention_matches_numpy_and_has_grads(x):
    torch.manual_seed(0)
    attn = Attention(C, num_heads=4).double()
    out = attn(x)
    assert out.shape == (B, N, C)
    np.testing.assert_allclose(_np(out), np_attention(_np(x), attn), rtol=1e-9, atol=1e-10)
    assert_all_params_get_grads(attn, _weighted_sum(out))


def test_attention_rejects_indivisible_heads():
    with pytest.raises(ValueError):
        Attention(10, num_heads=4)


def test_attention_without_qkv_bias():
    attn = Attention(C, 2, qkv_bias=False).double()
    assert attn.qkv.bias is None
    x = torch.randn(1, 4, C, dtype=torch.float64)
    W = _np(attn.qkv.weight)
    xn = _np(x)
    ref = np_linear(np_mha(xn @ W[:C].T, xn @ W[C : 2 * C].T, xn @ W[2 * C :].T, 2), attn.proj)
    np.testing.assert_allclose(_np(attn(x)), ref, rtol=1e-9, atol=1e-10)


def test_cross_attention_matches_numpy_and_has_grads(x, g):
    torch.manual_seed(0)
    attn = CrossAttention(C, num_heads=2).double()
    out = attn(g, x)
    assert out.shape == (B, S, C)
    np.testing.assert_allclose(_np(out), np_cross_attention(_np(g), _np(x), attn), rtol=1e-9, atol=1e-10)
    assert_all_params_get_grads(attn, _weighted_sum(out))


def test_block_matches_numpy_and_has_grads(x):
    torch.manual_seed(0)
    blk = Block(C, num_heads=4, mlp_ratio=2.0).double()
    _randomise(blk)
    blk.eval()
    out = blk(x)
    xn = _np(x)
    y = xn + np_attention(np_layernorm(xn, blk.norm1), blk.attn)
    ref = y + np_mlp(np_layernorm(y, blk.norm2), blk.mlp)
    assert out.shape == (B, N, C)
    np.testing.assert_allclose(_np(out), ref, rtol=1e-8, atol=1e-9)
    blk.train()
    assert_all_params_get_grads(blk, _weighted_sum(blk(x)))


def test_block_drop_path_only_in_training(x):
    blk = Block(C, num_heads=2, drop_path=0.5).double()
    blk.eval()
    a, b = blk(x), blk(x)
    torch.testing.assert_close(a, b)
    blk.train()
    torch.manual_seed(3)
    outs = [blk(x) for _ in range(6)]
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])


def test_cross_attn_block_matches_numpy_and_has_grads(x, g):
    torch.manual_seed(0)
    blk = CrossAttnBlock(C, num_heads=2, mlp_ratio=2.0).double()
    _randomise(blk)
    out = blk(g, x)
    gn, xn = _np(g), _np(x)
    y = gn + np_cross_attention(gn, xn, blk.attn)  # query and key not normalised before attention
    y = y + np_mlp(np_layernorm(y, blk.norm2), blk.mlp)
    ref = np_layernorm(y, blk.norm_post)
    assert out.shape == (B, S, C)
    np.testing.assert_allclose(_np(out), ref, rtol=1e-8, atol=1e-9)
    assert_all_params_get_grads(blk, _weighted_sum(out))


def test_mixer_mlp_mixes_tokens(x):
    torch.manual_seed(0)
    mix = MixerMlp(N, 5, 3).double()  # N=7 tokens -> 3 tokens
    out = mix(x)
    assert out.shape == (B, 3, C)
    xt = _np(x).transpose(0, 2, 1)  # [B, C, N]
    ref = np_mlp(xt, mix).transpose(0, 2, 1)
    np.testing.assert_allclose(_np(out), ref, rtol=1e-9, atol=1e-10)
    assert_all_params_get_grads(mix, _weighted_sum(out))
    # the channel axis is not mixed: permuting channels of the input permutes the output the same way
    perm = torch.randperm(C)
    torch.testing.assert_close(mix(x[..., perm]), out[..., perm])


# ---------------------------------------------------------------------------------------------------------
# ProjectMLP


def _np_project(x, head: ProjectMLP, bn_mode: str):
    """x [B, L, Cin] numpy -> [B, L, Cout]; bn_mode 'running' or 'batch'."""
    conv1, bn, _ = head.linear_hidden
    h = x @ _np(conv1.weight)[:, :, 0].T + _np(conv1.bias)  # [B, L, hidden]
    if bn_mode == "running":
        mean, var = _np(bn.running_mean), _np(bn.running_var)
    else:
        flat = h.reshape(-1, h.shape[-1])
        mean, var = flat.mean(0), flat.var(0)  # biased, over batch and length
    h = (h - mean) / np.sqrt(var + bn.eps) * _np(bn.weight) + _np(bn.bias)
    h = np.maximum(h, 0)
    return h @ _np(head.linear_out.weight)[:, :, 0].T + _np(head.linear_out.bias)


def _project_head(seed=0):
    torch.manual_seed(seed)
    head = ProjectMLP(C, 24, 5, num_layers=2).double()
    _randomise(head, seed)
    bn = head.linear_hidden[1]
    with torch.no_grad():  # non-trivial running statistics
        bn.running_mean.copy_(torch.randn(24, dtype=torch.float64) * 0.1)
        bn.running_var.copy_(torch.rand(24, dtype=torch.float64) + 0.5)
    return head


def test_project_mlp_layout():
    head = ProjectMLP(C, 24, 5)
    conv1, bn, relu = head.linear_hidden
    assert isinstance(conv1, torch.nn.Conv1d) and conv1.kernel_size == (1,)
    assert isinstance(bn, torch.nn.BatchNorm1d) and isinstance(relu, torch.nn.ReLU)
    assert head.linear_out.out_channels == 5
    single = ProjectMLP(C, 24, 5, num_layers=1)
    assert len(single.linear_hidden) == 0 and single.linear_out.in_channels == C


@pytest.mark.parametrize("rank", [2, 3])
def test_project_mlp_eval_matches_numpy(rank, x):
    head = _project_head()
    head.eval()
    inp = x[:, 0] if rank == 2 else x
    out = head(inp)
    assert out.shape == ((B, 5) if rank == 2 else (B, N, 5))
    ref = _np_project(_np(inp)[:, None] if rank == 2 else _np(inp), head, "running")
    np.testing.assert_allclose(_np(out), ref[:, 0] if rank == 2 else ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("rank", [2, 3])
def test_project_mlp_train_uses_batch_stats_and_has_grads(rank, x):
    head = _project_head()
    head.train()
    inp = x[:, 0] if rank == 2 else x
    out = head(inp)
    ref = _np_project(_np(inp)[:, None] if rank == 2 else _np(inp), head, "batch")
    np.testing.assert_allclose(_np(out), ref[:, 0] if rank == 2 else ref, rtol=1e-8, atol=1e-9)
    assert_all_params_get_grads(head, _weighted_sum(out))


@pytest.mark.parametrize("rank", [2, 3])
def test_project_mlp_update_stats_flag(rank, x):
    head = _project_head()
    bn = head.linear_hidden[1]
    head.train()
    inp = x[:, 0] if rank == 2 else x
    rm0, rv0, nb0 = bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()

    out_frozen = head(inp, update_stats=False)
    torch.testing.assert_close(bn.running_mean, rm0, rtol=0, atol=0)
    torch.testing.assert_close(bn.running_var, rv0, rtol=0, atol=0)
    assert int(bn.num_batches_tracked) == int(nb0)

    out_upd = head(inp, update_stats=True)
    # same normalisation (batch statistics) either way
    torch.testing.assert_close(out_frozen, out_upd)
    # the running stats moved by the BN momentum towards the batch statistics
    conv1 = head.linear_hidden[0]
    h = (_np(inp)[:, None] if rank == 2 else _np(inp)) @ _np(conv1.weight)[:, :, 0].T + _np(conv1.bias)
    flat = h.reshape(-1, h.shape[-1])
    m = bn.momentum
    np.testing.assert_allclose(_np(bn.running_mean), (1 - m) * _np(rm0) + m * flat.mean(0), rtol=1e-9)
    np.testing.assert_allclose(_np(bn.running_var), (1 - m) * _np(rv0) + m * flat.var(0, ddof=1), rtol=1e-9)


def test_project_mlp_update_stats_false_has_grads(x):
    head = _project_head()
    head.train()
    assert_all_params_get_grads(head, _weighted_sum(head(x, update_stats=False)))


def test_project_mlp_eval_ignores_update_stats(x):
    head = _project_head()
    head.eval()
    rm0 = head.linear_hidden[1].running_mean.clone()
    torch.testing.assert_close(head(x, update_stats=False), head(x, update_stats=True))
    torch.testing.assert_close(head.linear_hidden[1].running_mean, rm0, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------
# attend(): the explicit CPU training form and the fused kernel compute the same attention


def _qkv(requires_grad: bool, m: int = 9):
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 4, n, 8, generator=gen, dtype=torch.float64) for n in (6, m, m))
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


@pytest.mark.parametrize("masked", [False, True])
def test_attend_training_form_equals_the_fused_kernel(masked):
    from pgseg_core.models.layers import attend

    mask = torch.full((6, 9), float("-inf"), dtype=torch.float64).triu_(4) if masked else None
    q, k, v = _qkv(True)
    out = attend(q, k, v, attn_mask=mask)  # CPU + autograd: the explicit matmul + softmax form
    assert out.grad_fn is not None and "Scaled" not in type(out.grad_fn).__name__
    ref = torch.nn.functional.scaled_dot_product_attention(*(t.detach() for t in (q, k, v)), attn_mask=mask)
    torch.testing.assert_close(out.detach(), ref, rtol=1e-12, atol=1e-12)
    q2, k2, v2 = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    fused = torch.nn.functional.scaled_dot_product_attention(q2, k2, v2, attn_mask=mask)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    (out * w).sum().backward()
    (fused * w).sum().backward()
    for a, b in ((q, q2), (k, k2), (v, v2)):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


def test_attend_without_gradients_uses_the_fused_kernel():
    from pgseg_core.models.layers import attend

    q, k, v = _qkv(False)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.equal(attend(q, k, v), ref)


def test_text_block_is_multihead_attention_on_its_parameters():
    """The causal text block's attention is nn.MultiheadAttention's maths on the same parameters: bit-equal
    without gradients, and within float rounding (with its gradients) in training."""
    from pgseg_core.models.text import ResidualAttentionBlock

    torch.manual_seed(0)
    blk = ResidualAttentionBlock(32, 4)
    x = torch.randn(11, 3, 32, requires_grad=True)  # [L, B, W]
    mask = torch.full((11, 11), float("-inf")).triu_(1)

    def reference(x):
        y = blk.ln_1(x)
        x = x + blk.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        return x + blk.mlp(blk.ln_2(x))

    with torch.no_grad():
        assert torch.equal(blk(x, mask), reference(x))
    w = torch.randn(11, 3, 32, generator=torch.Generator().manual_seed(5))
    params = [x, blk.attn.in_proj_weight, blk.attn.in_proj_bias, blk.attn.out_proj.weight]
    ours = torch.autograd.grad((blk(x, mask) * w).sum(), params)
    theirs = torch.autograd.grad((reference(x) * w).sum(), params)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
