"""Where the demo's object and background sources live (:class:`DemoRoots`), their licences and
install hints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ....errors import DataError

__all__ = ["INSTALL_HINT", "LICENCES", "DemoRoots", "check_root"]

TUXPAINT_ROOT = Path("/usr/share/tuxpaint/stamps")
OPENCLIPART_ROOT = Path("/usr/share/openclipart/png")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
OPENCV_DOC_ROOT = Path("/usr/share/doc/opencv-doc/examples/data")
WALLPAPER_ROOT = Path("/usr/share/wallpapers")

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
INSTALL_HINT = {
    "tuxpaint": "apt-get install tuxpaint-stamps-default",
    "openclipart": "apt-get install openclipart-png",
    "noto-emoji": "apt-get install fonts-noto-color-emoji",
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


def check_root(path: Path | None, source: str) -> Path | None:
    """``path`` as a Path (None stays None).

    Raises:
        DataError: the path is set but missing (names the package to install for ``source``).
    """
    if path is None:
        return None
    path = Path(path)
    if not path.exists():
        raise DataError(f"demo source '{source}' not found at {path}: {INSTALL_HINT[source]}")
    return path
