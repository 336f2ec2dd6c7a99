"""Shard sources: each turns some input into webdataset shards plus ``index.json``
(:mod:`pgseg_core.data.shards`).

============  ==================================================================================
``demo``      :mod:`.demo`: real-photo backgrounds with pasted cut-out objects, captions and label maps
``folder``    :mod:`.folder`: a folder of images with caption files (``captions.tsv`` / ``<stem>.txt``)
``url-list``  :mod:`.download`: a URL list (or cc3m, cc12m, redcaps, ...) downloaded with img2dataset
``--index``   :mod:`.web_index`: tars img2dataset (or any tool) wrote, indexed in place
============  ==================================================================================

Named datasets and mixtures for training (``--data cc3m+cc12m``) are resolved by :mod:`.named` from the
table in :mod:`.registry` (docs/WEB_DATA.md).

A source writes its splits with :class:`~pgseg_core.data.shards.SplitWriter`, then one index with
:func:`~pgseg_core.data.shards.new_index` / :func:`~pgseg_core.data.shards.write_index`, and returns a
summary dict. Sources are imported lazily (the demo pulls in numpy-heavy image code).
"""

from __future__ import annotations

__all__ = ["DemoRoots", "build_demo_shards", "export_demo_photos", "write_folder_shards"]


def __getattr__(name: str):
    if name in ("DemoRoots", "build_demo_shards", "export_demo_photos"):
        from . import demo

        return getattr(demo, name)
    if name == "write_folder_shards":
        from .folder import write_folder_shards

        return write_folder_shards
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
