"""Worker <-> gateway WebSocket protocol, versions 1 to 3 (docs/worker-protocol.md).

Version 2 adds the gateway's ``receipt`` and ``verdict`` frames (DESIGN 1.7) and the worker's
``receipt_ack``; version 3 adds log-probabilities (``Job.logprobs``/``top_logprobs``, answered in
``Tokens.logprobs``). Everything else is version 1 unchanged, and older workers are still served
(a job asking for logprobs is only ever sent to a version-3 worker).

Every frame is one JSON object in a WebSocket *text* frame with a ``type`` discriminator.
This module is shared by the gateway and the contributor worker and imports neither.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

PROTOCOL_VERSION = 3
SUPPORTED_VERSIONS = frozenset({1, 2, 3})
RECEIPTS_VERSION = 2  # the first version whose workers receive receipt and verdict frames
LOGPROBS_VERSION = 3  # the first version whose workers report log-probabilities
MAX_TOP_LOGPROBS = 20  # alternatives per token a job may ask for (OpenAI's limit)
DEFAULT_HEARTBEAT_INTERVAL = 10.0  # seconds; a peer silent for 3 intervals is gone
FEATURE_JSON_SCHEMA = "json_schema"  # the worker decodes under Job.json_schema
FEATURE_LOGPROBS = "logprobs"  # implied by protocol version >= LOGPROBS_VERSION (never advertised)


def version_features(protocol_version: int) -> frozenset[str]:
    """The job features a protocol version implies (on top of those its hello lists)."""
    return frozenset({FEATURE_LOGPROBS}) if protocol_version >= LOGPROBS_VERSION else frozenset()


class _Msg(BaseModel):
    # Unknown fields are ignored so that a v1 peer can read frames from a newer minor revision.
    model_config = ConfigDict(extra="ignore", frozen=True)


# ---- gateway -> worker ------------------------------------------------------------------


class Challenge(_Msg):
    type: Literal["challenge"] = "challenge"
    gateway_address: str
    chain_id: int
    nonce: str
    expires_at: int  # unix seconds
    protocol_version: int = PROTOCOL_VERSION
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL


class Welcome(_Msg):
    type: Literal["welcome"] = "welcome"
    worker_address: str
    protocol_version: int = PROTOCOL_VERSION
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    models: list[str] = Field(default_factory=list)


class Reject(_Msg):
    type: Literal["reject"] = "reject"
    code: str  # bad_signature | expired | wrong_gateway | unsupported_version | binding_mismatch | ...
    message: str = ""


class HeartbeatAck(_Msg):
    type: Literal["heartbeat_ack"] = "heartbeat_ack"
    active_jobs: int = 0


class Job(_Msg):
    type: Literal["job"] = "job"
    job_id: str
    model: str
    prompt_ids: list[int]
    max_tokens: int = Field(ge=1)
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] | None = None  # hint only: the gateway applies stop sequences itself
    stop_ids: list[int] | None = None
    # Constrained decoding: the output must be JSON valid against this schema (structured output,
    # tool calls). Sent only to workers whose hello advertised the "json_schema" feature; the
    # gateway validates the final text, and output that breaks it fails the job (no reward).
    json_schema: dict | None = None
    # v3: report, with every output token, its log-probability and (top_logprobs > 0) that many
    # most likely alternatives, all under the model's own distribution (module ``TokenLogprob``).
    logprobs: bool = False
    top_logprobs: int = Field(default=0, ge=0, le=MAX_TOP_LOGPROBS)


class Cancel(_Msg):
    type: Literal["cancel"] = "cancel"
    job_id: str


class ReceiptFrame(_Msg):
    """v2: the signed receipt of a job this worker served (DESIGN 1.2), sent once the job's end is
    durable in the gateway's ledger. The worker verifies it, stores it, then acknowledges it."""

    type: Literal["receipt"] = "receipt"
    job_id: str
    core: dict[str, Any]
    hash: str
    signature: str


class VerdictFrame(_Msg):
    """v2: the verification verdict of a job this worker served (DESIGN 1.6), once recorded."""

    type: Literal["verdict"] = "verdict"
    job_id: str
    hash: str  # the receipt hash of the judged job
    verdict: Literal["passed", "failed"]
    method: str = ""
    tokens: int = 0  # tokens checked
    statistic: dict[str, Any] = Field(default_factory=dict)
    reward_forfeited: bool = False
    ids_sha256: str | None = None  # SHA-256 of the checked token ids (the evidence's fingerprint)


# ---- worker -> gateway ------------------------------------------------------------------


class ReceiptAck(_Msg):
    """v2: the worker durably stored (``ok``) or refused (``error`` says why) a receipt or verdict."""

    type: Literal["receipt_ack"] = "receipt_ack"
    kind: Literal["receipt", "verdict"] = "receipt"
    hash: str
    ok: bool = True
    error: str = ""


class ModelOffer(_Msg):
    model: str
    binding_hash: str
    capacity: int = Field(ge=1)


class Hello(_Msg):
    type: Literal["hello"] = "hello"
    protocol_version: int
    worker_address: str
    signature: str
    models: list[ModelOffer]
    software: str = ""
    # Optional job features this worker honours (FEATURE_JSON_SCHEMA); a worker that lists none
    # is never sent a job that needs one.
    features: list[str] = Field(default_factory=list)


class Heartbeat(_Msg):
    type: Literal["heartbeat"] = "heartbeat"
    active_jobs: int = 0


class TokenLogprob(_Msg):
    """v3: one output token's log-probability, and the job's ``top_logprobs`` most likely
    alternatives as ``[id, logprob]`` pairs (most likely first; the chosen token may be among
    them). The distribution is the model's own: the raw logits at that position, log-softmaxed,
    before temperature, top_p or a JSON-schema grammar act (OpenAI's and vLLM's convention).
    These are the worker's report; the verifier compares them with its reference on checked jobs."""

    logprob: float
    top: list[tuple[int, float]] = Field(default_factory=list)


class Tokens(_Msg):
    type: Literal["tokens"] = "tokens"
    job_id: str
    ids: list[int]
    text: str = ""
    # v3, only for a job with ``logprobs``: one entry per id, in order.
    logprobs: list[TokenLogprob] | None = None


class Usage(_Msg):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Done(_Msg):
    type: Literal["done"] = "done"
    job_id: str
    finish_reason: Literal["stop", "length"]
    usage: Usage = Field(default_factory=Usage)  # self-report, recorded for audit, never trusted
    # Final flush of the worker's UTF-8 decoder: "" normally, U+FFFD when the last ids ended
    # inside an incomplete multi-byte character.
    text: str = ""


class Error(_Msg):
    type: Literal["error"] = "error"
    job_id: str
    message: str = ""


GatewayMessage = Annotated[
    Challenge | Welcome | Reject | HeartbeatAck | Job | Cancel | ReceiptFrame | VerdictFrame,
    Field(discriminator="type"),
]
WorkerMessage = Annotated[Hello | Heartbeat | Tokens | Done | Error | ReceiptAck, Field(discriminator="type")]
AnyMessage = Annotated[
    Challenge | Welcome | Reject | HeartbeatAck | Job | Cancel | ReceiptFrame | VerdictFrame | Hello | Heartbeat
    | Tokens | Done | Error | ReceiptAck,
    Field(discriminator="type"),
]

_gateway_adapter: TypeAdapter = TypeAdapter(GatewayMessage)
_worker_adapter: TypeAdapter = TypeAdapter(WorkerMessage)
_any_adapter: TypeAdapter = TypeAdapter(AnyMessage)


def parse_gateway_message(raw: str | bytes):
    """Parse a frame sent by the gateway (raises pydantic.ValidationError on bad input)."""
    return _gateway_adapter.validate_json(raw)


def parse_worker_message(raw: str | bytes):
    """Parse a frame sent by a worker (raises pydantic.ValidationError on bad input)."""
    return _worker_adapter.validate_json(raw)


def parse_message(raw: str | bytes):
    return _any_adapter.validate_json(raw)


def dump(msg: BaseModel) -> str:
    """Serialise a message to the JSON text of one frame."""
    return msg.model_dump_json()
