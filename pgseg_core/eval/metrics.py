"""Semantic-segmentation metrics from a confusion matrix (mmseg ``mean_iou`` formulas).

Symbols: C classes (background included when the label map has one), H×W pixels.

The confusion matrix has the ground truth on the rows and the prediction on the columns, so for class c
``TP = conf[c, c]``, ``FN = conf[c, :].sum() - TP`` and ``FP = conf[:, c].sum() - TP``. From it (mmseg
``total_intersect_and_union`` / ``eval_metrics``, docs/METHOD.md §4.5):

- ``IoU_c = TP / (TP + FP + FN)``, NaN when the class is absent from both prediction and ground truth;
- ``Acc_c = TP / (TP + FN)``, NaN when the class is absent from the ground truth;
- ``mIoU`` and ``mAcc`` are NaN-means over the classes (absent classes do not count);
- ``aAcc = sum_c TP / number of labelled pixels``.

All values are reported in percent.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..errors import DataError


def _as_long_tensor(x: Any, device: torch.device | None = None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x
    else:
        t = torch.from_numpy(np.require(np.asarray(x), requirements=["C", "W"]))
    if device is not None:
        t = t.to(device)
    return t.reshape(-1).long()


def confusion_matrix(pred: Any, gt: Any, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Pixel confusion matrix of one prediction against its ground truth.

    Args:
        pred: predicted label map [H,W] (or any shape matching ``gt``), integers in [0, num_classes);
            a torch tensor (CPU or GPU) or a numpy array.
        gt: ground-truth label map of the same shape, integers in [0, num_classes) or ``ignore_index``.
        num_classes: C, the number of classes (background included when the labels have one).
        ignore_index: ground-truth value whose pixels are skipped.

    Returns:
        np.int64 array [C,C]: ``conf[g, p]`` = number of pixels with ground truth g predicted as p.

    Raises:
        ValueError: shapes differ, or a prediction lies outside [0, C) (a bug in the caller).
        DataError: a ground-truth value lies outside [0, C) and is not ``ignore_index``.
    """
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    pred_shape = tuple(pred.shape)
    gt_shape = tuple(gt.shape)
    if pred_shape != gt_shape:
        raise ValueError(f"prediction shape {pred_shape} differs from ground-truth shape {gt_shape}")
    device = pred.device if isinstance(pred, torch.Tensor) else None
    p = _as_long_tensor(pred, device)
    g = _as_long_tensor(gt, p.device)
    return _confusion_counts(p, g, num_classes, ignore_index).cpu().numpy().astype(np.int64)


def _confusion_counts(p: torch.Tensor, g: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """[C,C] int64 counts on the tensors' device from flat long predictions / ground truth."""
    keep = g != ignore_index
    p = p[keep]
    g = g[keep]
    if g.numel() and (int(g.min()) < 0 or int(g.max()) >= num_classes):
        bad = int(g.max()) if int(g.max()) >= num_classes else int(g.min())
        raise DataError(
            f"label value {bad} is outside 0..{num_classes - 1} and is not the ignore value {ignore_index}; "
            "check that the label map matches the split's class list"
        )
    if p.numel() and (int(p.min()) < 0 or int(p.max()) >= num_classes):
        lo, hi = int(p.min()), int(p.max())
        raise ValueError(f"prediction values must lie in [0, {num_classes}), got {lo}..{hi}")
    counts = torch.bincount(g * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


class ConfusionAccumulator:
    """Running pixel confusion matrix kept on a torch device (the model's GPU when it has one), so per-image
    predictions never leave the device; ``torch.bincount`` per update.

    Args:
        num_classes: C (background included when the labels have one).
        device: where the [C,C] int64 counts live.
        ignore_index: ground-truth value whose pixels are skipped.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu", ignore_index: int = 255) -> None:
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.device = torch.device(device)
        self.counts = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=self.device)

    def update(self, pred: Any, gt: Any) -> None:
        """Add one prediction [H,W] (values in [0, C)) against its ground truth [H,W] (values in [0, C) or
        the ignore index). Tensors or numpy arrays; moved to the accumulator's device.

        Raises:
            ValueError: shapes differ or a prediction is out of range. DataError: a bad ground-truth value.
        """
        if tuple(pred.shape) != tuple(gt.shape):
            raise ValueError(
                f"prediction shape {tuple(pred.shape)} differs from ground-truth shape {tuple(gt.shape)}"
            )
        p = _as_long_tensor(pred, self.device)
        g = _as_long_tensor(gt, self.device)
        self.counts += _confusion_counts(p, g, self.num_classes, self.ignore_index)

    def numpy(self) -> np.ndarray:
        """The matrix [C,C] as np.int64 (ground truth on the rows)."""
        return self.counts.cpu().numpy().astype(np.int64)


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def metrics_from_confusion(conf: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Per-class IoU / Acc and their means from a confusion matrix (mmseg formulas, in percent).

    Args:
        conf: confusion matrix [C,C], ground truth on the rows (see :func:`confusion_matrix`).
        class_names: C names, index-aligned with the matrix rows.

    Returns:
        ``{"mIoU", "mAcc", "aAcc", "num_classes_evaluated", "per_class": {name: {"IoU", "Acc",
        "gt_pixels", "pred_pixels"}}}``. Percentages in [0, 100]; a class absent from the ground truth
        has ``Acc`` NaN, a class absent from both prediction and ground truth has ``IoU`` NaN and is left
        out of ``mIoU`` (nanmean), a class predicted but absent from the ground truth has ``IoU`` 0.

    Raises:
        ValueError: the matrix is not square or does not match ``class_names``.
    """
    conf = np.asarray(conf, dtype=np.float64)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion matrix must be square [C,C], got shape {conf.shape}")
    if conf.shape[0] != len(class_names):
        raise ValueError(f"confusion matrix has {conf.shape[0]} classes but {len(class_names)} names")
    tp = np.diag(conf)
    gt_area = conf.sum(axis=1)  # TP + FN
    pred_area = conf.sum(axis=0)  # TP + FP
    union = gt_area + pred_area - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan) * 100.0
        acc = np.where(gt_area > 0, tp / gt_area, np.nan) * 100.0
    total = gt_area.sum()
    a_acc = float(tp.sum() / total * 100.0) if total > 0 else float("nan")
    per_class = {
        name: {
            "IoU": float(iou[i]),
            "Acc": float(acc[i]),
            "gt_pixels": int(gt_area[i]),
            "pred_pixels": int(pred_area[i]),
        }
        for i, name in enumerate(class_names)
    }
    return {
        "mIoU": _nanmean(iou),
        "mAcc": _nanmean(acc),
        "aAcc": a_acc,
        "num_classes_evaluated": int((~np.isnan(iou)).sum()),
        "per_class": per_class,
    }


def harmonic_mean(a: float | None, b: float | None) -> float:
    """Harmonic mean ``2ab / (a + b)`` of two scores (hIoU of seen and unseen mIoU).

    Returns 0 when both are 0 and NaN when either is NaN or None.
    """
    if a is None or b is None:
        return float("nan")
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return float("nan")
    if a + b == 0:
        return 0.0
    return 2.0 * a * b / (a + b)
