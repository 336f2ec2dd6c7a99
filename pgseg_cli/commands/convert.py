"""``pgseg convert``: official GroupViT / PGSeg or HF GroupViT weights -> a pgseg safetensors + JSON pair."""

from __future__ import annotations

from typing import Annotated

import typer

from .._console import err, handle_errors, out


def register(app: typer.Typer) -> None:
    @app.command("convert")
    @handle_errors
    def convert_cli(
        src: Annotated[
            str,
            typer.Argument(
                help="Checkpoint to convert: official NVlabs GroupViT / PGSeg .pth, "
                "HF GroupViT directory or weight file, a pgseg checkpoint, or a released model's name "
                "('pgseg models')."
            ),
        ],
        dst: Annotated[str, typer.Argument(help="Output stem: writes DST.safetensors and DST.json.")],
        trust_pickle: Annotated[
            bool,
            typer.Option(
                "--trust-pickle",
                help="Allow torch.load(weights_only=False), which runs code stored in SRC. Not "
                "needed for the official .pth releases (their OmegaConf config is read as "
                "inert data); only for other pickles, and only for files you trust.",
            ),
        ] = False,
    ) -> None:
        """Convert a checkpoint to pgseg's format (safetensors weights + JSON config), loadable everywhere."""
        from pgseg_core.checkpoint import convert_checkpoint

        summary = convert_checkpoint(src, dst, trust_pickle=trust_pickle)
        for note in summary["notes"]:
            err.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
        out.print(
            f"converted {summary['source_format']} -> {summary['weights']} + {summary['config']} "
            f"({summary['tensors']} tensors, {summary['parameters']:,} parameters)",
            highlight=False,
            soft_wrap=True,
        )
