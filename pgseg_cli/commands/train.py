"""``pgseg train``: train a preset on shards; dotted overrides like ``--train.lr 3e-4`` are accepted."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from .._console import STATE, handle_errors, out, progress_bar
from . import mvp_cli
from ..options import parse_overrides, DeviceOpt


def register(app: typer.Typer) -> None:
    @app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    @handle_errors
    def train_cli(
        ctx: typer.Context,
        data: Annotated[
            str,
            typer.Option(
                "--data",
                "-d",
                help="Training shards (DIR, index.json, brace pattern, URL) or dataset names: cc12m, "
                "cc3m+cc12m, cc12m:2+redcaps:1 (folders under $PGSEG_DATA_ROOT, default "
                "~/.cache/pgseg/data).",
            ),
        ],
        out_dir: Annotated[
            Optional[Path],
            typer.Option("--out", "-o", help="Run directory (default: pgseg_runs/<model>_<data>)."),
        ] = None,
        model: Annotated[
            str,
            typer.Option(
                "--model",
                "-m",
                help="Preset name (groupvit-s, pgseg-s, pgseg-demo, pgseg-tiny) or config JSON.",
            ),
        ] = "pgseg-demo",
        device: DeviceOpt = None,
        resume: Annotated[
            bool,
            typer.Option(
                help="Continue the run in --out from its last.pt; metrics rows logged after that step by an "
                "interrupted run are dropped. A folder without last.pt starts at step 0."
            ),
        ] = False,
        overwrite: Annotated[
            bool,
            typer.Option(
                help="Start the run in --out over: its last.pt and metrics.jsonl are replaced (the stem "
                "cache, which depends only on the data and the stem, is kept)."
            ),
        ] = False,
        datasets_file: Annotated[
            Optional[Path],
            typer.Option(help="datasets.toml naming more datasets / other places for --data names."),
        ] = None,
        init: Annotated[
            Optional[str],
            typer.Option(
                help="Initialise weights from a checkpoint (pgseg, official GroupViT/PGSeg or HF GroupViT, "
                "or a released model's name from 'pgseg models'; new keys are reported)."
            ),
        ] = None,
        method: Annotated[str, typer.Option(help="pgseg (the --model preset) or mvp-seg.")] = "pgseg",
        backbone: Annotated[
            Optional[str],
            typer.Option(help="mvp-seg: frozen backbone, open_clip:MODEL:WEIGHTS or pgseg:CHECKPOINT."),
        ] = None,
        zs_split: Annotated[
            Optional[str], typer.Option(help="mvp-seg: seen / unseen split (default demo-30-8).")
        ] = None,
        dense_cache: Annotated[
            Optional[Path],
            typer.Option(
                help="mvp-seg: HDF5 cache of the frozen backbone's dense maps (default OUT/dense_cache.h5). "
                "Runs on the same backbone and image size can share one: only new images are encoded.",
            ),
        ] = None,
        nproc: Annotated[
            Optional[int],
            typer.Option(
                min=1,
                help="Train with N processes on this machine (torch.distributed's elastic launcher, as "
                "torchrun --standalone --nproc_per_node N): one per GPU with --device cuda (NCCL), gloo on "
                "the CPU. --train.batch_size stays the global batch.",
            ),
        ] = None,
    ) -> None:
        """Train a model into the run directory --out (checkpoints, metrics.jsonl, config.json).

        A folder that already holds a run needs --resume or --overwrite. Extra '--section.key value'
        arguments override the preset (e.g. --train.steps 200)."""
        from pgseg_core.api import train

        overrides = parse_overrides(list(ctx.args))
        if method not in ("pgseg", "mvp-seg"):
            raise typer.BadParameter(f"unknown method '{method}': pgseg or mvp-seg", param_hint="'--method'")
        own = {"'--backbone'": backbone, "'--zs-split'": zs_split, "'--dense-cache'": dense_cache}
        other = {"'--nproc'": nproc, "'--init'": init, "'--datasets-file'": datasets_file}
        for flag, value in (other if method == "mvp-seg" else own).items():
            if value is not None:
                applies = "--method pgseg" if method == "mvp-seg" else "--method mvp-seg"
                raise typer.BadParameter(f"applies to {applies} only", param_hint=flag)
        if out_dir is None:
            out_dir = default_run_dir("mvp-seg" if method == "mvp-seg" else model, data)
            out.print(f"run directory: {out_dir}")
        if method == "mvp-seg":  # docs/MVP_SEG.md: its own trainer
            args = (backbone, data, out_dir, overrides, device, zs_split, resume, overwrite, dense_cache)
            return mvp_cli.train(*args)
        if datasets_file is not None:
            overrides["data.datasets_file"] = str(datasets_file)
        _check_out(out_dir, resume, overwrite)
        if nproc is not None and "RANK" in os.environ:
            raise typer.BadParameter(
                "this process was started by torchrun: drop --nproc", param_hint="'--nproc'"
            )
        if nproc is not None:
            from pgseg_core.train.launch import run_local

            flags = [f for f, on in (("--resume", resume), ("--overwrite", overwrite)) if on]
            argv = ["train", "--data", data, "--out", str(out_dir), "--model", model, *flags]
            argv += [*(["--device", device] if device else []), *(["--init", init] if init else [])]
            argv += ["--datasets-file", str(datasets_file)] if datasets_file is not None else []
            glob = [f for f, on in (("-v", STATE["verbose"]), ("-q", STATE["quiet"])) if on]
            run_local(nproc, [sys.executable, "-m", "pgseg_cli", *glob, *argv, *ctx.args])
            return
        if int(os.environ.get("RANK", "0")) > 0:  # torchrun: progress and logs from rank 0 only
            _quiet_rank()
        log_line = _plain_logger()
        with progress_bar("train") as update:

            def cb(phase: str, done: int, total: int, info: dict) -> None:
                text = ""
                if info.get("loss") is not None:
                    text = f"loss {info['loss']:.3f}  {info.get('images_per_s', 0):.0f} img/s"
                    log_line(done, total, info)
                update(done, total, text, phase="stem cache" if phase == "cache" else "train")

            result = train(
                model,
                data,
                out_dir,
                overrides=overrides,
                resume=resume,
                overwrite=overwrite,
                init_checkpoint=init,
                device=device,
                progress=cb,
            )
        loss = f", final loss {result.final['loss']:.3f}" if "loss" in result.final else ""
        if int(os.environ.get("RANK", "0")) > 0:
            return
        out.print(
            f"trained {_steps_text(result)} on {result.device} in {result.seconds:.0f} s{loss}; "
            f"checkpoint: {result.checkpoint}"
        )
        if (Path(result.out_dir) / "curves.png").is_file():
            out.print(
                f"training curves: {Path(result.out_dir) / 'curves.png'} (redraw or compare: pgseg plot)"
            )


def default_run_dir(model: str, data: str) -> Path:
    """``pgseg_runs/<model>_<data>``: the preset or config file stem and the dataset names or shard folder
    name, with characters other than letters, digits and ``._+-`` replaced by ``_``."""
    import re

    stem = Path(model).stem if model.endswith(".json") else model
    where = Path(data.rstrip("/")).name or data
    return Path("pgseg_runs") / re.sub(r"[^A-Za-z0-9._+-]+", "_", f"{stem}_{where.replace(':', '-')}")


def _check_out(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Usage errors (exit 2) naming the flags: both --resume and --overwrite, or a folder that holds a run
    without either. A file or an unwritable path is left to the library (one line, exit 1)."""
    from pgseg_core.train.loop import RUN_MARKERS
    from pgseg_core.utils.claims import inspect_folder

    if resume and overwrite:
        raise typer.BadParameter(
            "--resume and --overwrite exclude each other: continue the run or start it over",
            param_hint="'--overwrite'",
        )
    state = inspect_folder(out_dir, RUN_MARKERS)
    if state.holds_run and not (resume or overwrite):
        raise typer.BadParameter(
            f"{out_dir} already holds a training run ({', '.join(state.markers)}): add --resume to continue "
            "it, --overwrite to start it over, or choose another folder",
            param_hint="'--out'",
        )


def _steps_text(result) -> str:
    """``3 steps`` for a new run; ``15 steps (16-30)`` for a resumed one; ``0 steps (already at step 30)``."""
    if result.start_step == 0:
        return f"{result.steps} steps"
    if result.trained == 0:
        return f"0 steps (already at step {result.steps})"
    return f"{result.trained} steps ({result.start_step + 1}-{result.steps})"


def _plain_logger() -> Callable[[int, int, dict], None]:
    """When stdout is not a terminal (a log file, a cluster job) and not --quiet: one line per metrics row
    (every train.log_every steps) with step, loss, images/s and the ETA, since a progress bar draws nothing
    there. On a terminal: nothing (the bar shows it)."""
    if STATE["quiet"] or sys.stdout.isatty():
        return lambda *a: None
    first: list[float] = []  # (time, step) of the first row: the ETA uses the speed since then

    def line(done: int, total: int, info: dict) -> None:
        now = time.monotonic()
        if not first:
            first.extend([now, float(done)])
        eta = "?"
        if done > first[1]:
            left = int(round((total - done) * (now - first[0]) / (done - first[1])))
            eta = f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"
        speed = f"{info.get('images_per_s', 0.0):.1f} img/s"
        typer.echo(f"step {done}/{total}  loss {info['loss']:.4f}  {speed}  ETA {eta}", err=True)

    return line


def _quiet_rank() -> None:
    """Ranks other than 0: no progress, no info logs, no closing line; warnings and errors still print
    (each prefixed by its own process through torchrun's console)."""
    STATE["quiet"] = True
    logging.getLogger("pgseg").setLevel(logging.WARNING)
