"""A fixed colour palette for label maps and palette-PNG writing.

Label values: 0 background (black), 1..254 classes, 255 ignore (white). The class colours walk the hue
circle by the golden ratio, alternating saturation / brightness, so neighbouring indices look different
and the palette is the same on every run.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image

from ..utils.io import atomic_write

BACKGROUND_COLOR = (0, 0, 0)
IGNORE_COLOR = (255, 255, 255)
IGNORE_INDEX = 255

_GOLDEN = 0.6180339887498949
_SAT_VAL = ((0.85, 0.95), (0.55, 1.0), (0.95, 0.7), (0.4, 0.85))


def _build_palette() -> np.ndarray:
    pal = np.zeros((256, 3), dtype=np.uint8)
    for i in range(1, 255):
        hue = ((i - 1) * _GOLDEN + 0.02) % 1.0
        sat, val = _SAT_VAL[((i - 1) // 3) % len(_SAT_VAL)]
        r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
        pal[i] = (round(r * 255), round(g * 255), round(b * 255))
    pal[0] = BACKGROUND_COLOR
    pal[IGNORE_INDEX] = IGNORE_COLOR
    return pal


PALETTE: np.ndarray = _build_palette()  # uint8 [256,3]; read-only
PALETTE.setflags(write=False)


def color_of(index: int) -> tuple[int, int, int]:
    """RGB colour (0-255) of label value ``index`` in [0, 255]."""
    if not 0 <= index <= 255:
        raise ValueError(f"label value {index} has no palette colour (0..255)")
    r, g, b = PALETTE[index]
    return int(r), int(g), int(b)


def _check_label(label: np.ndarray) -> np.ndarray:
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label map must be [H,W], got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(
            f"label values must lie in 0..255 for a palette image, got {label.min()}..{label.max()}"
        )
    return label.astype(np.uint8)


def colorize(label: np.ndarray) -> np.ndarray:
    """Label map [H,W] (values 0..255) -> RGB uint8 [H,W,3] with :data:`PALETTE`."""
    return PALETTE[_check_label(label)]


def save_image_atomic(img: Image.Image, path: str | Path) -> Path:
    """Save a PIL image as PNG through a temporary file in the same folder and ``os.replace``
    (:func:`pgseg_core.utils.io.atomic_write`).

    Returns:
        The final path. A failed write leaves no partial file behind.
    """
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def label_to_palette_image(label: np.ndarray) -> Image.Image:
    """Label map [H,W] (values 0..255) -> P-mode PIL image carrying :data:`PALETTE`."""
    img = Image.fromarray(_check_label(label))  # mode L, the label values as pixels
    img.putpalette(PALETTE.reshape(-1).tolist())  # L -> P, pixel values unchanged
    return img


def label_to_palette_png(label: np.ndarray, path: str | Path) -> Path:
    """Write a label map as an 8-bit palette (mode P) PNG, atomically.

    The pixel values are the label values themselves (0 background, 1 + c class c, 255 ignore), so the
    file reads back as the label map; the palette only colours it for viewers.

    Args:
        label: integer label map [H,W], values 0..255.
        path: output file.

    Returns:
        The written path.

    Raises:
        ValueError: not a 2-D map, or values outside 0..255.
    """
    return save_image_atomic(label_to_palette_image(label), path)
