"""Model construction and checkpoint loading (every supported format, auto-detected).

A pgseg checkpoint is a ``torch.save`` dict that describes itself::

    {"format": "pgseg-checkpoint", "schema": 1, "pgseg_version": str, "torch_version": str,
     "config": RunConfig as a dict, "model": state dict (package-shipped frozen weights excluded),
     "frozen_prefixes": [...], "step": int, "optimizer": ..., "scheduler": ..., "metrics": {...}}

It loads with ``torch.load(weights_only=True)``. ``pgseg convert`` writes the same thing as a pair
``NAME.safetensors`` (weights) + ``NAME.json`` (everything else, no optimizer).

:func:`load_checkpoint` and :func:`init_from` also read (see :mod:`.convert`):

* official NVlabs GroupViT / Ferenas PGSeg ``.pth`` files. The released files also pickle an OmegaConf
  ``config`` object; its classes are allowlisted as inert stand-ins, so the file still loads with
  ``weights_only=True`` and none of its code runs (:func:`_read_with_inert_config`). Pickles of anything else
  are refused; ``pgseg convert SRC DST --trust-pickle`` (``torch.load(weights_only=False)``) is the opt-in.
* Hugging Face ``GroupViTModel`` weights: a directory with ``config.json`` and ``model.safetensors`` (or a
  sharded index, or ``pytorch_model.bin``), or the weight file itself.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig, RunConfig, from_dict, load_config
from ..errors import CheckpointError
from .convert import convert_state, detect_format
from .pgseg import PGSeg
from .vision import interpolate_pos_embed

__all__ = [
    "create_model",
    "load_checkpoint",
    "CheckpointInfo",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_SCHEMA",
    "read_checkpoint_file",
    "trainable_state_dict",
    "init_from",
    "convert_checkpoint",
    "read_any_checkpoint",
    "LoadedCheckpoint",
]

_log = logging.getLogger("pgseg.models.factory")

CHECKPOINT_FORMAT = "pgseg-checkpoint"
CHECKPOINT_SCHEMA = 1


def create_model(cfg: ModelConfig | RunConfig | str, *, load_frozen: bool = True) -> PGSeg:
    """Build a model from a model config, a run config, or a preset name.

    Args:
        cfg: :class:`ModelConfig`, :class:`RunConfig`, or a preset name such as ``"pgseg-s"``.
        load_frozen: load package-shipped frozen weights of the demo variant (EfficientNet-Lite0 stem).

    Raises:
        ConfigError: unknown preset. DependencyError: demo weights not installed.
    """
    if isinstance(cfg, str):
        cfg = load_config(cfg)
    if isinstance(cfg, RunConfig):
        cfg = cfg.model
    model = PGSeg(cfg)
    if load_frozen:
        model.load_frozen_weights()
    return model


def trainable_state_dict(model: PGSeg) -> dict[str, torch.Tensor]:
    """State dict without the package-shipped frozen weights."""
    prefixes = tuple(model.frozen_prefixes())
    return {k: v for k, v in model.state_dict().items() if not (prefixes and k.startswith(prefixes))}


# ----------------------------------------------------------------------------------------------------------
# reading files

_PICKLE_HELP = (
    "only tensors and an OmegaConf training config (as in the official GroupViT / PGSeg releases) load "
    "safely; if you trust the file, convert it once with 'pgseg convert SRC DST --trust-pickle' "
    "and load DST"
)


def _pickle_refused(e: BaseException) -> bool:
    text = str(e)
    return "weights_only" in text or "Unsupported global" in text


def _refused_global(e: BaseException) -> str:
    for line in str(e).splitlines():
        if "Unsupported global" in line:
            return " (" + line.strip().rstrip(".").split("GLOBAL")[-1].strip() + ")"
    return ""


def read_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Read a torch checkpoint file safely (``weights_only=True``).

    Raises:
        CheckpointError: missing, truncated/corrupt, or a pickle that needs code to load.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        for name in ("last.pt", "checkpoint.pt"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise CheckpointError(
                f"{path} is a directory without last.pt (nor an HF GroupViT directory with "
                "config.json and model.safetensors); pass the checkpoint file"
            )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip, EOF, runtime and several pickle error types
        if _pickle_refused(e):
            obj, foreign = _read_with_inert_config(path)
            if obj is not None:
                return obj
            what = f" (GLOBAL {', '.join(foreign)})" if foreign else _refused_global(e)
            raise CheckpointError(
                f"{path} needs arbitrary code to unpickle and was refused (weights_only=True)"
                f"{what}; {_PICKLE_HELP}"
            ) from e
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, (zipfile.BadZipFile, EOFError, RuntimeError, pickle.UnpicklingError)):
            raise CheckpointError(
                f"cannot read checkpoint {path}: file is truncated or corrupt ({msg})"
            ) from e
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {msg}") from e


# Globals that a pickled training config (OmegaConf's DictConfig, as in the official NVlabs GroupViT / PGSeg
# releases) refers to. They are replaced by inert stand-ins, so reading such a file runs none of their code.
_CONFIG_MODULES = ("omegaconf",)
_CONFIG_GLOBALS = frozenset(
    {
        "typing.Any",
        "builtins.dict",
        "builtins.list",
        "builtins.tuple",
        "builtins.set",
        "builtins.int",
        "builtins.float",
        "builtins.str",
        "builtins.bool",
        "builtins.NoneType",
        "collections.defaultdict",
        "collections.OrderedDict",
        "enum.Enum",
    }
)


def _is_config_global(full_name: str) -> bool:
    module = full_name.rsplit(".", 1)[0]
    return full_name in _CONFIG_GLOBALS or any(
        module == m or module.startswith(m + ".") for m in _CONFIG_MODULES
    )


class _InertConfigObject:
    """Inert stand-in for a pickled config class: records its arguments and state, runs no foreign code."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_InertConfigObject":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["args"] = args

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("items", {})[key] = value

    def append(self, value: Any) -> None:
        self.__dict__.setdefault("list", []).append(value)

    def extend(self, values: Any) -> None:
        self.__dict__.setdefault("list", []).extend(values)


def _read_with_inert_config(path: Path) -> tuple[Any | None, list[str]]:
    """``weights_only=True`` load of a file whose only non-tensor globals belong to a pickled config.

    The official releases store ``{"model": state_dict, "config": DictConfig, ...}``. Every global the file
    names outside torch's safe set must be a config global (:data:`_CONFIG_MODULES`, :data:`_CONFIG_GLOBALS`);
    each is allowlisted as a fresh :class:`_InertConfigObject` subclass, so the config is read as inert data
    and the tensors load exactly as with any safe load.

    Returns:
        ``(object, [])`` when the file loads this way, else ``(None, globals that are not config globals)``
        (the caller then refuses the file, naming them).
    """
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint, or unreadable: the caller reports the original error
        return None, []
    foreign = sorted(n for n in names if not _is_config_global(n))
    if not names or foreign:
        return None, foreign
    stand_ins = [
        (type(n.rsplit(".", 1)[1], (_InertConfigObject,), {"__module__": "pgseg_inert." + n}), n)
        for n in names
    ]
    try:
        with torch.serialization.safe_globals(stand_ins):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        _log.debug("inert-config read of %s failed: %s", path, e)
        return None, []
    _log.info(
        "%s: its pickled training config (%s) was read as inert data and ignored; the weights loaded "
        "safely (weights_only=True)",
        path,
        ", ".join(sorted({n.split(".")[0] for n in names})),
    )
    return obj, []


class _Stub:
    """Stand-in for a pickled class that is not importable here (e.g. OmegaConf's DictConfig)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Stub,), {"__module__": module})


class _LenientPickle:
    """``pickle_module`` for torch.load: unknown classes become inert stubs (only with --trust-pickle)."""

    Unpickler = _LenientUnpickler
    __name__ = "pgseg_lenient_pickle"

    @staticmethod
    def load(f, **kwargs):  # pragma: no cover - torch uses Unpickler for zip files
        return _LenientUnpickler(f, **kwargs).load()


def _read_trusted(path: Path) -> Any:
    """``torch.load(weights_only=False)``: executes pickled code. Only called when the user trusts the file."""
    _log.warning("loading %s with weights_only=False (--trust-pickle): the file's pickled code runs", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_LenientPickle)
    except Exception as e:
        raise CheckpointError(
            f"cannot read checkpoint {path} even with --trust-pickle: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from e


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: file is truncated or corrupt ({e})") from e


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


def _hf_weights(folder: Path) -> dict[str, torch.Tensor] | None:
    if (folder / "model.safetensors").exists():
        return _read_safetensors(folder / "model.safetensors")
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(_read_safetensors(folder / shard))
        return state
    if (folder / "pytorch_model.bin").exists():
        return read_checkpoint_file(folder / "pytorch_model.bin")
    return None


def _pair_paths(path: Path) -> tuple[Path, Path] | None:
    """(weights, meta) of a ``pgseg convert`` pair given either file or their common stem."""
    if path.suffix in (".safetensors", ".json"):
        stem = path.with_suffix("")
    else:
        stem = path
    weights, meta = Path(f"{stem}.safetensors"), Path(f"{stem}.json")
    if weights.exists() and meta.exists():
        try:
            if json.loads(meta.read_text()).get("format") == CHECKPOINT_FORMAT:
                return weights, meta
        except (OSError, json.JSONDecodeError, AttributeError):
            return None
    return None


def _read_object(path: str | Path, trust_pickle: bool = False) -> tuple[Any, dict | None, Path]:
    """Read whatever ``path`` names: (checkpoint object, HF config dict or None, the file actually read)."""
    path = Path(path)
    pair = _pair_paths(path) if not path.is_dir() else None
    if pair is not None:
        meta = _read_json(pair[1])
        return {**meta, "model": _read_safetensors(pair[0])}, None, pair[0]
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        if (
            not any((path / n).exists() for n in ("last.pt", "checkpoint.pt"))
            and (path / "config.json").exists()
        ):
            state = _hf_weights(path)
            if state is not None:
                return state, _read_json(path / "config.json"), path
        return read_checkpoint_file(path), None, path
    if path.suffix == ".json":
        data = _read_json(path)
        if data.get("model_type") == "groupvit":
            state = _hf_weights(path.parent)
            if state is None:
                raise CheckpointError(
                    f"{path.parent} has an HF GroupViT config.json but no model.safetensors or "
                    "pytorch_model.bin"
                )
            return state, data, path.parent
        if data.get("format") == CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{path} names weights {path.with_suffix('.safetensors').name}, which is missing"
            )
        raise CheckpointError(f"{path} is a JSON file, not a checkpoint")
    hf_cfg = None
    if (path.parent / "config.json").exists() and path.name in ("model.safetensors", "pytorch_model.bin"):
        hf_cfg = _read_json(path.parent / "config.json")
        if hf_cfg.get("model_type") != "groupvit":
            hf_cfg = None
    if path.suffix == ".safetensors":
        return _read_safetensors(path), hf_cfg, path
    try:
        return read_checkpoint_file(path), hf_cfg, path
    except CheckpointError as e:
        if trust_pickle and isinstance(e.__cause__, Exception) and _pickle_refused(e.__cause__):
            return _read_trusted(path), hf_cfg, path
        raise


# ----------------------------------------------------------------------------------------------------------
# from any format to our names


@dataclass
class CheckpointInfo:
    path: str
    config: RunConfig
    step: int = 0
    source_format: str = "pgseg"  # pgseg | nvlabs-groupvit | nvlabs-pgseg | hf-groupvit
    pgseg_version: str = ""
    notes: list[str] = field(default_factory=list)  # conversion notes: dropped / new / resized keys
    metrics: dict[str, Any] = field(default_factory=dict)


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


def read_any_checkpoint(
    path: str | Path, *, trust_pickle: bool = False, keep_mapping_text: bool = False
) -> LoadedCheckpoint:
    """Read and auto-detect a checkpoint, returning its weights in our names and its (inferred) config.

    Args:
        path: a pgseg checkpoint (file, run directory, or ``NAME.safetensors`` / ``NAME.json`` pair), an official
            GroupViT / PGSeg ``.pth``, or HF GroupViT weights (directory or file).
        trust_pickle: allow ``torch.load(weights_only=False)`` for files that need code to unpickle.
        keep_mapping_text: keep the released, unused ``img_encoder.mapping_text`` head of official PGSeg files.

    Raises:
        CheckpointError: unreadable, of another model kind, or a pickle needing code without ``trust_pickle``.
    """
    obj, hf_cfg, read_path = _read_object(path, trust_pickle)
    try:
        fmt = detect_format(obj)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if fmt == "pgseg":
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
        )
    state, mcfg, notes = convert_state(obj, fmt, keep_mapping_text=keep_mapping_text, hf_config=hf_cfg)
    cfg = RunConfig(name=f"{fmt}:{Path(read_path).stem}", model=mcfg)
    return LoadedCheckpoint(path=os.fspath(path), source_format=fmt, state=state, config=cfg, notes=notes)


def _fit_pos_embed(state: dict[str, torch.Tensor], model: PGSeg, notes: list[str]) -> dict[str, torch.Tensor]:
    """Bicubically resize a checkpoint's pos-embed to the model's grid when they differ."""
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


def _load_weights(model: PGSeg, state: dict[str, torch.Tensor], path: str) -> tuple[list[str], list[str]]:
    """Non-strict load with readable shape errors; returns (missing non-frozen keys, unexpected keys)."""
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


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[PGSeg, CheckpointInfo]:
    """Rebuild the model stored in a checkpoint of any supported format, in eval mode.

    Args:
        path: a pgseg checkpoint (file, run directory with ``last.pt``, or a ``pgseg convert`` pair), an official
            NVlabs GroupViT / PGSeg ``.pth`` holding plain tensors, or HF GroupViT weights (directory with
            ``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``, or the weight file).
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
    state = _fit_pos_embed(loaded.state, model, notes)
    try:
        missing, unexpected = _load_weights(model, state, os.fspath(path))
    except CheckpointError as e:
        if loaded.source_format == "pgseg":
            raise CheckpointError(str(e).replace("the model", "the stored config")) from None
        raise
    if loaded.source_format == "pgseg":
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: weights do not match the stored config ({len(missing)} missing, e.g. "
                f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})"
            )
    else:
        if unexpected:
            raise CheckpointError(
                f"{path}: {len(unexpected)} {loaded.source_format} weights have no place in the "
                f"inferred model, e.g. {unexpected[:3]}"
            )
        if missing:
            notes.append(
                f"{len(missing)} new keys initialised at random: {', '.join(missing[:8])}"
                + (" ..." if len(missing) > 8 else "")
            )
    model.to(device).eval()
    info = CheckpointInfo(
        path=os.fspath(path),
        config=loaded.config,
        step=loaded.step,
        source_format=loaded.source_format,
        pgseg_version=loaded.pgseg_version,
        notes=notes,
        metrics=loaded.metrics,
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
    state = _fit_pos_embed(loaded.state, model, notes)
    missing, unexpected = _load_weights(model, state, os.fspath(path))
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


def convert_checkpoint(src: str | Path, dst: str | Path, *, trust_pickle: bool = False) -> dict[str, Any]:
    """Convert any supported checkpoint to pgseg's safetensors pair ``DST.safetensors`` + ``DST.json``.

    The weights are validated by loading them into the model their config describes. Official PGSeg's unused
    ``mapping_text`` head is dropped.

    Args:
        src: any format :func:`load_checkpoint` reads, plus pickles that need code when ``trust_pickle``.
        dst: output stem (a ``.safetensors`` or ``.json`` suffix is stripped).
        trust_pickle: allow ``torch.load(weights_only=False)`` (runs the file's pickled code) for files such as
            the official ``.pth`` releases, which pickle an OmegaConf config.

    Returns:
        ``{"weights", "config", "source_format", "tensors", "parameters", "notes"}``.

    Raises:
        CheckpointError: as :func:`load_checkpoint`.
    """
    from safetensors.torch import save_file

    from ..utils.io import atomic_write, atomic_write_json
    from ..version import __version__

    loaded = read_any_checkpoint(src, trust_pickle=trust_pickle)
    model = create_model(loaded.config.model, load_frozen=False)
    notes = list(loaded.notes)
    state = _fit_pos_embed(loaded.state, model, notes)
    missing, unexpected = _load_weights(model, state, os.fspath(src))
    if unexpected or (missing and loaded.source_format == "pgseg"):
        raise CheckpointError(
            f"{src}: weights do not match their config ({len(missing)} missing, e.g. "
            f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
    if missing:
        notes.append(
            f"{len(missing)} new keys initialised at random: {', '.join(missing[:8])}"
            + (" ..." if len(missing) > 8 else "")
        )
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in trainable_state_dict(model).items()}
    dst = Path(dst)
    if dst.suffix in (".safetensors", ".json"):
        dst = dst.with_suffix("")
    dst.parent.mkdir(parents=True, exist_ok=True)
    weights, meta_path = Path(f"{dst}.safetensors"), Path(f"{dst}.json")
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
    atomic_write(weights, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    atomic_write_json(meta_path, meta)
    params = sum(v.numel() for k, v in model.named_parameters() if k in tensors)
    return {
        "weights": os.fspath(weights),
        "config": os.fspath(meta_path),
        "source_format": loaded.source_format,
        "tensors": len(tensors),
        "parameters": params,
        "notes": notes,
    }
