"""The training loop: one device, bf16 autocast on CUDA, AdamW + warm-up/cosine, grad clipping,
``metrics.jsonl``, atomic self-describing checkpoints and ``--resume``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..checkpoint import CHECKPOINT_FORMAT, init_from, read_checkpoint_file, save_checkpoint
from ..config import RunConfig, apply_overrides
from ..errors import CheckpointError, ConfigError
from ..models.factory import create_model
from ..utils.device import resolve_device
from .optim import build_optimizer, build_scheduler

__all__ = ["fit", "TrainResult", "ProgressFn"]

_log = logging.getLogger("pgseg.train")

ProgressFn = Callable[[str, int, int, dict[str, Any]], None]  # (phase, done, total, info)


@dataclass
class TrainResult:
    out_dir: str
    steps: int
    checkpoint: str
    device: str
    seconds: float
    final: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _image_batches(cfg: RunConfig, model, device, out_dir: Path, progress: ProgressFn | None):
    """Yield (kwargs for forward_train, captions) forever: cached stem features or decoded images."""
    hybrid = model.img_encoder.hybrid
    if hybrid is not None and hybrid.frozen and cfg.data.cache_frozen_stem:
        from ..cache.stem import build_stem_cache

        def cb(done: int, total: int | None) -> None:
            if progress:
                progress("cache", done, total or 0, {})

        cache = build_stem_cache(
            model, cfg.data.train, out_dir / "stem_cache.h5", cfg.data.img_size, device, progress=cb
        )
        _log.info("training on %d cached stem features", len(cache))
        for feats, captions in cache.batches(cfg.train.batch_size, cfg.train.seed, cfg.data.hflip):
            yield {"stem_feats": feats.to(device, non_blocking=True)}, captions
    else:
        from ..data.loader import make_train_loader

        for batch in make_train_loader(cfg.data, cfg.train.batch_size, cfg.train.seed):
            yield {"images": batch["image"].to(device, non_blocking=True)}, batch["text"]


def fit(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    init_checkpoint: str | None = None,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train a model and write ``out_dir/{last.pt, step_N.pt, metrics.jsonl, config.json}``.

    Args:
        cfg: the full run config (``cfg.data.train`` names the training shards).
        out_dir: run directory (created).
        resume: continue from ``out_dir/last.pt`` (model, optimizer, scheduler, step).
        init_checkpoint: start the weights from this checkpoint, any format ``load_checkpoint`` reads
            (non-strict, see :func:`~pgseg_core.checkpoint.init_from`: new keys are reported).
        progress: optional callback ``(phase, done, total, info)``; phases "cache" and "train".

    Raises:
        ConfigError: no training data given. DataError / CheckpointError / DeviceError on bad inputs.
    """
    if not cfg.data.train:
        raise ConfigError("no training data: pass --data DIR (shards with index.json) or set data.train")
    device = resolve_device(cfg.train.device)
    if device.type == "cuda" and cfg.cuda_overrides:
        cfg = apply_overrides(cfg, cfg.cuda_overrides)
        _log.info("CUDA device: applied the preset's cuda_overrides %s", cfg.cuda_overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    _seed_all(cfg.train.seed)

    model = create_model(cfg.model).to(device)
    start_step = 0
    optimizer = build_optimizer(model, cfg.train, device)
    scheduler = build_scheduler(optimizer, cfg.train)
    last = out / "last.pt"
    if resume and last.exists():
        ckpt = read_checkpoint_file(last)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{last} is not a pgseg checkpoint; remove it or train into a new --out")
        model.load_state_dict(ckpt["model"], strict=False)
        if "optimizer" in ckpt:
            optimizer.load_state_dict(ckpt["optimizer"])
        # the schedule is rebuilt from the (possibly changed) config; step_update(step) positions it
        start_step = int(ckpt.get("step", 0))
        _log.info("resumed from %s at step %d", last, start_step)
    elif init_checkpoint:
        init_from(model, init_checkpoint)  # logs which keys were new / ignored

    steps = cfg.train.steps
    metrics_path = out / "metrics.jsonl"
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda" and cfg.train.amp
        else nullcontext()
    )
    model.train()
    t0 = time.time()
    seen = 0
    window: dict[str, float] = {}
    n_window = 0
    t_window = time.time()
    stopped_early = False
    step = start_step
    final: dict[str, float] = {}
    batches = _image_batches(cfg, model, device, out, progress)
    with open(metrics_path, "a") as mfile:
        for step in range(start_step, steps):
            if cfg.train.time_budget_s > 0 and time.time() - t0 > cfg.train.time_budget_s:
                stopped_early = True
                _log.warning(
                    "time budget of %.0f s reached at step %d; stopping", cfg.train.time_budget_s, step
                )
                break
            inputs, captions = next(batches)
            if step == start_step:
                t_window = time.time()
            model.img_encoder.set_hard_assignment(step >= cfg.train.hard_assign_start)
            scheduler.step_update(step)
            with autocast:
                losses = model.forward_train(captions, **inputs)
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise RuntimeError(f"loss became {loss.item()} at step {step}; lower train.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], cfg.train.grad_clip
            )
            optimizer.step()
            seen += len(captions)
            for k, v in losses.items():
                window[k] = window.get(k, 0.0) + float(v.detach())
            n_window += 1
            done = step + 1
            if done % cfg.train.log_every == 0 or done == steps:
                dt = max(time.time() - t_window, 1e-9)
                record = {k: v / n_window for k, v in window.items()}
                record.update(
                    step=done,
                    lr=optimizer.param_groups[0]["lr"],
                    grad_norm=float(grad_norm),
                    logit_scale=model.logit_scale_value(),
                    images_per_s=n_window * cfg.train.batch_size / dt,
                    elapsed_s=time.time() - t0,
                )
                mfile.write(json.dumps(record) + "\n")
                mfile.flush()
                final = record
                window, n_window, t_window = {}, 0, time.time()
                if progress:
                    progress("train", done, steps, record)
            elif progress:
                progress("train", done, steps, {})
            if done % cfg.train.ckpt_every == 0 and done < steps:
                save_checkpoint(last, model, cfg, done, optimizer, final)
        else:
            step = steps
    end_step = step if stopped_early else steps
    save_checkpoint(last, model, cfg, end_step, optimizer, final)
    seconds = time.time() - t0
    _log.info("trained %d steps (%d images) in %.0f s", end_step - start_step, seen, seconds)
    return TrainResult(
        out_dir=str(out),
        steps=end_step,
        checkpoint=str(last),
        device=str(device),
        seconds=seconds,
        final=final,
        stopped_early=stopped_early,
    )
