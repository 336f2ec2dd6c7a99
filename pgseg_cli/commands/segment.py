"""``pgseg segment``: label maps, overlays and JSON for your own images and class names."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .._console import err, handle_errors, out, progress_bar


def register(app: typer.Typer) -> None:
    @app.command("segment")
    @handle_errors
    def segment_cli(
        images: Annotated[list[str], typer.Argument(help="Image files or directories.")],
        checkpoint: Annotated[str, typer.Option("--checkpoint", "-c", help="pgseg checkpoint or run directory.")],
        out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
        classes: Annotated[Optional[str], typer.Option(help="Comma-separated class names, e.g. 'cat,dog'.")] = None,
        classes_file: Annotated[Optional[Path], typer.Option(help="Text file, one class per line.")] = None,
        bg_thresh: Annotated[Optional[float], typer.Option(help="Background threshold (default: checkpoint's).")] = None,
        top_k: Annotated[Optional[int], typer.Option(help="Top-k class filter; 0 = off.")] = None,
        short_side: Annotated[Optional[int], typer.Option(help="Resize short side to this many pixels.")] = None,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    ) -> None:
        """Segment images into the classes you name (label PNG, colour overlay with legend, JSON)."""
        from pgseg_core.api import parse_class_list, segment_files

        names = parse_class_list(classes, classes_file)
        overrides = {k: v for k, v in {"bg_thresh": bg_thresh, "top_k": top_k, "short_side": short_side}.items()
                     if v is not None}
        with progress_bar("segment") as update:
            summary = segment_files(images, names, checkpoint, out_dir, eval_overrides=overrides, device=device,
                                    progress=lambda p, d, t, i: update(d, t, phase=p))
        out.print(f"segmented {summary['processed']} image(s) into {out_dir}")
        for failure in summary.get("failed", []):
            err.print(f"[red]failed[/] {failure['image']}: {failure['error']}", highlight=False)
        if summary.get("failed"):
            raise typer.Exit(1)
