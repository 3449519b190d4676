"""Fixtures shared by the verification tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from basis.gateway.runtime import GatewayOptions
from tests.gateway.harness import Gateway
from tests.models.support import require_llama


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
