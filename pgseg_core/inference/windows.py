"""Sliding windows and the one window accumulator of inference (mmseg ``slide_inference``,
docs/METHOD.md §4.2).

Every path (one image, a batch of images, cached features) places its per-window maps with
:class:`WindowAccumulator`: maps are summed over the windows and divided by the per-pixel window count, then
:func:`resize_scores` brings them to the original image size, where the rule's argmax
(:func:`channel_argmax`) gives the label.

Symbols: K channels, H×W pixels of the resized frame, H0×W0 of the original image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["Window", "WindowAccumulator", "channel_argmax", "image_windows", "resize_scores", "slide_windows"]

Window = tuple[int, int, int, int]  # (y1, y2, x1, x2) pixel bounds, end exclusive


def slide_windows(height: int, width: int, crop: int, stride: int) -> list[Window]:
    """Sliding windows of mmseg ``slide_inference`` (docs/METHOD.md §4.2).

    ``grids = max(size - crop + stride - 1, 0) // stride + 1`` per axis; window i starts at ``i·stride``,
    ends at ``min(start + crop, size)`` and is shifted back to ``max(end - crop, 0)`` so it stays inside.
    Windows are ``min(crop, H) × min(crop, W)``: smaller than the crop when the image is.

    Returns:
        list of (y1, y2, x1, x2) pixel bounds (end exclusive), row-major.

    Raises:
        ValueError: a non-positive size, crop or stride.
    """
    if min(height, width, crop, stride) <= 0:
        raise ValueError(f"sizes must be positive: image {height}x{width}, crop {crop}, stride {stride}")
    h_grids = max(height - crop + stride - 1, 0) // stride + 1
    w_grids = max(width - crop + stride - 1, 0) // stride + 1
    windows = []
    for i in range(h_grids):
        y2 = min(i * stride + crop, height)
        y1 = max(y2 - crop, 0)
        for j in range(w_grids):
            x2 = min(j * stride + crop, width)
            x1 = max(x2 - crop, 0)
            windows.append((y1, y2, x1, x2))
    return windows


def image_windows(height: int, width: int, eval_cfg: Any) -> list[Window]:
    """The windows of a resized ``height × width`` image under ``eval_cfg.mode``: :func:`slide_windows` with
    ``eval_cfg.crop`` / ``eval_cfg.stride`` (``"slide"``), or the whole image (``"whole"``)."""
    if eval_cfg.mode == "slide":
        return slide_windows(height, width, int(eval_cfg.crop), int(eval_cfg.stride))
    return [(0, height, 0, width)]


class WindowAccumulator:
    """Per-pixel sum of window maps and window count over one resized image.

    Args:
        channels: K, channels of every map.
        size: (H, W) pixels of the resized frame the windows live in.
        device: where the sums are kept.
    """

    def __init__(self, channels: int, size: tuple[int, int], device: torch.device | str) -> None:
        height, width = int(size[0]), int(size[1])
        self.total = torch.zeros(channels, height, width, device=device)
        self.count = torch.zeros(1, height, width, device=device)

    def add(self, windows: Sequence[Window], maps: torch.Tensor) -> None:
        """Add the maps of windows of one size.

        Args:
            windows: n (y1, y2, x1, x2) bounds, all of the same size h×w.
            maps: [n,K,h',w'] per-window maps with h' >= h, w' >= w (the padded crop); the top-left h×w is
                used.
        """
        y1, y2, x1, x2 = windows[0]
        maps = maps[:, :, : y2 - y1, : x2 - x1]  # [n,K,h,w]
        for (y1, y2, x1, x2), s in zip(windows, maps):
            self.total[:, y1:y2, x1:x2] += s
            self.count[:, y1:y2, x1:x2] += 1

    def mean(self) -> torch.Tensor:
        """[K,H,W] window-averaged maps.

        Raises:
            RuntimeError: a pixel no window covered (the windows of :func:`image_windows` cover all).
        """
        if bool((self.count == 0).any()):
            raise RuntimeError("sliding windows left pixels uncovered")  # invariant of slide_windows
        return self.total / self.count


def resize_scores(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of [K,H,W] maps to ``size`` = (H0, W0); the input itself when
    it already has that size."""
    h0, w0 = int(size[0]), int(size[1])
    if tuple(scores.shape[-2:]) == (h0, w0):
        return scores
    return F.interpolate(scores[None], size=(h0, w0), mode="bilinear", align_corners=False)[0]


#: elements of one channels-last block of :func:`channel_argmax` (bounds its extra memory to ~16 MB)
_ARGMAX_BLOCK = 1 << 22


def channel_argmax(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(dim=0)`` for [K,H,W] without NaN, computed on channels-last blocks of rows: an
    argmax along the outer dimension is a strided reduction, several times slower on CPU than one over a
    contiguous last dimension, and copying a block of rows to [rows,W,K] costs less than the difference.

    Returns:
        [H,W] int64 channel indices; ties go to the first channel, like ``argmax``.
    """
    k, height, width = scores.shape
    rows = max(1, _ARGMAX_BLOCK // max(1, k * width))
    if rows >= height:
        return scores.permute(1, 2, 0).contiguous().argmax(dim=-1)
    index = torch.empty(height, width, dtype=torch.long, device=scores.device)
    for y in range(0, height, rows):
        block = scores[:, y : y + rows].permute(1, 2, 0).contiguous()  # [rows,W,K]
        torch.argmax(block, dim=-1, out=index[y : y + rows])
    return index
