"""``python -m pgseg_cli``: the same entry as the ``pgseg`` console script (:func:`pgseg_cli.main`)."""

from . import main

main()
