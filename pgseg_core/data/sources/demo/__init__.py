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

Modules: :mod:`.roots` (where the sources live), :mod:`.vocab` (class vocabulary, captions),
:mod:`.sprites` (object cut-outs), :mod:`.photos` (background photos, photo export), :mod:`.sources`
(everything loaded for one build), :mod:`.compose` (one composite), :mod:`.build` (the shards).
"""

from __future__ import annotations

from .build import SPLITS, build_demo_shards
from .compose import compose
from .photos import export_demo_photos
from .roots import LICENCES, DemoRoots
from .sources import load_demo_sources
from .vocab import load_vocab, make_caption

__all__ = [
    "LICENCES",
    "SPLITS",
    "DemoRoots",
    "build_demo_shards",
    "compose",
    "export_demo_photos",
    "load_demo_sources",
    "load_vocab",
    "make_caption",
]
