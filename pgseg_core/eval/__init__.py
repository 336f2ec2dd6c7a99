"""Evaluation: confusion-matrix metrics (mmseg formulas), protocol presets, sweeps, the evaluation loop and
runs for demo shards and benchmark datasets, and the report ``pgseg eval`` writes (docs/EVAL.md)."""

from .metrics import ConfusionAccumulator, confusion_matrix, harmonic_mean, metrics_from_confusion
from .protocol import list_protocols, model_family, resolve_protocol
from .result import EvalResult
from .runs import evaluate, evaluate_dataset
from .stream import evaluate_samples, evaluate_stream
from .sweep import Sweep, parse_sweep

__all__ = [
    "ConfusionAccumulator",
    "EvalResult",
    "Sweep",
    "confusion_matrix",
    "evaluate",
    "evaluate_dataset",
    "evaluate_samples",
    "evaluate_stream",
    "harmonic_mean",
    "list_protocols",
    "metrics_from_confusion",
    "model_family",
    "parse_sweep",
    "resolve_protocol",
]
