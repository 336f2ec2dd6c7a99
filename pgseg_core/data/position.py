"""The training loader's position: a resumable, deterministic sample stream (docs/TRAINING.md §1).

Each DataLoader worker of each rank reads its own *stream*: shard resampling and the shuffle buffer are
seeded by (seed, stream id), so the order of raw samples after the shuffle buffer is a fixed function of
those two numbers. Every raw sample is numbered n = 0, 1, ... within its stream before it is decoded, and
its augmentation (random resized crop, flip) draws from a torch generator seeded by (seed, stream, n), so a
sample's pixels do not depend on what ran before it. The loader records, per stream, how many raw samples
the batches handed to the training loop consumed; a resumed loader skips that many raw samples per stream
(before decoding: the tar bytes are read, nothing is decoded) and starts the round-robin of the DataLoader
workers at the worker whose batch comes next, so the batches after a resume are the batches an
uninterrupted run would have drawn, bit for bit.

Legend: W DataLoader workers per rank (W = 1 for ``num_workers = 0``), K batches handed out so far.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["StreamPosition", "PositionedLoader", "STREAMS_PER_RANK"]

#: Stream ids of rank r are r * STREAMS_PER_RANK + worker (webdataset's own worker-seed rule).
STREAMS_PER_RANK = 1000


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (stable across processes, unlike ``hash`` of a str)."""
    seed = 0x9E3779B97F4A7C15
    for v in values:
        seed = (seed * 6364136223846793005 + int(v) + 1442695040888963407) % (1 << 63)
    return seed


@dataclass
class StreamPosition:
    """What the pipeline stages need to know about the position; copied into each DataLoader worker when
    iteration starts, so :meth:`PositionedLoader.load_state_dict` must run before the first batch.

    Attributes:
        seed: the run's data seed.
        rank: this process's rank (its streams are ``rank * 1000 + worker``).
        workers: W, DataLoader workers of this rank (1 when decoding in the main process).
        rotation: the worker that produces the first batch of this loader plays stream ``rotation``
            (K mod W of the resumed state), so the round-robin continues where it stopped.
        skip: raw samples already consumed, per stream id.
    """

    seed: int
    rank: int = 0
    workers: int = 1
    rotation: int = 0
    skip: dict[int, int] = field(default_factory=dict)

    def stream_id(self) -> int:
        """The stream this process / DataLoader worker reads (0 ... W-1 offset by the rank)."""
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        return self.rank * STREAMS_PER_RANK + (worker + self.rotation) % max(1, self.workers)

    def number_and_skip(self, src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Pipeline stage after the shuffle buffer: tag each raw sample with ``__pos__ = (stream, n)`` and
        drop the first ``skip[stream]`` samples undecoded."""
        stream = self.stream_id()
        first = int(self.skip.get(stream, 0))
        for n, sample in enumerate(src):
            if n >= first:
                sample["__pos__"] = (stream, n)
                yield sample

    def augment(self, transform: Callable[[Any], torch.Tensor]) -> Callable[[Any, Any], torch.Tensor]:
        """``transform`` applied to (image, pos) under a CPU generator seeded by (seed, stream, n); the
        caller's torch RNG is left as it was (``torch.random.fork_rng``)."""
        return _SeededTransform(transform, self.seed)


@dataclass
class _SeededTransform:
    transform: Callable[[Any], torch.Tensor]
    seed: int

    def __call__(self, image: Any, pos: tuple[int, int]) -> torch.Tensor:
        stream, n = pos
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mix(self.seed, stream, n))
            return self.transform(image)


def collate_with_position(samples: list[tuple]) -> dict[str, Any]:
    """Batch of ``(key, image [3,S,S], text, (stream, n))`` tuples -> ``{"image" [B,3,S,S], "text",
    "key", "pos": (stream, last n)}`` (a batch is made by one worker, so it has one stream)."""
    keys, images, texts, pos = zip(*samples)
    return {
        "image": torch.stack(list(images)),
        "text": [str(t) for t in texts],
        "key": list(keys),
        "pos": (int(pos[-1][0]), int(max(p[1] for p in pos))),
    }


class PositionedLoader:
    """Iterable of training batches (``{"image", "text", "key"}``) that knows its position.

    Args:
        loader: the ``wds.WebLoader`` built over a pipeline using ``position``'s stages.
        position: the shared :class:`StreamPosition`.
    """

    def __init__(self, loader: Any, position: StreamPosition):
        self.loader = loader
        self.position = position
        self.batches = 0  # K
        self.consumed: dict[int, int] = dict(position.skip)
        self._started = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._started = True
        for batch in self.loader:
            stream, last = batch.pop("pos")
            self.consumed[stream] = max(self.consumed.get(stream, 0), last + 1)
            self.batches += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """``{"seed", "rank", "workers", "batches": K, "consumed": {stream: raw samples}}`` (plain ints)."""
        p = self.position
        return {
            "seed": p.seed,
            "rank": p.rank,
            "workers": p.workers,
            "batches": self.batches,
            "consumed": {int(k): int(v) for k, v in self.consumed.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after the batches ``state`` records.

        Raises:
            RuntimeError: iteration has already started (the workers hold the old position).
            ValueError: ``state`` was written with another seed, rank or number of workers (the streams
                would differ: resume with the same ``train.seed`` and ``data.num_workers``).
        """
        if self._started:
            raise RuntimeError("load_state_dict must be called before the loader is iterated")
        p = self.position
        theirs = (int(state["seed"]), int(state["rank"]), int(state["workers"]))
        if theirs != (p.seed, p.rank, p.workers):
            raise ValueError(
                f"the saved loader position is for (seed, rank, workers) = {theirs}, this loader is "
                f"{(p.seed, p.rank, p.workers)}: resume with the same train.seed, data.num_workers and "
                "number of processes"
            )
        self.batches = int(state["batches"])
        self.consumed = {int(k): int(v) for k, v in state["consumed"].items()}
        p.skip = dict(self.consumed)
        p.rotation = self.batches % max(1, p.workers)
