"""Speed switches of the training step: activation checkpointing and ``torch.compile`` (docs/TRAINING.md §7).

bf16 autocast on CUDA (``train.amp``) and fused AdamW on CUDA (``train/optim.py``) were already on; these two
trade compute for memory and compile time for step time.
"""

from __future__ import annotations

import difflib
import functools
import logging

import torch
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
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


def maybe_compile(forward: torch.nn.Module, enabled: bool, backend: str = "inductor") -> torch.nn.Module:
    """``torch.compile(forward, backend=backend)`` when ``enabled``; ``forward`` itself otherwise.

    The first calls compile (minutes for the paper's models on a CPU). The graph breaks where the step needs
    data-dependent values: the Hungarian matching (SciPy / the matching kernel), HRS's keep decision and the
    text EM's token selection; tokenisation and the frozen MiniLM tower run outside the graph
    (``torch.compiler.disable``). ``aot_eager`` traces the same graphs without code generation (a quick check
    of capture and autograd; its values equal the eager step's up to float rounding).

    Raises:
        ConfigError: ``backend`` is not one of ``torch._dynamo.list_backends(exclude_tags=())``.
    """
    if not enabled:
        return forward
    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        hint = difflib.get_close_matches(backend, known, n=1)
        raise ConfigError(
            f"train.compile_backend {backend!r} is not a torch.compile backend"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; known: {', '.join(sorted(known))}"
        )
    _log.info("torch.compile (backend %s): the first steps compile the training forward", backend)
    return torch.compile(forward, backend=backend)
