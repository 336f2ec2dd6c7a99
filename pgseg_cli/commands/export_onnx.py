"""``pgseg export-onnx``: the image encoder as ONNX (for ``pgseg segment --backend onnx``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .._console import handle_errors, out
from . import mvp_cli
from ..options import CheckpointOpt


def register(app: typer.Typer) -> None:
    @app.command("export-onnx")
    @handle_errors
    def export_onnx_cli(
        checkpoint: CheckpointOpt,
        out_path: Annotated[
            Path, typer.Option("--out", "-o", help="The .onnx file to write (+ a .json sidecar).")
        ],
        size: Annotated[
            int,
            typer.Option(min=16, help="Square tracing size in pixels (multiple of 16); any size runs later."),
        ] = 448,
    ) -> None:
        """Export the image encoder (group embeddings, image embedding, soft assignments) to ONNX."""
        from pgseg_core.api import export_onnx

        if size % 16:
            raise typer.BadParameter(f"must be a multiple of 16 pixels, got {size}", param_hint="'--size'")
        if out_path.suffix.lower() != ".onnx":
            raise typer.BadParameter(f"must name a .onnx file, got {out_path}", param_hint="'--out'")
        if mvp_cli.is_method_reference(checkpoint):  # MVP-SEG / baseline: the frozen dense tower
            return mvp_cli.export(checkpoint, out_path, size)
        meta = export_onnx(checkpoint, out_path, size=size)
        out.print(
            f"wrote {meta['path']} and {meta['sidecar']} (outputs: {', '.join(meta['outputs'])})",
            highlight=False,
            soft_wrap=True,
        )
