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

import torch
import torch.nn.functional as F

from ..kernels import linear_assignment

__all__ = ["hungarian_match", "hrs_mask", "prototype_group_loss"]


@torch.no_grad()
def hungarian_match(groups: torch.Tensor, prototypes: torch.Tensor, maximize: bool = True) -> torch.Tensor:
    """One-to-one matching of groups to prototypes per image (:func:`~pgseg_core.kernels.linear_assignment`:
    scipy's ``linear_sum_assignment`` on the CPU, the batched Triton kernel on CUDA, docs/KERNELS.md §2).

    Args:
        groups: [B, K, C]; prototypes: [B, K, C].
        maximize: maximise the total cosine similarity (the paper's intent); False minimises it
            (the released code).

    Returns:
        LongTensor [B, K]: ``perm[b, k]`` is the prototype index matched to group k.
    """
    sim = F.normalize(groups.float(), dim=-1) @ F.normalize(prototypes.float(), dim=-1).transpose(1, 2)
    return linear_assignment(sim, maximize=maximize)


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
            loss = loss + F.cross_entropy(s * rows[keep], labels[keep])
        else:
            loss = loss + 0.0 * rows.sum()
    return loss
