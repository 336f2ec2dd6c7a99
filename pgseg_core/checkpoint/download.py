"""Plain HTTP(S) downloads of released weight files: resumable, verified, atomic, with progress.

A file goes to ``DEST.part`` beside its destination; a dropped connection keeps the part, and the next
attempt (in the same call, or a later run) asks for the rest with an HTTP ``Range`` request (a server that
answers with the whole file instead starts the part over). The finished part is hashed; a SHA-256 that
does not match the release's (the full digest, or the prefix in the release's file name) deletes the part
and raises, so nothing unverified is ever left under the destination name; a match is renamed over the
destination (``os.replace``: a reader sees no file or the whole one). Standard library only (urllib), so the
default released model downloads on a plain install.

Progress goes to the ``progress(done_bytes, total_bytes_or_None)`` callback given, else to the sink a front
end installed with :func:`download_progress_to` (the CLI's progress bar), else to INFO log lines at every
10 %.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path

from ..errors import DownloadError
from ..version import __version__

__all__ = ["download_file", "download_progress_to", "offline_reason", "report_progress", "ProgressSink"]

log = logging.getLogger("pgseg.download")

ProgressSink = Callable[[str, int, "int | None"], None]  # (label, done bytes, total bytes or None)
_SINK: ContextVar[ProgressSink | None] = ContextVar("pgseg_download_progress", default=None)
CHUNK = 1 << 20  # bytes read per step
OFFLINE_VARS = ("PGSEG_OFFLINE", "HF_HUB_OFFLINE")


@contextlib.contextmanager
def download_progress_to(sink: ProgressSink | None) -> Iterator[None]:
    """Within the block, downloads that were given no callback report ``sink(label, done, total)``."""
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)


def report_progress(label: str, progress: Callable[[int, int | None], None] | None):
    """The ``(done, total)`` callback of one download: ``progress``, else the installed sink, else INFO
    log lines at every 10 % (or every 64 MiB when the size is unknown)."""
    if progress is not None:
        return progress
    sink = _SINK.get()
    if sink is not None:
        return lambda done, total: sink(label, done, total)
    state = {"next": 0}

    def log_lines(done: int, total: int | None) -> None:
        mark = done * 10 // total if total else done >> 26
        if mark >= state["next"]:
            state["next"] = mark + 1
            size = f"{done / 1e6:.0f} / {total / 1e6:.0f} MB" if total else f"{done / 1e6:.0f} MB"
            log.info("downloading %s: %s", label, size)

    return log_lines


def offline_reason() -> str | None:
    """``"PGSEG_OFFLINE=1"`` (or ``HF_HUB_OFFLINE=1``) when the environment turns downloads off, else None."""
    for var in OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var}={os.environ[var]}"
    return None


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": f"pgseg/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _total(resp: http.client.HTTPResponse, offset: int) -> int | None:
    """The full file size from ``Content-Range`` (a 206) or ``Content-Length``; None when unknown."""
    crange = resp.headers.get("Content-Range", "")
    if "/" in crange and crange.rsplit("/", 1)[1].strip().isdigit():
        return int(crange.rsplit("/", 1)[1])
    length = resp.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def _transfer(url: str, part: Path, tick: Callable[[int, int | None], None], timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (resuming from its size). Raises what the transfer raised."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, offset, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the part already holds every byte
            return
        raise
    with resp:
        if offset and resp.status != 206:
            offset = 0  # the server ignored the Range: start over
        total = _total(resp, offset)
        with open(part, "ab" if offset else "wb") as f:
            done = offset
            tick(done, total)
            while block := resp.read(CHUNK):
                f.write(block)
                done += len(block)
                tick(done, total)
            f.flush()
            os.fsync(f.fileno())
        if total is not None and done < total:
            raise http.client.IncompleteRead(b"", total - done)


def _check_hash(part: Path, sha256: str, prefix: str, label: str, url: str, dest: Path) -> None:
    """Delete ``part`` and raise when its SHA-256 is not the expected one (full digest or prefix)."""
    if not sha256 and not prefix:
        return
    h = hashlib.sha256()
    with open(part, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    digest = h.hexdigest()
    want = (sha256 or prefix).lower()
    if digest.startswith(want):
        return
    part.unlink(missing_ok=True)
    raise DownloadError(
        f"{label}: the file from {url} has sha256 {digest[:16]}..., not the release's {want[:16]}...; it was "
        f"refused and deleted (run again, or fetch it by hand and put it at {dest})"
    )


_TRANSIENT = (
    urllib.error.URLError,
    http.client.HTTPException,
    ConnectionError,
    socket.timeout,
    TimeoutError,
)


def download_file(
    url: str,
    dest: str | Path,
    *,
    label: str = "",
    sha256: str = "",
    sha256_prefix: str = "",
    progress: Callable[[int, int | None], None] | None = None,
    retries: int = 3,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest``: resumable (``DEST.part`` + HTTP Range), verified, atomic.

    Args:
        url: http(s) URL of the file.
        dest: the final path; its folder is created.
        label: the name in messages and progress (default: the file name).
        sha256 / sha256_prefix: the expected hex SHA-256, whole or its first digits (a release file's name
            carries the first 8); both empty: not checked.
        progress: ``progress(done_bytes, total_bytes_or_None)``; None: see :func:`report_progress`.
        retries: how many times a transfer that dropped after receiving bytes is resumed within this call
            (one that received nothing fails at once).
        timeout: seconds a connection may stall.

    Returns:
        ``dest``.

    Raises:
        DownloadError: downloads are off (``PGSEG_OFFLINE`` / ``HF_HUB_OFFLINE``), the host cannot be reached
            or refuses (one line naming the URL to fetch by hand and the path to put it at; a partial file
            stays for the next run to resume), or the SHA-256 does not match (the file is deleted).
    """
    dest = Path(dest)
    label = label or dest.name
    manual = f"fetch {url} by hand and put it at {dest}"
    reason = offline_reason()
    if reason:
        raise DownloadError(f"{label} is not downloaded and downloads are off ({reason}): {manual}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest):  # another process fetching the same file: wait for it, then use its result
        if dest.exists():
            return dest
        _fetch_verified(url, dest, label, sha256, sha256_prefix, progress, retries, timeout)
    return dest


@contextlib.contextmanager
def _exclusive(dest: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``dest``'s folder (no lock file is left behind; the kernel releases the
    lock if the process dies)."""
    import fcntl

    fd = os.open(dest.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _fetch_verified(url, dest, label, sha256, sha256_prefix, progress, retries, timeout) -> None:
    """The transfer loop of :func:`download_file` (resume, retry, verify, rename)."""
    manual = f"fetch {url} by hand and put it at {dest}"
    part = dest.with_name(dest.name + ".part")
    tick = report_progress(label, progress)
    for attempt in range(retries + 1):
        before = part.stat().st_size if part.exists() else 0
        try:
            _transfer(url, part, tick, timeout)
            break
        except urllib.error.HTTPError as e:
            raise DownloadError(f"cannot download {label} (HTTP {e.code} from {url}): {manual}") from e
        except _TRANSIENT as e:
            kept = part.stat().st_size if part.exists() else 0
            if attempt == retries or kept <= before:  # no byte came in this attempt: no point retrying
                why = getattr(e, "reason", None) or e
                raise DownloadError(
                    f"cannot download {label} from {url} ({why}; {kept} bytes kept to resume): run again, "
                    f"or {manual}"
                ) from e
            log.warning("download of %s interrupted at %d bytes (%s); resuming (attempt %d of %d)", label,
                        kept, type(e).__name__, attempt + 2, retries + 1)  # fmt: skip
    _check_hash(part, sha256, sha256_prefix, label, url, dest)
    os.replace(part, dest)
