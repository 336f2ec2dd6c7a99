"""Batched GroupViT inference over several images (same result as :func:`.inference.predict` per image).

:func:`.inference.predict` segments one image. Here the windows of several images are pooled: crops of the
same size (all full ``crop × crop`` windows in slide mode, same-size images in whole mode) go through the
image encoder together, then each image's window scores are averaged, resized and arg-maxed exactly as in
``predict`` (pgseg_method.md §4.2-4.3). The image encoder is pluggable (:class:`TorchEncoder`, or the ONNX
Runtime one in :mod:`.onnx_export`), the class-dependent rule is always :func:`.inference.crop_scores`.

Symbols: B crops, C classes, S groups, D embedding width, H×W pixels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .classes import ClassEmbeddings
from ..errors import ConfigError
from .inference import (
    TOKEN_STRIDE,
    CropFeatures,
    crop_scores,
    extract_features,
    resize_short_side,
    slide_windows,
)

__all__ = ["prepare_image", "PreparedImage", "TorchEncoder", "Encoder", "predict_batch"]

Encoder = Callable[[torch.Tensor], CropFeatures]


@dataclass
class PreparedImage:
    """A model-ready image.

    Attributes:
        x: [3,H,W] float32, resized (short side rule) and ImageNet-normalised.
        size: (H0, W0) of the original image, the size of the returned label map.
    """

    x: torch.Tensor
    size: tuple[int, int]


def prepare_image(image: np.ndarray, eval_cfg: Any) -> PreparedImage:
    """Resize and normalise one uint8 RGB image as :func:`.inference.predict` does (on the CPU).

    Args:
        image: uint8 [H0,W0,3], 0-255.
        eval_cfg: :class:`pgseg_core.config.EvalConfig` (``short_side``, ``max_long``).

    Returns:
        :class:`PreparedImage`: the [3,H,W] tensor (resized on the 0-255 scale, rounded, then
        ``(x / 255 - mean) / std``) and the original size.
    """
    h0, w0 = image.shape[:2]
    x = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1).float()  # [3,H0,W0]
    x = resize_short_side(x, int(eval_cfg.short_side), int(eval_cfg.max_long)).round().clamp(0, 255)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return PreparedImage(x=(x / 255.0 - mean) / std, size=(h0, w0))


class TorchEncoder:
    """The PyTorch image encoder: :func:`.inference.extract_features`, under bf16 autocast on CUDA.

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


def _check_eval_cfg(eval_cfg: Any) -> None:
    if eval_cfg.mode not in ("slide", "whole"):
        raise ConfigError(f"eval.mode must be 'slide' or 'whole', got {eval_cfg.mode!r}")
    for key in ("short_side", "max_long", "crop", "stride"):
        if int(getattr(eval_cfg, key)) <= 0:
            raise ConfigError(
                f"eval.{key} must be a positive number of pixels, got {getattr(eval_cfg, key)!r}"
            )
    if not 0.0 <= float(eval_cfg.bg_thresh) <= 1.0:
        raise ConfigError(f"--bg-thresh must lie in [0, 1], got {eval_cfg.bg_thresh!r}")


def _pad(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % TOKEN_STRIDE, (-w) % TOKEN_STRIDE
    return x if ph == 0 and pw == 0 else F.pad(x, (0, pw, 0, ph), value=0.0)


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
        images: :func:`prepare_image` outputs.
        class_emb: [C,D] L2-normalised class embeddings or :class:`ClassEmbeddings`.
        logit_scale: s = min(exp(logit_scale), 100) of the model.
        eval_cfg: :class:`pgseg_core.config.EvalConfig` (mode, crop, stride, bg_thresh, top_k).
        device: where the scores are accumulated.
        max_crops: most crops per encoder forward (memory bound; results do not depend on it).

    Returns:
        Per image ``(label, scores)``: label int64 [H0,W0] (0 background, 1 + c class c) and scores float32
        [C+1,H0,W0] in [0, 1], equal to :func:`.inference.predict` on the same image.

    Raises:
        ConfigError: invalid eval settings.
    """
    _check_eval_cfg(eval_cfg)
    device = torch.device(device)
    ce = class_emb if isinstance(class_emb, ClassEmbeddings) else ClassEmbeddings.plain(class_emb.float())
    ce = ce.to(device)
    channels = ce.num_classes + 1
    totals, counts, jobs = [], [], []
    for i, img in enumerate(images):
        height, width = img.x.shape[-2:]
        totals.append(torch.zeros(channels, height, width, device=device))
        counts.append(torch.zeros(1, height, width, device=device))
        if eval_cfg.mode == "slide":
            windows = slide_windows(height, width, int(eval_cfg.crop), int(eval_cfg.stride))
        else:
            windows = [(0, height, 0, width)]
        jobs += [(i, w) for w in windows]
    by_size: dict[tuple[int, int], list[tuple[int, tuple[int, int, int, int]]]] = {}
    for i, (y1, y2, x1, x2) in jobs:
        by_size.setdefault((y2 - y1, x2 - x1), []).append((i, (y1, y2, x1, x2)))
    step = max(int(max_crops), 1)
    for (hc, wc), group in by_size.items():
        for start in range(0, len(group), step):
            chunk = group[start : start + step]
            crops = torch.stack(
                [images[i].x[:, y1:y2, x1:x2] for i, (y1, y2, x1, x2) in chunk]
            )  # [n,3,hc,wc]
            padded = _pad(crops)
            feats = encoder(padded)
            feats = CropFeatures(
                *(t.to(device).float() for t in (feats.group_emb, feats.image_emb, feats.group_probs))
            )
            scores = crop_scores(
                feats,
                ce,
                logit_scale,
                float(eval_cfg.bg_thresh),
                int(eval_cfg.top_k),
                out_size=tuple(padded.shape[-2:]),
                with_background=True,
            )[:, :, :hc, :wc]
            for (i, (y1, y2, x1, x2)), s in zip(chunk, scores):
                totals[i][:, y1:y2, x1:x2] += s
                counts[i][:, y1:y2, x1:x2] += 1
    results = []
    for img, total, count in zip(images, totals, counts):
        scores = total / count
        if tuple(scores.shape[-2:]) != tuple(img.size):
            scores = F.interpolate(scores[None], size=img.size, mode="bilinear", align_corners=False)[0]
        label = scores.argmax(dim=0)
        results.append((label.cpu().numpy().astype(np.int64), scores.cpu().numpy().astype(np.float32)))
    return results
