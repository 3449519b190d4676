"""A worker whose gateway was serving a moment ago (a gateway restart) knocks every couple of
seconds, not with the 30 s back-off meant for a gateway that never welcomed it (issue #15: the
restarted gateway listened after ~11 s under load, its worker came back 3 to 16 s later)."""

from __future__ import annotations

import asyncio

from eth_account import Account

from basis.engines.instant import InstantEngine
from basis.worker import Worker, client, make_offers
from tests.worker.test_network import MODEL


def _waits(bindings, binding, monkeypatch, outcomes: list) -> list[float]:
    """The back-off waits of a worker whose connections end as ``outcomes`` say (True: served and
    ended; "lost": welcomed, then lost; an exception: refused), with no network and no sleeping."""
    worker = Worker(gateway_url="ws://127.0.0.1:9/v1/workers/connect", private_key=Account.create().key.hex(),
                    engine=InstantEngine(binding), offers=make_offers(bindings, [MODEL], 1),
                    backoff_initial=0.5, backoff_max=30.0)
    left = list(outcomes)

    async def run_once() -> bool:
        outcome = left.pop(0)
        if not left:
            worker.stop()
        if outcome == "lost":  # welcomed, then the gateway died under it (what a SIGKILL looks like)
            worker.sessions += 1
            raise ConnectionResetError("the gateway is gone")
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    waits: list[float] = []

    async def no_wait(awaitable, timeout):
        awaitable.close()
        waits.append(timeout)
        raise TimeoutError

    monkeypatch.setattr(worker, "run_once", run_once)
    monkeypatch.setattr(client.asyncio, "wait_for", no_wait)
    monkeypatch.setattr(client.random, "random", lambda: 1.0)  # the longest jitter
    asyncio.run(worker.run())
    return waits


def test_after_serving_the_worker_reconnects_within_seconds(bindings, binding, monkeypatch):
    for first in (True, "lost"):
        waits = _waits(bindings, binding, monkeypatch, [OSError("refused")] * 3 + [first] + [OSError("refused")] * 12)
        assert waits[3] == 0.5 * 1.5  # back-off starts over after a session
        assert max(waits[3:]) <= client.RESTART_BACKOFF_MAX_S * 1.5, (first, waits)


def test_a_gateway_that_never_welcomed_gets_the_full_back_off(bindings, binding, monkeypatch):
    waits = _waits(bindings, binding, monkeypatch, [OSError("refused")] * 12)
    assert max(waits) == 30.0 * 1.5, waits
