"""PNG figures of :mod:`pgseg_core.viz.prototypes` states (PIL + numpy only).

* :func:`render_panel`: per image, the image, the group maps of every grouping stage (hard: cells coloured
  by group id with white group boundaries; soft: bilinear + argmax like the inference rule, opacity from
  0.15 at a uniform distribution to 0.85 at probability 1) and, with NPR, the prototype maps (each
  prototype in the colour of the group the Hungarian matching paired it with, so agreeing pairs share a
  colour).
* :func:`render_matching`: per stage, lines from group s to its matched prototype, with the cosine
  similarity and which directions of L_PG keep the pair after HRS.
* :func:`render_patch_grid`: per stage, one row per prototype with its most similar patches over a folder.

Stages are numbered from 1 in every title (the code's stage i is "stage i+1").
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from .overlay import load_font
from .palette import PALETTE
from .patch_bank import PatchHit
from .prototypes import ImageState, StageState

__all__ = ["render_panel", "render_matching", "render_patch_grid", "group_colour", "DISPLAY_SHORT_SIDE"]

DISPLAY_SHORT_SIDE = 224  # tiles are resized so their short side has this many pixels
_BG = (255, 255, 255)
_INK = (20, 20, 20)
_KEPT_BOTH = (30, 150, 60)
_KEPT_ONE = (230, 140, 20)
_DROPPED = (170, 170, 170)


def group_colour(index: int) -> tuple[int, int, int]:
    """Colour of group (or prototype slot) ``index`` >= 0: palette entry 1 + index (cycling over 254)."""
    r, g, b = PALETTE[1 + int(index) % 254]
    return int(r), int(g), int(b)


def _colours(n: int) -> np.ndarray:
    return np.array([group_colour(i) for i in range(n)], dtype=np.float32)  # [n, 3]


def _tile_size(state: ImageState) -> tuple[int, int]:
    H, W = state.image.shape[:2]
    scale = DISPLAY_SHORT_SIDE / min(H, W)
    return max(1, round(W * scale)), max(1, round(H * scale))  # (width, height)


def _resize_labels(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest resize of an int map [h, w] to (width, height)."""
    img = Image.fromarray(label.astype(np.int32), mode="I")
    return np.asarray(img.resize(size, Image.NEAREST)).astype(np.int64)


def _boundaries(label: np.ndarray) -> np.ndarray:
    edge = np.zeros(label.shape, dtype=bool)
    edge[:, :-1] |= label[:, :-1] != label[:, 1:]
    edge[:-1, :] |= label[:-1, :] != label[1:, :]
    return edge


def _blend(
    image: np.ndarray, label: np.ndarray, colours: np.ndarray, alpha: np.ndarray | float, edges: bool = True
) -> np.ndarray:
    """image float [H, W, 3], label int [H, W] indexing ``colours`` [n, 3], alpha scalar or [H, W]."""
    a = np.asarray(alpha, dtype=np.float32)
    if a.ndim == 2:
        a = a[..., None]
    out = (1.0 - a) * image + a * colours[label]
    if edges:
        out[_boundaries(label)] = 255.0
    return out


def _hard_tile(
    base: np.ndarray, cell_label: np.ndarray, colours: np.ndarray, size: tuple[int, int]
) -> np.ndarray:
    return _blend(base, _resize_labels(cell_label, size), colours, 0.6)


def _soft_tile(base: np.ndarray, probs: np.ndarray, colours: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """probs [S, h, w] -> bilinear to the tile (align_corners=False), argmax colour, opacity from the max."""
    t = torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float32))[None]
    up = F.interpolate(t, size=(size[1], size[0]), mode="bilinear", align_corners=False)[0]
    conf, label = up.max(dim=0)
    floor = 1.0 / max(len(probs), 1)  # a uniform distribution
    alpha = 0.15 + 0.7 * ((conf - floor) / max(1.0 - floor, 1e-6)).clamp(0.0, 1.0)
    return _blend(base, label.numpy(), colours, alpha.numpy())


def _grid_tile(base: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    out = base.copy()
    H, W = out.shape[:2]
    h, w = grid
    for i in range(1, h):
        out[min(H - 1, round(i * H / h)), :] = (255.0, 255.0, 255.0)
    for j in range(1, w):
        out[:, min(W - 1, round(j * W / w))] = (255.0, 255.0, 255.0)
    return out


def _proto_colours(st: StageState) -> np.ndarray:
    """Colour of prototype k = colour of the group matched to it."""
    k = st.prototypes.shape[0]
    colours = np.zeros((k, 3), dtype=np.float32)
    for s, proto in enumerate(st.match):
        colours[int(proto)] = group_colour(s)
    return colours


def _to_image(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def _compose(tiles: list[list[tuple[str, np.ndarray | None]]], title: str) -> Image.Image:
    """Rows of (caption, tile or None) into one canvas with a caption above every tile."""
    font, title_font = load_font(13), load_font(15)
    pad, cap_h, title_h = 6, 20, 26
    tw = max(t.shape[1] for row in tiles for _, t in row if t is not None)
    th = max(t.shape[0] for row in tiles for _, t in row if t is not None)
    cols = max(len(row) for row in tiles)
    width = pad + cols * (tw + pad)
    height = title_h + len(tiles) * (cap_h + th + pad) + pad
    canvas = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 5), title, fill=_INK, font=title_font)
    for r, row in enumerate(tiles):
        y = title_h + r * (cap_h + th + pad)
        for c, (caption, tile) in enumerate(row):
            x = pad + c * (tw + pad)
            if tile is None:
                continue
            draw.text((x, y + 3), caption, fill=_INK, font=font)
            canvas.paste(_to_image(tile), (x, y + cap_h))
    return canvas


def _stage_tiles(
    base: np.ndarray, size: tuple[int, int], st: StageState, prototypes: bool
) -> tuple[tuple[str, np.ndarray], tuple[str, np.ndarray]]:
    """The captioned hard and soft tiles of one stage's group map (or, ``prototypes``, prototype map)."""
    if prototypes:
        kind, hard_map, probs, suffix = "prototypes", st.proto_map, st.proto_probs, ""
        colours = _proto_colours(st)
    else:
        kind, hard_map, probs, suffix = "groups", st.group_map, st.group_probs, " used"
        colours = _colours(st.assign_hard.shape[0])
    caption = f"stage {st.index + 1} {kind}"
    used = len(np.unique(hard_map))
    return (
        (f"{caption}: {used}/{len(colours)}{suffix}", _hard_tile(base, hard_map, colours, size)),
        (f"{caption}, soft", _soft_tile(base, probs, colours, size)),
    )


def render_panel(state: ImageState) -> Image.Image:
    """The per-image panel.

    Row 1: the image, then per stage the hard group map, then (NPR) per stage the hard prototype map.
    Row 2: the image with the stage-0 token grid, then the soft versions of the same maps.

    Args:
        state: from :func:`pgseg_core.viz.prototypes.collect_image_state`.

    Returns:
        RGB PIL image; tiles have a short side of :data:`DISPLAY_SHORT_SIDE` pixels.
    """
    size = _tile_size(state)
    base = np.asarray(Image.fromarray(state.image).resize(size, Image.BILINEAR)).astype(np.float32)
    h, w = state.grid
    size_text = f"{state.image.shape[1]}x{state.image.shape[0]}"
    hard_row: list[tuple[str, np.ndarray | None]] = [(f"image ({size_text})", base)]
    soft_row: list[tuple[str, np.ndarray | None]] = [(f"token grid {w}x{h}", _grid_tile(base, state.grid))]
    pairs = [_stage_tiles(base, size, st, prototypes=False) for st in state.stages]
    pairs += [_stage_tiles(base, size, st, prototypes=True) for st in state.stages if st.has_npr]
    hard_row += [hard for hard, _ in pairs]
    soft_row += [soft for _, soft in pairs]
    if state.npr:
        mode = (
            "released-code matching (minimise) and HRS (column 0)"
            if state.released_code
            else "matching maximises similarity, HRS on the matched pair"
        )
        title = f"{state.name}: groups and NPR prototypes (prototype colour = its matched group); {mode}"
    else:
        title = f"{state.name}: group maps only (this checkpoint has no NPR: plain GroupViT)"
    return _compose([hard_row, soft_row], title)


def _pair_colour(kept_gp: bool, kept_pg: bool) -> tuple[int, int, int]:
    if kept_gp and kept_pg:
        return _KEPT_BOTH
    if kept_gp or kept_pg:
        return _KEPT_ONE
    return _DROPPED


def _pair_status(kept_gp: bool, kept_pg: bool) -> str:
    if kept_gp and kept_pg:
        return "kept"
    if kept_gp:
        return "kept p->g only"
    if kept_pg:
        return "kept g->p only"
    return "dropped"


def render_matching(state: ImageState) -> Image.Image | None:
    """Hungarian group <-> prototype matching of every NPR stage, side by side.

    Per stage: groups on the left (swatch + id + cells), prototypes on the right; a line joins each group to
    its matched prototype, green when HRS keeps the pair in both directions of L_PG, orange in one, grey
    when dropped; the prototype's label gives the pair's cosine similarity and status.

    Returns:
        RGB PIL image, or None for a checkpoint without NPR.
    """
    stages = [st for st in state.stages if st.has_npr]
    if not stages:
        return None
    font, title_font = load_font(11), load_font(13)
    row_h, pad, sw = 15, 8, 10
    left_w, gap, right_w = 96, 110, 240
    block_w = left_w + gap + right_w + 2 * pad
    top = 44
    n_max = max(len(st.match) for st in stages)
    canvas = Image.new("RGB", (block_w * len(stages), top + n_max * row_h + pad + 18), _BG)
    draw = ImageDraw.Draw(canvas)
    for b, st in enumerate(stages):
        x0 = b * block_w + pad
        n = len(st.match)
        kept = int((st.hrs_keep_gp & st.hrs_keep_pg).sum())
        draw.text(
            (x0, 4),
            f"stage {st.index + 1}: {n} groups <-> {st.prototypes.shape[0]} prototypes",
            fill=_INK,
            font=title_font,
        )
        draw.text(
            (x0, 22),
            f"HRS (phi={state.hrs_threshold:g}): {kept} kept both ways, "
            f"g->p {int(st.hrs_keep_pg.sum())}, p->g {int(st.hrs_keep_gp.sum())}",
            fill=_INK,
            font=font,
        )
        cells = np.bincount(st.group_map.reshape(-1), minlength=n)
        inverse = {int(k): s for s, k in enumerate(st.match)}
        for s in range(n):
            y = top + s * row_h
            draw.rectangle((x0, y + 2, x0 + sw, y + 2 + sw), fill=group_colour(s), outline=(60, 60, 60))
            draw.text((x0 + sw + 4, y + 1), f"g{s} ({cells[s]} cells)", fill=_INK, font=font)
        xr = x0 + left_w + gap
        for k in range(st.prototypes.shape[0]):
            y = top + k * row_h
            s = inverse.get(k)
            colour = group_colour(s) if s is not None else (200, 200, 200)
            draw.rectangle((xr, y + 2, xr + sw, y + 2 + sw), fill=colour, outline=(60, 60, 60))
            label = f"p{k}"
            if s is not None:
                label += (
                    f"  cos {st.similarity[s, k]:+.2f}  "
                    f"{_pair_status(bool(st.hrs_keep_gp[s]), bool(st.hrs_keep_pg[s]))}"
                )
            draw.text((xr + sw + 4, y + 1), label, fill=_INK, font=font)
        for s, k in enumerate(st.match):
            ya, yb = top + s * row_h + 7, top + int(k) * row_h + 7
            draw.line(
                (x0 + left_w - 4, ya, xr - 4, yb),
                fill=_pair_colour(bool(st.hrs_keep_gp[s]), bool(st.hrs_keep_pg[s])),
                width=2,
            )
    legend_y = top + n_max * row_h + pad
    draw.text(
        (pad, legend_y),
        "green: kept by HRS in both L_PG directions; orange: one direction; grey: dropped",
        fill=_INK,
        font=font,
    )
    return canvas


def render_patch_grid(hits: list[list[PatchHit]], stage: int, tile: int) -> Image.Image:
    """Rows = prototypes of one stage, columns = their most similar patches (best first).

    Args:
        hits: per prototype, its patches (from :meth:`pgseg_core.viz.patch_bank.PatchBank.hits`).
        stage: 0-based stage index (shown as ``stage + 1``).
        tile: thumbnail side in pixels.

    Returns:
        RGB PIL image; every thumbnail has its cosine similarity printed below it.
    """
    font, title_font = load_font(10), load_font(13)
    pad, label_w, text_h, title_h = 4, 36, 12, 40
    cols = max(1, max((len(h) for h in hits), default=1))
    width = max(label_w + cols * (tile + pad) + pad, 560)
    height = title_h + len(hits) * (tile + text_h + pad) + pad
    canvas = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(canvas)
    what = "16x16 token cells" if stage == 0 else "segments (bounding box, outside dimmed)"
    draw.text((pad, 4), f"stage {stage + 1}: {what} nearest to each prototype", fill=_INK, font=title_font)
    draw.text(
        (pad, 22),
        "cosine similarity of the token to its own image's prototype k, best first",
        fill=_INK,
        font=font,
    )
    for k, row in enumerate(hits):
        y = title_h + k * (tile + text_h + pad)
        draw.text((pad, y + tile // 2 - 6), f"p{k}", fill=_INK, font=title_font)
        for c, hit in enumerate(row):
            x = label_w + c * (tile + pad)
            canvas.paste(Image.fromarray(hit.thumb), (x, y))
            draw.text((x, y + tile), f"{hit.score:+.2f}", fill=_INK, font=font)
    return canvas
