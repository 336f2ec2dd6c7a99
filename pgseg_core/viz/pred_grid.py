"""A grid of evaluated images: input, ground truth and prediction side by side, with the class legend.

Drawn with PIL (no matplotlib: cheap and byte-for-byte reproducible). Each row is one image: the input,
its ground-truth label map and the predicted one in the fixed label palette (:mod:`pgseg_core.viz.palette`;
background black, ignore white), and below them a legend of every class in either map.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .overlay import load_font
from .palette import IGNORE_INDEX, color_of, colorize, save_image_atomic

__all__ = ["GridRow", "render_prediction_grid", "write_prediction_grid"]

_HEADERS = ("input", "ground truth", "prediction")


class GridRow:
    """One row: ``title`` (e.g. ``split/key``), ``image`` uint8 [H,W,3], ``label`` and ``pred`` [H,W]
    (label values index ``names``; 255 ignore)."""

    def __init__(self, title: str, image: np.ndarray, label: np.ndarray, pred: np.ndarray, names: list[str]):
        self.title, self.image, self.label, self.pred, self.names = title, image, label, pred, names


def _fit(arr: np.ndarray, cell: int, nearest: bool) -> Image.Image:
    img = Image.fromarray(arr)
    scale = cell / max(img.size)
    size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
    return img.resize(size, Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR)


def _legend(draw: ImageDraw.ImageDraw, row: GridRow, x0: int, y0: int, width: int, font, size: int) -> int:
    """Draw the legend of the classes in the row's maps from (x0, y0), wrapping at ``width``; its height."""
    values = np.union1d(np.unique(row.label), np.unique(row.pred))
    values = [int(v) for v in values if v != IGNORE_INDEX and 0 <= v < len(row.names)]
    x, y, pad = x0, y0, max(3, size // 3)
    for v in values:
        name = row.names[v]
        w = size + pad + int(draw.textlength(name, font=font)) + 2 * pad
        if x > x0 and x + w > x0 + width:
            x, y = x0, y + size + pad
        draw.rectangle((x, y, x + size - 1, y + size - 1), fill=color_of(v), outline=(80, 80, 80))
        draw.text((x + size + pad, y - 1), name, fill=(0, 0, 0), font=font)
        x += w
    return y + size + pad - y0


def render_prediction_grid(rows: list[GridRow], cell: int = 224) -> Image.Image:
    """The grid image (module docstring): ``len(rows)`` rows of three ``cell``-pixel cells (each map scaled
    to fit, nearest-neighbour for label maps) with a title line and a legend strip per row.

    Raises:
        ValueError: no rows, or a map whose shape differs from its image.
    """
    if not rows:
        raise ValueError("a prediction grid needs at least one image")
    size = max(10, cell // 18)
    font = load_font(size)
    pad = max(4, size // 2)
    width = 3 * cell + 4 * pad
    probe = ImageDraw.Draw(Image.new("RGB", (width, 10)))
    blocks = []
    for row in rows:
        if row.label.shape != row.image.shape[:2] or row.pred.shape != row.label.shape:
            raise ValueError(
                f"{row.title}: label {row.label.shape} / prediction {row.pred.shape} do not match"
            )
        legend_h = _legend(probe, row, pad, 0, width - 2 * pad, font, size)
        blocks.append(size + 2 * pad + cell + pad + legend_h)
    head = size + 2 * pad
    canvas = Image.new("RGB", (width, head + sum(blocks)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, text in enumerate(_HEADERS):
        draw.text((pad + c * (cell + pad), pad), text, fill=(0, 0, 0), font=font)
    y = head
    for row, block in zip(rows, blocks):
        draw.line((0, y, width, y), fill=(200, 200, 200))
        draw.text((pad, y + pad // 2), row.title, fill=(60, 60, 60), font=font)
        top = y + size + pad
        cells = (
            _fit(row.image, cell, False),
            _fit(colorize(row.label), cell, True),
            _fit(colorize(row.pred), cell, True),
        )
        for c, img in enumerate(cells):
            canvas.paste(img, (pad + c * (cell + pad), top))
        _legend(draw, row, pad, top + cell + pad, width - 2 * pad, font, size)
        y += block
    return canvas


def write_prediction_grid(rows: list[GridRow], path: str | Path, cell: int = 224) -> Path:
    """:func:`render_prediction_grid` saved as a PNG atomically.

    Raises:
        ValueError: see :func:`render_prediction_grid`. OutputError / OSError: the file cannot be written.
    """
    return save_image_atomic(render_prediction_grid(rows, cell), path)
