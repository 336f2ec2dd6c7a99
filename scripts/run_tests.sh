#!/usr/bin/env bash
# The test command: installs the dev extras (and the Debian demo sources) and runs the test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh dev --with-demo-data
. .venv/bin/activate
# lint and format check (ruff config and the line length in pyproject.toml)
ruff check .
ruff format --check .
rc=0
python -m pytest -q "$@" || rc=$?
# pytest exits 5 when a marker selection leaves no test to run; that is not a failure.
if [ "$rc" -eq 5 ]; then rc=0; fi
exit "$rc"
