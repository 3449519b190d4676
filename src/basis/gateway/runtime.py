"""Everything a gateway process holds: ledger, views, bindings, worker hub, own engine, chain facts.

Routers reach it as ``request.app.state.runtime``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from uuid import UUID

from basis.config import Settings
from basis.engines.base import Engine
from basis.gateway.auth import KeyRateLimiter, RateLimiter
from basis.gateway.chat.deadlines import DeadlinePolicy
from basis.gateway.interrupted import end_interrupted_jobs
from basis.gateway.node_lock import NodeLock
from basis.gateway.workers import WorkerHub
from basis.gateway.workers.receipts import relay_receipts
from basis.ledger.projections import Projector, ViewReader
from basis.ledger.projections.process import ProjectorProcess
from basis.ledger.service import Ledger
from basis.ledger.writer_process import LedgerWriterProcess, LedgerWriterThread
from basis.models import ModelBinding, load_bindings
from basis.observability import metrics
from basis.protocol import PROTOCOL_VERSION

log = logging.getLogger("basis.gateway")
LOCAL_CHAIN_ID = 31337


@dataclass
class GatewayOptions:
    engine: str = "none"  # the gateway's own engine: none | llama-cpp | instant
    engine_models: list[str] | None = None  # models it serves itself (default: all)
    n_threads: int | None = None
    n_ctx: int = 4096
    heartbeat_interval: float = 10.0
    rate_per_second: float = float(os.environ.get("BASIS_RATE_LIMIT_RPS", "0"))  # 0: off
    rate_burst: int = 100
    max_body_bytes: int = 4 * 1024 * 1024
    # Where job commands commit: "process" (a writer process: its CPU off the loop's GIL) or
    # "thread" (the ledger's writer thread in this process).
    ledger_writer: str = os.environ.get("BASIS_LEDGER_WRITER", "process")
    # How long a contributor may take to its first token, between tokens and in all (published).
    deadlines: DeadlinePolicy = field(default_factory=DeadlinePolicy.from_env)
    # Verification (DESIGN 1.6): "pool" checks in this gateway (a thread off the serving loop),
    # "external" leaves the checks to `basis verifier run`, "off" publishes it as disabled.
    # `basis serve` and `basis up` default to "pool"; a runtime built in code is off unless asked.
    verifier: str = "off"


class GatewayRuntime:
    def __init__(self, settings: Settings | None = None, options: GatewayOptions | None = None,
                 *, ledger: Ledger | None = None, engine: Engine | None = None) -> None:
        self.settings = settings or Settings()
        self.options = options or GatewayOptions()
        self.settings.ensure_home()
        self.settings.persist_node_id()
        # Before anything opens the store: one live gateway per node id (NodeIdInUse names the other).
        self.node_lock = NodeLock.acquire(self.settings)
        self.ledger = ledger or Ledger(self.settings)
        self.pricing = self.ledger.pricing
        self.bindings: dict[str, ModelBinding] = load_bindings(list(self.pricing.models.values()))
        self.deployment = self._load_deployment()
        self.chain_id = int(self.deployment["chain_id"]) if self.deployment else int(
            os.environ.get("BASIS_CHAIN_ID", LOCAL_CHAIN_ID))
        self.web3: Any = None
        try:
            self._setup_verification()
        except BaseException:  # e.g. a verifier sglang server refused at start-up: nothing stays held
            if ledger is None:
                self.ledger.close()
            self.node_lock.release()
            raise
        self.hub = WorkerHub(
            gateway_address=self.ledger.signer.address,
            chain_id=self.chain_id,
            binding_hashes={m: b.binding_hash for m, b in self.bindings.items()},
            heartbeat_interval=self.options.heartbeat_interval,
            on_worker_online=self._worker_online,
            on_worker_offline=self._worker_offline,
        )
        self.hub.is_suspended = self.is_suspended
        self.engine = engine or self._make_engine()
        served = self.options.engine_models
        self.engine_models: set[str] = set(self.engine.models if self.engine else ()) & set(
            served if served is not None else self.bindings)
        self.rate_limiter = RateLimiter(self.options.rate_per_second, self.options.rate_burst)
        self.key_limiter = KeyRateLimiter()  # each key's own limits, counted on this gateway
        self.projector = Projector(self.ledger.store, self.settings.views_path)  # start-up catch-up
        self.projector_process: ProjectorProcess | None = None
        if self.options.ledger_writer not in ("process", "thread"):
            raise ValueError(f"unknown ledger writer {self.options.ledger_writer!r} (process, thread)")
        # Job commands (accept, assign, finish, worker registration); the rest (settlement,
        # credits) stays on the ledger's own writer thread: rare, and the store arbitrates.
        self.job_writer: LedgerWriterProcess | LedgerWriterThread = (
            LedgerWriterProcess(self.ledger.spawn_args()) if self.options.ledger_writer == "process"
            else LedgerWriterThread(self.ledger))
        relay_receipts(self.job_writer, self.hub)  # protocol v2: each durable receipt to its worker
        self._readers = threading.local()
        self.background: list[Any] = []  # things with .stop() (indexers, schedulers) the app stops

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """On the event loop that will serve (the job writer attaches to it)."""
        self.projector.catch_up()
        reader = ViewReader(self.settings.views_path)
        try:
            interrupted = reader.open_jobs(self.settings.node_id)
        finally:
            reader.close()
        if interrupted:
            n = end_interrupted_jobs(self.ledger, [UUID(j) for j in interrupted])
            log.warning("ended %d job(s) interrupted by the last stop; their reservations are released", n)
        # From here on the views are projected in a process of their own (off this GIL).
        self.projector.db.close()
        self.projector_process = ProjectorProcess(self.settings.event_store_env(), self.settings.views_path)
        self.projector_process.start()
        self.ledger.writer.add_commit_listener(self.projector_process.wake)
        self.job_writer.start()
        self.job_writer.add_commit_listener(self.projector_process.wake)
        if self.verifier_thread is not None:
            self.verifier_thread.start()
            self.background.append(self.verifier_thread)
        for task, interval in getattr(self, "_chain_tasks", []):
            if interval is None:
                task.start()
            else:
                task.sync()  # credit deposits made while the gateway was down before serving
                task.start(interval=interval)
            self.background.append(task)

    async def stop(self) -> None:
        for thing in reversed(self.background):
            try:
                res = thing.stop()
                if hasattr(res, "__await__"):
                    await res
            except Exception:
                log.exception("stopping %r failed", thing)
        await self.hub.close()
        if self.engine is not None:
            await self.engine.aclose()
        self.job_writer.close()
        if self.projector_process is not None:
            self.projector_process.stop()
        self.ledger.close()
        self.node_lock.release()

    def _make_engine(self) -> Engine | None:
        kind = self.options.engine
        if kind == "none":
            return None
        if kind == "llama-cpp":
            from basis.engines.llama_cpp import LlamaCppEngine

            models = self.options.engine_models or list(self.bindings)
            return LlamaCppEngine({m: self.bindings[m] for m in models}, n_ctx=self.options.n_ctx,
                                  n_threads=self.options.n_threads)
        if kind == "instant":
            from basis.engines.instant import InstantEngine

            models = self.options.engine_models or list(self.bindings)
            return InstantEngine({m: self.bindings[m] for m in models})
        raise ValueError(f"unknown engine {kind!r} (none, llama-cpp, instant)")

    def _load_deployment(self) -> dict[str, Any] | None:
        path = Path(os.environ.get("BASIS_MANIFEST") or self.settings.home / "deployment.json")
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def enable_chain(self, rpc_url: str, *, settle_interval: float | None = 30.0, index_interval: float = 1.0,
                     confirmations: int = 0) -> None:
        """Follow the vault (deposits, withdrawals, claims) and settle batches on a schedule."""
        from basis.settlement.chain import connect
        from basis.settlement.deposits import ChainIndexer
        from basis.settlement.scheduler import SettlementScheduler

        if self.deployment is None:
            raise RuntimeError("no deployment manifest: run `basis contracts deploy` first (the vault is pending)")
        self.web3 = connect(rpc_url)
        self.indexer = ChainIndexer(self.ledger, self.web3, self.deployment, confirmations=confirmations)
        self._chain_tasks = [(self.indexer, index_interval)]
        if settle_interval:
            self.scheduler = SettlementScheduler(self.ledger, self.web3, self.deployment,
                                                 self.settings.settlement_key(), reader=self.reader,
                                                 interval=settle_interval)
            self._chain_tasks.append((self.scheduler, None))

    def settlement_status(self) -> dict[str, Any] | None:
        """The settlement thread's and the chain indexer's state; None without ``--rpc``."""
        if self.web3 is None:
            return None
        scheduler = getattr(self, "scheduler", None)
        return {"settlement": scheduler.state() if scheduler is not None else {"status": "off"},
                "indexer": self.indexer.state()}
    # -- verification -------------------------------------------------------------------------
    def _setup_verification(self) -> None:
        from basis.verifier import Verifier, VerifierThread
        from basis.verifier.policy import MODES, can_score_locally, load_factory, policy_from_env
        from basis.verifier.sglang import sglang_scorers_from_env

        mode = self.options.verifier
        if mode not in MODES:
            raise ValueError(f"unknown verifier mode {mode!r} ({', '.join(MODES)})")
        self.verification, self.verified_models = policy_from_env(self.bindings, mode)
        scorer_spec = os.environ.get("BASIS_VERIFIER_SCORER")
        sglang = None
        if mode == "pool" and self.verification.enabled:
            # BASIS_VERIFIER_SGLANG_URL: as `basis verifier run --sglang-url` (SGLangOptionError, a ValueError)
            sglang = sglang_scorers_from_env(self.bindings)
            if sglang is not None and scorer_spec:
                raise ValueError("BASIS_VERIFIER_SCORER and BASIS_VERIFIER_SGLANG_URL both choose the scorer: set one")
            if sglang is not None and not can_score_locally():  # the other models have no scorer here
                self.verified_models = [m for m in self.verified_models if m in sglang.by_model]
                self.verification = replace(self.verification, enabled=bool(self.verified_models))
            if sglang is not None:  # as `basis verifier run`: each server up, recent enough, serving the binding
                sglang.check_blocking()
        # The writer (thread or process) selects jobs in finish_job: it needs the policy.
        self.ledger.verification = self.verification
        self.ledger.verified_models = list(self.verified_models)
        self.verifier_thread: VerifierThread | None = None
        self._recent_suspensions: set[str] = set()
        if mode == "pool" and self.verification.enabled:
            factory = sglang or load_factory(scorer_spec, self.bindings)
            if sglang is not None:
                log.info("verifier scoring: %s", sglang.describe(self.verified_models))
            self.verifier_thread = VerifierThread(Verifier(self.ledger, self.settings.views_path, self.verification,
                                                           factory, on_suspended=self._suspended,
                                                           on_suspensions=self._suspensions,
                                                           on_verdict=self._verdict_recorded),
                                                  aclose=sglang.aclose if sglang is not None else None)

    def _verdict_recorded(self, receipt: dict[str, Any], verdict: dict[str, Any]) -> None:
        """Protocol v2 (DESIGN 1.7): the worker is sent the verdict on its job (from the verifier's thread)."""
        from basis.gateway.workers.receipts import notify_verdict

        notify_verdict(self.hub, receipt, verdict)

    def _suspended(self, address: str) -> None:
        self._recent_suspensions.add(address.lower())
        self.hub.suspended = self.hub.suspended | {address.lower()}  # one assignment: atomic for the loop

    def _suspensions(self, addresses: set[str]) -> None:
        """The views' suspended workers (the operator's suspensions from the CLI too); the one just
        made by this verifier stays until the views show it."""
        self._recent_suspensions -= addresses  # the views show these now
        self.hub.suspended = addresses | self._recent_suspensions

    def is_suspended(self, address: str) -> bool:
        """Straight from the worker's own stream: a suspension anywhere is seen at the next connect."""
        from eventsourcing.application import AggregateNotFoundError

        from basis.ledger.ids import worker_id

        try:
            return bool(self.ledger.get(worker_id(address)).is_suspended)
        except AggregateNotFoundError:
            return False

    def verification_status(self) -> dict[str, Any]:
        """The published policy (GET /v1/network): the rules a worker is judged by."""
        return {**self.verification.public(), "models": list(self.verified_models) if self.verification.enabled
                else []}

    # -- workers ------------------------------------------------------------------------------
    def _worker_online(self, address: str, models: dict[str, int]) -> None:
        metrics.ACTIVE_WORKERS.set(len(self.hub.workers()))
        self.job_writer.submit("register_worker", {"address": address, "models": sorted(models)})

    def _worker_offline(self, address: str) -> None:
        metrics.ACTIVE_WORKERS.set(len(self.hub.workers()))

    def online_workers(self) -> set[str]:
        return {w.address.lower() for w in self.hub.workers()}

    # -- reads ----------------------------------------------------------------------------------
    def reader(self) -> ViewReader:
        r = getattr(self._readers, "reader", None)
        if r is None:
            r = self._readers.reader = ViewReader(self.settings.views_path)
        return r

    def models_status(self) -> list[dict[str, Any]]:
        live = self.hub.live_models()
        out = []
        for model_id, spec in self.pricing.models.items():
            binding = self.bindings[model_id]
            workers = live.get(model_id, {}).get("workers", 0)
            served_here = model_id in self.engine_models
            out.append({
                "id": model_id,
                "context_window": spec.context_window,
                "max_output_tokens": spec.max_output_tokens,
                "multiplier_bps": spec.multiplier_bps,
                "status": "live" if workers or served_here else "planned",
                "workers": workers,
                "gateway_served": served_here,
                "deadlines": self.options.deadlines.describe_model(spec.context_window, spec.max_output_tokens),
                **binding.describe(),
            })
        return out

    def network_status(self) -> dict[str, Any]:
        contracts = (self.deployment or {}).get("contracts", {})

        def contract(name: str) -> dict[str, Any]:
            addr = contracts.get(name, {}).get("address")
            out: dict[str, Any] = {"status": "live" if addr else "pending", "address": addr}
            if name == "token" and addr:
                out["stand_in"] = bool(contracts[name].get("stand_in"))
            return out

        runtime_live = bool(self.hub.live_models() or self.engine_models)
        return {
            "runtime": {"status": "live" if runtime_live else "pending"},
            "token": contract("token"),
            "vault": contract("vault"),
            "distributor": contract("distributor"),
            "chain_id": self.chain_id,
            "gateway_signer": self.ledger.signer.address,
            "worker_protocol_version": PROTOCOL_VERSION,
            "job_deadlines": self.options.deadlines.describe(),
            "verification": self.verification_status(),
        }
