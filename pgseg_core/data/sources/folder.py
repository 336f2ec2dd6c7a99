"""The folder source: a folder of captioned images -> ``train-%06d.tar`` shards plus ``index.json``."""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path
from typing import Any

from ...errors import DataError
from ..captions import collect_captioned_images
from ..shard_set import ShardSet
from ..shards import Progress, new_index

log = logging.getLogger("pgseg.data.sources.folder")

__all__ = ["write_folder_shards"]


def write_folder_shards(
    image_dir: str | Path,
    out_dir: str | Path,
    *,
    captions: str | Path | None = None,
    shard_size: int = 1000,
    progress: Progress | None = None,
    jpeg_quality: int = 95,
    max_side: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Convert a folder of captioned images into ``train-%06d.tar`` shards plus ``index.json``.

    Each sample is img2dataset-style: ``jpg`` (the image re-encoded as RGB JPEG), ``txt`` (caption) and
    ``json`` ``{"key", "caption", "width", "height", "original_path"}``. Images that cannot be decoded
    are skipped and counted, never fatal. The set is built beside ``out_dir`` and published there only
    when complete (:class:`~pgseg_core.data.shard_set.ShardSet`): an interrupted or failed build leaves
    ``out_dir`` as it was.

    Args:
        image_dir: folder of images (searched recursively).
        out_dir: shard directory to write (missing or empty, or a shard set to replace with ``overwrite``).
        captions: caption file (.tsv/.csv/.jsonl with columns image, caption; a header row is allowed);
            None = ``captions.{tsv,csv,jsonl}`` in ``image_dir`` or ``<stem>.txt`` sidecars.
        shard_size: samples per tar.
        progress: called as ``progress(done, total)`` after each image.
        jpeg_quality: JPEG quality 1..95 of the re-encoded images.
        max_side: if set, downscale images whose longer side exceeds this many pixels.
        overwrite: replace a shard set already at ``out_dir``.

    Returns:
        Summary ``{"out_dir", "index", "count", "shards", "skipped": {...}, "seconds"}``.

    Raises:
        DataError: missing folder, no images, an unsupported/unreadable caption file, or no image could
            be written.
        OutputError: ``out_dir`` cannot be used (see :class:`~pgseg_core.data.shard_set.ShardSet`) or
            the disk is full.
    """
    t0 = time.perf_counter()
    image_dir, out_dir = Path(image_dir), Path(out_dir)
    dest = ShardSet(out_dir, overwrite=overwrite)  # checks out_dir before the images are read
    pairs, skipped = collect_captioned_images(image_dir, captions, exclude=out_dir.resolve())
    skipped = {"unreadable": 0, **skipped}
    if len(pairs) == 0:
        raise DataError(
            f"none of the images under {image_dir} has a caption: add <stem>.txt files or a "
            "captions.tsv / captions.csv / captions.jsonl / a COCO captions .json"
        )
    with dest:
        shards, count = _write_samples(
            pairs, image_dir, dest, skipped, shard_size, progress, jpeg_quality, max_side
        )
        if skipped["unreadable"] > 10:
            log.warning("skipped %d unreadable images in total", skipped["unreadable"])
        if count == 0:
            raise DataError(
                f"no image under {image_dir} could be decoded ({skipped['unreadable']} unreadable)"
            )
        index = new_index(
            {"train": {"shards": shards, "count": count}},
            sources=[{"name": "folder", "path": str(image_dir), "licence": "user-provided", "items": count}],
            skipped=skipped,
            generator="folder",
        )
        index_path = dest.write_index(index)
    return {
        "out_dir": str(out_dir),
        "index": str(index_path),
        "count": count,
        "shards": shards,
        "skipped": skipped,
        "seconds": time.perf_counter() - t0,
    }


def _write_samples(
    pairs: list[tuple[Path, str]],
    image_dir: Path,
    dest: ShardSet,
    skipped: dict[str, int],
    shard_size: int,
    progress: Progress | None,
    jpeg_quality: int,
    max_side: int | None,
) -> tuple[list[str], int]:
    """Write the decodable images of ``pairs`` as train shards (counting the others in ``skipped``).

    Returns:
        ``(shard file names, samples written)``.
    """
    from ..transforms import load_image_rgb

    total = len(pairs)
    with dest.split_writer("train", shard_size) as writer:
        for i, (path, caption) in enumerate(pairs):
            try:
                img = load_image_rgb(path)
            except DataError as e:
                skipped["unreadable"] += 1
                if skipped["unreadable"] <= 10:
                    log.warning("skipping %s", e)
                if progress is not None:
                    progress(i + 1, total)
                continue
            rel = path.relative_to(image_dir).as_posix()
            writer.write(_sample(f"{writer.count:09d}", img, caption, rel, jpeg_quality, max_side))
            if progress is not None:
                progress(i + 1, total)
        shards = writer.close()
        count = writer.count
    return shards, count


def _sample(key: str, img: Any, caption: str, rel: str, jpeg_quality: int, max_side: int | None) -> dict:
    """One img2dataset-style sample of a PIL RGB image (downscaled to ``max_side`` first, in place)."""
    from PIL import Image

    if max_side is not None and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(jpeg_quality))
    return {
        "__key__": key,
        "jpg": buf.getvalue(),
        "txt": caption,
        "json": {
            "key": key,
            "caption": caption,
            "width": img.width,
            "height": img.height,
            "original_path": rel,
        },
    }
