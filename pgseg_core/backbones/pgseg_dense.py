"""This project's GroupViT / PGSeg checkpoints (the demo model included) as frozen dense backbones.

Legend: B images, S final groups, D joint width, h×w stage-0 token grid (H/16 × W/16).

Dense map (docs/MVP_SEG.md §1): each final group token goes through the image projector (``group_emb``,
the same embedding the GroupViT rule scores) and is L2-normalised; each stage-0 token cell gets the
mixture of the group embeddings weighted by its chained soft assignment,
``F[:, y, x] = Σ_s P(s | y, x) · ĝ_s``, then is L2-normalised again. The text side is the checkpoint's
own text tower followed by its text projector (CLIP-BPE transformer or the demo's MiniLM).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checkpoint import load_checkpoint
from ..inference.rules import group_probabilities
from ..models.text import MiniLMTower, TextTransformer, tokenize
from .base import FrozenBackbone
from .text import ClipCausalText, MiniLMText

__all__ = ["PGSegBackbone"]


class PGSegBackbone(FrozenBackbone):
    """``pgseg:CHECKPOINT`` — any checkpoint :func:`pgseg_core.checkpoint.load_checkpoint` reads."""

    stride = 16

    def __init__(self, checkpoint: str) -> None:
        super().__init__()
        model, info = load_checkpoint(checkpoint)
        self.reference = f"pgseg:{checkpoint}"
        self.identity = info.sha256
        self.model = model
        self.logit_scale = float(model.logit_scale_value())
        tower = model.text_encoder
        if isinstance(tower, TextTransformer):
            self.text = ClipCausalText(
                tower.token_embedding,
                tower.positional_embedding,
                lambda x: tower.transformer(
                    x.transpose(0, 1), tower.attn_mask[: x.shape[1], : x.shape[1]]
                ).transpose(0, 1),
                tower.ln_final,
                lambda pooled: model.text_projector(pooled, update_stats=False),
                tokenize,
            )
        elif isinstance(tower, MiniLMTower):
            tower._load()
            self.text = MiniLMText(
                tower._model,
                tower._tokenizer,
                lambda pooled: model.text_projector(pooled, update_stats=False),
                model.cfg.text.context_length,
            )
        else:  # pragma: no cover - only two towers exist
            raise TypeError(f"unknown text tower {type(tower).__name__}")
        self.freeze()

    def dense(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model.encode_image(images, dense=True)
        groups = F.normalize(out.group_emb.float(), dim=-1)  # [B, S, D]
        probs = group_probabilities([a.float() for a in out.assign_soft], out.grid)  # [B, S, h, w]
        return F.normalize(torch.einsum("bsd,bshw->bdhw", groups, probs), dim=1)
