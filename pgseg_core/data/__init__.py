"""Training data: webdataset shards and ``index.json`` (``shards``), caption files (``captions``), the
shard sources (``sources/``: demo composites, captioned-image folders), loaders and image preprocessing.
The benchmark readers used for evaluation are in :mod:`pgseg_core.eval.datasets`.

webdataset, the shard sources (scikit-image, emoji, ...) and the loaders are imported lazily: only the
transforms and shard helpers load with the package.
"""

from __future__ import annotations

from .shards import read_index, resolve_shards
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    denormalize,
    load_image_rgb,
    normalize,
    to_tensor_normalized,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DemoRoots",
    "ValSample",
    "build_demo_shards",
    "export_demo_photos",
    "denormalize",
    "iter_images_for_cache",
    "iter_val_samples",
    "load_image_rgb",
    "make_train_loader",
    "normalize",
    "read_index",
    "resolve_shards",
    "to_tensor_normalized",
    "write_folder_shards",
]


def __getattr__(name: str):
    # Lazy re-exports: the shard sources and the loaders pull in numpy-heavy and webdataset code.
    if name in ("DemoRoots", "build_demo_shards", "export_demo_photos", "write_folder_shards"):
        from . import sources

        return getattr(sources, name)
    if name in ("ValSample", "iter_val_samples", "iter_images_for_cache", "make_train_loader"):
        from . import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
