"""``pgseg convert``: any supported checkpoint -> a pgseg pair ``DST.safetensors`` + ``DST.json``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..models.factory import create_model
from ..errors import OutputError
from ..utils.io import atomic_write, atomic_write_json, check_writable_file, output_error, remove_stale_temps
from ..version import __version__
from .formats import CHECKPOINT_FORMAT, CHECKPOINT_SCHEMA
from .io import check_weights_fit, fit_pos_embed, load_weights, read_any_checkpoint, trainable_state_dict

__all__ = ["convert_checkpoint", "output_pair"]


def convert_checkpoint(src: str | Path, dst: str | Path, *, trust_pickle: bool = False) -> dict[str, Any]:
    """Convert any supported checkpoint to pgseg's safetensors pair ``DST.safetensors`` + ``DST.json``.

    The weights are validated by loading them into the model their config describes. Official PGSeg's unused
    ``mapping_text`` head is dropped.

    Args:
        src: any format :func:`.io.load_checkpoint` reads, plus pickles that need code when ``trust_pickle``.
        dst: output stem (a ``.safetensors`` or ``.json`` suffix is stripped).
        trust_pickle: allow ``torch.load(weights_only=False)`` (runs the file's pickled code) for pickles
            that need code (the official ``.pth`` releases load without it: their OmegaConf config is read
            as inert data).

    Returns:
        ``{"weights", "config", "source_format", "tensors", "parameters", "notes"}``.

    The output paths are checked before the source is read. Both files are written atomically: a failed
    write (a full disk) leaves an old pair as it was; the old ``DST.json`` is removed only once the new
    weights are complete, just before they replace the old ones, so a run killed at any point never leaves
    a config beside weights it does not describe (at worst a bare ``DST.safetensors``: convert again).

    Raises:
        CheckpointError: as :func:`.io.load_checkpoint`.
        OutputError: ``DST`` is under a file or in a folder that cannot be created or written (checked
            before any work), or the disk filled up while writing.
    """
    weights, meta_path = output_pair(dst)
    loaded = read_any_checkpoint(src, trust_pickle=trust_pickle)
    model = create_model(loaded.config.model, load_frozen=False)
    notes = list(loaded.notes)
    state = fit_pos_embed(loaded.state, model, notes)
    missing, unexpected = load_weights(model, state, os.fspath(src))
    check_weights_fit(
        src,
        loaded.source_format,
        missing,
        unexpected,
        notes,
        against="their config",
        explain_unexpected=False,
    )
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in trainable_state_dict(model).items()}
    meta = {
        "format": CHECKPOINT_FORMAT,
        "schema": CHECKPOINT_SCHEMA,
        "pgseg_version": __version__,
        "torch_version": str(torch.__version__),
        "weights": weights.name,
        "config": loaded.config.to_dict(),
        "frozen_prefixes": model.frozen_prefixes(),
        "step": loaded.step,
        "metrics": loaded.metrics,
        "source_format": loaded.source_format,
        "source": os.fspath(src),
        "notes": notes,
    }
    _write_pair(weights, meta_path, tensors, meta)
    params = sum(v.numel() for k, v in model.named_parameters() if k in tensors)
    return {
        "weights": os.fspath(weights),
        "config": os.fspath(meta_path),
        "source_format": loaded.source_format,
        "tensors": len(tensors),
        "parameters": params,
        "notes": notes,
    }


def output_pair(dst: str | Path) -> tuple[Path, Path]:
    """``(DST.safetensors, DST.json)`` for the output stem ``dst`` (a ``.safetensors`` / ``.json`` suffix is
    stripped), both checked writable (:func:`pgseg_core.utils.io.check_writable_file`); temporary files of
    killed earlier conversions beside them are removed.

    Raises:
        OutputError: a path is a folder, or its folder cannot be created or written.
    """
    stem = Path(dst)
    if stem.suffix in (".safetensors", ".json"):
        stem = stem.with_suffix("")
    weights, meta_path = Path(f"{stem}.safetensors"), Path(f"{stem}.json")
    for path in (weights, meta_path):
        check_writable_file(path)
    remove_stale_temps(stem.parent)
    return weights, meta_path


def _write_pair(
    weights: Path, meta_path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Write the weights to a temporary file; once it is complete, remove the old config and move the
    weights in place; then write the config. A full disk leaves the old pair as it was; a kill leaves never
    new weights beside an old config. Any write failure becomes one OutputError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    def write_weights(tmp: str) -> None:
        mode = os.stat(tmp).st_mode  # the umask's, set by atomic_write
        save_file(tensors, tmp, metadata={"format": "pt"})  # replaces the file: a new one, mode 0600
        os.chmod(tmp, mode)
        meta_path.unlink(missing_ok=True)

    try:
        atomic_write(weights, write_weights)
    except OSError as e:
        raise output_error(meta_path if str(e.filename) == str(meta_path) else weights, e) from e
    except SafetensorError as e:  # safetensors reports a failed write (a full disk) as its own error
        raise OutputError(
            f"cannot write {weights}: {str(e).splitlines()[0]} (the disk may be full: free space or write "
            "somewhere else)"
        ) from e
    try:
        atomic_write_json(meta_path, meta)
    except OSError as e:
        raise output_error(meta_path, e) from e
