"""Symmetric image-text InfoNCE (GroupViT, Xu et al. CVPR 2022 §3.2; docs/METHOD.md §2.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["image_text_contrastive", "gather_with_grad"]


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-gather [B, ...] across processes with gradient; returns (gathered, offset of this rank)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return x, 0
    from torch.distributed.nn.functional import all_gather

    parts = all_gather(x.contiguous())
    return torch.cat(parts, dim=0), x.shape[0] * torch.distributed.get_rank()


def image_text_contrastive(
    image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor, max_scale: float = 100.0
) -> torch.Tensor:
    """L_itc = ½ [CE(s·I·Tᵀ, y) + CE(s·T·Iᵀ, y)] with s = min(exp(logit_scale), 100).

    Args:
        image_emb: [B, D] image embeddings (any norm; L2-normalised here).
        text_emb: [B, D] caption embeddings, row i pairs with image i.
        logit_scale: scalar parameter, log of the inverse temperature.

    Returns:
        scalar loss. Across processes, negatives are gathered with gradient.
    """
    img = F.normalize(image_emb.float(), dim=-1)
    txt = F.normalize(text_emb.float(), dim=-1)
    s = logit_scale.float().exp().clamp(max=max_scale)
    all_img, offset = gather_with_grad(img)
    all_txt, _ = gather_with_grad(txt)
    target = torch.arange(img.shape[0], device=img.device) + offset
    return 0.5 * (
        F.cross_entropy(s * img @ all_txt.t(), target) + F.cross_entropy(s * txt @ all_img.t(), target)
    )
