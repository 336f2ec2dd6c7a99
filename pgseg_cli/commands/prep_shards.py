"""``pgseg prep-shards``: build webdataset shards (demo composites or a captioned image folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .._console import err, handle_errors, out, progress_bar


def register(app: typer.Typer) -> None:
    @app.command("prep-shards")
    @handle_errors
    def prep_shards_cli(
        out_dir: Annotated[Path, typer.Option("--out", "-o", help="Shard directory to write (tar + index.json).")],
        source: Annotated[str, typer.Option(help="'demo' (built-in real-image composites) or 'folder'.")] = "demo",
        images: Annotated[Optional[Path], typer.Option(help="Folder of images (source 'folder').")] = None,
        captions: Annotated[Optional[Path], typer.Option(
            help="Caption file .tsv/.csv/.jsonl (source 'folder'; default: captions.* or <stem>.txt).")] = None,
        n_train: Annotated[int, typer.Option(help="Demo: training composites.")] = 8000,
        n_val: Annotated[int, typer.Option(help="Demo: composites per validation split.")] = 200,
        img_size: Annotated[int, typer.Option(help="Demo: composite side in pixels.")] = 224,
        seed: Annotated[int, typer.Option(help="Demo: random seed (same seed, same shards).")] = 0,
        shard_size: Annotated[int, typer.Option(help="Samples per tar shard.")] = 1000,
        photos: Annotated[Optional[Path], typer.Option(
            help="Demo: also export the bundled real photos (for 'pgseg segment') to this folder.")] = None,
    ) -> None:
        """Build training/validation shards: demo composites, or a folder of images with captions."""
        from pgseg_core.api import prep_shards

        with progress_bar("prep-shards") as update:
            summary = prep_shards(source, out_dir, images=images, captions=captions, seed=seed, n_train=n_train,
                                  n_val=n_val, img_size=img_size, shard_size=shard_size, photos_dir=photos,
                                  progress=lambda phase, d, t, info: update(d, t, phase=phase))
        splits = summary.get("splits") or {"train": summary.get("count", 0)}
        out.print(f"wrote shards to {summary['out_dir']}: " + ", ".join(f"{k} {v}" for k, v in splits.items()))
        skipped = summary.get("skipped") or {}
        n_skipped = sum(v for v in skipped.values() if isinstance(v, int)) if isinstance(skipped, dict) else 0
        if n_skipped:
            err.print(f"skipped {n_skipped} unreadable image(s): {skipped}")
        if summary.get("photos"):
            out.print(f"exported {len(summary['photos'])} real photos to {photos}")
