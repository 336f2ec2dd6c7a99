"""Shard URLs webdataset cannot open itself, read through fsspec.

webdataset opens local paths, ``file:``, ``pipe:``, ``http(s)://``, ``gs://`` (gsutil), ``hf://`` and a
few more (``wds.gopen_schemes``). A URL of any other scheme fsspec knows (``s3://``, ``az://``, ``abfs://``,
``oci://``, ...) becomes ``pipe:<python> -m pgseg_core.data.remote URL``: a child process that streams the
object to stdout with ``fsspec.open``, the way webdataset's documentation reads object stores
(``pipe:aws s3 cp URL -``), without needing the store's command-line tool. Run as a module it is that
child.
"""

from __future__ import annotations

import shlex
import sys
from urllib.parse import urlparse

__all__ = ["shard_urls", "fsspec_pipe"]

_CHUNK = 1 << 20


def _wds_schemes() -> set[str]:
    import webdataset as wds

    return set(wds.gopen_schemes) | {"", "file"}


def fsspec_pipe(url: str) -> str:
    """The ``pipe:`` URL that streams ``url`` through fsspec."""
    return f"pipe:{shlex.quote(sys.executable)} -m pgseg_core.data.remote {shlex.quote(url)}"


def shard_urls(urls: list[str]) -> list[str]:
    """``urls`` with every URL of a scheme webdataset cannot open rewritten to :func:`fsspec_pipe`.

    Args:
        urls: shard paths / URLs.

    Returns:
        The list webdataset reads (same order).
    """
    schemes = _wds_schemes()
    out = []
    for u in urls:
        scheme = "" if u.startswith("pipe:") else urlparse(u).scheme
        out.append(u if scheme in schemes or len(scheme) == 1 else fsspec_pipe(u))  # "C:" is a drive
    return out


def _cat(url: str) -> int:
    import fsspec

    with fsspec.open(url, "rb") as f:
        while chunk := f.read(_CHUNK):
            sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_cat(sys.argv[1]))
