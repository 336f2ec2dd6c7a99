"""MVP-SEG settings (docs/MVP_SEG.md §3 lists every value and why)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import ConfigError

__all__ = ["MVPConfig"]


@dataclass
class MVPConfig:
    """Prompts, scales, losses and training of MVP-SEG.

    Attributes:
        views: k segmentation prompts (the paper's best: 3); the global prompt p0 comes on top.
        n_ctx: T context tokens per prompt.
        ctx_init: text whose token embeddings initialise every prompt when it has exactly ``n_ctx``
            tokens ("" or another length: random N(0, 0.02²)).
        gamma: γ of GPR's spatial softmax (fixed).
        tau1: initial fusion scale τ1 (learned, kept positive through its log).
        tau2: initial GPR temperature τ2 (learned, log-parametrised).
        lambda_seg, lambda_cls, lambda_oc: λ1, λ2, λ3 of the total loss.
        gpr: use Global Prompt Refining (False: the fused masks are not gated and L_cls is 0).
        steps, batch_size, lr, weight_decay, seed: prompt training (AdamW on prompts and scales).
        short_side, max_long: training / inference resize (the eval preprocessing), pixels.
        templates: the baseline's template set: "groupvit" (GroupViT's) or "imagenet80".
        bg_thresh: in [0, 1]. 0: "background" is a class like the others, scored by its text embedding
            (baseline) or learned as a seen class (MVP-SEG). Above 0: GroupViT's background rule, the other
            classes are scored without it and a pixel is background where none reaches bg_thresh; MVP-SEG
            training then ignores background pixels (only the object classes are learned).
    """

    views: int = 3
    n_ctx: int = 4
    ctx_init: str = "a photo of a"
    gamma: float = 20.0
    tau1: float = 100.0 / 3.0
    tau2: float = 0.07
    lambda_seg: float = 1.0
    lambda_cls: float = 0.5
    lambda_oc: float = 0.1
    gpr: bool = True
    steps: int = 200
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 0.0
    seed: int = 0
    short_side: int = 224
    max_long: int = 448
    templates: str = "groupvit"
    bg_thresh: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.bg_thresh <= 1.0:
            raise ConfigError(f"MVP-SEG setting 'bg_thresh' must be in [0, 1], got {self.bg_thresh}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MVPConfig":
        """Build from a dict; an unknown key is a ConfigError naming the closest known one."""
        import difflib

        known = {f.name: f for f in fields(cls)}
        out = {}
        for key, value in data.items():
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(f"unknown MVP-SEG setting '{key}'{hint}")
            out[key] = _coerce(value, type(getattr(cls(), key)), key)
        return cls(**out)

    def with_overrides(self, overrides: dict[str, Any]) -> "MVPConfig":
        """A copy with ``{"mvp.key": value}`` / ``{"key": value}`` overrides applied."""
        plain = {k.split(".", 1)[1] if k.startswith("mvp.") else k: v for k, v in overrides.items()}
        return MVPConfig.from_dict({**self.to_dict(), **plain})


def _coerce(value: Any, kind: type, key: str) -> Any:
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    try:
        if kind is bool:
            if str(value).lower() in ("1", "true", "yes"):
                return True
            if str(value).lower() in ("0", "false", "no"):
                return False
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"MVP-SEG setting '{key}' must be {kind.__name__}, got {value!r}") from e
