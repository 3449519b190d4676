"""SGLangScorer (reference scoring over sglang's prefill logprobs) against the protocol double, whose
toy reference model is also computed here independently, over the whole vocabulary."""

from __future__ import annotations

import asyncio
import math
import random

import numpy as np
import pytest

from basis.engines.scoring import LOGPROB_FLOOR, Scorer, ScoreRequest, ScoringError
from basis.engines.sglang_scoring import SGLangScorer, score_position
from tests.engines.sglang_double import Behaviour, build_app, reference_logprobs, serve

VOCAB = 40
REF = reference_logprobs(VOCAB)


def exact(prefix: list[int], token: int, temperature: float, top_p: float):
    """The claimed distribution from the full vocabulary: logits / T, top_p nucleus, renormalised."""
    lp = np.array(REF(prefix))
    rank = int((lp > lp[token]).sum())
    t, p = (1.0, 1.0) if temperature <= 0 else (temperature, top_p)
    q = np.exp(lp / t - np.logaddexp.reduce(lp / t))
    order = np.argsort(-q, kind="stable")
    cum = np.cumsum(q[order])
    keep = order[: int(np.searchsorted(cum, p) + 1)] if p < 1 else order
    qn = np.zeros_like(q)
    qn[keep] = q[keep] / q[keep].sum()
    logq = np.where(qn > 0, np.log(np.where(qn > 0, qn, 1)), -np.inf)
    nz = qn > 0
    expected = float((qn[nz] * logq[nz]).sum())
    variance = float((qn[nz] * (logq[nz] - expected) ** 2).sum())
    return max(LOGPROB_FLOOR, float(logq[token])), expected, variance, rank


def score(request: ScoreRequest, *, top_k: int, behaviour=None, api_key=None, vocab_size=VOCAB + 8):
    # sglang's vocab_size (the model config's, padded) is usually above the last real id.
    app = build_app([], eos_id=1, reference=REF, vocab_size=vocab_size, behaviour=behaviour)

    async def scenario():
        async with serve(app) as url:
            scorer = SGLangScorer(url, top_k=top_k, api_key=api_key)
            assert isinstance(scorer, Scorer)
            try:
                return await scorer.score(request)
            finally:
                await scorer.aclose()

    return asyncio.run(scenario()), app


@pytest.mark.parametrize(("temperature", "top_p"), [(0.7, 1.0), (1.0, 1.0), (1.3, 1.0), (1.0, 0.9), (0.7, 0.8)])
def test_full_top_k_matches_the_exact_claimed_distribution(temperature, top_p):
    prompt, output = [3, 17, 9], [5, 22, 0, 31, 8, 8, 14]
    got, app = score(ScoreRequest(prompt, output, temperature, top_p), top_k=VOCAB)
    assert len(got) == len(output)
    for j, ts in enumerate(got):
        want = exact(prompt + output[:j], output[j], temperature, top_p)
        assert ts.logprob == pytest.approx(want[0], abs=1e-9)
        assert ts.expected == pytest.approx(want[1], abs=1e-9)
        assert ts.variance == pytest.approx(want[2], abs=1e-9)
        assert ts.rank == want[3]
    body = app.state.requests[0]
    assert body["input_ids"] == prompt + output and body["sampling_params"]["max_new_tokens"] == 0
    assert body["return_logprob"] is True and body["logprob_start_len"] == len(prompt) - 1
    assert body["top_logprobs_num"] == VOCAB and body["return_text_in_logprobs"] is False and body["stream"] is False


def test_greedy_scores_at_temperature_one_and_ranks_decide():
    prompt = [4, 4]
    output = []
    for _ in range(6):  # the reference's own argmax path
        lp = REF(prompt + output)
        output.append(int(np.argmax(lp)))
    got, _ = score(ScoreRequest(prompt, output, 0.0, 0.5), top_k=5)
    assert [t.rank for t in got] == [0] * 6
    for j, ts in enumerate(got):
        assert ts.logprob <= 0 and ts.variance >= 0
        assert ts.logprob >= exact(prompt + output[:j], output[j], 1.0, 1.0)[0]  # top-k renormalised


def test_small_top_k_is_the_documented_approximation():
    """k < vocab: q over the top-k only (tail mass left out); a tail token keeps its exact raw logprob,
    rank reported as k, and is outside the nucleus under top_p < 1."""
    prompt, output = [7, 1], [12, 30, 2, 19, 25]
    k = 6
    got, _ = score(ScoreRequest(prompt, output, 1.0, 1.0), top_k=k)
    nucleus, _ = score(ScoreRequest(prompt, output, 1.0, 0.95), top_k=k)
    for j, ts in enumerate(got):
        prefix = prompt + output[:j]
        lp = REF(prefix)
        true_rank = sum(1 for v in lp if v > lp[output[j]])
        assert ts.rank == min(true_rank, k)
        if true_rank >= k:
            assert nucleus[j].logprob == LOGPROB_FLOOR
        # renormalising over less mass can only raise a token's log q
        assert ts.logprob >= exact(prefix, output[j], 1.0, 1.0)[0] - 1e-9


def test_z_statistic_separates_honest_samples_from_random_ids():
    rng = random.Random(11)
    prompt = [2, 9, 13]
    honest: list[int] = []
    t = 0.8
    for _ in range(120):
        lp = np.array(REF(prompt + honest)) / t
        q = np.exp(lp - np.logaddexp.reduce(lp))
        honest.append(int(rng.choices(range(VOCAB), weights=q)[0]))
    junk = [rng.randrange(VOCAB) for _ in range(120)]

    def z(output):
        got, _ = score(ScoreRequest(prompt, output, t, 1.0), top_k=VOCAB)
        obs = sum(s.logprob - s.expected for s in got)
        return obs / math.sqrt(sum(s.variance for s in got))

    assert abs(z(honest)) < 4.0
    assert z(junk) < -8.0


def test_ids_clipped_by_sglang_are_a_scoring_error():
    with pytest.raises(ScoringError, match="scored id 0 where 39 was sent"):
        score(ScoreRequest([1, 2], [5, VOCAB - 1, 6], 1.0), top_k=4, vocab_size=VOCAB)


def test_errors_and_api_key():
    beh = Behaviour.for_version("0.5.23", api_key="k")
    with pytest.raises(ScoringError, match="refused the API key"):
        score(ScoreRequest([1, 2], [3], 1.0), top_k=4, behaviour=beh)
    got, _ = score(ScoreRequest([1, 2], [3], 1.0), top_k=4, behaviour=beh, api_key="k")
    assert len(got) == 1
    got, app = score(ScoreRequest([1, 2], [], 1.0), top_k=4)
    assert got == [] and app.state.requests == []
    with pytest.raises(ScoringError, match="at least one prompt id"):
        score(ScoreRequest([], [3], 1.0), top_k=4)


def test_score_position_edge_cases():
    top = [(-0.1, 1), (-2.5, 2), (-4.0, 3)]
    assert score_position(top, -0.1, 1, 1.0, 1.0).rank == 0
    tail = score_position(top, -9.0, 7, 1.0, 1.0)  # a valid tail token under top_p = 1
    assert tail.rank == 3 and LOGPROB_FLOOR < tail.logprob < -8.0
    assert score_position(top, -9.0, 7, 1.0, 0.5).logprob == LOGPROB_FLOOR
    with pytest.raises(ScoringError):
        score_position([], -1.0, 1, 1.0, 1.0)


def test_unsupported_server_cannot_score():
    with pytest.raises(ScoringError, match=r"sglang 0\.5\.1 cannot score: the minimum is sglang 0\.5\.6"):
        score(ScoreRequest([1, 2], [3], 1.0), top_k=4, behaviour=Behaviour.for_version("0.5.1"))


def test_temperature_factors_from_the_top_k_never_exceed_the_exact_ones():
    """The temperature test's factor from the top-k alone is a lower bound of the exact one (the
    definition over the whole vocabulary, computed by the llama.cpp scorer's code in sglang's order:
    temperature, then top_p), whatever the token, and close to it when the top-k covers the mass."""
    from basis.engines.llama_scoring import position_scores

    rng = np.random.default_rng(11)
    vocab = 300
    checked = finite = 0
    for _ in range(120):
        raw = rng.standard_normal(vocab) * rng.choice([1.0, 2.5, 4.0])
        lp = raw - np.logaddexp.reduce(raw)
        order = np.argsort(-lp, kind="stable")
        temperature = float(rng.choice([0.5, 0.7, 1.0, 1.3, 2.0]))
        top_p = float(rng.choice([1.0, 0.95, 0.9, 0.7]))
        k = int(rng.choice([5, 20, 64, vocab]))
        top = [(float(lp[j]), int(j)) for j in order[:k]]
        picks = (0, 3, k // 2, min(k + 2, vocab - 1))  # the argmax, inside, mid top-k, past it; and any
        for token in {*(int(order[j]) for j in picks), int(rng.integers(vocab))}:
            exact = position_scores(lp[None, :], [token], temperature, top_p, top_p_before_temperature=False)[0]
            got = score_position(top, float(lp[token]), token, temperature, top_p, n_vocab=vocab)
            assert got.temperature_lr is not None and exact.temperature_lr is not None
            for g, x in zip(got.temperature_lr, exact.temperature_lr, strict=True):
                assert g <= x + 1e-5, (k, temperature, top_p, token, got.temperature_lr, exact.temperature_lr)
                checked += 1
                finite += math.isfinite(g)
            if k == vocab and top_p == 1.0:  # the whole distribution: the bound is the exact factor (up to the slack)
                assert got.temperature_lr == pytest.approx(exact.temperature_lr, abs=1e-2)
    assert finite > checked // 2  # mostly a real bound, not the trivial factor 0
    no_vocab = score_position([(math.log(0.5), 1), (math.log(0.3), 2)], math.log(0.5), 1, 1.0, 1.0)
    assert no_vocab.temperature_lr is not None
    assert no_vocab.temperature_lr[2] == no_vocab.temperature_lr[3] == -math.inf  # hotter: unbounded without n_vocab
    assert all(math.isfinite(x) for x in no_vocab.temperature_lr[:2])  # colder: bounded by the k-th probability
