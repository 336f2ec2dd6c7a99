"""Device resolution (``auto | cpu | cuda | cuda:N``); a device the user asked for that is missing raises."""

from __future__ import annotations

import torch

from ..errors import DeviceError

__all__ = ["resolve_device"]


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Resolve a device string.

    ``auto`` picks ``cuda`` when available, else ``cpu``. An explicit CUDA device that does not exist
    raises instead of silently falling back.

    Raises:
        DeviceError: unknown spec, or CUDA requested but unavailable / index out of range.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device '{spec}' was requested but CUDA is not available on this machine; use cpu (or auto)"
            )
        index = 0
        if ":" in spec:
            try:
                index = int(spec.split(":", 1)[1])
            except ValueError:
                raise DeviceError(f"bad device '{spec}': use cpu, cuda or cuda:N") from None
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"device '{spec}' does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        return torch.device(f"cuda:{index}")
    raise DeviceError(f"unknown device '{spec}': use auto, cpu, cuda or cuda:N")
