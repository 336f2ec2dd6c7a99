"""Reading and writing checkpoints of every supported format (auto-detected).

A pgseg checkpoint is a ``torch.save`` dict that describes itself::

    {"format": "pgseg-checkpoint", "schema": 1, "pgseg_version": str, "torch_version": str,
     "config": RunConfig as a dict, "model": state dict (package-shipped frozen weights excluded),
     "frozen_prefixes": [...], "step": int, "optimizer": ..., "metrics": {...}, "torch_rng": ...}

:func:`save_checkpoint` writes it atomically; it loads with ``torch.load(weights_only=True)``.
``pgseg convert`` (:mod:`.convert`) writes the same thing as a pair ``NAME.safetensors`` (weights) +
``NAME.json`` (everything else, no optimizer).

:func:`load_checkpoint` and :func:`init_from` read every path :func:`.resolve.resolve` accepts, and also (see
:mod:`.formats`, :mod:`.hf`):

* official NVlabs GroupViT / Ferenas PGSeg ``.pth`` files. The released files also pickle an OmegaConf
  ``config`` object, read as inert data under the pickle policy (:mod:`.pickle_policy`); pickles of anything
  else are refused; ``pgseg convert SRC DST --trust-pickle`` is the opt-in.
* Hugging Face ``GroupViTModel`` weights: a directory with ``config.json`` and ``model.safetensors`` (or a
  sharded index, or ``pytorch_model.bin``), or the weight file itself.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig, from_dict
from ..errors import CheckpointError
from ..models.factory import create_model
from ..models.pgseg import PGSeg
from ..models.vision import interpolate_pos_embed
from ..utils.io import atomic_torch_save, output_error
from ..version import __version__
from .formats import CHECKPOINT_FORMAT, CHECKPOINT_SCHEMA, convert_state, detect_format
from .pickle_policy import read_checkpoint_file
from .resolve import ResolvedCheckpoint, checkpoint_sha256, read_json, resolve

__all__ = [
    "CheckpointInfo",
    "LoadedCheckpoint",
    "load_checkpoint",
    "read_any_checkpoint",
    "save_checkpoint",
    "trainable_state_dict",
    "init_from",
    "fit_pos_embed",
    "load_weights",
    "check_weights_fit",
]

_log = logging.getLogger("pgseg.checkpoint")


# ----------------------------------------------------------------------------------------------------------
# writing


def trainable_state_dict(model: PGSeg) -> dict[str, torch.Tensor]:
    """State dict without the package-shipped frozen weights (what a checkpoint stores)."""
    prefixes = tuple(model.frozen_prefixes())
    return {k: v for k, v in model.state_dict().items() if not (prefixes and k.startswith(prefixes))}


def save_checkpoint(
    path: str | Path,
    model,
    cfg: RunConfig,
    step: int,
    optimizer=None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a self-describing checkpoint atomically (layout: this module's docstring).

    Args:
        path: the file to write (its folder is created).
        model: the PGSeg model; its package-shipped frozen weights are left out.
        cfg: the run config stored with the weights.
        step: training steps done.
        optimizer: stored (for ``--resume``) when given.
        metrics: the latest logged metrics.
        extra: more entries (plain data), e.g. the training loop's ``train_state`` (RNG, data position).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputError: ``path`` cannot be written (a full disk, no permission), in one line naming it. The file
            that was at ``path`` before is left whole and no temporary file stays.
    """
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "schema": CHECKPOINT_SCHEMA,
        "pgseg_version": __version__,
        "torch_version": str(torch.__version__),
        "config": cfg.to_dict(),
        "model": trainable_state_dict(model),
        "frozen_prefixes": model.frozen_prefixes(),
        "step": step,
        "metrics": metrics or {},
        "torch_rng": torch.get_rng_state(),
    }
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict()
    ckpt.update(extra or {})
    try:
        return atomic_torch_save(path, ckpt)
    except OSError as e:  # torch's own write errors are already an OutputError
        raise output_error(path, e) from e


# ----------------------------------------------------------------------------------------------------------
# reading


@dataclass
class CheckpointInfo:
    """What :func:`load_checkpoint` found besides the model.

    ``resolved`` holds the files that define the checkpoint; :attr:`sha256` is its identity.
    """

    path: str
    config: RunConfig
    step: int = 0
    source_format: str = "pgseg"  # pgseg | nvlabs-groupvit | nvlabs-pgseg | hf-groupvit
    pgseg_version: str = ""
    notes: list[str] = field(default_factory=list)  # conversion notes: dropped / new / resized keys
    metrics: dict[str, Any] = field(default_factory=dict)
    resolved: ResolvedCheckpoint | None = None

    @property
    def sha256(self) -> str:
        """The checkpoint's identity, 64 hex digits (:func:`.resolve.checkpoint_sha256`).

        Raises:
            CheckpointError, OSError: as :func:`.resolve.checkpoint_sha256`.
        """
        return self.resolved.sha256 if self.resolved is not None else checkpoint_sha256(self.path)


@dataclass
class LoadedCheckpoint:
    """Weights (our names) and config of a checkpoint of any supported format; no model built yet."""

    path: str
    source_format: str  # pgseg | nvlabs-groupvit | nvlabs-pgseg | hf-groupvit
    state: dict[str, torch.Tensor]
    config: RunConfig
    notes: list[str] = field(default_factory=list)
    step: int = 0
    pgseg_version: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    resolved: ResolvedCheckpoint | None = None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors on the CPU.

    Raises:
        CheckpointError: missing, truncated or corrupt.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: file is truncated or corrupt ({e})") from e


def _read_weights(path: Path, trust_pickle: bool) -> Any:
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return read_checkpoint_file(path, trust_pickle=trust_pickle)


def _read_object(res: ResolvedCheckpoint, trust_pickle: bool) -> tuple[Any, dict | None]:
    """(checkpoint object, HF config dict or None) of a resolved checkpoint."""
    if res.kind == "pair":
        meta = read_json(res.meta)
        return {**meta, "model": read_safetensors(res.weights[0])}, None
    if len(res.weights) == 1:
        obj = _read_weights(res.weights[0], trust_pickle)
    else:  # HF shards
        obj = {}
        for shard in res.weights:
            obj.update(_read_weights(shard, trust_pickle))
    hf_cfg = read_json(res.meta) if res.kind == "hf" else None
    return obj, hf_cfg


def _pgseg_checkpoint(obj: dict[str, Any], path: str | Path, res: ResolvedCheckpoint) -> LoadedCheckpoint:
    """A pgseg-format checkpoint object checked (schema, config, weights) and unpacked."""
    if obj.get("schema", 0) > CHECKPOINT_SCHEMA:
        raise CheckpointError(
            f"{path} has checkpoint schema {obj.get('schema')}, newer than this pgseg "
            f"supports ({CHECKPOINT_SCHEMA}); upgrade pgseg"
        )
    try:
        cfg = from_dict(RunConfig, obj["config"])
    except Exception as e:
        raise CheckpointError(f"{path}: stored config is invalid ({e})") from e
    state = obj.get("model")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no model weights (no 'model' state dict); it is not usable")
    notes = [str(n) for n in obj.get("notes", [])]
    if obj.get("source_format") and obj.get("source_format") != "pgseg":
        notes.insert(0, f"converted from {obj['source_format']} ({obj.get('source', '?')})")
    return LoadedCheckpoint(
        path=os.fspath(path),
        source_format="pgseg",
        state=state,
        config=cfg,
        notes=notes,
        step=int(obj.get("step", 0)),
        pgseg_version=str(obj.get("pgseg_version", "")),
        metrics=obj.get("metrics", {}) or {},
        resolved=res,
    )


def read_any_checkpoint(
    path: str | Path, *, trust_pickle: bool = False, keep_mapping_text: bool = False
) -> LoadedCheckpoint:
    """Read and auto-detect a checkpoint, returning its weights in our names and its (inferred) config.

    Args:
        path: a pgseg checkpoint (file, run directory, or ``NAME.safetensors`` / ``NAME.json`` pair), an
            official GroupViT / PGSeg ``.pth``, or HF GroupViT weights (directory or file); see
            :func:`.resolve.resolve`.
        trust_pickle: allow ``torch.load(weights_only=False)`` for files that need code to unpickle.
        keep_mapping_text: keep the released, unused ``img_encoder.mapping_text`` head of official PGSeg
            files.

    Raises:
        CheckpointError: unreadable, of another model kind, or a pickle needing code without ``trust_pickle``.
    """
    res = resolve(path)
    obj, hf_cfg = _read_object(res, trust_pickle)
    try:
        fmt = detect_format(obj)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if fmt == "pgseg":
        return _pgseg_checkpoint(obj, path, res)
    state, mcfg, notes = convert_state(obj, fmt, keep_mapping_text=keep_mapping_text, hf_config=hf_cfg)
    cfg = RunConfig(name=f"{fmt}:{res.name or Path(res.source).stem}", model=mcfg)
    return LoadedCheckpoint(
        path=os.fspath(path), source_format=fmt, state=state, config=cfg, notes=notes, resolved=res
    )


# ----------------------------------------------------------------------------------------------------------
# into a model


def fit_pos_embed(state: dict[str, torch.Tensor], model: PGSeg, notes: list[str]) -> dict[str, torch.Tensor]:
    """Bicubically resize a checkpoint's pos-embed to the model's grid when they differ (noted in ``notes``).

    Raises:
        CheckpointError: the stored pos-embed is not a square grid.
    """
    key = "img_encoder.pos_embed"
    if key not in state:
        return state
    src, dst = state[key], model.img_encoder.pos_embed
    if src.shape == dst.shape or src.ndim != 3 or src.shape[-1] != dst.shape[-1]:
        return state
    n = src.shape[1]
    side = math.isqrt(n)
    if side * side != n:
        raise CheckpointError(
            f"{key} has {n} positions, not a square grid; cannot resize it to {model.img_encoder.grid}"
        )
    new = model.img_encoder.grid
    notes.append(f"{key} resized bicubically from {side}x{side} to {new[0]}x{new[1]}")
    return {**state, key: interpolate_pos_embed(src, (side, side), new)}


def load_weights(model: PGSeg, state: dict[str, torch.Tensor], path: str) -> tuple[list[str], list[str]]:
    """Non-strict load with readable shape errors; returns (missing non-frozen keys, unexpected keys).

    Raises:
        CheckpointError: a tensor whose shape differs from the model's (``path`` names the checkpoint).
    """
    own = model.state_dict()
    bad = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if bad:
        raise CheckpointError(
            f"{path}: weights do not match the model (size mismatch for {len(bad)} tensors, e.g. {bad[0]})"
        )
    _, unexpected = model.load_state_dict(state, strict=False)
    frozen = tuple(model.frozen_prefixes())
    # computed directly: load_state_dict does not report a missing BatchNorm num_batches_tracked
    missing = [k for k in own if k not in state and not (frozen and k.startswith(frozen))]
    return missing, list(unexpected)


def check_weights_fit(
    path: str | Path,
    source_format: str,
    missing: list[str],
    unexpected: list[str],
    notes: list[str],
    *,
    against: str = "the stored config",
    explain_unexpected: bool = True,
) -> None:
    """Check the keys :func:`load_weights` reported; note the new keys a converted checkpoint leaves random.

    A pgseg checkpoint must fill its model exactly. One of another ``source_format`` may leave keys of the
    model new (appended to ``notes`` as initialised at random) but must bring no weight the model has no
    place for.

    Args:
        against: what the mismatch message says the weights were checked against.
        explain_unexpected: name a converted checkpoint's unplaced weights in a message of their own
            (``False``: the mismatch message, as :func:`.convert.convert_checkpoint` words it).

    Raises:
        CheckpointError: missing keys of a pgseg checkpoint, or unexpected keys.
    """
    exact = source_format == "pgseg"
    if unexpected and not exact and explain_unexpected:
        raise CheckpointError(
            f"{path}: {len(unexpected)} {source_format} weights have no place in the "
            f"inferred model, e.g. {unexpected[:3]}"
        )
    if unexpected or (missing and exact):
        raise CheckpointError(
            f"{path}: weights do not match {against} ({len(missing)} missing, e.g. "
            f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
    if missing:
        notes.append(
            f"{len(missing)} new keys initialised at random: {', '.join(missing[:8])}"
            + (" ..." if len(missing) > 8 else "")
        )


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[PGSeg, CheckpointInfo]:
    """Rebuild the model stored in a checkpoint of any supported format, in eval mode.

    Args:
        path: a pgseg checkpoint (file, run directory with ``last.pt``, or a ``pgseg convert`` pair), an
            official NVlabs GroupViT / PGSeg ``.pth``, or HF GroupViT weights (directory with
            ``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``, or the weight file); see
            :func:`.resolve.resolve`.
        device: where to put the model.

    Returns:
        (model, info): ``info.config`` is the stored run config (pgseg) or one inferred from the weights;
        ``info.source_format`` and ``info.notes`` (dropped / new / resized keys) describe the conversion.

    Raises:
        CheckpointError: unreadable file, another model kind, a pickle that needs code other than an
            OmegaConf config (convert it with ``pgseg convert --trust-pickle``), or weights that do not fit
            the config.
    """
    loaded = read_any_checkpoint(path)
    model = create_model(loaded.config.model)
    notes = list(loaded.notes)
    state = fit_pos_embed(loaded.state, model, notes)
    try:
        missing, unexpected = load_weights(model, state, os.fspath(path))
    except CheckpointError as e:
        if loaded.source_format == "pgseg":
            raise CheckpointError(str(e).replace("the model", "the stored config")) from None
        raise
    check_weights_fit(path, loaded.source_format, missing, unexpected, notes)
    model.to(device).eval()
    info = CheckpointInfo(
        path=os.fspath(path),
        config=loaded.config,
        step=loaded.step,
        source_format=loaded.source_format,
        pgseg_version=loaded.pgseg_version,
        notes=notes,
        metrics=loaded.metrics,
        resolved=loaded.resolved,
    )
    for note in notes:
        _log.info("%s: %s", path, note)
    return model, info


def init_from(model: PGSeg, path: str | Path) -> dict[str, Any]:
    """Initialise ``model``'s weights from a checkpoint of any supported format (non-strict).

    Typical use: start PGSeg from a GroupViT checkpoint; the PGSeg-only parts (NPR ``downsample_spatial``,
    ``img_encoder.logit_scale``, ``text_npr.mu``) keep their fresh initialisation and are reported as new.
    A pos-embed of another grid is resized bicubically.

    Returns:
        report ``{"path", "source_format", "loaded": [keys], "new_keys": [keys], "ignored_keys": [keys],
        "notes": [...]}``; ``new_keys`` excludes package-shipped frozen weights.

    Raises:
        CheckpointError: unreadable checkpoint, or a tensor whose shape differs from the model's.
    """
    loaded = read_any_checkpoint(path, keep_mapping_text=hasattr(model.img_encoder, "mapping_text"))
    notes = list(loaded.notes)
    state = fit_pos_embed(loaded.state, model, notes)
    missing, unexpected = load_weights(model, state, os.fspath(path))
    loaded_keys = [k for k in state if k not in set(unexpected)]
    report = {
        "path": os.fspath(path),
        "source_format": loaded.source_format,
        "loaded": loaded_keys,
        "new_keys": missing,
        "ignored_keys": unexpected,
        "notes": notes,
    }
    _log.info(
        "initialised from %s (%s): %d tensors loaded, %d new keys %s, %d ignored keys %s",
        path,
        loaded.source_format,
        len(loaded_keys),
        len(missing),
        missing[:8],
        len(unexpected),
        unexpected[:4],
    )
    for note in notes:
        _log.info("%s: %s", path, note)
    return report
