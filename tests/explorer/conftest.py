"""One real ledger with a handful of receipts, its projections, and the explorer served by uvicorn."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from basis.config import Settings
from basis.ledger.jobs import Job
from basis.ledger.projections import Projector
from basis.ledger.service import Ledger
from tests.explorer.runtime import LiveServer, StandInRuntime, build_app
from tests.ledger.helpers import WORKER, run_job

IDLE_WORKER = "0x" + "cd" * 20
TX_HASH = "0x" + "7a" * 32
CHAIN_ID = 31337
VAULT = "0x" + "0a" * 20
DISTRIBUTOR = "0x" + "0d" * 20


def settle(ledger: Ledger, job_ids: list[str]) -> dict[str, Any]:
    """Settle receipts the way the settlement service records it (no chain needed for the ledger side);
    while that service is absent, mark the jobs settled directly so the receipts still carry pointers."""
    try:
        from basis.settlement.batches import confirm_batch, propose_batch, record_submitted
    except ImportError:
        batch_id = "0x" + "ba" * 32

        def mark(uow) -> None:
            for index, job_id in enumerate(job_ids):
                uow.find(Job, uuid.UUID(job_id)).mark_settled(batch_id=batch_id, leaf_index=index, tx_hash=TX_HASH,
                                                             chain_id=CHAIN_ID)

        ledger.run(mark)
        return {"batch_id": batch_id, "tx_hash": TX_HASH, "from_view": False}
    batch_id = ledger.run(propose_batch(CHAIN_ID, VAULT, DISTRIBUTOR, job_ids))
    ledger.run(record_submitted(batch_id, TX_HASH, 0))
    from basis.ledger.export import head_at

    anchor = head_at(ledger.store, ledger.store.recorder.max_notification_id())
    assert ledger.run(confirm_batch(batch_id, TX_HASH, block=12, gas_used=210_000,
                                    anchor=(anchor.position, anchor.head_hex)))
    return {"batch_id": batch_id, "tx_hash": TX_HASH, "from_view": True, "anchor": (anchor.position, anchor.head_hex)}


@dataclass
class World:
    settings: Settings
    ledger: Ledger
    runtime: StandInRuntime
    server: LiveServer
    receipts: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> receipt
    order: list[str] = field(default_factory=list)  # job ids, oldest first
    batch: dict[str, Any] = field(default_factory=dict)  # the settled batch: batch_id, tx_hash, from_view

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Iterator[World]:
    settings = Settings(home=tmp_path_factory.mktemp("explorer") / "basis-home", database_url=None)
    ledger = Ledger(settings)
    account_id = ledger.open_account("alice")
    ledger.grant("alice", 1000 * 10**18)
    ledger.run(ledger.register_worker(WORKER, ["basis-default", "basis-small"], "basis-worker/test"))
    ledger.run(ledger.register_worker(IDLE_WORKER, ["basis-large"], "basis-worker/test"))
    receipts: dict[str, dict[str, Any]] = {}
    order = []
    for label, kwargs in [
        ("first", {"output_tokens": 42}),
        ("settled", {"output_tokens": 7, "prompt_tokens": 3}),
        ("gateway", {"served_by": "gateway", "output_tokens": 12}),
        ("small", {"model": "basis-small", "output_tokens": 100}),
        ("cancelled", {"outcome": "cancelled", "output_tokens": 5}),
        ("large", {"model": "basis-large", "output_tokens": 300, "prompt_tokens": 1000, "max_output_tokens": 1000}),
        ("latest", {"output_tokens": 1}),
    ]:
        job_id, receipt = run_job(ledger, account_id, **kwargs)
        receipts[label] = receipt
        order.append(str(job_id))

    batch = settle(ledger, [receipts["settled"]["core"]["job_id"], receipts["first"]["core"]["job_id"]])
    projector = Projector(ledger.store, settings.views_path)
    projector.catch_up()
    projector.db.close()

    runtime = StandInRuntime(ledger, settings.views_path, online={WORKER})
    server = LiveServer(build_app(runtime)).start()
    try:
        yield World(settings, ledger, runtime, server, receipts, order, batch)
    finally:
        server.stop()
        runtime.close()
        ledger.close()


CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,900")


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def browser(tmp_path_factory) -> Iterator[Any]:
    import os

    chromium = _find("chromium", "chromium-browser", "google-chrome")
    driver_path = _find("chromedriver")
    missing = [n for n, p in (("chromium", chromium), ("chromedriver", driver_path)) if p is None]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        reason = f"browser tests need {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
