"""Triton kernel of NPR's EM: all iterations in one launch, one program per batch element.

Legend: B batch, N tokens (blocks of BLOCK_N), K prototypes (whole, BLOCK_K), C channels (blocks of
BLOCK_C). The running prototypes live in the ``mu`` output and the unnormalised responsibilities of the
current E-step in the ``z`` output (both float32, L2-resident); a block barrier separates the passes.
Matmuls use ``tl.dot`` with IEEE float32 inputs (no TF32), as the reference does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["npr_em_forward"]


@triton.jit
def _e_step(
    x_ptr, mu_ptr, z_ptr, m_ptr, b, N, K, C, x_sb, x_sn, mu_sb, z_sb,
    HAS_MASK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """z[b] = softmax_K(x mu^T) (times the mask), unnormalised; returns Σ_n z [BLOCK_K]."""
    k = tl.arange(0, BLOCK_K)
    colsum = tl.zeros([BLOCK_K], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            xb = tl.load(x_ptr + b * x_sb + n[:, None] * x_sn + c[None, :],
                         mask=(n[:, None] < N) & (c[None, :] < C), other=0.0).to(tl.float32)  # fmt: skip
            mb = tl.load(mu_ptr + b * mu_sb + k[:, None] * C + c[None, :],
                         mask=(k[:, None] < K) & (c[None, :] < C), other=0.0)  # fmt: skip
            acc += tl.dot(xb, tl.trans(mb), input_precision="ieee")
        acc = tl.where(k[None, :] < K, acc, float("-inf"))
        e = tl.exp(acc - tl.max(acc, axis=1)[:, None])
        z = e / tl.sum(e, axis=1)[:, None]
        valid = (n[:, None] < N) & (k[None, :] < K)
        if HAS_MASK:
            keep = tl.load(m_ptr + b * N + n, mask=n < N, other=0).to(tl.float32)
            z = z * keep[:, None]
        z = tl.where(valid, z, 0.0)
        tl.store(z_ptr + b * z_sb + n[:, None] * K + k[None, :], z, mask=valid)
        colsum += tl.sum(z, axis=0)
    return colsum


@triton.jit
def _m_step(
    x_ptr, mu_ptr, z_ptr, b, N, K, C, x_sb, x_sn, mu_sb, z_sb, inv_col,
    NORM_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """mu[b] = (z / colsum)^T x, normalised over K per channel (NORM_K) or, returning the squared norms over
    C [BLOCK_K], left for the caller to normalise over C."""
    k = tl.arange(0, BLOCK_K)
    sq = tl.zeros([BLOCK_K], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        acc = tl.zeros([BLOCK_K, BLOCK_C], dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            zb = tl.load(z_ptr + b * z_sb + n[:, None] * K + k[None, :],
                         mask=(n[:, None] < N) & (k[None, :] < K), other=0.0)  # fmt: skip
            xb = tl.load(x_ptr + b * x_sb + n[:, None] * x_sn + c[None, :],
                         mask=(n[:, None] < N) & (c[None, :] < C), other=0.0).to(tl.float32)  # fmt: skip
            acc += tl.dot(tl.trans(zb), xb, input_precision="ieee")
        m = acc * inv_col[:, None]
        if NORM_K:
            m = m / (1e-6 + tl.sqrt(tl.sum(m * m, axis=0)))[None, :]
        else:
            sq += tl.sum(m * m, axis=1)
        tl.store(
            mu_ptr + b * mu_sb + k[:, None] * C + c[None, :], m, mask=(k[:, None] < K) & (c[None, :] < C)
        )
    return sq


@triton.jit
def _npr_em(
    x_ptr, mu_ptr, z_ptr, m_ptr, N, K, C, iters, x_sb, x_sn,
    HAS_MASK: tl.constexpr, NORM_K: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    mu_sb = K * C
    z_sb = N * K
    k = tl.arange(0, BLOCK_K)
    inv_col = tl.zeros([BLOCK_K], dtype=tl.float32)
    for _ in range(iters):
        colsum = _e_step(x_ptr, mu_ptr, z_ptr, m_ptr, b, N, K, C, x_sb, x_sn, mu_sb, z_sb,
                         HAS_MASK, BLOCK_N, BLOCK_K, BLOCK_C)  # fmt: skip
        tl.debug_barrier()
        inv_col = 1.0 / (1e-6 + colsum)
        sq = _m_step(x_ptr, mu_ptr, z_ptr, b, N, K, C, x_sb, x_sn, mu_sb, z_sb, inv_col,
                     NORM_K, BLOCK_N, BLOCK_K, BLOCK_C)  # fmt: skip
        tl.debug_barrier()
        if not NORM_K:
            scale = 1.0 / (1e-6 + tl.sqrt(sq))
            for c0 in range(0, C, BLOCK_C):
                c = c0 + tl.arange(0, BLOCK_C)
                offs = mu_ptr + b * mu_sb + k[:, None] * C + c[None, :]
                valid = (k[:, None] < K) & (c[None, :] < C)
                tl.store(offs, tl.load(offs, mask=valid, other=0.0) * scale[:, None], mask=valid)
            tl.debug_barrier()
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        offs = z_ptr + b * z_sb + n[:, None] * K + k[None, :]
        valid = (n[:, None] < N) & (k[None, :] < K)
        tl.store(offs, tl.load(offs, mask=valid, other=0.0) * inv_col[None, :], mask=valid)


def npr_em_forward(x, mu0, iters: int, mask, normalize: str):
    """x [B, N, C] (last dim contiguous), mu0 [B, K, C], mask [B, N] or None -> (mu, z) float32."""
    B, N, C = x.shape
    K = mu0.shape[1]
    if x.stride(2) != 1:
        x = x.contiguous()
    mu = torch.empty(B, K, C, device=x.device, dtype=torch.float32)
    mu.copy_(mu0.expand(B, K, C))  # the running prototypes (never the caller's tensor)
    z = torch.empty(B, N, K, device=x.device, dtype=torch.float32)
    has_mask = mask is not None
    m = mask.to(torch.int8).contiguous() if has_mask else z
    block_k = max(16, triton.next_power_of_2(K))
    block_c = max(16, min(64, triton.next_power_of_2(C)))
    block_n = 32 if block_k <= 64 else 16
    _npr_em[(B,)](
        x, mu, z, m, N, K, C, iters, x.stride(0), x.stride(1),
        HAS_MASK=has_mask, NORM_K=normalize == "prototypes",
        BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_C=block_c,
    )  # fmt: skip
    return mu, z
