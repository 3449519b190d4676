#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs lint and the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
.venv/bin/ruff check src tests scripts
exec .venv/bin/python -m pytest "$@"
