"""Prompts of GroupViT's multi-label loss for a batch of captions (docs/METHOD.md §2.2).

Legend: B captions, P distinct prompts of the batch, M = ``model.multi_label`` prompts per caption.

Per caption: its nouns (``noun_source``), a random subset of M when there are more (GroupViT samples
min(M, #nouns)), each put into a template (one drawn uniformly at random per prompt when several are given,
as the released recipe draws from the 80 ImageNet templates); with ``pad`` the caption itself fills the
slots up to M (the released recipe), without it the caption is used only when no noun is found. Prompts
are merged across the batch into P distinct columns (``multi_label.py``); a caption used as padding more
than once is one column of its row.

Randomness comes from torch's global generator (seeded runs repeat); with one template none is drawn.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["build_prompts", "gather_prompt_sets", "merge_prompt_sets"]


def build_prompts(
    texts: list[str],
    max_prompts: int,
    nouns: Callable[[str], list[str]],
    templates: list[str],
    pad: bool,
) -> tuple[list[str], torch.Tensor]:
    """The batch's distinct prompts and which caption uses which.

    Args:
        texts: B caption strings.
        max_prompts: M >= 1.
        nouns: caption -> its nouns / object phrases in order.
        templates: >= 1 templates with one ``{}``.
        pad: fill each caption's prompts up to M with the caption itself.

    Returns:
        (the P distinct prompts in order of first use, bool targets [B, P]: True where caption b uses
        prompt p).
    """
    index: dict[str, int] = {}
    rows: list[list[int]] = []
    for caption in texts:
        words = nouns(caption)
        if len(words) > max_prompts:
            keep = torch.randperm(len(words))[:max_prompts].sort().values.tolist()
            words = [words[i] for i in keep]
        prompts = [_pick(templates).format(w) for w in words]
        if pad:
            prompts += [caption] * (max_prompts - len(prompts))
        prompts = prompts or [caption]
        rows.append([index.setdefault(p, len(index)) for p in prompts])
    targets = torch.zeros(len(texts), len(index), dtype=torch.bool)
    for b, cols in enumerate(rows):
        targets[b, cols] = True
    return list(index), targets


def _pick(templates: list[str]) -> str:
    if len(templates) == 1:
        return templates[0]
    return templates[int(torch.randint(len(templates), ()))]


def merge_prompt_sets(parts: list[tuple[list[str], torch.Tensor]]) -> tuple[list[str], torch.Tensor]:
    """Several batches' prompts as one batch: what :func:`build_prompts` returns for the concatenated
    captions when it draws nothing (one template, no caption with more than M nouns).

    Used across processes: every rank builds its own captions' prompts, the ranks' results are gathered in
    rank order and merged here, identically on each rank (docs/TRAINING.md §3).

    Args:
        parts: per part (its P_i distinct prompts, bool targets [B_i, P_i]), in caption order.

    Returns:
        (the P distinct prompts over all parts in order of first use, bool targets [ΣB_i, P]).
    """
    index: dict[str, int] = {}
    rows: list[list[int]] = []
    for prompts, targets in parts:
        cols = [index.setdefault(p, len(index)) for p in prompts]
        for row in targets.tolist():
            rows.append([cols[j] for j, used in enumerate(row) if used])
    merged = torch.zeros(len(rows), len(index), dtype=torch.bool)
    for b, cols in enumerate(rows):
        merged[b, cols] = True
    return list(index), merged


def gather_prompt_sets(prompts: list[str], targets: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """This process's (prompts, targets [B, P_local]) -> the global batch's (prompts, targets [G, P]),
    identical on every rank (``all_gather_object`` in rank order, then :func:`merge_prompt_sets`); returned
    unchanged with one process."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return prompts, targets
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (prompts, targets.cpu()))
    return merge_prompt_sets(parts)
