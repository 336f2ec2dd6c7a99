"""Multi-view mask fusion of MVP-SEG (docs/MVP_SEG.md §2): m_f = softmax(τ1 · Σ_i m_i) over classes.

Legend: k segmentation views, B images, C classes, h×w map grid.
"""

from __future__ import annotations

import torch

__all__ = ["fuse_views"]


def fuse_views(masks: torch.Tensor, tau1: torch.Tensor | float) -> torch.Tensor:
    """Fuse the k segmentation views.

    Args:
        masks: [k, B, C, h, w] per-view class maps m_i (cosine similarity of pixel feature and the view's
            class embedding, in [-1, 1]).
        tau1: the fusion scale (a positive scalar or 0-d tensor; learned in MVP-SEG).

    Returns:
        [B, C, h, w] class probabilities (sum to 1 over C at each pixel).

    Raises:
        ValueError: ``masks`` is not 5-d.
    """
    if masks.dim() != 5:
        raise ValueError(f"masks must be [k, B, C, h, w], got {tuple(masks.shape)}")
    return torch.softmax(tau1 * masks.sum(dim=0), dim=1)
