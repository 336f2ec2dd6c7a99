"""Readers of the standard segmentation benchmarks in their mmseg layouts, yielding canonical labels.

``open_dataset(name, root, split)`` returns a :class:`SegDataset`: ``len(ds)``, lazy iteration (PIL, in
split-file order, or sorted file order where the split is a folder) over :class:`~pgseg_core.data.loader.
ValSample` objects, ``ds.info`` (:class:`DatasetInfo`) and ``ds.class_spec(protocol)`` (the packaged
class-name file of the dataset for the ``groupvit`` or ``sclip`` protocol, peers_and_eval.md §2.1).

Canonical labels (uint8 [H,W], the evaluator's convention): a dataset WITH background (voc21, pc60,
coco-object) has 0 = background and 1 + i = class i of its C-class list; a dataset WITHOUT background (voc20,
pc59, coco-stuff-171, ade20k-150, cityscapes) has 0..C-1 = class i. 255 is ignore everywhere. Datasets
with mmseg's ``reduce_zero_label`` (voc20, pc59, ade20k-150) map raw 0 -> 255 and raw v -> v - 1.

Layouts (peers_and_eval.md §5); ``root`` may be the dataset's own folder or a ``data/`` folder above it:

========================  ==========================================================================
voc21 / voc20             VOCdevkit/VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png (palette),
                          ImageSets/Segmentation/<split>.txt}
pc60 / pc59               VOCdevkit/VOC2010/{JPEGImages, SegmentationClassContext/*.png,
                          ImageSets/SegmentationContext/<split>.txt}
coco-object               coco_stuff164k/{images/<split>2017/*.jpg,
                          annotations/<split>2017/*_instanceTrainIds.png} (see convert_coco_object)
coco-stuff-171            coco_stuff164k/... annotations/<split>2017/*_labelTrainIds.png
ade20k-150                ade/ADEChallengeData2016/{images,annotations}/{training,validation}
cityscapes                cityscapes/{leftImg8bit/<split>/<city>/*_leftImg8bit.png,
                          gtFine/<split>/<city>/*_gtFine_labelTrainIds.png}
coco-object-instances     coco/{annotations/instances_<split>2017.json, <split>2017/*.jpg}: pycocotools
demo                      a pgseg shard directory (index.json); split "val-caption" or "val-heldout"
========================  ==========================================================================

Images are read as stored (no EXIF rotation: the label maps were drawn on the stored pixels).
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from ..inference.classes import ClassSpec, read_class_file
from .loader import ValSample

log = logging.getLogger("pgseg.data.benchmarks")

__all__ = [
    "DatasetInfo",
    "SegDataset",
    "FileSegDataset",
    "CocoInstancesDataset",
    "DemoDataset",
    "open_dataset",
    "dataset_names",
    "PROTOCOLS",
    "class_file",
    "load_class_spec",
    "read_label_png",
]

PROTOCOLS = ("groupvit", "sclip")
IGNORE = 255


@dataclass(frozen=True)
class DatasetInfo:
    """What a benchmark is.

    Attributes:
        name: dataset name as given to :func:`open_dataset` (e.g. "voc21").
        title: human-readable name.
        has_background: labels hold a background class 0 (classes start at 1).
        num_classes: C, the classes of the class list (background is not counted).
        split: the split read ("val", "val-caption", ...).
        root: the dataset folder actually used.
        reduce_zero_label: raw 0 became 255 and raw v became v - 1 (mmseg's rule).
        class_key: the name of its class files (``classes/<class_key>.<protocol>.txt``), "" for demo.
    """

    name: str
    title: str
    has_background: bool
    num_classes: int
    split: str
    root: str
    reduce_zero_label: bool = False
    class_key: str = ""

    @property
    def num_labels(self) -> int:
        """Distinct canonical label values other than 255: C (+1 with background)."""
        return self.num_classes + int(self.has_background)


# --------------------------------------------------------------------------------------------------------
# Class-name files
# --------------------------------------------------------------------------------------------------------


def _suggest(word: str, options: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'? " if close else ""


def class_file(dataset: str, protocol: str = "groupvit") -> Path:
    """Path of the packaged class-name file ``pgseg_core/data/classes/<dataset>.<protocol>.txt``.

    Raises:
        ConfigError: unknown protocol (with the closest name). DataError: unknown dataset.
    """
    if dataset == "demo":
        raise DataError(
            "demo shards have no packaged class files: their classes come from index.json "
            "(open_dataset('demo', shard_dir).class_spec())"
        )
    layout = _layout(dataset)
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"unknown class protocol '{protocol}': {_suggest(protocol, PROTOCOLS)}"
            f"use one of {', '.join(PROTOCOLS)}, or a class file path"
        )
    ref = resources.files("pgseg_core.data") / "classes" / f"{layout.class_key}.{protocol}.txt"
    return Path(str(ref))


def load_class_spec(dataset: str, protocol: str = "groupvit") -> ClassSpec:
    """The packaged :class:`ClassSpec` of a dataset for a protocol (no dataset files needed).

    Raises:
        ConfigError: unknown protocol. DataError: unknown dataset, or a damaged package (file missing).
    """
    return read_class_file(class_file(dataset, protocol))


def _checked_spec(spec: ClassSpec, info: DatasetInfo, source: str) -> ClassSpec:
    if len(spec) != info.num_classes:
        bg = " (background is implicit: do not list it as a class)" if info.has_background else ""
        raise DataError(
            f"class file {source} has {len(spec)} classes but {info.name} has {info.num_classes}"
            f"{bg}: give one class per label, in label order"
        )
    return spec


# --------------------------------------------------------------------------------------------------------
# Base dataset
# --------------------------------------------------------------------------------------------------------


class SegDataset(ABC):
    """A benchmark split: ``len(ds)``, lazy iteration over :class:`ValSample`, class specs per protocol.

    Undecodable images / label maps are skipped with a warning and counted in ``ds.skipped``; structural
    problems (size mismatch, label values out of range) raise :class:`DataError`.
    """

    info: DatasetInfo

    def __init__(self, info: DatasetInfo):
        self.info = info
        self.skipped = 0
        self._names: list[str] | None = None

    @abstractmethod
    def __len__(self) -> int:
        """Number of samples of the split."""

    @abstractmethod
    def __iter__(self) -> Iterator[ValSample]:
        """Samples in a fixed order (split-file order, or sorted file names)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.info.name!r}, split={self.info.split!r}, n={len(self)})"

    def _packaged_spec(self, protocol: str) -> ClassSpec:
        return load_class_spec(self.info.class_key, protocol)

    def class_spec(self, protocol: str | Path = "groupvit") -> ClassSpec:
        """Class vocabulary in label order: a protocol name ("groupvit", "sclip") or a class file path.

        Returns:
            :class:`ClassSpec` with C = ``info.num_classes`` classes (and the protocol's background words).

        Raises:
            ConfigError: unknown protocol name (with the closest). DataError: a class file whose class count
                differs from the dataset's, or a missing class file.
        """
        text = str(protocol)
        if text in PROTOCOLS:
            return _checked_spec(self._packaged_spec(text), self.info, f"{self.info.class_key}.{text}.txt")
        path = Path(text)
        if path.suffix or path.exists() or "/" in text:
            return _checked_spec(read_class_file(path), self.info, str(path))
        raise ConfigError(
            f"unknown class protocol '{text}': {_suggest(text, PROTOCOLS)}use one of "
            f"{', '.join(PROTOCOLS)}, or a class file path"
        )

    @property
    def classes(self) -> list[str]:
        """The C display names of the ``groupvit`` class file (label order), as put in each ValSample."""
        if self._names is None:
            self._names = self.class_spec("groupvit").names
        return self._names

    def _skip(self, what: str, err: BaseException) -> None:
        self.skipped += 1
        if self.skipped <= 5 or self.skipped % 100 == 0:
            log.warning(
                "skipped an unreadable sample of %s (%d so far): %s: %s",
                self.info.name,
                self.skipped,
                what,
                err,
            )


# --------------------------------------------------------------------------------------------------------
# mmseg file layouts
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    name: str
    title: str
    has_background: bool
    num_classes: int
    class_key: str
    roots: tuple[str, ...]  # candidate dataset folders relative to the given root
    img_dir: str  # relative to the dataset folder; "{split}" is replaced
    ann_dir: str
    img_suffix: str
    seg_suffix: str
    split_file: str | None  # relative to the dataset folder, or None when the split is a folder
    reduce_zero_label: bool = False
    recursive: bool = False
    split_alias: dict[str, str] = field(default_factory=dict)
    obtain: str = ""

    def split_name(self, split: str) -> str:
        return self.split_alias.get(split, split)


_VOC_OBTAIN = "VOCtrainval_11-May-2012.tar unpacked as VOCdevkit/VOC2012"
_PC_OBTAIN = (
    "VOCtrainval_03-May-2010.tar plus the Context labels converted with mmseg's "
    "tools/dataset_converters/pascal_context.py"
)
_COCO_OBTAIN = "COCO 2017 images in images/ and stuffthingmaps_trainval2017.zip in annotations/"
_COCO_ALIAS = {"val": "val2017", "train": "train2017"}

_LAYOUTS: dict[str, _Layout] = {}


def _register(*layouts: _Layout) -> None:
    for layout in layouts:
        _LAYOUTS[layout.name] = layout


_register(
    _Layout(
        "voc21",
        "PASCAL VOC 2012 (21 classes with background)",
        True,
        20,
        "voc21",
        ("", "VOC2012", "VOCdevkit/VOC2012"),
        "JPEGImages",
        "SegmentationClass",
        ".jpg",
        ".png",
        "ImageSets/Segmentation/{split}.txt",
        obtain=_VOC_OBTAIN,
    ),
    _Layout(
        "voc20",
        "PASCAL VOC 2012 (20 classes, background ignored)",
        False,
        20,
        "voc20",
        ("", "VOC2012", "VOCdevkit/VOC2012"),
        "JPEGImages",
        "SegmentationClass",
        ".jpg",
        ".png",
        "ImageSets/Segmentation/{split}.txt",
        reduce_zero_label=True,
        obtain=_VOC_OBTAIN,
    ),
    _Layout(
        "pc60",
        "PASCAL Context (60 classes with background)",
        True,
        59,
        "pc60",
        ("", "VOC2010", "VOCdevkit/VOC2010"),
        "JPEGImages",
        "SegmentationClassContext",
        ".jpg",
        ".png",
        "ImageSets/SegmentationContext/{split}.txt",
        obtain=_PC_OBTAIN,
    ),
    _Layout(
        "pc59",
        "PASCAL Context (59 classes, background ignored)",
        False,
        59,
        "pc59",
        ("", "VOC2010", "VOCdevkit/VOC2010"),
        "JPEGImages",
        "SegmentationClassContext",
        ".jpg",
        ".png",
        "ImageSets/SegmentationContext/{split}.txt",
        reduce_zero_label=True,
        obtain=_PC_OBTAIN,
    ),
    _Layout(
        "coco-object",
        "COCO-Object (80 things with background)",
        True,
        80,
        "coco-object",
        ("", "coco_stuff164k"),
        "images/{split}",
        "annotations/{split}",
        ".jpg",
        "_instanceTrainIds.png",
        None,
        split_alias=_COCO_ALIAS,
        obtain=_COCO_OBTAIN + ", then `pgseg prep-shards --source coco-object --coco-root DIR`",
    ),
    _Layout(
        "coco-stuff-171",
        "COCO-Stuff-164k (171 classes)",
        False,
        171,
        "coco-stuff-171",
        ("", "coco_stuff164k"),
        "images/{split}",
        "annotations/{split}",
        ".jpg",
        "_labelTrainIds.png",
        None,
        split_alias=_COCO_ALIAS,
        obtain=_COCO_OBTAIN + ", then mmseg's tools/dataset_converters/coco_stuff164k.py",
    ),
    _Layout(
        "ade20k-150",
        "ADE20K (150 classes)",
        False,
        150,
        "ade20k-150",
        ("", "ADEChallengeData2016", "ade/ADEChallengeData2016"),
        "images/{split}",
        "annotations/{split}",
        ".jpg",
        ".png",
        None,
        reduce_zero_label=True,
        split_alias={"val": "validation", "train": "training"},
        obtain="ADEChallengeData2016.zip",
    ),
    _Layout(
        "cityscapes",
        "Cityscapes (19 classes)",
        False,
        19,
        "cityscapes",
        ("", "cityscapes"),
        "leftImg8bit/{split}",
        "gtFine/{split}",
        "_leftImg8bit.png",
        "_gtFine_labelTrainIds.png",
        None,
        recursive=True,
        obtain="leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip, then cityscapesscripts' "
        "createTrainIdLabelImgs",
    ),
)

_EXTRA = ("coco-object-instances", "demo")


def dataset_names() -> list[str]:
    """Every name :func:`open_dataset` accepts: the 8 benchmarks, then "coco-object-instances" and "demo"."""
    return [*_LAYOUTS, *_EXTRA]


def _layout(name: str) -> _Layout:
    key = "coco-object" if name == "coco-object-instances" else name
    if key not in _LAYOUTS:
        raise DataError(
            f"unknown dataset '{name}': {_suggest(name, dataset_names())}known: {', '.join(dataset_names())}"
        )
    return _LAYOUTS[key]


def _find_root(layout: _Layout, root: Path) -> Path:
    if not root.exists():
        raise DataError(
            f"{layout.name}: dataset root not found: {root}: pass the dataset folder or the "
            "data/ folder holding the mmseg tree"
        )
    img_top = layout.img_dir.split("/")[0]
    ann_top = layout.ann_dir.split("/")[0]
    tried = []
    for rel in layout.roots:
        cand = root / rel if rel else root
        tried.append(str(cand))
        if (cand / img_top).is_dir() and (cand / ann_top).is_dir():
            return cand
    raise DataError(
        f"{layout.name}: no {img_top}/ and {ann_top}/ folders in {' or '.join(tried)}: pass the "
        f"folder of {layout.roots[-1] or layout.name} (from {layout.obtain})"
    )


def _label_lut(layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    """[256] uint8 raw -> canonical map, and [256] bool "raw value allowed"."""
    n_labels = layout.num_classes + int(layout.has_background)
    raw = np.arange(256)
    if layout.reduce_zero_label:
        lut = np.where(raw == 0, IGNORE, raw - 1)
        valid = raw <= n_labels
    else:
        lut = raw.copy()
        valid = raw < n_labels
    lut[IGNORE] = IGNORE
    valid[IGNORE] = True
    return lut.astype(np.uint8), valid


def read_label_png(path: Path) -> np.ndarray:
    """A single-channel label PNG as values (palette PNGs as indices, never colours): int [H,W].

    Raises:
        DataError: the file is a colour (RGB/RGBA) image. OSError / SyntaxError: undecodable file.
    """
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr"):
            raise DataError(
                f"label map {path} is a {im.mode} colour image: expected a single-channel index "
                "PNG (palette or grayscale), e.g. VOC's SegmentationClass or *_labelTrainIds.png"
            )
        return np.asarray(im)  # "P": palette indices; "L": values; "I;16"/"I": wider ints


class FileSegDataset(SegDataset):
    """A benchmark split stored as image files + label PNGs in an mmseg layout (see the module docstring).

    Raises (at construction):
        DataError: root missing, split file / folder missing, empty split, listed images missing, or images
            without a label file (the message names one and counts all).
    """

    def __init__(self, layout: _Layout, root: str | Path, split: str = "val"):
        base = _find_root(layout, Path(root))
        split_name = layout.split_name(split)
        img_dir = base / layout.img_dir.format(split=split_name)
        ann_dir = base / layout.ann_dir.format(split=split_name)
        if layout.split_file is not None:
            keys = self._read_split_file(layout, base / layout.split_file.format(split=split_name))
        else:
            keys = self._scan_split_folder(layout, img_dir, split)
        items = [(k, img_dir / f"{k}{layout.img_suffix}", ann_dir / f"{k}{layout.seg_suffix}") for k in keys]
        missing_img = [i for _, i, _ in items if not i.is_file()]
        if missing_img:
            raise DataError(
                f"{layout.name}: {len(missing_img)} image(s) of the {split} split not found, "
                f"e.g. {missing_img[0]}: complete {img_dir} ({layout.obtain})"
            )
        missing = [(i, a) for _, i, a in items if not a.is_file()]
        if missing:
            raise DataError(
                f"{layout.name}: {len(missing)} image(s) without a label file, e.g. "
                f"{missing[0][0]} (expected {missing[0][1]}): add the label maps "
                f"({layout.obtain})"
            )
        super().__init__(
            DatasetInfo(
                layout.name,
                layout.title,
                layout.has_background,
                layout.num_classes,
                split,
                str(base),
                layout.reduce_zero_label,
                layout.class_key,
            )
        )
        self.layout = layout
        self.items = items
        self._lut, self._valid = _label_lut(layout)

    @staticmethod
    def _read_split_file(layout: _Layout, path: Path) -> list[str]:
        if not path.is_file():
            raise DataError(
                f"{layout.name}: split file not found: {path}: use a split that exists there "
                f"(e.g. split='val') or restore it from {layout.obtain}"
            )
        keys = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not keys:
            raise DataError(f"{layout.name}: split file {path} lists no images")
        return keys

    @staticmethod
    def _scan_split_folder(layout: _Layout, img_dir: Path, split: str) -> list[str]:
        if not img_dir.is_dir():
            raise DataError(
                f"{layout.name}: split folder not found: {img_dir}: use a split that exists "
                f"there (split='{split}') or add it from {layout.obtain}"
            )
        pattern = f"*{layout.img_suffix}"
        files = img_dir.rglob(pattern) if layout.recursive else img_dir.glob(pattern)
        keys = sorted(str(p.relative_to(img_dir))[: -len(layout.img_suffix)] for p in files if p.is_file())
        if not keys:
            raise DataError(f"{layout.name}: no {pattern} images in {img_dir}")
        return keys

    def __len__(self) -> int:
        return len(self.items)

    @property
    def keys(self) -> list[str]:
        """Sample keys in iteration order (split-file order, or sorted relative paths)."""
        return [k for k, _, _ in self.items]

    def canonical(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Raw label values -> canonical uint8 [H,W] (0/1+i or 0..C-1, 255 ignore).

        Raises:
            DataError: values outside the dataset's raw range other than 255 (names the file and values).
        """
        if raw.ndim != 2:
            raise DataError(f"label map {path} has shape {raw.shape}: expected a single-channel [H,W] image")
        if raw.dtype != np.uint8:
            big = raw[(raw < 0) | (raw > 255)]
            if big.size:
                self._range_error(path, np.unique(big))
            raw = raw.astype(np.uint8)
        if not self._valid[raw].all():
            self._range_error(path, np.unique(raw[~self._valid[raw]]))
        return self._lut[raw]

    def _range_error(self, path: Path, values: np.ndarray) -> None:
        n = self.info.num_labels + int(self.info.reduce_zero_label)
        shown = ", ".join(str(int(v)) for v in values[:8])
        raise DataError(
            f"{self.info.name}: label values {shown} out of range in {path}: expected 0..{n - 1} "
            f"and 255 (ignore); is this a {self.layout.title} label map"
            f"{' (' + self.layout.seg_suffix + ')' if self.layout.seg_suffix != '.png' else ''}?"
        )

    def _load(self, key: str, img_path: Path, ann_path: Path) -> ValSample | None:
        from PIL import Image

        try:
            with Image.open(img_path) as im:
                image = np.asarray(im.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as e:
            self._skip(str(img_path), e)
            return None
        try:
            raw = read_label_png(ann_path)
        except (OSError, SyntaxError, ValueError) as e:
            self._skip(str(ann_path), e)
            return None
        if raw.shape[:2] != image.shape[:2]:
            raise DataError(
                f"{self.info.name}: label {ann_path} is {raw.shape[1]}x{raw.shape[0]} but its "
                f"image {img_path} is {image.shape[1]}x{image.shape[0]} (WxH): the label map "
                "must match its image"
            )
        return ValSample(key, image, self.canonical(raw, ann_path), self.classes, self.info.split)

    def __getitem__(self, i: int) -> ValSample:
        """Sample ``i`` (random access).

        Raises:
            DataError: as during iteration, and for an undecodable image or label (named).
        """
        key, img_path, ann_path = self.items[i]
        before = self.skipped
        sample = self._load(key, img_path, ann_path)
        if sample is None:
            self.skipped = before
            raise DataError(f"{self.info.name}: cannot decode sample {key} ({img_path} / {ann_path})")
        return sample

    def __iter__(self) -> Iterator[ValSample]:
        for key, img_path, ann_path in self.items:
            sample = self._load(key, img_path, ann_path)
            if sample is not None:
                yield sample


# --------------------------------------------------------------------------------------------------------
# COCO instances through pycocotools
# --------------------------------------------------------------------------------------------------------


class CocoInstancesDataset(SegDataset):
    """COCO-Object labels rasterised from ``annotations/instances_<split>2017.json`` with pycocotools.

    Same labels and class files as "coco-object"; the overlap and crowd rules are those of
    :class:`~pgseg_core.data.coco_object.CocoInstanceRasterizer` (largest instance first, crowd ->
    its category by default, ``crowd="ignore"`` -> 255). Images are read from ``<root>/<split>2017/`` or
    ``<root>/images/<split>2017/``, in file-name order; ``root`` may also be a folder holding ``coco/`` or
    ``coco_stuff164k/``.

    Raises (at construction):
        DataError: root or annotation file missing, an unknown category, no image folder, listed images
            missing.
    """

    def __init__(self, root: str | Path, split: str = "val", crowd: str = "category"):
        from .coco_object import CocoInstanceRasterizer

        root = Path(root)
        if not root.exists():
            raise DataError(
                f"coco-object-instances: dataset root not found: {root}: pass the COCO 2017 "
                "folder holding annotations/instances_val2017.json and val2017/"
            )
        split_name = _COCO_ALIAS.get(split, split)
        ann_name = f"annotations/instances_{split_name}.json"
        candidates = (root, root / "coco", root / "coco_stuff164k")
        base = next((c for c in candidates if (c / ann_name).is_file()), None)
        if base is None:
            raise DataError(
                f"coco-object-instances: annotation file not found: {root / ann_name}: unpack "
                "annotations_trainval2017.zip into the COCO folder"
            )
        img_dir = next((d for d in (base / split_name, base / "images" / split_name) if d.is_dir()), None)
        if img_dir is None:
            raise DataError(
                f"coco-object-instances: image folder not found: {base / split_name} (or "
                f"{base / 'images' / split_name}): unpack {split_name}.zip there"
            )
        self.rasterizer = CocoInstanceRasterizer(base / ann_name, crowd=crowd)  # type: ignore[arg-type]
        self.ids = self.rasterizer.image_ids()
        if not self.ids:
            raise DataError(f"coco-object-instances: {base / ann_name} lists no images")
        self.img_dir = img_dir
        missing = [img_dir / self.rasterizer.image_info(i)["file_name"] for i in self.ids]
        missing = [p for p in missing if not p.is_file()]
        if missing:
            raise DataError(
                f"coco-object-instances: {len(missing)} annotated image(s) not found, e.g. "
                f"{missing[0]}: complete {img_dir}"
            )
        layout = _LAYOUTS["coco-object"]
        super().__init__(
            DatasetInfo(
                "coco-object-instances",
                "COCO-Object from instance annotations",
                True,
                layout.num_classes,
                split,
                str(base),
                False,
                layout.class_key,
            )
        )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def keys(self) -> list[str]:
        return [Path(self.rasterizer.image_info(i)["file_name"]).stem for i in self.ids]

    def __iter__(self) -> Iterator[ValSample]:
        from PIL import Image

        for image_id in self.ids:
            info = self.rasterizer.image_info(image_id)
            path = self.img_dir / info["file_name"]
            try:
                with Image.open(path) as im:
                    image = np.asarray(im.convert("RGB"))
            except (OSError, SyntaxError, ValueError) as e:
                self._skip(str(path), e)
                continue
            if image.shape[:2] != (int(info["height"]), int(info["width"])):
                raise DataError(
                    f"coco-object-instances: image {path} is {image.shape[1]}x{image.shape[0]} "
                    f"but the annotations say {info['width']}x{info['height']} (WxH): use the "
                    "images the annotation file was made for"
                )
            yield ValSample(path.stem, image, self.rasterizer.label(image_id), self.classes, self.info.split)


# --------------------------------------------------------------------------------------------------------
# Demo validation shards
# --------------------------------------------------------------------------------------------------------


class DemoDataset(SegDataset):
    """A validation split of pgseg shards (``pgseg prep-shards --source demo``) as a :class:`SegDataset`.

    Classes come from ``index.json`` (the split's class list; label 0 is background); every protocol gives
    those names without synonyms or background words.

    Raises (at construction):
        DataError: no index.json, or the split is absent / has no class list (the message lists the splits).
    """

    def __init__(self, shard_dir: str | Path, split: str = "val-caption"):
        from .shards import read_index

        index = read_index(shard_dir)
        splits = index.get("splits", {})
        entry = splits.get(split)
        if not isinstance(entry, dict) or not isinstance(entry.get("classes"), list):
            labelled = [
                k for k, v in splits.items() if isinstance(v, dict) and isinstance(v.get("classes"), list)
            ]
            choices = ", ".join(labelled) or "(none: build them with pgseg prep-shards --source demo)"
            raise DataError(f"demo: no labelled split '{split}' in {shard_dir}: use one of {choices}")
        self.shard_dir = Path(shard_dir)
        self._class_names = [str(c) for c in entry["classes"]]
        self._count = int(entry.get("count", 0))
        super().__init__(
            DatasetInfo(
                "demo",
                "pgseg demo validation composites",
                True,
                len(self._class_names),
                split,
                str(shard_dir),
                False,
                "",
            )
        )

    def __len__(self) -> int:
        return self._count

    def _packaged_spec(self, protocol: str) -> ClassSpec:
        return ClassSpec.from_names(self._class_names)

    def __iter__(self) -> Iterator[ValSample]:
        from .loader import iter_val_samples

        yield from iter_val_samples(self.shard_dir, self.info.split)


# --------------------------------------------------------------------------------------------------------


def open_dataset(name: str, root: str | Path, split: str = "val", **options: Any) -> SegDataset:
    """Open a benchmark split.

    Args:
        name: one of :func:`dataset_names` ("voc21", "voc20", "pc60", "pc59", "coco-object",
            "coco-stuff-171", "ade20k-150", "cityscapes", "coco-object-instances", "demo").
        root: the dataset's folder (e.g. ``.../VOCdevkit/VOC2012``) or a ``data/`` folder holding the mmseg
            tree; for "demo" the shard directory.
        split: "val" (default), "train", ... ; ADE's "validation" and COCO's "val2017" folders are found from
            "val". For "demo", "val" means "val-caption"; "val-heldout" is the other split.
        options: "coco-object-instances" only: ``crowd="category" | "ignore"``.

    Returns:
        A :class:`SegDataset` yielding :class:`~pgseg_core.data.loader.ValSample` with canonical labels.

    Raises:
        DataError: unknown name (with the closest), missing root / split file / split folder, images without
            label files; later, during iteration, size mismatches and out-of-range label values.
        ConfigError: an option the dataset does not take.
    """
    if name not in dataset_names():
        _layout(name)  # raises the DataError with a suggestion
    allowed = {"crowd"} if name == "coco-object-instances" else set()
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"{name} takes no option {', '.join(unknown)}")
    if name == "demo":
        return DemoDataset(root, "val-caption" if split == "val" else split)
    if name == "coco-object-instances":
        return CocoInstancesDataset(root, split, **options)
    return FileSegDataset(_LAYOUTS[name], root, split)
