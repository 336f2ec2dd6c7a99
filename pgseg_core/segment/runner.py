"""The files -> outputs loop of :meth:`.segmenter.Segmenter.run` and its typed summary.

A torch DataLoader decodes images (in worker processes with ``num_workers > 0``) and prepares them
(:func:`pgseg_core.inference.prepare_image`); the segmenter predicts a batch of images at once;
:mod:`.outputs` writes the requested files atomically. A bad image is recorded and skipped; the run goes on.

Ending early: an output that cannot be written (a full disk) stops the run with
:class:`~pgseg_core.errors.OutputError`, and any exception of the record callback (a ``BrokenPipeError``
when the reader of ``--jsonl`` went away) propagates unchanged; either way the decode workers are shut down
before it leaves. On Linux the workers also die with this process on any signal, ``kill -9`` included
(``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..data.transforms import load_image_rgb
from ..errors import DataError
from ..inference import prepare_image
from ..utils.process import end_with_parent
from .inputs import InputImage
from .outputs import OutputPlan, write_outputs

if TYPE_CHECKING:
    from .segmenter import Segmenter

__all__ = ["SegmentSummary", "run_plans"]

logger = logging.getLogger("pgseg.segment")

Record = dict[str, Any]


@dataclass
class SegmentSummary:
    """What one :meth:`~pgseg_core.segment.segmenter.Segmenter.run` did.

    Attributes:
        out_dir: the output root.
        classes: the C class names (label 1 + c).
        formats: the output formats written.
        total: images given, plus inputs that resolved to nothing.
        processed / skipped: images segmented / skipped because their outputs existed.
        failed: ``{"image", "error"}`` per image that could not be segmented (or input that was missing).
        seconds / images_per_s: wall time of the run (rounded to 3 digits) and processed images per second.
        backend: ``torch`` or ``onnx``.
        device: the torch device scores were computed on.
        text_cache: ``hit``, ``miss``, ``off`` or ``unused`` (no image needed the model).
        class_spec: :meth:`pgseg_core.inference.ClassSpec.to_dict` of the vocabulary.
        feature_cache: ``{"images_encoded", "images_from_cache"}`` when a feature cache was used, else None.
    """

    out_dir: str
    classes: list[str]
    formats: list[str]
    total: int
    processed: int
    skipped: int
    failed: list[dict[str, str]]
    seconds: float
    images_per_s: float
    backend: str = "torch"
    device: str = "cpu"
    text_cache: str = "off"
    class_spec: dict[str, Any] = field(default_factory=dict)
    feature_cache: dict[str, int] | None = None

    @property
    def num_failed(self) -> int:
        return len(self.failed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (the summary of ``pgseg_core.api.segment_files``)."""
        head = {"feature_cache": dict(self.feature_cache)} if self.feature_cache is not None else {}
        return {
            **head,
            "out_dir": self.out_dir,
            "classes": list(self.classes),
            "formats": list(self.formats),
            "total": self.total,
            "processed": self.processed,
            "skipped": self.skipped,
            "failed": [dict(f) for f in self.failed],
            "num_failed": self.num_failed,
            "seconds": self.seconds,
            "images_per_s": self.images_per_s,
            "backend": self.backend,
            "device": self.device,
            "text_cache": self.text_cache,
            "class_spec": self.class_spec,
        }


class _DecodeDataset(torch.utils.data.Dataset):
    """Decode + resize + normalise one image per item; errors come back as text instead of raising."""

    def __init__(self, paths: list[Path], eval_cfg: Any) -> None:
        self.paths = paths
        self.eval_cfg = eval_cfg

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, Any, str | None]:
        try:
            image = np.asarray(load_image_rgb(self.paths[i]))  # DataError on a bad file
            return i, image, prepare_image(image, self.eval_cfg), None
        except DataError as e:
            return i, None, None, str(e)
        except Exception as e:  # noqa: BLE001 - a decoder bug must not end the whole run
            return i, None, None, f"cannot read {self.paths[i]}: {type(e).__name__}: {e}"


def _as_list(batch: list) -> list:
    return batch


def _worker_init(_: int, parent_pid: int) -> None:
    end_with_parent(parent_pid)
    torch.set_num_threads(1)  # decode workers: one thread each, the model keeps the others


def _close_loader(batches: Any) -> None:
    """Stop the decode workers of a DataLoader iterator now (also when the loop ended with an exception)."""
    shutdown = getattr(batches, "_shutdown_workers", None)  # torch's multiprocessing iterator
    if callable(shutdown):
        shutdown()


@dataclass
class _Tally:
    """Counts of a run, with the record and progress callbacks."""

    total: int
    emit: Callable[[Record], None]
    progress: Callable[[int, int, dict[str, Any]], None] | None
    start: float = field(default_factory=time.perf_counter)
    done: int = 0
    skipped: int = 0
    processed: int = 0
    encoded: int = 0
    from_cache: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)

    def fail(self, image: str, error: str) -> None:
        self.failed.append({"image": image, "error": error})
        self.emit({"image": image, "status": "failed", "error": error})
        self.done += 1

    def tick(self) -> None:
        if self.progress is not None:
            elapsed = time.perf_counter() - self.start
            self.progress(
                self.done, self.total, {"images_per_s": self.processed / elapsed if elapsed > 0 else 0.0}
            )


def _skip_done(
    items: list[InputImage], plans: list[OutputPlan], skip_existing: bool, tally: _Tally
) -> list[tuple[InputImage, OutputPlan]]:
    """Record the images whose outputs all exist (with ``skip_existing``) as skipped; return the rest."""
    todo = []
    for im, plan in zip(items, plans):
        if skip_existing and plan.all_exist():
            tally.skipped += 1
            tally.done += 1
            files = {f: str(p) for f, p in plan.files.items()}
            tally.emit({"image": str(im.path), "status": "skipped", "outputs": files})
        else:
            todo.append((im, plan))
    return todo


def _write_batch(
    segmenter: Segmenter,
    batch: list[tuple[int, Any, Any, str | None]],
    todo: list[tuple[InputImage, OutputPlan]],
    tally: _Tally,
    *,
    max_crops: int,
    feature_cache: Any | None,
) -> None:
    """Predict the decoded images of one DataLoader batch and write their outputs; record failures."""
    good = [(i, image, prep) for i, image, prep, error in batch if error is None]
    results, from_cache = segmenter.predict_images(
        [image for _, image, _ in good],
        [prep for _, _, prep in good],
        [todo[i][0].path for i, _, _ in good],
        max_crops=max_crops,
        feature_cache=feature_cache,
    )
    tally.from_cache += from_cache
    tally.encoded += len(good) - from_cache
    by_index = {i: (image, res) for (i, image, _), res in zip(good, results)}
    eval_cfg = segmenter.eval_cfg
    for i, _, _, error in batch:
        im, plan = todo[i]
        if error is not None:
            logger.warning("skipping %s: %s", im.path, error)
            tally.fail(str(im.path), error)
            continue
        image, (label, scores) = by_index[i]
        record = write_outputs(
            plan, image, label, scores, list(segmenter.classes), str(im.path), float(eval_cfg.bg_thresh)
        )
        tally.done += 1
        tally.processed += 1
        tally.emit({"image": record["image"], "status": "ok", **record})
        logger.debug("segmented %s -> %s", im.path, plan.stem_rel)


def run_plans(
    segmenter: Segmenter,
    items: list[InputImage],
    plans: list[OutputPlan],
    out_dir: Path,
    *,
    formats: Sequence[str],
    skip_existing: bool,
    batch_size: int,
    num_workers: int,
    missing: Sequence[tuple[str, str]],
    on_record: Callable[[Record], None] | None,
    progress: Callable[[int, int, dict[str, Any]], None] | None,
    feature_cache: Any | None,
) -> SegmentSummary:
    """Segment ``items`` into their output ``plans`` (the loop of :meth:`.segmenter.Segmenter.run`, which
    documents the arguments); the segmenter is only used when an image needs segmenting."""
    tally = _Tally(
        total=len(items) + len(missing), emit=on_record or (lambda record: None), progress=progress
    )
    for item, reason in missing:
        tally.fail(item, f"input {reason}: {item}")
    todo = _skip_done(items, plans, skip_existing, tally)
    tally.tick()
    if todo:
        loader = torch.utils.data.DataLoader(
            _DecodeDataset([im.path for im, _ in todo], segmenter.eval_cfg),
            batch_size=max(int(batch_size), 1),
            shuffle=False,
            num_workers=max(int(num_workers), 0),
            collate_fn=_as_list,
            worker_init_fn=functools.partial(_worker_init, parent_pid=os.getpid())
            if num_workers > 0
            else None,
        )
        max_crops = max(int(batch_size), 1) * 8
        batches = iter(loader)
        try:
            for batch in batches:
                _write_batch(segmenter, batch, todo, tally, max_crops=max_crops, feature_cache=feature_cache)
                tally.tick()
        finally:
            _close_loader(batches)
    return _summary(segmenter, tally, out_dir, formats, feature_cache is not None)


def _summary(
    segmenter: Segmenter, tally: _Tally, out_dir: Path, formats: Sequence[str], cached: bool
) -> SegmentSummary:
    seconds = time.perf_counter() - tally.start
    return SegmentSummary(
        out_dir=str(out_dir),
        classes=list(segmenter.classes),
        formats=list(formats),
        total=tally.total,
        processed=tally.processed,
        skipped=tally.skipped,
        failed=tally.failed,
        seconds=round(seconds, 3),
        images_per_s=round(tally.processed / seconds, 3) if seconds > 0 else 0.0,
        backend=segmenter.backend,
        device=str(segmenter.device),
        text_cache=segmenter.text_cache_state,
        class_spec=segmenter.spec.to_dict(),
        feature_cache=(
            {"images_encoded": tally.encoded, "images_from_cache": tally.from_cache} if cached else None
        ),
    )
