"""``pgseg visualize-prototypes``: group maps, NPR prototype maps, matching, nearest patches (PNG + HTML)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .._console import err, handle_errors, progress_bar
from ..options import DeviceOpt, OptionalCheckpointOpt, OutDirOpt, device_or_auto


def register(app: typer.Typer) -> None:
    @app.command("visualize-prototypes")
    @handle_errors
    def visualize_prototypes_cli(
        out_dir: OutDirOpt,
        images: Annotated[
            Optional[list[str]],
            typer.Argument(
                help="Image files or directories (leave out with --cache to render what the cache holds)."
            ),
        ] = None,
        checkpoint: OptionalCheckpointOpt = None,
        cache: Annotated[
            Optional[Path],
            typer.Option(
                "--cache",
                help="HDF5 feature cache (docs/FEATURE_CACHE.md): with images, encoder traces are stored "
                "there and reused on the next run; alone, its cached images are rendered without a "
                "model. The file may be shared with segment --cache.",
            ),
        ] = None,
        max_images: Annotated[
            Optional[int], typer.Option(min=1, help="Use at most this many images.")
        ] = None,
        short_side: Annotated[
            Optional[int],
            typer.Option(
                min=1, help="Resize the short side to this many pixels (default: the checkpoint's)."
            ),
        ] = None,
        patches: Annotated[
            int, typer.Option(min=1, help="Patches shown per prototype in the nearest-patch grids.")
        ] = 8,
        device: DeviceOpt = None,
    ) -> None:
        """Show what the image encoder does: per image the group maps of both grouping stages, the NPR
        prototype maps and the Hungarian group<->prototype matching with its HRS-kept pairs; across the
        images, the patches nearest to each prototype. Writes PNGs, JSON and an index.html that opens from
        disk.

        Examples: pgseg visualize-prototypes photos/ -c run/ --out viz/ --cache viz.h5 (encode and cache);
        pgseg visualize-prototypes --cache viz.h5 --out viz2/ (render from the cache, no model)."""
        from pgseg_core.api import visualize_prototypes
        from pgseg_core.utils.io import ensure_dir

        if not images and cache is None:
            raise typer.BadParameter(
                "nothing to visualize: give image files or folders, or --cache FILE to render the images a "
                "feature cache holds",
                param_hint="'IMAGES' / '--cache'",
            )
        if images and checkpoint is None:
            raise typer.BadParameter(
                "required to encode images (or give only --cache FILE to render from a feature cache)",
                param_hint="'--checkpoint'",
            )
        ensure_dir(out_dir)  # a file or an uncreatable path: one line before any model work

        with progress_bar("visualize") as update:
            summary = visualize_prototypes(
                images or [],
                checkpoint,
                out_dir,
                cache=cache,
                max_images=max_images,
                short_side=short_side,
                patches_per_prototype=patches,
                device=device_or_auto(device),
                progress=lambda p, d, t, i: update(d, t, phase=p),
            )
        note = "" if summary["npr"] else " (no NPR in this checkpoint: group maps only)"
        fc = summary.get("feature_cache")
        if fc:
            err.print(
                f"feature cache {fc['path']}: {fc['images_from_cache']} image(s) from the cache, "
                f"{fc['images_encoded']} encoded",
                highlight=False,
                soft_wrap=True,
            )
        # typer.echo: a closed stdout raises BrokenPipeError, a quiet exit 0 in handle_errors
        typer.echo(f"rendered {summary['processed']} image(s){note}; open {Path(out_dir) / summary['index']}")
        for failure in summary.get("failed", []):
            err.print(f"[red]failed[/] {failure['image']}: {failure['error']}", highlight=False)
        if summary.get("failed"):
            err.print(f"{summary['num_failed']} image(s) failed", highlight=False)
            raise typer.Exit(1)
