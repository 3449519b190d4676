"""Stateful properties of the ledger on a real SQLite store (hypothesis RuleBasedStateMachine).

Random grants, job accepts (random models, prompt sizes, max tokens), assigns and finishes
(random outcomes, token counts never above the job's max) against several accounts. After
every step the committed aggregates agree with an independent model, money is never negative,
and at teardown the auditor's replay equals the live views byte for byte.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from basis.config import Settings
from basis.domain.pricing import PricingTable, worst_case_charge
from basis.ledger.audit import audit
from basis.ledger.errors import InsufficientCredit, InvalidTransition
from basis.ledger.projections import Projector
from basis.ledger.service import Ledger

PRICING = PricingTable.load()
MODELS = ("basis-default", "basis-small", "basis-large")
ACCOUNTS = ("ann", "ben", "cat")
WORKERS = ("0x" + "1" * 40, "0x" + "2" * 40)
SIGNER = "0x" + "07" * 32


def expected_charge(prompt: int, output: int, terms) -> int:
    """DESIGN 1.1, written out independently of the code under test."""
    return (prompt * terms.prompt_weight + output * terms.output_weight) * terms.multiplier_bps // 10_000


class LedgerMachine(RuleBasedStateMachine):
    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="basis-prop-"))
        self.settings = Settings(home=self.tmp, database_url=None)
        self.ledger = Ledger(self.settings, signer_key=SIGNER)
        self.ids = {name: self.ledger.open_account(name) for name in ACCOUNTS}
        self.credit = dict.fromkeys(ACCOUNTS, 0)
        self.spent = dict.fromkeys(ACCOUNTS, 0)
        self.open: dict[uuid.UUID, dict] = {}  # job -> account, reservation, max tokens, assigned
        self.receipts: dict[uuid.UUID, dict] = {}

    # -- rules --------------------------------------------------------------------------------
    @rule(account=st.sampled_from(ACCOUNTS), amount=st.integers(1, 10**17))
    def grant(self, account: str, amount: int) -> None:
        self.ledger.grant(account, amount)
        self.credit[account] += amount

    @rule(target=jobs, account=st.sampled_from(ACCOUNTS), model=st.sampled_from(MODELS),
          prompt=st.integers(0, 4000), max_out=st.integers(0, 2048))
    def accept(self, account: str, model: str, prompt: int, max_out: int):
        job = uuid.uuid4()
        terms = PRICING.terms_for(model)
        worst = worst_case_charge(prompt, max_out, terms)
        available = self.credit[account] - self.spent[account] - sum(
            j["reserved"] for j in self.open.values() if j["account"] == account)
        try:
            reserved = self.ledger.run(self.ledger.accept_job(
                job_id=job, account_id=self.ids[account], model=model, prompt_tokens=prompt,
                max_output_tokens=max_out))
        except InsufficientCredit:
            assert worst > available, "refused a job the account could afford"
            return job  # a refused job: later rules on it must fail without changing anything
        assert worst <= available, "accepted a job the account could not afford"
        assert reserved == worst
        self.open[job] = {"account": account, "reserved": reserved, "max": max_out, "prompt": prompt,
                          "terms": terms, "assigned": None}
        return job

    @rule(job=jobs, contributor=st.booleans(), worker=st.sampled_from(WORKERS))
    def assign(self, job: uuid.UUID, contributor: bool, worker: str) -> None:
        served_by = "contributor" if contributor else "gateway"
        cmd = self.ledger.assign_job(job, served_by, worker if contributor else None)
        if job not in self.open:
            before = self.ledger.store.recorder.max_notification_id()
            try:
                self.ledger.run(cmd)
            except Exception as exc:  # unknown (refused) or already ended: refused, nothing recorded
                assert type(exc).__name__ in ("UnknownJob", "InvalidTransition")
            else:
                raise AssertionError("assigned a job that is not open")
            assert self.ledger.store.recorder.max_notification_id() == before
            return
        self.ledger.run(cmd)
        self.open[job]["assigned"] = (served_by, worker if contributor else None)  # a retry replaces it

    @rule(job=consumes(jobs), outcome=st.sampled_from(("completed", "cancelled", "failed")),
          fraction=st.floats(0, 1), overshoot=st.booleans())
    def finish(self, job: uuid.UUID, outcome: str, fraction: float, overshoot: bool) -> None:
        info = self.open.get(job)
        if info is None:
            return
        tokens = int(info["max"] * fraction)  # never above the job's max...
        if overshoot:  # ...except to check that more than the max is refused
            try:
                self.ledger.run(self.ledger.finish_job(job, outcome=outcome, output_tokens=info["max"] + 1))
            except InvalidTransition:
                pass
            else:
                raise AssertionError("a job ended with more output tokens than it reserved for")
        if outcome == "completed" and info["assigned"] is None:
            try:
                self.ledger.run(self.ledger.finish_job(job, outcome=outcome, output_tokens=tokens))
            except InvalidTransition:
                outcome = "cancelled"  # a caller that gave up before routing
            else:
                raise AssertionError("an unassigned job completed")
        receipt = self.ledger.run(self.ledger.finish_job(job, outcome=outcome, output_tokens=tokens))
        del self.open[job]
        earns = outcome == "completed" or tokens > 0
        assert (receipt is not None) == earns, "receipt issued iff completed or some output accepted (1.2)"
        if receipt is None:
            return
        core = receipt["core"]
        served_by, worker = info["assigned"] or ("gateway", None)
        charged = expected_charge(info["prompt"], tokens, info["terms"])
        reward_bps = info["terms"].contributor_reward_bps if (
            served_by == "contributor" and outcome != "failed") else 0
        assert core["charged"] == str(charged) and charged <= info["reserved"]
        assert core["reward_bps"] == reward_bps and core["reward"] == str(charged * reward_bps // 10_000)
        assert (core["served_by"], core["worker"], core["output_tokens"]) == (served_by, worker, tokens)
        self.spent[info["account"]] += charged
        self.receipts[job] = {"account": info["account"], "receipt": receipt}

    # -- invariants ---------------------------------------------------------------------------
    @invariant()
    def balances_agree_with_the_model(self) -> None:
        for name, account_id in self.ids.items():
            acc = self.ledger.get(account_id)
            open_here = {str(j): i["reserved"] for j, i in self.open.items() if i["account"] == name}
            assert acc.reservations == open_here
            assert acc.reserved == sum(open_here.values()) >= 0
            assert acc.total_credit == self.credit[name]
            assert acc.spent == self.spent[name] == sum(
                int(r["receipt"]["core"]["charged"]) for r in self.receipts.values() if r["account"] == name)
            assert acc.available >= 0 and acc.spent >= 0
            assert acc.spent_granted + acc.spent_deposited == acc.spent

    @invariant()
    def every_receipt_splits_its_charge(self) -> None:
        for r in self.receipts.values():
            core = r["receipt"]["core"]
            charged, reward = int(core["charged"]), int(core["reward"])
            fee = charged - reward
            assert charged == reward + fee and 0 <= reward <= charged and fee >= 0

    def teardown(self) -> None:
        try:
            projector = Projector(self.ledger.store, self.settings.views_path)
            projector.catch_up()
            projector.stop()
            report = audit(self.ledger.store, self.settings.views_path, signer=self.ledger.signer.address)
            assert report.ok, report.problems
            assert report.receipts == len(self.receipts)
            assert report.open_jobs == len(self.open)
            assert report.charged_total == sum(self.spent.values())
        finally:
            self.ledger.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


LedgerMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLedgerProperties = LedgerMachine.TestCase
