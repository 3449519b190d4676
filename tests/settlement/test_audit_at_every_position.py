"""The chain audit of a live system pairs its snapshot's cursor block with the deposits credited up
to its log position (issue #15 item 5). The indexer committed each deposit, then moved its cursor:
a snapshot taken between the two compared the chain at the cursor's (older) block with a ledger
one deposit ahead ("token balance at block 14: chain 11.99… != ledger 12.99…"), under load only.
Here the audit runs at every position a commit of two indexing passes left (where a live audit's
snapshot can fall), so no interleaving is missed."""

from __future__ import annotations

import pytest

from basis.domain import account_id as onchain
from basis.ledger.audit import AuditReport
from basis.settlement.audit import audit_chain
from basis.settlement.deposits import ChainIndexer
from tests.settlement.conftest import TOKENS

pytestmark = pytest.mark.chain


def test_no_log_position_sees_a_deposit_beyond_its_cursor_block(env, anvil):
    alice = env.ledger.open_account("alice")
    wallet = env.c.sender(anvil.keys[2])
    env.c.mint(env.deployer, wallet.address, 10 * TOKENS)
    indexer = ChainIndexer(env.ledger, env.w3, env.manifest)
    env.c.deposit(wallet, 3 * TOKENS, onchain.to_bytes32(alice))
    indexer.sync()  # the cursor now has a block: the next pass's deposit lies beyond it until it moves
    committed: list[int] = []  # the log's end after each commit: the positions a snapshot can take
    env.ledger.writer.add_commit_listener(lambda: committed.append(env.ledger.store.recorder.max_notification_id()))
    env.c.deposit(wallet, 2 * TOKENS, onchain.to_bytes32(alice))
    indexer.sync()
    assert committed
    for position in committed:
        report = AuditReport(position=position)
        audit_chain(env.settings, report, w3=env.w3, manifest=env.manifest)
        balances = [p for p in report.problems if "vault" in p or "deposit" in p]
        assert balances == [], (position, balances)
