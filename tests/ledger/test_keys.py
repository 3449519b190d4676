"""API keys as an operator manages them, on the real ledger: revocation, spend caps, limits, audit."""

from __future__ import annotations

import concurrent.futures as cf
import uuid

import pytest

from basis.domain.pricing import PricingError, worst_case_charge
from basis.ledger import ids
from basis.ledger.accounts import ApiKey
from basis.ledger.audit import audit
from basis.ledger.errors import InsufficientCredit, KeyCapReached, KeyRevoked, UnknownApiKey
from basis.ledger.service import Ledger
from tests.ledger.helpers import WORKER


@pytest.fixture
def ledger(settings):
    ledger = Ledger(settings)
    yield ledger
    ledger.close()


def _key_id(key: str) -> uuid.UUID:
    return ids.api_key_id(ids.hash_api_key(key))


def _job(ledger, account_id, key_id, *, max_output_tokens=100, output_tokens=42):
    job_id = uuid.uuid4()
    ledger.run(ledger.accept_job(job_id=job_id, account_id=account_id, model="basis-default", prompt_tokens=10,
                                 max_output_tokens=max_output_tokens, key_id=key_id))
    ledger.run(ledger.assign_job(job_id, "contributor", WORKER))
    return ledger.run(ledger.finish_job(job_id, outcome="completed", output_tokens=output_tokens))


def test_a_revoked_key_authenticates_no_more_and_its_jobs_are_refused(ledger):
    account_id, key = ledger.create_api_key("alice", name="ci")
    ledger.grant("alice", 10**18)
    key_id = _key_id(key)
    assert ledger.authenticate(key) == account_id and _job(ledger, account_id, key_id) is not None
    described = ledger.update_api_key(key_id, revoke=True, reason="leaked")
    assert described["revoked"] is True and described["name"] == "ci"
    assert ledger.authenticate(key) is None  # the cache of the process that revoked is cleared
    with pytest.raises(KeyRevoked):
        _job(ledger, account_id, key_id)
    with pytest.raises(KeyRevoked):  # a revoked key stays revoked: nothing more to decide
        ledger.update_api_key(key_id, cap=5)
    assert [type(e).__name__ for e in ledger.store.events.get(key_id)] == ["Issued", "Revoked"]
    acc = ledger.get(account_id)
    assert acc.reserved == 0 and len(acc.reservations) == 0


def test_another_process_cache_does_not_outlive_the_revocation_of_a_job(settings, ledger):
    """Two ledgers on one store: B keeps the key cached, yet its next job is refused."""
    other = Ledger(settings)
    try:
        account_id, key = ledger.create_api_key("bob")
        ledger.grant("bob", 10**18)
        key_id = _key_id(key)
        assert other.authenticate(key) == account_id and _job(other, account_id, key_id) is not None
        ledger.update_api_key(key_id, revoke=True)
        assert other.cached_account(key) == account_id  # B's own cache, refreshed within KEY_REFRESH_S
        with pytest.raises(KeyRevoked):
            _job(other, account_id, key_id)
    finally:
        other.close()


def test_a_cap_refuses_the_request_that_would_pass_it_and_counts_real_spend(ledger):
    terms = ledger.pricing.terms_for("basis-default")
    worst = worst_case_charge(10, 100, terms)
    account_id, key = ledger.create_api_key("carol", cap=worst * 2)
    ledger.grant("carol", 10**18)
    key_id = _key_id(key)
    receipt = _job(ledger, account_id, key_id, output_tokens=100)  # charged the worst case
    assert int(receipt["core"]["charged"]) == worst
    _job(ledger, account_id, key_id, output_tokens=100)
    with pytest.raises(KeyCapReached, match="spend cap"):
        _job(ledger, account_id, key_id)
    record: ApiKey = ledger.get(key_id)
    assert record.spent == worst * 2 and record.reserved == 0 and record.cap_left == 0
    ledger.update_api_key(key_id, cap=worst * 3)  # raised: one more fits
    _job(ledger, account_id, key_id)
    ledger.update_api_key(key_id, cap=None)  # lifted: the account's credit is the only limit
    _job(ledger, account_id, key_id)
    acc = ledger.get(account_id)
    assert acc.reserved == 0


def test_the_account_still_refuses_past_its_credit_and_the_key_holds_nothing(ledger):
    account_id, key = ledger.create_api_key("dave", cap=10**18)
    key_id = _key_id(key)
    with pytest.raises(InsufficientCredit):
        _job(ledger, account_id, key_id)
    record: ApiKey = ledger.get(key_id)
    assert record.reserved == 0 and not record.reservations


def test_a_cap_under_concurrency_never_overspends(ledger, settings):
    terms = ledger.pricing.terms_for("basis-default")
    worst = worst_case_charge(10, 100, terms)
    account_id, key = ledger.create_api_key("erin", cap=worst * 5 + 1)
    ledger.grant("erin", 10**18)
    key_id = _key_id(key)

    def one(_):
        try:
            return int(_job(ledger, account_id, key_id, output_tokens=100)["core"]["charged"])
        except KeyCapReached:
            return None

    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(20)))
    served = [c for c in results if c is not None]
    record: ApiKey = ledger.get(key_id)
    assert len(served) == 5 and record.spent == sum(served) <= record.cap and record.reserved == 0
    report = audit(ledger.store, None)
    assert report.ok, report.problems


def test_limits_and_bad_settings(ledger):
    _, key = ledger.create_api_key("frank", requests_per_minute=60, tokens_per_minute=1000)
    key_id = _key_id(key)
    entry = ledger.authenticate_key(key)
    assert (entry.key_id, entry.requests_per_minute, entry.tokens_per_minute) == (key_id, 60, 1000)
    ledger.update_api_key(key_id, requests_per_minute=None)
    assert ledger.authenticate_key(key).requests_per_minute is None  # forgotten here, read afresh
    for bad in ({"cap": -1}, {"cap": 1.5}, {"requests_per_minute": 0}, {"tokens_per_minute": True}):
        with pytest.raises(PricingError):
            ledger.update_api_key(key_id, **bad)
        with pytest.raises(PricingError):
            ledger.create_api_key("frank", **bad)
    with pytest.raises(UnknownApiKey):
        ledger.update_api_key(uuid.uuid4(), revoke=True)
    assert [type(e).__name__ for e in ledger.store.events.get(key_id)] == ["Issued", "LimitsSet", "LimitsSet"]


def test_the_audit_names_a_key_that_reserved_past_its_cap(ledger):
    """A writer that ignored the cap (forged here by lifting it in memory only) is caught by the
    audit, which walks the key's own stream and checks each reservation against the cap it had then."""
    account_id, key = ledger.create_api_key("grace", cap=1000)
    key_id = _key_id(key)
    assert audit(ledger.store, None).ok
    record: ApiKey = ledger.get(key_id)
    record.cap = 10**30  # not an event: the stream still says 1000
    record.reserve(job_id=str(uuid.uuid4()), amount=5000)
    ledger.store.save(record)
    problems = audit(ledger.store, None).problems
    assert any("reserved past its cap 1000" in p for p in problems), problems
    assert account_id is not None
