"""Worker <-> gateway over a real uvicorn server on loopback (real hub, real worker, real engine)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from eth_account import Account
from websockets.asyncio.client import connect

from basis.engines.instant import InstantEngine
from basis.engines.llama_cpp import LlamaCppEngine
from basis.gateway.workers import (
    NoWorkerAvailable,
    WorkerFailed,
    WorkerFailedBeforeFirstToken,
    WorkerHub,
)
from basis.gateway.workers.jobs import job_features
from basis.models import UTF8Matcher
from basis.protocol import (
    Challenge,
    Done,
    Hello,
    Job,
    ModelOffer,
    Reject,
    Tokens,
    Welcome,
    challenge_text,
    dump,
    parse_gateway_message,
    sign_challenge,
)
from basis.worker import Worker, WorkerRejected, make_offers
from tests.worker.harness import FailingEngine, StallEngine, make_hub, serve_hub, until

pytestmark = pytest.mark.llama
MODEL = "basis-default"


def hashes(bindings):
    return {m: b.binding_hash for m, b in bindings.items()}


def job(prompt_ids, max_tokens=8, **kw) -> Job:
    return Job(job_id=str(uuid.uuid4()), model=MODEL, prompt_ids=prompt_ids, max_tokens=max_tokens, **kw)


@contextlib.asynccontextmanager
async def running(worker: Worker):
    task = asyncio.create_task(worker.run())
    try:
        await until(lambda: worker.connected.is_set() or task.done())
        if task.done():
            task.result()
        yield task
    finally:
        worker.stop()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


def new_worker(url, engine, bindings, capacity=1, key=None) -> Worker:
    return Worker(
        gateway_url=url,
        private_key=key or Account.create().key.hex(),
        engine=engine,
        offers=make_offers(bindings, [MODEL], capacity),
        backoff_initial=0.05,
        backoff_max=0.2,
    )


def test_worker_serves_a_job_end_to_end_with_llama(bindings, binding):
    online, offline = [], []
    hub = make_hub(hashes(bindings), on_worker_online=lambda a, m: online.append((a, m)),
                   on_worker_offline=offline.append)
    engine = LlamaCppEngine(binding, n_ctx=1024)
    prompt = binding.apply_chat_template([{"role": "user", "content": "Count: one, two,"}])

    async def scenario():
        async with serve_hub(hub) as url:
            worker = new_worker(url, engine, bindings, capacity=2)
            async with running(worker):
                assert online == [(worker.address, {MODEL: 2})]
                assert hub.live_models() == {MODEL: {"workers": 1, "capacity": 2, "active": 0}}
                m, ids, text, accepted = UTF8Matcher(), [], "", 0
                async with hub.dispatch(job(prompt, max_tokens=8, temperature=0.0)) as stream:
                    assert stream.worker_address == worker.address
                    async for msg in stream:
                        if isinstance(msg, Tokens):
                            assert not set(msg.ids) & binding.eos_token_ids
                            ids += msg.ids
                            text += msg.text
                            accepted += m.feed(binding.token_pieces(msg.ids), msg.text)
                        else:
                            assert isinstance(msg, Done)
                            accepted += m.finish(msg.text)
                            text += msg.text
                            done = msg
                assert done.finish_reason in ("stop", "length")
                assert 0 < len(ids) <= 8 and accepted == len(ids)
                assert binding.detokenize(ids).decode("utf-8", "replace") == text
                assert done.usage.completion_tokens == len(ids)
                assert hub.live_models()[MODEL]["active"] == 0
            await until(lambda: offline == [worker.address])
            assert hub.workers() == []

    asyncio.run(scenario())


def test_cancel_stops_the_worker_and_frees_the_engine(bindings, binding):
    hub = make_hub(hashes(bindings))
    engine = LlamaCppEngine(binding, n_ctx=1024)
    prompt = binding.apply_chat_template([{"role": "user", "content": "Tell me a long story."}])

    async def scenario():
        async with serve_hub(hub) as url:
            worker = new_worker(url, engine, bindings, capacity=1)
            async with running(worker):
                got = 0
                async with hub.dispatch(job(prompt, max_tokens=900, temperature=0.7)) as stream:
                    async for msg in stream:
                        got += len(msg.ids) if isinstance(msg, Tokens) else 0
                        if got >= 2:
                            break  # leaving the context sends cancel
                await until(lambda: worker.active_jobs == 0)
                # the slot and the engine are free again: a short job completes
                async with hub.dispatch(job(prompt, max_tokens=3)) as stream:
                    msgs = [m async for m in stream]
                assert isinstance(msgs[-1], Done)

    asyncio.run(scenario())


def test_heartbeat_loss_removes_the_worker(bindings):
    offline = []
    hub = make_hub(hashes(bindings), heartbeat_interval=0.2, on_worker_offline=offline.append)
    key = Account.create()

    async def scenario():
        async with serve_hub(hub) as url, connect(url) as ws:
            ch = parse_gateway_message(await ws.recv())
            text = challenge_text(gateway_address=ch.gateway_address, chain_id=ch.chain_id,
                                  nonce=ch.nonce, expires_at=ch.expires_at)
            offers = [ModelOffer(model=MODEL, binding_hash=hub.binding_hashes[MODEL], capacity=1)]
            await ws.send(dump(Hello(protocol_version=1, worker_address=key.address,
                                     signature=sign_challenge(key.key, text), models=offers)))
            assert isinstance(parse_gateway_message(await ws.recv()), Welcome)
            assert [w.address for w in hub.workers()] == [key.address]
            # ... and then this worker never sends a heartbeat
            await until(lambda: not hub.workers())
            assert offline == [key.address]
            with pytest.raises(NoWorkerAvailable):
                async with hub.dispatch(job([2, 3])):
                    pass

    asyncio.run(scenario())


async def _handshake(url, key, hub: WorkerHub, *, offers=None, mutate=None, version=1, before_hello=None):
    async with connect(url) as ws:
        ch = parse_gateway_message(await ws.recv())
        assert isinstance(ch, Challenge)
        fields = dict(gateway_address=ch.gateway_address, chain_id=ch.chain_id, nonce=ch.nonce,
                      expires_at=ch.expires_at)
        fields.update(mutate or {})
        sig = sign_challenge(key.key, challenge_text(**fields))
        offers = offers or [ModelOffer(model=MODEL, binding_hash=hub.binding_hashes[MODEL], capacity=1)]
        if before_hello:
            before_hello()
        await ws.send(dump(Hello(protocol_version=version, worker_address=key.address, signature=sig,
                                 models=offers)))
        return parse_gateway_message(await ws.recv())


def test_authentication_rejections(bindings):
    now = [1_800_000_000.0]
    hub = make_hub(hashes(bindings), clock=lambda: now[0], challenge_ttl=30)
    key = Account.create()
    good = hub.binding_hashes[MODEL]

    def later():
        now[0] += 31

    async def scenario():
        async with serve_hub(hub) as url:
            ok = await _handshake(url, key, hub)
            assert isinstance(ok, Welcome) and ok.worker_address == key.address
            cases = {
                "bad_signature": dict(mutate={"nonce": "0x00"}),
                "wrong gateway": dict(mutate={"gateway_address": "0x" + "11" * 20}),
                "wrong chain": dict(mutate={"chain_id": 1}),
                "expired": dict(before_hello=later),
                "binding_mismatch": dict(offers=[ModelOffer(model=MODEL, binding_hash="0x" + "00" * 32,
                                                            capacity=1)]),
                "unknown_model": dict(offers=[ModelOffer(model="nope", binding_hash=good, capacity=1)]),
                "unsupported_version": dict(version=99),
            }
            codes = {}
            for name, kw in cases.items():
                reply = await _handshake(url, key, hub, **kw)
                assert isinstance(reply, Reject), name
                codes[name] = reply.code
            assert codes == {
                "bad_signature": "bad_signature",
                "wrong gateway": "bad_signature",
                "wrong chain": "bad_signature",
                "expired": "expired",
                "binding_mismatch": "binding_mismatch",
                "unknown_model": "unknown_model",
                "unsupported_version": "unsupported_version",
            }
            # a signature by another key for the claimed address
            other = Account.create()

            async def impostor():
                async with connect(url) as ws:
                    ch = parse_gateway_message(await ws.recv())
                    text = challenge_text(gateway_address=ch.gateway_address, chain_id=ch.chain_id,
                                          nonce=ch.nonce, expires_at=ch.expires_at)
                    await ws.send(dump(Hello(protocol_version=1, worker_address=key.address,
                                             signature=sign_challenge(other.key, text),
                                             models=[ModelOffer(model=MODEL, binding_hash=good,
                                                                capacity=1)])))
                    return parse_gateway_message(await ws.recv())

            assert (await impostor()).code == "bad_signature"
            # the real worker client treats a binding mismatch as fatal
            bad = Worker(gateway_url=url, private_key=key.key.hex(), engine=StallEngine([MODEL]),
                         offers=[ModelOffer(model=MODEL, binding_hash="0x" + "22" * 32, capacity=1)])
            with pytest.raises(WorkerRejected) as info:
                await bad.run()
            assert info.value.code == "binding_mismatch"

    asyncio.run(scenario())


def test_worker_killed_before_first_token_then_retry_elsewhere(bindings, binding):
    hub = make_hub(hashes(bindings))

    async def scenario():
        async with serve_hub(hub) as url:
            stall = StallEngine([MODEL])
            w1 = new_worker(url, stall, bindings)
            w2 = new_worker(url, InstantEngine(binding), bindings)
            t1 = asyncio.create_task(w1.run())
            await until(w1.connected.is_set)
            j = job([2, 105], max_tokens=5)
            with pytest.raises(WorkerFailedBeforeFirstToken) as info:
                async with hub.dispatch(j) as stream:
                    await stall.started.wait()
                    t1.cancel()  # the worker process dies
                    async for _ in stream:
                        pass
            assert info.value.worker_address == w1.address and info.value.tokens_seen == 0
            with pytest.raises(NoWorkerAvailable):
                async with hub.dispatch(j, exclude={w1.address}):
                    pass
            async with running(w2):
                async with hub.dispatch(j, exclude={info.value.worker_address}) as stream:
                    msgs = [m async for m in stream]
                assert stream.worker_address == w2.address
                assert isinstance(msgs[-1], Done) and msgs[-1].finish_reason == "length"
                assert sum(len(m.ids) for m in msgs if isinstance(m, Tokens)) == 5

    asyncio.run(scenario())


def test_worker_lost_after_tokens_is_a_distinct_failure(bindings, binding):
    hub = make_hub(hashes(bindings))
    ids = binding.tokenize("Hello")

    async def scenario():
        async with serve_hub(hub) as url:
            stall = StallEngine([MODEL], first=ids, text="Hello")
            w = new_worker(url, stall, bindings)
            t = asyncio.create_task(w.run())
            await until(w.connected.is_set)
            with pytest.raises(WorkerFailed) as info:
                async with hub.dispatch(job([2, 105])) as stream:
                    async for msg in stream:
                        assert msg.ids == ids
                        t.cancel()
            assert not isinstance(info.value, WorkerFailedBeforeFirstToken)
            assert info.value.tokens_seen == len(ids)

    asyncio.run(scenario())


def test_engine_error_is_reported_before_first_token(bindings):
    hub = make_hub(hashes(bindings))

    async def scenario():
        async with serve_hub(hub) as url, running(new_worker(url, FailingEngine([MODEL]), bindings)):
            with pytest.raises(WorkerFailedBeforeFirstToken, match="boom"):
                async with hub.dispatch(job([2])) as stream:
                    async for _ in stream:
                        pass

    asyncio.run(scenario())


def test_routing_capacity_and_least_loaded(bindings):
    hub = make_hub(hashes(bindings))

    async def scenario():
        async with serve_hub(hub) as url:
            with pytest.raises(NoWorkerAvailable):
                async with hub.dispatch(job([2])):
                    pass
            a, b = StallEngine([MODEL]), StallEngine([MODEL])
            wa, wb = new_worker(url, a, bindings, capacity=2), new_worker(url, b, bindings, capacity=2)
            async with running(wa), running(wb), contextlib.AsyncExitStack() as stack:
                used = []
                for _ in range(4):
                    s = await stack.enter_async_context(hub.dispatch(job([2])))
                    used.append(s.worker_address)
                assert sorted(used) == sorted([wa.address, wa.address, wb.address, wb.address])
                assert used[0] != used[1]  # least-loaded spreads the first two
                assert hub.live_models()[MODEL] == {"workers": 2, "capacity": 4, "active": 4}
                await until(lambda: a.calls == 2 and b.calls == 2)
                with pytest.raises(NoWorkerAvailable):
                    async with hub.dispatch(job([2])):
                        pass
            await until(lambda: a.cancelled == 2 and b.cancelled == 2)

    asyncio.run(scenario())


def test_worker_reconnects_when_the_gateway_comes_back(bindings, binding):
    async def scenario():
        hub1 = make_hub(hashes(bindings))
        async with serve_hub(hub1) as url:
            port = int(url.split(":")[2].split("/")[0])
            w = new_worker(url, InstantEngine(binding), bindings)
            task = asyncio.create_task(w.run())
            await until(w.connected.is_set)
        await until(lambda: not w.connected.is_set())
        hub2 = make_hub(hashes(bindings))
        async with serve_hub(hub2, port=port):
            await until(lambda: bool(hub2.workers()))
            # At least one new session: while the first gateway shuts down the worker may get one
            # more short-lived session with it before it is gone (timing, not behaviour). The hub
            # lists the worker when it sends `welcome`; the worker counts the session on reading it.
            await until(lambda: w.sessions >= 2)
            async with hub2.dispatch(job([2], max_tokens=2)) as stream:
                assert isinstance([m async for m in stream][-1], Done)
            w.stop()
            await task

    asyncio.run(scenario())


def test_logprobs_jobs_go_only_to_protocol_3_connections(bindings):
    """A version-2 hello that lists "logprobs" among its features is not taken at its word: only a
    version-3 connection is routed a job asking for logprobs."""
    hub = make_hub(hashes(bindings))

    async def hold(url, version: int, features: list[str]):
        key = Account.create()
        ws = await connect(url)
        ch = parse_gateway_message(await ws.recv())
        text = challenge_text(gateway_address=ch.gateway_address, chain_id=ch.chain_id, nonce=ch.nonce,
                              expires_at=ch.expires_at, protocol_version=version)
        await ws.send(dump(Hello(protocol_version=version, worker_address=key.address,
                                 signature=sign_challenge(key.key, text), features=features,
                                 models=[ModelOffer(model=MODEL, binding_hash=hub.binding_hashes[MODEL],
                                                    capacity=1)])))
        assert isinstance(parse_gateway_message(await ws.recv()), Welcome)
        return ws, key.address.lower()

    async def scenario():
        async with serve_hub(hub) as url:
            v2, _ = await hold(url, 2, ["logprobs"])
            asking = job([2], logprobs=True, top_logprobs=2)
            with pytest.raises(NoWorkerAvailable):
                hub.pick(MODEL, requires=job_features(asking))
            assert hub.pick(MODEL, requires=job_features(job([2]))) is not None  # everything else still goes there
            v3, address = await hold(url, 3, [])
            assert hub.pick(MODEL, requires=job_features(asking)).address.lower() == address
            assert "logprobs" in hub._conns[address].features
            for ws in (v2, v3):
                await ws.close()

    asyncio.run(scenario())
