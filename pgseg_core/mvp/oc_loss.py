"""Orthogonal Constraint Loss of MVP-SEG (Guo et al., 2023; docs/MVP_SEG.md §2).

Legend: k segmentation prompts, T context tokens per prompt, W token-embedding width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["orthogonal_constraint_loss"]


def orthogonal_constraint_loss(contexts: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """L_OC = Σ_{i<j} |p'_i · p'_j| / (‖p'_i‖ ‖p'_j‖), p'_i the mean of prompt i's context vectors.

    Args:
        contexts: [k, T, W] the segmentation prompts' context vectors (the global prompt p0 is not part of
            the constraint).
        eps: floor of the norms.

    Returns:
        scalar tensor in [0, k(k-1)/2]; 0 for k < 2.

    Raises:
        ValueError: ``contexts`` is not 3-d.
    """
    if contexts.dim() != 3:
        raise ValueError(f"contexts must be [k, T, W], got {tuple(contexts.shape)}")
    k = contexts.shape[0]
    if k < 2:
        return contexts.sum() * 0.0
    mean = F.normalize(contexts.mean(dim=1), dim=-1, eps=eps)  # [k, W]
    cos = (mean @ mean.t()).abs()  # [k, k]
    i, j = torch.triu_indices(k, k, offset=1, device=contexts.device)
    return cos[i, j].sum()
