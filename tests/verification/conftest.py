"""Fixtures shared by the verification tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from basis.config import Settings
from basis.gateway.runtime import GatewayOptions
from basis.ledger.service import Ledger
from basis.models import load_bindings
from basis.models.gguf_header import gguf_vocab_size
from tests.gateway.harness import Gateway
from tests.models.support import require_llama
from tests.verification.helpers import CHEAT, HONEST, POLICY, contributor_job
from tests.verification.sglang_support import MODEL, TEMPERATURE, N, sample, toy_reference


@pytest.fixture
def reference_gateway(tmp_path, monkeypatch) -> Iterator[Gateway]:
    """A gateway whose verifier pool runs the default reference scorer (llama.cpp over the
    binding's own GGUF, one thread), as `basis serve` does where the model is installed."""
    require_llama()
    monkeypatch.delenv("BASIS_VERIFIER_SCORER", raising=False)
    monkeypatch.setenv("BASIS_VERIFIER_THREADS", "1")
    gw = Gateway(tmp_path / "home", GatewayOptions(heartbeat_interval=1.0, verifier="pool"))
    try:
        yield gw
    finally:
        gw.close()


# -- the verifier's sglang tests (test_sglang_verifier.py, test_sglang_identity.py) --------------

@pytest.fixture(scope="module")
def vocab() -> int:
    return gguf_vocab_size(load_bindings()[MODEL].gguf_path)


@pytest.fixture(scope="module")
def outputs(vocab):
    """An honest worker's ids (sampled at the claimed temperature) and a cheat's (at double it)."""
    ref = toy_reference(vocab)
    return ref, sample(ref, TEMPERATURE, N, seed=1), sample(ref, 2 * TEMPERATURE, N, seed=2)


@pytest.fixture
def sglang_home(tmp_path, monkeypatch, outputs):
    """A store where the honest worker and the cheat each have one job awaiting its check."""
    for var in ("BASIS_DATABASE_URL", "BASIS_VERIFIER_SCORER", "BASIS_VERIFIER_SGLANG_URL", "BASIS_SGLANG_API_KEY",
                "BASIS_VERIFIER_SGLANG_TOP_K", "BASIS_VERIFIER_SGLANG_MODEL_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BASIS_HOME", str(tmp_path / "home"))
    settings = Settings(home=tmp_path / "home")
    _, honest, cheat = outputs
    ledger = Ledger(settings, verification=POLICY)
    account_id = ledger.open_account("alice")
    ledger.grant("alice", 10**18)
    jobs = {"honest": contributor_job(ledger, account_id, HONEST, output_ids=honest)[0],
            "cheat": contributor_job(ledger, account_id, CHEAT, output_ids=cheat)[0]}
    assert all(ledger.get(j).awaiting_verdict for j in jobs.values())
    ledger.close()
    return settings, jobs
