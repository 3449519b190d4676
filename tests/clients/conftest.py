"""One live gateway and one llama.cpp worker (SmolLM2-135M-Instruct behind basis-default) for every
client test in this package; each client is driven as its users drive it, over HTTP on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.gateway.harness import REPO, Gateway
from tests.models.support import require_llama

# LiteLLM fetches its model cost map from GitHub at import unless told to use its bundled copy; CI (and
# many deployments) cannot reach GitHub. Set before any test module here imports litellm.
OFFLINE_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_OFFLINE_MODE": "true"}
os.environ.update(OFFLINE_ENV)

NODE_DIR = Path(__file__).parent / "node"
CREDIT = 10**23


@dataclass
class Live:
    gateway: Gateway
    base_url: str  # what a client's base_url / api_base is set to
    api_key: str

    def key(self, name: str, credit: int = CREDIT, **limits: int) -> str:
        """A fresh key on its own account (``limits``: cap, requests_per_minute, tokens_per_minute)."""
        _, key = self.gateway.ledger.create_api_key(name, **limits)
        if credit:
            self.gateway.ledger.grant(name, credit)
        return key


@pytest.fixture(scope="package")
def live(tmp_path_factory) -> Iterator[Live]:
    require_llama()
    gw = Gateway(tmp_path_factory.mktemp("clients") / "home")
    try:
        gw.start_worker(engine="llama-cpp", capacity=2)
        _, key = gw.account("clients", CREDIT)
        yield Live(gw, gw.base + "/v1", key)
    finally:
        gw.close()


def require_node_openai() -> str:
    """The node binary, where node and the pinned `openai` npm package are installed (CI installs both)."""
    node = shutil.which("node")
    reason = None
    if node is None:
        reason = "node is not installed (scripts/setup.sh installs nodejs)"
    elif not (REPO / "node_modules" / "openai" / "package.json").is_file():
        reason = "node_modules/openai absent: run `npm ci` at the repository root"
    if reason:
        if os.environ.get("CI"):
            raise RuntimeError(f"CI installs the Node SDK, yet: {reason}")
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    assert node is not None
    return node


def run_node(live: Live, script: str, **env: str) -> dict:
    """Run tests/clients/node/<script> against the live gateway; its stdout is one JSON object."""
    node = require_node_openai()
    proc = subprocess.run([node, str(NODE_DIR / script)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "BASIS_BASE_URL": live.base_url, "BASIS_API_KEY": live.api_key, **env})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def run_guarded_python(code: str, *, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter behind the offline guard (tests.clients.offline_guard)."""
    prelude = "import tests.clients.offline_guard\n"
    env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def check_usage(live: Live, completion_id: str | None, prompt_tokens: int, completion_tokens: int,
                max_tokens: int | None = None, *, key: str | None = None) -> dict:
    """The usage a client reports is the signed receipt's count for the job: the one the chat id names,
    or (a client that drops the id) the newest receipt of ``key``'s account, via GET /v1/account/receipts."""
    import httpx

    from tests.gateway.test_worker_failures import receipt_for

    assert prompt_tokens > 0 and completion_tokens > 0
    if max_tokens is not None:
        assert completion_tokens <= max_tokens
    if completion_id is not None:
        receipt = receipt_for(live.gateway, completion_id.removeprefix("chatcmpl-"))
    else:
        live.gateway.views_caught_up()
        r = httpx.get(live.base_url + "/account/receipts", params={"limit": 1}, timeout=30,
                      headers={"Authorization": f"Bearer {key}"})
        receipt = r.json()["data"][0]
    assert receipt is not None, completion_id
    core = receipt["core"]
    assert (core["prompt_tokens"], core["output_tokens"]) == (prompt_tokens, completion_tokens)
    assert core["outcome"] == "completed" and core["served_by"] == "contributor"
    return core
