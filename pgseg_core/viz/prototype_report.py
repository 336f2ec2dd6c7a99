"""Files -> prototype visualisation folder: per-image PNGs and JSON, nearest-patch grids, ``index.html``.

Output layout (all writes atomic: temporary file + ``os.replace``; ``index.html`` is written last, so a page
never links to a file an interrupted run did not write; the temporary files of killed runs are removed at
the start of the next)::

    OUT/index.html                 static page, relative links only, opens from disk
    OUT/summary.json               what was written, what failed
    OUT/images/<stem>_panel.png    image, group maps and prototype maps (render_panel)
    OUT/images/<stem>_matching.png Hungarian matching with HRS (NPR checkpoints only)
    OUT/images/<stem>.json         the numbers behind the figures (ImageState.to_json)
    OUT/patches_stage<i>.png       nearest patches of every prototype of stage i (NPR checkpoints only)
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch

from ..data.transforms import load_image_rgb
from ..errors import DataError
from ..utils.io import atomic_write, atomic_write_json, ensure_dir, output_error, remove_stale_temps
from .palette import save_image_atomic
from .prototype_render import render_matching, render_panel, render_patch_grid
from .patch_bank import PatchBank
from .prototypes import ImageState, prepare_image, state_from_trace, trace_image

__all__ = ["render_states", "states_from_files"]

logger = logging.getLogger("pgseg.viz")


def _unique(stem: str, used: set[str]) -> str:
    name, k = stem, 0
    while name in used:
        k += 1
        name = f"{stem}-{k}"
    used.add(name)
    return name


def states_from_files(
    model: Any,
    paths: Iterable[Path],
    short_side: int,
    max_long: int,
    device: torch.device | str,
    failed: list[dict[str, str]],
    cache: Any | None = None,
    counts: dict[str, int] | None = None,
) -> Iterator[ImageState]:
    """Image files -> :class:`ImageState` s, through an optional feature cache (``viz`` section).

    With ``cache`` (a writable :class:`pgseg_core.cache.features.FeatureCache`), an image whose trace at this
    resize is cached is rendered from the file without running the encoder; otherwise the trace is computed
    and stored. ``counts`` receives ``images_encoded`` and ``images_from_cache``. A file that cannot be
    read or encoded is logged, added to ``failed`` and skipped.
    """
    from ..utils.hashing import image_cache_key
    from .prototype_cache import get_trace, has_trace, put_trace

    counts = counts if counts is not None else {}
    counts.setdefault("images_encoded", 0)
    counts.setdefault("images_from_cache", 0)
    for path in paths:
        path = Path(path)
        try:
            key = image_cache_key(path) if cache is not None else None
            if key is not None and has_trace(cache, key, short_side, max_long):
                _, image, trace = get_trace(cache, key)
                counts["images_from_cache"] += 1
            else:
                sample = prepare_image(np.asarray(load_image_rgb(path)), short_side, max_long, name=path.stem)
                trace = trace_image(model, sample, device)
                image = sample.image
                if key is not None:
                    put_trace(cache, key, path.stem, image, trace, short_side, max_long)
                counts["images_encoded"] += 1
        except (DataError, OSError) as e:
            msg = str(e) if isinstance(e, DataError) else f"cannot read {path}: {e.strerror or e}"
            logger.warning("skipping %s: %s", path, msg)
            failed.append({"image": str(path), "error": msg})
            continue
        yield state_from_trace(trace, path.stem, image)


def render_states(
    states: Iterable[ImageState],
    out_dir: str | Path,
    *,
    total: int,
    npr: bool,
    released_code: bool,
    patches_per_prototype: int = 8,
    tile: int = 48,
    failed: list[dict[str, str]] | None = None,
    title: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Render every image state, then the nearest-patch grids and ``index.html``.

    Args:
        states: :class:`ImageState` s, from image files (:func:`states_from_files`) or from the ``viz``
            section of a feature cache (:mod:`pgseg_core.viz.prototype_cache`); produced lazily, so the
            producer may append to ``failed`` while it runs.
        out_dir: output folder (created; stale temporary files of killed runs in it and in ``images/`` are
            removed first).
        total: number of inputs expected (for progress).
        npr, released_code: what the model is (shown on the page and in the summary).
        patches_per_prototype: patches shown per prototype in the grids.
        tile: grid thumbnail side, pixels.
        failed: list that already holds (and receives) ``{"image", "error"}`` of skipped inputs.
        title: page heading (e.g. the checkpoint path).
        progress: ``callback(done, total)`` after each input (rendered or failed).

    Returns:
        ``{"out_dir", "index", "processed", "outputs": [{"image", "panel", "matching", "json", "stages"}],
        "patch_grids", "npr", "released_code", "failed", "num_failed"}``; paths relative to ``out_dir``.

    Raises:
        OutputError: ``out_dir`` is a file or cannot be created, or a file cannot be written (a full disk).
    """
    out_dir = Path(out_dir)
    ensure_dir(out_dir / "images")
    for folder in (out_dir, out_dir / "images"):
        remove_stale_temps(folder)
    failed = failed if failed is not None else []
    bank = PatchBank(patches_per_prototype, tile)
    outputs: list[dict[str, Any]] = []
    used: set[str] = set()
    failed_before = len(failed)
    for state in states:
        stem = _unique(state.name, used)
        outputs.append(_write_image(state, out_dir, stem))
        bank.add(state)
        logger.info("rendered %s", state.name)
        if progress is not None:
            progress(min(len(outputs) + len(failed) - failed_before, total), total)
    if progress is not None:
        progress(total, total)  # inputs skipped after the last rendered one
    grids = []
    for stage in bank.stages():
        rel = f"patches_stage{stage + 1}.png"
        grid = render_patch_grid(bank.hits(stage), stage, bank.tile_for(stage))
        _write(out_dir / rel, lambda path: save_image_atomic(grid, path))
        grids.append({"stage": stage + 1, "png": rel})
    summary = {
        "out_dir": str(out_dir),
        "index": "index.html",
        "processed": len(outputs),
        "outputs": outputs,
        "patch_grids": grids,
        "npr": bool(npr),
        "released_code": bool(released_code),
        "failed": failed,
        "num_failed": len(failed),
    }
    _write(out_dir / "summary.json", lambda path: atomic_write_json(path, summary))
    page = _page(summary, title)
    _write(
        out_dir / "index.html",
        lambda path: atomic_write(path, lambda tmp: Path(tmp).write_text(page, "utf-8")),
    )
    return summary


def _write(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(path)``, an OSError of it (a full disk, no permission) as one-line OutputError."""
    try:
        write(path)
    except OSError as e:
        raise output_error(path, e) from e


def _write_image(state: ImageState, out_dir: Path, stem: str) -> dict[str, Any]:
    panel = f"images/{stem}_panel.png"
    panel_img = render_panel(state)
    _write(out_dir / panel, lambda path: save_image_atomic(panel_img, path))
    record: dict[str, Any] = {
        "image": state.name,
        "panel": panel,
        "matching": None,
        "json": f"images/{stem}.json",
    }
    fig = render_matching(state)
    if fig is not None:
        record["matching"] = f"images/{stem}_matching.png"
        _write(out_dir / record["matching"], lambda path: save_image_atomic(fig, path))
    data = state.to_json()
    _write(out_dir / record["json"], lambda path: atomic_write_json(path, data))
    record["stages"] = data["stages"]
    return record


# ----------------------------------------------------------------------------------------------------------
# index.html

_CSS = """body{font-family:sans-serif;margin:1.5em;max-width:1700px;color:#222}
img{max-width:100%;border:1px solid #ccc}
table{border-collapse:collapse;font-size:12px;margin:.4em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
.kept{background:#dff3e3}.one{background:#fcebd3}.dropped{color:#999}
.note{background:#fff6d6;padding:.5em;border:1px solid #e6d38a}
section{margin-bottom:2.5em}"""


def _link(rel: str) -> str:
    return html.escape(quote(rel), quote=True)


def _matching_table(stage: dict[str, Any]) -> str:
    rows = [
        "<tr><th>group</th><th>cells</th><th>prototype</th><th>cos sim</th><th>HRS score p&rarr;g</th>"
        "<th>HRS score g&rarr;p</th><th>kept</th></tr>"
    ]
    for r in stage["matching"]:
        both, one = r["kept_gp"] and r["kept_pg"], r["kept_gp"] or r["kept_pg"]
        cls = "kept" if both else ("one" if one else "dropped")
        status = "both" if both else ("p&rarr;g only" if r["kept_gp"] else ("g&rarr;p only" if one else "no"))
        rows.append(
            f'<tr class="{cls}"><td>g{r["group"]}</td><td>{r["cells"]}</td><td>p{r["prototype"]}</td>'
            f"<td>{r['similarity']:+.3f}</td><td>{r['hrs_score_gp']:.3f}</td>"
            f"<td>{r['hrs_score_pg']:.3f}</td><td>{status}</td></tr>"
        )
    return "<table>" + "".join(rows) + "</table>"


def _page(summary: dict[str, Any], title: str) -> str:
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>pgseg prototypes: {html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Groups and prototypes</h1><p>{html.escape(title)}</p>",
    ]
    if summary["npr"]:
        mode = (
            "<b>released-code mode</b>: the Hungarian matching minimises the similarity and HRS reads "
            "column 0"
            if summary["released_code"]
            else "the Hungarian matching maximises the group-prototype cosine similarity; HRS keeps a pair "
            "when its min-max normalised similarity exceeds phi"
        )
        parts.append(
            f"<p>PGSeg checkpoint (NPR). Matching and HRS are computed with the training loss's own "
            f"functions: {mode}. Stage numbers start at 1. Prototype maps colour each prototype "
            f"with the colour of the group it is matched to.</p>"
        )
    else:
        parts.append(
            "<p class='note'>This checkpoint has no NPR (plain GroupViT): only the group maps are "
            "shown; there are no prototypes, no matching and no nearest-patch grids.</p>"
        )
    parts.append(f"<p>{summary['processed']} image(s) rendered, {summary['num_failed']} failed.</p>")
    if summary["failed"]:
        items = "".join(
            f"<li>{html.escape(f['image'])}: {html.escape(f['error'])}</li>" for f in summary["failed"]
        )
        parts.append(f"<div class='note'><b>Skipped:</b><ul>{items}</ul></div>")
    if summary["patch_grids"]:
        parts.append("<h2>Nearest patches per prototype</h2>")
        for g in summary["patch_grids"]:
            parts.append(
                f"<h3>stage {g['stage']}</h3><a href='{_link(g['png'])}'>"
                f"<img src='{_link(g['png'])}' alt='stage {g['stage']} patches'></a>"
            )
    parts.append("<h2>Images</h2>")
    for rec in summary["outputs"]:
        parts.append(
            f"<section><h3>{html.escape(rec['image'])}</h3>"
            f"<a href='{_link(rec['panel'])}'><img src='{_link(rec['panel'])}' alt='panel'></a>"
        )
        if rec["matching"]:
            parts.append(
                f"<p><a href='{_link(rec['matching'])}'><img src='{_link(rec['matching'])}' "
                f"alt='matching'></a></p>"
            )
        for stage in rec["stages"]:
            if "matching" in stage:
                parts.append(
                    f"<details><summary>stage {stage['stage']} matching table "
                    f"({stage['hrs_kept_gp']} / {stage['hrs_kept_pg']} pairs kept "
                    f"p&rarr;g / g&rarr;p)"
                    f"</summary>{_matching_table(stage)}</details>"
                )
        parts.append(f"<p><a href='{_link(rec['json'])}'>numbers (JSON)</a></p></section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
