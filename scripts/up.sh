#!/usr/bin/env bash
# The README's main command: installs Basis, then brings up a local network (`basis up`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/basis up "$@"
