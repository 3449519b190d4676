"""Withdrawals prove control of the money, never of an inference key (issue #17 item 9, DESIGN 1.5).

Theft attempts against ``POST /v1/withdrawals`` on a real anvil with the real vault: each is refused
with a clear 4xx in OpenAI's error shape, and nothing is reserved.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from basis.chain.vouchers import Withdrawal
from basis.domain import account_id as onchain
from basis.ledger.settlement import AccountOwners, account_owners_id
from basis.settlement.chain import from_hex
from basis.settlement.deposits import ChainIndexer
from tests.settlement.conftest import TOKENS
from tests.settlement.helpers import app_for, withdrawal_request

pytestmark = pytest.mark.chain


@pytest.fixture
def world(env, anvil):
    c = env.c
    alice_wallet, mallory_wallet = c.sender(anvil.keys[2]), c.sender(anvil.keys[3])
    alice, alice_key = env.ledger.create_api_key("alice")
    mallory, mallory_key = env.ledger.create_api_key("mallory")
    for wallet, account in ((alice_wallet, alice), (mallory_wallet, mallory)):
        c.mint(env.deployer, wallet.address, 10 * TOKENS)
        c.deposit(wallet, 10 * TOKENS, onchain.to_bytes32(account))
    ChainIndexer(env.ledger, env.w3, env.manifest).sync()
    return {"client": TestClient(app_for(env)), "alice": alice, "alice_key": alice_key, "mallory": mallory,
            "mallory_key": mallory_key, "alice_wallet": alice_wallet, "alice_signer": anvil.keys[2],
            "mallory_wallet": mallory_wallet, "mallory_signer": anvil.keys[3], "stranger": anvil.addresses[5]}


def _untouched(env, account) -> None:
    acc = env.ledger.get(account)
    assert acc.withdrawable == 10 * TOKENS and acc.vouchers == {} and acc.reserved == 0


def _refused(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code and err["message"]


def test_the_indexer_binds_each_depositor_to_its_account(env, world):
    owners = env.ledger.get(account_owners_id(env.chain.chain_id, env.chain.vault, str(world["alice"])))
    assert isinstance(owners, AccountOwners)
    assert list(owners.depositors) == [world["alice_wallet"].address.lower()]


def test_a_bearer_key_alone_never_withdraws(env, world):
    client, alice = world["client"], world["alice"]
    r = client.post("/v1/withdrawals", headers={"authorization": f"Bearer {world['alice_key']}"},
                    json={"recipient": world["alice_wallet"].address, "amount": str(TOKENS)})
    _refused(r, 401, "signature_required")
    assert "API key alone never withdraws" in r.json()["error"]["message"]
    _untouched(env, alice)


def test_a_foreign_recipient_is_refused(env, world):
    body = withdrawal_request(env, world["alice_signer"], world["alice"], recipient=world["stranger"],
                              amount=TOKENS, nonce=1)
    r = world["client"].post("/v1/withdrawals", headers={"authorization": f"Bearer {world['alice_key']}"}, json=body)
    _refused(r, 403, "recipient_not_a_depositor")
    _untouched(env, world["alice"])


def test_a_signature_by_another_accounts_key_is_refused(env, world):
    client, alice = world["client"], world["alice"]
    # mallory's depositor signs a request for alice's account, to itself
    body = withdrawal_request(env, world["mallory_signer"], alice, recipient=world["mallory_wallet"].address,
                              amount=TOKENS, nonce=1)
    _refused(client.post("/v1/withdrawals", json=body), 403, "signer_not_a_depositor")
    # ... or to alice's wallet: still not alice's depositor signing
    body = withdrawal_request(env, world["mallory_signer"], alice, recipient=world["alice_wallet"].address,
                              amount=TOKENS, nonce=2)
    _refused(client.post("/v1/withdrawals", json=body), 403, "signer_not_a_depositor")
    # mallory's own signed request re-labelled as alice's: the signature no longer matches its signer
    body = withdrawal_request(env, world["mallory_signer"], world["mallory"], recipient=world["mallory_wallet"].address,
                              amount=TOKENS, nonce=3)
    _refused(client.post("/v1/withdrawals", json=body | {"account": str(alice)}), 403, "signer_not_a_depositor")
    # mallory's key naming alice's account
    _refused(client.post("/v1/withdrawals", headers={"authorization": f"Bearer {world['mallory_key']}"},
                         json=body | {"account": str(alice)}), 403, "account_mismatch")
    _untouched(env, alice)
    _untouched(env, world["mallory"])


def test_a_replayed_or_altered_or_expired_request_is_refused(env, world, anvil):
    client, alice, wallet = world["client"], world["alice"], world["alice_wallet"]
    body = withdrawal_request(env, world["alice_signer"], alice, recipient=wallet.address, amount=TOKENS, nonce=7)
    _refused(client.post("/v1/withdrawals", json=body | {"amount": str(2 * TOKENS)}), 403, "signer_not_a_depositor")
    _refused(client.post("/v1/withdrawals", json=body | {"signature": "0x1234"}), 400, "invalid_signature")
    _untouched(env, alice)

    ok = client.post("/v1/withdrawals", json=body)
    assert ok.status_code == 200, ok.text
    v = ok.json()
    assert v["requested_by"] == wallet.address and v["recipient"] == wallet.address and int(v["amount"]) == TOKENS
    replay = client.post("/v1/withdrawals", json=body)
    _refused(replay, 409, "request_replayed")
    assert replay.headers.get("x-should-retry") == "false"
    acc = env.ledger.get(alice)
    assert acc.withdrawable == 9 * TOKENS and list(acc.vouchers) == [v["nonce"]]

    expired = withdrawal_request(env, world["alice_signer"], alice, recipient=wallet.address, amount=TOKENS, nonce=8,
                                 expiry=int(env.w3.eth.get_block("latest")["timestamp"]) - 1)
    _refused(client.post("/v1/withdrawals", json=expired), 400, "request_expired")
    for nonce in (None, "-1", "1" * 5000, str(2**256), "01", "\u0661"):
        _refused(client.post("/v1/withdrawals", json=body | {"nonce": nonce}), 400, "invalid_nonce")
    for bad in ({"recipient": "0x12"}, {"account": "not-a-uuid"}, {"signature": "0xzz\ud800"}, {"expiry": "soon"},
                {"amount": "0"}, {"ttl": 10**30}, {"recipient": "\ud800"}):
        raw = json.dumps(body | bad)  # ASCII escapes: a lone surrogate travels as \ud800
        r = client.post("/v1/withdrawals", content=raw, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500 and set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text
    assert env.ledger.get(alice).withdrawable == 9 * TOKENS

    # the one honoured request is a voucher the vault pays, to the depositor
    voucher = Withdrawal(account=from_hex(v["account"]), recipient=v["recipient"], amount=int(v["amount"]),
                         nonce=int(v["nonce"]), expiry=v["expiry"])
    before = env.c.balance_of(wallet.address)
    env.c.withdraw(wallet, voucher, from_hex(v["signature"]))
    assert env.c.balance_of(wallet.address) == before + TOKENS
