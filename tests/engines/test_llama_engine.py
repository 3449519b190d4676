"""LlamaCppEngine generates real tokens with the packaged GGUF behind basis-default (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import asyncio

import pytest

from basis.engines import Engine, EngineError, GenerateRequest
from basis.engines.instant import InstantEngine
from basis.engines.llama_cpp import LlamaCppEngine
from basis.models import UTF8Matcher

pytestmark = pytest.mark.llama


@pytest.fixture(scope="module")
def engine(binding):
    e = LlamaCppEngine(binding, n_ctx=1024)
    e.warm_up()
    return e


@pytest.fixture(scope="module")
def prompt(binding):
    return binding.apply_chat_template([{"role": "user", "content": "Écris une phrase en français: "}])


async def collect(engine, req):
    steps = [s async for s in engine.generate(req)]
    return steps


def check(binding, steps, max_tokens):
    assert steps and steps[-1].final and all(not s.final for s in steps[:-1])
    assert steps[-1].ids == []
    ids = [i for s in steps for i in s.ids]
    text = "".join(s.text for s in steps)
    assert not set(ids) & binding.eos_token_ids
    assert len(ids) <= max_tokens
    if steps[-1].finish_reason == "length":
        assert len(ids) == max_tokens
    assert binding.detokenize(ids).decode("utf-8", "replace") == text
    m = UTF8Matcher()
    accepted = sum(m.feed(binding.token_pieces(s.ids), s.text) for s in steps[:-1])
    accepted += m.finish(steps[-1].text)
    assert accepted == len(ids)
    return ids, text


def test_generates_real_tokens_whose_ids_detokenize_to_the_text(engine, binding, prompt):
    assert isinstance(engine, Engine) and engine.models == ("basis-default",)
    steps = asyncio.run(collect(engine, GenerateRequest(prompt_ids=prompt, max_tokens=12, temperature=0.8,
                                                        seed=3, model="basis-default")))
    ids, text = check(binding, steps, 12)
    assert ids and text
    assert steps[-1].completion_tokens == len(ids) and steps[-1].prompt_tokens == len(prompt)


def test_same_seed_same_tokens(engine, binding, prompt):
    req = GenerateRequest(prompt_ids=prompt, max_tokens=6, temperature=1.0, top_p=0.9, seed=42)
    a = asyncio.run(collect(engine, req))
    b = asyncio.run(collect(engine, req))
    assert [s.ids for s in a] == [s.ids for s in b]


def test_generation_does_not_block_the_event_loop_and_cancels(engine, binding, prompt):
    async def scenario():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        t = asyncio.create_task(ticker())
        gen = engine.generate(GenerateRequest(prompt_ids=prompt, max_tokens=500, temperature=0.8))
        n = 0
        async for step in gen:
            n += len(step.ids)
            if n >= 3:
                break
        await gen.aclose()  # cancel
        t.cancel()
        # the engine is free again right away: a new short generation completes
        steps = await collect(engine, GenerateRequest(prompt_ids=prompt, max_tokens=2, temperature=0.0))
        return ticks, steps

    ticks, steps = asyncio.run(scenario())
    assert ticks > 10
    check(binding, steps, 2)


def test_bad_requests_raise_engine_error(engine, binding):
    with pytest.raises(EngineError):
        asyncio.run(collect(engine, GenerateRequest(prompt_ids=[], max_tokens=2)))
    with pytest.raises(EngineError):
        asyncio.run(collect(engine, GenerateRequest(prompt_ids=[binding.n_vocab + 5], max_tokens=2)))
    with pytest.raises(EngineError):
        asyncio.run(collect(engine, GenerateRequest(prompt_ids=[2] * 2000, max_tokens=2)))
    with pytest.raises(EngineError):
        asyncio.run(collect(engine, GenerateRequest(prompt_ids=[2], max_tokens=2, model="other")))


def test_instant_engine_is_consistent(binding):
    e = InstantEngine(binding)
    steps = asyncio.run(collect(e, GenerateRequest(prompt_ids=[2], max_tokens=300)))
    ids, text = check(binding, steps, 300)
    assert len(ids) == 300 and "🙂" in text
