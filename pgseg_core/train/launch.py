"""``--nproc N``: run a command as N local processes through torch.distributed's elastic launcher.

This is what ``torchrun --standalone --nproc_per_node N CMD ...`` does (``torch.distributed.launcher.api``:
a c10d rendezvous on 127.0.0.1 with a free port, one agent supervising N workers, each with ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` set). Every worker's stdout and stderr go to
the console unchanged; when one fails, the agent stops the others and :func:`run_local` raises one line
naming the failed ranks and their exit codes.
"""

from __future__ import annotations

import logging
import os
import uuid

from ..errors import PgsegError

__all__ = ["run_local", "LaunchError"]

_log = logging.getLogger("pgseg.train")


class LaunchError(PgsegError):
    """A worker process of a ``--nproc`` run failed (its own error line is printed above)."""


def run_local(nproc: int, command: list[str]) -> None:
    """Run ``command`` (``[executable, *args]``) as ``nproc`` workers on this machine and wait for them.

    Args:
        nproc: number of worker processes (>= 1).
        command: the program and its arguments, e.g. ``[sys.executable, "-m", "pgseg_cli", "train", ...]``.

    Raises:
        LaunchError: a worker exited with an error (one line: the ranks, their exit codes).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=int(nproc),
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,
        monitor_interval=0.2,
        start_method="spawn",
    )
    if nproc > 1 and "OMP_NUM_THREADS" not in os.environ:  # as torchrun: N processes share the cores
        os.environ["OMP_NUM_THREADS"] = "1"
        _log.info("OMP_NUM_THREADS=1 for each of the %d processes (set it to change)", nproc)
    _log.info("launching %d processes: %s", nproc, " ".join(command[1:]))
    try:
        elastic_launch(config, command[0])(*command[1:])
    except ChildFailedError as e:
        failed = ", ".join(f"rank {r} (exit {f.exitcode})" for r, f in sorted(e.failures.items()))
        raise LaunchError(f"{failed} of {nproc} processes failed; the errors are printed above") from None
