"""Colour overlay of a label map on its image, with a legend strip of the classes present.

Label values: 0 background (left untinted), 1 + c class ``class_names[c]``, 255 ignore (left untinted).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .palette import IGNORE_INDEX, PALETTE, color_of


@lru_cache(maxsize=8)
def load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font at ``size`` pixels (the scalable one when PIL has FreeType, else the bitmap one)."""
    try:
        return ImageFont.load_default(size=size)  # scalable TTF when PIL has FreeType
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont) -> tuple[int, int]:
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    return x1 - x0, y1 - y0


def render_overlay(
    image: np.ndarray, label: np.ndarray, class_names: list[str], alpha: float = 0.5
) -> Image.Image:
    """Blend the class colours over the image and add a legend strip below it.

    Args:
        image: uint8 RGB image [H,W,3].
        label: integer label map [H,W] (0 background, 1 + c class c, 255 ignore).
        class_names: C class names; label value i is ``class_names[i - 1]``.
        alpha: weight of the class colour in [0, 1] (0 = image only).

    Returns:
        RGB PIL image of width W and height H + legend height: the overlay on top, then one entry per
        class present (colour patch + name, in label order), wrapped over as many rows as needed.

    Raises:
        ValueError: image / label shapes that do not match, label values beyond the class list, or
            ``alpha`` outside [0, 1].
    """
    image = np.asarray(image)
    label = np.asarray(label)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be RGB [H,W,3], got shape {image.shape}")
    if label.shape != image.shape[:2]:
        raise ValueError(f"label map {label.shape} does not match image {image.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    valid = label[label != IGNORE_INDEX]
    if valid.size and (valid.min() < 0 or valid.max() > len(class_names)):
        raise ValueError(f"label value {int(valid.max())} has no class name ({len(class_names)} classes)")
    h, w = label.shape

    img = image.astype(np.float32)
    tinted = (label > 0) & (label != IGNORE_INDEX)
    colours = PALETTE[np.clip(label, 0, 255).astype(np.uint8)].astype(np.float32)
    img[tinted] = (1.0 - alpha) * img[tinted] + alpha * colours[tinted]
    overlay = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), mode="RGB")

    present = [int(v) for v in np.unique(label) if 0 < v <= len(class_names) and v != IGNORE_INDEX]
    entries = [(class_names[v - 1], color_of(v)) for v in present] or [("background only", color_of(0))]

    font_size = max(10, min(w // 32, 24))
    font = load_font(font_size)
    measure = ImageDraw.Draw(overlay)
    pad, patch = max(4, font_size // 3), font_size
    line_h = max(patch, max(_text_size(measure, name, font)[1] for name, _ in entries)) + pad
    # lay entries out left to right, wrapping at the image width
    rows: list[list[tuple[str, tuple[int, int, int], int]]] = [[]]
    x = pad
    for name, colour in entries:
        width = patch + pad // 2 + _text_size(measure, name, font)[0] + 2 * pad
        if rows[-1] and x + width > w:
            rows.append([])
            x = pad
        rows[-1].append((name, colour, x))
        x += width
    strip_h = len(rows) * line_h + pad

    canvas = Image.new("RGB", (w, h + strip_h), (255, 255, 255))
    canvas.paste(overlay, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        top = h + pad + r * line_h
        for name, colour, x0 in row:
            draw.rectangle((x0, top, x0 + patch - 1, top + patch - 1), fill=colour, outline=(80, 80, 80))
            draw.text((x0 + patch + pad // 2, top), name, fill=(0, 0, 0), font=font)
    return canvas
