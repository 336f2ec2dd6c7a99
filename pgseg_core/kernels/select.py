"""Which implementation an accelerated op runs: ``PGSEG_KERNELS=auto|torch|triton`` (docs/KERNELS.md §1).

The environment variable wins over the configured default (``train.kernels``, set by :func:`configure`).
``auto`` runs the Triton kernel for CUDA tensors when Triton imports and the plain reference otherwise;
``torch`` always runs the reference; ``triton`` always runs the kernel and raises when it cannot run (no
Triton, or a CPU tensor without ``TRITON_INTERPRET=1``). Nothing silently falls back.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from ..errors import ConfigError, DependencyError, DeviceError

__all__ = ["BACKENDS", "configure", "requested_backend", "use_triton", "triton_interpreter"]

BACKENDS = ("auto", "torch", "triton")
ENV = "PGSEG_KERNELS"
_default = "auto"


def _check(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ConfigError(f"{source} must be one of {', '.join(BACKENDS)}, got {name!r}")
    return name


def configure(backend: str) -> None:
    """Set the process-wide default backend (the ``train.kernels`` config key); ``PGSEG_KERNELS`` still wins.

    Raises:
        ConfigError: ``backend`` is not auto, torch or triton.
    """
    global _default
    _default = _check(backend, "train.kernels")


def requested_backend(backend: str | None = None) -> str:
    """The backend asked for: ``backend`` if given, else ``$PGSEG_KERNELS``, else the configured default.

    Raises:
        ConfigError: the value is not auto, torch or triton.
    """
    if backend is not None:
        return _check(backend, "backend")
    env = os.environ.get(ENV, "").strip()
    if env:
        return _check(env, ENV)
    return _default


def triton_interpreter() -> bool:
    """True when ``TRITON_INTERPRET`` asks Triton to interpret kernels on the CPU (tests)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def use_triton(tensor: torch.Tensor, backend: str | None = None) -> bool:
    """Whether an op on ``tensor`` runs its Triton kernel (True) or its reference (False).

    Raises:
        DependencyError: triton asked for and not installed.
        DeviceError: triton asked for on a non-CUDA tensor without ``TRITON_INTERPRET=1``.
    """
    name = requested_backend(backend)
    if name == "torch":
        return False
    on_cuda = tensor.device.type == "cuda"
    if name == "auto":
        return on_cuda and _triton_installed()
    if not _triton_installed():
        raise DependencyError(
            f"{ENV}=triton needs the triton package: pip install 'pgseg[kernels]' (or {ENV}=torch)"
        )
    if on_cuda or (tensor.device.type == "cpu" and triton_interpreter()):
        return True
    raise DeviceError(
        f"{ENV}=triton runs on CUDA tensors, got a {tensor.device.type} tensor: use a CUDA device, "
        f"TRITON_INTERPRET=1 (CPU interpreter, slow) or {ENV}=torch"
    )
