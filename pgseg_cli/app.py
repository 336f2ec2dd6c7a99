"""The ``pgseg`` Typer application: registers the commands and owns global flags."""

from __future__ import annotations

from typing import Annotated

import typer

from pgseg_core.version import __version__

from ._console import out, setup_logging
from .options import QuietOpt, VerboseOpt

app = typer.Typer(
    name="pgseg",
    help="Weakly open-vocabulary semantic segmentation from image-caption pairs (GroupViT + PGSeg).\n\n"
    "Pipeline: prep-shards -> train -> eval -> segment.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        out.print(f"pgseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    setup_logging(verbose, quiet)


def _register() -> None:
    from .commands import (
        convert,
        export_onnx,
        models,
        plot,
        prep_shards,
        segment,
        train,
        visualize_prototypes,
    )
    from .commands import eval as eval_cmd

    for module in (
        prep_shards,
        train,
        eval_cmd,
        plot,
        segment,
        visualize_prototypes,
        export_onnx,
        convert,
        models,
    ):
        module.register(app)


_register()


def main() -> None:
    """Run the Typer app (the console script is :func:`pgseg_cli.main`, which installs the SIGTERM
    handler first)."""
    app(prog_name="pgseg")


if __name__ == "__main__":  # pragma: no cover
    main()
