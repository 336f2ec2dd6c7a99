"""Object cut-outs ("sprites") of the demo classes: Tux Paint stamps, OpenClipart PNGs, Noto Color Emoji."""

from __future__ import annotations

import fnmatch
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ....errors import DataError
from .roots import INSTALL_HINT

log = logging.getLogger("pgseg.data.sources.demo")

__all__ = ["DemoClass", "Sprite", "load_emoji_items", "load_png_items"]

_MAX_SPRITE_PIXELS = 40_000_000  # a few OpenClipart PNGs are 10k x 16k; not worth decoding


@dataclass
class Sprite:
    """One object cut-out of a demo class."""

    rgba: Image.Image  # RGBA, cropped to the alpha bounding box, longest side <= the pre-scale cap
    source: str
    name: str


@dataclass
class DemoClass:
    """A demo class with its caption phrase and its sprites per source (at least one)."""

    name: str
    phrase: str
    items: dict[str, list[Sprite]]  # source -> sprites


def _glob_regex(patterns: list[str]) -> re.Pattern[str] | None:
    """One compiled regex for a list of case-insensitive fnmatch globs (None if the list is empty)."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p.lower())})" for p in patterns))


def _fg_fraction(alpha: Image.Image) -> float:
    """Fraction of pixels with alpha > 127 (from the histogram, no array copy)."""
    hist = alpha.histogram()
    total = sum(hist)
    return sum(hist[128:]) / total if total else 0.0


def _prepare_sprite(img: Image.Image, cap: int, min_side: int, opaque_max: float) -> Image.Image | None:
    """Crop an image to its alpha bounding box and downscale to ``cap``; None if not a clean cut-out."""
    if img.mode != "RGBA":
        img = img.convert("RGBA")
    alpha = img.getchannel("A")
    frac = _fg_fraction(alpha)
    if frac <= 0.0 or frac > opaque_max:
        return None  # empty, or an opaque rectangle rather than a cut-out
    box = alpha.point(lambda v: 255 if v > 8 else 0).getbbox()
    if box is None:
        return None
    img = img.crop(box)
    if max(img.size) < min_side:
        return None
    fg = np.asarray(img.getchannel("A")) > 127
    if fg.mean() < 0.12:
        return None  # thin line art
    if min(fg[0].mean(), fg[-1].mean(), fg[:, 0].mean(), fg[:, -1].mean()) > 0.6:
        return None  # the cut-out is a rectangle (a picture with an opaque backdrop)
    if max(img.size) > cap:
        s = cap / max(img.size)
        size = (max(1, round(img.width * s)), max(1, round(img.height * s)))
        img = img.resize(size, Image.LANCZOS, reducing_gap=3.0)
    return img


def load_png_items(
    root: Path,
    source: str,
    specs: list[dict[str, Any]],
    exclude: list[str],
    cap: int,
    stats: dict[str, int],
) -> dict[str, list[Sprite]]:
    """Sprites per class name from a folder of PNGs matched by the class globs of ``source``."""
    wanted = [(spec["name"], _glob_regex(spec.get(source, []))) for spec in specs]
    out: dict[str, list[Sprite]] = {name: [] for name, _ in wanted}
    skip = _glob_regex(exclude)
    seen: set[str] = set()
    for path in sorted(root.rglob("*.png")):
        rel = path.relative_to(root).with_suffix("").as_posix().lower()
        if skip is not None and skip.match(rel):
            continue
        hits = [name for name, rx in wanted if rx is not None and rx.match(rel)]
        if not hits:
            continue
        real = str(path.resolve())
        if real in seen:  # OpenClipart ships duplicates as symlinks
            continue
        seen.add(real)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # size checked below
                im = Image.open(path)
            with im:
                if im.width * im.height > _MAX_SPRITE_PIXELS:
                    stats["rejected"] = stats.get("rejected", 0) + 1
                    log.debug("rejected %s item %s: %dx%d is too large", source, path, im.width, im.height)
                    continue
                im.load()
                sprite = _prepare_sprite(
                    im, cap, min_side=48 if source == "tuxpaint" else 64, opaque_max=0.97
                )
        except Exception as e:  # any unreadable item is skipped and counted, never fatal
            stats["unreadable"] = stats.get("unreadable", 0) + 1
            log.warning("skipping %s item %s: %s", source, path, e)
            continue
        if sprite is None:
            stats["rejected"] = stats.get("rejected", 0) + 1
            log.debug("rejected %s item %s (not a clean cut-out)", source, path)
            continue
        if len(hits) > 1:
            log.warning("%s item %s matches several classes %s; using '%s'", source, rel, hits, hits[0])
        out[hits[0]].append(Sprite(sprite, source, rel))
    return out


def _emoji_names() -> dict[str, str]:
    try:
        import emoji
    except ImportError:
        raise DataError("the demo's emoji source needs the emoji package: pip install emoji") from None
    fq = emoji.STATUS["fully_qualified"]
    out: dict[str, str] = {}
    for ch, data in emoji.EMOJI_DATA.items():
        if data.get("status") == fq:
            out[data["en"].strip(":").lower()] = ch
    return out


def load_emoji_items(
    font_path: Path, specs: list[dict[str, Any]], cap: int, stats: dict[str, int]
) -> dict[str, list[Sprite]]:
    """Sprites per class name rendered from the emoji names of each class spec (Noto Color Emoji).

    Raises:
        DataError: the font cannot be loaded, or the ``emoji`` package is missing.
    """
    from PIL import ImageDraw, ImageFont

    names = _emoji_names()
    try:
        font = ImageFont.truetype(str(font_path), 109)  # the CBDT bitmap strike of Noto Color Emoji
    except OSError as e:
        raise DataError(f"cannot load emoji font {font_path}: {e}; {INSTALL_HINT['noto-emoji']}") from e
    out: dict[str, list[Sprite]] = {}
    for spec in specs:
        out[spec["name"]] = []
        for name in spec.get("emoji", []):
            ch = names.get(name.lower())
            if ch is None:
                stats["unknown_names"] = stats.get("unknown_names", 0) + 1
                log.warning("emoji name '%s' (class %s) is unknown to the emoji package", name, spec["name"])
                continue
            canvas = Image.new("RGBA", (136, 128), (0, 0, 0, 0))
            ImageDraw.Draw(canvas).text((0, 0), ch, font=font, embedded_color=True)
            bbox = canvas.getchannel("A").getbbox()
            if bbox is None or bbox[2] >= canvas.width - 1:  # blank, or a sequence that fell apart
                stats["rejected"] = stats.get("rejected", 0) + 1
                log.warning("emoji '%s' does not render as one glyph with %s; skipped", name, font_path)
                continue
            sprite = _prepare_sprite(canvas, cap, min_side=32, opaque_max=1.0)
            if sprite is not None:
                out[spec["name"]].append(Sprite(sprite, "noto-emoji", name))
    return out
