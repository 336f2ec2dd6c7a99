"""Batched inference over several images (same result as :func:`.features.predict` per image).

:func:`.features.predict` segments one image. Here the windows of several images are pooled: crops of the
same size (all full ``crop × crop`` windows in slide mode, same-size images in whole mode) go through the
image encoder together, then each image's window maps go through the same rule (:func:`.rules.select_rule`,
``eval.rule``) and the same accumulator (:class:`.windows.WindowAccumulator`) as ``predict``
(docs/METHOD.md §4.2-4.3). The image encoder is pluggable (:class:`TorchEncoder`, or the ONNX Runtime one
in :mod:`pgseg_core.segment.onnx`).

Symbols: B crops, C classes, S groups, D embedding width, H×W pixels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .classes import ClassEmbeddings, as_class_embeddings
from .features import CropFeatures, extract_features
from .preprocess import PreparedImage, fit_to_stride, map_frame
from .rules import select_rule
from .windows import Window, WindowAccumulator, image_windows, resize_scores

__all__ = ["Encoder", "TorchEncoder", "predict_batch"]

Encoder = Callable[[torch.Tensor], CropFeatures]


class TorchEncoder:
    """The PyTorch image encoder: :func:`.features.extract_features`, under bf16 autocast on CUDA.

    Args:
        model: a PGSeg-contract model on ``device``, in eval mode.
        device: its device.
        bf16: use ``torch.autocast(dtype=bfloat16)`` on CUDA (ignored on CPU); features come back float32.
    """

    def __init__(self, model: Any, device: torch.device | str, bf16: bool = True) -> None:
        self.model = model
        self.device = torch.device(device)
        self.bf16 = bool(bf16) and self.device.type == "cuda"
        self.calls = 0

    def __call__(self, crops: torch.Tensor) -> CropFeatures:
        """crops [B,3,H,W] normalised (H, W multiples of 16) -> :class:`CropFeatures` (float32)."""
        self.calls += 1
        ctx = (
            torch.autocast(device_type="cuda", dtype=torch.bfloat16)
            if self.bf16
            else contextlib.nullcontext()
        )
        with ctx:
            return extract_features(self.model, crops.to(self.device, non_blocking=True))


def _crops_by_size(
    images: list[PreparedImage], eval_cfg: Any
) -> dict[tuple[int, int], list[tuple[int, Window]]]:
    """(image index, window) of every window of every image, grouped by window size (h, w)."""
    by_size: dict[tuple[int, int], list[tuple[int, Window]]] = {}
    for i, img in enumerate(images):
        height, width = img.x.shape[-2:]
        for y1, y2, x1, x2 in image_windows(height, width, eval_cfg):
            by_size.setdefault((y2 - y1, x2 - x1), []).append((i, (y1, y2, x1, x2)))
    return by_size


@torch.no_grad()
def predict_batch(
    encoder: Encoder,
    images: list[PreparedImage],
    class_emb: torch.Tensor | ClassEmbeddings,
    logit_scale: float,
    eval_cfg: Any,
    device: torch.device | str,
    *,
    max_crops: int = 32,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Segment several prepared images, sharing encoder forwards between same-size crops.

    Args:
        encoder: normalised crops [B,3,h,w] (multiples of 16) -> :class:`CropFeatures`.
        images: :func:`.preprocess.prepare_image` outputs.
        class_emb: [C,D] L2-normalised class embeddings or :class:`ClassEmbeddings`.
        logit_scale: s = min(exp(logit_scale), 100) of the model.
        eval_cfg: :class:`pgseg_core.config.EvalConfig` (mode, crop, stride, rule and its settings).
        device: where the scores are accumulated.
        max_crops: most crops per encoder forward (memory bound; results do not depend on it).

    Returns:
        Per image ``(label, scores)``: label int64 [H0,W0] (0 background, 1 + c class c) and scores float32
        [C+1,H0,W0] in [0, 1], equal to :func:`.features.predict` on the same image.

    Raises:
        ConfigError: invalid eval settings.
    """
    device = torch.device(device)
    rule = select_rule(eval_cfg, as_class_embeddings(class_emb).to(device), logit_scale)
    accs = [WindowAccumulator(rule.channels, tuple(img.x.shape[-2:]), device) for img in images]
    step = max(int(max_crops), 1)
    for group in _crops_by_size(images, eval_cfg).values():
        for start in range(0, len(group), step):
            chunk = group[start : start + step]
            crops = torch.stack([images[i].x[:, y1:y2, x1:x2] for i, (y1, y2, x1, x2) in chunk])  # [n,3,h,w]
            padded = fit_to_stride(crops, getattr(eval_cfg, "crop_fit", "end"))
            feats = encoder(padded)
            feats = CropFeatures(
                *(t.to(device).float() for t in (feats.group_emb, feats.image_emb, feats.group_probs))
            )
            size, (top, left) = map_frame(
                tuple(crops.shape[-2:]), tuple(padded.shape[-2:]), getattr(eval_cfg, "crop_fit", "end")
            )
            maps = rule.crop_maps(feats, size)[:, :, top:, left:]  # [n,K,>=h,>=w]
            for (i, window), m in zip(chunk, maps):
                accs[i].add([window], m[None])
    results = []
    for img, acc in zip(images, accs):
        label, scores = rule.label(resize_scores(rule.refine(acc.mean(), img.x), img.size))
        results.append(
            (
                label.cpu().numpy().astype(np.int64, copy=False),
                scores.cpu().numpy().astype(np.float32, copy=False),
            )
        )
    return results
