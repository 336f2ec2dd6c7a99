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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..checkpoint import init_from, save_checkpoint
from ..config import RunConfig, apply_overrides
from ..errors import CheckpointError, ConfigError
from ..data.skips import skip_metrics
from ..data.sources.named import resolve_train_sources
from ..kernels import configure as configure_kernels
from ..models.factory import create_model
from ..utils.claims import claim_folder
from ..utils.device import resolve_device
from ..utils.io import atomic_write, atomic_write_json, output_error, remove_stale_temps
from . import distributed as dist
from .batches import BatchStream
from .observers import RunObserver
from .optim import build_optimizer, build_scheduler
from .periodic_eval import eval_due, periodic_eval
from .speed import checkpoint_activations, maybe_compile
from .state import PREV_NAME, capture_rng, keep_previous, read_resume_checkpoint, restore_rng

__all__ = ["fit", "TrainResult", "ProgressFn", "RUN_MARKERS"]

#: The files that show a folder holds a training run (``claim_folder`` markers).
RUN_MARKERS = ("last.pt", "metrics.jsonl", PREV_NAME)

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


def _prepare(cfg: RunConfig, out: Path, main: bool) -> tuple[RunConfig, torch.device]:
    """Device (preset ``cuda_overrides`` on CUDA), ``config.json`` in the run directory (rank 0), kernels."""
    device = resolve_device(cfg.train.device)
    configure_kernels(cfg.train.kernels)  # docs/KERNELS.md §1
    if device.type == "cuda" and cfg.cuda_overrides:
        cfg = apply_overrides(cfg, cfg.cuda_overrides)
        _log.info("CUDA device: applied the preset's cuda_overrides %s", cfg.cuda_overrides)
    if main:
        try:
            atomic_write_json(out / "config.json", cfg.to_dict())
        except OSError as e:
            raise output_error(out / "config.json", e) from e
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
            (out / PREV_NAME).unlink(missing_ok=True)
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
) -> tuple[int, dict[str, float], dict[str, Any] | None]:
    """Resume from the newest complete checkpoint of the run (model, optimizer, step) or init
    from ``init_checkpoint``; (the first step, the metrics stored with the resumed checkpoint, the per-rank
    states: RNG and data position; None when starting fresh, empty for an older checkpoint without them)."""
    found = read_resume_checkpoint(last) if resume else None
    if resume and found is None:
        _log.warning("no %s to resume from: starting at step 0", last)
    if found is not None:
        path, ckpt = found
        model.load_state_dict(ckpt["model"], strict=False)
        if "optimizer" in ckpt:
            optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt.get("train_state") or {}
        # the schedule is a function of the step and the (possibly changed) config: step_update(step)
        start_step = int(ckpt.get("step", 0))
        _log.info("resumed from %s at step %d", path, start_step)
        return start_step, dict(ckpt.get("metrics") or {}), state.get("ranks") or []
    if init_checkpoint:
        init_from(model, init_checkpoint)  # logs which keys were new / ignored
    return 0, {}, None


def _resume_rank(ranks: list[dict[str, Any]] | None, info: dist.DistInfo, batches: BatchStream) -> None:
    """Give this rank its saved RNG states and data position (``ranks`` None: a new run; empty: a checkpoint
    of an older pgseg, which continues from re-seeded RNGs and the start of the data stream, with a
    warning)."""
    if ranks is None:  # a new run
        return
    if not ranks:
        _log.warning(
            "the checkpoint has no RNG states or data position (an older pgseg): the resumed run re-seeds "
            "and restarts the data stream, so it will not match an uninterrupted run"
        )
        return
    if len(ranks) != info.world:
        raise CheckpointError(
            f"the checkpoint was written by {len(ranks)} processes and this run has {info.world}: resume "
            "with the same number of processes"
        )
    mine = ranks[info.rank]
    batches.load_state_dict(mine["data"])
    restore_rng(mine["rng"])


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

    def means(self) -> dict[str, float]:
        """Mean of each loss over the window's steps and over the ranks (the global-batch loss)."""
        keys = sorted(self.sums)
        vals = torch.tensor([self.sums[k] / self.n for k in keys], dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            vals = vals.to(_collective_device())
            torch.distributed.all_reduce(vals)
            vals = vals.cpu() / torch.distributed.get_world_size()
        return dict(zip(keys, vals.tolist()))


def _collective_device() -> torch.device:
    backend = torch.distributed.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


@dataclass
class _Trainer:
    """One run's model, optimizer and schedule; :meth:`run` trains from a step to ``cfg.train.steps``."""

    cfg: RunConfig
    model: Any
    forward: Any  # the model's training forward, DDP-wrapped with several processes
    optimizer: Any
    scheduler: Any
    last: Path
    progress: ProgressFn | None
    autocast: Any
    info: dist.DistInfo
    batches: BatchStream
    observer: RunObserver = field(init=False)  # curves.png, TensorBoard: rank 0 only

    def __post_init__(self) -> None:
        train_cfg = self.cfg.train
        if not self.info.main:
            train_cfg = replace(train_cfg, curves=False, tensorboard=False)
        self.observer = RunObserver(self.last.parent, train_cfg)

    def step(self, step: int, inputs: dict[str, torch.Tensor], captions: list[str]):
        """One optimizer step; returns (losses, grad norm before clipping)."""
        return train_step(self.cfg, self.model, self.forward, self.optimizer, self.scheduler, step, inputs,
                          captions, self.autocast)  # fmt: skip

    def save(self, done: int, final: dict[str, float]) -> None:
        """Every rank's RNG states and data position, gathered; rank 0 writes ``last.pt`` (keeping the
        previous one as ``last.prev.pt``)."""
        ranks = dist.gather_objects({"rng": capture_rng(), "data": self.batches.state_dict()})
        if self.info.main:
            try:
                keep_previous(self.last)
            except OSError as e:
                raise output_error(self.last.with_name(PREV_NAME), e) from e
            state = {"ranks": ranks, "world": self.info.world}
            save_checkpoint(self.last, self.model, self.cfg, done, self.optimizer, final,
                            extra={"train_state": state})  # fmt: skip
        dist.barrier()

    def log_line(self, mfile, window: _LossWindow, done: int, grad_norm, t0: float) -> dict[str, float]:
        """Write the window's mean losses, lr, grad norm, logit scale and speed to ``metrics.jsonl``."""
        record = window.means()  # a collective: every rank calls it
        dt = max(time.time() - window.t, 1e-9)
        record.update(
            step=done,
            lr=self.optimizer.param_groups[0]["lr"],
            grad_norm=float(grad_norm),
            logit_scale=self.model.logit_scale_value(),
            images_per_s=window.n * self.cfg.train.batch_size / dt,
            elapsed_s=time.time() - t0,
        )
        record.update(skip_metrics())  # bad training samples this rank skipped so far (data/skips.py)
        self.write_row(mfile, record)
        return record

    def write_row(self, mfile, record: dict[str, Any]) -> None:
        """One ``metrics.jsonl`` line (rank 0: ``mfile`` is None on the other ranks)."""
        if mfile is None:
            return
        try:
            mfile.write(json.dumps(record) + "\n")
            mfile.flush()
        except OSError as e:
            raise output_error(mfile.name, e) from e
        self.observer.log(record)

    def run(self, mfile, start_step: int, t0: float) -> tuple[int, bool, int, dict[str, float]]:
        """Train to ``cfg.train.steps`` or the time budget; (last step, stopped early, images, last log)."""
        cfg, steps = self.cfg, self.cfg.train.steps
        seen, stopped_early, step, final = 0, False, start_step, {}
        window = _LossWindow()
        progress = self.progress if self.info.main else None
        self.observer.begin(start_step)
        for step in range(start_step, steps):
            if _out_of_time(cfg, t0, step):
                stopped_early = True
                break
            inputs, captions = next(self.batches)
            if step == start_step:
                window.t = time.time()
            losses, grad_norm = self.step(step, inputs, captions)
            seen += len(captions) * self.info.world
            window.add(losses)
            done = step + 1
            if done % cfg.train.log_every == 0 or done == steps:
                final = self.log_line(mfile, window, done, grad_norm, t0)
                window = _LossWindow()
                if progress:
                    progress("train", done, steps, final)
            elif progress:
                progress("train", done, steps, {})
            if eval_due(cfg, done):
                self.write_row(mfile, periodic_eval(self.model, cfg, self.batches.device, done))
            if done % cfg.train.ckpt_every == 0 and done < steps:
                self.save(done, final)
                self.observer.checkpoint()
        else:
            step = steps
        return step, stopped_early, seen, final


def _out_of_time(cfg: RunConfig, t0: float, step: int) -> bool:
    """The time budget is spent (rank 0 decides, so every rank stops at the same step)."""
    late = cfg.train.time_budget_s > 0 and time.time() - t0 > cfg.train.time_budget_s
    late = bool(dist.broadcast_object(late)) if cfg.train.time_budget_s > 0 else False
    if late:
        _log.warning("time budget of %.0f s reached at step %d; stopping", cfg.train.time_budget_s, step)
    return late


def train_step(cfg: RunConfig, model, forward, optimizer, scheduler, step: int, inputs, captions, autocast):
    """One optimizer step of ``forward`` (the DDP-wrapped or plain training forward) on this rank's batch;
    with ``train.grad_cache_chunks`` > 1 it goes through :func:`pgseg_core.train.gradcache.grad_cache_step`.

    Returns:
        (losses: the loss dict of this rank's batch, detached; grad norm before clipping).

    Raises:
        ConfigError: the loss is not finite (names the step and the fix).
    """
    model.img_encoder.set_hard_assignment(step >= cfg.train.hard_assign_start)
    scheduler.step_update(step)
    optimizer.zero_grad(set_to_none=True)
    chunks = cfg.train.grad_cache_chunks
    if chunks > 1:
        from .gradcache import grad_cache_step

        losses = grad_cache_step(model, forward, captions, inputs, chunks, autocast)
        _check_finite(losses["loss"], step)
    else:
        with autocast:
            losses = forward(captions, **inputs)
        _check_finite(losses["loss"], step)
        losses["loss"].backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(
        [p for p in model.parameters() if p.requires_grad], cfg.train.grad_clip
    )
    optimizer.step()
    return {k: v.detach() for k, v in losses.items()}, grad_norm


def _check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise ConfigError(f"loss became {loss.item()} at step {step}: lower train.lr (or raise warmup_steps)")


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
    joined = torch.distributed.is_available() and torch.distributed.is_initialized()
    info, _ = dist.setup(resolve_device(cfg.train.device))
    owned = info.active and not joined  # a process group this call joined is left at its end
    try:
        return _fit(cfg, Path(out_dir), info, resume, overwrite, init_checkpoint, progress)
    finally:
        if owned:
            dist.teardown()


def _local_batch(cfg: RunConfig, info: dist.DistInfo) -> int:
    """This rank's share of the global ``train.batch_size``."""
    if cfg.train.batch_size % info.world:
        raise ConfigError(
            f"train.batch_size ({cfg.train.batch_size}) is the global batch and must divide evenly over "
            f"{info.world} processes: use a multiple of {info.world}"
        )
    return cfg.train.batch_size // info.world


def _claim(out: Path, info: dist.DistInfo, resume: bool, overwrite: bool) -> None:
    """Rank 0 claims the run folder and removes dead temp files; the others wait for it."""
    if info.main:
        claim_folder(out, RUN_MARKERS, "training run", resume=resume, overwrite=overwrite)
        remove_stale_temps(out)
    dist.barrier()


def _fit(cfg, out: Path, info, resume, overwrite, init_checkpoint, progress) -> TrainResult:
    _claim(out, info, resume, overwrite)
    local_batch = _local_batch(cfg, info)
    cfg, device = _prepare(cfg, out, info.main)
    _, device = dist.setup(device)
    _seed_all(cfg.train.seed)  # the same initial weights on every rank
    model = create_model(cfg.model).to(device)
    optimizer = build_optimizer(model, cfg.train, device)
    scheduler = build_scheduler(optimizer, cfg.train)
    last = out / "last.pt"
    start_step, resumed_metrics, ranks = _restore(model, optimizer, last, resume, init_checkpoint)
    metrics = _start_metrics(out, start_step, overwrite) if info.main else None
    dist.barrier()
    if info.rank > 0:  # Gumbel noise, dropout, prompt sampling differ per rank (rank 0: the 1-process run)
        _seed_all(cfg.train.seed + 1_000_003 * info.rank)
    if cfg.train.activation_checkpointing:
        checkpoint_activations(model)
    forward = maybe_compile(
        dist.wrap_model(model, info, device), cfg.train.compile, cfg.train.compile_backend
    )
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda" and cfg.train.amp
        else nullcontext()
    )
    model.train()
    batches = BatchStream(cfg, model, device, out, local_batch, info.rank, progress if info.main else None)
    _resume_rank(ranks, info, batches)
    t0 = time.time()
    trainer = _Trainer(cfg, model, forward, optimizer, scheduler, last, progress, autocast, info, batches)
    try:
        mfile = open(metrics, "a") if metrics is not None else nullcontext()
    except OSError as e:
        raise output_error(metrics, e) from e
    with mfile, trainer.observer:  # the observer draws the final curves.png on a clean exit
        step, stopped_early, seen, final = trainer.run(mfile if metrics else None, start_step, t0)
    end_step = step if stopped_early else max(cfg.train.steps, start_step)
    if dist.broadcast_object(end_step > start_step or not last.exists()):
        trainer.save(end_step, final)
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
