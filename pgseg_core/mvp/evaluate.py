"""``pgseg eval`` of MVP-SEG checkpoints and the training-free baseline (docs/MVP_SEG.md §5).

Generalised zero-shot evaluation: every image is segmented over the whole vocabulary (seen + unseen, with
``background`` first when the data has one); each part (shard split or dataset split) gets its own
confusion matrix, and the ``all`` matrix over every part gives the per-class IoU from which mIoU(S),
mIoU(U) and hIoU are computed (:func:`pgseg_core.splits.seen_unseen_miou`; background in neither).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..eval.metrics import ConfusionAccumulator, metrics_from_confusion
from ..eval.report import CacheUse, CheckpointRef, EvalReport, EvalTarget
from ..eval.result import EvalResult
from ..splits import ZeroShotSplit, default_split, load_split, seen_unseen_miou
from ..utils.device import resolve_device
from .checkpoint import LoadedMethod, load_predictor
from .data import BACKGROUND, LabelledData, open_labelled, remap_label, sample_names, vocabulary
from .dense_cache import open_dense_cache

__all__ = ["evaluate_method", "ALL_PART"]

logger = logging.getLogger("pgseg.mvp")
ALL_PART = "all"


def _summary(conf: np.ndarray, vocab: list[str], n: int) -> dict[str, Any]:
    m = metrics_from_confusion(conf, vocab)
    fg = [m["per_class"][c]["IoU"] for c in vocab if c != "background"]
    fg = [v for v in fg if not np.isnan(v)]
    m["mIoU_fg"] = float(np.mean(fg)) if fg else float("nan")
    m["num_images"] = n
    return m


def _run(
    loaded: LoadedMethod,
    data: LabelledData,
    vocab: list[str],
    device: torch.device,
    max_images: int | None,
    tick: Callable[[], None] | None,
) -> dict[str, dict[str, Any]]:
    pred = loaded.predictor
    total = ConfusionAccumulator(len(vocab), device)
    results: dict[str, dict[str, Any]] = {}
    for part, samples in data.parts:
        acc = ConfusionAccumulator(len(vocab), device)
        n = 0
        for sample in samples():
            if max_images is not None and n >= max_images:
                break
            gt = remap_label(sample.label, sample_names(sample, data.background), vocab)
            label, _ = pred.predict(np.asarray(sample.image), vocab)
            gt_t = torch.from_numpy(gt).to(device)
            acc.update(label, gt_t)
            total.update(label, gt_t)
            n += 1
            if tick is not None:
                tick()
        results[part] = _summary(acc.numpy(), vocab, n)
    results[ALL_PART] = _summary(total.numpy(), vocab, sum(r["num_images"] for r in results.values()))
    return results


def _report(loaded, results, zs, vocab, dev, fc, cache, data, dataset, splits, no_bg) -> EvalReport:
    """The EvalReport of a finished run (seen / unseen from the ``all`` matrix)."""
    result = EvalResult(splits=results, eval_config=loaded.config.to_dict())
    numbers = seen_unseen_miou({c: results[ALL_PART]["per_class"][c]["IoU"] for c in vocab}, zs)
    result.seen_mIoU, result.unseen_mIoU, result.hIoU = numbers["mIoU_S"], numbers["mIoU_U"], numbers["hIoU"]
    ref = CheckpointRef(loaded.path, loaded.step, loaded.method, loaded.method, loaded.method, loaded.sha256)
    protocol = {
        "name": loaded.method,
        "family": loaded.method,
        "zero_shot_split": zs.name,
        "backbone": loaded.predictor.backbone.reference,
        "notes": [f"generalised zero-shot: {len(vocab)} classes scored per image; seen / unseen from 'all'"],
    }
    if no_bg:
        protocol["notes"].append("background pixels ignored, no background channel (VOC20 / PC59 convention)")
    use = None
    if fc is not None:
        pred = loaded.predictor
        use = CacheUse(str(cache), pred.from_cache + pred.encoded, 0, pred.encoded, pred.from_cache)
    target = EvalTarget(data=data, dataset=None, name=dataset, splits=splits, ignore_background=no_bg)
    return EvalReport(result, protocol, ref, "", "", str(dev), target, cache=use)


def evaluate_method(
    reference: str,
    data: str | None = None,
    *,
    dataset: str | None = None,
    data_root: str | None = None,
    splits: list[str] | None = None,
    zs_split: str | None = None,
    overrides: dict[str, Any] | None = None,
    device: str = "auto",
    max_images: int | None = None,
    cache: str | Path | None = None,
    out: str | Path | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    ignore_background: bool = False,
) -> EvalReport:
    """Evaluate ``baseline:BACKBONE`` or an MVP-SEG checkpoint; write the metrics JSON (``out``, default
    beside the checkpoint / in the working folder for the baseline) and return the report.

    Args:
        zs_split: a shipped split name or file (default ``demo-30-8`` for shards); gives the vocabulary and
            the seen / unseen classes.
        overrides: ``mvp.*`` settings (templates, short_side, max_long, gpr).
        ignore_background: shards only: background pixels are ignored (255) and the vocabulary has no
            background, so every labelled pixel is scored over the classes alone (the VOC20 / PC59 convention
            of MVP-SEG's benchmarks; ``bg_thresh`` then has no effect).

    Raises:
        ConfigError (also ``ignore_background`` with a dataset), DataError, CheckpointError, OutputError as
        the steps they come from.
    """
    from ..eval.report import check_ignore_background, check_metrics_path, write_metrics

    check_ignore_background(dataset, ignore_background)

    zs: ZeroShotSplit = load_split(zs_split or default_split(dataset))
    dev = resolve_device(device)
    loaded = load_predictor(
        reference, dev, {k: v for k, v in (overrides or {}).items() if k.startswith("mvp.")}
    )
    if out is None:
        base = Path(loaded.path).parent if loaded.method == "mvp-seg" else Path(".")
        out = base / ("metrics.json" if dataset is None else f"metrics_{dataset}_{loaded.method}.json")
    check_metrics_path(out)
    labelled = open_labelled(data, dataset, data_root, parts=splits, zs=zs)
    vocab = vocabulary(labelled, list(zs.classes))
    if ignore_background:  # label 0 is remapped to 255 as a name outside the vocabulary (remap_label)
        vocab = [c for c in vocab if c != BACKGROUND]
    fc = None
    if cache is not None:
        fc = open_dense_cache(
            cache, loaded.predictor.backbone, loaded.config.short_side, loaded.config.max_long
        )
        loaded.predictor.cache = fc
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], None)

    try:
        results = _run(loaded, labelled, vocab, dev, max_images, tick)
    finally:
        if fc is not None:
            fc.close()
    report = _report(loaded, results, zs, vocab, dev, fc, cache, data, dataset, splits, ignore_background)
    return write_metrics(report, out)
