"""The verifier's sglang servers must serve the binding's model (basis.verifier.sglang_identity):
checked before any job is claimed, by ``basis verifier run --sglang-url`` and by the gateway's pool
(``BASIS_VERIFIER_SGLANG_URL``) at start-up. Against the sglang protocol double on loopback, whose
token texts come from llama.cpp's pieces of the packaged GGUFs (an implementation independent of
the GGUF decoding under test), with a real ledger."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid

import pytest
from typer.testing import CliRunner

from basis.cli.main import app
from basis.gateway.runtime import GatewayOptions, GatewayRuntime
from basis.ledger.service import Ledger
from basis.models import load_bindings
from basis.models.gguf_header import gguf_tokenizer
from basis.verifier.sglang import SGLangOptionError, SGLangScorers
from basis.verifier.sglang_identity import ModelIdentity, ModelIdentityError, token_text
from tests.engines.sglang_double import Behaviour, build_app
from tests.gateway.harness import REPO
from tests.models.support import require_llama
from tests.verification.sglang_support import (
    MODEL,
    MODEL_PATH,
    closed_port_url,
    gguf_texts,
    serve_in_thread,
    toy_reference,
)
from tests.verification.test_cli import head

runner = CliRunner()
GEMMA = "basis-large"  # Gemma 3 270M (base): another tokenizer than SmolLM2's


def llama_texts(model: str):
    """What sglang's Hugging Face tokenizer answers for one id, from llama.cpp: its piece as text."""
    require_llama()
    binding = load_bindings()[model]
    return lambda i: binding.token_bytes(i).decode("utf-8", "replace")


def test_the_gguf_token_texts_are_llama_cpp_s_pieces():
    """The probe's expected texts (read from the GGUF header, no llama.cpp) are what llama.cpp
    decodes, for both tokenizer types packaged (byte-level BPE and SentencePiece)."""
    require_llama()
    for model in (MODEL, GEMMA):
        binding = load_bindings()[model]
        tokenizer = gguf_tokenizer(binding.gguf_path)
        identity = ModelIdentity.of(model, binding, binding.gguf_path)
        assert len(identity.probe) >= 16
        ids = [i for i, _ in identity.probe] + [i for i in range(0, len(tokenizer.tokens), 97)
                                                if tokenizer.types[i] == 1]
        for i in ids:
            want = binding.token_bytes(i).decode("utf-8", "replace")
            assert token_text(tokenizer.model, tokenizer.tokens[i]) == want, (model, i)


@pytest.mark.parametrize("model, model_path, accepted", [
    (MODEL, MODEL_PATH, True),  # the packaged pairings
    (GEMMA, "google/gemma-3-270m", True),
    (MODEL, "/srv/models/SmolLM2-135M-Instruct/", True),  # a local folder of that name
    (GEMMA, "/root/.cache/huggingface/hub/models--google--gemma-3-270m/snapshots/0123abc", True),
    (MODEL, "/srv/models/smollm2-135m-instruct-q4_1.gguf", True),
    (MODEL, "HuggingFaceTB/SmolLM2-135M", False),  # the base model: the same tokenizer, other weights
    (MODEL, "HuggingFaceTB/SmolLM2-360M-Instruct", False),
    (GEMMA, "google/gemma-3-270m-it", False),  # the instruction-tuned sibling of the base binding
    (GEMMA, "/srv/models/latest", False),  # a folder that names no model: the operator pins it
])
def test_the_served_model_path_must_name_the_bindings_model(model, model_path, accepted):
    binding = load_bindings()[model]
    identity = ModelIdentity.of(model, binding, binding.gguf_path)
    if accepted:
        assert identity.check_name(model_path).startswith("its name matches")
    else:
        with pytest.raises(ModelIdentityError, match="--sglang-model-path"):
            identity.check_name(model_path)
        pinned = ModelIdentity.of(model, binding, binding.gguf_path, pinned_path=model_path)
        assert "pinned by the operator" in pinned.check_name(model_path + "/")
        with pytest.raises(ModelIdentityError, match="as pinned"):
            pinned.check_name(MODEL_PATH if model == GEMMA else "google/gemma-3-270m")


def test_a_gemma_binding_passes_against_sglang_serving_gemma():
    """The other packaged pairing, end to end over HTTP (SentencePiece texts, 262,144 ids)."""
    texts = llama_texts(GEMMA)
    bindings = load_bindings()
    double = build_app([], eos_id=1, reference=toy_reference(bindings[GEMMA].n_vocab),
                       behaviour=Behaviour(model_path="google/gemma-3-270m"), token_texts=texts)
    with serve_in_thread(double) as url:
        scorers = SGLangScorers({GEMMA: url}, bindings, lambda m: None)
        notes = scorers.check_blocking()
        # the SmolLM2 binding against it: named by the pin, refused by the tokenizer probe
        smol = SGLangScorers({MODEL: url}, bindings, lambda m: None, model_paths={MODEL: "google/gemma-3-270m"})
        with pytest.raises(SGLangOptionError, match="does not use 'basis-default''s tokenizer"):
            smol.check_blocking()
    assert notes == [f"{GEMMA}: sglang at {url} serves 'google/gemma-3-270m' (its name matches 'gemma-3-270m'; "
                     f"{len(scorers.identities[GEMMA].probe)} of {len(scorers.identities[GEMMA].probe)} probe "
                     f"tokens decode as in {bindings[GEMMA].gguf_path})"]
    probe = next(r for r in double.state.requests if r.get("return_text_in_logprobs"))
    assert probe["logprob_start_len"] == 0 and probe["sampling_params"]["max_new_tokens"] == 0


CASES = {
    # (model_path the server reports, whose tokenizer it decodes with, extra CLI args): exit code, message
    "right model": ((MODEL_PATH, MODEL, []), 0, "its name matches 'SmolLM2-135M-Instruct'"),
    "another tokenizer": ((MODEL_PATH, GEMMA, []), 1, "does not use 'basis-default''s tokenizer"),
    "another tokenizer, pinned": (("google/gemma-3-270m", GEMMA, ["--sglang-model-path",
                                                                  f"{MODEL}=google/gemma-3-270m"]),
                                  1, "does not use 'basis-default''s tokenizer"),
    "base model": (("HuggingFaceTB/SmolLM2-135M", MODEL, []), 1,
                   "serves 'HuggingFaceTB/SmolLM2-135M', which is not 'basis-default''s model by name"),
    "base model, pinned": (("HuggingFaceTB/SmolLM2-135M", MODEL, ["--sglang-model-path",
                                                                   f"{MODEL}=HuggingFaceTB/SmolLM2-135M"]),
                           0, "model_path pinned by the operator, its name not checked"),
    "pinned another path": (("HuggingFaceTB/SmolLM2-135M", MODEL, ["--sglang-model-path", f"{MODEL}=/srv/smol"]),
                            1, "not '/srv/smol' as pinned"),
    "no tokenizer": ((MODEL_PATH, None, []), 1, "answered the tokenizer probe with 500"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_verifier_run_checks_which_model_sglang_serves_before_claiming_jobs(sglang_home, outputs, vocab, case):
    (model_path, tokenizer, args), code, message = CASES[case]
    settings, jobs = sglang_home
    ref, _, _ = outputs
    texts = llama_texts(tokenizer) if tokenizer == GEMMA else gguf_texts() if tokenizer else None
    double = build_app([], eos_id=2, reference=ref, vocab_size=vocab, behaviour=Behaviour(model_path=model_path),
                       token_texts=texts)
    before = head(settings)
    with serve_in_thread(double) as url:
        result = runner.invoke(app, ["verifier", "run", "--once", "--sglang-url", f"{MODEL}={url}", *args])
    assert result.exit_code == code and message in result.output, result.output
    assert "Traceback" not in result.output
    scored = [r for r in double.state.requests if r.get("top_logprobs_num")]
    ledger = Ledger(settings)
    try:
        pending = [ledger.get(uuid.UUID(str(j))).awaiting_verdict for j in jobs.values()]
    finally:
        ledger.close()
    if code == 0:
        assert len(scored) == 2 and pending == [False, False]
    else:  # refused before any job was claimed: nothing scored, nothing recorded
        assert scored == [] and head(settings) == before and pending == [True, True]


@pytest.mark.parametrize("value, message", [
    ("HuggingFaceTB/SmolLM2-135M", "give MODEL=PATH"),
    ("basis-large=google/gemma-3-270m", "'basis-large' is not scored with sglang here"),
])
def test_bad_model_path_pins_are_clear_errors(sglang_home, value, message):
    settings, _ = sglang_home
    before = head(settings)
    result = runner.invoke(app, ["verifier", "run", "--once", "--sglang-url", f"{MODEL}={closed_port_url()}",
                                 "--sglang-model-path", value])
    assert result.exit_code == 2 and message in result.output, result.output
    assert head(settings) == before


def serve_gateway(settings, url_value: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BASIS_HOME": str(settings.home), "BASIS_VERIFIER_SGLANG_URL": url_value,
           "COLUMNS": "400"}  # the error panel on one line
    return subprocess.run([sys.executable, "-m", "basis.cli.main", "serve", "--host", "127.0.0.1", "--port", "0"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("served", ["unreachable", "base model", "another tokenizer"])
def test_basis_serve_refuses_an_sglang_server_it_cannot_use(sglang_home, outputs, vocab, served):
    """The gateway's own verifier asks its sglang servers at start-up, as `basis verifier run` does,
    and refuses to start (exit 2, like a malformed BASIS_VERIFIER_SGLANG_URL) rather than let its
    pool score honest workers against the wrong model."""
    settings, _ = sglang_home
    ref, _, _ = outputs
    before = head(settings)
    if served == "unreachable":
        proc = serve_gateway(settings, f"{MODEL}={closed_port_url()}")
        message = "did not answer"
    else:
        model_path, texts = (("HuggingFaceTB/SmolLM2-135M", gguf_texts()) if served == "base model"
                             else (MODEL_PATH, llama_texts(GEMMA)))
        double = build_app([], eos_id=2, reference=ref, vocab_size=vocab,
                           behaviour=Behaviour(model_path=model_path), token_texts=texts)
        with serve_in_thread(double) as url:
            proc = serve_gateway(settings, f"{MODEL}={url}")
        message = "which is not 'basis-default''s model by name" if served == "base model" else \
            "does not use 'basis-default''s tokenizer"
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert head(settings) == before


def test_a_gateway_refused_at_start_up_holds_nothing(sglang_home, outputs, vocab, monkeypatch):
    """GatewayRuntime raises (a ValueError: `basis serve` and `basis up` print it), and releases its
    node lock and ledger: the same node starts once the operator pins the server's model."""
    settings, _ = sglang_home
    ref, _, _ = outputs
    double = build_app([], eos_id=2, reference=ref, vocab_size=vocab,
                       behaviour=Behaviour(model_path="HuggingFaceTB/SmolLM2-135M"), token_texts=gguf_texts())
    with serve_in_thread(double) as url:
        monkeypatch.setenv("BASIS_VERIFIER_SGLANG_URL", f"{MODEL}={url}")
        with pytest.raises(ValueError, match="not 'basis-default''s model by name"):
            GatewayRuntime(settings, GatewayOptions(verifier="pool", ledger_writer="thread"))
        monkeypatch.setenv("BASIS_VERIFIER_SGLANG_MODEL_PATH", f"{MODEL}=HuggingFaceTB/SmolLM2-135M")
        runtime = GatewayRuntime(settings, GatewayOptions(verifier="pool", ledger_writer="thread"))
    try:
        assert runtime.verification_status()["models"] and runtime.verifier_thread is not None
    finally:
        runtime.ledger.close()
        runtime.node_lock.release()


def test_a_server_that_takes_the_connection_but_never_answers_does_not_hold_start_up():
    """A socket that listens but never accepts (the kernel completes the handshake): the check gives up
    after its deadline (60 s at start-up; 1 s here) with the server named, rather than hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        scorers = SGLangScorers({MODEL: url}, load_bindings(), lambda m: None)
        with pytest.raises(SGLangOptionError, match=rf"sglang at {url}:? did not (answer|finish)"):
            scorers.check_blocking(deadline=1.0)
    finally:
        listener.close()
