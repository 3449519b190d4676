#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs lint and the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
.venv/bin/ruff check src tests scripts
# Parallel test processes (pytest-xdist): most tests wait on worker processes, anvil, PostgreSQL and
# loopback HTTP, so two processes on two cores cut the wall time nearly in half. --dist loadscope keeps
# each module on one process, so a module's chain, gateway or model is set up once. Every test already
# uses free ports and its own temp dirs; session fixtures (PostgreSQL cluster, explorer) exist once per
# process. BASIS_TEST_PROCESSES=0 (or a later `-n 0`) runs everything in this process.
exec .venv/bin/python -m pytest -n "${BASIS_TEST_PROCESSES:-2}" --dist loadscope "$@"
