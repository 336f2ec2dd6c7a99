"""Triton kernels of the assignment (forward and backward); one program per batch element.

Legend: B batch, S groups (whole in one block), N tokens (looped in blocks of BLOCK_N). Maths in float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["assign_forward", "assign_backward"]


@triton.jit
def _probs(
    logits_ptr, noise_ptr, offs, valid, inv_tau,
    GUMBEL: tl.constexpr, HARD: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """Softmax over groups (axis 0) of one [BLOCK_S, BLOCK_N] tile: (y, soft, attn) in float32."""
    x = tl.load(logits_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    x = tl.where(valid, x, float("-inf"))
    xmax = tl.max(x, axis=0)
    xmax = tl.where(xmax == float("-inf"), 0.0, xmax)
    e = tl.where(valid, tl.exp(x - xmax[None, :]), 0.0)
    den = tl.sum(e, axis=0)
    soft = e / tl.where(den == 0.0, 1.0, den)[None, :]
    if GUMBEL:
        g = tl.load(noise_ptr + offs, mask=valid, other=0.0)
        z = tl.where(valid, (x + g) * inv_tau, float("-inf"))
        zmax = tl.max(z, axis=0)
        zmax = tl.where(zmax == float("-inf"), 0.0, zmax)
        ez = tl.where(valid, tl.exp(z - zmax[None, :]), 0.0)
        zden = tl.sum(ez, axis=0)
        y = ez / tl.where(zden == 0.0, 1.0, zden)[None, :]
    else:
        y = soft
    if HARD:
        rows = tl.arange(0, BLOCK_S)[:, None]
        index = tl.argmax(tl.where(valid, y, -1.0), axis=0)
        one_hot = (rows == index[None, :]).to(tl.float32)
        attn = one_hot - y + y
    else:
        attn = y
    return y, soft, attn


@triton.jit
def _assign_fwd(
    logits_ptr, noise_ptr, attn_ptr, soft_ptr, w_ptr, S, N, inv_tau, eps,
    GUMBEL: tl.constexpr, HARD: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    base = b * S * N
    s = tl.arange(0, BLOCK_S)[:, None]
    rowsum = tl.zeros([BLOCK_S], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)[None, :]
        valid = (s < S) & (n < N)
        offs = base + s * N + n
        y, soft, attn = _probs(logits_ptr, noise_ptr, offs, valid, inv_tau, GUMBEL, HARD, BLOCK_S)
        attn_out = attn.to(attn_ptr.dtype.element_ty)
        tl.store(attn_ptr + offs, attn_out, mask=valid)
        tl.store(soft_ptr + offs, soft.to(soft_ptr.dtype.element_ty), mask=valid)
        rowsum += tl.sum(tl.where(valid, attn_out.to(tl.float32), 0.0), axis=1)
    scale = 1.0 / (rowsum + eps)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)[None, :]
        valid = (s < S) & (n < N)
        offs = base + s * N + n
        a = tl.load(attn_ptr + offs, mask=valid, other=0.0).to(tl.float32)
        tl.store(w_ptr + offs, (a * scale[:, None]).to(w_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _assign_bwd(
    logits_ptr, noise_ptr, attn_ptr, g_attn_ptr, g_w_ptr, g_logits_ptr, S, N, inv_tau, eps,
    GUMBEL: tl.constexpr, HARD: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    base = b * S * N
    s = tl.arange(0, BLOCK_S)[:, None]
    rowsum = tl.zeros([BLOCK_S], dtype=tl.float32)
    rowdot = tl.zeros([BLOCK_S], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)[None, :]
        valid = (s < S) & (n < N)
        offs = base + s * N + n
        a = tl.load(attn_ptr + offs, mask=valid, other=0.0).to(tl.float32)
        gw = tl.load(g_w_ptr + offs, mask=valid, other=0.0).to(tl.float32)
        rowsum += tl.sum(a, axis=1)
        rowdot += tl.sum(a * gw, axis=1)
    r = rowsum + eps
    # w = a / r:  dL/da = gw / r - (Σ_n gw a) / r²  (+ the gradient reaching attn directly)
    coef = (rowdot / (r * r))[:, None]
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)[None, :]
        valid = (s < S) & (n < N)
        offs = base + s * N + n
        gw = tl.load(g_w_ptr + offs, mask=valid, other=0.0).to(tl.float32)
        ga = tl.load(g_attn_ptr + offs, mask=valid, other=0.0).to(tl.float32)
        da = gw / r[:, None] - coef + ga
        y, soft, attn = _probs(logits_ptr, noise_ptr, offs, valid, inv_tau, GUMBEL, HARD, BLOCK_S)
        da = tl.where(valid, da, 0.0)
        dz = y * (da - tl.sum(y * da, axis=0)[None, :])
        if GUMBEL:
            dz = dz * inv_tau
        tl.store(g_logits_ptr + offs, dz.to(g_logits_ptr.dtype.element_ty), mask=valid)


def _blocks(S: int, N: int) -> tuple[int, int]:
    block_s = max(2, triton.next_power_of_2(S))
    block_n = max(16, min(triton.next_power_of_2(N), max(16, 4096 // block_s)))
    return block_s, block_n


def assign_forward(logits, noise, hard: bool, gumbel: bool, tau: float, eps: float):
    """logits [B, S, N] contiguous (noise float32 [B, S, N] when ``gumbel``) -> (attn, soft, weights)."""
    B, S, N = logits.shape
    attn, soft, weights = (torch.empty_like(logits) for _ in range(3))
    block_s, block_n = _blocks(S, N)
    noise_arg = noise if gumbel else logits
    _assign_fwd[(B,)](
        logits, noise_arg, attn, soft, weights, S, N, 1.0 / tau, eps,
        GUMBEL=gumbel, HARD=hard, BLOCK_S=block_s, BLOCK_N=block_n,
    )  # fmt: skip
    return attn, soft, weights


def assign_backward(logits, noise, attn, g_attn, g_w, hard: bool, gumbel: bool, tau: float, eps: float):
    """Gradient of the logits [B, S, N] from the gradients of attn and weights (all contiguous)."""
    B, S, N = logits.shape
    g_logits = torch.empty_like(logits)
    block_s, block_n = _blocks(S, N)
    noise_arg = noise if gumbel else logits
    _assign_bwd[(B,)](
        logits, noise_arg, attn, g_attn, g_w, g_logits, S, N, 1.0 / tau, eps,
        GUMBEL=gumbel, HARD=hard, BLOCK_S=block_s, BLOCK_N=block_n,
    )  # fmt: skip
    return g_logits
