"""Protocol v2 (DESIGN 1.7): the gateway's hub sends each receipt/verdict to the worker, which
verifies it, appends it to its own crash-safe store and only then acknowledges it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import pytest
from eth_account import Account

from basis.domain.pricing import PriceTerms, split_charge
from basis.domain.receipt import build_core, receipt_hash
from basis.domain.signing import ReceiptSigner
from basis.engines.instant import InstantEngine
from basis.gateway.workers.receipts import notify_verdict, receipt_frame
from basis.protocol import ReceiptFrame, VerdictFrame, parse_gateway_message
from basis.worker import Worker, make_offers
from basis.worker.store import ReceiptRejected, ReceiptStore, StoreCorrupt, read_records
from tests.worker.harness import GATEWAY_KEY, make_hub, serve_hub, until

MODEL = "basis-default"


def signed_receipt(worker: str, *, key=GATEWAY_KEY, output_tokens: int = 5) -> dict:
    terms = PriceTerms(prompt_weight=10, output_weight=20, multiplier_bps=10_000, contributor_reward_bps=7_000)
    core = build_core(job_id=uuid.uuid4(), model=MODEL, served_by="contributor", worker=worker.lower(),
                      outcome="completed", prompt_tokens=3, output_tokens=output_tokens, terms=terms)
    digest = receipt_hash(core)
    return {"core": core, "hash": digest, "signature": ReceiptSigner(key.key.hex()).sign_hash(digest)}


def test_store_verifies_signer_hash_worker_and_arithmetic(tmp_path):
    me = Account.create().address
    store = ReceiptStore(tmp_path, me, gateway_signer=GATEWAY_KEY.address)
    r = signed_receipt(me)
    assert store.add_receipt(**r) is True
    assert store.add_receipt(**r) is False  # idempotent: a resend is acknowledged, not duplicated
    foreign = signed_receipt(me, key=Account.create())
    with pytest.raises(ReceiptRejected, match="not the gateway's published signer"):
        store.add_receipt(**foreign)
    with pytest.raises(ReceiptRejected, match="not the hash of its core"):
        store.add_receipt(core=r["core"], hash="0x" + "00" * 32, signature=r["signature"])
    other = signed_receipt(Account.create().address)
    with pytest.raises(ReceiptRejected, match="not " + me.lower()):
        store.add_receipt(**other)
    bad = dict(r["core"], reward=str(int(r["core"]["reward"]) + 1))
    with pytest.raises(ReceiptRejected, match="reward"):
        store.add_receipt(core=bad, hash=receipt_hash(bad), signature=r["signature"])
    with pytest.raises(ReceiptRejected, match="does not hold"):
        store.add_verdict(job_id=r["core"]["job_id"], hash="0x" + "11" * 32, verdict="failed")
    assert store.add_verdict(job_id=r["core"]["job_id"], hash=r["hash"], verdict="failed", reward_forfeited=True)
    store.close()
    assert [x["kind"] for x in read_records(store.path)] == ["receipt", "verdict"]
    again = ReceiptStore(tmp_path, me, gateway_signer=GATEWAY_KEY.address)
    assert list(again.receipts) == [r["hash"]] and again.verdicts[r["hash"]]["verdict"] == "failed"
    assert split_charge(int(r["core"]["charged"]), 7_000).reward == int(r["core"]["reward"])


def test_truncated_tail_is_set_aside_and_reported_never_dropped(tmp_path, caplog):
    me = Account.create().address
    store = ReceiptStore(tmp_path, me, gateway_signer=GATEWAY_KEY.address)
    kept = [signed_receipt(me) for _ in range(3)]
    for r in kept:
        store.add_receipt(**r)
    store.close()
    whole = store.path.read_bytes()
    # A write cut short by a crash: half of a fourth record, no newline.
    extra = signed_receipt(me)
    line = json.dumps({"kind": "receipt", "hash": extra["hash"]}).encode()
    store.path.write_bytes(whole + line[: len(line) // 2])
    with caplog.at_level("ERROR"):
        reopened = ReceiptStore(tmp_path, me, gateway_signer=GATEWAY_KEY.address)
    assert list(reopened.receipts) == [r["hash"] for r in kept]
    assert len(reopened.opened.damaged) == 1
    assert reopened.opened.damaged[0].read_bytes() == line[: len(line) // 2]  # preserved byte for byte
    assert "damaged tail" in caplog.text
    assert store.path.read_bytes() == whole
    reopened.add_receipt(**extra)  # appending continues after the last whole record
    reopened.close()
    assert len(read_records(store.path)) == 4

    # Damage followed by whole records is not a crash artefact: refused, file untouched.
    data = store.path.read_bytes()
    lines = data.split(b"\n")
    lines[1] = lines[1][:-3] + b"xyz"
    store.path.write_bytes(b"\n".join(lines))
    with pytest.raises(StoreCorrupt):
        ReceiptStore(tmp_path, me, gateway_signer=GATEWAY_KEY.address)
    assert store.path.read_bytes() == b"\n".join(lines)


def _worker(url, bindings, store) -> Worker:
    return Worker(gateway_url=url, private_key=store_key[store.worker], engine=InstantEngine(bindings),
                  offers=make_offers(bindings, [MODEL], 1), backoff_initial=0.05, backoff_max=0.2, store=store)


store_key: dict[str, str] = {}


@contextlib.asynccontextmanager
async def running(worker: Worker):
    task = asyncio.create_task(worker.run())
    try:
        await until(lambda: worker.connected.is_set() or task.done())
        yield task
    finally:
        worker.stop()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


def test_v2_worker_receives_stores_and_acknowledges_receipts_and_verdicts(tmp_path, bindings, caplog):
    hub = make_hub({m: b.binding_hash for m, b in bindings.items()})
    key = Account.create()
    store = ReceiptStore(tmp_path, key.address, gateway_signer=GATEWAY_KEY.address)
    store_key[store.worker] = key.key.hex()
    r1, r2 = signed_receipt(key.address), signed_receipt(key.address)

    async def scenario():
        # Queued while the worker is away: delivered on connect.
        hub.notify(key.address, receipt_frame(r1))
        async with serve_hub(hub) as url:
            worker = _worker(url, bindings, store)
            async with running(worker):
                conn = hub._conns[key.address.lower()]
                assert conn.protocol_version == 2
                await until(lambda: not hub.outbox.pending(key.address))
                assert r1["hash"] in store.receipts
                # While connected: sent at once; a verdict follows its receipt.
                hub.notify(key.address, receipt_frame(r2))
                assert notify_verdict(hub, r2, {"verdict": "failed", "method": "teacher-forced-v1", "tokens": 5,
                                                "statistic": {"z": 9}, "ids_sha256": "0x" + "ab" * 32})
                await until(lambda: not hub.outbox.pending(key.address))
                assert store.verdicts[r2["hash"]]["reward_forfeited"] is True
                # Bad input: a malformed receipt frame and a foreign signature. Loud, nothing lost.
                with caplog.at_level("ERROR"):
                    await conn.send(json.dumps({"type": "receipt", "job_id": "x", "core": "nope"}))
                    foreign = signed_receipt(key.address, key=Account.create())
                    hub.notify(key.address, receipt_frame(foreign))
                    await until(lambda: hub.outbox.refused)
                assert "malformed receipt frame" in caplog.text and "REJECTED receipt" in caplog.text
                assert hub.outbox.refused[0][2].startswith("signed by")
                assert worker.inbox.malformed_frames == ["receipt"]
                assert set(store.receipts) == {r1["hash"], r2["hash"]}
                # The worker keeps serving jobs.
                from basis.protocol import Done, Job

                job = Job(job_id=str(uuid.uuid4()), model=MODEL, prompt_ids=[1, 2], max_tokens=3)
                async with hub.dispatch(job) as stream:
                    msgs = [m async for m in stream]
                assert isinstance(msgs[-1], Done)

    asyncio.run(scenario())
    store.close()


def test_v1_worker_still_served_and_gets_no_receipt_frames(bindings):
    hub = make_hub({m: b.binding_hash for m, b in bindings.items()})
    key = Account.create()
    hub.notify(key.address, receipt_frame(signed_receipt(key.address)))

    async def scenario():
        async with serve_hub(hub) as url:
            worker = Worker(gateway_url=url, private_key=key.key.hex(), engine=InstantEngine(bindings),
                            offers=make_offers(bindings, [MODEL], 1), backoff_initial=0.05)  # no store: v1
            async with running(worker):
                assert hub._conns[key.address.lower()].protocol_version == 1
                assert hub.outbox.pending(key.address) == []  # a v1 worker cannot take them

    asyncio.run(scenario())


def test_frames_parse_and_round_trip():
    r = signed_receipt(Account.create().address)
    f = receipt_frame(r)
    assert parse_gateway_message(f.model_dump_json()) == f
    v = VerdictFrame(job_id=r["core"]["job_id"], hash=r["hash"], verdict="passed")
    assert parse_gateway_message(v.model_dump_json()) == v
    assert isinstance(f, ReceiptFrame)


def test_worker_package_never_imports_ledger_or_gateway():
    """DESIGN 2: contributors run only the worker (its store and audit included)."""
    import os
    import subprocess
    import sys

    code = ("import sys, basis.worker, basis.worker.audit, basis.worker.store, basis.worker.inbox, "
            "basis.worker.network, basis.cli.worker; "
            "print([m for m in sys.modules if m.startswith(('basis.ledger', 'basis.gateway', 'basis.settlement'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ))
    assert out.stdout.strip() == "[]"
