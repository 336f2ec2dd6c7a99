"""Captions of a folder of images: caption tables (``captions.tsv`` / ``.csv`` / ``.jsonl``) and
``<stem>.txt`` sidecar files, paired with the images they name."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path

from ..errors import DataError
from ..utils.io import read_text_file

log = logging.getLogger("pgseg.data.captions")

__all__ = ["CAPTION_FORMATS", "IMAGE_EXTENSIONS", "collect_captioned_images", "read_caption_table"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CAPTION_FORMATS = (".tsv", ".csv", ".jsonl", ".json")

_IMAGE_COLS = ("image", "file", "filename", "path", "image_path", "img", "url")
_TEXT_COLS = ("caption", "text", "captions", "title")


def _norm_rel(name: str) -> str:
    name = name.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def read_caption_table(path: Path) -> list[tuple[str, str]]:
    """Rows ``(image name, caption)`` of a captions.tsv / .csv / .jsonl file (a header row is skipped), or of
    a COCO captions JSON (``captions_train2017.json``: ``images`` with ``id`` / ``file_name``, ``annotations``
    with ``image_id`` / ``caption``), which gives each image its first caption (lowest annotation id).

    Raises:
        DataError: another suffix, an unreadable file, or a malformed row / line (names the line).
    """
    suffix = path.suffix.lower()
    if suffix not in CAPTION_FORMATS:
        raise DataError(
            f"unsupported caption file {path}: use captions.tsv, captions.csv or captions.jsonl "
            "(or a COCO captions .json, or <stem>.txt files next to the images)"
        )
    text = read_text_file(path, "caption file", encoding="utf-8-sig")
    if suffix == ".json":
        return _coco_caption_rows(path, text)
    rows: list[tuple[str, str]] = []
    if suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from e
            obj = obj if isinstance(obj, dict) else {}
            image = next((obj[k] for k in ("image", "file", "path") if k in obj), None)
            caption = next((obj[k] for k in ("caption", "text") if k in obj), None)
            if not isinstance(image, str) or not isinstance(caption, str):
                raise DataError(
                    f'{path}:{n}: each line needs "image" (or "file"/"path") and "caption" '
                    '(or "text") strings'
                )
            rows.append((image, caption))
        return rows
    reader = csv.reader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
    for n, row in enumerate(reader, 1):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < 2:
            raise DataError(f"{path}:{n}: expected two columns (image, caption), got {len(row)}")
        if n == 1 and (row[0].strip().lower() in _IMAGE_COLS or row[1].strip().lower() in _TEXT_COLS):
            continue  # header
        sep = "\t" if suffix == ".tsv" else ","
        caption = sep.join(row[1:])  # an unquoted separator inside the caption splits it; rejoin
        rows.append((row[0], caption))
    return rows


def _coco_caption_rows(path: Path, text: str) -> list[tuple[str, str]]:
    try:
        doc = json.loads(text)
        names = {int(im["id"]): str(im["file_name"]) for im in doc["images"]}
        anns = sorted(doc["annotations"], key=lambda a: int(a.get("id", 0)))
        first: dict[int, str] = {}
        for a in anns:
            first.setdefault(int(a["image_id"]), str(a["caption"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DataError(
            f"{path} is not a COCO captions file (images: id, file_name; annotations: image_id, caption): {e}"
        ) from e
    return [(names[i], c) for i, c in first.items() if i in names]


def _list_images(image_dir: Path, exclude: Path | None) -> list[Path]:
    out = []
    for p in image_dir.rglob("*"):
        if p.suffix.lower() not in IMAGE_EXTENSIONS or not p.is_file():
            continue
        if exclude is not None and exclude in p.resolve().parents:
            continue
        out.append(p)
    return sorted(out, key=lambda q: q.relative_to(image_dir).as_posix())


def _clean_caption(text: str) -> str:
    return " ".join(text.split())


def collect_captioned_images(
    image_dir: str | Path, captions: str | Path | None = None, *, exclude: Path | None = None
) -> tuple[list[tuple[Path, str]], dict[str, int]]:
    """Pair the images of a folder with their captions.

    Captions come from ``captions`` if given, else from ``captions.tsv`` / ``captions.csv`` /
    ``captions.jsonl`` inside ``image_dir`` if present, else from ``<stem>.txt`` sidecar files.
    Caption-file entries are matched by path relative to ``image_dir``, then by file name.

    Args:
        image_dir: folder searched recursively for images.
        captions: optional caption file.
        exclude: a folder (resolved path) whose images are ignored, e.g. the output directory.

    Returns:
        ``([(image path, caption)], {"no_caption": n, "missing_image": m})``.

    Raises:
        DataError: the folder is missing or has no images, or the caption file is unreadable/unsupported.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise DataError(f"image folder {image_dir} not found")
    images = _list_images(image_dir, exclude)
    if not images:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {image_dir}")
    counts = {"no_caption": 0, "missing_image": 0}
    if captions is None:
        for name in ("captions.tsv", "captions.csv", "captions.jsonl"):
            if (image_dir / name).is_file():
                captions = image_dir / name
                break
    pairs: list[tuple[Path, str]] = []
    if captions is None:
        for img in images:
            side = img.with_suffix(".txt")
            text = ""
            if side.is_file():
                try:
                    text = _clean_caption(side.read_text(encoding="utf-8-sig"))
                except (OSError, UnicodeDecodeError) as e:
                    log.warning("cannot read caption %s: %s", side, e)
            if text:
                pairs.append((img, text))
            else:
                counts["no_caption"] += 1
        return pairs, counts

    captions = Path(captions)
    if not captions.is_file():
        raise DataError(f"caption file {captions} not found")
    rows = read_caption_table(captions)
    by_rel = {p.relative_to(image_dir).as_posix(): p for p in images}
    by_name: dict[str, list[Path]] = {}
    for p in images:
        by_name.setdefault(p.name, []).append(p)
    assigned: dict[Path, str] = {}
    for name, caption in rows:
        rel = _norm_rel(name)
        path = by_rel.get(rel)
        if path is None and os.path.isabs(rel):
            try:
                path = by_rel.get(Path(rel).resolve().relative_to(image_dir.resolve()).as_posix())
            except ValueError:
                path = None
        if path is None and len(by_name.get(Path(rel).name, [])) == 1:
            path = by_name[Path(rel).name][0]
        text = _clean_caption(caption)
        if path is None or not text:
            counts["missing_image" if path is None else "no_caption"] += 1
            continue
        assigned[path] = text
    counts["no_caption"] += sum(1 for p in images if p not in assigned)
    pairs = [(p, assigned[p]) for p in images if p in assigned]
    return pairs, counts
