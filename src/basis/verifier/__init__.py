"""The operator's trusted verifier (DESIGN 1.6): re-scores the jobs selected for a check against
the binding's reference model and submits each verdict as a ledger command.

It runs inside the gateway (``VerifierThread``: its own thread and event loop, off the serving
loop) or as its own process (``basis verifier run``), reading pending checks from the shared store.
"""

from basis.verifier.policy import policy_from_env, reference_models
from basis.verifier.service import Verifier, VerifierThread

__all__ = ["Verifier", "VerifierThread", "policy_from_env", "reference_models"]
