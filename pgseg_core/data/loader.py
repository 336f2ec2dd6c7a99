"""Readers of pgseg shards: the infinite training loader, validation samples and a fixed-order image pass.

Only webdataset's public API is used (``wds.DataPipeline``, ``wds.ResampledShards``, ``wds.WebDataset``,
``wds.WebLoader`` and the pipeline stages). Symbols: B batch, S image side in pixels, H x W pixels.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError
from ..utils.process import end_with_parent
from .position import PositionedLoader, StreamPosition, collate_with_position
from .shards import resolve_shards

log = logging.getLogger("pgseg.data.loader")


class SkipAndCount:
    """webdataset exception handler: log a bad sample (rate-limited), count it, and continue.

    Unlike ``wds.warn_and_continue`` it never sleeps. The first ``first`` problems are logged, then
    every ``every``-th one. Each DataLoader worker holds its own copy, so counts are per process.

    Args:
        what: what is being read, used in the log lines.
        first: how many problems to log individually.
        every: afterwards, log one line per this many problems.
        counter: optional :class:`~pgseg_core.data.skips.SkipCounter` that every problem is added to.
    """

    def __init__(self, what: str = "shards", first: int = 5, every: int = 100, counter=None):
        self.what = what
        self.first = first
        self.every = every
        self.count = 0
        self.counter = counter  # a pgseg_core.data.skips.SkipCounter shared with the training process

    def __call__(self, exn: BaseException) -> bool:
        self.count += 1
        if self.counter is not None:
            self.counter.add()
        if self.count <= self.first or self.count % self.every == 0:
            log.warning("skipped a bad sample in %s (%d so far): %s", self.what, self.count, repr(exn)[:300])
        return True


class _WorkerSeededShuffle:
    """``wds.shuffle`` whose generator is seeded with (seed, DataLoader worker id) when iteration starts,
    so that workers do not share one shuffle pattern."""

    def __init__(self, bufsize: int, seed: int, stream=None):
        self.bufsize = bufsize
        self.seed = seed
        self.stream = stream  # callable -> the stream id (data/position.py); default: the worker id

    def __call__(self, src):
        import random

        import webdataset as wds

        info = torch.utils.data.get_worker_info()
        stream = self.stream() if self.stream else (info.id if info is not None else 0)
        rng = random.Random(self.seed * 1009 + stream)
        yield from wds.shuffle(self.bufsize, initial=min(self.bufsize, 100), rng=rng)(src)


def _as_text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes | bytearray) else str(value)


def make_train_loader(
    data_cfg: DataConfig, batch_size: int, seed: int, *, img_size: int | None = None, rank: int = 0
):
    """Infinite, shuffled training batches from webdataset shards, named datasets or their mixture.

    ``data_cfg.train`` is resolved by :func:`~pgseg_core.data.sources.named.resolve_train_sources` (a shard
    spec, ``cc12m``, ``cc3m+cc12m``, ``cc12m:2+redcaps:1``; pgseg shards and img2dataset shards alike: the
    image is ``jpg``/``png``/``jpeg``/``webp``, the caption ``txt``). Each source's shards are resampled
    with replacement from a stream seeded by (seed, source, stream id)
    (``wds.ResampledShards(deterministic=True)``; the resampling of ``wds.WebDataset(resampled=True)`` is
    seeded from the clock, so it is not used here); several sources are drawn by weight from a generator
    seeded the same way. Samples are shuffled in a ``data_cfg.shuffle_buffer`` buffer, numbered within their
    stream (:mod:`pgseg_core.data.position`), decoded and augmented (:mod:`pgseg_core.data.decode`; each
    sample's crop and flip drawn from a generator seeded by its position) and batched. Each DataLoader
    worker of each rank reads its own stream. Bad samples and unreadable or truncated tars are skipped and
    counted, never fatal: the count reaches the training loop through
    :func:`pgseg_core.data.skips.skip_metrics`.

    Args:
        data_cfg: ``train``, ``datasets_file``, ``img_size``, ``crop_scale``, ``hflip``, ``shuffle_buffer``,
            ``num_workers``, ``decode``.
        batch_size: samples per batch B (incomplete batches are dropped).
        seed: seeds shard resampling, mixing, the shuffle buffer and the augmentation.
        img_size: crop side S in pixels; default ``data_cfg.img_size``.
        rank: this process's rank; each rank reads its own streams (docs/TRAINING.md §1).

    Returns:
        A :class:`~pgseg_core.data.position.PositionedLoader` that yields ``{"image": FloatTensor
        [B,3,S,S] ImageNet-normalised, "text": list[str] (B captions), "key": list[str]}`` forever and
        has ``state_dict()`` / ``load_state_dict()``: a resumed loader continues the batch stream exactly.

    Raises:
        DataError: the spec resolves to no shards, an unknown dataset name, a count mismatch.
        DeviceError: ``data.decode`` is ``gpu`` without CUDA.
    """
    import webdataset as wds

    from .decode import decode_plan
    from .skips import SkipCounter, register_loader
    from .sources.named import resolve_train_sources

    if not data_cfg.train:
        raise DataError("no training shards configured: set data.train to a shard directory or index.json")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sources = resolve_train_sources(data_cfg.train, data_cfg.datasets_file or None)
    size = int(img_size or data_cfg.img_size)
    counter = SkipCounter()
    handler = SkipAndCount(str(data_cfg.train), counter=counter)
    decoder, collate, on_batches = decode_plan(data_cfg, size, on_bad=handler)
    buffer = max(1, int(data_cfg.shuffle_buffer))
    workers = max(0, int(data_cfg.num_workers))
    pos = StreamPosition(int(seed), int(rank), max(1, workers))
    pipeline = wds.DataPipeline(
        *_sample_streams(sources, int(seed), handler, pos),
        _WorkerSeededShuffle(buffer, int(seed), stream=pos.stream_id),
        pos.number_and_skip,
        wds.to_tuple("__key__", "jpg;png;jpeg;webp", "txt", "__pos__", handler=handler),
        wds.map(functools.partial(_unpack, decode=pos.augment(decoder)), handler=handler),
        wds.batched(batch_size, collation_fn=functools.partial(_collate, inner=collate), partial=False),
    )
    init = functools.partial(_worker_init, parent_pid=os.getpid()) if workers > 0 else None
    loader = wds.WebLoader(
        pipeline,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        persistent_workers=workers > 0,
        worker_init_fn=init,
        generator=torch.Generator().manual_seed(int(seed)),  # the caller's torch RNG is not drawn
    )
    if on_batches is not None:  # data.decode gpu: decode, crop and resize each batch on the GPU
        loader = loader.compose(on_batches)
    positioned = PositionedLoader(loader, pos)
    register_loader(positioned, counter)
    return positioned


def _unpack(sample: tuple, decode) -> tuple:
    """(key, encoded image, text, pos) -> (str key, decoded + augmented image, text str, pos)."""
    return str(sample[0]), decode(sample[1], sample[3]), _as_text(sample[2]), sample[3]


def _collate(samples: list[tuple], inner=None) -> dict[str, Any]:
    """Batch of (key, image, text, pos) -> ``{"image", "text", "key", "pos"}``; ``inner`` batches the
    (key, image, text) triples when images are not tensors (``data.decode gpu``)."""
    if inner is None:
        return collate_with_position(samples)
    batch = inner([s[:3] for s in samples])
    batch["pos"] = collate_with_position([(s[0], torch.zeros(1), s[2], s[3]) for s in samples])["pos"]
    return batch


def _sample_streams(sources, seed: int, handler: SkipAndCount, pos: StreamPosition) -> list:
    """The first pipeline stages: raw samples of one source, or of several mixed by weight."""
    import webdataset as wds

    from .remote import shard_urls

    def stream(i: int, urls: list[str]) -> list:
        return [
            wds.ResampledShards(
                shard_urls(urls), seed=seed + 7919 * i, deterministic=True, worker_seed=pos.stream_id
            ),
            wds.tarfile_to_samples(handler=handler),
        ]

    if len(sources) == 1:
        return stream(0, sources[0].urls)
    total = sum(s.weight for s in sources)
    mixed = [wds.DataPipeline(*stream(i, s.urls)) for i, s in enumerate(sources)]
    log.info("mixing %s", ", ".join(f"{s.name} {s.weight / total:.0%}" for s in sources))
    return [_SeededMix(mixed, [s.weight / total for s in sources], seed, pos)]


class _SeededMix(torch.utils.data.IterableDataset):
    """Draws each sample from one of several pipelines with the given probabilities, from a generator seeded
    by (seed, stream id), so the mixed stream, like each source's, repeats after a resume (webdataset's
    ``RandomMix`` draws from the process-global ``random``)."""

    def __init__(self, pipelines: list, probs: list[float], seed: int, pos: StreamPosition):
        super().__init__()
        self.pipelines, self.probs, self.seed, self.pos = pipelines, probs, seed, pos

    def __iter__(self):
        import random

        rng = random.Random(self.seed * 7907 + self.pos.stream_id())
        sources = [iter(p) for p in self.pipelines]
        while True:
            i = rng.choices(range(len(sources)), weights=self.probs)[0]
            try:
                yield next(sources[i])
            except StopIteration:
                return


def _worker_init(_: int, parent_pid: int) -> None:
    end_with_parent(parent_pid)  # a kill -9 of the training run takes its decode workers with it


@dataclass
class ValSample:
    """One validation image with its label map (demo composite or benchmark image).

    Attributes:
        key: sample key.
        image: uint8 RGB ``[H,W,3]``.
        label: uint8 ``[H,W]`` canonical labels: with background 0 = background and 1 + i = ``classes[i]``;
            for a benchmark without background (see :mod:`pgseg_core.eval.datasets`) i = ``classes[i]``;
            255 ignore.
        classes: the split's class list.
        split: split name ("val-caption", "val-heldout", or a benchmark split such as "val").
        caption: the composite's caption ("" if the shard has none).
    """

    key: str
    image: np.ndarray
    label: np.ndarray
    classes: list[str]
    split: str
    caption: str = ""


def _plain_dataset(urls: list[str], handler: SkipAndCount):
    """Samples of ``urls`` in shard order, no shuffling, raw bytes (only txt/json decoded)."""
    import webdataset as wds

    return wds.WebDataset(
        urls, shardshuffle=False, handler=handler, nodesplitter=None, workersplitter=None, empty_check=False
    ).decode(handler=handler)


def _split_classes(spec: str | Path, split: str) -> list[str] | None:
    from .shards import INDEX_NAME, read_index

    p = Path(str(spec))
    idx = p if p.suffix == ".json" else p / INDEX_NAME
    if idx.is_file():
        entry = read_index(idx)["splits"].get(split, {})
        classes = entry.get("classes")
        return list(classes) if isinstance(classes, list) else None
    return None


def iter_val_samples(spec: str | Path, split: str = "val-caption") -> Iterator[ValSample]:
    """Iterate the labelled samples of a validation split in a fixed order.

    Args:
        spec: shard directory / index.json / pattern (see :func:`~pgseg_core.data.shards.resolve_shards`).
        split: "val-caption" or "val-heldout".

    Yields:
        :class:`ValSample` per composite. Samples that cannot be decoded are skipped and counted.

    Raises:
        DataError: the split is absent (the message lists the available splits) or has no shards.
    """
    from PIL import Image

    urls = resolve_shards(spec, split)
    index_classes = _split_classes(spec, split)
    handler = SkipAndCount(f"{spec} ({split})")
    for sample in _plain_dataset(urls, handler):
        key = sample.get("__key__", "?")
        try:
            meta = sample.get("json") or {}
            if isinstance(meta, bytes | str):
                meta = json.loads(meta)
            with Image.open(io.BytesIO(sample["jpg"])) as im:
                image = np.asarray(im.convert("RGB"))
            with Image.open(io.BytesIO(sample["png"])) as im:
                label = np.asarray(im if im.mode == "L" else im.convert("L"))
            classes = list(meta.get("classes") or index_classes or [])
        except Exception as e:  # a corrupt sample is skipped, never fatal
            handler(e)
            continue
        if label.shape != image.shape[:2]:
            handler(ValueError(f"sample {key}: label {label.shape} does not match image {image.shape[:2]}"))
            continue
        caption = _as_text(sample.get("txt", meta.get("caption", "")))
        yield ValSample(key, image, label, classes, str(meta.get("split", split)), caption)


def iter_images_for_cache(
    spec: str | Path, split: str = "train", img_size: int = 224
) -> Iterator[tuple[str, torch.Tensor, str]]:
    """Every image of a split once, in a fixed order, resized for a one-off frozen-stem encoding pass.

    Images are resized so the short side is ``img_size`` and center-cropped (a square demo composite is
    resized as a whole). No augmentation.

    Args:
        spec: shard directory / index.json / pattern.
        split: split name.
        img_size: output side S in pixels.

    Yields:
        ``(key, FloatTensor [3,S,S] ImageNet-normalised, caption)``. Undecodable samples are skipped.

    Raises:
        DataError: the split is absent or has no shards.
    """
    from PIL import Image

    from .transforms import eval_resize, flatten_to_rgb, to_tensor_normalized

    urls = resolve_shards(spec, split)
    handler = SkipAndCount(f"{spec} ({split})")
    for sample in _plain_dataset(urls, handler):
        key = sample.get("__key__", "?")
        data = next((sample[e] for e in ("jpg", "png", "jpeg", "webp") if e in sample), None)
        try:
            if data is None:
                raise KeyError(f"sample {key} has no image")
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                img = eval_resize(flatten_to_rgb(im), img_size)
                if img is im:  # already RGB at the right size: detach from the closing file
                    img = im.copy()
        except Exception as e:  # a corrupt sample is skipped, never fatal
            handler(e)
            continue
        yield key, to_tensor_normalized(img), _as_text(sample.get("txt", ""))
