"""pgseg core library: GroupViT / PGSeg models, NPR, losses, data, training, evaluation and segmentation.

Public surface (everything else is importable from its module)::

    from pgseg_core import create_model, load_checkpoint, load_config, Segmenter
"""

from .config import RunConfig, list_presets, load_config
from .errors import CheckpointError, ConfigError, DataError, DependencyError, DeviceError, PgsegError
from .version import __version__


def __getattr__(name: str):
    # heavy modules (torch, timm) load on first use, not on `import pgseg_core`
    if name == "create_model":
        from .models.factory import create_model

        return create_model
    if name == "load_checkpoint":
        from .checkpoint import load_checkpoint

        return load_checkpoint
    if name == "Segmenter":
        from .segment.segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module 'pgseg_core' has no attribute {name!r}")


__all__ = [
    "RunConfig",
    "list_presets",
    "load_config",
    "create_model",
    "load_checkpoint",
    "Segmenter",
    "PgsegError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "DeviceError",
    "DependencyError",
    "__version__",
]
