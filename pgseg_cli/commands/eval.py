"""``pgseg eval``: mIoU of a checkpoint on validation shards (GroupViT inference rule)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .._console import handle_errors, out, progress_bar


def _fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


def register(app: typer.Typer) -> None:
    @app.command("eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    @handle_errors
    def eval_cli(
        ctx: typer.Context,
        checkpoint: Annotated[str, typer.Option("--checkpoint", "-c", help="pgseg checkpoint or run directory.")],
        data: Annotated[str, typer.Option("--data", "-d", help="Validation shards (DIR or index.json).")],
        split: Annotated[Optional[list[str]], typer.Option(help="Split(s) to evaluate (default: all val splits).")] = None,
        bg_thresh: Annotated[Optional[float], typer.Option(help="Background threshold (default: checkpoint's).")] = None,
        top_k: Annotated[Optional[int], typer.Option(help="Top-k class filter; 0 = off.")] = None,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
        max_images: Annotated[Optional[int], typer.Option(help="Evaluate at most this many images per split.")] = None,
        output: Annotated[Optional[Path], typer.Option("--output", help="metrics.json path.")] = None,
        per_class: Annotated[bool, typer.Option(help="Print the per-class IoU table.")] = True,
    ) -> None:
        """Evaluate mIoU per split (and seen/unseen hIoU). Extra '--eval.key value' overrides are accepted."""
        from pgseg_core.api import evaluate_checkpoint
        from pgseg_core.config import parse_cli_overrides

        overrides = parse_cli_overrides(list(ctx.args))
        if bg_thresh is not None:
            overrides["eval.bg_thresh"] = bg_thresh
        if top_k is not None:
            overrides["eval.top_k"] = top_k
        with progress_bar("eval") as update:
            metrics = evaluate_checkpoint(checkpoint, data, splits=split, eval_overrides=overrides, device=device,
                                          max_images=max_images, out=output,
                                          progress=lambda p, d, t, i: update(d, t, phase=p))
        for name, m in metrics["splits"].items():
            if per_class:
                table = Table(title=f"{name}: per-class IoU (%)")
                table.add_column("class")
                table.add_column("IoU", justify="right")
                table.add_column("Acc", justify="right")
                for cls, row in m["per_class"].items():
                    table.add_row(cls, _fmt(row["IoU"]), _fmt(row["Acc"]))
                out.print(table)
        summary = Table(title="mIoU (%)")
        for col in ("split", "images", "mIoU", "mIoU (no bg)", "mAcc", "aAcc"):
            summary.add_column(col, justify="right" if col != "split" else "left")
        for name, m in metrics["splits"].items():
            summary.add_row(name, str(m.get("num_images", "")), _fmt(m["mIoU"]), _fmt(m.get("mIoU_fg")),
                            _fmt(m["mAcc"]), _fmt(m["aAcc"]))
        out.print(summary)
        if metrics.get("hIoU") is not None:
            out.print(f"seen {_fmt(metrics.get('seen_mIoU'))}  unseen {_fmt(metrics.get('unseen_mIoU'))}  "
                      f"hIoU {_fmt(metrics.get('hIoU'))}")
        out.print(f"metrics written to {metrics['written_to']}")
