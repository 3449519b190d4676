"""Prometheus metrics of a gateway process (exposed at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter("basis_requests_total", "HTTP requests by route and status code.", ["route", "status"],
                   registry=REGISTRY)
LATENCY = Histogram("basis_request_latency_seconds", "Request latency by route.", ["route"], registry=REGISTRY,
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
TTFT = Histogram("basis_time_to_first_token_seconds", "Time to first accepted token by model.", ["model"],
                 registry=REGISTRY, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
TOKENS = Counter("basis_tokens_total", "Server-counted tokens by model and kind (prompt|output).",
                 ["model", "kind"], registry=REGISTRY)
JOBS = Counter("basis_jobs_total", "Finished jobs by model, outcome and who served them.",
               ["model", "outcome", "served_by"], registry=REGISTRY)
DEADLINE_MISSES = Counter("basis_job_deadline_misses_total",
                          "Jobs a contributor lost to a deadline, by worker, model and kind "
                          "(first_token|stall|total).", ["worker", "model", "kind"], registry=REGISTRY)
ACTIVE_WORKERS = Gauge("basis_active_workers", "Contributor workers connected and authenticated.",
                       registry=REGISTRY)
LEDGER_LAG = Gauge("basis_ledger_lag_events", "Events recorded but not yet in the projections.", registry=REGISTRY)
UNSETTLED = Gauge("basis_unsettled_charged_base_units", "Charged base units in receipts not yet settled.",
                  registry=REGISTRY)

# Settlement and the chain indexer (set by their threads as their state changes).
SETTLEMENT_FAILURES = Counter("basis_settlement_failures_total", "Failed settlement ticks by error type.",
                              ["error"], registry=REGISTRY)
SETTLEMENT_CONSECUTIVE_FAILURES = Gauge("basis_settlement_consecutive_failures",
                                        "Settlement ticks failed in a row (0: the last one succeeded).",
                                        registry=REGISTRY)
SETTLEMENT_HALTED = Gauge("basis_settlement_halted", "1 while settlement is stopped because the chain lost a batch "
                          "the ledger confirmed (basis settle repost).", registry=REGISTRY)
SETTLEMENT_NEXT_ATTEMPT = Gauge("basis_settlement_next_attempt_timestamp_seconds",
                                "Unix time of the next settlement attempt (after a back-off when failing).",
                                registry=REGISTRY)
SETTLEMENT_LAST_SUCCESS = Gauge("basis_settlement_last_success_timestamp_seconds",
                                "Unix time of the last settlement tick that succeeded.", registry=REGISTRY)
CHAIN_INDEXER_REORG = Gauge("basis_chain_indexer_reorg", "1 while the chain indexer is stopped because blocks it "
                            "already indexed were reorganised.", registry=REGISTRY)
CHAIN_INDEXER_FAILURES = Gauge("basis_chain_indexer_consecutive_failures", "Chain indexer passes failed in a row.",
                               registry=REGISTRY)
# Verification (DESIGN 1.6)
VERDICTS = Counter("basis_verdicts_total", "Verdicts recorded by the verifier, by model and verdict.",
                   ["model", "verdict"], registry=REGISTRY)
SUSPENSIONS = Counter("basis_worker_suspensions_total", "Workers suspended, by who suspended them.", ["by"],
                      registry=REGISTRY)
VERIFIER_PENDING = Gauge("basis_verifier_pending_jobs", "Jobs selected for a check and still awaiting a verdict.",
                         registry=REGISTRY)
VERIFIER_LAG = Gauge("basis_verifier_lag_seconds", "Age of the oldest job awaiting its verdict (0: none).",
                     registry=REGISTRY)
VERIFIER_ERRORS = Counter("basis_verifier_errors_total", "Checks that could not be scored (the job stays held).",
                          registry=REGISTRY)
