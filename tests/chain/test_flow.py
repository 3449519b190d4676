"""Deploy -> deposit -> settle (+ roots) -> claim -> withdraw with voucher, on a real anvil."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest
from eth_account import Account
from web3 import Web3

from basis.chain.contracts import ChainRevert
from basis.chain.deploy import read_manifest
from basis.chain.vouchers import Withdrawal, recover_signer, sign_withdrawal, voucher_digest
from basis.domain import account_id
from basis.domain.merkle import receipts_tree, rewards_tree

from .conftest import TOKENS

pytestmark = pytest.mark.chain

GAS: dict[str, int] = {}


def _batch_id(n: int) -> bytes:
    return hashlib.sha256(f"batch-{n}".encode()).digest()


def _receipt_hashes(n: int, salt: str) -> list[bytes]:
    return [hashlib.sha256(f"{salt}-{i}".encode()).digest() for i in range(n)]


@pytest.fixture(scope="module")
def actors(anvil):
    return {
        "deployer": anvil.keys[0],
        "operator": anvil.keys[1],
        "alice": anvil.keys[2],
        "relayer": anvil.keys[3],
    }


@pytest.fixture(scope="module")
def workers():
    # Fresh addresses with no ETH and no tokens: the claim is sent by a relayer.
    return [Account.create(extra_entropy=f"worker{i}").address for i in range(6)]


def test_manifest(deployment, w3, anvil):
    m = read_manifest(deployment.path)
    assert m["chain_id"] == 31337
    assert m["contracts"]["token"]["stand_in"] is True
    assert m["operator"] == Web3.to_checksum_address(anvil.addresses[1])
    assert m["compiler"].startswith("0.8.28")
    for name in ("token", "vault", "distributor"):
        assert w3.eth.get_code(m["contracts"][name]["address"])
    assert m["deploy_block"] >= 1
    json.dumps(m)


def test_full_flow(basis, w3, anvil, actors, workers):
    deployer = basis.sender(actors["deployer"])
    operator = basis.sender(actors["operator"])
    alice = basis.sender(actors["alice"])
    relayer = basis.sender(actors["relayer"])
    assert basis.vault.functions.operator().call() == operator.address
    assert basis.distributor.functions.poster().call() == basis.vault.address

    basis.mint(deployer, alice.address, 1_000 * TOKENS)
    acct_uuid = uuid.UUID("6f1c1f1e-8a53-4a8e-9d2a-0b7f3f1b2c3d")
    acct = account_id.to_bytes32(acct_uuid)

    # deposit
    res = basis.deposit(alice, 500 * TOKENS, acct)
    ev = res.event("Deposited")
    assert ev.args["depositor"] == alice.address
    assert account_id.from_bytes32(ev.args["account"]) == acct_uuid
    assert ev.args["amount"] == 500 * TOKENS
    GAS["deposit"] = res.gas_used

    # batch 1: rewards from deposits (60) + a treasury top-up (10) for granted credit
    cumulative = {w: (i + 1) * 7 * TOKENS for i, w in enumerate(workers[:4])}
    to_dist = 60 * TOKENS
    top_up = sum(cumulative.values()) - to_dist
    rtree = rewards_tree(list(cumulative.items()))
    hashes = _receipt_hashes(9, "b1")
    ktree = receipts_tree(hashes)
    treasury_before = basis.balance_of(deployer.address)
    res = basis.settle(
        operator,
        batch_id=_batch_id(1),
        to_distributor=to_dist,
        to_treasury=40 * TOKENS,
        reward_top_up=top_up,
        rewards_root=rtree.root,
        receipts_root=ktree.root,
        ledger_position=100,
        ledger_head=b"\x0a" * 32,
    )
    GAS["settle"] = res.gas_used
    settled = res.event("Settled")
    assert settled.args == {
        "batchId": _batch_id(1),
        "toDistributor": to_dist,
        "toTreasury": 40 * TOKENS,
        "rewardTopUp": top_up,
    }
    posted = res.event("RootPosted")
    assert posted.args["rewardsRoot"] == rtree.root and posted.args["receiptsRoot"] == ktree.root
    assert basis.balance_of(deployer.address) == treasury_before + 40 * TOKENS - top_up
    assert basis.balance_of(basis.distributor.address) == sum(cumulative.values())

    # every receipt is provable on chain; a foreign hash is not
    for i, h in enumerate(hashes):
        assert basis.verify_receipt(_batch_id(1), h, ktree.proof(i))
    assert not basis.verify_receipt(_batch_id(1), b"\x01" * 32, ktree.proof(0))

    # first claims, sent by a relayer; funds go to the worker
    for w, amount in cumulative.items():
        res = basis.claim(relayer, worker=w, cumulative=amount, proof=rtree.proof((w, amount)))
        assert res.event("Claimed").args == {"worker": w, "amount": amount, "cumulative": amount}
        assert basis.balance_of(w) == amount
        GAS.setdefault("claim_first", res.gas_used)
        GAS["claim_first"] = max(GAS["claim_first"], res.gas_used)

    # batch 2: cumulative grows for two workers, one new worker appears
    cumulative2 = dict(cumulative)
    cumulative2[workers[0]] += 3 * TOKENS
    cumulative2[workers[1]] += 5 * TOKENS
    cumulative2[workers[4]] = 2 * TOKENS
    new_rewards = sum(cumulative2.values()) - sum(cumulative.values())
    rtree2 = rewards_tree(list(cumulative2.items()))
    ktree2 = receipts_tree(_receipt_hashes(4, "b2"))
    res = basis.settle(
        operator,
        batch_id=_batch_id(2),
        to_distributor=new_rewards,
        to_treasury=10 * TOKENS,
        reward_top_up=0,
        rewards_root=rtree2.root,
        receipts_root=ktree2.root,
        ledger_position=200,
        ledger_head=b"\x0b" * 32,
    )
    GAS["settle_no_top_up"] = res.gas_used
    res = basis.claim(
        relayer,
        worker=workers[0],
        cumulative=cumulative2[workers[0]],
        proof=rtree2.proof((workers[0], cumulative2[workers[0]])),
    )
    assert res.event("Claimed").args["amount"] == 3 * TOKENS
    GAS["claim_repeat"] = res.gas_used
    assert basis.claimed(workers[0]) == cumulative2[workers[0]]
    # a double claim pays nothing
    with pytest.raises(ChainRevert) as err:
        basis.claim(
            relayer,
            worker=workers[0],
            cumulative=cumulative2[workers[0]],
            proof=rtree2.proof((workers[0], cumulative2[workers[0]])),
        )
    assert err.value.name == "NothingToClaim"

    # withdraw unspent credit with an operator-signed voucher, submitted by a relayer
    chain_id = w3.eth.chain_id
    expiry = w3.eth.get_block("latest")["timestamp"] + 3600
    voucher = Withdrawal(account=acct, recipient=alice.address, amount=100 * TOKENS, nonce=1, expiry=expiry)
    sig = sign_withdrawal(actors["operator"], voucher, chain_id=chain_id, vault=basis.vault.address)
    assert basis.hash_withdrawal(voucher) == voucher_digest(
        voucher, chain_id=chain_id, vault=basis.vault.address
    )
    assert recover_signer(voucher, sig, chain_id=chain_id, vault=basis.vault.address) == operator.address
    before = basis.balance_of(alice.address)
    res = basis.withdraw(relayer, voucher, sig)
    assert res.event("Withdrawn").args == {
        "account": acct,
        "recipient": alice.address,
        "amount": 100 * TOKENS,
        "nonce": 1,
    }
    GAS["withdraw"] = res.gas_used
    assert basis.balance_of(alice.address) == before + 100 * TOKENS
    assert basis.nonce_used(1)

    totals = basis.vault_totals()
    assert (
        basis.balance_of(basis.vault.address) == totals["deposited"] - totals["settled"] - totals["withdrawn"]
    )
    assert totals["reward_top_up"] == top_up

    print("\nwhole-transaction gas on anvil (gasUsed):", json.dumps(GAS, indent=1))
    assert GAS["claim_repeat"] < GAS["claim_first"]


def test_attacks_revert_with_named_errors_and_move_nothing(basis, w3, anvil, actors, workers):
    operator = basis.sender(actors["operator"])
    alice = basis.sender(actors["alice"])
    relayer = basis.sender(actors["relayer"])
    vault_before = basis.balance_of(basis.vault.address)
    dist_before = basis.balance_of(basis.distributor.address)

    # settle from a non-operator
    ktree = receipts_tree(_receipt_hashes(2, "attack"))
    with pytest.raises(ChainRevert) as err:
        basis.settle(
            alice,
            batch_id=_batch_id(99),
            to_distributor=1,
            to_treasury=1,
            reward_top_up=0,
            rewards_root=b"\x11" * 32,
            receipts_root=ktree.root,
            ledger_position=10**6,
            ledger_head=b"\x11" * 32,
        )
    assert err.value.name == "NotOperator"

    # replayed batch id
    with pytest.raises(ChainRevert) as err:
        basis.settle(
            operator,
            batch_id=_batch_id(1),
            to_distributor=0,
            to_treasury=0,
            reward_top_up=0,
            rewards_root=b"\x11" * 32,
            receipts_root=ktree.root,
            ledger_position=10**6,
            ledger_head=b"\x11" * 32,
        )
    assert err.value.name == "BatchAlreadyPosted"
    assert err.value.error_args["batchId"] == _batch_id(1)

    # settling more than the unsettled deposits
    with pytest.raises(ChainRevert) as err:
        basis.settle(
            operator,
            batch_id=_batch_id(98),
            to_distributor=vault_before + 1,
            to_treasury=0,
            reward_top_up=0,
            rewards_root=b"\x11" * 32,
            receipts_root=ktree.root,
            ledger_position=10**6,
            ledger_head=b"\x11" * 32,
        )
    assert err.value.name == "InsufficientVaultBalance"

    # unknown batch on the receipt view
    with pytest.raises(ChainRevert) as err:
        basis.verify_receipt(_batch_id(97), b"\x01" * 32, [])
    assert err.value.name == "UnknownBatch"

    # wrong proof / inflated amount / another worker's proof
    current = rewards_tree([(workers[5], 1 * TOKENS)])  # not the posted tree
    with pytest.raises(ChainRevert) as err:
        basis.claim(relayer, worker=workers[5], cumulative=1 * TOKENS, proof=current.proof(0))
    assert err.value.name == "InvalidProof"

    # zero deposit
    with pytest.raises(ChainRevert) as err:
        basis.deposit(alice, 0, account_id.to_bytes32(uuid.uuid4()))
    assert err.value.name == "ZeroAmount"

    chain_id = w3.eth.chain_id
    now = w3.eth.get_block("latest")["timestamp"]
    acct = account_id.to_bytes32(uuid.uuid4())

    # voucher signed by a non-operator
    v = Withdrawal(account=acct, recipient=alice.address, amount=TOKENS, nonce=7, expiry=now + 3600)
    bad_sig = sign_withdrawal(actors["alice"], v, chain_id=chain_id, vault=basis.vault.address)
    with pytest.raises(ChainRevert) as err:
        basis.withdraw(relayer, v, bad_sig)
    assert err.value.name == "InvalidVoucherSigner"

    # voucher for another chain id (domain mismatch)
    other_chain = sign_withdrawal(actors["operator"], v, chain_id=chain_id + 1, vault=basis.vault.address)
    with pytest.raises(ChainRevert) as err:
        basis.withdraw(relayer, v, other_chain)
    assert err.value.name == "InvalidVoucherSigner"

    # replayed voucher
    v_ok = Withdrawal(account=acct, recipient=alice.address, amount=TOKENS, nonce=8, expiry=now + 3600)
    sig_ok = sign_withdrawal(actors["operator"], v_ok, chain_id=chain_id, vault=basis.vault.address)
    basis.withdraw(relayer, v_ok, sig_ok)
    with pytest.raises(ChainRevert) as err:
        basis.withdraw(relayer, v_ok, sig_ok)
    assert err.value.name == "NonceAlreadyUsed"

    # expired voucher (chain time moves past expiry)
    v_exp = Withdrawal(account=acct, recipient=alice.address, amount=TOKENS, nonce=9, expiry=now + 60)
    sig_exp = sign_withdrawal(actors["operator"], v_exp, chain_id=chain_id, vault=basis.vault.address)
    anvil.rpc("evm_increaseTime", [120])
    anvil.rpc("evm_mine")
    with pytest.raises(ChainRevert) as err:
        basis.withdraw(relayer, v_exp, sig_exp)
    assert err.value.name == "VoucherExpired"
    assert not basis.nonce_used(9)

    assert basis.balance_of(basis.vault.address) == vault_before - TOKENS  # only the one valid voucher
    assert basis.balance_of(basis.distributor.address) == dist_before
