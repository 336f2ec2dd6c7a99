"""Global Prompt Refining of MVP-SEG (docs/MVP_SEG.md §2): image-level class scores from the global
prompt's map, gating each class's fused mask.

Legend: B images, C classes, h×w map grid.
"""

from __future__ import annotations

import torch

__all__ = ["global_class_scores", "gate_masks"]


def global_class_scores(m0: torch.Tensor, gamma: float, tau2: torch.Tensor | float) -> torch.Tensor:
    """g_c = sigmoid((m0_c · softmax(γ m0_c)) / τ2): softmax-weighted spatial pooling of class c's map.

    Args:
        m0: [B, C, h, w] the global prompt's class maps (cosine similarities, in [-1, 1]).
        gamma: sharpness of the spatial softmax (γ → 0: mean pooling, γ → ∞: max pooling).
        tau2: temperature of the score (a positive scalar or 0-d tensor; learned in MVP-SEG).

    Returns:
        [B, C] image-level class scores in (0, 1).

    Raises:
        ValueError: ``m0`` is not 4-d.
    """
    if m0.dim() != 4:
        raise ValueError(f"m0 must be [B, C, h, w], got {tuple(m0.shape)}")
    flat = m0.flatten(2)  # [B, C, hw]
    weights = torch.softmax(gamma * flat, dim=-1)
    pooled = (flat * weights).sum(dim=-1)  # [B, C]
    return torch.sigmoid(pooled / tau2)


def gate_masks(fused: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """The refined masks m_c = m_f^c · g_c.

    Args:
        fused: [B, C, h, w] fused class probabilities (:func:`pgseg_core.mvp.fusion.fuse_views`).
        scores: [B, C] image-level class scores (:func:`global_class_scores`).

    Returns:
        [B, C, h, w], each class's map scaled by its image-level score (no longer summing to 1).
    """
    return fused * scores[:, :, None, None]
