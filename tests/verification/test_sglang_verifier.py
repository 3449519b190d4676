"""`basis verifier run --sglang-url`: the built-in GPU scorer, end to end against the sglang protocol
double (tests/engines/sglang_double.py) on loopback, with a real ledger. Its toy reference model
spans the binding's whole vocabulary (SmolLM2's 49,152 ids) and is peaked like a language model's,
so sglang's top-64 hold nearly all the mass, as they would on a real server.

The point of the built-in option: the scorer gets the binding's vocabulary size (``n_vocab``), without
which the temperature test gives the hotter alternatives factor 0 on sglang, and a worker sampling at
double the temperature passes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid

import pytest
from typer.testing import CliRunner

import basis.verifier.policy as verifier_policy
from basis.cli.main import app
from basis.engines.scoring import TEMPERATURE_RATIOS, ScoreRequest
from basis.engines.sglang_scoring import SGLangScorer
from basis.gateway.runtime import GatewayOptions, GatewayRuntime
from basis.ledger.service import Ledger
from basis.models import load_bindings
from basis.models.gguf_header import gguf_vocab_size
from basis.verification.stats import job_statistic
from tests.gateway.harness import REPO, Gateway
from tests.models.support import require_llama
from tests.verification.sglang_support import (
    MODEL,
    MODEL_PATH,
    PROMPT,
    TEMPERATURE,
    N,
    binding_double,
    closed_port_url,
    serve_in_thread,
)
from tests.verification.test_cli import head

runner = CliRunner()


@pytest.fixture
def home(sglang_home):
    return sglang_home


def test_the_vocabulary_size_is_read_from_the_gguf_header_as_llama_cpp_counts_it():
    require_llama()  # binding.n_vocab: llama.cpp's own count, loaded with the vocabulary
    for model, binding in load_bindings().items():
        assert gguf_vocab_size(binding.gguf_path) == binding.n_vocab, model


def test_verifier_run_with_sglang_scores_with_the_bindings_vocabulary(home, outputs, vocab):
    settings, jobs = home
    ref, _, cheat = outputs
    double = binding_double(ref, vocab)
    with serve_in_thread(double) as url:
        result = runner.invoke(app, ["verifier", "run", "--once", "--sglang-url", f"{MODEL}={url}"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {"verdicts": 2, "errors": 0}
        # the server was shown to serve the binding before any job was claimed
        assert f"serves '{MODEL_PATH}' (its name matches 'SmolLM2-135M-Instruct'; 32 of 32 probe tokens" \
            in result.stderr, result.stderr
        prefills = [r for r in double.state.requests if r.get("return_logprob") and r["top_logprobs_num"]]
        # the same cheat job scored the way a `--scorer` callable building SGLangScorer(url) did
        without = asyncio.run(_score_without_n_vocab(url, cheat))
    assert sorted(len(r["input_ids"]) for r in prefills) == [len(PROMPT) + N] * 2
    assert all(r["top_logprobs_num"] == 64 and r["sampling_params"]["max_new_tokens"] == 0 for r in prefills)
    ledger = Ledger(settings)
    try:
        honest_v, cheat_v = ledger.get(jobs["honest"]).verdict, ledger.get(jobs["cheat"]).verdict
    finally:
        ledger.close()
    assert honest_v["verdict"] == "passed", honest_v
    assert honest_v["statistic"]["temperature"] > honest_v["temperature_alpha"]
    # double the temperature: the hotter alternatives carry the evidence, and fail the job
    assert cheat_v["verdict"] == "failed", cheat_v
    stat = cheat_v["statistic"]
    assert stat["temperature_ratio"] > 1 and stat["temperature"] < cheat_v["temperature_alpha"]
    # without n_vocab the hotter ratios get factor 0 at every position: the same job passes that test
    assert without.temperature_ratio is not None and without.temperature_ratio < 1
    assert without.temperature == 1.0


async def _score_without_n_vocab(url: str, output_ids: list[int]):
    scorer = SGLangScorer(url)
    try:
        scores = await scorer.score(ScoreRequest(PROMPT, output_ids, TEMPERATURE, 1.0, model=MODEL))
    finally:
        await scorer.aclose()
    hotter = [j for j, s in enumerate(TEMPERATURE_RATIOS) if s > 1]
    assert all(s.temperature_lr[j] == float("-inf") for s in scores for j in hotter)  # type: ignore[index]
    return job_statistic(scores, TEMPERATURE, output_ids)


@pytest.mark.parametrize("args, message, code", [
    (["--sglang-url", "nope=http://127.0.0.1:30000"], "'nope' is not an advertised model", 2),
    (["--sglang-url", "http://127.0.0.1:30000"], "say which model this server serves", 2),
    (["--sglang-url", f"{MODEL}=ftp://127.0.0.1:30000"], "not an http(s) URL", 2),
    (["--sglang-url", f"{MODEL}=http://127.0.0.1:port"], "--sglang-url", 2),
    (["--sglang-url", f"{MODEL}=http://127.0.0.1:1", "--sglang-url", f"{MODEL}=http://127.0.0.1:2"],
     "two servers", 2),
    (["--sglang-url", f"{MODEL}=http://127.0.0.1:1", "--scorer", "tests.verification.doubles:canned"],
     "give one", 2),
    (["--sglang-url", "UNREACHABLE"], "did not answer", 1),
])
def test_bad_sglang_options_are_clear_errors_and_record_nothing(home, args, message, code):
    settings, jobs = home
    args = [a.replace("UNREACHABLE", f"{MODEL}={closed_port_url()}") for a in args]
    before = head(settings)
    result = runner.invoke(app, ["verifier", "run", "--once", *args])
    assert result.exit_code == code and message in result.output, result.output
    assert "Traceback" not in result.output
    assert head(settings) == before
    ledger = Ledger(settings)
    try:
        assert all(ledger.get(uuid.UUID(str(j))).awaiting_verdict for j in jobs.values())
    finally:
        ledger.close()


def test_the_gateways_pool_verifier_scores_with_sglang_from_the_environment(home, outputs, vocab, monkeypatch):
    """`basis serve`'s in-process verifier takes BASIS_VERIFIER_SGLANG_URL as `basis verifier run`
    takes --sglang-url: the same scorer, with the binding's vocabulary size."""
    settings, jobs = home
    ref, _, _ = outputs
    double = binding_double(ref, vocab)
    with serve_in_thread(double) as url:
        monkeypatch.setenv("BASIS_VERIFIER_SGLANG_URL", f"{MODEL}={url}")
        gw = Gateway(settings.home, GatewayOptions(heartbeat_interval=1.0, verifier="pool"))
        try:
            assert MODEL in gw.runtime.verification_status()["models"]
            gw.until(lambda: all(gw.ledger.get(j).verdict is not None for j in jobs.values()),
                     what="the pool's verdicts", timeout=120)
            honest_v, cheat_v = (gw.ledger.get(jobs[k]).verdict for k in ("honest", "cheat"))
        finally:
            gw.close()
    prefills = [r for r in double.state.requests if r.get("return_logprob") and r["top_logprobs_num"]]
    assert sorted(len(r["input_ids"]) for r in prefills) == [len(PROMPT) + N] * 2  # judged by the double
    assert honest_v["verdict"] == "passed", honest_v
    # the hotter alternatives carry the evidence only with n_vocab: the double-temperature cheat fails
    assert cheat_v["verdict"] == "failed", cheat_v


@pytest.mark.parametrize("value, message", [
    ("nope=http://127.0.0.1:30000", "BASIS_VERIFIER_SGLANG_URL nope=http://127.0.0.1:30000: 'nope' is not an "
                                    "advertised model"),
    (f"{MODEL}=ftp://127.0.0.1:30000", "not an http(s) URL"),
])
def test_basis_serve_refuses_a_bad_sglang_url_clearly(home, value, message):
    settings, _ = home
    env = {**os.environ, "BASIS_HOME": str(settings.home), "BASIS_VERIFIER_SGLANG_URL": value,
           "COLUMNS": "400"}  # the error panel on one line
    proc = subprocess.run([sys.executable, "-m", "basis.cli.main", "serve", "--host", "127.0.0.1", "--port", "0"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_without_llama_cpp_an_sglang_url_keeps_the_pool_on_for_its_models_only(home, outputs, vocab, monkeypatch):
    """policy.py's "is there a scorer to run": the URL is one, and the models it does not serve
    (nothing here scores them) are not selected for checks."""
    settings, _ = home
    ref, _, _ = outputs
    monkeypatch.setattr(verifier_policy, "can_score_locally", lambda: False)
    runtime = GatewayRuntime(settings, GatewayOptions(verifier="pool", ledger_writer="thread"))
    try:
        assert runtime.verification_status()["enabled"] is False  # no scorer at all: off, as before
    finally:
        runtime.ledger.close()
        runtime.node_lock.release()
    with serve_in_thread(binding_double(ref, vocab)) as url:  # asked at start-up
        monkeypatch.setenv("BASIS_VERIFIER_SGLANG_URL", f"{MODEL}={url}")
        runtime = GatewayRuntime(settings, GatewayOptions(verifier="pool", ledger_writer="thread"))
    try:
        status = runtime.verification_status()
        assert status["enabled"] is True and status["models"] == [MODEL], status
        assert runtime.ledger.verified_models == [MODEL] and runtime.verifier_thread is not None
    finally:
        runtime.ledger.close()
        runtime.node_lock.release()
