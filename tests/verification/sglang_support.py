"""Helpers of the verifier's sglang tests (test_sglang_verifier.py, test_sglang_identity.py): a toy
reference model over a binding's vocabulary, the sglang protocol double serving a binding, served
on loopback from a thread of its own. The fixtures built on them are in conftest.py."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import uvicorn

from basis.models import load_bindings
from basis.models.gguf_header import gguf_tokenizer
from basis.verifier.sglang_identity import token_text
from tests.engines.sglang_double import Behaviour, build_app

MODEL = "basis-default"  # SmolLM2-135M-Instruct's vocabulary
MODEL_PATH = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what sglang serving that binding reports
PROMPT = [1, 2, 3, 4, 5]  # contributor_job's prompt ids
TEMPERATURE = 0.7  # contributor_job's claimed temperature (top_p 1.0)
N = 64  # output ids a job (its max_tokens)


def toy_reference(vocab: int):
    """Log-probabilities over ``vocab`` ids as a function of the prefix: 24 likely candidates (logits
    0..6) over a floor of -20 for every other id, so the top-64 hold all but ~1e-7 of the mass."""

    def logprobs(prefix: list[int]) -> np.ndarray:
        rng = np.random.default_rng([int(t) for t in prefix[-3:]] + [len(prefix)])
        logits = np.full(vocab, -20.0) + rng.standard_normal(vocab) * 0.3
        logits[rng.choice(np.arange(100, 2000), size=24, replace=False)] = rng.uniform(0.0, 6.0, size=24)
        return logits - np.logaddexp.reduce(logits)

    return logprobs


def sample(reference, temperature: float, n: int, seed: int) -> list[int]:
    """n ids sampled from the toy reference at ``temperature``, teacher-forced on its own output."""
    rng = np.random.default_rng(seed)
    out: list[int] = []
    for _ in range(n):
        lp = reference(PROMPT + out) / temperature
        p = np.exp(lp - np.logaddexp.reduce(lp))
        out.append(int(rng.choice(len(p), p=p)))
    return out


def gguf_texts(model: str = MODEL):
    """sglang's text of one id, for a double serving ``model``'s binding: the GGUF token decoded
    (tests/verification/test_sglang_identity.py checks it against llama.cpp's pieces)."""
    tokenizer = gguf_tokenizer(load_bindings()[model].gguf_path)
    return lambda i: token_text(tokenizer.model, tokenizer.tokens[i])


def binding_double(ref, vocab: int, model_path: str = MODEL_PATH, texts=None):
    """The double serving the binding's model (its model_path and tokenizer) with ``ref``'s logprobs."""
    return build_app([], eos_id=2, reference=ref, vocab_size=vocab, behaviour=Behaviour(model_path=model_path),
                     token_texts=texts or gguf_texts())


@contextmanager
def serve_in_thread(fastapi_app) -> Iterator[str]:
    """The double on a loopback port, served from its own thread (the CLI runs its own loop)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(fastapi_app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "the sglang double did not start"
            threading.Event().wait(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()



def closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}"
