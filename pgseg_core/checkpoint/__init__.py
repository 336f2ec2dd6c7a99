"""Checkpoints: one resolution of a user path, one identity, reading, writing and conversion.

* :mod:`.resolve`: :func:`resolve` (which files define the checkpoint a path names: a file, a run directory,
  a ``pgseg convert`` pair, an HF GroupViT directory) and :func:`checkpoint_sha256` (its one identity);
* :mod:`.io`: :func:`load_checkpoint`, :func:`read_any_checkpoint`, :func:`init_from`,
  :func:`save_checkpoint`;
* :mod:`.pickle_policy`: :func:`read_checkpoint_file` (``weights_only=True``, inert OmegaConf configs,
  ``--trust-pickle``);
* :mod:`.formats` (format detection, official NVlabs / PGSeg names) and :mod:`.hf` (HF ``GroupViTModel``);
* :mod:`.convert`: :func:`convert_checkpoint` (``pgseg convert``);
* :mod:`.registry`: released weights by name (:func:`fetch_weights`, :func:`list_weights`), downloaded by
  :mod:`.download` (HTTP) and :mod:`.hub_fetch` (Hugging Face Hub, Google Drive) (docs/WEIGHTS.md).
"""

from .convert import convert_checkpoint
from .formats import CHECKPOINT_FORMAT, CHECKPOINT_SCHEMA, FORMATS, detect_format
from .io import (
    CheckpointInfo,
    LoadedCheckpoint,
    init_from,
    load_checkpoint,
    read_any_checkpoint,
    save_checkpoint,
    trainable_state_dict,
)
from .pickle_policy import read_checkpoint_file
from .registry import fetch_weights, list_weights
from .resolve import ResolvedCheckpoint, checkpoint_sha256, resolve

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_SCHEMA",
    "FORMATS",
    "CheckpointInfo",
    "LoadedCheckpoint",
    "ResolvedCheckpoint",
    "checkpoint_sha256",
    "convert_checkpoint",
    "detect_format",
    "fetch_weights",
    "init_from",
    "list_weights",
    "load_checkpoint",
    "read_any_checkpoint",
    "read_checkpoint_file",
    "resolve",
    "save_checkpoint",
    "trainable_state_dict",
]
