"""Readers of the standard segmentation benchmarks in their mmseg layouts, yielding canonical labels.

``open_dataset(name, root, split)`` returns a :class:`SegDataset`: ``len(ds)``, lazy iteration (PIL, in
split-file order, or sorted file order where the split is a folder) over :class:`~pgseg_core.data.loader.
ValSample` objects, ``ds.info`` (:class:`DatasetInfo`) and ``ds.class_spec(protocol)`` (the packaged
class-name file of the dataset for the ``groupvit`` or ``sclip`` protocol, docs/METHOD.md §4.1, §4.4).

Canonical labels (uint8 [H,W], the evaluator's convention): a dataset WITH background (voc21, pc60,
coco-object) has 0 = background and 1 + i = class i of its C-class list; a dataset WITHOUT background (voc20,
pc59, coco-stuff-171, ade20k-150, cityscapes) has 0..C-1 = class i. 255 is ignore everywhere. Datasets
with mmseg's ``reduce_zero_label`` (voc20, pc59, ade20k-150) map raw 0 -> 255 and raw v -> v - 1.

Layouts (mmseg's, docs/DATASETS.md); ``root`` may be the dataset's own folder or a ``data/`` folder above it:

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

The registry (dataset table, class files) is in :mod:`.registry`, the :class:`SegDataset` interface in
:mod:`.base`, the readers in :mod:`.readers`, the COCO-Object label conversion in :mod:`.coco_object`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import ConfigError
from .base import SegDataset
from .readers import CocoInstancesDataset, DemoDataset, FileSegDataset, read_label_png
from .registry import (
    LAYOUTS,
    PROTOCOLS,
    DatasetInfo,
    class_file,
    dataset_names,
    load_class_spec,
    lookup_layout,
)

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
        lookup_layout(name)  # raises the DataError with a suggestion
    allowed = {"crowd"} if name == "coco-object-instances" else set()
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"{name} takes no option {', '.join(unknown)}")
    if name == "demo":
        return DemoDataset(root, "val-caption" if split == "val" else split)
    if name == "coco-object-instances":
        return CocoInstancesDataset(root, split, **options)
    return FileSegDataset(LAYOUTS[name], root, split)
