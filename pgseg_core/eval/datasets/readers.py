"""The benchmark readers: mmseg file layouts (:class:`FileSegDataset`), COCO instance annotations through
pycocotools (:class:`CocoInstancesDataset`) and pgseg's demo validation shards (:class:`DemoDataset`).

Images are read as stored (no EXIF rotation: the label maps were drawn on the stored pixels).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ...data.loader import ValSample
from ...errors import DataError
from ...inference.classes import ClassSpec
from .base import SegDataset
from .registry import COCO_ALIAS, IGNORE, LAYOUTS, DatasetInfo, Layout

__all__ = ["CocoInstancesDataset", "DemoDataset", "FileSegDataset", "read_label_png"]


# --------------------------------------------------------------------------------------------------------
# mmseg file layouts
# --------------------------------------------------------------------------------------------------------


def _find_root(layout: Layout, root: Path) -> Path:
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


def _label_lut(layout: Layout) -> tuple[np.ndarray, np.ndarray]:
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
    """A benchmark split stored as image files + label PNGs in an mmseg layout (the table of
    :mod:`pgseg_core.eval.datasets`).

    Raises (at construction):
        DataError: root missing, split file / folder missing, empty split, listed images missing, or images
            without a label file (the message names one and counts all).
    """

    def __init__(self, layout: Layout, root: str | Path, split: str = "val"):
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
    def _read_split_file(layout: Layout, path: Path) -> list[str]:
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
    def _scan_split_folder(layout: Layout, img_dir: Path, split: str) -> list[str]:
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
    :class:`~pgseg_core.eval.datasets.coco_object.CocoInstanceRasterizer` (largest instance first, crowd ->
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
        split_name = COCO_ALIAS.get(split, split)
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
        layout = LAYOUTS["coco-object"]
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
        from ...data.shards import read_index

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
        from ...data.loader import iter_val_samples

        yield from iter_val_samples(self.shard_dir, self.info.split)
