"""Everything one demo build draws from: the vocabulary's classes with their sprites, and the backgrounds."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from ....errors import DataError
from .compose import SCALE_RANGE
from .photos import load_backgrounds
from .roots import LICENCES, DemoRoots, check_root
from .sprites import DemoClass, Sprite, load_emoji_items, load_png_items
from .vocab import class_phrase, load_vocab

log = logging.getLogger("pgseg.data.sources.demo")

__all__ = ["load_demo_sources"]


def load_demo_sources(
    roots: DemoRoots | None = None, img_size: int = 224, vocab: str | Path | None = None
) -> dict[str, Any]:
    """Load (and pre-scale) every sprite and background the demo builder uses.

    Args:
        roots: source locations (default: the Debian/pip install locations).
        img_size: composite side S; sprites are pre-scaled to 0.6 S, backgrounds to a 3 S short side.
        vocab: vocabulary file (default: the package's ``demo_vocab.json``).

    Returns:
        ``{"caption": [DemoClass], "heldout": [DemoClass], "backgrounds": [Background], "dropped": [names],
        "class_items": {class: {source: n}}, "sources": [{"name", "licence", "role", "items"}],
        "skipped": {...}}``. Classes without any item are dropped (with a warning).

    Raises:
        DataError: a configured source is missing (names the package to install), no backgrounds, or
            fewer than 2 caption classes / 1 held-out class have items.
    """
    roots = roots or DemoRoots()
    spec = load_vocab(vocab)
    cap = max(8, math.ceil(SCALE_RANGE[1] * img_size))
    stats: dict[str, int] = {}
    per_source = _load_sprites(roots, spec, cap, stats)
    parts, dropped, class_items = _classes_with_items(spec, per_source)
    if len(parts["caption"]) < 2 or len(parts["heldout"]) < 1:
        raise DataError(
            f"only {len(parts['caption'])} caption and {len(parts['heldout'])} held-out demo classes have "
            "items (need >= 2 and >= 1): install tuxpaint-stamps-default, openclipart-png and "
            "fonts-noto-color-emoji"
        )
    backgrounds = load_backgrounds(roots, img_size, stats)
    if not backgrounds:
        raise DataError(
            "no background photos for the demo: pip install 'pgseg[demo]' (scikit-image, "
            "scikit-learn, matplotlib) or pass DemoRoots(backgrounds=[...])"
        )
    sources = []
    for src, by_class in per_source.items():
        n = sum(len(v) for v in by_class.values())
        sources.append({"name": src, "licence": LICENCES[src], "role": "objects", "items": n})
    for src in sorted({b.source for b in backgrounds}):
        n = sum(1 for b in backgrounds if b.source == src)
        sources.append({"name": src, "licence": LICENCES[src], "role": "backgrounds", "items": n})
    return {
        "caption": parts["caption"],
        "heldout": parts["heldout"],
        "backgrounds": backgrounds,
        "dropped": dropped,
        "class_items": class_items,
        "sources": sources,
        "skipped": {"unreadable": stats.get("unreadable", 0), "rejected": stats.get("rejected", 0)},
    }


def _load_sprites(
    roots: DemoRoots, spec: dict[str, Any], cap: int, stats: dict[str, int]
) -> dict[str, dict[str, list[Sprite]]]:
    """Sprites per configured object source, then per class name (every class of the vocabulary).

    Raises:
        DataError: a configured source is missing, or no object source is configured.
    """
    all_specs = spec.get("caption", []) + spec.get("heldout", [])
    per_source: dict[str, dict[str, list[Sprite]]] = {}
    tux = check_root(roots.tuxpaint, "tuxpaint")
    if tux is not None:
        per_source["tuxpaint"] = load_png_items(
            tux, "tuxpaint", all_specs, [p.lower() for p in spec["exclude"].get("tuxpaint", [])], cap, stats
        )
    oca = check_root(roots.openclipart, "openclipart")
    if oca is not None:
        per_source["openclipart"] = load_png_items(
            oca,
            "openclipart",
            all_specs,
            [p.lower() for p in spec["exclude"].get("openclipart", [])],
            cap,
            stats,
        )
    font = check_root(roots.emoji_font, "noto-emoji")
    if font is not None:
        per_source["noto-emoji"] = load_emoji_items(font, all_specs, cap, stats)
    if not per_source:
        raise DataError("no demo object source configured: set DemoRoots tuxpaint, openclipart or emoji_font")
    return per_source


def _classes_with_items(
    spec: dict[str, Any], per_source: dict[str, dict[str, list[Sprite]]]
) -> tuple[dict[str, list[DemoClass]], list[str], dict[str, dict[str, int]]]:
    """``({"caption": [...], "heldout": [...]}, dropped class names, {class: {source: n items}})``; a class
    without any item is dropped with a warning."""
    parts: dict[str, list[DemoClass]] = {"caption": [], "heldout": []}
    dropped: list[str] = []
    class_items: dict[str, dict[str, int]] = {}
    for part in ("caption", "heldout"):
        for cspec in spec.get(part, []):
            items = {src: per_source[src].get(cspec["name"], []) for src in per_source}
            items = {src: v for src, v in items.items() if v}
            class_items[cspec["name"]] = {src: len(v) for src, v in items.items()}
            if not items:
                dropped.append(cspec["name"])
                log.warning("demo class '%s' has no items in the configured sources; dropped", cspec["name"])
                continue
            parts[part].append(DemoClass(cspec["name"], class_phrase(cspec), items))
    return parts, dropped, class_items
