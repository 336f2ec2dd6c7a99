"""Index a folder of webdataset tars written by img2dataset (or any tool) without touching the tars.

``pgseg prep-shards --index DIR`` reads every ``*.tar`` of DIR (in parallel worker processes), counts the
samples that have an image (``jpg`` / ``jpeg`` / ``png`` / ``webp`` that decodes to the end; a JPEG is
decoded at 1/8 scale, which is fast and still reads all of it) and a caption (``txt``), and writes
``DIR/index.json`` (docs/ARCHITECTURE.md "Shards", with ``"layout": "img2dataset"``) atomically, as the
only and last write. Training reads that index (:mod:`.named`). Tars that cannot be read to the end
(truncated, not a tar) are left out of the index and counted; samples without an image or caption, or
whose image does not decode, stay in their tar (it is never rewritten) and are counted as corrupt: the
loader skips them. img2dataset's own ``NNNNN_stats.json`` ``successes`` are compared with the count, and
differences are reported.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

from ...errors import DataError
from ..shards import new_index, write_index

__all__ = ["count_tar", "index_shard_folder"]

log = logging.getLogger("pgseg.data.web_index")

_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def _is_image(data: bytes) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format == "JPEG":
                im.draft("RGB", (1, 1))  # decode at 1/8 scale in the DCT domain: fast, still reads every byte
            im.load()
            return im.size[0] > 0 and im.size[1] > 0
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def count_tar(path: str) -> dict[str, Any]:
    """Count the samples of one tar.

    Args:
        path: the tar file.

    Returns:
        ``{"name", "samples" (image + caption), "corrupt" (a member missing or not an image),
        "readable" (False: truncated or not a tar; its samples are then not counted as good)}``.
    """
    members: dict[str, dict[str, bytes]] = {}
    readable = True
    try:
        with tarfile.open(path, "r|*") as tar:
            for info in tar:
                if not info.isfile() or "." not in Path(info.name).name:
                    continue
                folder, _, base = info.name.rpartition("/")
                stem, _, ext = base.partition(".")
                key = f"{folder}/{stem}"  # webdataset's grouping: the path up to the first dot of the name
                f = tar.extractfile(info)
                data = f.read() if f is not None and ext.lower() in _IMAGE_EXTS else b""
                members.setdefault(key, {})[ext.lower()] = data if data else b"1"
    except (tarfile.TarError, OSError, EOFError) as e:
        log.warning("%s cannot be read to the end (%s): left out of the index", path, e)
        readable = False
    good = corrupt = 0
    for parts in members.values():
        image = next((parts[e] for e in _IMAGE_EXTS if e in parts), None)
        if image is not None and "txt" in parts and _is_image(image):
            good += 1
        elif image is not None or "txt" in parts:
            corrupt += 1
    return {"name": Path(path).name, "samples": good, "corrupt": corrupt, "readable": readable}


def _stats_successes(tar: Path) -> int | None:
    stats = tar.with_name(tar.stem + "_stats.json")
    try:
        return int(json.loads(stats.read_text(encoding="utf-8"))["successes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def index_shard_folder(
    folder: str | Path,
    *,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Count the samples of every tar in ``folder`` and write ``folder/index.json`` last (module docstring).

    Args:
        folder: the shard folder (img2dataset's ``output_folder``).
        workers: worker processes (0: in this process).
        progress: optional ``(done, total)`` callback per tar.
        extra: more top-level index keys (e.g. the download settings and counts).

    When the folder holds img2dataset stats files, a tar without its ``NNNNN_stats.json`` is an unfinished
    download: it is left out and counted as ``unfinished_tars``.

    Returns:
        Summary: ``{"out_dir", "count", "shards", "skipped": {"unreadable_tars", "samples_in_unreadable_tars",
        "corrupt_samples"}, "stats_mismatch": [tar names whose img2dataset stats differ]}``.

    Raises:
        DataError: the folder does not exist or holds no tar.
        OutputError: ``index.json`` cannot be written.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"cannot index {root}: no such folder")
    tars = sorted(root.glob("*.tar"))
    unfinished = []
    if any(root.glob("*_stats.json")):
        unfinished = [t.name for t in tars if not t.with_name(t.stem + "_stats.json").is_file()]
        tars = [t for t in tars if t.name not in unfinished]
    if not tars:
        raise DataError(
            f"cannot index {root}: it holds no .tar shards (img2dataset --output_format webdataset)"
        )
    results: list[dict[str, Any]] = []
    pool = ProcessPoolExecutor(workers) if workers > 0 else None
    try:
        it = pool.map(count_tar, map(str, tars)) if pool else map(count_tar, map(str, tars))
        for r in it:
            results.append(r)
            if progress:
                progress(len(results), len(tars))
    finally:
        if pool:
            pool.shutdown()
    good = [r for r in results if r["readable"]]
    mismatch = [
        r["name"]
        for r, t in zip(results, tars)
        if r["readable"] and (s := _stats_successes(t)) is not None and s != r["samples"] + r["corrupt"]
    ]
    skipped = {
        "unreadable_tars": len(results) - len(good),
        "samples_in_unreadable_tars": sum(r["samples"] for r in results if not r["readable"]),
        "corrupt_samples": sum(r["corrupt"] for r in good),
        "unfinished_tars": len(unfinished),
    }
    count = sum(r["samples"] for r in good)
    index = new_index(
        {"train": {"shards": [r["name"] for r in good], "count": count}},
        sources=[{"name": "img2dataset", "folder": str(root), "items": count}],
        skipped=skipped,
        layout="img2dataset",
        shard_counts={r["name"]: r["samples"] for r in good},
        **(extra or {}),
    )
    write_index(root, index)
    log.info("indexed %s: %d samples in %d tars, skipped %s", root, count, len(good), skipped)
    return {"out_dir": str(root), "count": count, "shards": len(good), "skipped": skipped,
            "stats_mismatch": mismatch}  # fmt: skip
