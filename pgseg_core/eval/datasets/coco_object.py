"""COCO-Object label maps: the 80 COCO thing classes plus background, as GroupViT evaluates them.

COCO-Object (GroupViT / PGSeg / TCL / SCLIP protocols, docs/METHOD.md §4.5, docs/DATASETS.md) is built
from the COCO-Stuff-164k "stuffthingmaps" PNGs, whose pixel value is the COCO category id minus one
(things 0..89 with gaps, stuff 91..181, 255 unlabelled). GroupViT's mapping:

- the 80 thing ids, in COCO id order, -> 1..80 (person = 1, ..., toothbrush = 80);
- every stuff id and 255 (unlabelled) -> 0 = background (nothing is ignored).

:func:`convert_coco_object` writes ``<name>_instanceTrainIds.png`` next to each raw PNG. A raw value that is
no COCO-Stuff id at all (a gap such as 11, or 182..254) never occurs in the real maps; a file holding one
is counted as bad and not converted (GroupViT's script would leave such a value unchanged).

:class:`CocoInstanceRasterizer` builds the same canonical 81-class maps from COCO instance annotations
(``instances_val2017.json``) with pycocotools instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ...errors import DataError
from ...utils.io import atomic_write, output_error, remove_stale_temps

log = logging.getLogger("pgseg.eval.datasets.coco_object")

__all__ = [
    "COCO_THING_IDS",
    "COCO_THING_NAMES",
    "COCO_OBJECT_LUT",
    "INSTANCE_SUFFIX",
    "coco_object_label",
    "convert_coco_object",
    "CocoInstanceRasterizer",
]

#: COCO category ids of the 80 thing classes, in COCO id order (= COCO-Object labels 1..80).
COCO_THING_IDS: tuple[int, ...] = (
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    13,
    14,
    15,
    16,
    17,
    18,
    19,
    20,
    21,
    22,
    23,
    24,
    25,
    27,
    28,
    31,
    32,
    33,
    34,
    35,
    36,
    37,
    38,
    39,
    40,
    41,
    42,
    43,
    44,
    46,
    47,
    48,
    49,
    50,
    51,
    52,
    53,
    54,
    55,
    56,
    57,
    58,
    59,
    60,
    61,
    62,
    63,
    64,
    65,
    67,
    70,
    72,
    73,
    74,
    75,
    76,
    77,
    78,
    79,
    80,
    81,
    82,
    84,
    85,
    86,
    87,
    88,
    89,
    90,
)

#: The COCO names of those categories (same order).
COCO_THING_NAMES: tuple[str, ...] = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)

#: COCO-Stuff stuff category ids (92..182); raw PNG values 91..181.
_STUFF_RAW = range(91, 182)
_UNLABELLED = 255
INSTANCE_SUFFIX = "_instanceTrainIds.png"


def _build_lut() -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int16)  # -1: not a COCO-Stuff id
    for label, cat_id in enumerate(COCO_THING_IDS, start=1):
        lut[cat_id - 1] = label
    lut[list(_STUFF_RAW)] = 0
    lut[_UNLABELLED] = 0
    lut.setflags(write=False)
    return lut


#: [256] int16: raw COCO-Stuff-164k value -> COCO-Object label (0 background, 1..80), -1 for values that are
#: no COCO-Stuff id.
COCO_OBJECT_LUT: np.ndarray = _build_lut()


def coco_object_label(raw: np.ndarray) -> np.ndarray:
    """Map a raw COCO-Stuff-164k label map to COCO-Object labels with GroupViT's mapping.

    Args:
        raw: uint8 [H,W] raw stuffthingmap values (COCO id - 1; 255 unlabelled).

    Returns:
        uint8 [H,W]: 0 background (stuff and unlabelled), 1..80 the COCO-80 things in COCO id order.

    Raises:
        ValueError: ``raw`` is not uint8 or holds values that are no COCO-Stuff id (the message lists them).
    """
    if raw.dtype != np.uint8:
        raise ValueError(f"expected a uint8 label map, got {raw.dtype}")
    mapped = COCO_OBJECT_LUT[raw]
    if (mapped < 0).any():
        bad = sorted(int(v) for v in np.unique(raw[mapped < 0]))
        raise ValueError(f"values {bad[:10]} are not COCO-Stuff ids (things 0..89, stuff 91..181, 255)")
    return mapped.astype(np.uint8)


# --------------------------------------------------------------------------------------------------------
# Converter: raw COCO-Stuff-164k PNGs -> <name>_instanceTrainIds.png
# --------------------------------------------------------------------------------------------------------


@dataclass
class _SplitCount:
    converted: int = 0
    existing: int = 0
    bad: int = 0
    bad_files: list[str] = field(default_factory=list)


def _convert_one(src: str) -> tuple[str, str]:
    """Convert one raw PNG; returns (status, message) with status "converted" | "existing" | "bad"."""
    from PIL import Image

    src_path = Path(src)
    dst = src_path.with_name(src_path.name[: -len(".png")] + INSTANCE_SUFFIX)
    if dst.is_file():
        return "existing", ""
    try:
        with Image.open(src_path) as im:
            if im.mode not in ("L", "P"):
                raise ValueError(f"mode {im.mode}: expected a single-channel 8-bit PNG")
            raw = np.asarray(im)
        label = coco_object_label(raw)
    except Exception as e:  # a bad file is skipped and counted, never fatal
        return "bad", f"{src_path}: {e}"
    try:
        atomic_write(dst, lambda tmp: Image.fromarray(label, mode="L").save(tmp, format="PNG"))
    except OSError as e:  # the folder cannot be written (full disk, read-only): fatal, one line
        raise output_error(dst, e) from e
    return "converted", ""


def _raw_pngs(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() == ".png" and "TrainIds" not in p.name and not p.name.startswith(".")
    )


def _resolve_stuff_root(root: Path) -> Path:
    if not root.exists():
        raise DataError(
            f"COCO-Stuff root not found: {root}: pass the coco_stuff164k folder (with "
            "annotations/val2017/*.png from stuffthingmaps_trainval2017.zip)"
        )
    for cand in (root, root / "coco_stuff164k"):
        if (cand / "annotations").is_dir():
            return cand
    raise DataError(
        f"no annotations/ folder in {root} or {root / 'coco_stuff164k'}: pass the coco_stuff164k "
        "folder holding annotations/{train2017,val2017}/*.png (stuffthingmaps_trainval2017.zip)"
    )


def _split_folders(ann: Path, splits: Sequence[str] | None) -> list[str]:
    """The ``<split>2017`` folder names to convert: the requested ones, else every one present."""
    if splits:
        names = [s if s.endswith("2017") else f"{s}2017" for s in splits]
        for name in names:
            if not (ann / name).is_dir():
                raise DataError(
                    f"split folder not found: {ann / name}: unpack stuffthingmaps_trainval2017.zip into {ann}"
                )
        return names
    names = [n for n in ("train2017", "val2017") if (ann / n).is_dir()]
    if not names:
        raise DataError(
            f"no train2017/ or val2017/ folder in {ann}: unpack stuffthingmaps_trainval2017.zip there"
        )
    return names


def convert_coco_object(
    coco_stuff_root: str | Path,
    splits: Sequence[str] | None = None,
    *,
    workers: int = 0,
    progress: Callable[[int, int | None], None] | None = None,
) -> dict[str, Any]:
    """Write COCO-Object label maps next to the raw COCO-Stuff-164k PNGs (GroupViT's converter).

    For every ``annotations/<split>2017/<name>.png`` (files with "TrainIds" in the name are skipped, as in
    GroupViT's script), writes ``<name>_instanceTrainIds.png`` (uint8, see :func:`coco_object_label`).
    Each file is written atomically and existing ones are skipped, so a killed run resumes (its temporary
    files are removed first). Unreadable files or files with non-COCO-Stuff values are skipped and counted.

    Args:
        coco_stuff_root: the ``coco_stuff164k`` folder, or a ``data/`` folder holding it.
        splits: "train" / "val" (or "train2017" / "val2017"); default every split folder present.
        workers: processes for the conversion (0 or 1: in this process).
        progress: ``progress(done, total)`` after each file.

    Returns:
        ``{"root", "splits": {split: {"converted", "existing", "bad", "bad_files"}}, "converted", "existing",
        "bad"}``; ``bad_files`` lists at most 20 "path: reason" lines per split.

    Raises:
        DataError: missing root, no ``annotations/`` folder, a requested split folder missing, or no raw PNGs.
        OutputError: a label map cannot be written (full disk, read-only folder): one line naming it.
    """
    root = _resolve_stuff_root(Path(coco_stuff_root))
    ann = root / "annotations"
    names = _split_folders(ann, splits)
    for n in names:
        remove_stale_temps(ann / n)
    jobs: list[tuple[str, Path]] = [(n, p) for n in names for p in _raw_pngs(ann / n)]
    if not jobs:
        raise DataError(f"no raw COCO-Stuff PNGs in {', '.join(str(ann / n) for n in names)}")
    counts = {n: _SplitCount() for n in names}
    total = len(jobs)

    def _record(split: str, status: str, message: str) -> None:
        c = counts[split]
        setattr(c, status, getattr(c, status) + 1)
        if status == "bad":
            if len(c.bad_files) < 20:
                c.bad_files.append(message)
            if c.bad <= 5:
                log.warning("skipped a bad label map: %s", message)

    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(_convert_one, [str(p) for _, p in jobs], chunksize=64)
            for i, ((split, _), (status, message)) in enumerate(zip(jobs, results), start=1):
                _record(split, status, message)
                if progress:
                    progress(i, total)
    else:
        for i, (split, path) in enumerate(jobs, start=1):
            _record(split, *_convert_one(str(path)))
            if progress:
                progress(i, total)
    per_split = {
        n: {"converted": c.converted, "existing": c.existing, "bad": c.bad, "bad_files": c.bad_files}
        for n, c in counts.items()
    }
    summary = {
        "root": str(root),
        "splits": per_split,
        **{k: sum(s[k] for s in per_split.values()) for k in ("converted", "existing", "bad")},
    }
    log.info("COCO-Object: %(converted)d converted, %(existing)d already there, %(bad)d bad", summary)
    return summary


# --------------------------------------------------------------------------------------------------------
# pycocotools path: instance annotations -> the same canonical 81-class maps
# --------------------------------------------------------------------------------------------------------


class CocoInstanceRasterizer:
    """Rasterise COCO instance annotations into COCO-Object label maps with pycocotools (``annToMask``).

    Overlap rule: instances are painted from the largest ``area`` to the smallest (ties by annotation id),
    so a smaller instance lying on a larger one stays visible. Pixels no instance covers are background (0).
    Crowd regions (``iscrowd=1``) get their category (``crowd="category"``, as COCO-Stuff's thing maps do)
    or 255 = ignore (``crowd="ignore"``); either way they are painted in the same area order.

    Args:
        ann_file: ``instances_<split>2017.json``.
        crowd: "category" or "ignore".

    Raises:
        DataError: unreadable json, or a category whose id is not one of the 80 COCO thing ids or whose
            name differs from COCO's (e.g. an LVIS file).
        DependencyError: pycocotools is not installed.
    """

    def __init__(self, ann_file: str | Path, crowd: Literal["category", "ignore"] = "category"):
        from ...errors import ConfigError, DependencyError

        try:
            from pycocotools.coco import COCO
        except ImportError as e:  # pragma: no cover - pycocotools is a core dependency
            raise DependencyError("pycocotools is not installed: pip install pycocotools") from e
        if crowd not in ("category", "ignore"):
            raise ConfigError(f"crowd must be 'category' or 'ignore', got {crowd!r}")
        self.crowd = crowd
        self.ann_file = Path(ann_file)
        try:
            dataset = json.loads(self.ann_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read COCO annotation file {self.ann_file}: {e}") from e
        if not isinstance(dataset, dict) or "images" not in dataset or "annotations" not in dataset:
            raise DataError(f"{self.ann_file} is not a COCO instances file (no 'images' / 'annotations')")
        dataset.setdefault("categories", [])
        self.coco = COCO()
        self.coco.dataset = dataset
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
            self.coco.createIndex()
        label_of_id = {cid: i for i, cid in enumerate(COCO_THING_IDS, start=1)}
        self.label_of_cat: dict[int, int] = {}
        for cat in dataset["categories"]:
            cid, name = int(cat["id"]), str(cat.get("name", ""))
            if cid not in label_of_id:
                raise DataError(
                    f"unknown category id {cid} ('{name}') in {self.ann_file}: COCO-Object uses "
                    "the 80 COCO thing categories (ids 1..90); is this a COCO instances file?"
                )
            expected = COCO_THING_NAMES[label_of_id[cid] - 1]
            if name and name != expected:
                raise DataError(
                    f"category id {cid} is '{name}' in {self.ann_file} but '{expected}' in COCO: "
                    "use the COCO 2017 instances file"
                )
            self.label_of_cat[cid] = label_of_id[cid]

    def image_ids(self) -> list[int]:
        """Image ids sorted by file name (the order of the PNG-based reader)."""
        imgs = self.coco.imgs
        return sorted(imgs, key=lambda i: str(imgs[i]["file_name"]))

    def image_info(self, image_id: int) -> dict[str, Any]:
        return self.coco.imgs[image_id]

    def label(self, image_id: int) -> np.ndarray:
        """uint8 [H,W] COCO-Object label map of one image (0 background, 1..80, 255 crowd if ignored).

        Raises:
            DataError: an annotation of a category missing from the file's category list.
        """
        info = self.coco.imgs[image_id]
        out = np.zeros((int(info["height"]), int(info["width"])), dtype=np.uint8)
        anns = self.coco.imgToAnns.get(image_id, [])
        for ann in sorted(anns, key=lambda a: (-float(a.get("area", 0.0)), int(a.get("id", 0)))):
            cid = int(ann["category_id"])
            if cid not in self.label_of_cat:
                raise DataError(
                    f"annotation {ann.get('id')} of image {image_id} has category {cid}, which "
                    f"{self.ann_file} does not list"
                )
            mask = self.coco.annToMask(ann).astype(bool)
            value = 255 if (ann.get("iscrowd", 0) and self.crowd == "ignore") else self.label_of_cat[cid]
            out[mask] = value
        return out
