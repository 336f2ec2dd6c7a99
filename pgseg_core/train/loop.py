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


def _prepare(cfg: RunConfig, out_dir: str | Path) -> tuple[RunConfig, torch.device, Path]:
    """Device (preset ``cuda_overrides`` on CUDA), the run directory with ``config.json``, seeds."""
    device = resolve_device(cfg.train.device)
    if device.type == "cuda" and cfg.cuda_overrides:
        cfg = apply_overrides(cfg, cfg.cuda_overrides)
        _log.info("CUDA device: applied the preset's cuda_overrides %s", cfg.cuda_overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    _seed_all(cfg.train.seed)
    return cfg, device, out


def _restore(model, optimizer, last: Path, resume: bool, init_checkpoint: str | None) -> int:
    """Resume from ``last`` (model, optimizer, step) or init from ``init_checkpoint``; the first step."""
    if resume and last.exists():
        ckpt = read_checkpoint_file(last)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{last} is not a pgseg checkpoint; remove it or train into a new run directory"
            )
        model.load_state_dict(ckpt["model"], strict=False)
        if "optimizer" in ckpt:
            optimizer.load_state_dict(ckpt["optimizer"])
        # the schedule is rebuilt from the (possibly changed) config; step_update(step) positions it
        start_step = int(ckpt.get("step", 0))
        _log.info("resumed from %s at step %d", last, start_step)
        return start_step
    if init_checkpoint:
        init_from(model, init_checkpoint)  # logs which keys were new / ignored
    return 0


class _LossWindow:
    """Summed losses of the steps since the last ``metrics.jsonl`` line, and when that window began."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0
        self.t = time.time()

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.detach())
        self.n += 1


@dataclass
class _Trainer:
    """One run's model, optimizer and schedule; :meth:`run` trains from a step to ``cfg.train.steps``."""

    cfg: RunConfig
    model: Any
    optimizer: Any
    scheduler: Any
    last: Path
    progress: ProgressFn | None
    autocast: Any

    def step(self, step: int, inputs: dict[str, torch.Tensor], captions: list[str]):
        """One optimizer step; returns (losses, grad norm before clipping)."""
        self.model.img_encoder.set_hard_assignment(step >= self.cfg.train.hard_assign_start)
        self.scheduler.step_update(step)
        with self.autocast:
            losses = self.model.forward_train(captions, **inputs)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss became {loss.item()} at step {step}; lower train.lr")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], self.cfg.train.grad_clip
        )
        self.optimizer.step()
        return losses, grad_norm

    def log_line(self, mfile, window: _LossWindow, done: int, grad_norm, t0: float) -> dict[str, float]:
        """Write the window's mean losses, lr, grad norm, logit scale and speed to ``metrics.jsonl``."""
        dt = max(time.time() - window.t, 1e-9)
        record = {k: v / window.n for k, v in window.sums.items()}
        record.update(
            step=done,
            lr=self.optimizer.param_groups[0]["lr"],
            grad_norm=float(grad_norm),
            logit_scale=self.model.logit_scale_value(),
            images_per_s=window.n * self.cfg.train.batch_size / dt,
            elapsed_s=time.time() - t0,
        )
        mfile.write(json.dumps(record) + "\n")
        mfile.flush()
        return record

    def run(self, batches, mfile, start_step: int, t0: float) -> tuple[int, bool, int, dict[str, float]]:
        """Train to ``cfg.train.steps`` or the time budget; (last step, stopped early, images, last log)."""
        cfg, steps = self.cfg, self.cfg.train.steps
        seen, stopped_early, step, final = 0, False, start_step, {}
        window = _LossWindow()
        for step in range(start_step, steps):
            if cfg.train.time_budget_s > 0 and time.time() - t0 > cfg.train.time_budget_s:
                stopped_early = True
                _log.warning(
                    "time budget of %.0f s reached at step %d; stopping", cfg.train.time_budget_s, step
                )
                break
            inputs, captions = next(batches)
            if step == start_step:
                window.t = time.time()
            losses, grad_norm = self.step(step, inputs, captions)
            seen += len(captions)
            window.add(losses)
            done = step + 1
            if done % cfg.train.log_every == 0 or done == steps:
                final = self.log_line(mfile, window, done, grad_norm, t0)
                window = _LossWindow()
                if self.progress:
                    self.progress("train", done, steps, final)
            elif self.progress:
                self.progress("train", done, steps, {})
            if done % cfg.train.ckpt_every == 0 and done < steps:
                save_checkpoint(self.last, self.model, cfg, done, self.optimizer, final)
        else:
            step = steps
        return step, stopped_early, seen, final


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
        raise ConfigError("no training data: set data.train to shards (a directory with index.json)")
    cfg, device, out = _prepare(cfg, out_dir)
    model = create_model(cfg.model).to(device)
    optimizer = build_optimizer(model, cfg.train, device)
    scheduler = build_scheduler(optimizer, cfg.train)
    last = out / "last.pt"
    start_step = _restore(model, optimizer, last, resume, init_checkpoint)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda" and cfg.train.amp
        else nullcontext()
    )
    model.train()
    t0 = time.time()
    trainer = _Trainer(cfg, model, optimizer, scheduler, last, progress, autocast)
    batches = _image_batches(cfg, model, device, out, progress)
    with open(out / "metrics.jsonl", "a") as mfile:
        step, stopped_early, seen, final = trainer.run(batches, mfile, start_step, t0)
    end_step = step if stopped_early else cfg.train.steps
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
