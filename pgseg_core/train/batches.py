"""The training batch stream of one rank, with a position that checkpoints and resumes exactly.

Two sources: decoded images from shards (:func:`pgseg_core.data.loader.make_train_loader`, whose position is
per DataLoader stream, :mod:`pgseg_core.data.position`) or, for a frozen hybrid stem, the cached stem features
(:meth:`pgseg_core.cache.stem.StemCache.batches`, a seeded stream whose position is the number of batches
drawn; resuming draws and drops that many, which reads no image). With several processes rank 0 builds the
stem cache and the other ranks then read it one after the other; each rank draws its own seeded order of the
whole cache (rank 0: the 1-process order).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import RunConfig

__all__ = ["BatchStream"]

_log = logging.getLogger("pgseg.train")


class BatchStream:
    """Yields ``(inputs for forward_train, captions)`` forever: ``{"images": [b,3,S,S]}`` or
    ``{"stem_feats": [b,112,h,w]}`` on ``device``, b = the rank's share of ``train.batch_size``.

    Args:
        cfg: run config (``data``, ``train.seed``).
        model: the (unwrapped) model, for its hybrid stem.
        device: where the inputs go.
        out: the run directory (``stem_cache.h5``).
        local_batch: b.
        rank: this process's rank (its own streams).
        progress: ``(phase, done, total, info)`` callback for the stem-cache build (rank 0), or None.
    """

    def __init__(
        self,
        cfg: RunConfig,
        model: Any,
        device: torch.device,
        out: Path,
        local_batch: int,
        rank: int = 0,
        progress: Callable[[str, int, int, dict], None] | None = None,
    ):
        self.cfg, self.model, self.device, self.out = cfg, model, device, out
        self.local_batch, self.rank, self.progress = local_batch, rank, progress
        hybrid = model.img_encoder.hybrid
        self.stem = hybrid is not None and hybrid.frozen and cfg.data.cache_frozen_stem
        self.loader = None
        self.drawn = 0  # stem path: batches handed out
        self._skip = 0
        self._it = None
        if not self.stem:
            from ..data.loader import make_train_loader

            self.loader = make_train_loader(cfg.data, local_batch, cfg.train.seed, rank=rank)

    def state_dict(self) -> dict[str, Any]:
        """The position: the loader's state, or the number of stem batches drawn."""
        if self.loader is not None:
            return {"loader": self.loader.state_dict()}
        return {"stem_batches": self.drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the batches ``state`` records (before the first batch is drawn)."""
        if self.loader is not None:
            self.loader.load_state_dict(state["loader"])
        else:
            self._skip = int(state["stem_batches"])

    def __next__(self) -> tuple[dict[str, torch.Tensor], list[str]]:
        if self._it is None:
            self._it = self._stem_batches() if self.stem else self._image_batches()
        return next(self._it)

    def __iter__(self):
        return self

    def _image_batches(self):
        for batch in self.loader:
            yield {"images": batch["image"].to(self.device, non_blocking=True)}, batch["text"]

    def _stem_batches(self):
        from ..cache.stem import build_stem_cache

        def cb(done: int, total: int | None) -> None:
            if self.progress:
                self.progress("cache", done, total or 0, {})

        cfg = self.cfg
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        for turn in range(
            world
        ):  # rank 0 builds the cache, then each rank reads it in turn (one HDF5 writer)
            if turn == self.rank:
                path = self.out / "stem_cache.h5"
                cache = build_stem_cache(
                    self.model, cfg.data.train, path, cfg.data.img_size, self.device, progress=cb
                )
            if world > 1:
                torch.distributed.barrier()
        _log.info("training on %d cached stem features", len(cache))
        seed = cfg.train.seed + 7919 * self.rank  # each rank its own order (rank 0: the 1-process order)
        for feats, captions in cache.batches(self.local_batch, seed, cfg.data.hflip):
            self.drawn += 1
            if self.drawn <= self._skip:
                continue
            yield {"stem_feats": feats.to(self.device, non_blocking=True)}, captions
