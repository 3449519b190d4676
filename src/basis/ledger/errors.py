"""Domain errors of the ledger: each one is a refusal that recorded nothing."""

from eventsourcing.persistence import IntegrityError


class LedgerError(Exception):
    code = "ledger_error"


class InsufficientCredit(LedgerError):
    code = "insufficient_credit"


class KeyCapReached(LedgerError):
    """The request's worst case does not fit what is left of its API key's spend cap."""

    code = "key_cap_reached"


class KeyRevoked(LedgerError):
    code = "api_key_revoked"


class UnknownApiKey(LedgerError):
    code = "unknown_api_key"


class DuplicateCredit(LedgerError):
    code = "duplicate_credit"


class UnknownAccount(LedgerError):
    code = "unknown_account"


class AccountExists(LedgerError):
    code = "account_exists"


class UnknownJob(LedgerError):
    code = "unknown_job"


class InvalidTransition(LedgerError):
    code = "invalid_transition"


class AttemptMismatch(InvalidTransition):
    """A job's end names a serving side or worker other than its last recorded assignment."""

    code = "attempt_mismatch"


class IdempotencyConflict(LedgerError):
    """Same Idempotency-Key with another body, or while the first request still runs."""

    code = "idempotency_conflict"

    def __init__(self, message: str, job_id: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id

    def __reduce__(self) -> tuple[type, tuple[str, str | None]]:  # crosses from a writer process
        return type(self), (self.args[0], self.job_id)


class IdempotentReplay(LedgerError):
    """Same Idempotency-Key and same body as a finished job: the caller returns that job."""

    code = "idempotent_replay"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"replay of job {job_id}")
        self.job_id = job_id

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return type(self), (self.job_id,)


class LedgerUnavailable(LedgerError):
    """The writer was lost before it answered: nothing of this command is relied on."""

    code = "ledger_unavailable"


class LedgerBusy(LedgerUnavailable, IntegrityError):
    """Other writers kept winning the same aggregate until the command gave up: nothing of it was
    saved and a retry may land (the gateway answers 503 with ``x-should-retry: true``)."""

    code = "ledger_busy"
