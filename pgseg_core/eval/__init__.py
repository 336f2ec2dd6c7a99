"""Evaluation: confusion-matrix metrics (mmseg formulas) and the split evaluator."""

from .evaluate import EvalResult, evaluate, evaluate_samples
from .metrics import confusion_matrix, harmonic_mean, metrics_from_confusion

__all__ = [
    "EvalResult",
    "confusion_matrix",
    "evaluate",
    "evaluate_samples",
    "harmonic_mean",
    "metrics_from_confusion",
]
