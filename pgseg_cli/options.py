"""Options shared by several commands, declared once (name, short flag, help and checks).

Each alias is an ``Annotated`` type: a command writes ``checkpoint: CheckpointOpt`` and gets the same
``--checkpoint/-c`` as every other command. Range checks of numeric options are Typer's own (``min=`` /
``max=``), so a bad value is a usage error (exit 2) naming the flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

CHECKPOINT_HELP = (
    "Checkpoint: a pgseg .pt file or run directory, a 'pgseg convert' pair, an official NVlabs GroupViT / "
    "PGSeg .pth, a Hugging Face GroupViT directory, or a released model's name ('pgseg models' lists them; "
    "downloaded once into the cache)."
)
DEVICE_HELP = "auto, cpu, cuda or cuda:N (default auto); a device you name that is missing is an error."

CheckpointOpt = Annotated[str, typer.Option("--checkpoint", "-c", help=CHECKPOINT_HELP)]
OptionalCheckpointOpt = Annotated[Optional[str], typer.Option("--checkpoint", "-c", help=CHECKPOINT_HELP)]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help=DEVICE_HELP)]
OutDirOpt = Annotated[Path, typer.Option("--out", "-o", help="Output directory.")]
BgThreshOpt = Annotated[
    Optional[float],
    typer.Option(
        "--bg-thresh", min=0.0, max=1.0, help="Background threshold in [0, 1] (default: the checkpoint's)."
    ),
]
TopKOpt = Annotated[
    Optional[int], typer.Option("--top-k", min=0, help="Keep the image's top-k classes; 0 = all.")
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging and full tracebacks.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and results; no progress bars.")]


def device_or_auto(device: str | None) -> str:
    """The ``--device`` value a command passes on: ``auto`` when the flag was not given."""
    return device or "auto"


def positive(value: int | None, flag: str) -> int | None:
    """``value`` unchanged when None or >= 1; else :class:`typer.BadParameter` naming ``flag`` (exit 2)."""
    if value is not None and int(value) < 1:
        raise typer.BadParameter(f"must be a positive number, got {value}", param_hint=flag)
    return value


def parse_overrides(args: list[str]) -> dict[str, str]:
    """Turn the extra arguments ``["--train.lr", "3e-4", "--eval.top_k=3"]`` into dotted config overrides
    ``{"train.lr": "3e-4", "eval.top_k": "3"}`` (dashes in keys become underscores).

    Raises:
        typer.BadParameter: an argument that is not ``--section.key value`` or ``--section.key=value``
            (a usage error, exit 2).
    """
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg:
            raise typer.BadParameter(f"unexpected argument '{arg}': overrides look like --train.lr 3e-4")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise typer.BadParameter(f"override '{arg}' needs a value")
            value = args[i + 1]
            i += 2
        out[key.replace("-", "_")] = value
    return out
