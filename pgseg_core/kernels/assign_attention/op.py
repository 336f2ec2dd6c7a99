"""``assign_attention``: the public op, its ``torch.library`` registration and its autograd formula.

Legend: B batch, S groups, N tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..select import use_triton
from .reference import assign_attention_reference, gumbel_noise

__all__ = ["Assignment", "assign_attention"]


class Assignment(NamedTuple):
    attn: torch.Tensor  # [B, S, N] the assignment used (one-hot with the straight-through gradient if hard)
    soft: torch.Tensor  # [B, S, N] noise-free softmax over groups, no gradient
    weights: torch.Tensor  # [B, S, N] attn / (Σ_N attn + eps): each group's mean over its tokens


@torch.library.custom_op("pgseg::assign_attention", mutates_args=())
def _assign_op(
    logits: torch.Tensor, noise: torch.Tensor, hard: bool, gumbel: bool, tau: float, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from .kernel import assign_forward

    return assign_forward(logits, noise, hard, gumbel, tau, eps)


@_assign_op.register_fake
def _(logits, noise, hard, gumbel, tau, eps):
    return torch.empty_like(logits), torch.empty_like(logits), torch.empty_like(logits)


@torch.library.custom_op("pgseg::assign_attention_backward", mutates_args=())
def _assign_bwd_op(
    logits: torch.Tensor,
    noise: torch.Tensor,
    attn: torch.Tensor,
    g_attn: torch.Tensor,
    g_weights: torch.Tensor,
    hard: bool,
    gumbel: bool,
    tau: float,
    eps: float,
) -> torch.Tensor:
    from .kernel import assign_backward

    return assign_backward(logits, noise, attn, g_attn, g_weights, hard, gumbel, tau, eps)


@_assign_bwd_op.register_fake
def _(logits, noise, attn, g_attn, g_weights, hard, gumbel, tau, eps):
    return torch.empty_like(logits)


def _setup_context(ctx, inputs, output):
    logits, noise, hard, gumbel, tau, eps = inputs
    ctx.save_for_backward(logits, noise, output[0])
    ctx.config = (hard, gumbel, tau, eps)
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, g_attn, g_soft, g_weights):
    logits, noise, attn = ctx.saved_tensors
    g_attn = torch.zeros_like(attn) if g_attn is None else g_attn.contiguous()
    g_weights = torch.zeros_like(attn) if g_weights is None else g_weights.contiguous()
    g_logits = _assign_bwd_op(logits, noise, attn, g_attn, g_weights, *ctx.config)
    return g_logits, None, None, None, None, None


_assign_op.register_autograd(_backward, setup_context=_setup_context)


def assign_attention(
    logits: torch.Tensor,
    hard: bool,
    gumbel: bool,
    tau: float = 1.0,
    eps: float = 1.0,
    noise: torch.Tensor | None = None,
    backend: str | None = None,
) -> Assignment:
    """GroupViT's assignment of N tokens to S groups (docs/METHOD.md §1.3, docs/KERNELS.md §3).

    Args:
        logits: [B, S, N] scaled query-key scores, any float dtype.
        hard: one-hot argmax over groups with the straight-through gradient (else the softmax).
        gumbel: add Gumbel(0, 1) noise and divide by ``tau`` before the softmax over groups.
        tau: Gumbel temperature (> 0). eps: added to each group's token count (>= 0).
        noise: float32 [B, S, N] Gumbel samples to use (reproducible runs, tests); drawn from torch's
            generator when None, the same draws the reference makes.
        backend: auto | torch | triton, overriding ``PGSEG_KERNELS`` (docs/KERNELS.md §1).

    Returns:
        :class:`Assignment` (attn, soft, weights), each [B, S, N] in the dtype of ``logits``; the
        gradient reaches ``logits`` through attn and weights.

    Raises:
        DependencyError / DeviceError: triton asked for where it cannot run.
    """
    if gumbel and noise is None:
        noise = gumbel_noise(logits)
    if not use_triton(logits, backend):
        return Assignment(*assign_attention_reference(logits, hard, gumbel, tau, eps, noise))
    noise_arg = noise.float().contiguous() if gumbel else logits.new_empty(0, dtype=torch.float32)
    return Assignment(*_assign_op(logits.contiguous(), noise_arg, hard, gumbel, float(tau), float(eps)))
