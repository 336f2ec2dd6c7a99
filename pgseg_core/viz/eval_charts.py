"""Charts of evaluation results: per-class IoU bars, the confusion among the most confused classes, and
the metric against a swept setting.

Inputs are plain data (the ``metrics.json`` dict of :meth:`pgseg_core.eval.report.EvalReport.to_dict`,
confusion matrices), so the same functions draw one run's eval and the demo page's trained-vs-untrained
comparison. IoU in percent (mmseg formulas, docs/EVAL.md); a class with an undefined IoU (absent from
ground truth and prediction) gets no bar and an "n/a" mark.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .figure import margins, new_figure, save_figure

__all__ = ["plot_per_class", "plot_confusion", "plot_sweep", "split_colour", "SPLIT_COLOURS"]

#: bar colour per split: the demo's seen (caption) and unseen (held-out) classes, anything else
SPLIT_COLOURS = {"val-caption": "#1f77b4", "val-heldout": "#ff7f0e"}
_OTHER, _BACKGROUND = "#2ca02c", "#9a9a9a"
_SPLIT_LABELS = {"val-caption": "seen (named in captions)", "val-heldout": "unseen (never named)"}
_BACKGROUND_NAMES = ("background",)


def split_colour(split: str) -> str:
    """The bar colour of a split's classes (seen blue, unseen orange, other splits green)."""
    return SPLIT_COLOURS.get(split, _OTHER)


def _rows(metrics: dict[str, Any]) -> list[tuple[str, str, float]]:
    """(split, class, IoU or NaN) for every class of every split, in the report's order."""
    rows = []
    for split, m in (metrics.get("splits") or {}).items():
        for name, row in (m.get("per_class") or {}).items():
            iou = row.get("IoU")
            rows.append((split, name, float("nan") if iou is None else float(iou)))
    return rows


def plot_per_class(entries: list[tuple[str, dict[str, Any]]], path: str | Path) -> Path:
    """Horizontal per-class IoU bars of one or more evaluations of the same splits.

    Args:
        entries: ``(label, metrics)`` pairs (``metrics`` = a ``metrics.json`` dict); the first entry's
            classes set the rows; further entries (e.g. the untrained model) are drawn as lighter, hatched
            bars beside it. Colour = split (:func:`split_colour`), grey for background.
        path: the PNG to write.

    Raises:
        ValueError: no entry, or the first has no per-class results. DependencyError: no matplotlib.
        OutputError: the file cannot be written.
    """
    if not entries:
        raise ValueError("plot_per_class needs at least one evaluation")
    base = _rows(entries[0][1])
    if not base:
        raise ValueError(f"{entries[0][0]}: the metrics hold no per-class IoU")
    lookups = [{(s, c): v for s, c, v in _rows(m)} for _, m in entries]
    n, k = len(base), len(entries)
    height = 1.0 / (k + 0.5)
    longest = max(len(c) for _, c, _ in base)
    with new_figure(7.0, 1.2 + 0.17 * n * max(1, k * 0.8) + 0.15 * k) as fig:
        ax = fig.subplots()
        margins(fig, 0.25 + 0.055 * longest, 0.2, 0.3 + 0.15 * k, 0.45)
        y = np.arange(n)[::-1].astype(float)
        for j, (label, _) in enumerate(entries):
            for i, (split, cls, _) in enumerate(base):
                value = lookups[j].get((split, cls), float("nan"))
                yy = y[i] + (k - 1) / 2 * height - j * height
                colour = _BACKGROUND if cls in _BACKGROUND_NAMES else split_colour(split)
                if math.isnan(value):
                    ax.text(0.5, yy, "n/a", va="center", fontsize=6, color="#555555")
                    continue
                style = {"alpha": 1.0, "linewidth": 0}
                if j > 0:  # a further evaluation (the untrained model): lighter, hatched
                    style.update(alpha=0.45, hatch="///", edgecolor=colour)
                ax.barh(yy, value, height=height * 0.9, color=colour, **style)
        ax.set_yticks(y, [c for _, c, _ in base], fontsize=7)
        for i in range(1, n):  # a line between the splits
            if base[i][0] != base[i - 1][0]:
                ax.axhline(y[i] + 0.5, color="#444444", linewidth=0.8)
        ax.set_xlim(0, 100)
        ax.set_xlabel("IoU (%)")
        ax.grid(axis="y", visible=False)
        _per_class_legend(ax, base, entries)
        ax.set_title(_per_class_title(entries))
        return save_figure(fig, path)


def _per_class_title(entries: list[tuple[str, dict[str, Any]]]) -> str:
    parts = []
    for label, m in entries:
        splits = ", ".join(f"{s} {_pct(v.get('mIoU'))}" for s, v in (m.get("splits") or {}).items())
        parts.append(f"{label}: mIoU {splits}" if label else f"mIoU {splits}")
    return "per-class IoU\n" + "\n".join(parts)


def _pct(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.1f}"


def _per_class_legend(ax, base: list[tuple[str, str, float]], entries) -> None:
    from matplotlib.patches import Patch

    handles = []
    for split in dict.fromkeys(s for s, _, _ in base):
        handles.append(Patch(color=split_colour(split), label=_SPLIT_LABELS.get(split, split)))
    if any(c in _BACKGROUND_NAMES for _, c, _ in base):
        handles.append(Patch(color=_BACKGROUND, label="background"))
    for j, (label, _) in enumerate(entries):
        if len(entries) > 1:
            style = {"facecolor": "#777777"} if j == 0 else {"facecolor": "#cccccc", "hatch": "///"}
            handles.append(Patch(label=label, **style))
    ax.legend(handles=handles, loc="lower right", fontsize=7)


def top_confused(conf: np.ndarray, top: int) -> list[int]:
    """Indices of the ``top`` classes with the most misassigned pixels (their row and column off the
    diagonal: missed plus wrongly predicted), in label order."""
    conf = np.asarray(conf, dtype=np.float64)
    off = conf - np.diag(np.diag(conf))
    mass = off.sum(axis=0) + off.sum(axis=1)
    order = [int(i) for i in np.argsort(-mass, kind="stable") if mass[i] > 0][:top]
    return sorted(order)


def plot_confusion(splits: list[tuple[str, list[str], np.ndarray]], path: str | Path, top: int = 10) -> Path:
    """One panel per split: the confusion among its ``top`` most confused classes, each row normalised by
    the class's ground-truth pixels (so a row shows where that class's pixels went, in %; rows need not sum
    to 100 because the other classes are left out).

    Args:
        splits: ``(split name, class names in label order, confusion int64 [C,C] with the ground truth
            on the rows)``.
        path: the PNG to write.

    Raises:
        DependencyError: no matplotlib. OutputError: the file cannot be written.
    """
    ncols = max(1, len(splits))
    with new_figure(4.6 * ncols, 4.6) as fig:
        axes = fig.subplots(1, ncols, squeeze=False)[0]
        longest = max((len(n) for _, names, _ in splits for n in names), default=4)
        side = 0.3 + 0.055 * min(longest, 30)
        margins(fig, side, 0.2, 0.5, side, wspace=side / 3.4)
        for ax, (split, names, conf) in zip(axes, splits):
            idx = top_confused(conf, top)
            ax.grid(False)
            if not idx:
                ax.set_title(f"{split}: no confusion")
                ax.axis("off")
                continue
            rows = conf.sum(axis=1).astype(np.float64)
            sub = conf[np.ix_(idx, idx)] / np.maximum(rows[idx, None], 1.0) * 100.0
            ax.imshow(sub, cmap="Blues", vmin=0, vmax=100, interpolation="nearest")
            labels = [names[i] for i in idx]
            ax.set_xticks(range(len(idx)), labels, rotation=60, ha="right", fontsize=7)
            ax.set_yticks(range(len(idx)), labels, fontsize=7)
            for (r, c), v in np.ndenumerate(sub):
                if v >= 0.5:
                    ax.text(c, r, f"{v:.0f}", ha="center", va="center", fontsize=6,
                            color="white" if v > 50 else "black")  # fmt: skip
            ax.set_xlabel("predicted")
            ax.set_ylabel("ground truth")
            ax.set_title(f"{split}: top {len(idx)} confused classes\n(% of each true class's pixels)")
        return save_figure(fig, path)


def plot_sweep(metrics: dict[str, Any], path: str | Path) -> Path | None:
    """mIoU and foreground mIoU against the swept value, one line pair per split with a sweep; the best
    value is marked. Returns None (nothing written) when no split has a sweep.

    Raises:
        DependencyError: no matplotlib. OutputError: the file cannot be written.
    """
    swept = [(s, m["sweep"]) for s, m in (metrics.get("splits") or {}).items() if m.get("sweep")]
    if not swept:
        return None
    with new_figure(6.0, 3.6) as fig:
        ax = fig.subplots()
        margins(fig, 0.6, 0.2, 0.35, 0.5)
        for split, sweep in swept:
            xs = [p["value"] for p in sweep["points"]]
            colour = split_colour(split)
            for key, style in (("mIoU", "-"), ("mIoU_fg", "--")):
                ys = [np.nan if p.get(key) is None else p[key] for p in sweep["points"]]
                ax.plot(xs, ys, style, color=colour, marker=".", label=f"{split} {key}")
            main = np.array(
                [np.nan if p["mIoU"] is None else p["mIoU"] for p in sweep["points"]], dtype=float
            )
            if np.isfinite(main).any():
                best = int(np.nanargmax(main))
                ax.plot([xs[best]], [main[best]], "*", color=colour, markersize=11)
        key = swept[0][1]["key"]
        ax.set_xlabel(key)
        ax.set_ylabel("%")
        ax.set_title(f"metric against {key} (star: best mIoU)")
        ax.legend(fontsize=7)
        return save_figure(fig, path)
