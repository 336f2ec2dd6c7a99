"""Evaluation: confusion-matrix metrics (mmseg formulas), protocol presets, sweeps, and the evaluators for
demo shards and benchmark datasets (docs/EVAL.md)."""

from .evaluate import EvalResult, evaluate, evaluate_dataset, evaluate_samples, evaluate_stream
from .metrics import ConfusionAccumulator, confusion_matrix, harmonic_mean, metrics_from_confusion
from .protocol import list_protocols, model_family, resolve_protocol
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
