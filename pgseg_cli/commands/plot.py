"""``pgseg plot``: redraw a run's training curves, or overlay several runs in one figure."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .._console import handle_errors, out


def register(app: typer.Typer) -> None:
    @app.command("plot")
    @handle_errors
    def plot_cli(
        runs: Annotated[
            list[Path], typer.Argument(help="Training run folders (or their metrics.jsonl); several overlay.")
        ],
        output: Annotated[
            Optional[Path],
            typer.Option(
                "--out", "-o", help="PNG to write (default RUN/curves.png; needed for several runs)."
            ),
        ] = None,
    ) -> None:
        """Draw every loss term, lr, logit scale and images/s against the step (raw and smoothed)."""
        from pgseg_core.viz.curves import plot_runs

        if output is None and (len(runs) > 1 or runs[0].is_file()):
            raise typer.BadParameter(
                "several runs (or a metrics.jsonl file) need --out FILE.png", param_hint="'--out'"
            )
        result = plot_runs([str(r) for r in runs], output)
        skipped = f", {result.skipped_lines} unreadable line(s) skipped" if result.skipped_lines else ""
        out.print(
            f"curves of {', '.join(result.runs)} ({result.rows} logged steps, {len(result.metrics)} scalars"
            f"{skipped}) written to {result.path}"
        )
