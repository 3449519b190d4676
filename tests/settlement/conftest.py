from __future__ import annotations

import pytest
from web3 import Web3

from basis.chain.deploy import deploy
from basis.ledger.projections import Projector, ViewReader
from basis.ledger.service import Ledger
from basis.settlement.chain import Chain

TOKENS = 10**18


class Env:
    """A fresh deployment (deployer = treasury = key 0, operator = key 1 = the ledger's signing key),
    a real SQLite ledger and its views."""

    def __init__(self, anvil, w3, settings):
        self.anvil, self.w3, self.settings = anvil, w3, settings
        settings.ensure_home()
        settings.operator_key_path.write_text(anvil.keys[1] + "\n")
        self.operator_key = anvil.keys[1]
        self.manifest_path = settings.home / "deployment.json"
        self.deployment = deploy(w3, anvil.keys[0], operator=Web3.to_checksum_address(anvil.addresses[1]),
                                 manifest_path=self.manifest_path, mint_to_deployer=1_000_000 * TOKENS)
        self.manifest = self.deployment.manifest
        self.chain = Chain(w3, self.manifest)
        self.c = self.chain.contracts
        self.deployer = self.c.sender(anvil.keys[0])
        self.operator = self.c.sender(anvil.keys[1])
        self.ledger = Ledger(settings)
        self._readers: list[ViewReader] = []

    def reopen(self) -> None:
        """Simulate a process restart: a new Ledger on the same files."""
        self.ledger.close()
        self.ledger = Ledger(self.settings)

    def catch_up(self) -> None:
        p = Projector(self.ledger.store, self.settings.views_path)
        p.catch_up()
        p.stop()

    def reader(self) -> ViewReader:
        self.catch_up()
        r = ViewReader(self.settings.views_path)
        self._readers.append(r)
        return r

    def close(self) -> None:
        for r in self._readers:
            r.close()
        self.ledger.close()


@pytest.fixture
def env(anvil, w3, settings):
    e = Env(anvil, w3, settings)
    yield e
    e.close()
