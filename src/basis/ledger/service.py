"""The ledger's public face: commands that gateways, the CLI and settlement call.

Commands run on the group-commit writer thread; callers wait on a future (``run``) or await
it (``arun``) so the event loop never blocks on the database or on receipt signing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from basis.config import Settings
from basis.domain.pricing import PriceTerms, PricingTable, require_amount, worst_case_charge
from basis.domain.receipt import build_core, receipt_hash
from basis.domain.signing import ReceiptSigner
from basis.ledger import ids, keys
from basis.ledger.accounts import Account, ApiKey, CreditRef
from basis.ledger.committer import GroupCommitter, UnitOfWork
from basis.ledger.errors import (
    DuplicateCredit,
    IdempotencyConflict,
    IdempotentReplay,
    InvalidTransition,
    UnknownAccount,
    UnknownJob,
)
from basis.ledger.jobs import IdempotencyRecord, Job
from basis.ledger.store import LedgerStore
from basis.ledger.verdicts import sampling_secret, select_for_check
from basis.ledger.workers import Worker
from basis.verification.policy import VerificationPolicy

T = TypeVar("T")
log = logging.getLogger(__name__)
API_KEY_PREFIX = keys.API_KEY_PREFIX
# The commands a gateway sends per job; by name, so they can cross to a writer process.
JOB_COMMANDS = frozenset({"accept_job", "assign_job", "finish_job", "abandon_job", "register_worker"})


class Ledger:
    def __init__(self, settings: Settings | None = None, *, env: dict[str, str] | None = None,
                 signer_key: str | None = None, pricing: PricingTable | None = None,
                 writer_thread: bool = True, verification: VerificationPolicy | None = None,
                 verified_models: list[str] | None = None) -> None:
        self.settings = settings or Settings()
        # Which contributor jobs finish_job selects for a check (off unless the gateway turns it on).
        self.verification = verification or VerificationPolicy(enabled=False)
        self.verified_models = verified_models  # None: every model has a reference to check against
        self._sampling_secret: bytes | None = None
        self.env = dict(env or self.settings.event_store_env())
        self.store = LedgerStore(self.env)
        self.pricing = pricing or PricingTable.load(self.settings.pricing_table)
        self._signer_key = signer_key or self.settings.operator_key()
        self.signer = ReceiptSigner(self._signer_key)
        self.committed = threading.Event()  # set after each commit: wakes projection pollers
        self.writer = GroupCommitter(self.store, on_commit=self.committed.set, threaded=writer_thread)
        self._key_cache: dict[str, keys.KeyEntry] = {}

    def close(self) -> None:
        self.writer.close()
        self.store.close()

    # -- plumbing ---------------------------------------------------------------------------
    def run(self, fn: Callable[[UnitOfWork], T]) -> T:
        return self.writer.submit(fn).result()

    async def arun(self, fn: Callable[[UnitOfWork], T]) -> T:
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self.writer.submit_async(fn, loop, waiter)
        return await waiter

    def command(self, name: str, kwargs: dict[str, Any]) -> Callable[[UnitOfWork], Any]:
        """A job command by name (what crosses to a writer process): see ``JOB_COMMANDS``."""
        if name not in JOB_COMMANDS:
            raise ValueError(f"{name!r} is not a ledger job command")
        return getattr(self, name)(**kwargs)

    def spawn_args(self) -> dict[str, Any]:
        """What another process needs to open this same ledger (a writer process)."""
        return {"settings": self.settings, "env": self.env, "signer_key": self._signer_key, "pricing": self.pricing,
                "verification": self.verification, "verified_models": self.verified_models}

    def get(self, aggregate_id: UUID) -> Any:
        """Read the latest state of one aggregate straight from the store (any thread)."""
        return self.store.repository.get(aggregate_id)

    # -- accounts ---------------------------------------------------------------------------
    def open_account(self, name: str) -> UUID:
        """Open the account if it does not exist yet; its id derives from its name."""
        if not name or len(name) > 200:
            raise ValueError("an account name is 1 to 200 characters")

        def cmd(uow: UnitOfWork) -> UUID:
            acc = uow.find(Account, ids.account_id(name))
            if acc is None:
                acc = uow.add(Account(name=name))
            return acc.id

        return self.run(cmd)

    def create_api_key(self, account_name: str, *, name: str = "", cap: int | None = None,
                       requests_per_minute: int | None = None,
                       tokens_per_minute: int | None = None) -> tuple[UUID, str]:
        """A new key, shown once; only its hash is stored. Its id is ``ids.api_key_id(hash)``."""
        keys.check_settings(cap, requests_per_minute, tokens_per_minute)
        account_id = self.open_account(account_name)
        key = keys.new_key()
        self.run(keys.issue(account_id, key, name, cap, requests_per_minute, tokens_per_minute))
        return account_id, key

    def update_api_key(self, key_id: UUID, **changes: Any) -> dict[str, Any]:
        """Revoke and/or set a key's cap and limits (``keys.update``); forgets it here at once."""
        described = self.run(keys.update(key_id, **changes))
        self.forget_key(key_id)
        return described

    def forget_key(self, key_id: UUID) -> None:
        """Drop a key from this process's cache (other gateways refresh theirs: ``keys.KEY_REFRESH_S``)."""
        for key_hash in [h for h in self._key_cache if ids.api_key_id(h) == key_id]:
            self._key_cache.pop(key_hash, None)

    def cached_key(self, api_key: str) -> keys.KeyEntry | None:
        """A key already seen by ``authenticate_key`` and fresh enough (no I/O), else None."""
        if not self._key_cache:
            return None
        entry = self._key_cache.get(ids.hash_api_key(api_key))
        return entry if entry is not None and entry.fresh() else None

    def cached_account(self, api_key: str) -> UUID | None:
        entry = self.cached_key(api_key)
        return entry.account_id if entry is not None else None

    def authenticate_key(self, api_key: str) -> keys.KeyEntry | None:
        """The key's account, id and rate limits; None for an unknown or revoked key."""
        if not api_key.startswith(API_KEY_PREFIX) or len(api_key) > 200:
            return None
        key_hash = ids.hash_api_key(api_key)
        cached = self._key_cache.get(key_hash)
        if cached is not None and cached.fresh():
            return cached
        try:
            record: ApiKey = self.get(ids.api_key_id(key_hash))
        except AggregateNotFoundError:
            return None
        if record.revoked:
            self._key_cache.pop(key_hash, None)
            return None
        entry = keys.KeyEntry.of(record)
        self._key_cache[key_hash] = entry
        return entry

    def authenticate(self, api_key: str) -> UUID | None:
        entry = self.authenticate_key(api_key)
        return entry.account_id if entry is not None else None

    def credit(self, account_id: UUID, source: str, external_id: str, amount: int, memo: str = "") -> None:
        """Credit an account exactly once per (source, external id)."""
        require_amount(amount, "amount", positive=True)
        if not external_id:
            raise ValueError("a credit needs an external id")

        def cmd(uow: UnitOfWork) -> None:
            acc = uow.find(Account, account_id)
            if acc is None:
                raise UnknownAccount(f"no account {account_id}")
            if uow.find(CreditRef, ids.credit_ref_id(source, external_id)) is not None:
                raise DuplicateCredit(f"{source} credit {external_id!r} was already recorded")
            acc.credit(source=source, external_id=external_id, amount=amount, memo=memo)
            uow.add(CreditRef(source=source, external_id=external_id, account_id=account_id, amount=amount))

        self.run(cmd)

    def grant(self, account_name: str, amount: int, grant_id: str | None = None, memo: str = "") -> str:
        """An operator grant (development, promotions): credit with no tokens behind it."""
        require_amount(amount, "amount", positive=True)
        account_id = self.open_account(account_name)
        grant_id = grant_id or str(uuid.uuid4())
        self.credit(account_id, "grant", grant_id, amount, memo)
        return grant_id

    # -- jobs -------------------------------------------------------------------------------
    def accept_job(self, *, job_id: UUID, account_id: UUID, model: str, prompt_tokens: int,
                   max_output_tokens: int, terms: PriceTerms | None = None,
                   idempotency_key: str | None = None, request_hash: str | None = None,
                   stream: bool = False, created: int = 0,
                   assignment: tuple[str, str | None] | None = None,
                   key_id: UUID | None = None) -> Callable[[UnitOfWork], int]:
        """A command that opens the job and reserves its worst-case charge. Returns the reservation.
        ``assignment`` (served_by, worker), when the route is known already, is recorded with it.
        ``key_id``: the API key it came with: refused if revoked or past its cap (``keys``)."""
        terms = terms or self.pricing.terms_for(model)
        reserved = worst_case_charge(prompt_tokens, max_output_tokens, terms)

        def cmd(uow: UnitOfWork) -> int:
            acc = uow.find(Account, account_id)
            if acc is None:
                raise UnknownAccount(f"no account {account_id}")
            api_key = keys.check_job(uow, key_id, account_id) if key_id is not None else None
            record = None
            if idempotency_key is not None:
                record = uow.find(IdempotencyRecord, ids.idempotency_id(account_id, idempotency_key))
                if record is not None:
                    prior: Job | None = uow.find(Job, record.job_id)
                    if record.request_hash != request_hash:
                        raise IdempotencyConflict(
                            "this Idempotency-Key was used with a different request body", str(record.job_id))
                    if prior is not None and not prior.is_ended:
                        raise IdempotencyConflict("a request with this Idempotency-Key is still running",
                                                  str(record.job_id))
                    if prior is not None and prior.receipt is not None:
                        raise IdempotentReplay(str(prior.id))
                    # The first attempt ended charging nothing: this request may try again.
            if api_key is not None:
                keys.check_cap(api_key, reserved)
            acc.reserve(job_id=str(job_id), amount=reserved)
            if api_key is not None and api_key.capped:
                api_key.reserve(job_id=str(job_id), amount=reserved)
            job = uow.add(Job(id=job_id, account_id=account_id, model=model, prompt_tokens=prompt_tokens,
                              max_output_tokens=max_output_tokens, terms=terms.as_dict(), reserved=reserved,
                              idempotency_key=idempotency_key, request_hash=request_hash, stream=stream,
                              node=self.settings.node_id, created=created, key_id=key_id))
            if assignment is not None:
                job.assign(served_by=assignment[0], worker=assignment[1])
            if idempotency_key is not None:
                if record is None:
                    uow.add(IdempotencyRecord(account_id=account_id, key=idempotency_key, job_id=job_id,
                                              request_hash=request_hash or ""))
                else:
                    record.rebind(job_id=job_id)
            return reserved

        return cmd

    def assign_job(self, job_id: UUID, served_by: str, worker: str | None) -> Callable[[UnitOfWork], None]:
        def cmd(uow: UnitOfWork) -> None:
            self._job(uow, job_id).assign(served_by=served_by, worker=worker)

        return cmd

    def finish_job(self, job_id: UUID, *, outcome: str, output_tokens: int, finish_reason: str | None = None,
                   reason: str | None = None, worker_usage: dict[str, int] | None = None,
                   output_text: str | None = None, served_by: str | None = None, worker: str | None = None,
                   check: dict[str, Any] | None = None,
                   resume: bool = False) -> Callable[[UnitOfWork], dict[str, Any] | None]:
        """End the job, issue and sign its receipt when it earns one, and settle its reservation.
        ``served_by``/``worker``: the side and worker that served it; refused (``AttemptMismatch``)
        unless they are the job's last recorded assignment. None: not said (recovery, the CLI).
        ``resume``: the same end sent again after a writer was lost mid-commit; if the first one
        was saved, answer with its receipt instead of failing. ``check``: the ids and sampling
        parameters a verifier would need (prompt_ids, output_ids, temperature, top_p); recorded
        only when the job is selected for verification (basis.ledger.verdicts)."""

        def cmd(uow: UnitOfWork) -> dict[str, Any] | None:
            job = self._job(uow, job_id)
            if resume and job.is_ended:
                return job.receipt
            acc = uow.find(Account, job.account_id)
            assert acc is not None
            job.end(outcome=outcome, output_tokens=output_tokens, finish_reason=finish_reason, reason=reason,
                    worker_usage=worker_usage, output_text=output_text, served_by=served_by, worker=worker)
            charged = 0
            if job.earns_receipt:
                core = build_core(job_id=job.id, model=job.model, served_by=job.served_by or "gateway",
                                  worker=job.worker, outcome=outcome, prompt_tokens=job.prompt_tokens,
                                  output_tokens=output_tokens, terms=job.price_terms)
                digest = receipt_hash(core)
                job.issue_receipt(core=core, hash=digest, signature=self.signer.sign_hash(digest),
                                  signer=self.signer.address)
                charged = int(core["charged"])
            from_grant, from_deposit = acc.split_spend(charged)
            acc.settle_reservation(job_id=str(job.id), released=acc.reservations.get(str(job.id), -1),
                                   charged=charged, from_grant=from_grant, from_deposit=from_deposit)
            keys.settle_for_job(uow, job.key_id, job.id, charged)
            if check is not None and self.verification.enabled:
                try:
                    select_for_check(uow, job, check, self.verification, self.sampling_secret(), self.verified_models)
                except (KeyError, TypeError, ValueError, InvalidTransition) as exc:  # never lose the job's end
                    log.warning("job %s: not selectable for a check (%s)", job_id, exc)
            uow.release(job)
            return job.receipt

        return cmd

    def sampling_secret(self) -> bytes:
        if self._sampling_secret is None:
            self._sampling_secret = sampling_secret(self.settings.home)
        return self._sampling_secret

    def abandon_job(self, job_id: UUID, reason: str) -> Callable[[UnitOfWork], None]:
        """End a job whose acceptance may or may not have been saved (its writer was lost): failed,
        charging nothing, if it exists and is still open; otherwise nothing."""
        finish = self.finish_job(job_id, outcome="failed", output_tokens=0, reason=reason, resume=True)

        def cmd(uow: UnitOfWork) -> None:
            if uow.find(Job, job_id) is not None:
                finish(uow)

        return cmd

    def _job(self, uow: UnitOfWork, job_id: UUID) -> Job:
        job = uow.find(Job, job_id)
        if job is None:
            raise UnknownJob(f"no job {job_id}")
        return job

    # -- workers ----------------------------------------------------------------------------
    def register_worker(self, address: str, models: list[str], software: str = "") -> Callable[[UnitOfWork], None]:
        def cmd(uow: UnitOfWork) -> None:
            worker = uow.find(Worker, ids.worker_id(address))
            if worker is None:
                worker = uow.add(Worker(address=address))
            if sorted(models) != worker.models:
                worker.advertise(models=models, software=software)

        return cmd

    # -- recovery ---------------------------------------------------------------------------
    def end_interrupted(self, job_ids: list[UUID]) -> int:
        """After a crash: jobs this node accepted but never ended are failed, charging nothing
        (their accepted tokens were never committed), and their reservations are released."""
        done = 0
        for job_id in job_ids:
            try:
                self.run(self.finish_job(job_id, outcome="failed", output_tokens=0,
                                         reason="gateway restarted before the job ended"))
                done += 1
            except InvalidTransition:
                pass
        return done
