"""The built-in demo dataset: real-photo backgrounds with pasted cut-out objects, captions and label maps.

Each composite is a random square crop of a real photo (scikit-image, scikit-learn, matplotlib samples;
opencv-doc photos and Plasma wallpapers when installed) with 1-3 objects pasted on top. Objects come from
Tux Paint stamps (mostly real photographs with exact alpha), OpenClipart PNGs and Noto Color Emoji glyphs,
and belong to the fixed class vocabulary of ``demo_vocab.json``. Because the objects are pasted, every
image has an exact label map for free. The caption names every pasted object by its class name.

Splits (docs/ARCHITECTURE.md, "Shards"):

* ``train``: caption classes only; captions + the class list.
* ``val-caption``: caption classes at new placements/scales, including backgrounds never used in training.
* ``val-heldout``: held-out classes only (never named in any training caption), for zero-shot mIoU.

Sources are read from their installed locations at run time and never copied into the repository.
Everything is deterministic for a given seed (numpy Generator streams keyed by split and sample index).
"""

from __future__ import annotations

import fnmatch
import importlib.util
import io
import json
import logging
import math
import re
import time
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DataError
from .shards import Progress, SplitWriter, new_index, write_index

log = logging.getLogger("pgseg.data.demo")

TUXPAINT_ROOT = Path("/usr/share/tuxpaint/stamps")
OPENCLIPART_ROOT = Path("/usr/share/openclipart/png")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
OPENCV_DOC_ROOT = Path("/usr/share/doc/opencv-doc/examples/data")
WALLPAPER_ROOT = Path("/usr/share/wallpapers")

SPLITS = ("train", "val-caption", "val-heldout")
_SPLIT_STREAM = {"train": 0, "val-caption": 1, "val-heldout": 2}

LICENCES = {
    "tuxpaint": "GPL-2.0",
    "openclipart": "public domain (CC0 dedication)",
    "noto-emoji": "OFL-1.1 (font) / Apache-2.0 (images)",
    "scikit-image": "CC0 / public domain",
    "scikit-learn": "CC-BY-2.0",
    "matplotlib": "matplotlib licence; grace_hopper.jpg public domain",
    "opencv-doc": "Apache-2.0 / BSD-3-Clause",
    "plasma-wallpapers": "GPL-2.0-or-later",
    "backgrounds": "user-provided",
}
_INSTALL_HINT = {
    "tuxpaint": "apt-get install tuxpaint-stamps-default",
    "openclipart": "apt-get install openclipart-png",
    "noto-emoji": "apt-get install fonts-noto-color-emoji",
}

# Background photos. Photos that show a vocabulary class (chelsea = cat, flower.jpg, fruits, ...) are
# left out so that unlabelled class instances do not sit in the "background".
_SKIMAGE_PHOTOS = (
    "astronaut.png",
    "coffee.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "motorcycle_left.png",
    "camera.png",
    "grass.png",
    "gravel.png",
)
_OPENCV_PHOTOS = (
    "aero1",
    "aero3",
    "baboon",
    "board",
    "building",
    "home",
    "messi5",
    "stuff",
    "graf1",
    "graf3",
    "starry_night",
    "pic1",
    "pic3",
    "pic5",
)
_WALLPAPERS = (
    "BytheWater",
    "ColdRipple",
    "ColorfulCups",
    "EveningGlow",
    "FallenLeaf",
    "Grey",
    "Kite",
    "OneStandsOut",
    "Path",
    "summer_1am",
)

# composition parameters (fractions of the image side)
_SCALE_RANGE = (0.25, 0.60)  # longest side of a pasted object
_CROP_RANGE = (0.35, 1.00)  # background crop side, fraction of the photo's short side
_N_OBJECTS = (1, 2, 3)
_N_OBJECTS_P = (0.3, 0.4, 0.3)
_MIN_VISIBLE = 0.5  # an earlier object must keep at least this fraction of its pixels visible
_PLACE_TRIES = 8
_MAX_SPRITE_PIXELS = 40_000_000  # a few OpenClipart PNGs are 10k x 16k; not worth decoding

_TEMPLATES = {
    1: (
        "a photo of {0}.",
        "{0}.",
        "a picture of {0}.",
        "there is {0} in the picture.",
        "an image with {0}.",
        "{0} in front of a background.",
    ),
    2: (
        "a photo of {0} and {1}.",
        "{0} and {1}.",
        "there is {0} next to {1}.",
        "a picture of {0} with {1}.",
        "{0} beside {1}.",
    ),
    3: (
        "a photo of {0}, {1} and {2}.",
        "{0}, {1} and {2}.",
        "there is {0} next to {1} and {2}.",
        "a picture showing {0}, {1} and {2}.",
    ),
}


@dataclass
class DemoRoots:
    """Where the demo sources live. Tests point these at small fake trees.

    A root set to None disables that source; a root that is set but missing raises :class:`DataError`
    naming the package to install (opencv-doc and the wallpapers are optional and used when present).

    Attributes:
        tuxpaint: Tux Paint stamps folder (``<root>/<category>/.../<name>.png`` + ``<name>.txt``).
        openclipart: OpenClipart PNG folder (``<root>/<category>/.../<name>.png``).
        emoji_font: Noto Color Emoji font file (needs the ``emoji`` package for names).
        package_photos: use the scikit-image / scikit-learn / matplotlib sample photos as backgrounds.
        opencv_doc: opencv-doc ``examples/data`` folder (optional).
        wallpapers: Plasma wallpapers folder (optional).
        backgrounds: extra background images or folders of images.
    """

    tuxpaint: Path | None = TUXPAINT_ROOT
    openclipart: Path | None = OPENCLIPART_ROOT
    emoji_font: Path | None = EMOJI_FONT
    package_photos: bool = True
    opencv_doc: Path | None = OPENCV_DOC_ROOT
    wallpapers: Path | None = WALLPAPER_ROOT
    backgrounds: list[Path] = field(default_factory=list)


@dataclass
class _Sprite:
    rgba: Image.Image  # RGBA, cropped to the alpha bounding box, longest side <= the pre-scale cap
    source: str
    name: str


@dataclass
class _Background:
    image: Image.Image  # RGB, short side <= 3 x img_size
    source: str
    name: str


@dataclass
class _Class:
    name: str
    phrase: str
    items: dict[str, list[_Sprite]]  # source -> sprites


# ----------------------------------------------------------------------------------------------------------
# vocabulary


def load_vocab(path: str | Path | None = None) -> dict[str, Any]:
    """Load the demo class vocabulary (default: the package's ``demo_vocab.json``).

    Returns:
        ``{"caption": [class spec], "heldout": [class spec], "exclude": {...}}``; a class spec has
        ``name``, optional ``phrase`` and per-source match lists ``tuxpaint`` / ``openclipart`` / ``emoji``.

    Raises:
        DataError: unreadable file, duplicate class names, or a class in both lists.
    """
    try:
        if path is None:
            text = resources.files("pgseg_core.data").joinpath("demo_vocab.json").read_text(encoding="utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
        vocab = json.loads(text)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read demo vocabulary {path or 'demo_vocab.json'}: {e}") from e
    names = [c.get("name") for part in ("caption", "heldout") for c in vocab.get(part, [])]
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise DataError(f"demo vocabulary {path or 'demo_vocab.json'}: class names must be unique strings")
    vocab.setdefault("exclude", {})
    return vocab


def _phrase(spec: dict[str, Any]) -> str:
    if spec.get("phrase"):
        return str(spec["phrase"])
    name = spec["name"]
    return ("an " if name[0].lower() in "aeiou" else "a ") + name


def make_caption(rng: np.random.Generator, phrases: list[str]) -> str:
    """A templated caption naming every phrase once, e.g. "there is a cat next to an apple."."""
    order = [phrases[i] for i in rng.permutation(len(phrases))]
    if len(order) > 3:
        order = [", ".join(order[:-2]), order[-2], order[-1]]
    templates = _TEMPLATES[len(order)]
    return templates[int(rng.integers(len(templates)))].format(*order)


# ----------------------------------------------------------------------------------------------------------
# sprites


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


def _load_png_items(
    root: Path,
    source: str,
    specs: list[dict[str, Any]],
    exclude: list[str],
    cap: int,
    stats: dict[str, int],
) -> dict[str, list[_Sprite]]:
    """Sprites per class name from a folder of PNGs matched by the class globs of ``source``."""
    wanted = [(spec["name"], _glob_regex(spec.get(source, []))) for spec in specs]
    out: dict[str, list[_Sprite]] = {name: [] for name, _ in wanted}
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
        out[hits[0]].append(_Sprite(sprite, source, rel))
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


def _load_emoji_items(
    font_path: Path, specs: list[dict[str, Any]], cap: int, stats: dict[str, int]
) -> dict[str, list[_Sprite]]:
    from PIL import ImageDraw, ImageFont

    names = _emoji_names()
    try:
        font = ImageFont.truetype(str(font_path), 109)  # the CBDT bitmap strike of Noto Color Emoji
    except OSError as e:
        raise DataError(f"cannot load emoji font {font_path}: {e}; {_INSTALL_HINT['noto-emoji']}") from e
    out: dict[str, list[_Sprite]] = {}
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
                out[spec["name"]].append(_Sprite(sprite, "noto-emoji", name))
    return out


# ----------------------------------------------------------------------------------------------------------
# backgrounds


def _package_file(package: str, rel: str, pip_name: str) -> Path:
    """A data file shipped inside an installed package (found without importing the package)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise DataError(f"demo backgrounds need {pip_name}: pip install {pip_name} (or 'pgseg[demo]')")
    return Path(spec.origin).parent / rel


def _package_photos() -> list[tuple[str, str, Path]]:
    """(source, name, path) of the photos bundled in scikit-image, scikit-learn and matplotlib."""
    out = [
        ("scikit-image", Path(f).stem, _package_file("skimage", f"data/{f}", "scikit-image"))
        for f in _SKIMAGE_PHOTOS
    ]
    china = _package_file("sklearn", "datasets/images/china.jpg", "scikit-learn")
    out.append(("scikit-learn", "china", china))
    out.append(
        (
            "matplotlib",
            "grace_hopper",
            _package_file("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "matplotlib"),
        )
    )
    return out


def _wallpaper_file(folder: Path) -> Path | None:
    files = sorted(folder.glob("contents/images/*.jpg")) + sorted(folder.glob("contents/images/*.png"))
    sized = []
    for f in files:
        m = re.fullmatch(r"(\d+)x(\d+)", f.stem)
        if m:
            sized.append((int(m.group(1)) * int(m.group(2)), min(int(m.group(1)), int(m.group(2))), f))
    big = sorted(t for t in sized if t[1] >= 600)
    if big:
        return big[0][2]
    return max(sized)[2] if sized else (files[0] if files else None)


def _background_files(roots: DemoRoots) -> list[tuple[str, str, Path]]:
    out: list[tuple[str, str, Path]] = []
    if roots.opencv_doc is not None and Path(roots.opencv_doc).is_dir():
        for stem in _OPENCV_PHOTOS:
            for ext in (".jpg", ".png"):
                f = Path(roots.opencv_doc) / f"{stem}{ext}"
                if f.is_file():
                    out.append(("opencv-doc", stem, f))
                    break
    if roots.wallpapers is not None and Path(roots.wallpapers).is_dir():
        for name in _WALLPAPERS:
            f = _wallpaper_file(Path(roots.wallpapers) / name)
            if f is not None:
                out.append(("plasma-wallpapers", name, f))
    exts = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
    for entry in roots.backgrounds:
        entry = Path(entry)
        if entry.is_dir():
            for f in sorted(entry.rglob("*")):
                if f.suffix.lower() in exts:
                    out.append(("backgrounds", f.relative_to(entry).as_posix(), f))
        elif entry.is_file():
            out.append(("backgrounds", entry.name, entry))
        else:
            raise DataError(f"background image or folder {entry} not found")
    return out


def _load_backgrounds(roots: DemoRoots, img_size: int, stats: dict[str, int]) -> list[_Background]:
    from .transforms import load_image_rgb

    files = _package_photos() if roots.package_photos else []
    raw: list[tuple[str, str, Image.Image]] = []
    for source, name, path in files + _background_files(roots):
        try:
            raw.append((source, name, load_image_rgb(path)))
        except DataError as e:
            stats["unreadable"] = stats.get("unreadable", 0) + 1
            log.warning("skipping background: %s", e)
    cap = 3 * img_size
    out = []
    for source, name, img in raw:
        if min(img.size) < img_size // 2:
            log.debug("background %s/%s is too small (%s)", source, name, img.size)
            continue
        if min(img.size) > cap:
            s = cap / min(img.size)
            img = img.resize((round(img.width * s), round(img.height * s)), Image.BILINEAR)
        out.append(_Background(img, source, name))
    out.sort(key=lambda b: (b.source, b.name))
    return out


# ----------------------------------------------------------------------------------------------------------
# composition


def _random_background(rng: np.random.Generator, bg: _Background, size: int) -> np.ndarray:
    w, h = bg.image.size
    side = max(8, int(round(rng.uniform(*_CROP_RANGE) * min(w, h))))
    x0 = int(rng.integers(0, w - side + 1))
    y0 = int(rng.integers(0, h - side + 1))
    crop = bg.image.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(crop, dtype=np.float32)


def _scaled_sprite(rng: np.random.Generator, sprite: _Sprite, size: int) -> np.ndarray:
    """The sprite resized so its longest side is a random 25-60 % of ``size``; RGBA float [h,w,4]."""
    img = sprite.rgba
    target = rng.uniform(*_SCALE_RANGE) * size
    s = target / max(img.size)
    w, h = max(4, round(img.width * s)), max(4, round(img.height * s))
    img = img.resize((min(w, size), min(h, size)), Image.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(img, dtype=np.float32)


def compose(
    rng: np.random.Generator,
    classes: list[_Class],
    backgrounds: list[_Background],
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


def _encode(arr: np.ndarray, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------
# build


def _check_root(path: Path | None, source: str) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    if not path.exists():
        raise DataError(f"demo source '{source}' not found at {path}: {_INSTALL_HINT[source]}")
    return path


def load_demo_sources(
    roots: DemoRoots | None = None, img_size: int = 224, vocab: str | Path | None = None
) -> dict[str, Any]:
    """Load (and pre-scale) every sprite and background the demo builder uses.

    Args:
        roots: source locations (default: the Debian/pip install locations).
        img_size: composite side S; sprites are pre-scaled to 0.6 S, backgrounds to a 3 S short side.
        vocab: vocabulary file (default: the package's ``demo_vocab.json``).

    Returns:
        ``{"caption": [_Class], "heldout": [_Class], "backgrounds": [_Background], "dropped": [names],
        "class_items": {class: {source: n}}, "sources": [{"name", "licence", "role", "items"}],
        "skipped": {...}}``. Classes without any item are dropped (with a warning).

    Raises:
        DataError: a configured source is missing (names the package to install), no backgrounds, or
            fewer than 2 caption classes / 1 held-out class have items.
    """
    roots = roots or DemoRoots()
    spec = load_vocab(vocab)
    all_specs = spec.get("caption", []) + spec.get("heldout", [])
    cap = max(8, math.ceil(_SCALE_RANGE[1] * img_size))
    stats: dict[str, int] = {}
    per_source: dict[str, dict[str, list[_Sprite]]] = {}
    tux = _check_root(roots.tuxpaint, "tuxpaint")
    if tux is not None:
        per_source["tuxpaint"] = _load_png_items(
            tux, "tuxpaint", all_specs, [p.lower() for p in spec["exclude"].get("tuxpaint", [])], cap, stats
        )
    oca = _check_root(roots.openclipart, "openclipart")
    if oca is not None:
        per_source["openclipart"] = _load_png_items(
            oca,
            "openclipart",
            all_specs,
            [p.lower() for p in spec["exclude"].get("openclipart", [])],
            cap,
            stats,
        )
    font = _check_root(roots.emoji_font, "noto-emoji")
    if font is not None:
        per_source["noto-emoji"] = _load_emoji_items(font, all_specs, cap, stats)
    if not per_source:
        raise DataError("no demo object source configured: set DemoRoots tuxpaint, openclipart or emoji_font")

    parts: dict[str, list[_Class]] = {"caption": [], "heldout": []}
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
            parts[part].append(_Class(cspec["name"], _phrase(cspec), items))
    if len(parts["caption"]) < 2 or len(parts["heldout"]) < 1:
        raise DataError(
            f"only {len(parts['caption'])} caption and {len(parts['heldout'])} held-out demo classes have "
            "items (need >= 2 and >= 1): install tuxpaint-stamps-default, openclipart-png and "
            "fonts-noto-color-emoji"
        )
    backgrounds = _load_backgrounds(roots, img_size, stats)
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


# Real photos exported for `pgseg segment` demos: here photos that *show* vocabulary classes are welcome.
_EXPORT_SKIMAGE = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")
_EXPORT_SKLEARN = ("china.jpg", "flower.jpg")
_EXPORT_OPENCV = (
    "fruits",
    "apple",
    "orange",
    "butterfly",
    "HappyFish",
    "squirrel_cls",
    "baboon",
    "messi5",
    "building",
    "home",
    "aero3",
    "starry_night",
)


def export_demo_photos(out_dir: str | Path, roots: DemoRoots | None = None) -> list[str]:
    """Write the installed real photos (package samples, opencv-doc, wallpapers) as JPEGs for demos.

    The photos are read from their installed packages at run time and written to ``out_dir`` as
    ``<source>-<name>.jpg`` (RGB, quality 95), together with ``photos.json`` listing each file's source
    and licence. Unlike the composite backgrounds, photos that show vocabulary classes (the chelsea cat,
    flower.jpg, opencv's fruits) are included, since they make good ``pgseg segment`` inputs.

    Args:
        out_dir: folder to write (created).
        roots: source locations (only ``package_photos``, ``opencv_doc``, ``wallpapers`` are used).

    Returns:
        Paths of the written JPEG files, sorted.

    Raises:
        DataError: no photo source is installed (pip install 'pgseg[demo]').
    """
    from .shards import write_json_atomic
    from .transforms import load_image_rgb

    roots = roots or DemoRoots()
    files: list[tuple[str, str, Path]] = []
    if roots.package_photos:
        files += [
            ("scikit-image", Path(f).stem, _package_file("skimage", f"data/{f}", "scikit-image"))
            for f in _EXPORT_SKIMAGE
        ]
        files += [
            ("scikit-learn", Path(f).stem, _package_file("sklearn", f"datasets/images/{f}", "scikit-learn"))
            for f in _EXPORT_SKLEARN
        ]
        files.append(
            (
                "matplotlib",
                "grace_hopper",
                _package_file("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "matplotlib"),
            )
        )
    if roots.opencv_doc is not None and Path(roots.opencv_doc).is_dir():
        for stem in _EXPORT_OPENCV:
            candidates = (Path(roots.opencv_doc) / f"{stem}{ext}" for ext in (".jpg", ".png"))
            hit = next((f for f in candidates if f.is_file()), None)
            if hit is not None:
                files.append(("opencv-doc", stem, hit))
    if roots.wallpapers is not None and Path(roots.wallpapers).is_dir():
        for name in _WALLPAPERS:
            f = _wallpaper_file(Path(roots.wallpapers) / name)
            if f is not None:
                files.append(("plasma-wallpapers", name, f))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    listing = []
    for source, name, path in files:
        try:
            img = load_image_rgb(path)
        except DataError as e:
            log.warning("not exporting photo: %s", e)
            continue
        if max(img.size) > 1600:
            img.thumbnail((1600, 1600), Image.BICUBIC)
        dest = out / f"{source}-{name}.jpg"
        img.save(dest, format="JPEG", quality=95)
        written.append(str(dest))
        listing.append(
            {"file": dest.name, "source": source, "licence": LICENCES[source], "original": str(path)}
        )
    if not written:
        raise DataError(
            "no demo photos found to export: pip install 'pgseg[demo]' (scikit-image, "
            "scikit-learn, matplotlib)"
        )
    write_json_atomic(out / "photos.json", {"photos": listing})
    return sorted(written)


def _split_backgrounds(backgrounds: list[_Background]) -> tuple[list[_Background], list[_Background]]:
    """(train backgrounds, val-only backgrounds): every 5th background is reserved for validation."""
    if len(backgrounds) < 5:
        return backgrounds, []
    train = [b for i, b in enumerate(backgrounds) if i % 5 != 4]
    return train, [b for i, b in enumerate(backgrounds) if i % 5 == 4]


def build_demo_shards(
    out_dir: str | Path,
    *,
    seed: int = 0,
    n_train: int = 8000,
    n_val: int = 200,
    img_size: int = 224,
    roots: DemoRoots | None = None,
    shard_size: int = 1000,
    progress: Progress | None = None,
    vocab: str | Path | None = None,
) -> dict[str, Any]:
    """Generate the demo dataset as webdataset shards plus ``index.json``.

    Train samples hold ``jpg`` (RGB composite), ``txt`` (caption) and ``json`` ``{"classes": [...]}``
    (the classes in the image). Val samples hold ``jpg``, ``png`` (uint8 label map: 0 background,
    1 + i = class i of the split's class list), ``txt`` and ``json`` ``{"classes": split class list,
    "split", "present", "caption"}``.

    Args:
        out_dir: output directory (created).
        seed: generator seed; the same seed, sizes and sources give byte-identical shards.
        n_train: number of training composites.
        n_val: composites per validation split (val-caption and val-heldout).
        img_size: composite side S in pixels (square images).
        roots: source locations (default: installed Debian/pip locations).
        shard_size: samples per tar file.
        progress: called as ``progress(done, total)`` after each composite (all splits together).
        vocab: vocabulary file (default: the package's ``demo_vocab.json``).

    Returns:
        Summary ``{"out_dir", "index", "splits": {split: count}, "vocabulary", "class_items", "sources",
        "dropped_classes", "seconds"}``.

    Raises:
        DataError: a missing source (names the package to install) or too few usable classes.
    """
    if img_size < 32:
        raise DataError(f"demo img_size must be at least 32 pixels, got {img_size}")
    if n_train < 0 or n_val < 0:
        raise DataError(f"demo sizes must be >= 0, got n_train={n_train}, n_val={n_val}")
    t0 = time.perf_counter()
    src = load_demo_sources(roots, img_size, vocab)
    train_bgs, val_only_bgs = _split_backgrounds(src["backgrounds"])
    log.info(
        "demo sources loaded in %.1fs: %d caption classes, %d held-out, %d backgrounds",
        time.perf_counter() - t0,
        len(src["caption"]),
        len(src["heldout"]),
        len(src["backgrounds"]),
    )
    plan = [
        ("train", n_train, src["caption"], train_bgs),
        ("val-caption", n_val, src["caption"], src["backgrounds"]),
        ("val-heldout", n_val, src["heldout"], src["backgrounds"]),
    ]
    total = sum(n for _, n, _, _ in plan)
    done = 0
    splits: dict[str, dict[str, Any]] = {}
    out_dir = Path(out_dir)
    for split, n, classes, bgs in plan:
        names = [c.name for c in classes]
        with SplitWriter(out_dir, split, shard_size) as writer:
            for i in range(n):
                rng = np.random.default_rng([seed, _SPLIT_STREAM[split], i])
                image, label, pasted = compose(rng, classes, bgs, img_size)
                present = [names[c] for c in pasted]
                caption = make_caption(rng, [classes[c].phrase for c in pasted])
                sample: dict[str, Any] = {
                    "__key__": f"{split}-{i:08d}",
                    "jpg": _encode(image, "JPEG", quality=92),
                    "txt": caption,
                }
                if split == "train":
                    sample["json"] = {"classes": present}
                else:
                    sample["png"] = _encode(label, "PNG")
                    sample["json"] = {
                        "classes": names,
                        "split": split,
                        "present": present,
                        "caption": caption,
                    }
                writer.write(sample)
                done += 1
                if progress is not None:
                    progress(done, total)
            shards = writer.close()
        entry: dict[str, Any] = {"shards": shards, "count": n}
        if split != "train":
            entry["classes"] = names
        splits[split] = entry
    vocabulary = {"caption": [c.name for c in src["caption"]], "heldout": [c.name for c in src["heldout"]]}
    index = new_index(
        splits,
        seed=seed,
        vocabulary=vocabulary,
        sources=src["sources"],
        skipped=src["skipped"],
        generator="demo",
        img_size=img_size,
        class_items=src["class_items"],
        dropped_classes=src["dropped"],
        val_only_backgrounds=[f"{b.source}/{b.name}" for b in val_only_bgs],
    )
    index_path = write_index(out_dir, index)
    return {
        "out_dir": str(out_dir),
        "index": str(index_path),
        "splits": {k: v["count"] for k, v in splits.items()},
        "vocabulary": vocabulary,
        "class_items": src["class_items"],
        "sources": src["sources"],
        "dropped_classes": src["dropped"],
        "seconds": time.perf_counter() - t0,
    }
