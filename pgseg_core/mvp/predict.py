"""Inference of MVP-SEG and of the training-free baseline on a frozen backbone (docs/MVP_SEG.md §4).

Legend: C classes, D joint width, h×w dense grid, H0×W0 original pixels.

One image: resize (short side ``short_side``, long side at most ``max_long``) and ImageNet-normalise
(:func:`pgseg_core.inference.preprocess.image_to_tensor`), zero-pad to the backbone stride, one forward of
the whole image (no sliding windows), class maps on the dense grid, bilinear upsampling to the padded size,
crop of the padding, bilinear resize to the original size, arg-max.

- Baseline: softmax over classes of s · cos(F, t_c), t_c the template-ensembled class embedding and s the
  backbone's own logit scale (:attr:`FrozenBackbone.logit_scale`: CLIP's 100, a GroupViT / PGSeg checkpoint's
  learned value), as the backbone scores classes in its own zero-shot protocol.
- MVP-SEG: the GPR-gated fused masks m_f^c · g_c (:class:`pgseg_core.mvp.model.MVPSeg`).
- ``bg_thresh`` > 0 (either method): GroupViT's background rule. The classes after ``"background"`` are scored
  without it and background's score is the constant ``bg_thresh``, so a pixel is background where no class
  reaches it (docs/MVP_SEG.md §4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones.base import FrozenBackbone
from ..inference.preprocess import image_to_tensor, pad_to_stride
from .data import BACKGROUND
from .dense_cache import image_content_key, read_dense, write_dense
from .model import MVPSeg

__all__ = ["DensePredictor"]


@dataclass
class DensePredictor:
    """Predicts label maps for a class list; ``model`` None is the training-free baseline."""

    backbone: FrozenBackbone
    model: MVPSeg | None
    templates: list[str]
    short_side: int = 448
    max_long: int = 2048
    bg_thresh: float = 0.0
    cache: object | None = None
    _emb: dict = field(default_factory=dict)
    encoded: int = 0
    from_cache: int = 0

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @torch.no_grad()
    def embeddings(self, names: list[str]) -> torch.Tensor:
        """[C, D] (baseline) or [P, C, D] (MVP-SEG) L2-normalised class embeddings, memoised per list."""
        key = tuple(names)
        if key not in self._emb:
            if self.model is None:
                self._emb[key] = self.backbone.class_embeddings(list(names), self.templates)
            else:
                self._emb[key] = self.model.class_embeddings(list(names))
        return self._emb[key]

    @torch.no_grad()
    def dense(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """([1, D, h, w] dense map, resized (H, W)) of a uint8 [H0, W0, 3] image (from the cache if there)."""
        x = image_to_tensor(image, self.short_side, self.max_long, self.device)
        resized = (int(x.shape[-2]), int(x.shape[-1]))
        key = image_content_key(image) if self.cache is not None else ""
        cached = read_dense(self.cache, key, self.device) if self.cache is not None else None
        if cached is not None:
            self.from_cache += 1
            return cached, resized
        dense = self.backbone.dense(pad_to_stride(x[None], self.backbone.stride))
        self.encoded += 1
        if self.cache is not None:
            write_dense(self.cache, key, dense, image.shape[:2], resized)
        return dense, resized

    @torch.no_grad()
    def grid_scores(self, dense: torch.Tensor, names: list[str]) -> torch.Tensor:
        """[B, C, h, w] class scores in [0, 1] on the dense grid (C = len(names)); with ``bg_thresh`` > 0
        and ``names[0] == "background"``, channel 0 is the constant ``bg_thresh`` and the other channels
        are the scores of ``names[1:]`` alone."""
        if self.bg_thresh > 0 and len(names) > 1 and names[0] == BACKGROUND:
            fg = self._class_scores(dense, names[1:])
            return torch.cat([torch.full_like(fg[:, :1], self.bg_thresh), fg], dim=1)
        return self._class_scores(dense, names)

    @torch.no_grad()
    def _class_scores(self, dense: torch.Tensor, names: list[str]) -> torch.Tensor:
        """[B, C, h, w] scores of every name, background (if named) included like any class."""
        emb = self.embeddings(names)
        if self.model is None:
            scale = self.backbone.logit_scale
            return torch.softmax(scale * torch.einsum("bdhw,cd->bchw", dense, emb), dim=1)
        return self.model(dense, emb).gated

    @torch.no_grad()
    def predict(self, image: np.ndarray, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(label int64 [H0, W0] = index into ``names``, scores float32 [C, H0, W0]) on the model's device."""
        dense, (h, w) = self.dense(image)
        scores = self.grid_scores(dense, names)
        stride = self.backbone.stride
        padded = (scores.shape[-2] * stride, scores.shape[-1] * stride)
        up = F.interpolate(scores, size=padded, mode="bilinear", align_corners=False)[..., :h, :w]
        up = F.interpolate(up, size=image.shape[:2], mode="bilinear", align_corners=False)[0]
        return up.argmax(dim=0), up
