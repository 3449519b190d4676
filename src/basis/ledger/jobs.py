"""Job aggregate: one stream per job.

accepted -> assigned (once per attempt) -> completed | failed | cancelled -> receipt issued
-> batched (proposed for settlement; unbatched again if that batch is abandoned) -> settled
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from basis.domain.pricing import PriceTerms, require_amount
from basis.ledger import ids
from basis.ledger.errors import AttemptMismatch, InvalidTransition

ENDED = ("completed", "failed", "cancelled")


class Job(Aggregate):
    TOPIC = "basis:Job"

    class Created(Aggregate.Created):
        TOPIC = "basis:Job.Created.v1"

    @event("Accepted", topic="basis:Job.Accepted.v1")
    def __init__(self, id: UUID, account_id: UUID, model: str, prompt_tokens: int, max_output_tokens: int,
                 terms: dict[str, int], reserved: int, idempotency_key: str | None = None,
                 request_hash: str | None = None, stream: bool = False, node: str = "", created: int = 0,
                 key_id: UUID | None = None) -> None:
        require_amount(prompt_tokens, "prompt_tokens")
        require_amount(max_output_tokens, "max_output_tokens")
        self.account_id = account_id
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.max_output_tokens = max_output_tokens
        self.terms = dict(terms)
        self.reserved = reserved
        self.idempotency_key = idempotency_key
        self.request_hash = request_hash
        self.stream = stream
        self.node = node
        self.created = created  # the completion's `created` (unix seconds), so a replay is identical
        self.key_id = key_id  # the API key it was made with (None: recorded before keys were)
        self.status = "accepted"
        self.attempts: list[dict[str, Any]] = []
        self.outcome: str | None = None
        self.output_tokens = 0
        self.output_text: str | None = None
        self.finish_reason: str | None = None
        self.receipt: dict[str, Any] | None = None
        self.settlement: dict[str, Any] | None = None
        self.in_batch: str | None = None  # the settlement batch in flight that carries this receipt
        self.check: dict[str, Any] | None = None  # what the verifier needs (private: ids are text)
        self.verdict: dict[str, Any] | None = None  # DESIGN 1.6: public, hashes only
        self.forfeit: dict[str, Any] | None = None  # the reward went to the treasury, and why

    @property
    def price_terms(self) -> PriceTerms:
        return PriceTerms(**self.terms)

    @property
    def is_ended(self) -> bool:
        return self.outcome is not None

    @property
    def served_by(self) -> str | None:
        return self.attempts[-1]["served_by"] if self.attempts else None

    @property
    def worker(self) -> str | None:
        return self.attempts[-1]["worker"] if self.attempts else None

    @event("Assigned", topic="basis:Job.Assigned.v1")
    def assign(self, served_by: str, worker: str | None) -> None:
        if self.is_ended:
            raise InvalidTransition("an ended job cannot be assigned")
        if served_by not in ("contributor", "gateway") or (served_by == "gateway") != (worker is None):
            raise InvalidTransition("a contributor job names its worker; a gateway job names none")
        self.attempts.append({"served_by": served_by, "worker": worker.lower() if worker else None})
        self.status = "assigned"

    @event("Ended", topic="basis:Job.Ended.v1")
    def end(self, outcome: str, output_tokens: int, finish_reason: str | None, reason: str | None,
            worker_usage: dict[str, int] | None, output_text: str | None,
            served_by: str | None = None, worker: str | None = None) -> None:
        """completed, failed or cancelled; output tokens are the gateway's own count (DESIGN 1.3).

        ``worker_usage`` is the worker's self-report, kept for audit and never used for money.
        ``output_text`` is kept so an idempotent repeat returns the same completion.
        ``served_by``/``worker``: who served, as the ending side knows it (None: not said, as in
        events stored before it was recorded). It must be the last recorded attempt: the receipt
        pays that attempt's worker, so an end that names another one is refused, never paid.
        """
        if self.is_ended:
            raise InvalidTransition(f"job already {self.outcome}")
        if served_by is not None:
            said = (served_by, worker.lower() if worker else None)
            recorded = (self.served_by, self.worker)
            if said != recorded:
                raise AttemptMismatch(f"the job's end names {said[0]} {said[1]} but its last recorded "
                                      f"assignment is {recorded[0]} {recorded[1]}")
        if outcome not in ENDED:
            raise InvalidTransition(f"unknown outcome {outcome!r}")
        require_amount(output_tokens, "output_tokens")
        if output_tokens > self.max_output_tokens:
            raise InvalidTransition("more output tokens than the job allowed")
        if outcome == "completed" and not self.attempts:
            raise InvalidTransition("a job completes only after it was assigned")
        self.outcome = outcome
        self.status = outcome
        self.output_tokens = output_tokens
        self.finish_reason = finish_reason
        self.output_text = output_text

    @property
    def earns_receipt(self) -> bool:
        return self.outcome == "completed" or (self.outcome is not None and self.output_tokens > 0)

    @event("ReceiptIssued", topic="basis:Job.ReceiptIssued.v1")
    def issue_receipt(self, core: dict[str, Any], hash: str, signature: str, signer: str) -> None:
        if not self.earns_receipt:
            raise InvalidTransition("this job earns no receipt")
        if self.receipt is not None:
            raise InvalidTransition("a job gets exactly one receipt")
        self.receipt = {"core": core, "hash": hash, "signature": signature, "signer": signer}
        self.status = "receipted"

    @event("Batched", topic="basis:Job.Batched.v1")
    def batch(self, batch_id: str) -> None:
        """Proposed for settlement in ``batch_id``: from here until that batch is confirmed or
        abandoned its reward is committed to the batch's rewards root, so it can no longer be
        forfeited (a suspension meanwhile leaves it to the batch)."""
        if self.receipt is None or self.settlement is not None:
            raise InvalidTransition("only an issued, unsettled receipt can be batched")
        if self.in_batch is not None:
            raise InvalidTransition(f"this receipt is already in batch {self.in_batch}")
        self.in_batch = batch_id

    @event("Unbatched", topic="basis:Job.Unbatched.v1")
    def unbatch(self, batch_id: str) -> None:
        """Its batch was abandoned: the receipt is unsettled and outside any batch again."""
        if self.in_batch != batch_id:
            raise InvalidTransition(f"this receipt is not in batch {batch_id}")
        self.in_batch = None

    @event("Settled", topic="basis:Job.Settled.v1")
    def mark_settled(self, batch_id: str, leaf_index: int, tx_hash: str, chain_id: int) -> None:
        if self.receipt is None or self.settlement is not None:
            raise InvalidTransition("only an issued, unsettled receipt can be settled")
        if self.in_batch not in (None, batch_id):  # None: batched before batches were recorded on jobs
            raise InvalidTransition(f"this receipt is in batch {self.in_batch}, not {batch_id}")
        self.in_batch = None
        self.settlement = {"batch_id": batch_id, "leaf_index": leaf_index, "tx_hash": tx_hash,
                           "chain_id": chain_id}
        self.status = "settled"

    # -- verification (DESIGN 1.6; commands in basis.ledger.verdicts) ---------------------------
    @property
    def awaiting_verdict(self) -> bool:
        """Selected for a check and not yet judged: held out of settlement until it is."""
        return self.check is not None and self.verdict is None

    @property
    def reward_forfeited(self) -> bool:
        return self.forfeit is not None

    @event("CheckRequested", topic="basis:Job.CheckRequested.v1")
    def request_check(self, reason: str, prompt_ids: list[int], output_ids: list[int], temperature: float,
                      top_p: float, ids_sha256: str, reported_logprobs: list[float] | None = None) -> None:
        """Chosen for verification after it ended. The ids are what the verifier re-scores; they are
        as sensitive as the text, so views and receipts only ever show ``ids_sha256``."""
        if self.receipt is None or self.served_by != "contributor":
            raise InvalidTransition("only a contributor job with a receipt is checked")
        if self.check is not None:
            raise InvalidTransition("this job was already selected for a check")
        if self.settlement is not None:
            raise InvalidTransition("a settled job is no longer checked")
        self.check = {"reason": reason, "prompt_ids": list(prompt_ids), "output_ids": list(output_ids),
                      "temperature": temperature, "top_p": top_p, "ids_sha256": ids_sha256}
        if reported_logprobs is not None:  # the worker's logprobs of the output (issue 14), compared on check
            self.check["reported_logprobs"] = list(reported_logprobs)

    @event("Verified", topic="basis:Job.Verified.v1")
    def record_verdict(self, verdict: str, method: str, tokens: int, statistic: dict[str, Any], evidence: float,
                       job_threshold: float, calibration: dict[str, float], ids_sha256: str,
                       tail_alpha: float | None = None, repeat_alpha: float | None = None,
                       temperature_alpha: float | None = None) -> None:
        """The verifier's verdict, with everything needed to re-decide it (audit): the statistic,
        the threshold and the binding's calibration it was judged against."""
        if self.check is None:
            raise InvalidTransition("a verdict needs a check request")
        if self.verdict is not None:
            raise InvalidTransition("a job gets exactly one verdict")
        if verdict not in ("passed", "failed"):
            raise InvalidTransition(f"unknown verdict {verdict!r}")
        if ids_sha256 != self.check["ids_sha256"]:
            raise InvalidTransition("the verdict is about other ids than the ones checked")
        self.verdict = {"verdict": verdict, "method": method, "tokens": tokens, "statistic": dict(statistic),
                        "evidence": evidence, "job_threshold": job_threshold, "calibration": dict(calibration),
                        "ids_sha256": ids_sha256, "tail_alpha": tail_alpha,
                        "repeat_alpha": repeat_alpha, "temperature_alpha": temperature_alpha}

    @event("RewardForfeited", topic="basis:Job.RewardForfeited.v1")
    def forfeit_reward(self, reason: str, evidence: list[str], amount: int) -> None:
        """The reward (``amount``, the receipt's own) goes to the treasury instead of the worker;
        the receipt core is unchanged."""
        if self.receipt is None or self.settlement is not None:
            raise InvalidTransition("only an issued, unsettled receipt's reward can be forfeited")
        if self.forfeit is not None:
            raise InvalidTransition("this reward was already forfeited")
        if self.in_batch is not None:
            raise InvalidTransition(f"this reward is committed to settlement batch {self.in_batch} in flight; "
                                    "it can be forfeited only if that batch is abandoned")
        if amount != int(self.receipt["core"]["reward"]):
            raise InvalidTransition("a forfeit names the receipt's own reward")
        self.forfeit = {"reason": reason, "evidence": list(evidence), "amount": amount}


class IdempotencyRecord(Aggregate):
    """Index: (account, Idempotency-Key) -> job and the hash of the request body."""

    TOPIC = "basis:IdempotencyRecord"

    class Created(Aggregate.Created):
        TOPIC = "basis:IdempotencyRecord.Created.v1"

    @staticmethod
    def create_id(account_id: UUID, key: str) -> UUID:
        return ids.idempotency_id(account_id, key)

    @event("Recorded", topic="basis:IdempotencyRecord.Recorded.v1")
    def __init__(self, account_id: UUID, key: str, job_id: UUID, request_hash: str) -> None:
        self.account_id = account_id
        self.key = key
        self.job_id = job_id
        self.request_hash = request_hash

    @event("Rebound", topic="basis:IdempotencyRecord.Rebound.v1")
    def rebind(self, job_id: UUID) -> None:
        """The first job with this key ended charging nothing; the key now names its retry."""
        self.job_id = job_id
