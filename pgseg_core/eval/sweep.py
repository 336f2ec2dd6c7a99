"""Parameter sweeps of the class-dependent eval settings (``--sweep bg_thresh=0.3:0.99:0.05``).

Only settings that the scoring rule reads may be swept (:data:`SWEEPABLE`); the image features are then
computed once per image (or read from a feature cache) and one confusion matrix is accumulated per value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["Sweep", "parse_sweep", "SWEEPABLE"]

SWEEPABLE = {
    "bg_thresh": float,
    "prob_thresh": float,
    "top_k": int,
    "logit_scale": float,
    "area_thresh": float,
}
MAX_POINTS = 1000


@dataclass(frozen=True)
class Sweep:
    """One swept eval key and its values (ascending, inclusive of ``stop`` when on the grid)."""

    key: str
    values: tuple[float | int, ...]

    def spec(self) -> str:
        return f"{self.key}={','.join(str(v) for v in self.values)}"


def parse_sweep(text: str) -> Sweep:
    """Parse ``KEY=START:STOP:STEP`` (or ``KEY=v1,v2,...``) into a :class:`Sweep`.

    ``START:STOP:STEP`` gives ``START + i·STEP`` for i = 0, 1, ... while the value is <= STOP (within
    1e-9, rounded to 10 decimals), e.g. ``bg_thresh=0.3:0.99:0.05`` -> 0.3, 0.35, ..., 0.95.

    Raises:
        ConfigError: unknown key (with the sweepable ones), malformed range, non-positive step,
            more than 1000 points, or a non-integer value for ``top_k``.
    """
    if "=" not in text:
        raise ConfigError(f"sweep {text!r} must look like bg_thresh=0.3:0.99:0.05")
    key, _, rng = text.partition("=")
    key = key.strip().removeprefix("eval.").replace("-", "_")
    if key not in SWEEPABLE:
        raise ConfigError(f"cannot sweep '{key}': sweepable keys are {', '.join(sorted(SWEEPABLE))}")
    try:
        if ":" in rng:
            parts = [float(v) for v in rng.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if step <= 0 or stop < start:
                raise ConfigError(f"sweep {text!r}: need STOP >= START and STEP > 0")
            n = int(math.floor((stop - start) / step + 1e-9)) + 1
            if n > MAX_POINTS:
                raise ConfigError(f"sweep {text!r} has {n} points, more than {MAX_POINTS}: use a larger step")
            values = [round(start + i * step, 10) for i in range(n)]
        else:
            values = [float(v) for v in rng.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"sweep {text!r} must look like {key}=START:STOP:STEP or {key}=v1,v2") from None
    if not values:
        raise ConfigError(f"sweep {text!r} has no values")
    if SWEEPABLE[key] is int:
        if any(not float(v).is_integer() for v in values):
            raise ConfigError(f"sweep {text!r}: {key} takes whole numbers")
        values = [int(v) for v in values]
    return Sweep(key, tuple(values))
