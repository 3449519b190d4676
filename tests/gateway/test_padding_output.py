"""Padding is never paid as output (review: a worker sent 40 <pad> ids, zero bytes each, and was
rewarded for them; issue 17 item 6, DESIGN 1.3)."""

from __future__ import annotations

import json
import uuid
from importlib import resources

import pytest

from tests.gateway.scripted_worker import done, gateway_with_scripted_worker, tokens
from tests.gateway.test_api import CHAT, assert_error, post
from tests.models.support import require_llama


@pytest.fixture
def gemma_gateway(tmp_path, monkeypatch):
    """A gateway whose models all bind the real Gemma 3 270M vocabulary (whatever the default)."""
    require_llama()
    table = json.loads(resources.files("basis.domain").joinpath("pricing_table.json").read_text())
    for m in table["models"]:
        m["backing"] = {"engine": "llama-cpp", "gguf": "gemma3-270m"}
    path = tmp_path / "pricing.json"
    path.write_text(json.dumps(table))
    monkeypatch.setenv("BASIS_PRICING_TABLE", str(path))
    yield from gateway_with_scripted_worker(tmp_path / "home")


@pytest.mark.parametrize("stream", [False, True])
def test_forty_pad_ids_fail_the_job_and_are_never_charged(gemma_gateway, stream):
    gw, worker = gemma_gateway
    binding = gw.runtime.bindings["basis-default"]
    pad = binding.tokenize("<pad>", special=True)
    assert pad == [0]
    hello = binding.tokenize("Hello")
    account_id, key = gw.account("victim", 10**21)
    worker.scripts[64] = [tokens(hello, "Hello")] + [tokens(pad * 10, "")] * 4 + [done("length", 41)]
    r = post(gw, key, {"model": "basis-default", "messages": CHAT, "max_tokens": 64, "stream": stream})
    if stream:
        events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        err = events[-1]["error"]
        assert err["code"] == "worker_failed"
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == "Hello"
    else:
        err = assert_error(r, 502, "worker_failed")
    assert "control token" in err["message"] and "<pad>" in err["message"]
    job = gw.ledger.get(uuid.UUID(r.headers["basis-job-id"]))
    core = job.receipt["core"]
    assert job.outcome == "failed" and core["outcome"] == "failed"
    assert core["output_tokens"] == len(hello)  # "Hello" only: no pad is counted
    assert core["reward"] == "0" and core["reward_bps"] == 0
    acc = gw.ledger.get(account_id)
    assert acc.spent == int(core["charged"]) and acc.reserved == 0
    weights = gw.ledger.pricing.terms_for("basis-default")
    assert int(core["charged"]) == (core["prompt_tokens"] * weights.prompt_weight
                                    + len(hello) * weights.output_weight) * weights.multiplier_bps // 10_000


def test_end_of_turn_still_ends_a_job_normally_and_other_markers_fail_it(gemma_gateway):
    gw, worker = gemma_gateway
    binding = gw.runtime.bindings["basis-default"]
    hello = binding.tokenize("Hello")
    sot = binding.tokenize("<start_of_turn>", special=True)
    _, key = gw.account("markers", 10**21)
    worker.scripts[10] = [tokens(hello, "Hello"), done("stop", 1)]
    ok = post(gw, key, {"model": "basis-default", "messages": CHAT, "max_tokens": 10})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "Hello"
    worker.scripts[11] = [tokens(hello + sot, "Hello"), done("stop", 2)]
    err = assert_error(post(gw, key, {"model": "basis-default", "messages": CHAT, "max_tokens": 11}), 502,
                       "worker_failed")
    assert "<start_of_turn>" in err["message"]
