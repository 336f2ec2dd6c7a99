"""What a training checkpoint holds beyond the weights, and how ``--resume`` finds a complete one.

A run directory keeps two checkpoints: ``last.pt`` and ``last.prev.pt`` (the one before it). Each is written
atomically (temp file, fsync, rename); before a new ``last.pt`` replaces the old one, the old one becomes
``last.prev.pt`` through a hard link and a rename, so at every instant ``last.pt`` is a whole file and a
previous whole file is kept. ``--resume`` reads ``last.pt``; a file that is truncated or corrupt (or not a
training checkpoint) is refused with one log line naming it and the reason, and ``last.prev.pt`` is used
(docs/TRAINING.md §2).

The resumable state (``train_state`` in the checkpoint) is plain data that loads with
``torch.load(weights_only=True)``: one entry per rank with every RNG
state (Python ``random``, NumPy's global generator, torch CPU, each CUDA device) and the data loader's
position (:mod:`pgseg_core.data.position`).
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import CHECKPOINT_FORMAT, read_checkpoint_file
from ..errors import CheckpointError

__all__ = [
    "PREV_NAME",
    "capture_rng",
    "restore_rng",
    "keep_previous",
    "read_resume_checkpoint",
]

#: The previous checkpoint beside ``last.pt``.
PREV_NAME = "last.prev.pt"

_log = logging.getLogger("pgseg.train")


def capture_rng() -> dict[str, Any]:
    """This process's RNG states as plain data: ``{"python", "numpy", "torch", "cuda"}`` (``cuda``: one
    ByteTensor per visible device, empty without CUDA)."""
    version, words, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [int(version), torch.tensor(words, dtype=torch.int64), gauss],
        "numpy": [
            str(name),
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Set every RNG of this process from :func:`capture_rng`'s output.

    Raises:
        CheckpointError: the state was saved with CUDA devices this process does not have.
    """
    version, words, gauss = state["python"]
    random.setstate((int(version), tuple(int(w) for w in words.tolist()), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    cuda = list(state.get("cuda") or [])
    if cuda:
        if not torch.cuda.is_available() or torch.cuda.device_count() < len(cuda):
            raise CheckpointError(
                f"the checkpoint holds the RNG states of {len(cuda)} CUDA devices and this process sees "
                f"{torch.cuda.device_count() if torch.cuda.is_available() else 0}: resume on the same devices"
            )
        torch.cuda.set_rng_state_all(cuda)


def keep_previous(last: Path) -> None:
    """Make the whole ``last`` (if any) the run's ``last.prev.pt`` without a moment where ``last`` is gone
    (hard link to a temp name, then one rename; a copy where links are not supported)."""
    if not last.exists():
        return
    prev = last.with_name(PREV_NAME)
    tmp = last.with_name(f".{PREV_NAME}.{os.getpid()}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(last, tmp)
    except OSError:
        import shutil

        shutil.copyfile(last, tmp)
    os.replace(tmp, prev)


def _read_training_checkpoint(path: Path) -> dict[str, Any]:
    ckpt = read_checkpoint_file(path)  # CheckpointError for a truncated / corrupt file
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a pgseg training checkpoint")
    return ckpt


def read_resume_checkpoint(last: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete checkpoint of a run: ``last`` or, when it is missing, truncated or corrupt,
    ``last.prev.pt`` (one warning line says which file was refused and why).

    Returns:
        (its path, its dict), or None when the run has neither file.

    Raises:
        CheckpointError: the files exist but none is complete, in one line naming each and its reason.
    """
    problems = []
    for path in (last, last.with_name(PREV_NAME)):
        if not path.exists():
            continue
        try:
            ckpt = _read_training_checkpoint(path)
        except CheckpointError as e:
            _log.warning("refusing %s: %s", path, str(e).splitlines()[0])
            problems.append(f"{path.name}: {str(e).splitlines()[0]}")
            continue
        if problems:
            _log.warning("resuming from the previous complete checkpoint %s", path)
        return path, ckpt
    if problems:
        raise CheckpointError(
            f"no complete checkpoint to resume from in {last.parent} ({'; '.join(problems)}): "
            "start over with --overwrite"
        )
    return None
