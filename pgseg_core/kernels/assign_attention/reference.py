"""Plain torch reference of GroupViT's assignment (docs/METHOD.md §1.3): the test oracle of the kernel.

Legend: B batch, S groups, N tokens. The softmax runs over the group axis (dim -2).
"""

from __future__ import annotations

import torch

__all__ = ["gumbel_noise", "hard_softmax", "gumbel_softmax", "assign_attention_reference"]


def gumbel_noise(logits: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise shaped like ``logits``, float32: ``-log(Exp(1))`` draws from torch's generator."""
    return -torch.empty_like(logits, dtype=torch.float32).exponential_().log()


def hard_softmax(logits: torch.Tensor, dim: int) -> torch.Tensor:
    """One-hot argmax along ``dim`` with a straight-through gradient
    (``y_hard - y_soft.detach() + y_soft``)."""
    y_soft = logits.softmax(dim)
    index = y_soft.argmax(dim, keepdim=True)
    y_hard = torch.zeros_like(y_soft).scatter_(dim, index, 1.0)
    return y_hard - y_soft.detach() + y_soft


def gumbel_softmax(
    logits: torch.Tensor, dim: int, tau: float = 1.0, hard: bool = True, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """Gumbel-softmax along ``dim``; ``hard`` returns one-hot samples with the straight-through gradient.

    ``noise``: Gumbel(0, 1) samples shaped like ``logits`` (float32); drawn with :func:`gumbel_noise` when
    None. The noisy logits ``(logits + noise) / tau`` are formed in float32, then cast back.
    """
    gumbels = gumbel_noise(logits) if noise is None else noise
    y = ((logits.float() + gumbels) / tau).to(logits.dtype)
    if hard:
        return hard_softmax(y, dim)
    return y.softmax(dim)


def assign_attention_reference(
    logits: torch.Tensor,
    hard: bool,
    gumbel: bool,
    tau: float = 1.0,
    eps: float = 1.0,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Assignment of N tokens to S groups from ``logits`` [B, S, N].

    ``gumbel``: add Gumbel noise (``noise``, or fresh draws) and divide by ``tau`` first; ``hard``: one-hot
    argmax over groups with the straight-through gradient; otherwise the softmax over groups.

    Returns:
        attn [B, S, N] (the assignment used), soft [B, S, N] (noise-free softmax over groups, no gradient),
        weights [B, S, N] = attn / (Σ_N attn + eps) (each group's mean over its tokens).
    """
    if gumbel:
        attn = gumbel_softmax(logits, dim=-2, tau=tau, hard=hard, noise=noise)
    elif hard:
        attn = hard_softmax(logits, dim=-2)
    else:
        attn = logits.softmax(dim=-2)
    soft = logits.detach().softmax(dim=-2)
    weights = attn / (attn.sum(dim=-1, keepdim=True) + eps)
    return attn, soft, weights
