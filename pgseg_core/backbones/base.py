"""The frozen-backbone interface of MVP-SEG and the training-free baseline (docs/MVP_SEG.md §1).

Legend: B images, D joint image-text width, h×w dense grid (H/stride × W/stride), T context tokens,
W token-embedding width, C classes.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FrozenBackbone"]


class FrozenBackbone(nn.Module):
    """A frozen image tower with a dense readout in the joint space, and its frozen text tower.

    Subclasses set ``reference`` (the spec string that rebuilds it, stored in checkpoints), ``identity``
    (sha256 of its weights), ``stride`` (pixels per dense cell), ``logit_scale`` (the model's own
    s = min(exp(logit_scale), 100) that multiplies cosines before a softmax; CLIP's trained value is 100)
    and ``text`` (:class:`pgseg_core.backbones.text.ClipCausalText` or
    :class:`~pgseg_core.backbones.text.MiniLMText`), and implement :meth:`dense`. Every parameter is frozen
    (``requires_grad=False``) and the module stays in eval mode (BatchNorm statistics never change).
    """

    reference: str = ""
    identity: str = ""  # sha256 of the weights: the feature cache's key of the backbone
    stride: int = 16
    logit_scale: float = 100.0
    text: nn.Module

    def freeze(self) -> "FrozenBackbone":
        """Freeze every parameter and switch to eval mode; returns self."""
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "FrozenBackbone":
        """Always eval mode: a frozen backbone never updates normalisation statistics."""
        return super().train(False)

    def dense(self, images: torch.Tensor) -> torch.Tensor:
        """Dense features.

        Args:
            images: [B, 3, H, W] ImageNet-normalised (the project's preprocessing), H and W multiples of
                ``stride``.

        Returns:
            [B, D, H/stride, W/stride] float32, L2-normalised over D.
        """
        raise NotImplementedError

    def class_embeddings(self, names: list[str], templates: list[str]) -> torch.Tensor:
        """Training-free class embeddings [C, D]: each template filled with each name, embedded, normalised,
        averaged over templates and normalised again (the CLIP / MaskCLIP prompt ensemble)."""
        texts = [t.format(n) for n in names for t in templates]
        emb = []
        with torch.no_grad():
            for i in range(0, len(texts), 256):
                emb.append(
                    nn.functional.normalize(self.text.encode_texts(texts[i : i + 256]).float(), dim=-1)
                )
        e = torch.cat(emb).reshape(len(names), len(templates), -1).mean(dim=1)
        return nn.functional.normalize(e, dim=-1)
