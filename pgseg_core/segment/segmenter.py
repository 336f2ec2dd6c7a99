"""Segmenter facade (embed the vocabulary once, segment many images) and the files -> outputs runner.

Symbols: C classes (no background), H×W pixels. Label maps: 0 background, 1 + c class c.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.transforms import load_image_rgb
from ..errors import ConfigError, DataError
from ..utils.io import atomic_write_json
from ..viz.overlay import render_overlay
from ..viz.palette import label_to_palette_png, save_image_atomic
from .inference import compute_class_embeddings, predict

logger = logging.getLogger("pgseg.segment")

MAX_PNG_CLASSES = 254  # label values 1..254; 0 is background and 255 the ignore value


@dataclass
class SegResult:
    """Prediction for one image.

    Attributes:
        label: int64 [H,W], 0 background, 1 + c class ``classes[c]``.
        scores: float32 [C+1,H,W] per-pixel scores in [0, 1], channel 0 background.
        classes: the C class names (without background).
    """

    label: np.ndarray
    scores: np.ndarray
    classes: list[str]


class Segmenter:
    """Open-vocabulary segmenter over a fixed class list (GroupViT rule, pgseg_method.md §4.3).

    The class text embeddings are computed once at construction; :meth:`predict` then only runs the
    image encoder.

    Args:
        model: a PGSeg-contract model, already on ``device``; it is put in eval mode.
        class_names: C class names to segment (background is implicit, label 0).
        eval_cfg: :class:`pgseg_core.config.EvalConfig` (resize, slide, bg_thresh, top_k, templates).
        device: torch device of the model.

    Raises:
        ConfigError: empty or duplicated class names, or bad templates.
    """

    def __init__(self, model: Any, class_names: list[str], eval_cfg: Any, device: torch.device | str) -> None:
        names = [str(n).strip() for n in class_names]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"duplicate class names {dupes}: list each class once")
        self.model = model
        self.classes = names
        self.eval_cfg = eval_cfg
        self.device = torch.device(device)
        if hasattr(model, "eval"):
            model.eval()
        self.class_emb = compute_class_embeddings(model, names, list(eval_cfg.templates), self.device)

    def predict(self, image: np.ndarray) -> SegResult:
        """Segment one uint8 RGB image [H,W,3].

        Returns:
            :class:`SegResult` with the label map and per-class scores at the image's own size.

        Raises:
            DataError: ``image`` is not a uint8 [H,W,3] array.
        """
        label, scores = predict(self.model, image, self.class_emb, self.eval_cfg, self.device)
        return SegResult(label=label, scores=scores, classes=list(self.classes))


def _load_image(path: Path) -> np.ndarray:
    return np.asarray(load_image_rgb(path))  # DataError on a missing / unreadable file


def summarize_prediction(result: SegResult, image_name: str, bg_thresh: float) -> dict[str, Any]:
    """Per-image JSON record: size, and for each class present its pixels, fraction and mean score.

    ``score`` is the mean over the class's pixels of its score channel (the per-pixel maximum, since the
    label is the argmax), in [0, 1]. Classes are listed by decreasing pixel count.
    """
    label, scores = result.label, result.scores
    h, w = label.shape
    total = float(h * w)
    counts = np.bincount(label.reshape(-1), minlength=len(result.classes) + 1)
    classes = []
    for idx in np.argsort(-counts[1:], kind="stable") + 1:
        pixels = int(counts[idx])
        if pixels == 0:
            continue
        classes.append(
            {
                "name": result.classes[idx - 1],
                "index": int(idx),
                "pixels": pixels,
                "fraction": pixels / total,
                "score": float(scores[idx][label == idx].mean()),
            }
        )
    return {
        "image": image_name,
        "width": int(w),
        "height": int(h),
        "classes": classes,
        "background_pixels": int(counts[0]),
        "bg_thresh": float(bg_thresh),
    }


def segment_images(
    model: Any,
    inputs: list[Path],
    class_names: list[str],
    out_dir: Path,
    eval_cfg: Any,
    device: torch.device | str,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Segment image files; write ``<stem>_label.png``, ``<stem>_overlay.png`` and ``<stem>.json`` for each.

    ``<stem>_label.png`` is a palette (mode P) PNG whose pixel values are the labels (0 background,
    1 + c class c); ``<stem>_overlay.png`` is the colour overlay with a legend strip below it;
    ``<stem>.json`` holds ``{"image", "width", "height", "classes": [{"name", "index", "pixels",
    "fraction", "score"}], "background_pixels", "bg_thresh"}``. Two inputs with the same stem get
    ``<stem>-1``, ``<stem>-2``, ... All writes are atomic (temporary file + ``os.replace``). An unreadable
    image is logged, recorded in ``failed`` and skipped; the run goes on.

    Args:
        model: a PGSeg-contract model on ``device``.
        inputs: image files.
        class_names: C class names.
        out_dir: output folder (created).
        eval_cfg: :class:`pgseg_core.config.EvalConfig`.
        device: torch device of the model.
        progress: optional ``callback(n_done, n_total)`` after each image.

    Returns:
        ``{"out_dir", "classes", "processed": int, "outputs": [{"image", "label", "overlay", "json"}],
        "failed": [{"image", "error"}], "num_failed": int}``.

    Raises:
        ConfigError: bad class names or templates, or more than 254 classes (before any image is read).
    """
    out_dir = Path(out_dir)
    if len(class_names) > MAX_PNG_CLASSES:
        raise ConfigError(
            f"{len(class_names)} classes do not fit an 8-bit label PNG: "
            f"segment at most {MAX_PNG_CLASSES} classes at once"
        )
    segmenter = Segmenter(model, class_names, eval_cfg, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs: list[dict[str, str]] = []
    failed: list[dict[str, str]] = []
    used_stems: set[str] = set()
    paths = [Path(p) for p in inputs]
    for n, path in enumerate(paths, start=1):
        try:
            image = _load_image(path)
            result = segmenter.predict(image)
        except DataError as e:
            logger.warning("skipping %s: %s", path, e)
            failed.append({"image": str(path), "error": str(e)})
        else:
            stem, k = path.stem, 0
            while stem in used_stems:
                k += 1
                stem = f"{path.stem}-{k}"
            used_stems.add(stem)
            label_path = label_to_palette_png(result.label.astype(np.uint8), out_dir / f"{stem}_label.png")
            overlay = render_overlay(image, result.label, result.classes)
            overlay_path = save_image_atomic(overlay, out_dir / f"{stem}_overlay.png")
            json_path = out_dir / f"{stem}.json"
            atomic_write_json(json_path, summarize_prediction(result, str(path), eval_cfg.bg_thresh))
            outputs.append(
                {
                    "image": str(path),
                    "label": str(label_path),
                    "overlay": str(overlay_path),
                    "json": str(json_path),
                }
            )
            logger.info("segmented %s -> %s", path, label_path)
        if progress is not None:
            progress(n, len(paths))
    return {
        "out_dir": str(out_dir),
        "classes": list(segmenter.classes),
        "processed": len(outputs),
        "outputs": outputs,
        "failed": failed,
        "num_failed": len(failed),
    }
