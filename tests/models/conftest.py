import pytest

from tests.models.support import default_bindings


@pytest.fixture(scope="session")
def bindings():
    return default_bindings()


@pytest.fixture(scope="session")
def binding(bindings):
    return bindings["basis-default"]
