"""POST /v1/completions on a live gateway + instant worker: shapes, one job and receipt per prompt,
counting without a chat template, streaming, idempotency, and bad input charging nothing."""

from __future__ import annotations

import json

import httpx
import pytest

from basis.domain.pricing import compute_charged, worst_case_charge
from basis.engines.instant import CANNED_TEXT
from basis.gateway.completions.schemas import MAX_JOBS
from tests.gateway.harness import Gateway
from tests.gateway.test_api import assert_error

MODEL = "basis-default"


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    g = Gateway(tmp_path_factory.mktemp("completions") / "home")
    g.start_worker()
    yield g
    g.close()


def post(gw, key, body, headers=None, raw=None):
    h = {"Authorization": f"Bearer {key}", **(headers or {})}
    if raw is not None:
        return httpx.post(f"{gw.base}/v1/completions", content=raw, headers={**h, "content-type": "application/json"},
                          timeout=60)
    return httpx.post(f"{gw.base}/v1/completions", json=body, headers=h, timeout=60)


def receipt(gw, ref):
    gw.views_caught_up()
    r = httpx.get(gw.base + ref["url"])
    assert r.status_code == 200 and r.json()["hash"] == ref["hash"]
    return r.json()["core"]


def canned(gw, n):
    """The first ``n`` tokens of the instant worker's canned completion, as text."""
    binding = gw.runtime.bindings[MODEL]
    return binding.detokenize(binding.tokenize(CANNED_TEXT)[:n]).decode()


def sse(resp):
    return [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: {")]


def streamed(resp):
    """{index: text}, {index: finish_reason} of a streamed response."""
    text: dict[int, str] = {}
    finish = {}
    for chunk in sse(resp):
        for choice in chunk["choices"]:
            text[choice["index"]] = text.get(choice["index"], "") + choice["text"]
            if choice["finish_reason"]:
                finish[choice["index"]] = choice["finish_reason"]
    return text, finish


def test_a_text_prompt_is_one_job_counted_without_a_chat_template(gw):
    account_id, key = gw.account("cmpl-one", 10**21)
    binding = gw.runtime.bindings[MODEL]
    prompt = "Once upon a time"
    r = post(gw, key, {"model": MODEL, "prompt": prompt, "max_tokens": 7, "temperature": 0.5, "top_p": 0.9,
                       "seed": 3, "user": "ignored"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["id"] == f"cmpl-{r.headers['basis-job-id']}"
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None and choice["finish_reason"] == "length"
    assert choice["text"] == canned(gw, 7)
    n_prompt = len(binding.prompt_ids(prompt))
    assert n_prompt == len(binding.tokenize(prompt)) < len(binding.apply_chat_template([{"role": "user",
                                                                                         "content": prompt}]))
    assert body["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": 7, "total_tokens": n_prompt + 7}
    core = receipt(gw, body["receipt"])
    assert body["receipt"] == choice["receipt"] and r.headers["basis-receipt-hash"] == body["receipt"]["hash"]
    terms = gw.runtime.pricing.terms_for(MODEL)
    charged = compute_charged(n_prompt, 7, terms.prompt_weight, terms.output_weight, terms.multiplier_bps)
    assert (core["prompt_tokens"], core["output_tokens"], core["charged"]) == (n_prompt, 7, str(charged))
    assert core["model"] == MODEL and core["served_by"] == "contributor"
    assert gw.ledger.get(account_id).spent == charged


def test_prompt_lists_and_n_are_one_job_and_receipt_each(gw):
    account_id, key = gw.account("cmpl-many", 10**21)
    r = post(gw, key, {"model": MODEL, "prompt": ["Hello", "Bonjour 🙂"], "n": 2, "max_tokens": 3, "seed": 1,
                       "echo": True})
    assert r.status_code == 200, r.text
    body = r.json()
    job_ids = r.headers["basis-job-id"].split(",")
    assert len(job_ids) == len(set(job_ids)) == 4 and body["id"] == f"cmpl-{job_ids[0]}" and "receipt" not in body
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert [c["text"] for c in body["choices"]] == ["Hello" + canned(gw, 3)] * 2 + ["Bonjour 🙂" + canned(gw, 3)] * 2
    cores = [receipt(gw, c["receipt"]) for c in body["choices"]]
    assert [c["receipt"]["url"].rsplit("/", 1)[1] for c in body["choices"]] == job_ids
    assert sum(c["prompt_tokens"] for c in cores) == body["usage"]["prompt_tokens"]
    assert all(c["output_tokens"] == 3 for c in cores) and body["usage"]["completion_tokens"] == 12
    assert gw.ledger.get(account_id).spent == sum(int(c["charged"]) for c in cores)


def test_token_id_prompts_are_taken_as_given(gw):
    _, key = gw.account("cmpl-ids", 10**21)
    binding = gw.runtime.bindings[MODEL]
    ids = binding.tokenize("The sky is")
    single = post(gw, key, {"model": MODEL, "prompt": ids, "max_tokens": 2, "echo": True})
    assert single.status_code == 200, single.text
    assert single.json()["usage"]["prompt_tokens"] == len(ids)
    assert single.json()["choices"][0]["text"].startswith("The sky is")
    many = post(gw, key, {"model": MODEL, "prompt": [ids, ids[:1]], "max_tokens": 2})
    assert many.status_code == 200 and many.json()["usage"]["prompt_tokens"] == len(ids) + 1


def test_stop_sequences_end_the_job_and_are_not_returned(gw):
    _, key = gw.account("cmpl-stop", 10**21)
    r = post(gw, key, {"model": MODEL, "prompt": "x", "max_tokens": 40, "stop": ["compatible"]})
    (choice,) = r.json()["choices"]
    assert choice["text"] == canned(gw, 40).split("compatible")[0] and choice["finish_reason"] == "stop"
    # the token completing the stop sequence is counted (DESIGN 1.3)
    assert receipt(gw, choice["receipt"])["output_tokens"] == r.json()["usage"]["completion_tokens"] > 5


def test_streaming_text_completion_chunks_with_usage(gw):
    _, key = gw.account("cmpl-stream", 10**21)
    r = post(gw, key, {"model": MODEL, "prompt": ["a", "b"], "max_tokens": 5, "stream": True, "echo": True,
                       "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.text.rstrip().endswith("data: [DONE]")
    chunks = sse(r)
    assert {c["object"] for c in chunks} == {"text_completion"} and len({c["id"] for c in chunks}) == 1
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 10
    assert all(len(c["choices"]) == 1 for c in chunks[:-1])
    text, finish = streamed(r)
    assert text == {0: "a" + canned(gw, 5), 1: "b" + canned(gw, 5)} and finish == {0: "length", 1: "length"}


def test_idempotency_key_replays_every_job_and_charges_once(gw):
    account_id, key = gw.account("cmpl-idem", 10**21)
    body = {"model": MODEL, "prompt": ["one", "two"], "max_tokens": 4}
    first = post(gw, key, body, {"Idempotency-Key": "k1"})
    spent = gw.ledger.get(account_id).spent
    again = post(gw, key, body, {"Idempotency-Key": "k1"})
    assert again.status_code == 200 and again.json() == first.json()
    assert again.headers["basis-idempotent-replay"] == "true"
    assert gw.ledger.get(account_id).spent == spent
    first_stream = post(gw, key, {**body, "stream": True}, {"Idempotency-Key": "k2"})
    replayed = post(gw, key, {**body, "stream": True}, {"Idempotency-Key": "k2"})
    assert replayed.headers["basis-idempotent-replay"] == "true"
    assert streamed(replayed) == streamed(first_stream) and streamed(first_stream)[0][1]
    assert_error(post(gw, key, {**body, "max_tokens": 5}, {"Idempotency-Key": "k1"}), 409, "idempotency_conflict")


def test_bad_input_gets_openai_errors_and_charges_nothing(gw):
    account_id, key = gw.account("cmpl-bad", 10**21)
    ok = {"model": MODEL, "prompt": "hi", "max_tokens": 4}
    n_vocab = gw.runtime.bindings[MODEL].n_vocab
    cases = [
        ({**ok, "logprobs": 1, "echo": True}, "unsupported_parameter", "echo"),
        ({**ok, "logprobs": 6}, "invalid_value", "logprobs"),
        ({**ok, "suffix": "end"}, "unsupported_parameter", "suffix"),
        ({**ok, "best_of": 3}, "unsupported_parameter", "best_of"),
        ({**ok, "logit_bias": {"5": 10}}, "unsupported_parameter", "logit_bias"),
        ({**ok, "prompt": []}, "invalid_value", "prompt"),
        ({**ok, "prompt": [[]]}, "invalid_value", "prompt"),
        ({**ok, "prompt": [True, False]}, "invalid_value", "prompt"),
        ({**ok, "prompt": [1.5]}, "invalid_value", "prompt"),
        ({**ok, "prompt": {"text": "hi"}}, "invalid_value", "prompt"),
        ({**ok, "prompt": [[1], "mixed"]}, "invalid_value", "prompt"),
        ({**ok, "prompt": [n_vocab]}, "invalid_value", "prompt"),
        ({**ok, "prompt": ["fine", [-1]]}, "invalid_value", "prompt"),
        ({**ok, "prompt": ["x"] * (MAX_JOBS + 1)}, "invalid_value", "prompt"),
        ({**ok, "prompt": ["x"] * 5, "n": 4}, "invalid_value", "n"),
        ({**ok, "n": 0}, "invalid_value", "n"),
        ({**ok, "max_tokens": 0}, "invalid_value", "max_tokens"),
        ({**ok, "max_tokens": 100_000}, "invalid_value", "max_tokens"),
        ({**ok, "temperature": 3}, "invalid_value", "temperature"),
        ({**ok, "stop": ["a", "b", "c", "d", "e"]}, "invalid_value", "stop"),
        ({**ok, "prompt": "word " * 9000}, "context_length_exceeded", "prompt"),
        ({"model": MODEL}, "invalid_value", "prompt"),
    ]
    for body, code, param in cases:
        err = assert_error(post(gw, key, body), 400, code)
        assert err["param"] == param, (body, err)
    assert_error(post(gw, key, None, raw=b"[1, 2]"), 400, "invalid_json")
    assert_error(post(gw, key, None, raw=b"{nope"), 400, "invalid_json")
    assert_error(post(gw, key, {**ok, "model": "gpt-3.5-turbo-instruct"}), 404, "model_not_found")
    assert_error(post(gw, "sk-basis-wrong", ok), 401, "invalid_api_key")
    acc = gw.ledger.get(account_id)
    assert acc.spent == 0 and acc.reserved == 0


def test_insufficient_credit_for_all_prompts_runs_none(gw):
    terms = gw.runtime.pricing.terms_for(MODEL)
    one = worst_case_charge(1, 4, terms)  # "x" is one token, no BOS for this model
    account_id, key = gw.account("cmpl-poor", one * 2)
    assert_error(post(gw, key, {"model": MODEL, "prompt": ["x", "x", "x"], "max_tokens": 4}), 402,
                 "insufficient_credit")
    acc = gw.ledger.get(account_id)
    assert acc.spent == 0 and acc.reserved == 0
    assert post(gw, key, {"model": MODEL, "prompt": ["x", "x"], "max_tokens": 4}).status_code == 200


def test_client_disconnect_cancels_every_job_and_charges_what_was_relayed(gateway):
    gateway.start_worker(rogue="stall-after")  # five tokens per job, then it hangs
    account_id, key = gateway.account("cmpl-quitter", 10**21)
    with httpx.stream("POST", f"{gateway.base}/v1/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": MODEL, "prompt": ["a", "b"], "max_tokens": 20, "stream": True},
                      timeout=60) as r:
        job_ids = r.headers["basis-job-id"].split(",")
        seen: set[int] = set()
        for line in r.iter_lines():
            if line.startswith("data: {"):
                seen |= {c["index"] for c in json.loads(line[6:])["choices"] if c["text"]}
            if seen == {0, 1}:
                break
    gateway.until(lambda: gateway.ledger.get(account_id).reserved == 0, what="both jobs to end")
    gateway.views_caught_up()
    cores = [httpx.get(f"{gateway.base}/v1/receipts/{j}").json()["core"] for j in job_ids]
    assert [c["outcome"] for c in cores] == ["cancelled", "cancelled"]
    assert all(1 <= c["output_tokens"] <= 5 for c in cores)
    assert gateway.ledger.get(account_id).spent == sum(int(c["charged"]) for c in cores)
    assert gateway.runtime.hub.workers()[0].active_jobs == 0
