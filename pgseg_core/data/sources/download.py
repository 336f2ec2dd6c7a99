"""``prep-shards --source url-list|cc3m|cc12m|redcaps|...``: download a URL list with img2dataset (used as
a library), resumable after ``kill -9``, then publish the shard set with its ``index.json`` last.

- img2dataset runs in a child process that leads its own process session, so that its download processes
  can be ended as a group: when this process dies, however it dies, the child is signalled
  (``PR_SET_PDEATHSIG``) and kills its session; a lock file beside the output (``.OUT.pgseg/lock.json``:
  owner PID, session id) lets the next run end any process of a dead owner's session that is still alive
  before it resumes, so two runs never write the same shard.
- img2dataset's ``incremental`` mode skips every shard whose ``NNNNN_stats.json`` exists (written after its
  tar); an unfinished shard is downloaded again from scratch and its tar replaced, so each good sample ends
  up exactly once.
- When every shard is done, the folder is indexed (:mod:`.web_index`) and ``index.json`` is written last. A
  folder with an ``index.json`` is finished: it is validated, never downloaded into or rewritten.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ...errors import DataError, DependencyError
from ...utils.io import atomic_write_json, ensure_dir, pid_alive
from ..shards import INDEX_NAME, read_index
from .url_list import DownloadSettings, UrlList, img2dataset_kwargs, settings_record, url_list_for
from .web_index import index_shard_folder

__all__ = ["download_url_list", "convert_url_list", "stats_counts"]

log = logging.getLogger("pgseg.data.download")


def _rows(lst: UrlList, path: Path) -> int:
    import pyarrow.parquet as pq

    if lst.input_format == "parquet" or path.suffix == ".parquet":
        return int(pq.ParquetFile(path).metadata.num_rows)
    with open(path, "rb") as f:
        return max(0, sum(1 for _ in f) - 1)


def convert_url_list(lst: UrlList, staging: Path) -> Path:
    """The file img2dataset reads: ``lst.path`` as is, or rewritten as ``staging/urls.parquet`` (columns
    ``url``, ``caption``) for a list without header row or RedCaps' annotation JSONs."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if not lst.convert:
        return lst.path
    target = staging / "urls.parquet"
    if lst.convert == "headerless":
        table = pacsv.read_csv(
            lst.path,
            read_options=pacsv.ReadOptions(column_names=list(lst.columns)),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        ).select(["url", "caption"])
    else:  # redcaps-json: {"annotations": [{"url", "caption", ...}]} per subreddit file
        files = sorted(lst.path.glob("*.json")) if lst.path.is_dir() else [lst.path]
        urls, caps = [], []
        for f in files:
            for a in json.loads(f.read_text(encoding="utf-8")).get("annotations", []):
                urls.append(a["url"])
                caps.append(a.get("caption", ""))
        table = pa.table({"url": urls, "caption": caps})
    tmp = staging / f".urls.{os.getpid()}.parquet"
    pq.write_table(table, tmp)
    os.replace(tmp, target)
    return target


def stats_counts(out: Path) -> dict[str, Any]:
    """Sum img2dataset's ``NNNNN_stats.json``: written (successes), failed_to_download (dead links,
    timeouts, opt-out headers), failed_to_resize (not an image, undecodable) and the error messages."""
    totals = {"count": 0, "successes": 0, "failed_to_download": 0, "failed_to_resize": 0}
    errors: dict[str, int] = {}
    for f in sorted(out.glob("*_stats.json")):
        stats = json.loads(f.read_text(encoding="utf-8"))
        for k in totals:
            totals[k] += int(stats.get(k, 0))
        for msg, n in (stats.get("status_dict") or {}).items():
            if msg != "success":
                errors[msg] = errors.get(msg, 0) + int(n)
    return {
        "rows": totals["count"],
        "written": totals["successes"],
        "failed_to_download": totals["failed_to_download"],
        "failed_to_resize": totals["failed_to_resize"],
        "errors": errors,
    }


def _reap(lock: Path) -> None:
    """End what a dead earlier run left running (lock file: owner PID and its img2dataset session)."""
    try:
        info = json.loads(lock.read_text())
    except (OSError, ValueError):
        return
    owner, sid = int(info.get("owner", 0)), int(info.get("session", 0))
    if pid_alive(owner) and owner != os.getpid():
        raise DataError(f"another prep-shards (PID {owner}) is downloading into this folder; wait for it")
    if sid > 1:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(sid, signal.SIGKILL)
            log.warning("ended the download processes a killed run left behind (session %d)", sid)
        for _ in range(100):
            try:
                os.killpg(sid, 0)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.05)
    lock.unlink(missing_ok=True)


def _child(kwargs: dict[str, Any], lock: str, log_file: str, owner: int) -> None:
    """The img2dataset process: its own session, killed as a group when the owner dies."""
    os.setsid()
    signal.signal(signal.SIGTERM, lambda *_: os.killpg(0, signal.SIGKILL))
    from ...utils.process import end_with_parent

    end_with_parent(owner)
    atomic_write_json(lock, {"owner": owner, "session": os.getsid(0)})
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would ask PyPI on import
    with open(log_file, "a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        sys.stdout = sys.stderr = f
        from img2dataset import download

        download(**kwargs)


def _run(kwargs: dict[str, Any], staging: Path, out: Path, total: int, progress) -> None:
    lock = staging / "lock.json"
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_child, args=(kwargs, str(lock), str(staging / "img2dataset.log"), os.getpid()))
    proc.start()
    try:
        while proc.is_alive():
            proc.join(0.5)
            if progress:
                progress(len(list(out.glob("*_stats.json"))), total)
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    if proc.exitcode != 0:
        raise DataError(f"img2dataset failed (exit {proc.exitcode}); see {staging / 'img2dataset.log'}")
    lock.unlink(missing_ok=True)


def download_url_list(urls: str | Path, out: str | Path, *, source: str = "url-list",
                      url_col: str | None = None, caption_col: str | None = None,
                      settings: DownloadSettings = DownloadSettings(),
                      progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Download ``urls`` into the shard folder ``out`` with img2dataset and publish it (module docstring).

    Args:
        urls: the URL list (see :func:`.url_list.url_list_for` for formats and columns).
        out: the shard folder (img2dataset's ``output_folder``).
        source: ``url-list`` or a built-in dataset name (cc3m, cc12m, redcaps, coco-captions, yfcc14m).
        url_col / caption_col: the list's columns (built-ins know theirs).
        settings: img2dataset settings (the papers' by default).
        progress: ``(shards done, shards)`` callback.

    Returns:
        ``{"out_dir", "count", "shards", "download": {"rows", "written", "failed_to_download",
        "failed_to_resize", "errors"}, "skipped": {...}, "already": bool}``.

    Raises:
        DependencyError: img2dataset is not installed (``pip install 'pgseg[download]'``).
        DataError: a bad list or source, img2dataset failing, another live run on ``out``.
    """
    out = Path(out).expanduser()
    lst = url_list_for(source, urls, url_col, caption_col)
    if (out / INDEX_NAME).is_file():
        index = read_index(out)
        log.info("%s is already a finished shard set: nothing downloaded", out)
        train = index["splits"]["train"]
        return {"out_dir": str(out), "count": train["count"], "shards": len(train["shards"]),
                "download": index.get("download_counts", {}), "skipped": index.get("skipped", {}),
                "already": True}  # fmt: skip
    try:
        import img2dataset  # noqa: F401
    except ImportError as e:
        raise DependencyError(
            f"img2dataset is needed to download URL lists ({e}): pip install 'pgseg[download]'"
        )
    staging = ensure_dir(out.parent / f".{out.name}.pgseg")
    _reap(staging / "lock.json")
    url_file = convert_url_list(lst, staging)
    kwargs = img2dataset_kwargs(str(url_file), str(ensure_dir(out)), lst, settings)
    _run(kwargs, staging, out, max(1, math.ceil(_rows(lst, url_file) / settings.shard_size)), progress)
    counts = stats_counts(out)
    extra = {"download": settings_record(settings, lst, source), "download_counts": counts}
    summary = index_shard_folder(out, workers=settings.processes, extra=extra)
    shutil.rmtree(staging, ignore_errors=True)
    return {**summary, "download": counts, "already": False}
