"""``pgseg segment``: label maps, overlays, JSON and COCO RLE for your own images and class names."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from .._console import err, handle_errors, progress_bar
from . import mvp_cli
from ..options import BgThreshOpt, DeviceOpt, OptionalCheckpointOpt, TopKOpt, device_or_auto


def register(app: typer.Typer) -> None:
    @app.command("segment")
    @handle_errors
    def segment_cli(
        images: Annotated[
            list[str],
            typer.Argument(
                help="Image files, directories, quoted glob patterns ('photos/**/*.jpg'), or - to read paths "
                "from stdin (find ... | pgseg segment - ...)."
            ),
        ],
        checkpoint: OptionalCheckpointOpt = None,
        out_dir: Annotated[
            Optional[Path], typer.Option("--out", "-o", help="Output directory (default: ./pgseg_out).")
        ] = None,
        classes: Annotated[
            Optional[str], typer.Option(help="Comma-separated class names, e.g. 'cat,dog'.")
        ] = None,
        classes_file: Annotated[
            Optional[Path],
            typer.Option(
                help="Class file: one class per line, comma-separated synonyms, optional "
                "'background: w1, w2' line."
            ),
        ] = None,
        bg_words: Annotated[
            Optional[str],
            typer.Option(
                help="Comma-separated background words (e.g. 'sky,wall'): pixels they win are background."
            ),
        ] = None,
        template: Annotated[
            Optional[list[str]],
            typer.Option(
                help="Prompt template with {} for the class name; repeat for several (mean over templates)."
            ),
        ] = None,
        templates_file: Annotated[
            Optional[Path], typer.Option(help="Text file, one template per line.")
        ] = None,
        bg_thresh: BgThreshOpt = None,
        top_k: TopKOpt = None,
        short_side: Annotated[
            Optional[int], typer.Option(min=1, help="Resize the short side to this many pixels.")
        ] = None,
        fmt: Annotated[
            str, typer.Option("--format", help="Outputs: any of png,overlay,json,coco-rle.")
        ] = "png,overlay,json",
        jsonl: Annotated[
            bool, typer.Option("--jsonl", help="Write one JSON record per image to stdout.")
        ] = False,
        skip_existing: Annotated[
            bool, typer.Option("--skip-existing", help="Skip images whose requested outputs all exist.")
        ] = False,
        recursive: Annotated[
            bool, typer.Option("--recursive", "-r", help="Descend into sub-folders.")
        ] = False,
        device: DeviceOpt = None,
        batch_size: Annotated[int, typer.Option(min=1, help="Images per encoder batch.")] = 4,
        workers: Annotated[
            int, typer.Option(min=0, help="Decode worker processes (0 = in the main process).")
        ] = 2,
        backend: Annotated[
            str, typer.Option(help="Image encoder: torch or onnx (ONNX Runtime, CPU).")
        ] = "torch",
        onnx: Annotated[
            Optional[Path], typer.Option("--onnx", help="Model from 'pgseg export-onnx' (--backend onnx).")
        ] = None,
        export_onnx: Annotated[
            Optional[Path],
            typer.Option(
                "--export-onnx",
                help="Export the image encoder to this .onnx file first, then segment with it.",
            ),
        ] = None,
        text_cache: Annotated[
            Optional[Path],
            typer.Option(help="Folder of the text-embedding cache (default: OUT/.pgseg_cache)."),
        ] = None,
        no_text_cache: Annotated[
            bool, typer.Option("--no-text-cache", help="Always run the text tower.")
        ] = False,
        feature_cache: Annotated[
            Optional[Path],
            typer.Option(
                "--cache",
                help="HDF5 feature cache (the eval --cache format): images it holds skip the image "
                "encoder, so reruns with other classes or thresholds only re-score.",
            ),
        ] = None,
    ) -> None:
        """Segment images into the classes you name (label PNG, overlay with legend, JSON, COCO RLE).

        Without --checkpoint the released default model is used (downloaded once; 'pgseg models'), without
        --out the outputs go to ./pgseg_out. bf16 autocast on CUDA."""
        from pgseg_core.api import segment_files
        from pgseg_core.segment.options import SegmentOptions
        from pgseg_core.utils.io import ensure_dir

        _check_options(classes, classes_file, fmt, backend, onnx, export_onnx, feature_cache, device)
        checkpoint, out_dir = _defaults(checkpoint, out_dir)
        ensure_dir(out_dir)  # a file or an uncreatable path: one line before any model work
        if mvp_cli.is_method_reference(checkpoint):  # MVP-SEG checkpoint or baseline:BACKBONE
            unused = {"'--bg-words'": bg_words, "'--template'": template,
                      "'--templates-file'": templates_file, "'--top-k'": top_k, "'--onnx'": onnx,
                      "'--export-onnx'": export_onnx, "'--backend'": backend != "torch"}  # fmt: skip
            mvp_cli.reject(unused)
            names = mvp_cli.class_names(classes, classes_file)
            args = (
                fmt,
                device,
                feature_cache,
                recursive,
                skip_existing,
                sys.stdin if "-" in images else None,
            )
            summary = mvp_cli.segment(
                images, checkpoint, out_dir, names, *args, _emitter(jsonl), short_side, bg_thresh
            )
            return _render(summary, out_dir, feature_cache, err if jsonl else None)

        overrides = {
            k: v
            for k, v in {"bg_thresh": bg_thresh, "top_k": top_k, "short_side": short_side}.items()
            if v is not None
        }

        def emit(record: dict) -> None:
            if jsonl:
                typer.echo(json.dumps(record, ensure_ascii=False))

        options = SegmentOptions(
            eval_overrides=overrides,
            device=device_or_auto(device),
            formats=fmt,
            recursive=recursive,
            skip_existing=skip_existing,
            batch_size=batch_size,
            num_workers=workers,
            backend=backend,
            onnx_path=onnx,
            export_onnx_to=export_onnx,
            text_cache=False if no_text_cache else (text_cache if text_cache is not None else True),
            feature_cache=feature_cache,
        )
        with progress_bar("segment") as update:
            summary = segment_files(
                images,
                checkpoint,
                out_dir,
                classes=classes,
                classes_file=classes_file,
                bg_words=bg_words,
                templates=template,
                templates_file=templates_file,
                options=options,
                stdin=sys.stdin if "-" in images else None,
                on_record=emit,
                progress=lambda p, d, t, i: update(
                    d, t, info=f"{i.get('images_per_s', 0.0):.2f} img/s", phase=p
                ),
            )
        _render(summary, out_dir, feature_cache, err if jsonl else None)


def _defaults(checkpoint: str | None, out_dir: Path | None) -> tuple[str, Path]:
    """The released default model and ./pgseg_out when the flags were not given, said in one stderr line."""
    from pgseg_core.checkpoint.registry import default_weights_name

    said = []
    if checkpoint is None:
        checkpoint = default_weights_name()
        said.append(f"using the released model {checkpoint} (no --checkpoint; 'pgseg models' lists others)")
    if out_dir is None:
        out_dir = Path("pgseg_out")
        said.append(f"writing into {out_dir.absolute()} (no --out)")
    if said:
        err.print("; ".join(said), highlight=False, markup=False, soft_wrap=True)
    return checkpoint, out_dir


def _emitter(jsonl: bool):
    def emit(record: dict) -> None:
        if jsonl:
            typer.echo(json.dumps(record, ensure_ascii=False))

    return emit


def _check_options(classes, classes_file, fmt, backend, onnx, export_onnx, feature_cache, device) -> None:
    """Usage errors (exit 2) for option values and combinations that cannot work, before any work."""
    from pgseg_core.errors import ConfigError
    from pgseg_core.segment.outputs import parse_formats

    if not classes and classes_file is None:
        raise typer.BadParameter(
            "name at least one class (--classes 'cat,dog' or --classes-file FILE)", param_hint="'--classes'"
        )
    try:
        parse_formats(fmt)
    except ConfigError as e:
        raise typer.BadParameter(str(e), param_hint="'--format'") from None
    if backend not in ("torch", "onnx"):
        raise typer.BadParameter(f"unknown backend '{backend}': use torch or onnx", param_hint="'--backend'")
    if export_onnx is not None and onnx is not None:
        raise typer.BadParameter(
            "give either --export-onnx FILE (export, then use it) or --onnx FILE, not both",
            param_hint="'--export-onnx'",
        )
    uses_onnx = backend == "onnx" or export_onnx is not None
    if backend == "onnx" and onnx is None and export_onnx is None:
        raise typer.BadParameter(
            "--backend onnx needs --onnx MODEL.onnx (write it with 'pgseg export-onnx')",
            param_hint="'--onnx'",
        )
    if uses_onnx and feature_cache is not None:
        raise typer.BadParameter("--cache works with the torch backend only", param_hint="'--cache'")
    if uses_onnx and device not in (None, "auto", "cpu"):
        raise typer.BadParameter(
            f"--backend onnx runs on the CPU; drop --device {device}", param_hint="'--device'"
        )


def _line(console, text: str) -> None:
    """One plain line on ``console``, or on stdout (None) through typer.echo: a closed stdout then raises
    BrokenPipeError, which the CLI turns into a quiet exit 0 (rich's console would exit 1)."""
    if console is None:
        typer.echo(text)
    else:
        console.print(text, highlight=False, markup=False, soft_wrap=True)


def _render(summary, out_dir, feature_cache, console) -> None:
    """The closing lines of a run (on ``console``, None = stdout): counts, speed, caches, and one red line
    per failed image."""
    _line(
        console,
        f"segmented {summary.processed} image(s) into {out_dir}: skipped {summary.skipped} existing, "
        f"failed {summary.num_failed} ({summary.images_per_s:.2f} images/s, {summary.backend} on "
        f"{summary.device}, text cache {summary.text_cache})",
    )
    if summary.feature_cache is not None:
        fc = summary.feature_cache
        _line(
            console,
            f"feature cache {feature_cache}: {fc['images_from_cache']} image(s) read, "
            f"{fc['images_encoded']} encoded",
        )
    for failure in summary.failed:
        text = failure["error"]
        if failure["image"] not in text:
            text = f"{failure['image']}: {text}"
        err.print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)
    if summary.failed:
        raise typer.Exit(1)
