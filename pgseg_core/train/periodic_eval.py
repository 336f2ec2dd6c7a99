"""Zero-shot evaluation during training, through ``pgseg eval``'s code (docs/TRAINING.md §6).

Every ``train.eval_every`` steps the model is evaluated on the validation splits ``train.eval_splits`` of the
shard set ``train.eval_data`` (default: the training shards' own folder) with the run's ``eval`` settings, at
most ``train.eval_images`` images per split, by :func:`pgseg_core.eval.runs.evaluate`. With several processes
every rank takes part (the samples are split and the confusion matrices all-reduced, §6); rank 0 writes one
``metrics.jsonl`` row ``{"step", "eval_<split>_mIoU", "eval_<split>_mIoU_fg", ..., "eval_seconds"}``. The
evaluation draws no random numbers and changes no buffer, so a resumed run repeats it exactly.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from ..config import RunConfig

__all__ = ["periodic_eval", "eval_due"]

_log = logging.getLogger("pgseg.train")


def eval_due(cfg: RunConfig, done: int) -> bool:
    """Whether step ``done`` ends with an evaluation."""
    every = cfg.train.eval_every
    return every > 0 and done % every == 0


def periodic_eval(model: Any, cfg: RunConfig, device: torch.device, done: int) -> dict[str, Any]:
    """Evaluate ``model`` (then put back in training mode) and return the ``metrics.jsonl`` row.

    Raises:
        DataError: the shard set has no such split (named), ConfigError: bad eval settings.
    """
    from ..eval.runs import evaluate

    spec = cfg.train.eval_data or cfg.data.train
    t = time.time()
    try:
        with torch.no_grad():
            splits, limit = list(cfg.train.eval_splits), cfg.train.eval_images or None
            result = evaluate(model, spec, splits=splits, eval_cfg=cfg.eval, device=device, max_images=limit)
    finally:
        model.train()
    row: dict[str, Any] = {"step": done}
    for split, m in result.splits.items():
        for key in ("mIoU", "mIoU_fg", "mAcc", "aAcc"):
            if key in m:
                row[f"eval_{split}_{key}"] = float(m[key])
    if result.hIoU is not None:
        row["eval_hIoU"] = float(result.hIoU)
    row["eval_seconds"] = time.time() - t
    _log.info("step %d: zero-shot eval %s", done, {k: round(v, 2) for k, v in row.items() if "mIoU" in k})
    return row
