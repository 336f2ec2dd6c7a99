"""PGSeg's prototype-group contrastive loss L_PG (docs/METHOD.md §3.3-3.4).

Legend: B batch, K groups = prototypes per image, C channels.

Per image, the K group centres are matched one-to-one to the K prototypes with the Hungarian
algorithm on their cosine similarity; the matched pairs are positives and the other K-1 entries of the
same image are negatives, in both directions. HRS keeps a pair only if its min-max normalised
similarity exceeds phi.

``released_code=True`` reproduces two quirks of the released implementation: the assignment
*minimises* the similarity, and HRS reads column 0 instead of the matched (diagonal) entry.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

__all__ = ["hungarian_match", "hrs_mask", "prototype_group_loss"]


@torch.no_grad()
def hungarian_match(groups: torch.Tensor, prototypes: torch.Tensor, maximize: bool = True) -> torch.Tensor:
    """One-to-one matching of groups to prototypes per image (scipy ``linear_sum_assignment``).

    Args:
        groups: [B, K, C]; prototypes: [B, K, C].
        maximize: maximise the total cosine similarity (the paper's intent); False minimises it
            (the released code).

    Returns:
        LongTensor [B, K]: ``perm[b, k]`` is the prototype index matched to group k.
    """
    sim = F.normalize(groups.float(), dim=-1) @ F.normalize(prototypes.float(), dim=-1).transpose(1, 2)
    sim_np = sim.cpu().numpy().astype(np.float64)
    perm = np.stack([linear_sum_assignment(m, maximize=maximize)[1] for m in sim_np])
    return torch.from_numpy(perm).to(groups.device, torch.long)


@torch.no_grad()
def hrs_mask(sim: torch.Tensor, threshold: float = 0.1, released_code: bool = False) -> torch.Tensor:
    """HRS selection of matched pairs.

    Args:
        sim: [B, K, K] similarity with the matched pair of row/column k on the diagonal
            (``sim[b, i, j]`` = query i vs key j).
        threshold: phi.
        released_code: read column 0 (``norm[b, k, 0]``) instead of the diagonal ``norm[b, k, k]``.

    Returns:
        bool [B, K]: True where ``(sim - min_i) / (max_i - min_i + 1e-6) > phi`` for pair k, the min/max
        taken over dim 1 (all queries for one key).
    """
    lo = sim.min(dim=1, keepdim=True).values
    hi = sim.max(dim=1, keepdim=True).values
    norm = (sim - lo) / (hi - lo + 1e-6)
    if released_code:
        picked = norm[:, :, 0]
    else:
        picked = torch.diagonal(norm, dim1=1, dim2=2)
    return picked > threshold


def prototype_group_loss(
    groups: torch.Tensor,
    prototypes: torch.Tensor,
    logit_scale: torch.Tensor,
    threshold: float = 0.1,
    released_code: bool = False,
    max_scale: float = 100.0,
) -> torch.Tensor:
    """L_PG between group centres and their matched prototypes (sum of both directions).

    Args:
        groups: [B, K, C] group centres (carry gradient).
        prototypes: [B, K, C] prototypes already reordered so that row k is matched to group k (no grad).
        logit_scale: scalar parameter; s = min(exp(logit_scale), 100).
        threshold: HRS phi.
        released_code: column-0 HRS (quirk 2).

    Returns:
        scalar: CE over the HRS-kept rows of s·(P̂ Ĝᵀ) (each prototype against the K groups of its image)
        plus CE over the kept rows of s·(Ĝ P̂ᵀ); a direction with no kept row contributes 0.
    """
    g = F.normalize(groups.float(), dim=-1)
    p = F.normalize(prototypes.float(), dim=-1)
    B, K, _ = g.shape
    labels = torch.arange(K, device=g.device).expand(B, K)
    s = logit_scale.float().exp().clamp(max=max_scale)
    sim_gp = g @ p.transpose(1, 2)  # [B, K, K] group i vs prototype j
    sim_pg = p @ g.transpose(1, 2)  # [B, K, K] prototype i vs group j
    loss = g.new_zeros(())
    for sim in (sim_gp, sim_pg):
        keep = hrs_mask(sim, threshold, released_code)
        rows = sim.transpose(1, 2)  # row k: key k against every query of the same image
        if keep.any():
            ce = F.cross_entropy(s * rows[keep], labels[keep], reduction="sum")
        else:
            ce = 0.0 * rows.sum()
        loss = loss + ce / _kept_rows(keep)
    return loss


def _kept_rows(keep: torch.Tensor) -> torch.Tensor:
    """The number of kept rows the CE is averaged over: this batch's; across W processes the global batch's
    divided by W, so that the mean over ranks (DDP) is the global batch's mean (docs/TRAINING.md §3)."""
    n = keep.sum().float()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(n)
        n = n / torch.distributed.get_world_size()
    return n.clamp(min=1e-12) if bool(n > 0) else n.new_ones(())
