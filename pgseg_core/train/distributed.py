"""The torchrun / DDP engine: process group, per-rank devices and seeds, SyncBatchNorm, DDP wrapping.

A training process started by ``torchrun`` (or by ``pgseg train --nproc N``, which runs the same through
``torch.distributed.run``'s elastic launcher) finds ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
``MASTER_ADDR`` / ``MASTER_PORT`` in its environment; :func:`setup` joins the process group (NCCL on CUDA,
gloo on the CPU) and gives each rank its device (``cuda:LOCAL_RANK``). Without those variables everything
here is a no-op for one process. ``train.batch_size`` is the GLOBAL batch: each of the W ranks trains on
``batch_size / W`` samples; the contrastive losses gather the embeddings of all ranks with gradient
(:func:`pgseg_core.losses.contrastive.gather_with_grad`), so the loss is over the global batch
(docs/TRAINING.md §3).
"""

from __future__ import annotations

import datetime
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError

__all__ = [
    "DistInfo",
    "setup",
    "teardown",
    "wrap_model",
    "gather_objects",
    "barrier",
    "broadcast_object",
]

_log = logging.getLogger("pgseg.train")


@dataclass(frozen=True)
class DistInfo:
    """This process's place: ``rank`` of ``world`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and logs progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def _env_info() -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def setup(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group (if this process was started by one) and pick the rank's device.

    Args:
        device: the resolved ``train.device``; ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun.

    Returns:
        (DistInfo, the device this rank trains on).

    Raises:
        ConfigError: ``WORLD_SIZE`` > 1 with an explicit ``cuda:N`` device (each rank takes its
            ``LOCAL_RANK``'s GPU: pass ``--device cuda``), or more local ranks than GPUs.
    """
    info = _env_info()
    if not info.active:
        return info, device
    # torch 2.x marks torch.distributed.nn.functional (the differentiable collectives used for the
    # global-batch losses and BatchNorm) deprecated in favour of a private module; keep the public API quiet
    warnings.filterwarnings("ignore", r"torch\.distributed\.nn\.functional\.\w+ is deprecated", FutureWarning)
    if device.type == "cuda":
        if device.index not in (None, 0) or torch.cuda.device_count() <= info.local_rank:
            raise ConfigError(
                f"rank {info.rank} needs GPU {info.local_rank} of {torch.cuda.device_count()}: with several "
                "processes pass --device cuda (each rank takes the GPU of its LOCAL_RANK) and at most one "
                "process per GPU"
            )
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(
            backend,
            timeout=datetime.timedelta(minutes=30),
            device_id=device if device.type == "cuda" else None,
        )
        _log.info("rank %d of %d joined the %s process group on %s", info.rank, info.world, backend, device)
    return info, device


def teardown() -> None:
    """Leave the process group (after the last collective)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def wrap_model(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """For W > 1: BatchNorm -> SyncBatchNorm on CUDA / :class:`~pgseg_core.train.syncbn.GlobalBatchNorm1d`
    on the CPU (the projection heads: statistics over the global batch) and a DDP wrapper around
    :class:`TrainForward`; for one process the same wrapper without DDP.

    DDP averages the gradients over ranks. Buffers are synced from rank 0 once, at the start, and not before
    every forward: every buffer the model keeps is updated identically on each rank (the BatchNorm running
    statistics from the global batch, the NPR prototype memories from the all-reduced batch mean).
    """
    fwd = TrainForward(model)
    if not info.active:
        return fwd
    from .syncbn import convert_batchnorm

    convert_batchnorm(model, device)
    model.to(device)
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(
        fwd, device_ids=ids, forward_sync_buffers=False, find_unused_parameters=False
    )


class TrainForward(torch.nn.Module):
    """``forward(texts, **inputs)`` = ``model.forward_train(texts, **inputs)``, so DDP's hooks see it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, texts, **inputs) -> dict[str, torch.Tensor]:
        return self.model.forward_train(texts, **inputs)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` for one process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [obj]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
