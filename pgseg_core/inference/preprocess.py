"""Image geometry and normalisation of the test pipeline (docs/METHOD.md §4.2 steps 1-2).

One uint8 RGB image becomes the model-ready [3,H,W] tensor in one place (:func:`image_to_tensor`): resize so
the short side is ``short_side`` unless the long side would exceed ``max_long`` (mmseg
``Resize(keep_ratio=True)`` with ``img_scale=(max_long, short_side)``), on the [0, 255] scale and rounded like
a uint8 image, then scaled to [0, 1] and normalised with the ImageNet mean / std. Encoder inputs are
brought to a multiple of :data:`TOKEN_STRIDE` pixels as ``eval.crop_fit`` says (:func:`fit_to_stride`,
docs/EVAL.md): zero-padded at the end (after normalisation; the default), zero-padded evenly on both sides
(SCLIP family) or cut down (GroupViT).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import DataError

__all__ = [
    "CROP_FITS",
    "TOKEN_STRIDE",
    "PreparedImage",
    "fit_to_stride",
    "map_frame",
    "check_image",
    "image_to_tensor",
    "pad_to_stride",
    "prepare_image",
    "rescale_size",
    "resize_short_side",
]

# IMAGENET_MEAN / STD are on the [0, 1] scale: mmseg's (123.675, 116.28, 103.53) / (58.395, 57.12, 57.375)
# on the [0, 255] scale (docs/METHOD.md §4.2).

TOKEN_STRIDE = 16  # pixels per stage-0 token side; encoder inputs must be a multiple of it
CROP_FITS = ("end", "centre", "floor")  # eval.crop_fit values (fit_to_stride)


def rescale_size(height: int, width: int, short: int, max_long: int) -> tuple[int, int]:
    """Keep-ratio target size of mmseg ``Resize(img_scale=(max_long, short), keep_ratio=True)``.

    ``scale = min(max(max_long, short) / long_side, min(max_long, short) / short_side)`` and each side is
    ``int(side·scale + 0.5)`` (docs/METHOD.md §4.2).

    Returns:
        (new_height, new_width) pixels, each at least 1.
    """
    long_edge, short_edge = max(max_long, short), min(max_long, short)
    scale = min(long_edge / max(height, width), short_edge / min(height, width))
    return max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1)


def resize_short_side(img: np.ndarray | torch.Tensor, short: int, max_long: int) -> np.ndarray | torch.Tensor:
    """Resize keeping the aspect ratio: short side to ``short`` unless the long side would pass ``max_long``.

    Bilinear with half-pixel centres (like cv2 ``INTER_LINEAR`` that mmseg uses), no antialiasing.

    Args:
        img: uint8 numpy image [H,W,3] (0-255), or a float tensor [3,H,W] / [B,3,H,W].
        short: target short side, pixels.
        max_long: cap on the long side, pixels.

    Returns:
        The same kind as the input: uint8 [H',W',3] numpy (rounded) or a float tensor [.., 3, H', W'].
    """
    if isinstance(img, np.ndarray):
        h, w = img.shape[:2]
        nh, nw = rescale_size(h, w, short, max_long)
        if (nh, nw) == (h, w):
            return img.copy()
        x = torch.from_numpy(np.require(img, requirements=["C", "W"])).permute(2, 0, 1)[None].float()
        y = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
        return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    squeeze = img.dim() == 3
    x = img[None] if squeeze else img
    h, w = x.shape[-2:]
    nh, nw = rescale_size(int(h), int(w), short, max_long)
    if (nh, nw) != (h, w):
        x = F.interpolate(x.float(), size=(nh, nw), mode="bilinear", align_corners=False)
    return x[0] if squeeze else x


def check_image(image: Any) -> None:
    """Raise :class:`~pgseg_core.errors.DataError` unless ``image`` is an RGB uint8 array [H,W,3]."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise DataError(f"image must be an RGB uint8 array [H,W,3], got {desc}; convert it to RGB first")


def image_to_tensor(
    image: np.ndarray, short_side: int, max_long: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Resize and normalise one uint8 RGB image into the model-ready tensor (docs/METHOD.md §4.2).

    The image is resized on the [0, 255] scale (:func:`resize_short_side`), rounded and clamped like a uint8
    image, then normalised: ``(x / 255 - mean) / std`` with the ImageNet mean / std.

    Args:
        image: uint8 [H0,W0,3], 0-255 (not checked here: see :func:`check_image`).
        short_side: target short side, pixels.
        max_long: cap on the long side, pixels.
        device: where the work runs and the tensor lives (None: the CPU).

    Returns:
        [3,H,W] float32 on ``device``.
    """
    x = torch.from_numpy(np.require(image, requirements=["C", "W"]))
    if device is not None:
        x = x.to(device)
    x = x.permute(2, 0, 1).float()  # [3,H0,W0]
    resized = resize_short_side(x, int(short_side), int(max_long))
    if resized is not x:  # integers in [0, 255] already when no resize happened: round / clamp change nothing
        x = resized.round().clamp(0, 255)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=x.device)[:, None, None]
    return (x / 255.0 - mean) / std  # [3,H,W]


def pad_to_stride(x: torch.Tensor, multiple: int = TOKEN_STRIDE) -> torch.Tensor:
    """Zero-pad the last two dimensions (right / bottom) up to a multiple of ``multiple`` pixels.

    Args:
        x: [..., H, W], normalised (the padding is zeros after normalisation).

    Returns:
        [..., H', W'] with H', W' the next multiples; ``x`` itself when already aligned.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), value=0.0)


def fit_to_stride(x: torch.Tensor, mode: str = "end", multiple: int = TOKEN_STRIDE) -> torch.Tensor:
    """Bring crops [..., h, w] to multiples of ``multiple`` pixels for the encoder (``eval.crop_fit``).

    - ``end``: zero-pad right / bottom (:func:`pad_to_stride`);
    - ``centre``: zero-pad both sides, the odd pixel right / bottom (the SCLIP-family code);
    - ``floor``: drop the last ``h % multiple`` rows and ``w % multiple`` columns, as GroupViT's stride-16
      patch convolution does; a side shorter than ``multiple`` is padded at its end instead.

    Raises:
        ValueError: an unknown mode.
    """
    h, w = x.shape[-2:]
    if mode == "floor":
        fh = h - h % multiple if h >= multiple else h
        fw = w - w % multiple if w >= multiple else w
        return pad_to_stride(x[..., :fh, :fw], multiple)
    if mode == "centre":
        ph, pw = (-h) % multiple, (-w) % multiple
        if ph == 0 and pw == 0:
            return x
        return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)
    if mode != "end":
        raise ValueError(f"unknown crop fit {mode!r}: one of {', '.join(CROP_FITS)}")
    return pad_to_stride(x, multiple)


def map_frame(
    window: tuple[int, int], encoder: tuple[int, int], mode: str = "end", multiple: int = TOKEN_STRIDE
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where a window's maps are drawn, for encoder inputs made by :func:`fit_to_stride`.

    Args:
        window: (h, w) pixels of the window; encoder: (Hp, Wp) of its encoder input.

    Returns:
        ((H', W') size at which the window's token grid is resized into maps, (top, left) of the window's
        h×w in them). ``floor`` stretches the grid of the kept pixels over the whole window (GroupViT).
    """
    (h, w), (hp, wp) = window, encoder
    if mode == "centre":
        return (hp, wp), ((hp - h) // 2, (wp - w) // 2)
    if mode == "floor":
        return (h if h >= multiple else hp, w if w >= multiple else wp), (0, 0)
    return (hp, wp), (0, 0)


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
    """Resize and normalise one uint8 RGB image on the CPU (:func:`image_to_tensor`).

    Args:
        image: uint8 [H0,W0,3], 0-255.
        eval_cfg: :class:`pgseg_core.config.EvalConfig` (``short_side``, ``max_long``).

    Returns:
        :class:`PreparedImage`: the [3,H,W] tensor and the original size.
    """
    h0, w0 = image.shape[:2]
    return PreparedImage(x=image_to_tensor(image, eval_cfg.short_side, eval_cfg.max_long), size=(h0, w0))
