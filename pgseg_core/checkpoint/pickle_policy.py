"""The pickle policy: which torch checkpoint files load, and how.

Every torch file is read with ``torch.load(weights_only=True)``: only tensors and plain containers unpickle.
The official NVlabs GroupViT / Ferenas PGSeg ``.pth`` releases also pickle an OmegaConf training ``config``;
its classes (and only they: :data:`_CONFIG_MODULES`, :data:`_CONFIG_GLOBALS`) are allowlisted as inert
stand-ins, so such a file still loads safely and none of its code runs. Any other pickled global is refused
with a :class:`~pgseg_core.errors.CheckpointError` naming it. ``pgseg convert SRC DST --trust-pickle``
(``torch.load(weights_only=False)``, unknown classes as inert stubs) is the explicit opt-in for other files.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .resolve import run_dir_file

__all__ = ["read_checkpoint_file"]

_log = logging.getLogger("pgseg.checkpoint")

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


def read_checkpoint_file(path: str | Path, *, trust_pickle: bool = False) -> Any:
    """Read a torch checkpoint file safely (``torch.load(weights_only=True)``, on the CPU).

    A pickled OmegaConf training config (as in the official GroupViT / PGSeg releases) is read as inert data
    (:func:`_read_with_inert_config`); any other pickled global is refused, naming it.

    Args:
        path: a torch file, or a run directory (its ``last.pt``, else ``checkpoint.pt``).
        trust_pickle: when the safe load refuses the file, load it with ``weights_only=False`` (runs the
            file's pickled code; ``pgseg convert --trust-pickle``).

    Returns:
        The unpickled object (a pgseg checkpoint dict, an official ``{"model": ...}`` dict, a state dict ...).

    Raises:
        CheckpointError: missing, truncated/corrupt, or a pickle that needs code to load (without
            ``trust_pickle``).
    """
    path = Path(path)
    if path.is_dir():
        path = run_dir_file(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return _read_safe(path)
    except CheckpointError as e:
        if trust_pickle and isinstance(e.__cause__, Exception) and _pickle_refused(e.__cause__):
            return _read_trusted(path)
        raise


def _read_safe(path: Path) -> Any:
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
    """``torch.load(weights_only=False)``: runs pickled code. Only called when the user trusts the file."""
    _log.warning("loading %s with weights_only=False (--trust-pickle): the file's pickled code runs", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_LenientPickle)
    except Exception as e:
        raise CheckpointError(
            f"cannot read checkpoint {path} even as a trusted pickle: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from e
