"""Worker network, gateway side: WebSocket endpoint, registry, routing, dispatch."""

from basis.gateway.workers.service import (
    JobStream,
    NoWorkerAvailable,
    WorkerFailed,
    WorkerFailedBeforeFirstToken,
    WorkerHub,
    WorkerInfo,
    WorkerJobError,
)

__all__ = [
    "JobStream",
    "NoWorkerAvailable",
    "WorkerFailed",
    "WorkerFailedBeforeFirstToken",
    "WorkerHub",
    "WorkerInfo",
    "WorkerJobError",
]
