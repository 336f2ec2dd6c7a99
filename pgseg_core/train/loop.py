"""The training loop: one device, bf16 autocast on CUDA, AdamW + warm-up/cosine, grad clipping,
``metrics.jsonl``, atomic self-describing checkpoints, resume and overwrite.

A run directory holds ``last.pt`` (written atomically every ``train.ckpt_every`` steps and at the end),
``metrics.jsonl`` (one row per ``train.log_every`` steps, flushed as written), ``config.json`` and, for a
frozen hybrid stem, ``stem_cache.h5``. A process killed at any point (``kill -9``) leaves the previous
``last.pt`` whole; resuming drops the rows the killed process logged after that checkpoint, so every step
appears once.
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
from ..data.skips import skip_metrics
from ..data.sources.named import resolve_train_sources
from ..kernels import configure as configure_kernels
from ..models.factory import create_model
from ..utils.claims import claim_folder
from ..utils.device import resolve_device
from ..utils.io import atomic_write, atomic_write_json, output_error, remove_stale_temps
from .observers import RunObserver
from .optim import build_optimizer, build_scheduler

__all__ = ["fit", "TrainResult", "ProgressFn", "RUN_MARKERS"]

#: The files that show a folder holds a training run (``claim_folder`` markers).
RUN_MARKERS = ("last.pt", "metrics.jsonl")

_log = logging.getLogger("pgseg.train")

ProgressFn = Callable[[str, int, int, dict[str, Any]], None]  # (phase, done, total, info)


@dataclass
class TrainResult:
    """What :func:`fit` did.

    Attributes:
        steps: the step the run stands at (its checkpoint's step).
        start_step: the step this call started from (0, or the resumed checkpoint's step).
        stopped_early: the time budget ended the call before ``train.steps``.
    """

    out_dir: str
    steps: int
    checkpoint: str
    device: str
    seconds: float
    final: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    start_step: int = 0

    @property
    def trained(self) -> int:
        """Steps trained by this call (``steps - start_step``)."""
        return self.steps - self.start_step


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


def _prepare(cfg: RunConfig, out: Path) -> tuple[RunConfig, torch.device]:
    """Device (preset ``cuda_overrides`` on CUDA), ``config.json`` in the run directory, seeds, kernels."""
    device = resolve_device(cfg.train.device)
    configure_kernels(cfg.train.kernels)  # docs/KERNELS.md §1
    if device.type == "cuda" and cfg.cuda_overrides:
        cfg = apply_overrides(cfg, cfg.cuda_overrides)
        _log.info("CUDA device: applied the preset's cuda_overrides %s", cfg.cuda_overrides)
    try:
        atomic_write_json(out / "config.json", cfg.to_dict())
    except OSError as e:
        raise output_error(out / "config.json", e) from e
    _seed_all(cfg.train.seed)
    return cfg, device


def _metrics_rows(path: Path, upto: int) -> tuple[list[str], int]:
    """The lines of ``path`` whose step is at most ``upto``, and how many other lines there were (rows of a
    killed run after its last checkpoint, a torn last line)."""
    try:
        lines = path.read_text().splitlines() if path.exists() else []
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {path} to resume: {e}") from e
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
            step = int(row["step"])
        except (ValueError, TypeError, KeyError):
            continue
        if step <= upto:
            kept.append(line)
    return kept, len(lines) - len(kept)


def _start_metrics(out: Path, start_step: int, overwrite: bool) -> Path:
    """Make ``metrics.jsonl`` hold exactly the rows up to ``start_step`` (none for a new run), rewritten
    atomically; with ``overwrite`` the old ``last.pt`` goes first, so a killed start leaves no mixed run."""
    path = out / "metrics.jsonl"
    try:
        if overwrite:
            (out / "last.pt").unlink(missing_ok=True)
        kept, dropped = ([], 0) if overwrite else _metrics_rows(path, start_step)
        if dropped:
            _log.info(
                "metrics.jsonl: dropped %d rows logged after step %d (an interrupted run)",
                dropped,
                start_step,
            )
        atomic_write(path, lambda tmp: Path(tmp).write_text("".join(f"{ln}\n" for ln in kept)))
    except OSError as e:
        raise output_error(path, e) from e
    return path


def _restore(
    model, optimizer, last: Path, resume: bool, init_checkpoint: str | None
) -> tuple[int, dict[str, float]]:
    """Resume from ``last`` (model, optimizer, step) or init from ``init_checkpoint``; the first step and
    the metrics stored with the resumed checkpoint."""
    if resume and not last.exists():
        _log.warning("no %s to resume from: starting at step 0", last)
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
        return start_step, dict(ckpt.get("metrics") or {})
    if init_checkpoint:
        init_from(model, init_checkpoint)  # logs which keys were new / ignored
    return 0, {}


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
    observer: RunObserver = field(init=False)  # curves.png, TensorBoard (checks their packages first)

    def __post_init__(self) -> None:
        self.observer = RunObserver(self.last.parent, self.cfg.train)

    def step(self, step: int, inputs: dict[str, torch.Tensor], captions: list[str]):
        """One optimizer step; returns (losses, grad norm before clipping)."""
        self.model.img_encoder.set_hard_assignment(step >= self.cfg.train.hard_assign_start)
        self.scheduler.step_update(step)
        with self.autocast:
            losses = self.model.forward_train(captions, **inputs)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise ConfigError(
                f"loss became {loss.item()} at step {step}: lower train.lr (or raise warmup_steps)"
            )
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
        record.update(skip_metrics())  # bad training samples skipped so far (data/skips.py)
        try:
            mfile.write(json.dumps(record) + "\n")
            mfile.flush()
        except OSError as e:
            raise output_error(mfile.name, e) from e
        self.observer.log(record)
        return record

    def run(self, batches, mfile, start_step: int, t0: float) -> tuple[int, bool, int, dict[str, float]]:
        """Train to ``cfg.train.steps`` or the time budget; (last step, stopped early, images, last log)."""
        cfg, steps = self.cfg, self.cfg.train.steps
        seen, stopped_early, step, final = 0, False, start_step, {}
        window = _LossWindow()
        self.observer.begin(start_step)
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
                self.observer.checkpoint()
        else:
            step = steps
        return step, stopped_early, seen, final


def fit(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    init_checkpoint: str | None = None,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train a model and write ``out_dir/{last.pt, metrics.jsonl, config.json}`` (module docstring).

    Args:
        cfg: the full run config (``cfg.data.train`` names the training shards).
        out_dir: run directory (created). One that already holds a run (``last.pt`` or ``metrics.jsonl``)
            needs ``resume`` or ``overwrite``.
        resume: continue from ``out_dir/last.pt`` (model, optimizer, step; the schedule follows the step);
            rows of ``metrics.jsonl`` after that step (logged by a killed run) are dropped. Without a
            ``last.pt`` the run starts at step 0 (with a warning).
        overwrite: start the run over: the old ``last.pt`` and ``metrics.jsonl`` are replaced; the frozen-stem
            cache ``stem_cache.h5`` depends only on the data and the stem, and is kept.
        init_checkpoint: start the weights from this checkpoint, any format ``load_checkpoint`` reads
            (non-strict, see :func:`~pgseg_core.checkpoint.init_from`: new keys are reported).
        progress: optional callback ``(phase, done, total, info)``; phases "cache" and "train".

    Temporary files of killed runs (``.last.pt.PID.XXXX.tmp``) are removed first.

    Raises:
        ConfigError: no training data given, or both ``resume`` and ``overwrite``.
        OutputError: ``out_dir`` is a file, cannot be created or written (a full disk included), or holds a
            run and neither ``resume`` nor ``overwrite`` was given.
        DataError / CheckpointError / DeviceError on bad inputs.
    """
    if resume and overwrite:
        raise ConfigError("resume and overwrite exclude each other: continue the run or start it over")
    if not cfg.data.train:
        raise ConfigError("no training data: set data.train to shards (a directory with index.json)")
    resolve_train_sources(cfg.data.train, cfg.data.datasets_file)  # bad data fails here, before any write
    out = Path(out_dir)
    claim_folder(out, RUN_MARKERS, "training run", resume=resume, overwrite=overwrite)
    remove_stale_temps(out)
    cfg, device = _prepare(cfg, out)
    model = create_model(cfg.model).to(device)
    optimizer = build_optimizer(model, cfg.train, device)
    scheduler = build_scheduler(optimizer, cfg.train)
    last = out / "last.pt"
    start_step, resumed_metrics = _restore(model, optimizer, last, resume, init_checkpoint)
    metrics = _start_metrics(out, start_step, overwrite)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda" and cfg.train.amp
        else nullcontext()
    )
    model.train()
    t0 = time.time()
    trainer = _Trainer(cfg, model, optimizer, scheduler, last, progress, autocast)
    batches = _image_batches(cfg, model, device, out, progress)
    try:
        mfile = open(metrics, "a")
    except OSError as e:
        raise output_error(metrics, e) from e
    with mfile, trainer.observer:  # the observer draws the final curves.png on a clean exit
        step, stopped_early, seen, final = trainer.run(batches, mfile, start_step, t0)
    end_step = step if stopped_early else max(cfg.train.steps, start_step)
    if end_step > start_step or not last.exists():
        save_checkpoint(last, model, cfg, end_step, optimizer, final)
    else:  # nothing trained: the resumed checkpoint stays as it is
        final = resumed_metrics
    seconds = time.time() - t0
    done = end_step - start_step
    _log.info("trained %d steps (%d-%d, %d images) in %.0f s", done, start_step + 1, end_step, seen, seconds)
    return TrainResult(
        out_dir=str(out),
        steps=end_step,
        checkpoint=str(last),
        device=str(device),
        seconds=seconds,
        final=final,
        stopped_early=stopped_early,
        start_step=start_step,
    )
