"""Page cursors past the store's 64-bit range (found by the schema fuzzer, tests/gateway/test_fuzz_schema.py)
get a 400 in the API's own error format, never a 500."""

from __future__ import annotations

import httpx
import pytest

from tests.gateway.harness import Gateway

HUGE = "1352071147553539013738496"


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    gateway = Gateway(tmp_path_factory.mktemp("cursors") / "home")
    try:
        yield gateway
    finally:
        gateway.close()


@pytest.mark.parametrize("path", [f"/v1/receipts?before={HUGE}", f"/v1/settlement/batches?before={HUGE}",
                                  f"/v1/settlement/batches?before=-{HUGE}", f"/v1/receipts?before={2**63}"])
def test_api_cursor_past_int64_is_a_400(gw, path):
    r = httpx.get(gw.base + path)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", [f"/v1/receipts?before={2**63 - 1}", f"/v1/settlement/batches?before={2**63 - 1}"])
def test_api_cursor_at_int64_max_is_served(gw, path):
    r = httpx.get(gw.base + path)
    assert r.status_code == 200 and r.json()["data"] == []


@pytest.mark.parametrize("before", ["99999999999999999999", "²", "١٢"])
def test_explorer_cursor_that_is_no_position_is_a_400(gw, before):
    r = httpx.get(gw.base + "/receipts", params={"before": before})
    assert r.status_code == 400 and "page cursor is not a number" in r.text
