"""MVP-SEG on a frozen backbone: multi-view prompts, fusion, Global Prompt Refining (docs/MVP_SEG.md §2).

Legend: P = k + 1 prompts (0 global, 1..k segmentation), B images, C classes, D joint width, h×w dense grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..backbones.base import FrozenBackbone
from ..errors import CheckpointError
from .config import MVPConfig
from .fusion import fuse_views
from .gpr import gate_masks, global_class_scores
from .oc_loss import orthogonal_constraint_loss
from .prompts import PromptLearner

__all__ = ["MVPSeg", "MVPOutput", "view_masks"]


def view_masks(dense: torch.Tensor, class_emb: torch.Tensor) -> torch.Tensor:
    """Per-view class maps m_i^c = ⟨F(x, y), t_i^c⟩ (cosine; both sides L2-normalised).

    Args:
        dense: [B, D, h, w] dense features.
        class_emb: [P, C, D] class embeddings of each prompt.

    Returns:
        [P, B, C, h, w] in [-1, 1].
    """
    return torch.einsum("bdhw,pcd->pbchw", dense, class_emb)


@dataclass
class MVPOutput:
    """Masks of one forward: ``m0`` [B,C,h,w] global map, ``fused`` [B,C,h,w] (softmax over C),
    ``scores`` [B,C] GPR scores (ones without GPR), ``gated`` [B,C,h,w] = fused · scores."""

    m0: torch.Tensor
    fused: torch.Tensor
    scores: torch.Tensor
    gated: torch.Tensor


class MVPSeg(nn.Module):
    """Learned prompts and scales over a frozen backbone; only ``prompts.ctx``, ``log_tau1`` and
    ``log_tau2`` are trainable (:meth:`trainable_state`)."""

    def __init__(self, backbone: FrozenBackbone, cfg: MVPConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone.freeze()
        init = None
        if cfg.ctx_init:
            words = backbone.text.word_embeddings(cfg.ctx_init)
            init = words if words.shape[0] == cfg.n_ctx else None
        device = next(backbone.parameters()).device
        self.prompts = PromptLearner(cfg.views + 1, cfg.n_ctx, backbone.text.width, init, generator=generator)
        self.log_tau1 = nn.Parameter(torch.tensor(math.log(cfg.tau1)))
        self.log_tau2 = nn.Parameter(torch.tensor(math.log(cfg.tau2)))
        self.to(device)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint stores: the context vectors [P, T, W] and the two log-scales."""
        return {k: v.detach().cpu() for k, v in self.named_parameters() if not k.startswith("backbone.")}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy stored prompts and scales in.

        Raises:
            CheckpointError: a missing entry or one whose shape differs (another views / n_ctx / tower).
        """
        for name, param in self.named_parameters():
            if name.startswith("backbone."):
                continue
            value = state.get(name)
            if value is None or tuple(value.shape) != tuple(param.shape):
                got = "missing" if value is None else tuple(value.shape)
                raise CheckpointError(
                    f"MVP-SEG state '{name}' is {got}, the model needs {tuple(param.shape)}: the checkpoint "
                    "was written for another views / n_ctx / text tower"
                )
            with torch.no_grad():
                param.copy_(value.to(param))

    def class_embeddings(self, names: list[str]) -> torch.Tensor:
        """[P, C, D] L2-normalised embeddings of every prompt with every class name."""
        return self.prompts.class_embeddings(self.backbone.text, names)

    def oc_loss(self) -> torch.Tensor:
        """L_OC over the k segmentation prompts (the global prompt excluded)."""
        return orthogonal_constraint_loss(self.prompts.ctx[1:])

    def forward(self, dense: torch.Tensor, class_emb: torch.Tensor) -> MVPOutput:
        """Masks of dense features [B, D, h, w] for class embeddings [P, C, D] (:meth:`class_embeddings`)."""
        masks = view_masks(dense, class_emb)
        fused = fuse_views(masks[1:], self.log_tau1.exp())
        if self.cfg.gpr:
            scores = global_class_scores(masks[0], self.cfg.gamma, self.log_tau2.exp())
        else:
            scores = torch.ones(fused.shape[:2], device=fused.device, dtype=fused.dtype)
        return MVPOutput(m0=masks[0], fused=fused, scores=scores, gated=gate_masks(fused, scores))
