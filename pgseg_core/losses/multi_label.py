"""GroupViT's multi-label image-text contrastive loss (docs/METHOD.md §2.2), with shared prompts merged.

Legend: B images, S groups, P distinct prompts in the batch, D joint embedding width.

Each caption contributes prompts "a photo of a {noun}." for its nouns. GroupViT contrasts the image
embedding with all B·M prompts of the batch: image -> text with a soft target 1/M on the image's own M
prompts, text -> image with a target of 1 on the prompt's own image (timm ``SoftTargetCrossEntropy``,
averaged over both directions). With a small vocabulary the same prompt occurs in many captions of one
batch, and GroupViT's targets then call the other images naming that noun negatives. Here the P
*distinct* prompts of the batch are the columns and ``targets[b, p]`` says whether caption b names
prompt p, so image -> text spreads its target evenly over the image's prompts and text -> image spreads
each prompt's target evenly over every image naming it. When no prompt is shared this is exactly
GroupViT's loss.

``image_emb`` may also be per-group ``[B, S, D]``: an image's score for a prompt is then its best group
(max over S; a multiple-instance term used by the ``pgseg-demo`` variant, docs/DEMO_RECIPE.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["multi_label_contrastive"]


def _soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -Σ target · log_softmax(logits); target rows sum to 1."""
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


def multi_label_contrastive(
    image_emb: torch.Tensor,
    prompt_emb: torch.Tensor,
    targets: torch.Tensor,
    logit_scale: torch.Tensor,
    max_scale: float = 100.0,
) -> torch.Tensor:
    """L_ml = ½ [SoftCE(s·I·Pᵀ, row-normalised T) + SoftCE(s·P·Iᵀ, row-normalised Tᵀ)].

    s = min(exp(logit_scale), 100); docs/METHOD.md §2.2.

    Args:
        image_emb: [B, D] image embeddings, or [B, S, D] group embeddings (score = max over groups);
            any norm, L2-normalised here.
        prompt_emb: [P, D] embeddings of the batch's distinct prompts (any norm).
        targets: [B, P] bool or {0, 1}; True where caption b names prompt p. Every row and every column
            needs at least one True.
        logit_scale: scalar parameter (log of the inverse temperature).

    Returns:
        scalar loss (float32).

    Raises:
        ValueError: shapes that do not match, or an empty row / column in ``targets``.
    """
    if prompt_emb.dim() != 2 or targets.shape != (image_emb.shape[0], prompt_emb.shape[0]):
        raise ValueError(
            f"multi-label loss: targets must be [B, P] = [{image_emb.shape[0]}, "
            f"{prompt_emb.shape[0]}], got {tuple(targets.shape)}"
        )
    t = targets.float()
    if bool((t.sum(1) == 0).any()) or bool((t.sum(0) == 0).any()):
        raise ValueError("multi-label loss: every image needs a prompt and every prompt an image")
    img = F.normalize(image_emb.float(), dim=-1)
    prm = F.normalize(prompt_emb.float(), dim=-1)
    s = logit_scale.float().exp().clamp(max=max_scale)
    if img.dim() == 3:
        sim = torch.einsum("bsd,pd->bsp", img, prm).amax(dim=1)  # [B, P] best group per prompt
    else:
        sim = img @ prm.t()  # [B, P]
    logits = s * sim
    i2t = _soft_ce(logits, t / t.sum(1, keepdim=True))
    tt = t.t()
    t2i = _soft_ce(logits.t(), tt / tt.sum(1, keepdim=True))
    return 0.5 * (i2t + t2i)
