"""Nearest patches of every NPR prototype across a folder of images (``visualize-prototypes`` grids).

Symbols: N_i input tokens of grouping stage i, K prototypes, h×w stage-0 token grid (16-px cells).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

import numpy as np

from .prototypes import TOKEN_STRIDE, ImageState


@dataclass(order=True)
class PatchHit:
    """One candidate patch for a prototype (ordered by ``score``).

    Attributes:
        score: cosine similarity of the token feature and the image's prototype, in [-1, 1].
        order: insertion counter (tie-breaker).
        image: the image's name.
        token: index of the input token in its stage.
        thumb: uint8 RGB [t, t, 3] crop of the token's cells (stage 0: its 16×16 cell; stage 1: the bounding
            box of its segment, pixels outside the segment dimmed), resized to the tile size.
    """

    score: float
    order: int
    image: str = field(compare=False)
    token: int = field(compare=False)
    thumb: np.ndarray = field(compare=False, repr=False)


class PatchBank:
    """Keeps, per stage and prototype index, the ``top`` patches most similar to that prototype.

    Prototype k of stage i is the EM prototype that started from buffer row k, so the index names the same
    prototype in every image. A token is compared (cosine similarity) with its own image's prototype k; the
    best ``top`` tokens over all images are kept, with their thumbnails (memory: stages × K × top tiles).

    Args:
        top: patches kept per prototype (>= 1).
        tile: thumbnail side in pixels for stage-0 cells; later stages (whole segments) get twice that.
    """

    def __init__(self, top: int = 8, tile: int = 48):
        if top < 1:
            raise ValueError(f"top must be at least 1, got {top}")
        self.top = int(top)
        self.tile = int(tile)
        self._heaps: dict[tuple[int, int], list[PatchHit]] = {}
        self._counter = itertools.count()

    def add(self, state: ImageState) -> None:
        """Offer every input token of every NPR stage of one image (no-op without NPR)."""
        if not state.npr:
            return
        for st in state.stages:
            x = st.input_tokens / np.maximum(np.linalg.norm(st.input_tokens, axis=1, keepdims=True), 1e-12)
            sims = x @ st.prototypes.T  # [N_i, K]
            nonempty = st.cell_masks.reshape(len(st.cell_masks), -1).any(axis=1)
            for k in range(sims.shape[1]):
                heap = self._heaps.setdefault((st.index, k), [])
                order = np.argsort(-sims[:, k], kind="stable")
                for n in order[: self.top + int((~nonempty).sum())]:
                    if not nonempty[n]:
                        continue
                    score = float(sims[n, k])
                    if len(heap) >= self.top and score <= heap[0].score:
                        break
                    hit = PatchHit(
                        score,
                        next(self._counter),
                        state.name,
                        int(n),
                        _thumbnail(state.image, st.cell_masks[n], self.tile_for(st.index)),
                    )
                    if len(heap) < self.top:
                        heapq.heappush(heap, hit)
                    else:
                        heapq.heapreplace(heap, hit)

    def tile_for(self, stage: int) -> int:
        """Thumbnail side of ``stage`` (0-based), pixels."""
        return self.tile if stage == 0 else 2 * self.tile

    def stages(self) -> list[int]:
        return sorted({s for s, _ in self._heaps})

    def hits(self, stage: int) -> list[list[PatchHit]]:
        """Per prototype k of ``stage`` (ascending k), its kept patches, most similar first."""
        ks = sorted(k for s, k in self._heaps if s == stage)
        return [sorted(self._heaps[(stage, k)], reverse=True) for k in ks]


def _thumbnail(image: np.ndarray, cells: np.ndarray, tile: int) -> np.ndarray:
    """Crop the bounding box of ``cells`` (bool [h, w], 16-px cells), dim the outside, fit in a tile."""
    from PIL import Image

    ys, xs = np.nonzero(cells)
    y0, y1 = int(ys.min()) * TOKEN_STRIDE, (int(ys.max()) + 1) * TOKEN_STRIDE
    x0, x1 = int(xs.min()) * TOKEN_STRIDE, (int(xs.max()) + 1) * TOKEN_STRIDE
    crop = image[y0:y1, x0:x1].astype(np.float32)
    inside = np.kron(
        cells[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1],
        np.ones((TOKEN_STRIDE, TOKEN_STRIDE), dtype=bool),
    )
    crop[~inside] = crop[~inside] * 0.25 + 0.75 * 40.0
    pil = Image.fromarray(np.clip(crop + 0.5, 0, 255).astype(np.uint8))
    scale = tile / max(pil.width, pil.height)
    size = (max(1, round(pil.width * scale)), max(1, round(pil.height * scale)))
    pil = pil.resize(size, Image.NEAREST if scale >= 1 else Image.BILINEAR)
    canvas = Image.new("RGB", (tile, tile), (40, 40, 40))
    canvas.paste(pil, ((tile - size[0]) // 2, (tile - size[1]) // 2))
    return np.asarray(canvas)
