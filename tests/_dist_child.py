"""One rank of the DDP equality test (tests/test_train_distributed.py): pgseg-tiny, fp32 on the CPU, three
steps of the training engine on this rank's slice of a fixed global batch; rank 0 saves the state dict.

Usage: RANK=r WORLD_SIZE=w MASTER_ADDR=127.0.0.1 MASTER_PORT=p python tests/_dist_child.py OUT.pt [CHUNKS
[OVERRIDES_JSON]] (without RANK: one process with the whole batch). In OVERRIDES_JSON, ``"_shared_nouns":
true`` picks captions whose nouns are shared across the batch (the multi-label test).
"""

from __future__ import annotations

import sys
from contextlib import nullcontext

import torch

from pgseg_core.config import load_config
from pgseg_core.models.factory import create_model
from pgseg_core.train import distributed as dist
from pgseg_core.train.loop import train_step
from pgseg_core.train.optim import build_scheduler

GLOBAL_BATCH, STEPS = 8, 3


def global_batch(shared_nouns: bool = False) -> tuple[torch.Tensor, list[str]]:
    """Fixed images and captions; ``shared_nouns``: two nouns per caption, most shared across captions and
    across the ranks' halves (the multi-label prompts then span ranks)."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(GLOBAL_BATCH, 3, 64, 64, generator=g)
    if shared_nouns:
        first, second = ["cat", "dog", "bird"], ["tree", "car", "boat", "lamp", "cat"]
        captions = [f"a {first[i % 3]} and a {second[i % 5]}" for i in range(GLOBAL_BATCH)]
    else:
        captions = [f"a photo of thing number {i} on a table" for i in range(GLOBAL_BATCH)]
    return images, captions


def run(out: str, chunks: int = 1, extra: dict | None = None) -> None:
    torch.set_num_threads(1)
    extra = dict(extra or {})
    shared_nouns = bool(extra.pop("_shared_nouns", False))
    overrides = {"train.hard_assign_start": 100, "train.batch_size": GLOBAL_BATCH, "train.steps": STEPS,
                 "train.grad_cache_chunks": chunks, **extra}  # fmt: skip
    cfg = load_config("pgseg-tiny", overrides)
    info, device = dist.setup(torch.device("cpu"))
    torch.manual_seed(0)
    model = create_model(cfg.model)
    # plain SGD (the schedule scales its lr 1e-3): AdamW turns the float-rounding gradients of parameters
    # whose exact gradient is 0 (biases before a BatchNorm) into lr-sized steps of arbitrary sign
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    scheduler = build_scheduler(optimizer, cfg.train)
    forward = dist.wrap_model(model, info, device)
    model.train()
    images, captions = global_batch(shared_nouns)
    b = GLOBAL_BATCH // info.world
    mine = slice(info.rank * b, (info.rank + 1) * b)
    losses = []
    for step in range(STEPS):
        out_losses, _ = train_step(cfg, model, forward, optimizer, scheduler, step, {"images": images[mine]},
                                   captions[mine], nullcontext())  # fmt: skip
        losses.append(float(out_losses["loss_itc"]))
    if info.main:
        torch.save({"state": model.state_dict(), "loss_itc": losses}, out)
    dist.barrier()
    dist.teardown()


if __name__ == "__main__":
    import json

    run(
        sys.argv[1],
        int(sys.argv[2]) if len(sys.argv) > 2 else 1,
        json.loads(sys.argv[3]) if len(sys.argv) > 3 else None,
    )
