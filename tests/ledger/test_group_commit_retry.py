"""A group-commit batch retried after a version conflict runs only the commands still unanswered.

Regression for review item 5 (``../shared/review/repro_double_settle.py``): a command that changed
an aggregate and then raised was answered, then run and answered again when a later version
conflict retried the whole batch; the second answer raised ``InvalidStateError`` and failed every
other command of the batch with it.
"""

from __future__ import annotations

import pytest
from eventsourcing.application import AggregateNotFoundError

from basis.ledger import ids
from basis.ledger.accounts import Account
from basis.ledger.committer import QueuedCommand
from basis.ledger.errors import InsufficientCredit
from basis.ledger.service import Ledger


def _open(name):
    def cmd(uow):
        acc = uow.find(Account, ids.account_id(name)) or uow.add(Account(name=name))
        return acc.id

    return cmd


def test_a_conflict_after_a_command_that_changed_then_raised_reruns_only_the_unanswered(settings):
    ledger = Ledger(settings, writer_thread=False)  # this writer, driven by hand
    other = Ledger(settings)  # another writer on the same store (a writer process, the CLI)
    writer = ledger.writer

    def run(fn):
        item = QueuedCommand(fn)
        writer.commit_batch([item])
        return item.future.result()

    try:
        bob = run(_open("bob"))
        run(lambda uow: uow.find(Account, bob).credit(source="grant", external_id="g0", amount=100))  # cached here
        runs = {"refused": 0, "credit": 0}

        def changes_then_refuses(uow):
            # Like the first over-limit withdrawal: creates an aggregate, then a domain refusal.
            runs["refused"] += 1
            uow.add(Account(name="carol"))
            raise InsufficientCredit("refused after a change")

        def credit_bob(uow):
            runs["credit"] += 1
            if runs["credit"] == 1:  # another writer commits to bob's account at this instant
                other.run(lambda u: u.find(Account, bob).credit(source="grant", external_id="g1", amount=1))
            uow.find(Account, bob).credit(source="grant", external_id="g2", amount=5)
            return "credited"

        refused, credit = QueuedCommand(changes_then_refuses), QueuedCommand(credit_bob)
        writer.commit_batch([refused, credit])

        assert isinstance(refused.future.exception(), InsufficientCredit)
        assert credit.future.result() == "credited"  # not failed by its neighbour's second answer
        assert runs["refused"] == 1  # answered once, never run again
        assert other.get(bob).granted == 100 + 1 + 5
        with pytest.raises(AggregateNotFoundError):  # the refused command's change was dropped
            other.get(ids.account_id("carol"))
    finally:
        other.close()
        ledger.close()


def test_a_command_is_answered_once(settings, caplog):
    item = QueuedCommand(lambda uow: None)
    item.settle(True, 1)
    item.settle(False, RuntimeError("again"))  # a bug elsewhere: logged, the first answer kept
    assert item.future.result() == 1 and item.outcome == (True, 1)
    assert "answered twice" in caplog.text
