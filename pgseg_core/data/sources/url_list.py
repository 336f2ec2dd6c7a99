"""URL lists -> img2dataset arguments: the papers' download settings, each published list's columns, and
the driver script of img2dataset's distributed mode (pyspark / ray).

Settings (docs/WEB_DATA.md §1): images resized so the short side is 512 px (``resize_mode="keep_ratio"``,
only if bigger), re-encoded as JPEG quality 95, ``retries`` 2, ``incremental`` resume, a user agent
token ``pgseg`` and img2dataset's opt-out check: a response with ``X-Robots-Tag: noai``, ``noimageai``,
``noindex`` or ``noimageindex`` is not downloaded.
"""

from __future__ import annotations

import json
import pprint
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ...errors import DataError
from .registry import BUILTIN, DatasetEntry

__all__ = ["DownloadSettings", "UrlList", "url_list_for", "img2dataset_kwargs", "distributed_script"]

OPT_OUT_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")


@dataclass(frozen=True)
class DownloadSettings:
    """img2dataset settings of a download (the defaults are the papers').

    Attributes:
        image_size: short side after resizing, pixels.
        encode_quality: JPEG quality (0-100).
        retries: extra attempts per URL.
        timeout: seconds per request.
        processes: download processes (img2dataset ``processes_count``).
        threads: threads per process (``thread_count``).
        shard_size: samples per tar (``number_sample_per_shard``).
        user_agent_token: added to the user agent, so site owners can identify and block the crawler.
    """

    image_size: int = 512
    encode_quality: int = 95
    retries: int = 2
    timeout: int = 10
    processes: int = 16
    threads: int = 64
    shard_size: int = 10000
    user_agent_token: str = "pgseg"


@dataclass(frozen=True)
class UrlList:
    """A URL list as img2dataset reads it: ``path``, ``input_format`` (tsv / csv / parquet), columns, and
    whether pgseg must first rewrite it as parquet (a list without header row, RedCaps' JSON)."""

    path: Path
    input_format: str
    url_col: str
    caption_col: str
    convert: str = ""  # "" | "headerless" | "redcaps-json"
    columns: tuple[str, ...] = ()


_FORMATS = {".tsv": "tsv", ".csv": "csv", ".parquet": "parquet", ".gz": ""}


def _format_of(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s in (".tsv", ".csv", ".parquet", ".json", ".jsonl", ".gz")]
    fmt = "".join(suffixes).lstrip(".")
    if fmt not in ("tsv", "csv", "parquet", "tsv.gz", "csv.gz", "jsonl", "jsonl.gz"):
        raise DataError(f"URL list {path}: unknown format; use a .tsv, .csv, .parquet or .jsonl file")
    return fmt


def url_list_for(source: str, urls: str | Path, url_col: str | None, caption_col: str | None) -> UrlList:
    """How to read ``urls`` for ``source`` (``url-list`` or a built-in name).

    ``url-list`` reads a file with a header row and the columns ``url_col`` / ``caption_col`` (default
    ``url`` / ``caption``). A built-in name knows its published file: cc3m and cc12m are tsv files without
    a header (column orders in :mod:`.registry`), redcaps is a folder (or one file) of annotation JSONs,
    coco-captions a parquet with ``URL`` / ``TEXT``; explicit columns override.

    Raises:
        DataError: an unknown source, a missing file, a format img2dataset cannot read, a built-in
            dataset without a public URL list and no columns given.
    """
    path = Path(urls).expanduser()
    if not path.exists():
        raise DataError(f"URL list not found: {path}")
    if source == "url-list":
        return UrlList(path, _format_of(path), url_col or "url", caption_col or "caption")
    entry: DatasetEntry | None = BUILTIN.get(source)
    if entry is None:
        known = ", ".join(["url-list", *sorted(BUILTIN)])
        raise DataError(f"unknown URL-list source '{source}': use one of {known}")
    if entry.file_format == "redcaps-json":
        return UrlList(path, "parquet", "url", "caption", convert="redcaps-json")
    if not entry.file_format and not (url_col and caption_col):
        raise DataError(
            f"{source} has no public URL list with captions: build a tsv/csv/parquet with a header and pass "
            "--url-col and --caption-col"
        )
    fmt = _format_of(path) if not entry.file_format else entry.file_format
    if entry.columns and not (url_col or caption_col):
        return UrlList(path, "parquet", "url", "caption", convert="headerless", columns=entry.columns)
    return UrlList(path, fmt, url_col or entry.url_col, caption_col or entry.caption_col)


def img2dataset_kwargs(url_list: str, out: str, lst: UrlList, settings: DownloadSettings) -> dict[str, Any]:
    """The keyword arguments of ``img2dataset.download`` for this download (local and distributed alike).

    Args:
        url_list: the list img2dataset reads (after any conversion).
        out: the output folder (local path or fsspec URL).
        lst: its format and columns.
        settings: the download settings.
    """
    return {
        "url_list": str(url_list),
        "input_format": lst.input_format,
        "url_col": lst.url_col,
        "caption_col": lst.caption_col,
        "output_folder": str(out),
        "output_format": "webdataset",
        "image_size": settings.image_size,
        "resize_mode": "keep_ratio",
        "resize_only_if_bigger": True,
        "encode_format": "jpg",
        "encode_quality": settings.encode_quality,
        "retries": settings.retries,
        "timeout": settings.timeout,
        "processes_count": settings.processes,
        "thread_count": settings.threads,
        "number_sample_per_shard": settings.shard_size,
        "incremental_mode": "incremental",
        "user_agent_token": settings.user_agent_token,
        "disallowed_header_directives": list(OPT_OUT_DIRECTIVES),
        "save_additional_columns": None,
        "enable_wandb": False,
        "distributor": "multiprocessing",
    }


_SPARK = """from pyspark.sql import SparkSession

# img2dataset uses the active session: one executor core per download process
spark = (
    SparkSession.builder.config("spark.driver.memory", "16G")
    .config("spark.executor.memory", "16G")
    .config("spark.task.maxFailures", "100")
    .appName("pgseg-img2dataset")
    .getOrCreate()
)
"""
_RAY = """import ray

ray.init(address="auto")  # join the running cluster (`ray start --head` / `ray start --address ...`)
"""


def distributed_script(kwargs: dict[str, Any], distributor: str, subjob_size: int = 1000) -> str:
    """A Python driver script that runs the same download on a pyspark or ray cluster.

    Args:
        kwargs: :func:`img2dataset_kwargs` (output folder and URL list should be on shared storage, e.g.
            ``s3://``; every machine needs ``pip install img2dataset``).
        distributor: ``pyspark`` or ``ray``.
        subjob_size: shards handed to the cluster per round (img2dataset's ``subjob_size``).

    Returns:
        The script text (run it with ``python script.py`` on the driver / head node).

    Raises:
        DataError: another distributor.
    """
    if distributor not in ("pyspark", "ray"):
        raise DataError(f"distributor must be pyspark or ray, got '{distributor}'")
    args = {**kwargs, "distributor": distributor, "subjob_size": int(subjob_size)}
    head = _SPARK if distributor == "pyspark" else _RAY
    body = pprint.pformat(args, sort_dicts=True, width=100)
    return (
        f'"""img2dataset download, distributor {distributor} (generated by pgseg prep-shards '
        f'--emit-script). Afterwards run: pgseg prep-shards --index {kwargs["output_folder"]}"""\n\n'
        f"{head}\nfrom img2dataset import download\n\nARGS = {body}\n\n"
        'if __name__ == "__main__":\n    download(**ARGS)\n'
    )


def settings_record(settings: DownloadSettings, lst: UrlList, source: str) -> dict[str, Any]:
    """What the index stores about the download (``download`` key)."""
    return {
        "source": source,
        "url_list": str(lst.path),
        "columns": {"url": lst.url_col, "caption": lst.caption_col},
        "settings": json.loads(json.dumps(asdict(settings))),
        "opt_out_directives": list(OPT_OUT_DIRECTIVES),
    }
