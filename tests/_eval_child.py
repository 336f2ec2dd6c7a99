"""``pgseg eval`` in a child process on an in-memory dataset, for the signal and kill tests.

Runs the CLI's own ``main()`` (signal handlers included) with ``pgseg_core.api._open_dataset`` replaced by
a :class:`FakeDataset` of ``PGSEG_TEST_NIMG`` images that writes the process's PID to the file
``PGSEG_TEST_MARK`` when it hands out image number ``PGSEG_TEST_MARK_AT`` (so a test knows the evaluation
loop is running, and which process to signal).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pgseg_core.api as api  # noqa: E402
from _eval_fakes import FakeDataset  # noqa: E402


class _MarkingDataset(FakeDataset):
    def __iter__(self):
        mark = os.environ.get("PGSEG_TEST_MARK")
        at = int(os.environ.get("PGSEG_TEST_MARK_AT", "1"))
        for i, sample in enumerate(self.samples):
            if mark and i == at:
                Path(mark).write_text(str(os.getpid()))
            yield sample


def _open(name: str, root: str, split: str) -> FakeDataset:
    return _MarkingDataset(int(os.environ.get("PGSEG_TEST_NIMG", "4")))


api._open_dataset = _open

if __name__ == "__main__":
    from pgseg_cli import main

    sys.argv[0] = "pgseg"
    main()
