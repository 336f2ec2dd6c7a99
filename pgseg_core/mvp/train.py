"""``pgseg train --method mvp-seg``: learn the prompts and scales on seen-class pixel labels
(docs/MVP_SEG.md §3, §6).

First pass: every training image is resized (``short_side`` / ``max_long``), its label remapped to the seen
vocabulary (unseen classes → 255, ignored) and sampled at the dense cells' centres, and its frozen dense map
computed once into the HDF5 feature cache (``dense`` section, keyed by image content and backbone). Every
step then reads the maps of its batch from the cache (``use_cache=False`` runs the image tower every step
instead: the benchmark's reference), encodes the P × C prompts with the frozen text tower and updates only
the prompts and the two scales (AdamW).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backbones import load_backbone
from ..splits import default_split, load_split
from ..utils.device import resolve_device
from ..utils.io import atomic_write_json, ensure_dir
from .checkpoint import RUN_FILE, save_mvp_checkpoint
from .config import MVPConfig
from .data import BACKGROUND, open_labelled, remap_label, sample_names, vocabulary
from .dense_cache import open_dense_cache
from .losses import classification_loss, image_labels, segmentation_loss, total_loss
from .model import MVPSeg
from .predict import DensePredictor

__all__ = ["train_mvp", "MVPTrainResult", "DEFAULT_TRAIN_PART", "first_pass", "fit_prompts"]

logger = logging.getLogger("pgseg.mvp")
DEFAULT_TRAIN_PART = "train-seen"


@dataclass
class MVPTrainResult:
    checkpoint: str
    steps: int
    seconds: float
    device: str
    final: dict[str, float] = field(default_factory=dict)
    images: int = 0
    images_encoded: int = 0
    images_from_cache: int = 0
    steps_per_s: float = 0.0


@dataclass
class _Example:
    key: str  # image content key (cache) or "" without cache
    image: np.ndarray | None  # kept only without cache
    target: torch.Tensor  # [h, w] int64 seen-vocabulary index per dense cell, 255 ignored


def _cell_targets(
    label: np.ndarray, grid: tuple[int, int], stride: int, resized: tuple[int, int]
) -> np.ndarray:
    """The label at the centre of each dense cell (cells cover the padded resized image)."""
    h0, w0 = label.shape
    h, w = grid
    ys = ((np.arange(h) + 0.5) * stride * h0 / resized[0]).astype(int)
    xs = ((np.arange(w) + 0.5) * stride * w0 / resized[1]).astype(int)
    inside_y, inside_x = ys < h0, xs < w0
    out = np.full((h, w), 255, dtype=np.int64)
    out[np.ix_(inside_y, inside_x)] = label[np.ix_(ys[inside_y], xs[inside_x])]
    return out


def first_pass(pred: DensePredictor, labelled, vocab: list[str], use_cache: bool, tick) -> list[_Example]:
    examples = []
    from .dense_cache import image_content_key

    for _, samples in labelled.parts:
        for s in samples():
            image = np.asarray(s.image)
            label = remap_label(s.label, sample_names(s, labelled.background), vocab)
            dense, resized = pred.dense(image)
            target = _cell_targets(label, tuple(dense.shape[-2:]), pred.backbone.stride, resized)
            key = image_content_key(image) if use_cache else ""
            examples.append(_Example(key, None if use_cache else image, torch.from_numpy(target)))
            if tick is not None:
                tick("cache", len(examples), None, {})
    return examples


def _step_loss(model: MVPSeg, pred: DensePredictor, batch: list[_Example], vocab: list[str]) -> dict:
    cfg = model.cfg
    emb = model.class_embeddings(vocab)
    seg, cls = [], []
    for ex in batch:
        dense = pred.dense(ex.image)[0] if ex.image is not None else _cached(pred, ex.key)
        out = model(dense, emb)
        target = ex.target.to(dense.device)[None]
        seg.append(segmentation_loss(out.gated, target))
        if cfg.gpr:
            cls.append(classification_loss(out.scores, image_labels(target, len(vocab))))
    l_seg = torch.stack(seg).mean()
    l_cls = torch.stack(cls).mean() if cls else l_seg * 0.0
    l_oc = model.oc_loss()
    loss = total_loss(l_seg, l_cls, l_oc, (cfg.lambda_seg, cfg.lambda_cls, cfg.lambda_oc))
    return {"loss": loss, "loss_seg": l_seg, "loss_cls": l_cls, "loss_oc": l_oc}


def _cached(pred: DensePredictor, key: str) -> torch.Tensor:
    from .dense_cache import read_dense

    dense = read_dense(pred.cache, key, pred.device)
    pred.from_cache += 1
    return dense


def fit_prompts(
    model, pred, examples, vocab, cfg: MVPConfig, out: Path, progress
) -> tuple[dict[str, float], float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    final: dict[str, float] = {}
    t0 = time.perf_counter()
    with (out / "metrics.jsonl").open("w", encoding="utf-8") as log:
        for step in range(1, cfg.steps + 1):
            if len(order) < cfg.batch_size:
                order += torch.randperm(len(examples), generator=gen).tolist()
            batch = [examples[i] for i in order[: cfg.batch_size]]
            del order[: cfg.batch_size]
            losses = _step_loss(model, pred, batch, vocab)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            opt.step()
            final = {k: float(v.detach()) for k, v in losses.items()}
            final.update(tau1=float(model.log_tau1.detach().exp()), tau2=float(model.log_tau2.detach().exp()))
            log.write(json.dumps({"step": step, **final}) + "\n")
            if progress is not None:
                progress("train", step, cfg.steps, final)
    return final, time.perf_counter() - t0


def train_mvp(
    backbone: str,
    data: str | None,
    out_dir: str | Path,
    *,
    dataset: str | None = None,
    data_root: str | None = None,
    parts: list[str] | None = None,
    zs_split: str | None = None,
    overrides: dict[str, Any] | None = None,
    device: str = "auto",
    cache: str | Path | None = None,
    use_cache: bool = True,
    progress: Callable[[str, int, int | None, dict], None] | None = None,
) -> MVPTrainResult:
    """Train MVP-SEG prompts on the seen classes of ``zs_split`` (default ``demo-30-8`` on demo shards, whose
    ``train-seen`` split is read) and write ``OUT/mvp.pt``, ``OUT/metrics.jsonl``, ``OUT/mvp_config.json``.

    Args:
        backbone: ``open_clip:MODEL:WEIGHTS`` or ``pgseg:CHECKPOINT``.
        parts: shard splits / the dataset split to train on (default train-seen / train).
        overrides: MVPConfig keys (``mvp.steps``, ``mvp.lambda_oc``...).
        cache: the dense-feature cache (default ``OUT/dense_cache.h5``); ``use_cache=False`` runs the
            image tower at every step (benchmark reference).

    Raises:
        ConfigError, DataError, CheckpointError, OutputError from the steps.
    """
    cfg = MVPConfig().with_overrides(overrides or {})
    torch.manual_seed(cfg.seed)
    out = ensure_dir(out_dir)
    zs = load_split(zs_split or default_split(dataset))
    dev = resolve_device(device)
    bb = load_backbone(backbone, dev)
    model = MVPSeg(bb, cfg, generator=torch.Generator().manual_seed(cfg.seed))
    labelled = open_labelled(
        data, dataset, data_root, parts=parts or [DEFAULT_TRAIN_PART if dataset is None else "train"], zs=zs
    )
    vocab = vocabulary(labelled, list(zs.seen))
    if cfg.bg_thresh > 0:  # background is GroupViT's threshold, never a learned class: its pixels are ignored
        vocab = [c for c in vocab if c != BACKGROUND]
    pred = DensePredictor(bb, None, [], cfg.short_side, cfg.max_long)
    if use_cache:
        pred.cache = open_dense_cache(cache or out / "dense_cache.h5", bb, cfg.short_side, cfg.max_long)
    try:
        examples = first_pass(pred, labelled, vocab, use_cache, progress)
        if not examples:
            from ..errors import DataError

            raise DataError(
                f"no training images in {data or dataset}: check the split ({parts or DEFAULT_TRAIN_PART})"
            )
        meta = {**cfg.to_dict(), "backbone": bb.reference, "vocabulary": vocab}
        atomic_write_json(out / "mvp_config.json", meta)
        logger.info(
            "MVP-SEG: %d training images (%d encoded), %d classes", len(examples), pred.encoded, len(vocab)
        )
        final, seconds = fit_prompts(model, pred, examples, vocab, cfg, out, progress)
    finally:
        if pred.cache is not None:
            pred.cache.close()
    path = save_mvp_checkpoint(out / RUN_FILE, model, vocab, cfg.steps)
    return MVPTrainResult(
        checkpoint=str(path), steps=cfg.steps, seconds=seconds, device=str(dev), final=final,
        images=len(examples), images_encoded=pred.encoded, images_from_cache=pred.from_cache,
        steps_per_s=cfg.steps / max(seconds, 1e-9),
    )  # fmt: skip
