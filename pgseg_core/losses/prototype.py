"""PGSeg's prototype-group contrastive loss L_PG (docs/METHOD.md §3.3-3.4).

Legend: B batch, K groups = prototypes per image, C channels.

Per image, the K group centres are matched one-to-one to the K prototypes with the Hungarian
algorithm on their cosine similarity; the matched pairs are positives and the other K-1 entries of the
same image are negatives, in both directions. HRS keeps only the high-confidence pairs: those whose
matched similarity, min-max normalised over the candidates, lies within phi of the best candidate
(docs/METHOD.md §3.4).

``released_code=True`` reproduces the released implementation: the assignment *minimises* the
similarity, and HRS reads column 0 instead of the matched (diagonal) entry and keeps it when it is above
phi.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels import linear_assignment

__all__ = ["hungarian_match", "hrs_mask", "hrs_kept_fraction", "prototype_group_loss"]


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
    """HRS selection of matched pairs (docs/METHOD.md §3.4).

    The similarity is min-max normalised over dim 1 (all queries for one key):
    ``norm = (sim - min_i) / (max_i - min_i + 1e-6)``, in [0, 1], 1 for the best candidate.

    Args:
        sim: [B, K, K] similarity with the matched pair of row/column k on the diagonal
            (``sim[b, i, j]`` = query i vs key j).
        threshold: phi in [0, 1].
        released_code: the released rule instead of the high-confidence one.

    Returns:
        bool [B, K]: default: True where the matched entry is high-confidence, ``norm[b, k, k] >= 1 - phi``
        without the 1e-6, i.e. ``max_i - sim[b, k, k] <= phi * (max_i - min_i)``: within phi of the best
        candidate (phi = 0 keeps only pairs whose matched entry is the best, phi = 1 keeps all; a key whose
        candidates all tie is kept). ``released_code``: ``norm[b, k, 0] > phi`` (column 0, as the released
        code reads it).
    """
    lo = sim.min(dim=1).values  # [B, K]
    hi = sim.max(dim=1).values
    if released_code:
        return (sim[:, :, 0] - lo[:, :1]) / (hi[:, :1] - lo[:, :1] + 1e-6) > threshold  # column 0's range
    # norm >= 1 - phi written without the 1e-6 (the best candidate itself is always kept)
    return hi - torch.diagonal(sim, dim1=1, dim2=2) <= threshold * (hi - lo)


def _pair_similarities(groups: torch.Tensor, prototypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(group-vs-prototype, prototype-vs-group) cosine similarities, each [B, K, K]."""
    g = F.normalize(groups.float(), dim=-1)
    p = F.normalize(prototypes.float(), dim=-1)
    return g @ p.transpose(1, 2), p @ g.transpose(1, 2)


@torch.no_grad()
def hrs_kept_fraction(
    groups: torch.Tensor, prototypes: torch.Tensor, threshold: float = 0.1, released_code: bool = False
) -> torch.Tensor:
    """Fraction of matched pairs HRS keeps, over both directions and the B·K pairs of each.

    Args:
        groups: [B, K, C]; prototypes: [B, K, C] already matched (row k to group k).

    Returns:
        detached float32 scalar in [0, 1] (logged as ``hrs_kept_*`` in ``metrics.jsonl``).
    """
    keeps = [hrs_mask(sim, threshold, released_code) for sim in _pair_similarities(groups, prototypes)]
    return torch.stack([k.float().mean() for k in keeps]).mean()


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
        threshold: HRS phi (:func:`hrs_mask`).
        released_code: the released HRS rule (column 0, above phi).

    Returns:
        scalar: CE over the HRS-kept rows of s·(P̂ Ĝᵀ) (each prototype against the K groups of its image)
        plus CE over the kept rows of s·(Ĝ P̂ᵀ); a direction with no kept row contributes 0.
    """
    B, K, _ = groups.shape
    labels = torch.arange(K, device=groups.device).expand(B, K)
    s = logit_scale.float().exp().clamp(max=max_scale)
    # [B, K, K]: group i vs prototype j, and prototype i vs group j
    sim_gp, sim_pg = _pair_similarities(groups, prototypes)
    loss = sim_gp.new_zeros(())
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
