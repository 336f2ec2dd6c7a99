"""Background photos of the demo composites (package samples, opencv-doc, Plasma wallpapers, user images), and
the export of the installed real photos for ``pgseg segment`` demos."""

from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ....errors import DataError
from .roots import LICENCES, DemoRoots

log = logging.getLogger("pgseg.data.sources.demo")

__all__ = ["Background", "export_demo_photos", "load_backgrounds", "split_backgrounds"]

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


@dataclass
class Background:
    """One background photo, pre-scaled, with its source and name."""

    image: Image.Image  # RGB, short side <= 3 x img_size
    source: str
    name: str


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


def load_backgrounds(roots: DemoRoots, img_size: int, stats: dict[str, int]) -> list[Background]:
    """The readable background photos of ``roots`` (short side >= S/2, scaled down to <= 3 S), sorted by
    (source, name); unreadable files are counted in ``stats["unreadable"]``."""
    from ...transforms import load_image_rgb

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
        out.append(Background(img, source, name))
    out.sort(key=lambda b: (b.source, b.name))
    return out


def split_backgrounds(backgrounds: list[Background]) -> tuple[list[Background], list[Background]]:
    """(train backgrounds, val-only backgrounds): every 5th background is reserved for validation."""
    if len(backgrounds) < 5:
        return backgrounds, []
    train = [b for i, b in enumerate(backgrounds) if i % 5 != 4]
    return train, [b for i, b in enumerate(backgrounds) if i % 5 == 4]


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

    Each file is written under a temporary name and renamed (a killed export leaves whole files only;
    temporary files of killed exports are removed on the next one).

    Raises:
        DataError: no photo source is installed (pip install 'pgseg[demo]').
        OutputError: ``out_dir`` is a file or cannot be created.
    """
    from ....utils.io import atomic_write, ensure_dir, remove_stale_temps
    from ...shards import write_json_atomic
    from ...transforms import load_image_rgb

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
    out = ensure_dir(out_dir)
    remove_stale_temps(out)
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
        atomic_write(dest, lambda tmp, img=img: img.save(tmp, format="JPEG", quality=95))
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
