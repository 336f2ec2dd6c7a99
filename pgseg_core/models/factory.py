"""Model construction: :func:`create_model` builds a :class:`~pgseg_core.models.pgseg.PGSeg` from a config.

Reading, writing and converting checkpoints lives in :mod:`pgseg_core.checkpoint`.
"""

from __future__ import annotations

from ..config import ModelConfig, RunConfig, load_config
from .pgseg import PGSeg

__all__ = ["create_model"]


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
