from __future__ import annotations

import pytest

from tests.gateway.harness import Gateway


def _llama_available() -> str | None:
    try:
        import llama_cpp  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the machine
        return f"llama-cpp-python not installed ({exc})"
    return None


@pytest.fixture
def gateway(tmp_path):
    gw = Gateway(tmp_path / "home")
    yield gw
    gw.close()


@pytest.fixture(scope="module")
def llama_gateway(tmp_path_factory):
    reason = _llama_available()
    if reason:
        pytest.skip(reason)
    gw = Gateway(tmp_path_factory.mktemp("llama") / "home")
    gw.start_worker(engine="llama-cpp", capacity=2)
    yield gw
    gw.close()
