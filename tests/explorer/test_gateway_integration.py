"""The explorer as the real gateway mounts it: a contributor worker serves a chat completion, and
its receipt shows up on every page and verifies in the browser."""

from __future__ import annotations

import re

import httpx
import pytest

from basis.explorer.format import format_basis
from tests.gateway.harness import Gateway


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    gw = Gateway(tmp_path_factory.mktemp("explorer-gateway") / "home")
    try:
        _, key = gw.account("alice", 10**18)
        gw.start_worker(engine="instant")
        r = httpx.post(gw.base + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                       json={"model": "basis-default", "messages": [{"role": "user", "content": "hi"}],
                             "max_tokens": 8})
        assert r.status_code == 200, r.text
        gw.views_caught_up()
        yield gw, r.json()["id"].removeprefix("chatcmpl-")
    finally:
        gw.close()


def test_gateway_serves_the_explorer_pages(served):
    gw, job_id = served
    receipt = httpx.get(f"{gw.base}/v1/receipts/{job_id}").json()
    worker = receipt["core"]["worker"]
    with httpx.Client(base_url=gw.base, timeout=10) as http:
        overview = http.get("/")
        assert overview.status_code == 200 and f"/receipts/{job_id}" in overview.text
        assert gw.ledger.signer.address in overview.text
        assert "live" in http.get("/models").text
        page = http.get(f"/receipts/{job_id}")
        assert page.status_code == 200 and receipt["hash"] in page.text and receipt["signature"] in page.text
        workers = http.get("/workers")
        row = re.search(rf'<tr id="worker-{worker}">(.*?)</tr>', workers.text, re.S).group(1)
        # The workers view may hold the checksummed address; its reward row is matched lowercase.
        assert "online" in row and re.search(r'data-label="Jobs served" class="num">1<', row)
        assert format_basis(receipt["core"]["reward"]) in row
        assert http.get("/settlement").status_code == 200
        assert http.get("/explorer-static/verify.js").status_code == 200


@pytest.mark.browser
def test_gateway_receipt_verifies_in_the_browser(served, browser):
    from tests.explorer.test_browser import verification

    gw, job_id = served
    receipt = httpx.get(f"{gw.base}/v1/receipts/{job_id}").json()
    for query in ("", "?nocrypto=1"):
        browser.get(f"{gw.base}/receipts/{job_id}{query}")
        result = verification(browser)
        assert result["state"] == "match" and result["computed"] == receipt["hash"], query
