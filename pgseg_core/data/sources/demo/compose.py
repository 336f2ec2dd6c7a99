"""One demo composite: a random crop of a background photo with 1-3 cut-out objects pasted on top."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from .photos import Background
from .sprites import DemoClass, Sprite

__all__ = ["SCALE_RANGE", "compose", "encode_image"]

# composition parameters (fractions of the image side)
SCALE_RANGE = (0.25, 0.60)  # longest side of a pasted object
_CROP_RANGE = (0.35, 1.00)  # background crop side, fraction of the photo's short side
_N_OBJECTS = (1, 2, 3)
_N_OBJECTS_P = (0.3, 0.4, 0.3)
_MIN_VISIBLE = 0.5  # an earlier object must keep at least this fraction of its pixels visible
_PLACE_TRIES = 8


def _random_background(rng: np.random.Generator, bg: Background, size: int) -> np.ndarray:
    w, h = bg.image.size
    side = max(8, int(round(rng.uniform(*_CROP_RANGE) * min(w, h))))
    x0 = int(rng.integers(0, w - side + 1))
    y0 = int(rng.integers(0, h - side + 1))
    crop = bg.image.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(crop, dtype=np.float32)


def _scaled_sprite(rng: np.random.Generator, sprite: Sprite, size: int) -> np.ndarray:
    """The sprite resized so its longest side is a random 25-60 % of ``size``; RGBA float [h,w,4]."""
    img = sprite.rgba
    target = rng.uniform(*SCALE_RANGE) * size
    s = target / max(img.size)
    w, h = max(4, round(img.width * s)), max(4, round(img.height * s))
    img = img.resize((min(w, size), min(h, size)), Image.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(img, dtype=np.float32)


def compose(
    rng: np.random.Generator,
    classes: list[DemoClass],
    backgrounds: list[Background],
    size: int,
    _attempt: int = 0,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Make one composite.

    Args:
        rng: the sample's random stream.
        classes: the split's classes (label i + 1 = ``classes[i]``), each with at least one item.
        backgrounds: candidate backgrounds.
        size: output side S in pixels.

    Returns:
        ``(image uint8 [S,S,3], label uint8 [S,S], pasted class indices in paste order)``; label 0 is
        background, later objects occlude earlier ones, a pixel is an object where its alpha > 127.
    """
    canvas = _random_background(rng, backgrounds[int(rng.integers(len(backgrounds)))], size)
    k = int(rng.choice(_N_OBJECTS, p=_N_OBJECTS_P))
    picked = rng.choice(len(classes), size=min(k, len(classes)), replace=False)
    inst = np.zeros((size, size), dtype=np.uint8)  # 0 = background, j + 1 = j-th pasted object
    areas: list[int] = []
    pasted: list[int] = []
    for ci in picked:
        cls = classes[int(ci)]
        sources = sorted(cls.items)
        pool = cls.items[sources[int(rng.integers(len(sources)))]]
        arr = _scaled_sprite(rng, pool[int(rng.integers(len(pool)))], size)
        h, w = arr.shape[:2]
        mask = arr[..., 3] > 127
        placed = None
        for _ in range(_PLACE_TRIES):
            y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
            under = inst[y : y + h, x : x + w][mask]
            counts = np.bincount(under, minlength=len(areas) + 1)
            visible = [int((inst == j + 1).sum()) - int(counts[j + 1]) for j in range(len(areas))]
            if all(v >= _MIN_VISIBLE * a for v, a in zip(visible, areas)):
                placed = (y, x)
                break
        if placed is None or not mask.any():
            continue
        y, x = placed
        alpha = arr[..., 3:4] / 255.0
        region = canvas[y : y + h, x : x + w]
        region *= 1.0 - alpha
        region += arr[..., :3] * alpha
        inst[y : y + h, x : x + w][mask] = len(areas) + 1
        areas.append(int(mask.sum()))
        pasted.append(int(ci))
    if not pasted:  # only if every drawn sprite was degenerate; draw again from the same stream
        if _attempt >= 10:
            raise RuntimeError("could not paste any object into a demo composite")
        return compose(rng, classes, backgrounds, size, _attempt + 1)
    lut = np.zeros(256, dtype=np.uint8)
    for j, ci in enumerate(pasted):
        lut[j + 1] = ci + 1
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return image, lut[inst], pasted


def encode_image(arr: np.ndarray, fmt: str, **kw: Any) -> bytes:
    """``arr`` (uint8 [H,W,3] or [H,W]) encoded by PIL as ``fmt`` ("JPEG", "PNG"; ``kw`` e.g. quality)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()
