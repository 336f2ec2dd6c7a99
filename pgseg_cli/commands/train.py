"""``pgseg train``: train a preset on shards; dotted overrides like ``--train.lr 3e-4`` are accepted."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .._console import handle_errors, out, progress_bar
from ..options import parse_overrides, DeviceOpt, OutDirOpt


def register(app: typer.Typer) -> None:
    @app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    @handle_errors
    def train_cli(
        ctx: typer.Context,
        data: Annotated[
            str, typer.Option("--data", "-d", help="Training shards: DIR, index.json or brace pattern.")
        ],
        out_dir: OutDirOpt,
        model: Annotated[
            str,
            typer.Option(
                "--model",
                "-m",
                help="Preset name (groupvit-s, pgseg-s, pgseg-demo, pgseg-tiny) or config JSON.",
            ),
        ] = "pgseg-demo",
        device: DeviceOpt = None,
        resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt.")] = False,
        init: Annotated[
            Optional[str],
            typer.Option(
                help="Initialise weights from a checkpoint (pgseg, official GroupViT/PGSeg or HF GroupViT; "
                "new keys are reported)."
            ),
        ] = None,
    ) -> None:
        """Train a model into the run directory --out (checkpoints, metrics.jsonl, config.json).

        Extra '--section.key value' arguments override the preset (e.g. --train.steps 200)."""
        from pgseg_core.api import train

        overrides = parse_overrides(list(ctx.args))
        with progress_bar("train") as update:

            def cb(phase: str, done: int, total: int, info: dict) -> None:
                text = ""
                if info.get("loss") is not None:
                    text = f"loss {info['loss']:.3f}  {info.get('images_per_s', 0):.0f} img/s"
                update(done, total, text, phase="stem cache" if phase == "cache" else "train")

            result = train(
                model,
                data,
                out_dir,
                overrides=overrides,
                resume=resume,
                init_checkpoint=init,
                device=device,
                progress=cb,
            )
        loss = f", final loss {result.final['loss']:.3f}" if "loss" in result.final else ""
        out.print(
            f"trained {result.steps} steps on {result.device} in {result.seconds:.0f} s{loss}; "
            f"checkpoint: {result.checkpoint}"
        )
