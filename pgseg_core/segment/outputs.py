"""Per-image output files of ``pgseg segment`` (``--format png,overlay,json,coco-rle``).

For an input whose output-relative path is ``sub/cat.jpg`` (see :mod:`.inputs`), under ``--out``:

=============  ==========================  ===================================================================
format         file                        contents
=============  ==========================  ===================================================================
``png``        ``sub/cat_label.png``       palette PNG, pixel value = label (0 background, 1 + c class c)
``overlay``    ``sub/cat_overlay.png``     colour overlay with a legend strip of the classes present
``json``       ``sub/cat.json``            :func:`image_record`: size, classes present, pixels, scores
``coco-rle``   ``sub/cat_rle.json``        :func:`coco_rle_record`: one COCO RLE annotation per class present
=============  ==========================  ===================================================================

Every file is written atomically (temporary file ``.NAME.PID.XXXX.tmp`` + ``os.replace``), so an
interrupted run never leaves a half-written output and ``--skip-existing`` can trust what exists; the
temporary files a killed run left behind are removed by the next run (:func:`prepare_output_folders`). Files
get the permissions of the umask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..utils.io import atomic_write_json, ensure_dir, output_error, remove_stale_temps
from ..viz.overlay import render_overlay
from ..viz.palette import label_to_palette_png, save_image_atomic

__all__ = [
    "FORMATS",
    "DEFAULT_FORMATS",
    "parse_formats",
    "OutputPlan",
    "plan_outputs",
    "prepare_output_folders",
    "coco_rle_record",
    "image_record",
    "write_outputs",
]

FORMATS = ("png", "overlay", "json", "coco-rle")
DEFAULT_FORMATS = ("png", "overlay", "json")
_SUFFIX = {"png": "_label.png", "overlay": "_overlay.png", "json": ".json", "coco-rle": "_rle.json"}


def parse_formats(spec: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """``"png,json"`` -> ``("png", "json")`` in canonical order; ``None`` -> the default formats.

    Raises:
        ConfigError: an unknown or empty format list.
    """
    if spec is None:
        return DEFAULT_FORMATS
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [s.strip().lower().replace("_", "-") for s in items if s.strip()]
    aliases = {"rle": "coco-rle", "label": "png"}
    names = [aliases.get(n, n) for n in names]
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise ConfigError(
            f"unknown output format {', '.join(bad) or '(none)'!s}: choose from {', '.join(FORMATS)}"
        )
    return tuple(f for f in FORMATS if f in names)


@dataclass(frozen=True)
class OutputPlan:
    """Where one image's outputs go.

    Attributes:
        stem_rel: POSIX path below ``--out`` without suffix (``sub/cat``; ``sub/cat-1`` on a clash).
        files: format -> absolute output path, only for the requested formats.
    """

    stem_rel: str
    files: dict[str, Path]

    def all_exist(self) -> bool:
        return all(p.is_file() for p in self.files.values())


def plan_outputs(rels: list[str], out_dir: str | Path, formats: tuple[str, ...]) -> list[OutputPlan]:
    """Output paths for images with output-relative paths ``rels`` (same order).

    Two inputs with the same relative stem (``a/cat.jpg`` and ``b/cat.jpg`` given as files, or ``cat.jpg``
    and ``cat.png``) get ``cat``, ``cat-1``, ``cat-2``... in input order, so reruns map each input to the
    same files.
    """
    out_dir = Path(out_dir)
    used: set[str] = set()
    plans = []
    for rel in rels:
        pure = PurePosixPath(rel)
        base = (pure.parent / pure.stem).as_posix()
        stem, k = base, 0
        while stem.lower() in used:
            k += 1
            stem = f"{base}-{k}"
        used.add(stem.lower())
        plans.append(OutputPlan(stem, {f: out_dir / f"{stem}{_SUFFIX[f]}" for f in formats}))
    return plans


def prepare_output_folders(out_dir: str | Path, plans: list[OutputPlan], extra: tuple[Path, ...] = ()) -> int:
    """Check the output root before any work and clear what killed runs left: create ``out_dir``, then
    delete the stale temporary files (of processes that no longer run) in it, in every folder ``plans``
    write to, and in the ``extra`` folders (e.g. the text-embedding cache). Folders are not created except
    ``out_dir``; a live run's temporary files are left alone.

    Returns:
        How many stale temporary files were removed.

    Raises:
        OutputError: ``out_dir`` is a file or cannot be created.
    """
    root = ensure_dir(out_dir)
    folders = {root, *(Path(f) for f in extra)}
    folders.update(p.parent for plan in plans for p in plan.files.values())
    return sum(remove_stale_temps(folder) for folder in sorted(folders))


def image_record(
    label: np.ndarray, scores: np.ndarray, classes: list[str], image: str, bg_thresh: float
) -> dict[str, Any]:
    """Per-image summary: size, and for each class present its pixels, fraction and mean score.

    Args:
        label: integer label map [H,W] (0 background, 1 + c class c).
        scores: float [C+1,H,W] per-pixel scores in [0, 1], channel 0 background.
        classes: the C class display names.
        image: the input path as given.
        bg_thresh: the background threshold used.

    Returns:
        ``{"image", "width", "height", "classes": [{"name", "index", "pixels", "fraction", "score"}],
        "background_pixels", "bg_thresh"}``; classes by decreasing pixel count, ``score`` is the mean of the
        class's score channel over its pixels, in [0, 1].
    """
    h, w = label.shape
    total = float(h * w)
    counts = np.bincount(label.reshape(-1), minlength=len(classes) + 1)
    present = []
    for idx in np.argsort(-counts[1:], kind="stable") + 1:
        pixels = int(counts[idx])
        if pixels == 0:
            continue
        present.append(
            {
                "name": classes[idx - 1],
                "index": int(idx),
                "pixels": pixels,
                "fraction": pixels / total,
                "score": float(scores[idx][label == idx].mean()),
            }
        )
    return {
        "image": image,
        "width": int(w),
        "height": int(h),
        "classes": present,
        "background_pixels": int(counts[0]),
        "bg_thresh": float(bg_thresh),
    }


def coco_rle_record(label: np.ndarray, scores: np.ndarray, classes: list[str], image: str) -> dict[str, Any]:
    """COCO-style run-length encoding of each class present (pycocotools ``mask.encode``).

    Args:
        label: integer label map [H,W] (0 background, 1 + c class c).
        scores: float [C+1,H,W] per-pixel scores.
        classes: the C class display names.
        image: the input path as given.

    Returns:
        ``{"image", "height", "width", "categories": [{"id", "name"}], "annotations": [{"category_id",
        "category", "segmentation": {"size": [H, W], "counts": str}, "area", "bbox": [x, y, w, h],
        "score"}]}``
        with ``category_id`` = label value (1 + c). ``pycocotools.mask.decode`` of a ``segmentation`` gives
        back ``label == category_id`` exactly.
    """
    from pycocotools import mask as mask_utils

    h, w = label.shape
    ids = [int(v) for v in np.unique(label) if 0 < v <= len(classes)]
    annotations = []
    if ids:
        stack = np.asfortranarray(np.stack([(label == i) for i in ids], axis=-1).astype(np.uint8))  # [H,W,n]
        rles = mask_utils.encode(stack)
        areas = mask_utils.area(rles)
        boxes = mask_utils.toBbox(rles)
        for i, rle, area, box in zip(ids, rles, areas, boxes):
            annotations.append(
                {
                    "category_id": i,
                    "category": classes[i - 1],
                    "segmentation": {"size": [int(h), int(w)], "counts": rle["counts"].decode("ascii")},
                    "area": int(area),
                    "bbox": [float(v) for v in box],
                    "score": float(scores[i][label == i].mean()),
                }
            )
    return {
        "image": image,
        "height": int(h),
        "width": int(w),
        "categories": [{"id": 1 + c, "name": n} for c, n in enumerate(classes)],
        "annotations": annotations,
    }


def write_outputs(
    plan: OutputPlan,
    image: np.ndarray,
    label: np.ndarray,
    scores: np.ndarray,
    classes: list[str],
    image_name: str,
    bg_thresh: float,
) -> dict[str, Any]:
    """Write the requested outputs of one image atomically and return its JSON record.

    Args:
        plan: :func:`plan_outputs` entry.
        image: uint8 RGB [H,W,3] (for the overlay).
        label: int [H,W] label map; scores float [C+1,H,W]; classes the C display names.

    Returns:
        :func:`image_record` plus ``"outputs": {format: path}``.

    Raises:
        OutputError: a file cannot be written (a full disk, no permission), naming it and the fix. The files
        written before it are complete; no temporary file stays.
    """
    record = image_record(label, scores, classes, image_name, bg_thresh)
    record["outputs"] = {f: str(p) for f, p in plan.files.items()}
    for fmt, path in plan.files.items():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if fmt == "png":
                label_to_palette_png(label.astype(np.uint8), path)
            elif fmt == "overlay":
                save_image_atomic(render_overlay(image, label, classes), path)
            elif fmt == "json":
                atomic_write_json(path, {k: v for k, v in record.items() if k != "outputs"})
            elif fmt == "coco-rle":
                atomic_write_json(path, coco_rle_record(label, scores, classes, image_name))
        except OSError as e:
            raise output_error(path, e) from e
    return record
