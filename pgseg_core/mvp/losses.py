"""MVP-SEG training losses (docs/MVP_SEG.md §2-3): L = λ1 L_seg + λ2 L_cls + λ3 L_OC.

Legend: B images, C classes (training vocabulary: the seen classes), h×w label grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["segmentation_loss", "classification_loss", "total_loss", "image_labels"]

IGNORE = 255


def segmentation_loss(gated: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """L_seg = −Σ_pixels Σ_c m*_c log m_c, averaged over the labelled pixels.

    Args:
        gated: [B, C, h, w] the GPR-gated masks m_c (non-negative, at most 1).
        target: [B, h, w] int64 class index per pixel (0..C-1), :data:`IGNORE` (255) not counted.
        eps: added inside the log (a gated mask can be 0).

    Returns:
        scalar; 0 when no pixel is labelled.
    """
    log_m = torch.log(gated.clamp(min=0) + eps)
    valid = target != IGNORE
    if not bool(valid.any()):
        return gated.sum() * 0.0
    return F.nll_loss(log_m, target.masked_fill(~valid, 0), reduction="none")[valid].mean()


def classification_loss(scores: torch.Tensor, labels: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Multi-label loss of the GPR scores: binary cross-entropy averaged over images and classes
    (−y log g − (1 − y) log(1 − g); the positive half is the paper's −Σ_c y_c log g_c).

    Args:
        scores: [B, C] image-level scores g in (0, 1).
        labels: [B, C] {0, 1} class presence.
    """
    g = scores.clamp(eps, 1 - eps)
    y = labels.to(g.dtype)
    return -(y * torch.log(g) + (1 - y) * torch.log(1 - g)).mean()


def image_labels(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[B, C] {0, 1} presence of each class in each label map [B, h, w] (255 ignored)."""
    out = torch.zeros(target.shape[0], num_classes, device=target.device)
    for b in range(target.shape[0]):
        present = target[b][target[b] != IGNORE].unique()
        out[b, present] = 1.0
    return out


def total_loss(
    l_seg: torch.Tensor, l_cls: torch.Tensor, l_oc: torch.Tensor, weights: tuple[float, float, float]
) -> torch.Tensor:
    """λ1 L_seg + λ2 L_cls + λ3 L_OC with ``weights`` = (λ1, λ2, λ3)."""
    lam1, lam2, lam3 = weights
    return lam1 * l_seg + lam2 * l_cls + lam3 * l_oc
