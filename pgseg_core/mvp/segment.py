"""``pgseg segment`` with MVP-SEG checkpoints or the training-free baseline (docs/MVP_SEG.md §4).

The vocabulary is ``background`` + the named classes, so the outputs keep the segment convention (label 0
background, 1 + c class c; scores [C + 1, H, W]) and are written by :mod:`pgseg_core.segment.outputs`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.transforms import load_image_rgb
from ..errors import ConfigError
from ..segment.inputs import resolve_inputs
from ..segment.outputs import parse_formats, plan_outputs, prepare_output_folders, write_outputs
from ..utils.device import resolve_device
from .checkpoint import load_predictor
from .data import BACKGROUND
from .dense_cache import open_dense_cache

__all__ = ["segment_with_method", "MethodSegmentSummary"]

logger = logging.getLogger("pgseg.mvp")


@dataclass
class MethodSegmentSummary:
    """Counts of one run (the fields ``pgseg segment`` prints)."""

    processed: int = 0
    skipped: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    images_per_s: float = 0.0
    backend: str = "torch"
    device: str = "cpu"
    text_cache: str = "off"
    feature_cache: dict[str, int] | None = None
    method: str = ""

    @property
    def num_failed(self) -> int:
        return len(self.failed)


def segment_with_method(
    inputs: list[str],
    reference: str,
    out_dir: str | Path,
    classes: list[str],
    *,
    formats: str = "png,overlay,json",
    device: str = "auto",
    overrides: dict[str, Any] | None = None,
    cache: str | Path | None = None,
    recursive: bool = False,
    skip_existing: bool = False,
    stdin: Iterable[str] | None = None,
    on_record: Callable[[dict], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> MethodSegmentSummary:
    """Segment ``inputs`` into ``classes`` with ``baseline:BACKBONE`` or an MVP-SEG checkpoint.

    Raises:
        ConfigError: no class, a class named "background", a bad format or override. CheckpointError,
            OutputError as their steps. A failing image is recorded in ``failed`` and the run goes on.
    """
    if not classes:
        raise ConfigError("name at least one class to segment into")
    if BACKGROUND in classes:
        raise ConfigError("'background' is always scored: leave it out of the class list")
    fmts = parse_formats(formats)
    dev = resolve_device(device)
    loaded = load_predictor(reference, dev, overrides)
    pred = loaded.predictor
    found = resolve_inputs(inputs, recursive=recursive, stdin=stdin)
    plans = plan_outputs([im.rel for im in found.images], out_dir, fmts)
    prepare_output_folders(out_dir, plans)
    vocab = [BACKGROUND, *classes]
    summary = MethodSegmentSummary(device=str(dev), method=loaded.method)
    summary.failed += [{"image": item, "error": f"{item}: {why}"} for item, why in found.missing]
    fc = (
        open_dense_cache(cache, pred.backbone, loaded.config.short_side, loaded.config.max_long)
        if cache
        else None
    )
    pred.cache = fc
    t0 = time.perf_counter()
    try:
        for i, (im, plan) in enumerate(zip(found.images, plans)):
            if skip_existing and plan.all_exist():
                summary.skipped += 1
                continue
            try:
                image = np.asarray(load_image_rgb(im.path))
                label, scores = pred.predict(image, vocab)
                label_np, scores_np = label.cpu().numpy(), scores.cpu().numpy()
                record = write_outputs(
                    plan, image, label_np, scores_np, classes, str(im.path), pred.bg_thresh
                )
            except (OSError, ValueError) as e:
                summary.failed.append({"image": str(im.path), "error": f"{im.path}: {e}"})
                continue
            summary.processed += 1
            if on_record is not None:
                on_record(record)
            if progress is not None:
                progress(i + 1, len(found.images))
    finally:
        if fc is not None:
            fc.close()
    summary.images_per_s = summary.processed / max(time.perf_counter() - t0, 1e-9)
    if fc is not None:
        summary.feature_cache = {"images_from_cache": pred.from_cache, "images_encoded": pred.encoded}
    return summary
