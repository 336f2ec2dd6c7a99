"""The demo's closing page: ``OUT/index.html`` from the files ``examples/demo.sh`` wrote.

Sections (each only when its files exist; a missing one is named on the page instead of a broken image):
the headline numbers (``run/metrics.json`` and ``untrained/metrics.json``), the training curves
(``run/curves.png``), per-class IoU of the trained and the untrained model (drawn here into
``OUT/per_class_trained_vs_untrained.png``), predictions on the held-out composites next to their ground
truth (``run/metrics_predictions.png``, ``untrained/metrics_predictions.png``), the confusion of the most
confused classes, the bg_thresh calibration sweep (``calib/metrics_run_sweep.png``) and the overlays of the
bundled real photos (``segment/*_overlay.png``) with a plain statement of how little the composite-trained
model transfers to them. Images are linked by relative paths, so the folder can be moved or served as is.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..utils.io import atomic_write

__all__ = ["DemoPage", "write_demo_page", "PAGE_FILE", "PER_CLASS_FILE"]

PAGE_FILE = "index.html"
PER_CLASS_FILE = "per_class_trained_vs_untrained.png"

TRANSFER_NOTE = (
    "The model was trained only on the demo's composites ({n_train} images: real-photo backgrounds with "
    "pasted cut-outs, clip art and emoji, learning from their captions alone), at a small size and for a "
    "short time. These bundled real photos are whole scenes unlike anything it saw in training, so many of "
    "their labels are wrong: the overlays show how little of what it learned on composites transfers to "
    "real photos, not what PGSeg does when trained on large real image-caption data."
)


@dataclass
class DemoPage:
    """The written page: its path, the images it shows (relative paths) and the ones it looked for but
    did not find, and the time it took (s)."""

    path: str
    images: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _num(v: Any) -> str:
    return "–" if v is None else f"{float(v):.1f}"


def _table(trained: dict[str, Any], untrained: dict[str, Any] | None) -> str:
    rows = ["<tr><th>split</th><th>trained mIoU</th><th>untrained mIoU</th></tr>"]
    for split, m in (trained.get("splits") or {}).items():
        u = ((untrained or {}).get("splits") or {}).get(split, {})
        rows.append(
            f"<tr><td>{html.escape(split)}</td><td>{_num(m.get('mIoU'))}</td><td>{_num(u.get('mIoU'))}</td></tr>"
        )
    text = "<table>" + "".join(rows) + "</table>"
    if trained.get("hIoU") is not None:
        text += (
            f"<p>Seen / unseen classes (no background): {_num(trained.get('seen_mIoU'))} / "
            f"{_num(trained.get('unseen_mIoU'))}, hIoU {_num(trained.get('hIoU'))} (trained).</p>"
        )
    return text


class _Page:
    def __init__(self, out: Path) -> None:
        self.out, self.parts, self.images, self.missing = out, [], [], []

    def section(self, title: str, text: str = "") -> None:
        self.parts.append(f"<h2>{html.escape(title)}</h2>" + (f"<p>{html.escape(text)}</p>" if text else ""))

    def image(self, rel: str, caption: str = "") -> bool:
        if not (self.out / rel).is_file():
            self.missing.append(rel)
            self.parts.append(f'<p class="missing">not found: {html.escape(rel)}</p>')
            return False
        self.images.append(rel)
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        src = html.escape(rel, quote=True)
        self.parts.append(
            f'<figure><a href="{src}"><img src="{src}" alt="{html.escape(caption or rel)}"></a>{cap}</figure>'
        )
        return True

    def html(self) -> str:
        style = (
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
            "img{max-width:100%;border:1px solid #ddd}"
            "figure{display:inline-block;margin:.5em;vertical-align:top}"
            ".photos img{max-width:330px}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:.2em .6em;text-align:right}.missing{color:#a00}"
        )
        body = "\n".join(self.parts)
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>pgseg demo</title>'
            f"<style>{style}</style></head><body>\n<h1>pgseg demo</h1>\n{body}\n</body></html>\n"
        )


def _n_train(out: Path) -> str:
    index = _load(out / "shards" / "index.json") or {}
    count = ((index.get("splits") or {}).get("train") or {}).get("count")
    return str(count) if count is not None else "a few thousand"


def write_demo_page(out_dir: str | Path) -> DemoPage:
    """Write ``out_dir/index.html`` (and the trained-vs-untrained per-class chart) from a demo's outputs.

    Args:
        out_dir: the demo's output folder (``examples/demo.sh OUT``).

    Returns:
        :class:`DemoPage`.

    Raises:
        DataError: ``out_dir/run/metrics.json`` is missing or unreadable (the demo did not get to its eval).
        DependencyError: matplotlib is missing (the per-class chart). OutputError: the page cannot be written.
    """
    from ..viz.eval_charts import plot_per_class

    t0 = time.perf_counter()
    out = Path(out_dir)
    trained = _load(out / "run" / "metrics.json")
    if trained is None:
        raise DataError(f"{out / 'run' / 'metrics.json'} is missing or unreadable: run the demo's eval first")
    untrained = _load(out / "untrained" / "metrics.json")
    page = _Page(out)
    page.parts.append(_table(trained, untrained))
    page.section("Training curves", "Every loss term, the learning rate, the logit scale and the speed.")
    page.image("run/curves.png")
    page.section("Per-class IoU", "Solid: trained; light, hatched: the same model untrained.")
    entries = [("trained", trained)] + ([("untrained", untrained)] if untrained is not None else [])
    plot_per_class(entries, out / PER_CLASS_FILE)
    page.image(PER_CLASS_FILE)
    page.section("Held-out composites", "Input, ground truth and prediction, first of each split.")
    page.image("run/metrics_predictions.png", "trained")
    page.image("untrained/metrics_predictions.png", "untrained")
    page.image("run/metrics_confusion.png", "trained: the most confused classes")
    if (out / "calib" / "metrics_run_sweep.png").is_file():
        page.section("bg_thresh calibration", "Chosen on a split built from another seed.")
        page.image("calib/metrics_run_sweep.png")
    page.section("Real photos", TRANSFER_NOTE.format(n_train=_n_train(out)))
    overlays = sorted(p.relative_to(out).as_posix() for p in (out / "segment").glob("*_overlay.png"))
    page.parts.append('<div class="photos">')
    for rel in overlays:
        page.image(rel, Path(rel).name.removesuffix("_overlay.png"))
    page.parts.append("</div>")
    if not overlays:
        page.missing.append("segment/*_overlay.png")
        page.parts.append('<p class="missing">not found: segment/*_overlay.png</p>')
    path = atomic_write(out / PAGE_FILE, lambda tmp: Path(tmp).write_text(page.html(), encoding="utf-8"))
    return DemoPage(str(path), page.images, page.missing, time.perf_counter() - t0)
