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

Across W processes (docs/TRAINING.md §3) the targets are the global ``[G, P]`` matrix (every rank's prompts
merged, identical on each rank), each rank passes its own B = G / W images and the embeddings of its
contiguous share of the P prompt rows (:func:`prompt_share`). Both sides are all-gathered with gradient;
rank r's loss is ½ [its B rows of image -> text (mean over B) + (W / P) · Σ over its prompt rows of text ->
image], so the ranks' losses average to the one-process loss and DDP's averaged gradients are the one-process
gradients.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from .contrastive import gather_with_grad

__all__ = ["multi_label_contrastive", "prompt_share", "share_sizes", "share_slices"]


def _world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def share_sizes(n: int, parts: int) -> list[int]:
    """``n`` rows in ``parts`` contiguous shares whose sizes differ by <= 1 (the first ones larger)."""
    base, extra = divmod(n, parts)
    return [base + (1 if k < extra else 0) for k in range(parts)]


def share_slices(n: int, parts: int) -> list[slice]:
    """The contiguous slices of :func:`share_sizes`, in order; together they cover ``range(n)``."""
    bounds = [0, *itertools.accumulate(share_sizes(n, parts))]
    return [slice(lo, hi) for lo, hi in zip(bounds, bounds[1:])]


def prompt_share(num_prompts: int) -> slice:
    """This process's contiguous share of ``num_prompts`` prompt rows (:func:`share_slices` in rank order;
    ``slice(0, P)`` for one process)."""
    world, rank = _world()
    return share_slices(num_prompts, world)[rank]


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
        prompt_emb: [P, D] embeddings of the batch's distinct prompts (any norm); across processes this
            rank's share ``[len(prompt_share(P)), D]``.
        targets: [B, P] bool or {0, 1}; True where caption b names prompt p (across processes the global
            [G, P]). Every row and every column needs at least one True.
        logit_scale: scalar parameter (log of the inverse temperature).

    Returns:
        scalar loss (float32).

    Raises:
        ValueError: shapes that do not match, or an empty row / column in ``targets``.
    """
    if _world()[0] > 1:
        return _multi_label_distributed(image_emb, prompt_emb, targets, logit_scale, max_scale)
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


def _scores(img: torch.Tensor, prm: torch.Tensor) -> torch.Tensor:
    """[B, D] or [B, S, D] (best group) against [P, D] -> [B, P]."""
    if img.dim() == 3:
        return torch.einsum("bsd,pd->bsp", img, prm).amax(dim=1)
    return img @ prm.t()


def _gather_prompt_rows(prm: torch.Tensor, num_prompts: int) -> torch.Tensor:
    """Every rank's share of the prompt rows -> [P, D], with gradient (shares padded to one size)."""
    from torch.distributed.nn.functional import all_gather

    world = torch.distributed.get_world_size()
    sizes = share_sizes(num_prompts, world)
    pad = prm.new_zeros(max(sizes) - prm.shape[0], prm.shape[1])
    parts = all_gather(torch.cat([prm, pad]).contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


def _multi_label_distributed(image_emb, prompt_emb, targets, logit_scale, max_scale) -> torch.Tensor:
    """Rank r's share of L_ml over the global batch (module docstring)."""
    world, _ = _world()
    num_prompts = targets.shape[1]
    mine = prompt_share(num_prompts)
    if prompt_emb.dim() != 2 or prompt_emb.shape[0] != mine.stop - mine.start:
        raise ValueError(
            f"multi-label loss: this rank's prompt rows must be [{mine.stop - mine.start}, D] "
            f"(its share of {num_prompts}), got {tuple(prompt_emb.shape)}"
        )
    img = F.normalize(image_emb.float(), dim=-1)
    prm = F.normalize(prompt_emb.float(), dim=-1)
    all_img, row0 = gather_with_grad(img)  # [G, D] or [G, S, D]
    all_prm = _gather_prompt_rows(prm, num_prompts)  # [P, D]
    t = targets.float().to(img.device)
    if t.shape[0] != all_img.shape[0]:
        raise ValueError(f"multi-label loss: targets must have {all_img.shape[0]} rows, got {t.shape[0]}")
    if bool((t.sum(1) == 0).any()) or bool((t.sum(0) == 0).any()):
        raise ValueError("multi-label loss: every image needs a prompt and every prompt an image")
    s = logit_scale.float().exp().clamp(max=max_scale)
    rows = slice(row0, row0 + img.shape[0])
    i2t = _soft_ce(s * _scores(img, all_prm), (t / t.sum(1, keepdim=True))[rows])  # mean over my B rows
    tt = t.t()
    target_cols = (tt / tt.sum(1, keepdim=True))[mine]  # [P_r, G]
    logits_cols = s * _scores(all_img, prm).t()  # [P_r, G]
    t2i = torch.sum(-target_cols * F.log_softmax(logits_cols, dim=-1)) * (world / num_prompts)
    return 0.5 * (i2t + t2i)
