"""The benchmark registry: what each dataset is (:class:`DatasetInfo`), where its files lie in the mmseg
layout (:class:`Layout`, the table :data:`LAYOUTS`), and its packaged class-name files
(``pgseg_core/eval/datasets/classes/<class_key>.<protocol>.txt``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ...errors import ConfigError, DataError
from ...inference.classes import ClassSpec, read_class_file

__all__ = [
    "COCO_ALIAS",
    "IGNORE",
    "LAYOUTS",
    "PROTOCOLS",
    "DatasetInfo",
    "Layout",
    "class_file",
    "dataset_names",
    "load_class_spec",
    "lookup_layout",
    "suggest",
]

PROTOCOLS = ("groupvit", "pgseg", "sclip")  # pgseg: PGSeg's release spelling where it differs, else groupvit
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
# mmseg file layouts
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where one benchmark's files lie in its mmseg layout (a row of :data:`LAYOUTS`)."""

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
        """The folder / split-file name of ``split`` ("val" -> "validation" for ADE20K, ...)."""
        return self.split_alias.get(split, split)


_VOC_OBTAIN = "VOCtrainval_11-May-2012.tar unpacked as VOCdevkit/VOC2012"
_PC_OBTAIN = (
    "VOCtrainval_03-May-2010.tar plus the Context labels converted with mmseg's "
    "tools/dataset_converters/pascal_context.py"
)
_COCO_OBTAIN = "COCO 2017 images in images/ and stuffthingmaps_trainval2017.zip in annotations/"
COCO_ALIAS = {"val": "val2017", "train": "train2017"}

LAYOUTS: dict[str, Layout] = {}


def _register(*layouts: Layout) -> None:
    for layout in layouts:
        LAYOUTS[layout.name] = layout


# Fields the benchmarks share: roots, img_dir, ann_dir, img_suffix (VOC, Context: and seg_suffix), split_file.
_VOC = ("", "VOC2012", "VOCdevkit/VOC2012"), "JPEGImages", "SegmentationClass", ".jpg", ".png"
_PC = ("", "VOC2010", "VOCdevkit/VOC2010"), "JPEGImages", "SegmentationClassContext", ".jpg", ".png"
_COCO = ("", "coco_stuff164k"), "images/{split}", "annotations/{split}", ".jpg"
_VOC_SPLIT = "ImageSets/Segmentation/{split}.txt"
_PC_SPLIT = "ImageSets/SegmentationContext/{split}.txt"

# Positional fields: name, title, has_background, num_classes, class_key, roots, img_dir, ann_dir,
# img_suffix, seg_suffix, split_file; then the keyword fields.
# fmt: off
_register(
    Layout("voc21", "PASCAL VOC 2012 (21 classes with background)", True, 20, "voc21", *_VOC, _VOC_SPLIT,
           obtain=_VOC_OBTAIN),
    Layout("voc20", "PASCAL VOC 2012 (20 classes, background ignored)", False, 20, "voc20", *_VOC, _VOC_SPLIT,
           reduce_zero_label=True, obtain=_VOC_OBTAIN),
    Layout("pc60", "PASCAL Context (60 classes with background)", True, 59, "pc60", *_PC, _PC_SPLIT,
           obtain=_PC_OBTAIN),
    Layout("pc59", "PASCAL Context (59 classes, background ignored)", False, 59, "pc59", *_PC, _PC_SPLIT,
           reduce_zero_label=True, obtain=_PC_OBTAIN),
    Layout("coco-object", "COCO-Object (80 things with background)", True, 80, "coco-object", *_COCO,
           "_instanceTrainIds.png", None, split_alias=COCO_ALIAS,
           obtain=_COCO_OBTAIN + ", then `pgseg prep-shards --source coco-object --coco-root DIR`"),
    Layout("coco-stuff-171", "COCO-Stuff-164k (171 classes)", False, 171, "coco-stuff-171", *_COCO,
           "_labelTrainIds.png", None, split_alias=COCO_ALIAS,
           obtain=_COCO_OBTAIN + ", then mmseg's tools/dataset_converters/coco_stuff164k.py"),
    Layout("ade20k-150", "ADE20K (150 classes)", False, 150, "ade20k-150",
           ("", "ADEChallengeData2016", "ade/ADEChallengeData2016"), "images/{split}", "annotations/{split}",
           ".jpg", ".png", None, reduce_zero_label=True,
           split_alias={"val": "validation", "train": "training"}, obtain="ADEChallengeData2016.zip"),
    Layout("cityscapes", "Cityscapes (19 classes)", False, 19, "cityscapes", ("", "cityscapes"),
           "leftImg8bit/{split}", "gtFine/{split}", "_leftImg8bit.png", "_gtFine_labelTrainIds.png", None,
           recursive=True,
           obtain="leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip, then cityscapesscripts' "
           "createTrainIdLabelImgs"),
)
# fmt: on

_EXTRA = ("coco-object-instances", "demo")


def dataset_names() -> list[str]:
    """Every name :func:`open_dataset` accepts: the 8 benchmarks, then "coco-object-instances" and "demo"."""
    return [*LAYOUTS, *_EXTRA]


def lookup_layout(name: str) -> Layout:
    """The :class:`Layout` of a benchmark ("coco-object-instances" shares "coco-object"'s).

    Raises:
        DataError: unknown name (with the closest and the list of known names).
    """
    key = "coco-object" if name == "coco-object-instances" else name
    if key not in LAYOUTS:
        raise DataError(
            f"unknown dataset '{name}': {suggest(name, dataset_names())}known: {', '.join(dataset_names())}"
        )
    return LAYOUTS[key]


# --------------------------------------------------------------------------------------------------------
# Class-name files
# --------------------------------------------------------------------------------------------------------


def suggest(word: str, options: list[str] | tuple[str, ...]) -> str:
    """``"did you mean 'x'? "`` for the option closest to ``word``, or "" when none is close."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'? " if close else ""


def class_file(dataset: str, protocol: str = "groupvit") -> Path:
    """Path of the packaged class-name file ``pgseg_core/eval/datasets/classes/<dataset>.<protocol>.txt``.

    Raises:
        ConfigError: unknown protocol (with the closest name). DataError: unknown dataset.
    """
    if dataset == "demo":
        raise DataError(
            "demo shards have no packaged class files: their classes come from index.json "
            "(open_dataset('demo', shard_dir).class_spec())"
        )
    layout = lookup_layout(dataset)
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"unknown class protocol '{protocol}': {suggest(protocol, PROTOCOLS)}"
            f"use one of {', '.join(PROTOCOLS)}, or a class file path"
        )
    folder = resources.files("pgseg_core.eval.datasets") / "classes"
    ref = folder / f"{layout.class_key}.{protocol}.txt"
    if protocol == "pgseg" and not ref.is_file():  # PGSeg's evaluation kept GroupViT's names elsewhere
        ref = folder / f"{layout.class_key}.groupvit.txt"
    return Path(str(ref))


def load_class_spec(dataset: str, protocol: str = "groupvit") -> ClassSpec:
    """The packaged :class:`ClassSpec` of a dataset for a protocol (no dataset files needed).

    Raises:
        ConfigError: unknown protocol. DataError: unknown dataset, or a damaged package (file missing).
    """
    return read_class_file(class_file(dataset, protocol))
