"""``python -m pgseg_cli``: SIGTERM is turned into a clean exit (status 143) from here on, before the CLI's
modules load, so that a run stopped at any time after startup ends as ``main()`` documents."""

import signal
import sys

signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

from .app import main  # noqa: E402

main()
