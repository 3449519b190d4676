"""The real path: the gateway's verifier pool with its default scorer (llama.cpp over the binding's
own GGUF, ``basis.engines.llama_scoring.LlamaScorer``), an honest llama.cpp worker and a worker
sending random ordinary tokens, both speaking the public protocol. The honest worker's checked jobs
pass; the cheat's fail, it is suspended and its clients refunded."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.verification.test_e2e import start_cheat

pytestmark = [pytest.mark.llama]


def test_reference_scorer_passes_honest_llama_output_and_suspends_random_ids(reference_gateway):
    gw = reference_gateway
    runtime = gw.runtime
    assert runtime.verification.enabled and "basis-default" in runtime.verified_models
    gw.start_worker(engine="llama-cpp", capacity=2)
    honest = runtime.hub.workers()[0].address.lower()
    _, _, cheat = start_cheat(gw, honest_first=0)
    _, key = gw.account("client", 10**18)

    def one(i: int) -> str:
        r = httpx.post(f"{gw.base}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       timeout=300, json={"model": "basis-default", "max_tokens": 16, "temperature": 0.8,
                                          "messages": [{"role": "user", "content": f"Tell me a fact, {i}."}]})
        assert r.status_code == 200, r.text
        return r.json()["id"].removeprefix("chatcmpl-")

    with ThreadPoolExecutor(4) as pool:
        jobs = list(pool.map(one, range(8)))
    gw.views_caught_up()
    gw.until(lambda: not runtime.reader().pending_checks(), what="every checked job judged", timeout=600)
    gw.views_caught_up()
    reader = runtime.reader()
    verdicts: dict[str, list[str]] = {honest: [], cheat: []}
    for j in jobs:
        r = reader.receipt(j)
        if r["verification"] is not None:
            verdicts[r["core"]["worker"]].append(r["verification"]["verdict"])
    assert verdicts[honest] and set(verdicts[honest]) == {"passed"}, verdicts
    assert verdicts[cheat] and set(verdicts[cheat]) == {"failed"}, verdicts
    assert reader.worker_status(cheat)["status"] == "suspended"
    assert reader.worker_status(honest)["status"] == "active"
