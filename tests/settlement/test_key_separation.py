"""The receipt-signing key and the settlement key (vault operator) can be different keys."""

from __future__ import annotations

import secrets

import pytest
from eth_account import Account
from web3 import Web3

from basis.chain.deploy import deploy
from basis.domain.signing import recover_signer
from basis.ledger.service import Ledger
from basis.settlement.batches import Settler
from basis.settlement.chain import Chain
from tests.settlement.conftest import TOKENS
from tests.settlement.helpers import run_job

pytestmark = pytest.mark.chain


def test_receipts_signed_by_one_key_settled_by_another(anvil, w3, settings, monkeypatch, tmp_path):
    settings.ensure_home()
    receipt_key = "0x" + secrets.token_hex(32)
    settings.operator_key_path.write_text(receipt_key + "\n")
    settlement_file = tmp_path / "settlement.key"
    settlement_file.write_text(anvil.keys[1] + "\n")
    assert settings.settlement_key() == receipt_key  # unset: one key for both (the default)
    monkeypatch.setenv("BASIS_SETTLEMENT_KEY_FILE", str(settlement_file))
    assert settings.settlement_key() == anvil.keys[1] != settings.operator_key()

    manifest = deploy(w3, anvil.keys[0], operator=Web3.to_checksum_address(anvil.addresses[1]),
                      manifest_path=settings.home / "deployment.json", mint_to_deployer=TOKENS).manifest
    ledger = Ledger(settings)
    try:
        ledger.grant("bob", 10**18)
        bob = ledger.open_account("bob")
        _, receipt = run_job(ledger, bob, worker="0x" + "ab" * 20)
        signer = recover_signer(receipt["hash"], receipt["signature"])
        assert signer.lower() == Account.from_key(receipt_key).address.lower()

        from basis.ledger.projections import Projector, ViewReader

        def reader():
            p = Projector(ledger.store, settings.views_path)
            p.catch_up()
            p.stop()
            return ViewReader(settings.views_path)

        result = Settler(ledger, Chain(w3, manifest), settings.settlement_key(), reader=reader).settle_once()
        assert result["status"] == "confirmed"
        tx = w3.eth.get_transaction(result["tx_hash"])
        assert tx["from"].lower() == anvil.addresses[1].lower() != signer.lower()
    finally:
        ledger.close()
