"""Data: demo composites, webdataset shards, loaders and image preprocessing.

webdataset, the demo sources (scikit-image, emoji, ...) and the loaders are imported lazily: only the
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
    # Lazy re-exports: the demo builder and the loaders pull in numpy-heavy and webdataset code.
    if name in ("DemoRoots", "build_demo_shards", "export_demo_photos"):
        from .sources import demo

        return getattr(demo, name)
    if name == "write_folder_shards":
        from .sources.folder import write_folder_shards

        return write_folder_shards
    if name in ("ValSample", "iter_val_samples", "iter_images_for_cache", "make_train_loader"):
        from . import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
