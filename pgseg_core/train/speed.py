"""Speed switches of the training step: activation checkpointing and ``torch.compile`` (docs/TRAINING.md §7).

bf16 autocast on CUDA (``train.amp``) and fused AdamW on CUDA (``train/optim.py``) were already on; these two
trade compute for memory and compile time for step time.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch.utils.checkpoint import checkpoint

from ..models.layers import Block
from ..models.text import ResidualAttentionBlock

__all__ = ["checkpoint_activations", "maybe_compile"]

_log = logging.getLogger("pgseg.train")


def checkpoint_activations(model: torch.nn.Module) -> int:
    """Recompute every transformer block (image ``Block``, text ``ResidualAttentionBlock``) in the backward
    instead of keeping its activations (``torch.utils.checkpoint``, non-reentrant, RNG state preserved so
    dropout repeats). The gradients equal the plain step's; the grouping blocks keep their activations.

    Returns:
        the number of blocks wrapped.
    """
    n = 0
    for module in model.modules():
        if isinstance(module, (Block, ResidualAttentionBlock)) and not getattr(module, "_pgseg_ckpt", False):
            plain = module.forward
            module.forward = functools.partial(checkpoint, plain, use_reentrant=False)
            module._pgseg_ckpt = True
            n += 1
    _log.info("activation checkpointing: %d transformer blocks recompute in the backward", n)
    return n


def maybe_compile(forward: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``torch.compile(forward)`` when ``enabled`` (the first steps compile; the graph breaks at the Hungarian
    matching, which runs in SciPy on the CPU)."""
    if not enabled:
        return forward
    _log.info("torch.compile: the first steps compile the training forward")
    return torch.compile(forward)
