"""MVP-SEG and training-free-baseline paths of ``train``, ``eval``, ``segment`` and ``export-onnx``.

The commands dispatch here when ``--method mvp-seg`` is given (train) or the checkpoint is an MVP-SEG
checkpoint / ``baseline:BACKBONE`` (the others); each calls one ``pgseg_core.mvp`` function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .._console import out, progress_bar


def is_method_reference(checkpoint: str | None) -> bool:
    """An MVP-SEG checkpoint or ``baseline:BACKBONE`` (cheap: reads only the file header)."""
    from pgseg_core.mvp.checkpoint import is_mvp_reference

    return checkpoint is not None and is_mvp_reference(checkpoint)


def reject(flags: dict[str, Any], overrides: dict[str, Any] | None = None) -> None:
    """Usage error (exit 2) for a flag or override that MVP-SEG / the baseline do not use."""
    for flag, value in flags.items():
        if value not in (None, False, [], ()):
            raise typer.BadParameter(
                "does not apply to MVP-SEG checkpoints or baseline:BACKBONE (docs/MVP_SEG.md §6)",
                param_hint=flag,
            )
    bad = [k for k in (overrides or {}) if not k.startswith("mvp.")]
    if bad:
        raise typer.BadParameter(
            f"'--{bad[0]}' does not apply to MVP-SEG / the baseline: their settings are --mvp.KEY "
            "(docs/MVP_SEG.md §3)"
        )


def train(backbone: str | None, data: str, out_dir: Path, overrides: dict[str, str], device: str | None,
          zs_split: str | None, resume: bool, overwrite: bool,
          cache: Path | None = None) -> None:  # fmt: skip
    """``pgseg train --method mvp-seg``."""
    from pgseg_core.mvp.train import train_mvp

    if backbone is None:
        raise typer.BadParameter("--method mvp-seg needs a frozen backbone", param_hint="'--backbone'")
    if resume:
        raise typer.BadParameter(
            "mvp-seg runs are short: start over with --overwrite", param_hint="'--resume'"
        )
    if (out_dir / "mvp.pt").exists() and not overwrite:
        raise typer.BadParameter(
            f"{out_dir} already holds an MVP-SEG run: add --overwrite", param_hint="'--out'"
        )
    dataset = data_root = None
    parts = None
    if data.startswith("dataset:"):  # dataset:NAME[/SPLIT]:ROOT, a benchmark reader
        _, name, data_root = (data.split(":", 2) + ["", ""])[:3]
        if not name or not data_root:
            raise typer.BadParameter(
                "a dataset is dataset:NAME[/SPLIT]:ROOT, e.g. dataset:voc20/train:VOC", param_hint="'--data'"
            )
        dataset, _, split = name.partition("/")
        parts, data = [split or "train"], None
    with progress_bar("train") as update:

        def cb(phase: str, done: int, total: int | None, info: dict) -> None:
            text = f"loss {info['loss']:.3f}" if "loss" in info else ""
            update(done, total, text, phase="dense cache" if phase == "cache" else "train")

        result = train_mvp(
            backbone, data, out_dir, dataset=dataset, data_root=data_root, parts=parts, zs_split=zs_split,
            overrides=overrides, device=device or "auto", cache=cache, progress=cb,
        )  # fmt: skip
    loss = f", final loss {result.final['loss']:.3f}" if "loss" in result.final else ""
    out.print(
        f"trained MVP-SEG prompts {result.steps} steps on {result.images} image(s) ({result.device}, "
        f"{result.images_encoded} encoded once){loss}; checkpoint: {result.checkpoint}"
    )


def evaluate(checkpoint: str, data: str | None, dataset: str | None, data_root: str | None,
             splits: list[str] | None, zs_split: str | None, overrides: dict[str, Any], device: str | None,
             max_images: int | None, cache: Path | None, output: Path | None,
             ignore_background: bool = False) -> Any:  # fmt: skip
    """``pgseg eval`` of an MVP-SEG checkpoint or ``baseline:BACKBONE``; returns the report to render."""
    from pgseg_core.mvp.evaluate import evaluate_method

    with progress_bar("eval") as update:
        return evaluate_method(
            checkpoint, data, dataset=dataset, data_root=data_root, splits=splits, zs_split=zs_split,
            overrides=overrides, device=device or "auto", max_images=max_images, cache=cache, out=output,
            ignore_background=ignore_background, progress=lambda d, t: update(d, t),
        )  # fmt: skip


def segment(images: list[str], checkpoint: str, out_dir: Path, classes: list[str], fmt: str,
            device: str | None, cache: Path | None, recursive: bool, skip_existing: bool, stdin: Any,
            on_record: Any, short_side: int | None, bg_thresh: float | None = None) -> Any:  # fmt: skip
    """``pgseg segment`` with an MVP-SEG checkpoint or ``baseline:BACKBONE``; returns the summary."""
    from pgseg_core.mvp.segment import segment_with_method

    given = {"short_side": short_side, "bg_thresh": bg_thresh}
    overrides = {k: v for k, v in given.items() if v is not None}
    with progress_bar("segment") as update:
        return segment_with_method(
            images, checkpoint, out_dir, classes, formats=fmt, device=device or "auto", overrides=overrides,
            cache=cache, recursive=recursive, skip_existing=skip_existing, stdin=stdin, on_record=on_record,
            progress=lambda d, t: update(d, t),
        )  # fmt: skip


def export(checkpoint: str, out_path: Path, size: int) -> None:
    """``pgseg export-onnx`` of the dense tower of an MVP-SEG checkpoint or the baseline."""
    from pgseg_core.mvp.onnx_export import export_method_onnx

    meta = export_method_onnx(checkpoint, out_path, size=size)
    out.print(f"wrote {meta['path']} and {meta['sidecar']} (outputs: dense)", highlight=False, soft_wrap=True)


def class_names(classes: str | None, classes_file: Path | None) -> list[str]:
    """The plain class names of ``--classes`` / ``--classes-file`` (first synonym of each line)."""
    from pgseg_core.inference.classes import parse_class_spec

    return list(parse_class_spec(classes, classes_file).names)


def apply_zs_split(report: Any, zs_split: str) -> None:
    """Fill mIoU(S) / mIoU(U) / hIoU of a PGSeg report from its per-class IoUs and rewrite its metrics."""
    from pgseg_core.eval.report import write_metrics
    from pgseg_core.splits import apply_split, load_split

    numbers = apply_split(report.result, load_split(zs_split))
    report.protocol = {**report.protocol, "zero_shot_split": numbers["split"]}
    if report.written_to:
        write_metrics(report, report.written_to)
