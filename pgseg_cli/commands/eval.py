"""``pgseg eval``: mIoU of a checkpoint on demo shards or a benchmark dataset (protocols, caches, sweeps)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from .._console import handle_errors, out, progress_bar
from . import mvp_cli
from ..options import parse_overrides, BgThreshOpt, CheckpointOpt, DeviceOpt, TopKOpt, device_or_auto


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


def _per_class_table(name: str, m: dict[str, Any]) -> Table:
    table = Table(title=f"{name}: per-class IoU (%)")
    table.add_column("class")
    table.add_column("IoU", justify="right")
    table.add_column("Acc", justify="right")
    for cls, row in m["per_class"].items():
        table.add_row(cls, _fmt(row["IoU"]), _fmt(row["Acc"]))
    return table


def _sweep_table(name: str, sweep: dict[str, Any]) -> Table:
    table = Table(title=f"{name}: sweep of {sweep['key']} (%)")
    for col in (sweep["key"], "mIoU", "mIoU (no bg)", "mAcc", "aAcc"):
        table.add_column(col, justify="right")
    best = max(sweep["points"], key=lambda p: -1.0 if p["mIoU"] is None else p["mIoU"])
    for p in sweep["points"]:
        mark = " *" if p is best else ""
        table.add_row(
            f"{p['value']}{mark}", _fmt(p["mIoU"]), _fmt(p["mIoU_fg"]), _fmt(p["mAcc"]), _fmt(p["aAcc"])
        )
    return table


def render(report: Any, per_class: bool = True) -> None:
    """Print an :class:`pgseg_core.eval.report.EvalReport` as rich tables."""
    splits = report.splits
    out.print(
        f"protocol [bold]{report.protocol.get('name', '?')}[/] for a {report.checkpoint.family} checkpoint "
        f"(sha256 {report.checkpoint.sha256[:16] or '?'})"
    )
    for note in report.protocol.get("notes", []):
        out.print(f"  {note}", highlight=False)
    if per_class:
        for name, m in splits.items():
            out.print(_per_class_table(name, m))
    summary = Table(title="mIoU (%)")
    for col in ("split", "images", "skipped", "mIoU", "mIoU (no bg)", "mAcc", "aAcc"):
        summary.add_column(col, justify="right" if col != "split" else "left")
    for name, m in splits.items():
        skipped = (m.get("skipped") or {}).get("count", 0)
        fg = _fmt(m.get("mIoU_fg")) if m.get("has_background", True) else "-"
        row = (
            str(m.get("num_images", "")),
            str(skipped),
            _fmt(m["mIoU"]),
            fg,
            _fmt(m["mAcc"]),
            _fmt(m["aAcc"]),
        )
        summary.add_row(name, *row)
    out.print(summary)
    for name, m in splits.items():
        if m.get("sweep"):
            out.print(_sweep_table(name, m["sweep"]))
    result = report.result
    if result.hIoU is not None:
        out.print(
            f"seen {_fmt(result.seen_mIoU)}  unseen {_fmt(result.unseen_mIoU)}  hIoU {_fmt(result.hIoU)}"
        )
    if report.cache is not None:
        cache = report.cache
        out.print(
            f"feature cache {cache.path}: {cache.images_from_cache} image(s) read, "
            f"{cache.images_encoded} encoded"
        )
    if report.written_to:
        out.print(f"metrics written to {report.written_to}")
    figures = getattr(report, "figures", None)
    if figures is not None and figures.files:
        names = ", ".join(Path(f).name for f in figures.files)
        out.print(
            f"figures: {names} ({figures.seconds:.1f} s, {100 * figures.fraction:.1f} % of the command)"
        )


def register(app: typer.Typer) -> None:
    @app.command("eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    @handle_errors
    def eval_cli(
        ctx: typer.Context,
        checkpoint: CheckpointOpt,
        data: Annotated[
            Optional[str], typer.Option("--data", "-d", help="Validation shards (DIR or index.json).")
        ] = None,
        dataset: Annotated[
            Optional[str],
            typer.Option(
                help="Benchmark dataset: voc21, voc20, pc60, pc59, coco-object, coco-stuff-171, ade20k-150, "
                "cityscapes."
            ),
        ] = None,
        data_root: Annotated[
            Optional[str], typer.Option("--data-root", help="Folder of the dataset (mmseg layout).")
        ] = None,
        protocol: Annotated[
            Optional[str],
            typer.Option(help="Protocol preset: groupvit or sclip (default groupvit for --dataset)."),
        ] = None,
        cache: Annotated[
            Optional[Path],
            typer.Option(
                help="HDF5 feature cache: written on the first run, read (no image encoder) on later ones."
            ),
        ] = None,
        sweep: Annotated[
            Optional[str],
            typer.Option(
                help="Sweep one key from one pass, e.g. bg_thresh=0.3:0.99:0.05 (also prob_thresh, top_k, "
                "logit_scale)."
            ),
        ] = None,
        split: Annotated[
            Optional[list[str]],
            typer.Option(help="Shard split(s) (default: all val splits); dataset split (default val)."),
        ] = None,
        bg_thresh: BgThreshOpt = None,
        top_k: TopKOpt = None,
        device: DeviceOpt = None,
        max_images: Annotated[
            Optional[int], typer.Option(min=1, help="Evaluate at most this many images per split.")
        ] = None,
        output: Annotated[Optional[Path], typer.Option("--output", help="metrics JSON path.")] = None,
        per_class: Annotated[bool, typer.Option(help="Print the per-class IoU table.")] = True,
        zs_split: Annotated[
            Optional[str],
            typer.Option(
                help="Zero-shot split (voc-15-5, pc59-49-10, coco-stuff-156-15, demo-30-8 or a file): "
                "report mIoU(S), mIoU(U) and hIoU."
            ),
        ] = None,
        figures: Annotated[
            Optional[bool],
            typer.Option(
                "--figures/--no-figures",
                help="PNG figures beside the metrics file: per-class IoU, confusion, predictions, sweep "
                "(default: on; the charts are skipped with a warning where matplotlib is missing, unless "
                "--figures is given).",
                show_default=False,
            ),
        ] = None,
        grid_images: Annotated[
            int,
            typer.Option(min=0, help="Images in the predictions figure (input, truth, prediction); 0: none."),
        ] = 8,
        ignore_background: Annotated[
            bool,
            typer.Option(
                "--ignore-background",
                help="Shards: ignore background pixels and score only the classes (the VOC20 / PC59 "
                "convention of the zero-shot splits; no --bg-thresh). For --dataset use its variant without "
                "background (voc20, pc59).",
            ),
        ] = False,
    ) -> None:
        """Evaluate mIoU/mAcc/aAcc (and seen/unseen hIoU). Extra '--eval.key value' overrides are accepted.

        The metrics file (--output, default beside the checkpoint; for a released model's name, the current
        folder) and the --cache path are checked before any image is encoded. If writing the metrics still
        fails at the end (a full disk), the tables are printed first, then the one-line error (exit 1).
        """
        from pgseg_core.api import evaluate_checkpoint
        from pgseg_core.errors import OutputError
        from pgseg_core.eval.figures import EvalFigureOptions
        from pgseg_core.eval.report import MetricsPathError, MetricsWriteError

        if (data is None) == (dataset is None):
            hint = "'--data' / '--dataset'"
            raise typer.BadParameter("give either demo shards or a benchmark dataset name", param_hint=hint)
        if dataset is not None and data_root is None:
            hint = "'--data-root'"
            raise typer.BadParameter(f"--dataset {dataset} needs its mmseg-layout folder", param_hint=hint)
        if ignore_background and (bg_thresh is not None or (sweep or "").startswith("bg_thresh")):
            flag = "'--bg-thresh'" if bg_thresh is not None else "'--sweep'"
            raise typer.BadParameter("background is not scored with --ignore-background", param_hint=flag)
        if ignore_background and dataset is not None:
            raise typer.BadParameter(
                f"applies to demo shards; evaluate {dataset}'s variant without background (voc20, pc59)",
                param_hint="'--ignore-background'",
            )
        overrides = parse_overrides(list(ctx.args))
        if bg_thresh is not None:
            overrides["eval.bg_thresh"] = bg_thresh
        if top_k is not None:
            overrides["eval.top_k"] = top_k
        figure_options = None if figures is False else EvalFigureOptions(grid_images, required=bool(figures))
        failed: MetricsWriteError | None = None
        if mvp_cli.is_method_reference(checkpoint):  # MVP-SEG checkpoint or baseline:BACKBONE
            if bg_thresh is not None:  # the same rule, as the MVP-SEG setting (docs/MVP_SEG.md §4)
                overrides["mvp.bg_thresh"] = overrides.pop("eval.bg_thresh")
            mvp_cli.reject({"'--protocol'": protocol, "'--sweep'": sweep, "'--top-k'": top_k}, overrides)
            args = (data, dataset, data_root, split, zs_split, overrides, device, max_images, cache, output)
            return render(mvp_cli.evaluate(checkpoint, *args, ignore_background), per_class=per_class)
        rank, device = _join_torchrun(device_or_auto(device))
        with progress_bar("eval") as update:
            try:
                report = evaluate_checkpoint(
                    checkpoint,
                    data,
                    dataset=dataset,
                    data_root=data_root,
                    protocol=protocol,
                    cache=cache,
                    sweep=sweep,
                    splits=split,
                    eval_overrides=overrides,
                    device=device,
                    max_images=max_images,
                    out=output,
                    ignore_background=ignore_background,
                    figures=figure_options,
                    progress=lambda p, d, t, i: update(d, t, phase=p),
                )
            except MetricsPathError as e:
                raise OutputError(f"{e}: pass --output FILE to write it elsewhere") from e
            except MetricsWriteError as e:
                report, failed = e.report, e
        if zs_split is not None and failed is None:
            mvp_cli.apply_zs_split(report, zs_split)
        if rank == 0:
            render(report, per_class=per_class)
        if failed is not None:
            raise OutputError(f"{failed}; the metrics are printed above") from failed


def _join_torchrun(device: str) -> tuple[int, str]:
    """Under torchrun (WORLD_SIZE > 1): join the process group (gloo on the CPU, NCCL on CUDA, each rank on
    its LOCAL_RANK's GPU); the images are split over the ranks and the confusion matrices all-reduced, rank 0
    prints and writes the metrics. Returns (rank, this rank's device)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, device
    from pgseg_core.train.distributed import setup
    from pgseg_core.utils.device import resolve_device

    from .._console import STATE

    info, dev = setup(resolve_device(device))
    if info.rank > 0:
        STATE["quiet"] = True
    return info.rank, str(dev)
