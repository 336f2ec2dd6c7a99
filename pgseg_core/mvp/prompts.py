"""Learnable CoOp-style prompts of MVP-SEG (docs/MVP_SEG.md §1-2).

Legend: P = k + 1 prompts (index 0 the global prompt p0, 1..k the segmentation prompts), T context tokens,
W token-embedding width of the text tower, C classes, D joint width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PromptLearner"]


class PromptLearner(nn.Module):
    """P sets of T learnable context vectors, inserted before the class-name tokens of a frozen text tower.

    Args:
        num_prompts: P (k segmentation prompts + the global prompt).
        n_ctx: T context tokens per prompt.
        width: W, the text tower's token-embedding width.
        init: optional [T, W] embeddings (e.g. of "a photo of a") every prompt starts from; each prompt adds
            its own N(0, ``noise_std``²) noise so the views differ from the first step. Without it the
            vectors are N(0, ``noise_std``²) (CoOp's generic initialisation).
        noise_std: standard deviation of the initial noise.
        generator: optional torch.Generator for a reproducible initialisation.
    """

    def __init__(
        self,
        num_prompts: int,
        n_ctx: int,
        width: int,
        init: torch.Tensor | None = None,
        noise_std: float = 0.02,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if num_prompts < 1 or n_ctx < 0:
            raise ValueError(f"need at least one prompt and n_ctx >= 0, got {num_prompts}, {n_ctx}")
        noise = torch.randn(num_prompts, n_ctx, width, generator=generator) * noise_std
        if init is not None:
            if tuple(init.shape) != (n_ctx, width):
                raise ValueError(f"init must be [{n_ctx}, {width}], got {tuple(init.shape)}")
            noise = noise + init.detach().float().cpu()[None]
        self.ctx = nn.Parameter(noise)

    @property
    def num_prompts(self) -> int:
        return int(self.ctx.shape[0])

    def class_embeddings(self, text: nn.Module, names: list[str]) -> torch.Tensor:
        """[P, C, D] L2-normalised class embeddings of every prompt (differentiable in the context).

        Args:
            text: a frozen text tower with ``encode_prompted(ctx [T, W], names) -> [C, D]``
                (:mod:`pgseg_core.backbones.text`).
            names: the C class names.
        """
        embs = [text.encode_prompted(self.ctx[p], names).float() for p in range(self.num_prompts)]
        return F.normalize(torch.stack(embs), dim=-1)
