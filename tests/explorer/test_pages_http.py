"""Each explorer page over plain HTTP against real uvicorn and real projections: status and content."""

from __future__ import annotations

import html
import json
import re
import sqlite3

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from basis.domain.receipt import receipt_hash
from basis.explorer import data
from basis.explorer.format import format_basis, format_multiplier
from basis.ledger.projections import ViewReader
from tests.explorer.conftest import IDLE_WORKER, TX_HASH
from tests.ledger.helpers import WORKER


@pytest.fixture(scope="module")
def http(world):
    with httpx.Client(base_url=world.url, timeout=10, follow_redirects=False) as client:
        yield client


def text_of(page: str) -> str:
    """The visible text of <main>, whitespace collapsed."""
    main = page[page.index("<main"):page.index("</main>")]
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", main))).strip()


def job_links(page: str) -> list[str]:
    return re.findall(r'href="/receipts/([0-9a-f-]{36})"', page)


def test_overview_shows_launch_status_chain_signer_and_disclaimers(http, world):
    r = http.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    body = text_of(r.text)
    assert "Inference runtime live" in body
    for label in ("$BASIS token pending", "Credit vault contract pending", "Reward distributor contract pending"):
        assert label in body
    assert "31337" in body and world.ledger.signer.address in body
    assert "Models live 2 of 3" in body and "Workers online 1 of 2" in body and "Receipts 7" in body
    assert "$BASIS is planned, not live" in r.text and "placeholders" in r.text
    assert job_links(r.text)[0] == world.order[-1]  # newest first
    assert '<html lang="en">' in r.text and 'name="viewport"' in r.text


def test_overview_shows_live_contract_addresses(world):
    token = "0x" + "1f" * 20
    world.runtime.token = token
    try:
        body = text_of(httpx.get(world.url + "/").text)
    finally:
        world.runtime.token = None
    assert "$BASIS token live" in body and token in body


def test_models_page_lists_limits_multipliers_and_status(http):
    r = http.get("/models")
    assert r.status_code == 200
    rows = {m: text_of("<main>" + row + "</main>") for m, row in
            re.findall(r'<tr id="model-([a-z-]+)">(.*?)</tr>', r.text, re.S)}
    assert set(rows) == {"basis-default", "basis-small", "basis-large"}
    assert rows["basis-default"].startswith("basis-default 8,192 512 1x live 1")
    assert rows["basis-small"].startswith("basis-small 8,192 512 0.5x live 1")
    assert rows["basis-large"].startswith("basis-large 32,768 2,048 3x planned 0")
    assert "gemma3-270m" in rows["basis-large"]


def test_receipts_are_paged_newest_first_with_a_before_cursor(http, world):
    seen, url = [], "/receipts?limit=3"
    while url:
        r = http.get(url)
        assert r.status_code == 200
        seen += job_links(r.text)
        nxt = re.search(r'<a rel="next" href="([^"]+)"', r.text)
        url = html.unescape(nxt.group(1)) if nxt else None
        if url:
            assert "before=" in url
    assert seen == list(reversed(world.order))
    r = http.get("/receipts")
    assert job_links(r.text) == list(reversed(world.order)) and 'rel="next"' not in r.text
    assert 'label for="q"' in r.text


def test_receipts_filter_by_worker_and_reject_a_bad_cursor(http, world):
    assert job_links(http.get("/receipts", params={"worker": IDLE_WORKER}).text) == []
    served = job_links(http.get("/receipts", params={"worker": WORKER}).text)
    assert world.receipts["gateway"]["core"]["job_id"] not in served and len(served) == 6
    r = http.get("/receipts", params={"before": "abc"})
    assert r.status_code == 400 and "cursor" in r.text


def test_search_redirects_to_the_receipt_by_job_id_or_hash(http, world):
    receipt = world.receipts["small"]
    job_id = receipt["core"]["job_id"]
    for q in (job_id, job_id.upper(), receipt["hash"], "0x" + receipt["hash"][2:].upper(), f"  {job_id} "):
        r = http.get("/receipts", params={"q": q})
        assert r.status_code == 303, q
        assert r.headers["location"] == f"/receipts/{job_id}"
    r = http.get("/receipts", params={"q": "0x" + "00" * 32})
    assert r.status_code == 404 and "No receipt has the job id or hash" in r.text
    assert http.get("/receipts", params={"q": "not a key"}).status_code == 404


def test_receipt_page_shows_core_hash_signature_signer_status_and_settlement(http, world):
    receipt = world.receipts["settled"]
    core = receipt["core"]
    r = http.get(f"/receipts/{core['job_id']}")
    assert r.status_code == 200
    embedded = json.loads(re.search(r'<script type="application/json" id="receipt-core">(.*?)</script>',
                                    r.text, re.S).group(1))
    assert embedded == core and receipt_hash(embedded) == receipt["hash"]
    pretty = html.unescape(re.search(r'<pre id="core-json" class="code">(.*?)</pre>', r.text, re.S).group(1))
    assert json.loads(pretty) == core
    body = text_of(r.text)
    for value in (receipt["hash"], receipt["signature"], receipt["signer"], world.batch["batch_id"], TX_HASH):
        assert value in body
    assert "Status settled" in body and "leaf 0" in body and "consistent" in body
    assert 'data-published="' + receipt["hash"] + '"' in r.text
    assert "encode_defunct(primitive=" in r.text  # how to verify the signature with eth-account
    charged = core["charged"]
    assert f'title="{charged} base units"' in r.text and format_basis(charged) + "<span" in r.text


def test_receipt_by_hash_redirects_to_its_job_id_and_unknown_is_404(http, world):
    receipt = world.receipts["gateway"]
    r = http.get(f"/receipts/{receipt['hash']}")
    assert r.status_code == 308 and r.headers["location"] == f"/receipts/{receipt['core']['job_id']}"
    page = http.get(f"/receipts/{receipt['core']['job_id']}")
    assert "gateway (metered, no reward)" in text_of(page.text) and "not settled yet" in page.text
    assert http.get("/receipts/00000000-0000-0000-0000-000000000000").status_code == 404
    assert http.get("/receipts/nonsense").status_code == 404


def test_workers_page_lists_addresses_models_online_and_rewards(http, world):
    r = http.get("/workers")
    assert r.status_code == 200
    rows = dict(re.findall(r'<tr id="worker-(0x[0-9a-f]{40})">(.*?)</tr>', r.text, re.S))
    assert list(rows) == [WORKER, IDLE_WORKER]  # online first
    busy = text_of("<main>" + rows[WORKER] + "</main>")
    reader = ViewReader(world.settings.views_path)
    try:
        rewards = {w["address"]: w for w in reader.workers()}[WORKER]
    finally:
        reader.close()
    assert "basis-default, basis-small" in busy and "online" in busy and " 6 " in f" {busy} "
    assert format_basis(rewards["accrued"]) in busy and format_basis(rewards["settled"]) in busy
    assert rewards["settled"] != "0"
    idle = text_of("<main>" + rows[IDLE_WORKER] + "</main>")
    assert "basis-large" in idle and "offline" in idle
    assert "How GPU workers join and earn" in r.text


def test_settlement_page_lists_the_batch_and_what_waits(http, world):
    r = http.get("/settlement")
    assert r.status_code == 200
    body = text_of(r.text)
    assert "Unsettled receipts 5" in body
    assert world.batch["batch_id"][:10] in body and TX_HASH[:10] in body
    if world.batch["from_view"]:
        assert "confirmed" in body and "block 12" in body
        roots = re.findall(r'title="(0x[0-9a-f]{64})"', r.text)
        assert len(set(roots)) >= 3  # receipts root, rewards root, tx (and batch id)
        position, head = world.batch["anchor"]
        assert f"position {position:,}" in body and f'title="{head}"' in r.text  # the anchored ledger head


def test_settlement_adapter_falls_back_without_a_batch_view(tmp_path, world):
    """A views file from before the settlement tables: batches come from the receipts' pointers."""
    old = sqlite3.connect(tmp_path / "old.sqlite3")
    old.execute("CREATE TABLE receipts (seq INTEGER, settlement TEXT, charged TEXT, reward TEXT, settled_at TEXT,"
                " status TEXT)")

    class OldReader:
        db = old

    assert data.settlement_batches(OldReader()) == ([], "none")
    pointer = json.dumps({"batch_id": "b1", "leaf_index": 0, "tx_hash": TX_HASH, "chain_id": 1})
    old.executemany("INSERT INTO receipts VALUES (?, ?, ?, ?, 't', 'settled')",
                    [(1, pointer, "10", "8"), (2, pointer, "5", "0"), (3, None, "7", "0")])
    batches, source = data.settlement_batches(OldReader())
    assert source == "receipts" and len(batches) == 1
    b = batches[0]
    assert (b["batch_id"], b["receipts"], b["charged"], b["reward"], b["fee"]) == ("b1", 2, "15", "8", "7")
    assert b["receipts_root"] is None

    class Broken:
        db = old

        def batches(self, limit=50):
            raise sqlite3.OperationalError("no such table: settlement_batches")

    assert data.settlement_batches(Broken())[1] == "receipts"
    old.execute("DELETE FROM receipts")
    assert data.settlement_batches(Broken()) == ([], "none")
    old.close()


def test_settlement_empty_state(tmp_path):
    from basis.ledger.projections.projector import connect

    connect(tmp_path / "views.sqlite3").close()
    reader = ViewReader(tmp_path / "views.sqlite3")
    try:
        assert data.settlement_batches(reader)[0] == []
    finally:
        reader.close()


def test_no_batches_yet_is_rendered(world, monkeypatch):
    monkeypatch.setattr(data, "settlement_batches", lambda reader, limit=50: ([], "none"))
    r = httpx.get(world.url + "/settlement")
    assert r.status_code == 200 and "No batches yet" in r.text


def test_static_files_are_served_from_the_package(http):
    page = http.get("/receipts").text
    css = re.search(r'href="(/explorer-static/explorer\.css\?v=[0-9a-f]+)"', page).group(1)
    r = http.get(css)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/css")
    assert "max-age" in r.headers["cache-control"] and "@media (max-width" in r.text
    js = http.get("/explorer-static/verify.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"] and "BasisVerify" in js.text
    assert http.get("/explorer-static/../router.py").status_code == 404
    assert http.get("/explorer-static/nope.js").status_code == 404


def test_pages_without_a_runtime_answer_503():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from basis.explorer.router import router

    app = FastAPI()
    app.include_router(router)
    assert TestClient(app).get("/").status_code == 503


def test_router_mounts_under_a_prefix(world):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from basis.explorer.router import router

    app = FastAPI()
    app.state.runtime = world.runtime
    app.include_router(router, prefix="/explorer")
    client = TestClient(app)
    page = client.get("/explorer/receipts")
    assert page.status_code == 200
    assert f'href="/explorer/receipts/{world.order[-1]}"' in page.text
    assert 'href="/explorer-static' not in page.text and 'href="/explorer/explorer-static/explorer.css' in page.text


# -- money formatting: integer and string arithmetic only ------------------------------------------
@pytest.mark.parametrize(("units", "shown"), [
    ("0", "0"), ("1", "0.000000000000000001"), ("178000000000000", "0.000178"),
    ("1000000000000000000", "1"), ("1500000000000000000", "1.5"),
    ("1234567890123456789012345", "1,234,567.890123456789012345"),
    (10**30, "1,000,000,000,000"), ("-5", "-0.000000000000000005"), (-(10**18), "-1"), ("-0", "-0"),
    ("01", "01"), ("1.5", "1.5"), (None, "—"),
])
def test_format_basis(units, shown):
    assert format_basis(units) == shown


@given(st.integers(min_value=0, max_value=10**40))
def test_format_basis_round_trips_exactly(n):
    shown = format_basis(str(n)).replace(",", "")
    whole, _, frac = shown.partition(".")
    assert int(whole) * 10**18 + int((frac or "0").ljust(18, "0")) == n


@pytest.mark.parametrize(("bps", "shown"), [(10000, "1x"), (5000, "0.5x"), (30000, "3x"), (12345, "1.2345x"),
                                            (1, "0.0001x"), (0, "0x")])
def test_format_multiplier(bps, shown):
    assert format_multiplier(bps) == shown
