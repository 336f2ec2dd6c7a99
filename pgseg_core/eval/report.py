"""``pgseg eval`` for a loaded checkpoint: pick the protocol, open the feature cache, run, write metrics JSON.

The result is an :class:`EvalReport`: the :class:`~pgseg_core.eval.result.EvalResult` plus where it came from
(protocol, checkpoint identity, config hashes, device, dataset counts, cache use). ``to_dict()`` is the
``metrics.json`` layout (docs/EVAL.md).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import EvalConfig, RunConfig, config_hash, eval_with_overrides
from ..errors import ConfigError, OutputError
from ..utils.io import atomic_write_json, check_writable_file, output_error, remove_stale_temps
from .figures import EvalFigureOptions, check_figure_support, write_eval_figures
from .observe import observing
from .protocol import ResolvedProtocol, model_family, resolve_protocol
from .result import EvalResult
from .runs import evaluate, evaluate_dataset
from .sweep import parse_sweep

__all__ = [
    "EvalReport",
    "CheckpointRef",
    "CacheUse",
    "EvalTarget",
    "check_ignore_background",
    "evaluate_loaded",
    "eval_settings",
    "metrics_path",
    "check_metrics_path",
    "write_metrics",
    "MetricsPathError",
    "MetricsWriteError",
]

logger = logging.getLogger("pgseg.eval")


@dataclass(frozen=True)
class CheckpointRef:
    """Which checkpoint was evaluated: path, training step, preset name, source format, family, sha256."""

    path: str
    step: int | None
    model: str
    source_format: str
    family: str
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "step": self.step,
            "model": self.model,
            "source_format": self.source_format,
            "family": self.family,
            "sha256": self.sha256,
            "sha256_16": self.sha256[:16],
        }


@dataclass
class CacheUse:
    """Feature-cache use of a run: entries in the file, incomplete entries dropped, images encoded / read."""

    path: str
    images: int
    dropped_incomplete: int
    images_encoded: int = 0
    images_from_cache: int = 0


@dataclass(frozen=True)
class EvalTarget:
    """What to evaluate: demo shards (``data``) or a benchmark dataset object (``dataset``, named ``name``).

    Attributes:
        data: shard directory or index.json, or None.
        dataset: an opened benchmark dataset (``pgseg_core.eval.datasets``), or None.
        name: the benchmark dataset's name (``voc21``, ...), or None for shards.
        splits: shard split names (None = all with a class list), or ``[dataset split]``.
        ignore_background: shards only: background pixels are ignored and only the classes are scored (the
            VOC20 / PC59 convention of the zero-shot splits, docs/MVP_SEG.md §5).
    """

    data: str | Path | None = None
    dataset: Any = None
    name: str | None = None
    splits: list[str] | None = None
    ignore_background: bool = False

    @property
    def split(self) -> str:
        return (self.splits or ["val"])[0]

    @property
    def cache_name(self) -> str:
        """The dataset name a feature cache records (``voc21/val`` or ``shards:/abs/path``)."""
        if self.name is not None:
            return f"{self.name}/{self.split}"
        return f"shards:{Path(str(self.data)).resolve()}"


def check_ignore_background(dataset: str | None, ignore_background: bool) -> None:
    """Refuse ``ignore_background`` on a benchmark dataset.

    Raises:
        ConfigError: both given (each benchmark has its own variant without background).
    """
    if dataset is not None and ignore_background:
        raise ConfigError(
            f"ignoring background applies to demo shards; for {dataset} evaluate its variant without "
            "background (voc20, pc59)"
        )


@dataclass
class EvalReport:
    """A finished evaluation: metrics and provenance (``metrics.json`` is :meth:`to_dict`).

    ``written_to`` is the metrics file once written; ``write_error`` the one-line reason when writing it
    failed after the evaluation (:func:`write_metrics`), the metrics then live only in this object.
    """

    result: EvalResult
    protocol: dict[str, Any]
    checkpoint: CheckpointRef
    config_hash: str
    feature_config_hash: str
    device: str
    target: EvalTarget
    cache: CacheUse | None = None
    written_to: str = ""
    write_error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    figures: Any = None  # EvalFigures drawn beside the metrics file (pgseg_core.eval.figures)

    @property
    def splits(self) -> dict[str, dict[str, Any]]:
        """Per-split metrics (:func:`pgseg_core.eval.stream.evaluate_stream`)."""
        return self.result.splits

    def to_dict(self) -> dict[str, Any]:
        """The metrics.json content: :meth:`EvalResult.to_dict` plus provenance."""
        metrics = json.loads(self.result.to_json())
        metrics["protocol"] = self.protocol
        metrics["checkpoint"] = self.checkpoint.to_dict()
        metrics["config_hash"] = self.config_hash
        metrics["feature_config_hash"] = self.feature_config_hash
        metrics["device"] = self.device
        if self.target.name is None:
            metrics["data"] = str(self.target.data)
            counts = {k: v["num_images"] for k, v in metrics["splits"].items()}
            metrics["dataset"] = {"name": "shards", "path": str(self.target.data), "splits": counts}
            metrics["dataset"]["background"] = "ignored" if self.target.ignore_background else "scored"
        if self.cache is not None:
            metrics["cache"] = dict(vars(self.cache))
        return metrics


def eval_settings(
    cfg: RunConfig, protocol: str | None, dataset: str | None, overrides: dict[str, Any] | None
) -> tuple[EvalConfig, ResolvedProtocol | None]:
    """The eval settings of a run: a protocol preset's (for a dataset or when one is named), else the
    checkpoint's own ``eval`` section; ``overrides`` (``{"bg_thresh": 0.5}``) apply last either way.

    Raises:
        ConfigError: unknown protocol or eval key.
    """
    if dataset is not None or protocol is not None:
        family = model_family(cfg.model)
        resolved = resolve_protocol(protocol or "groupvit", dataset or "", family, overrides)
        for note in resolved.notes:
            logger.info("protocol %s: %s", resolved.name, note)
        return resolved.eval_cfg, resolved
    return eval_with_overrides(cfg, overrides), None


def _run(model, target: EvalTarget, resolved, eval_cfg, dev, max_images, tick, fc, sweep) -> EvalResult:
    if target.dataset is not None:
        return evaluate_dataset(
            model,
            target.dataset,
            class_names=resolved.class_names,
            eval_cfg=eval_cfg,
            device=dev,
            split_name=target.split,
            max_images=max_images,
            progress=tick,
            cache=fc,
            sweep=sweep,
        )
    return evaluate(
        model,
        str(target.data),
        splits=target.splits,
        eval_cfg=eval_cfg,
        device=dev,
        max_images=max_images,
        progress=tick,
        cache=fc,
        sweep=sweep,
        with_background=not target.ignore_background,
    )


def evaluate_loaded(
    model: Any,
    cfg: RunConfig,
    checkpoint: CheckpointRef,
    target: EvalTarget,
    *,
    eval_cfg: EvalConfig,
    resolved: ResolvedProtocol | None,
    device: torch.device,
    cache: str | Path | None = None,
    sweep: str | None = None,
    max_images: int | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    figures: EvalFigureOptions | None = None,
) -> EvalReport:
    """Evaluate a loaded model on ``target`` (see :class:`EvalTarget`), with an optional feature cache.

    Args:
        model: the PGSeg-contract model on ``device``.
        cfg: its run config (model section: feature-config hash; whole: config hash).
        checkpoint: its identity (recorded in the report and the cache).
        target: shards or a benchmark dataset.
        eval_cfg, resolved: from :func:`eval_settings`.
        cache: HDF5 feature cache path (:mod:`pgseg_core.cache.features`): created, resumed or read.
        sweep: ``KEY=START:STOP:STEP`` of a class-dependent key (bg_thresh, prob_thresh, top_k, logit_scale).
        max_images: at most this many images per split.
        progress: ``callback(done, total)``.
        figures: keep what :func:`write_metrics` needs to draw the eval figures (pgseg_core.eval.figures).

    Raises:
        ConfigError: a bad sweep. DataError: bad data, or a cache of another checkpoint or config.
        DependencyError: figures required and matplotlib missing (checked first).
    """
    from ..cache.features import CacheMeta, FeatureCache, feature_config_hash

    sweep_spec = parse_sweep(sweep) if sweep else None
    if figures is not None:
        check_figure_support(figures)
    protocol_name = resolved.name if resolved is not None else "checkpoint"
    feat_hash = feature_config_hash(cfg.model, eval_cfg)
    fc = None
    if cache is not None:
        meta = CacheMeta(checkpoint.sha256, feat_hash, protocol_name, target.cache_name)
        cache = rank_cache_path(cache)
        fc = FeatureCache.open(cache, meta)
    t0, observe = time.perf_counter(), observing(figures.grid_images) if figures else nullcontext()
    try:
        with observe as observer:  # the confusion matrices and first images, for the figures
            result = _run(model, target, resolved, eval_cfg, device, max_images, progress, fc, sweep_spec)
        cache_use = None if fc is None else CacheUse(str(cache), len(fc), fc.dropped)
    finally:
        if fc is not None:
            fc.close()
    if cache_use is not None:
        cache_use.images_encoded = sum(int(m.get("images_encoded", 0)) for m in result.splits.values())
        cache_use.images_from_cache = sum(int(m.get("images_from_cache", 0)) for m in result.splits.values())
    if resolved is not None:
        protocol = resolved.to_dict()
    else:
        notes = ["the checkpoint's eval settings"]
        protocol = {"name": "checkpoint", "family": checkpoint.family, "notes": notes}
    return EvalReport(
        result=result,
        protocol=protocol,
        checkpoint=checkpoint,
        config_hash=config_hash(cfg),
        feature_config_hash=feat_hash,
        device=str(device),
        target=target,
        cache=cache_use,
        extra={"figures": (figures, observer, time.perf_counter() - t0)} if figures is not None else {},
    )


# ----------------------------------------------------------------------------------------------------
# the metrics file: its path is checked before the evaluation, written atomically after it


class MetricsPathError(OutputError):
    """The default metrics path beside the checkpoint cannot be written (a read-only run folder): the
    caller should name another metrics file. Raised before anything is evaluated."""


class MetricsWriteError(OutputError):
    """The evaluation finished but its metrics file could not be written (the disk filled up meanwhile,
    the folder went away). ``report`` holds every metric (``report.write_error`` is this message), so a
    caller can still show or save them."""

    def __init__(self, message: str, report: EvalReport) -> None:
        super().__init__(message)
        self.report = report


def metrics_path(
    out: str | Path | None, checkpoint_path: str | Path, dataset: str | None, protocol_name: str
) -> Path:
    """Where the metrics JSON goes: ``out``, else beside the checkpoint (in its folder, or in the run
    folder it names; the current folder for a released model named by its name): ``metrics.json`` for
    shards, ``metrics_<dataset>_<protocol>.json`` for a dataset."""
    if out is not None:
        return Path(out)
    ck = Path(checkpoint_path)
    name = "metrics.json" if dataset is None else f"metrics_{dataset}_{protocol_name}.json"
    if not ck.exists():  # a released model's name, not a path
        return Path(name)
    return (ck if ck.is_dir() else ck.parent) / name


def check_metrics_path(path: str | Path, *, beside_checkpoint: bool = False) -> Path:
    """Fail before a long evaluation when its metrics file could not be written later
    (:func:`pgseg_core.utils.io.check_writable_file`); an existing metrics file is left as it is until
    the new one replaces it.

    Raises:
        MetricsPathError: ``beside_checkpoint`` (the default path) and it cannot be written.
        OutputError: ``path`` is a folder, is under a file, or its folder cannot be created or written.
    """
    try:
        return check_writable_file(path)
    except OutputError as e:
        if beside_checkpoint:
            raise MetricsPathError(f"{e}; the metrics file goes beside the checkpoint by default") from e
        raise


def write_metrics(report: EvalReport, path: str | Path) -> EvalReport:
    """Write ``report.to_dict()`` to ``path`` atomically (a reader sees the old file or the new one, never
    half of one; temporary files of killed earlier writers in that folder are removed first) and set
    ``report.written_to``.

    Raises:
        MetricsWriteError: the write failed (full disk, no permission, the folder gone); it carries the
            report, whose ``write_error`` holds the same one-line message and ``written_to`` stays empty.
    """
    path = Path(path)
    if (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_rank()
    ):
        report.written_to = str(path)  # torchrun: rank 0 writes the file (every rank holds the same metrics)
        return report
    try:
        remove_stale_temps(path.parent)
        atomic_write_json(path, report.to_dict())
    except (OSError, OutputError) as e:
        message = str(output_error(path, e, "write the metrics to")) if isinstance(e, OSError) else str(e)
        report.write_error = message
        raise MetricsWriteError(message, report) from e
    report.written_to = str(path)
    if "figures" in report.extra:
        options, observer, seconds = report.extra.pop("figures")
        report.figures = write_eval_figures(report.to_dict(), observer, path, options, seconds)
    return report


def rank_cache_path(cache: str | Path) -> Path:
    """The feature-cache file of this process: ``cache`` itself, or under torchrun with W > 1 processes
    ``STEM.rankRofW.SUFFIX`` (each rank caches the images it evaluates; rerunning with the same W reuses them;
    docs/TRAINING.md §6)."""
    path = Path(cache)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
        if w > 1:
            return path.with_name(f"{path.stem}.rank{r}of{w}{path.suffix}")
    return path
