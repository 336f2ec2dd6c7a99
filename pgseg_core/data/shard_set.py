"""Publishing a shard set: built in a private temporary folder, ``index.json`` written last, then renamed.

A shard set is built in ``.NAME.PID.partial`` beside its destination ``NAME``; every tar is written and
flushed, ``index.json`` last, and the folder is renamed to ``NAME`` (one atomic rename). So a folder named
``NAME`` always holds one complete build, never a part of one or a mix of two.

Replacing a set (``overwrite``) takes two renames: ``NAME`` -> ``.NAME.PID.old``, then the new folder ->
``NAME``; then the old folder is deleted. Each rename is atomic; a ``kill -9`` between them leaves no
``NAME`` and the complete previous set in ``.NAME.PID.old``. The next build repairs it before it starts
(:func:`recover_shard_set`): it renames that folder back, and deletes the ``.partial`` / ``.old`` folders
of processes that are gone. A folder of a live process (another build running) is left alone. SIGTERM and
Ctrl-C end a build like an error does (the temporary folder is deleted); during the publish they wait until
the renames and the deletion are done.

The destination must not be a mount point (a rename cannot cross file systems): name a folder inside it.
"""

from __future__ import annotations

import glob as _glob
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ..errors import OutputError
from ..utils.io import ensure_dir, output_error, pid_alive
from ..utils.process import deferred_signals
from .shards import INDEX_NAME, SplitWriter, write_index

log = logging.getLogger("pgseg.data.shard_set")

__all__ = ["ShardSet", "recover_shard_set", "shard_folder_state"]


_LEFTOVER_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<kind>partial|old)$")
_SHARD_FILE_RE = re.compile(r"^[A-Za-z0-9_-]+-\d{6}\.tar(\.tmp)?$|^\..+\.tmp$")


def _sibling(out: Path, kind: str, pid: int | None = None) -> Path:
    return out.parent / f".{out.name}.{os.getpid() if pid is None else pid}.{kind}"


def _leftovers(out: Path) -> list[tuple[Path, int, str]]:
    """``(path, pid, "partial" | "old")`` of the build folders beside ``out`` whose process is gone."""
    found = []
    if out.parent.is_dir():
        for path in out.parent.glob(f".{_glob.escape(out.name)}.*"):
            m = _LEFTOVER_RE.match(path.name)
            if m and m["name"] == out.name and path.is_dir():
                pid = int(m["pid"])
                if pid == os.getpid() or not pid_alive(pid):  # our own PID: a dead run's, reused
                    found.append((path, pid, m["kind"]))
    return found


def recover_shard_set(out_dir: str | Path) -> list[str]:
    """Repair what a killed build left beside ``out_dir``; returns one line per repair.

    A ``.NAME.PID.old`` folder of a dead process is the complete previous set of a build killed while it
    replaced it: when ``NAME`` is missing it is renamed back, otherwise (the new set was published) it is
    deleted. ``.NAME.PID.partial`` folders of dead processes are deleted. Live processes' folders stay.
    """
    out = Path(out_dir)
    done = []
    for path, _pid, kind in sorted(_leftovers(out), key=lambda t: t[2] != "old"):
        if kind == "old" and not out.exists() and (path / INDEX_NAME).is_file():
            os.rename(path, out)
            done.append(f"restored the previous shard set {out} from {path.name}")
        else:
            shutil.rmtree(path, ignore_errors=True)
            done.append(f"removed {path} (left by a killed build)")
    for line in done:
        log.warning("%s", line)
    return done


def shard_folder_state(out_dir: str | Path) -> tuple[str, str | None]:
    """What is at a shard output path: ``(state, example)``.

    ``state`` is ``"new"`` (nothing there), ``"empty"``, ``"file"``, ``"shard-set"`` (``index.json`` and
    shard files only), ``"incomplete"`` (shard files without ``index.json``: a build of an older pgseg
    that was interrupted, or shards made by hand) or ``"other"`` (other files; ``example`` names one).
    """
    out = Path(out_dir)
    if not out.exists():
        return ("file", None) if out.is_symlink() else ("new", None)
    if not out.is_dir():
        return "file", None
    names = sorted(p.name for p in out.iterdir())
    foreign = [n for n in names if n != INDEX_NAME and not _SHARD_FILE_RE.match(n)]
    if foreign:
        return "other", foreign[0]
    if INDEX_NAME in names:
        return "shard-set", None
    return ("incomplete", None) if names else ("empty", None)


def _check_target(out: Path, overwrite: bool) -> str:
    """The state of ``out`` if a shard set may be published there.

    Raises:
        OutputError: a file, a folder of other files, or a shard set (complete or not) without ``overwrite``.
    """
    state, example = shard_folder_state(out)
    if state == "file":
        raise OutputError(f"{out} is a file, not a folder: choose another output folder")
    if os.path.ismount(out):
        raise OutputError(
            f"{out} is a mount point: a shard set is published by a rename; name a folder inside it"
        )
    if state == "other":
        raise OutputError(
            f"{out} holds files that are not shards (e.g. {example}): choose a new or empty folder "
            "(a shard set replaces the whole folder)"
        )
    if state == "shard-set" and not overwrite:
        raise OutputError(
            f"{out} already holds a shard set (index.json): overwrite it or choose another folder"
        )
    if state == "incomplete" and not overwrite:
        raise OutputError(
            f"{out} holds shards without index.json (an interrupted build?): overwrite it or choose "
            "another folder"
        )
    return state


class ShardSet:
    """Build a shard set in a private temporary folder and publish it at ``out_dir`` only when complete.

    Use as a context manager: entering checks ``out_dir`` (before any long work), repairs what killed
    builds left (:func:`recover_shard_set`) and creates ``.NAME.PID.partial`` beside it; write each split
    through :meth:`split_writer` and the index through :meth:`write_index`; a normal exit publishes
    (renames the folder to ``out_dir``, see the module docstring), an exception deletes the temporary
    folder and leaves ``out_dir`` as it was. ``out_dir`` may be missing or empty; a shard set (complete or
    not) there is replaced only with ``overwrite``; a folder with other files is never used.

    Raises:
        OutputError: ``out_dir`` is a file, holds other files, holds a shard set without ``overwrite``,
            or cannot be created or written (full disk, no permission): one line naming ``out_dir``.
    """

    def __init__(self, out_dir: str | Path, *, overwrite: bool = False):
        self.out = Path(out_dir)
        target = Path(os.path.abspath(self.out))  # "." and ".." get a name, so a sibling
        link = target.is_symlink() and target.is_dir()
        self.target = target.resolve() if link else target  # a link keeps pointing at the new set
        self.overwrite = overwrite
        self.tmp = _sibling(self.target, "partial")
        self.index_written = False
        _check_target(self.target, overwrite)

    def __enter__(self) -> ShardSet:
        ensure_dir(self.target.parent)
        recover_shard_set(self.target)
        _check_target(self.target, self.overwrite)  # a restored previous set counts
        try:
            if self.tmp.exists():
                shutil.rmtree(self.tmp)
            os.mkdir(self.tmp)
        except OSError as e:
            raise output_error(self.out, e, "create a shard set in") from e
        return self

    def split_writer(self, split: str, shard_size: int) -> SplitWriter:
        """A :class:`SplitWriter` of ``split`` into the temporary folder (errors name ``out_dir``)."""
        return SplitWriter(self.tmp, split, shard_size, shown_as=self.out)

    def write_index(self, index: dict[str, Any]) -> Path:
        """Write ``index.json`` (call it last); returns its path once published."""
        try:
            write_index(self.tmp, index)
        except OSError as e:
            raise output_error(self.out, e, "write the shard index of") from e
        self.index_written = True
        return self.out / INDEX_NAME

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self.index_written:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if exc_type is None:
                raise RuntimeError("ShardSet left without write_index(): nothing was published")
            return
        try:
            self._publish()
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise

    def _publish(self) -> None:
        """Rename the temporary folder to ``out`` (moving a replaced set aside first, deleted after).

        SIGTERM and SIGINT wait until the renames and the deletion are done (a kill -9 cannot wait: the
        next build repairs what it leaves)."""
        state = _check_target(self.target, self.overwrite)  # another run may have published meanwhile
        _fsync_dir(self.tmp)
        with deferred_signals():
            self._swap(state)

    def _swap(self, state: str) -> None:
        old = None
        try:
            if state not in ("new", "empty"):
                old = _sibling(self.target, "old")
                os.rename(self.target, old)
            os.rename(self.tmp, self.target)  # also replaces an empty folder
        except OSError as e:
            if old is not None and old.exists() and not self.target.exists():
                os.rename(old, self.target)  # put the previous set back
            raise output_error(self.out, e, "publish the shard set") from e
        _fsync_dir(self.target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    """Flush a folder's entries to disk where the file system allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a folder
    finally:
        os.close(fd)
