"""``pgseg prep-shards``: build webdataset shards (demo composites, a captioned image folder, a URL list via
img2dataset), index existing img2dataset shards, or convert COCO-Stuff-164k label maps to COCO-Object in
place."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .._console import err, handle_errors, out, progress_bar
from ._web_data import run_download, web_sources


def register(app: typer.Typer) -> None:
    @app.command("prep-shards")
    @handle_errors
    def prep_shards_cli(
        out_dir: Annotated[
            Optional[Path],
            typer.Option(
                "--out", "-o", help="Shard directory to write (tar + index.json); not used by 'coco-object'."
            ),
        ] = None,
        source: Annotated[
            str,
            typer.Option(
                help="'demo' (built-in real-image composites), 'folder', 'coco-object' (eval labels), or a "
                "URL list downloaded with img2dataset: 'url-list' or cc3m, cc12m, redcaps, coco-captions, "
                "yfcc14m (their column layouts are known)."
            ),
        ] = "demo",
        images: Annotated[Optional[Path], typer.Option(help="Folder of images (source 'folder').")] = None,
        captions: Annotated[
            Optional[Path],
            typer.Option(
                help="Caption file .tsv/.csv/.jsonl (source 'folder'; default: captions.* or <stem>.txt)."
            ),
        ] = None,
        n_train: Annotated[int, typer.Option(min=0, help="Demo: training composites.")] = 8000,
        n_val: Annotated[int, typer.Option(min=0, help="Demo: composites per validation split.")] = 200,
        img_size: Annotated[int, typer.Option(min=16, help="Demo: composite side in pixels.")] = 224,
        seed: Annotated[int, typer.Option(help="Demo: random seed (same seed, same shards).")] = 0,
        shard_size: Annotated[
            Optional[int], typer.Option(min=1, help="Samples per tar shard (default 1000; URL lists 10000).")
        ] = None,
        photos: Annotated[
            Optional[Path],
            typer.Option(
                help="Demo: also export the bundled real photos (for 'pgseg segment') to this folder."
            ),
        ] = None,
        coco_root: Annotated[
            Optional[Path],
            typer.Option(
                help="coco-object: the coco_stuff164k folder (raw PNGs in annotations/{train2017,val2017})."
            ),
        ] = None,
        coco_split: Annotated[
            Optional[list[str]],
            typer.Option(
                metavar="<split>",
                help="coco-object: split to convert (train / val; repeatable; default: all present).",
            ),
        ] = None,
        workers: Annotated[
            int, typer.Option(min=0, help="coco-object, --index: worker processes (0: none).")
        ] = 0,
        index: Annotated[
            Optional[Path],
            typer.Option(
                help="Count the samples of the tars in DIR (e.g. img2dataset output), write DIR/index.json "
                "which training reads; the tars are never rewritten."
            ),
        ] = None,
        urls: Annotated[
            Optional[Path], typer.Option(help="URL list: .tsv / .csv / .parquet (or RedCaps' JSON folder).")
        ] = None,
        url_col: Annotated[
            Optional[str], typer.Option(help="URL list: the URL column (default url).")
        ] = None,
        caption_col: Annotated[
            Optional[str], typer.Option(help="URL list: the caption column (default caption).")
        ] = None,
        resize: Annotated[int, typer.Option(min=16, help="URL list: short side after resizing, px.")] = 512,
        quality: Annotated[int, typer.Option(min=1, max=100, help="URL list: JPEG quality.")] = 95,
        retries: Annotated[int, typer.Option(min=0, help="URL list: extra attempts per URL.")] = 2,
        timeout: Annotated[int, typer.Option(min=1, help="URL list: seconds per request.")] = 10,
        processes: Annotated[int, typer.Option(min=1, help="URL list: download processes.")] = 16,
        threads: Annotated[int, typer.Option(min=1, help="URL list: threads per process.")] = 64,
        emit_script: Annotated[
            Optional[Path],
            typer.Option(help="URL list: write an img2dataset driver script for --distributor instead."),
        ] = None,
        distributor: Annotated[
            str, typer.Option(help="URL list: pyspark or ray (--emit-script).")
        ] = "pyspark",
        overwrite: Annotated[
            bool,
            typer.Option(
                "--overwrite", help="Replace the shard set already in --out (once the new one is complete)."
            ),
        ] = False,
    ) -> None:
        """Build training/validation shards (demo composites, a folder of images with captions, a URL list
        downloaded with img2dataset), index shards img2dataset wrote (--index DIR), or write COCO-Object
        label maps (*_instanceTrainIds.png) next to the raw COCO-Stuff PNGs.

        The shards are built in a hidden folder beside --out and renamed to --out when complete, so --out
        never holds a partial or mixed set; an interrupted build leaves --out as it was."""
        from pgseg_core.api import prep_shards

        if index is not None:
            _index_folder(index, workers)
            return
        if source in web_sources():
            kw = dict(image_size=resize, encode_quality=quality, retries=retries, timeout=timeout,
                      processes=processes, threads=threads, shard_size=shard_size or 10000)  # fmt: skip
            run_download(source, urls, out_dir, url_col=url_col, caption_col=caption_col, settings_kw=kw,
                         emit_script=emit_script, distributor=distributor)  # fmt: skip
            return
        _check_source_options(source, out_dir, images, coco_root)
        if source != "coco-object":
            _check_out(out_dir, overwrite)
        with progress_bar("prep-shards") as update:
            summary = prep_shards(
                source,
                out_dir,
                images=images,
                captions=captions,
                seed=seed,
                n_train=n_train,
                n_val=n_val,
                img_size=img_size,
                shard_size=shard_size or 1000,
                photos_dir=photos,
                coco_root=coco_root,
                coco_splits=coco_split,
                workers=workers,
                progress=lambda phase, d, t, info: update(d, t, phase=phase),
                overwrite=overwrite,
            )
        if source == "coco-object":
            _render_coco_object(summary)
            return
        splits = summary.get("splits") or {"train": summary.get("count", 0)}
        out.print(
            f"wrote shards to {summary['out_dir']}: " + ", ".join(f"{k} {v}" for k, v in splits.items())
        )
        skipped = summary.get("skipped") or {}
        n_skipped = sum(v for v in skipped.values() if isinstance(v, int)) if isinstance(skipped, dict) else 0
        if n_skipped:
            err.print(f"skipped {n_skipped} unreadable image(s): {skipped}")
        if summary.get("photos"):
            out.print(f"exported {len(summary['photos'])} real photos to {photos}")


SOURCES = ("demo", "folder", "coco-object")


def _check_source_options(source: str, out_dir, images, coco_root) -> None:
    """Usage errors (exit 2) for a missing option the chosen --source needs."""
    if source not in SOURCES:
        known = ", ".join((*SOURCES, *web_sources()))
        raise typer.BadParameter(f"unknown source '{source}': use {known}", param_hint="'--source'")
    if source == "coco-object" and coco_root is None:
        hint = "'--coco-root'"
        raise typer.BadParameter("--source coco-object needs the coco_stuff164k folder", param_hint=hint)
    if source != "coco-object" and out_dir is None:
        raise typer.BadParameter(
            f"--source {source} needs the shard directory to write", param_hint="'--out'"
        )
    if source == "folder" and images is None:
        hint = "'--images'"
        raise typer.BadParameter("--source folder needs a folder of images with captions", param_hint=hint)


def _check_out(out_dir: Path, overwrite: bool) -> None:
    """Usage error (exit 2) for a shard set in --out (complete or not) without --overwrite; the library
    checks the rest (a file, a folder of other files, a path that cannot be created)."""
    from pgseg_core.data.shard_set import shard_folder_state
    from pgseg_core.data.shards import INDEX_NAME
    from pgseg_core.utils.claims import inspect_folder

    if overwrite:
        return
    if inspect_folder(out_dir, (INDEX_NAME,)).holds_run:
        raise typer.BadParameter(
            f"{out_dir} already holds a shard set ({INDEX_NAME}): pass --overwrite to replace it, or choose "
            "another folder",
            param_hint="'--out'",
        )
    if shard_folder_state(out_dir)[0] == "incomplete":
        raise typer.BadParameter(
            f"{out_dir} holds shards without {INDEX_NAME} (an interrupted build?): pass --overwrite to "
            "replace them, or choose another folder",
            param_hint="'--out'",
        )


def _index_folder(folder: Path, workers: int) -> None:
    from pgseg_core.data.sources.web_index import index_shard_folder

    with progress_bar("index") as update:
        summary = index_shard_folder(folder, workers=workers, progress=lambda d, t: update(d, t))
    out.print(f"indexed {summary['out_dir']}: {summary['count']} samples in {summary['shards']} tars")
    skipped = summary["skipped"]
    if any(skipped.values()):
        err.print("skipped: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in skipped.items()))
    if summary["stats_mismatch"]:
        names = summary["stats_mismatch"]
        err.print(f"{len(names)} tar(s) hold another count than their img2dataset stats, e.g. {names[0]}")


def _render_coco_object(summary: dict) -> None:
    for split, c in summary["splits"].items():
        out.print(f"{split}: {c['converted']} converted, {c['existing']} already there, {c['bad']} bad")
    out.print(f"COCO-Object label maps (*_instanceTrainIds.png) are in {summary['root']}/annotations")
    if summary["bad"]:
        first = next(f for c in summary["splits"].values() for f in c["bad_files"])
        err.print(f"skipped {summary['bad']} bad label map(s), e.g. {first}")
