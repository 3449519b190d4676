"""The account fold's plain mutators (``account_mutators``) apply each account event exactly as
eventsourcing applies it to the aggregate: the same state after, the same events refused; and every
account event type has one."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from eventsourcing.persistence import StoredEvent
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from basis.config import Settings
from basis.ledger.account_mutators import MUTATORS, apply_plain
from basis.ledger.accounts import Account
from basis.ledger.export_replay import StoredStateDecoder
from basis.ledger.store import LedgerStore

_EVENT_FIELDS = {"self", "originator_id", "originator_version", "timestamp"}  # an event's own, not its method's
_EVENTS = {v.TOPIC: v for v in vars(Account).values()
           if isinstance(v, type) and getattr(v, "TOPIC", None) and v.TOPIC not in (
               Account.Created.TOPIC, "basis:Account.Opened.v1")}  # the creation: eventsourcing's, once an account


def test_every_account_event_type_has_a_plain_mutator_taking_its_fields():
    assert set(MUTATORS) == set(_EVENTS), "a new Account event needs its plain mutator in account_mutators"
    for topic, (_fn, params) in MUTATORS.items():
        fields = set(inspect.signature(_EVENTS[topic]).parameters) - _EVENT_FIELDS
        assert params - {"self"} == fields, topic


@pytest.fixture(scope="module")
def mapper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A store's mapper (one for every example), decoding as the audit decodes."""
    store = LedgerStore(Settings(home=tmp_path_factory.mktemp("mutators"), database_url=None).event_store_env())
    transcoder = store.mapper.transcoder
    transcoder.decode = StoredStateDecoder(transcoder.decoder.object_hook)  # type: ignore[method-assign]
    yield store.mapper
    store.close()


_AMOUNT = st.one_of(st.integers(min_value=0, max_value=60), st.integers(min_value=-3, max_value=2**70),
                    st.booleans(), st.just("5"), st.none())
_JOB = st.sampled_from(["a", "b", "c"])
_FIELDS: dict[str, dict[str, Any]] = {
    "basis:Account.ApiKeyAdded.v1": {"key_hash": st.text(max_size=3), "prefix": st.text(max_size=3)},
    "basis:Account.Credited.v1": {"source": st.sampled_from(["grant", "deposit", "refund", "gift"]),
                                  "external_id": _JOB, "amount": _AMOUNT, "memo": st.just("m"), "backed": _AMOUNT},
    "basis:Account.Reserved.v1": {"job_id": _JOB, "amount": _AMOUNT},
    "basis:Account.ReservationSettled.v1": {"job_id": _JOB, "released": _AMOUNT, "charged": _AMOUNT,
                                            "from_grant": _AMOUNT, "from_deposit": _AMOUNT},
    "basis:Account.DepositSpendSettled.v1": {"batch_id": st.just("b1"), "job_ids": st.lists(_JOB, max_size=3)},
    "basis:Account.WithdrawalReserved.v1": {"nonce": st.integers(0, 3), "amount": _AMOUNT,
                                            "recipient": st.just("0x1"), "expiry": st.integers(0, 9)},
    "basis:Account.WithdrawalRedeemed.v1": {"nonce": st.integers(0, 3), "amount": _AMOUNT,
                                            "tx_hash": st.just("0x2"), "log_index": st.integers(0, 3)},
    "basis:Account.WithdrawalReleased.v1": {"nonce": st.integers(0, 3), "amount": _AMOUNT,
                                            "chain_time": st.integers(0, 9)},
}


def _fitting(data: st.DataObject, account: Account, topic: str) -> dict[str, Any]:
    """A state for ``topic`` that the account, as it is, would most likely accept (so that long runs
    of accepted events are tried, not only refusals)."""
    draw = data.draw
    small = st.integers(min_value=0, max_value=40)
    if topic == "basis:Account.Credited.v1":
        source = draw(st.sampled_from(["grant", "deposit", "refund"]))
        amount = draw(st.integers(min_value=1, max_value=60))
        backed = draw(st.integers(min_value=0, max_value=amount + 1)) if source == "refund" else 0
        return {"source": source, "external_id": draw(_JOB), "amount": amount, "memo": "m", "backed": backed}
    if topic == "basis:Account.Reserved.v1":
        free = [j for j in ("a", "b", "c") if j not in account.reservations]
        return {"job_id": draw(st.sampled_from(free)),
                "amount": draw(st.integers(min_value=min(1, account.available),
                                           max_value=max(0, min(account.available, 40))))}
    if topic == "basis:Account.ReservationSettled.v1":
        job, held = draw(st.sampled_from(sorted(account.reservations.items())))
        charged = draw(st.integers(min_value=0, max_value=held + 1))
        from_grant = draw(st.integers(min_value=0, max_value=charged))
        return {"job_id": job, "released": held, "charged": charged, "from_grant": from_grant,
                "from_deposit": charged - from_grant}
    if topic == "basis:Account.WithdrawalReserved.v1":
        return {"nonce": draw(st.integers(0, 3)), "amount": draw(st.integers(1, account.withdrawable + 1)),
                "recipient": "0x1", "expiry": draw(small)}
    if topic in ("basis:Account.WithdrawalRedeemed.v1", "basis:Account.WithdrawalReleased.v1"):
        nonce, amount = draw(st.sampled_from(sorted(account.vouchers.items())))
        extra = {"tx_hash": "0x2", "log_index": 0} if topic.endswith("Redeemed.v1") else {"chain_time": 1}
        return {"nonce": int(nonce), "amount": amount, **extra}
    if topic == "basis:Account.DepositSpendSettled.v1":
        return {"batch_id": "b1", "job_ids": draw(st.lists(st.sampled_from(
            sorted(account.unsettled_deposit_spend)), min_size=1, max_size=3))}
    return {k: draw(v) for k, v in _FIELDS[topic].items()}


def _event(data: st.DataObject, account: Account, credit: str | None = None) -> tuple[str, dict[str, Any], int]:
    """(topic, state, version step): mostly one the account accepts; sometimes any values, a field
    missing, one more, a class_version, a ``self``, no timestamp, or a version that does not follow."""
    draw = data.draw
    fitting = draw(st.integers(0, 9)) > 0
    topics = sorted(_FIELDS)
    if fitting:  # only events the account can take now
        topics = [t for t in topics if (t != "basis:Account.ReservationSettled.v1" or account.reservations)
                  and (t != "basis:Account.Reserved.v1" or len(account.reservations) < 3)
                  and (t != "basis:Account.WithdrawalReserved.v1" or account.withdrawable)
                  and (not t.endswith(("Redeemed.v1", "Released.v1")) or account.vouchers)
                  and (t != "basis:Account.DepositSpendSettled.v1" or account.unsettled_deposit_spend)]
    topic = draw(st.sampled_from(topics)) if credit is None else "basis:Account.Credited.v1"
    state = _fitting(data, account, topic) if fitting else {k: draw(v) for k, v in _FIELDS[topic].items()}
    if credit is not None:  # a run starts with a grant and a deposit: spending and withdrawing get tried
        state.update(source=credit, backed=0)
    odd = draw(st.sampled_from([""] * 25 + ["drop", "extra", "class_version", "self", "no_timestamp"]))
    if odd == "drop" and state:
        state.pop(draw(st.sampled_from(sorted(state))))
    elif odd in ("extra", "self", "class_version"):
        state[{"extra": "unknown", "self": "self", "class_version": "class_version"}[odd]] = draw(
            st.sampled_from([1, 2, 0]))
    if odd != "no_timestamp":
        state["timestamp"] = datetime(2026, 12, 1, tzinfo=UTC) + timedelta(seconds=draw(st.integers(0, 9)))
    step = draw(st.sampled_from([1] * 30 + [0, 2]))
    return topic, state, step


def _stored(mapper: Any, stream: Any, version: int, topic: str, state: dict[str, Any]) -> StoredEvent:
    return StoredEvent(originator_id=stream, originator_version=version, topic=topic,
                       state=mapper.transcoder.encode(state))


@hsettings(max_examples=400, deadline=None)
@given(data=st.data(), length=st.integers(min_value=1, max_value=24))
def test_plain_mutators_apply_each_event_as_eventsourcing_does(mapper, data, length):
    stream = Account.create_id("acct")
    opened = _stored(mapper, stream, 1, "basis:Account.Opened.v1",
                     {"name": "acct", "timestamp": datetime(2026, 12, 1, tzinfo=UTC),
                      "originator_topic": "basis:Account"})
    by_es = mapper.to_domain_event(opened).mutate(None)
    by_plain = mapper.to_domain_event(opened).mutate(None)
    version = 1
    for i in range(length + 2):
        topic, state, step = _event(data, by_es, ("grant", "deposit")[i] if i < 2 else None)
        version += step
        stored = _stored(mapper, stream, version, topic, state)
        try:
            mapper.to_domain_event(stored).mutate(by_es)
            es_refused = None
        except Exception as exc:
            es_refused = exc
        try:
            if not apply_plain(by_plain, version, topic, mapper.transcoder.decode(stored.state)):
                mapper.to_domain_event(stored).mutate(by_plain)
            plain_refused = None
        except Exception as exc:
            plain_refused = exc
        assert (es_refused is None) == (plain_refused is None), (topic, state, es_refused, plain_refused)
        if es_refused is not None:
            return  # the fold leaves a refused account to the checks, which rebuild it and name it
        assert vars(by_plain) == vars(by_es), (topic, state)
        assert by_plain.snapshot_view() == by_es.snapshot_view()
