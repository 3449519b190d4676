from __future__ import annotations

import pytest

from tests.gateway.harness import Gateway
from tests.models.support import require_llama


@pytest.fixture
def gateway(tmp_path):
    gw = Gateway(tmp_path / "home")
    yield gw
    gw.close()


@pytest.fixture(scope="module")
def llama_gateway(tmp_path_factory):
    require_llama()
    gw = Gateway(tmp_path_factory.mktemp("llama") / "home")
    gw.start_worker(engine="llama-cpp", capacity=2)
    yield gw
    gw.close()
