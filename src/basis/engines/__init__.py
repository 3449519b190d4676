"""Engines: one small interface (base.Engine) and three implementations.

- ``llama_cpp.LlamaCppEngine``: CPU, llama-cpp-python (development, tests, gateway-served jobs)
- ``sglang.SGLangEngine``: GPU, talks to an sglang HTTP server
- ``instant.InstantEngine``: benchmark only, canned tokens instantly

Implementations are imported lazily so that importing this package costs nothing.
"""

from basis.engines.base import Engine, EngineError, FinishReason, GenerateRequest, TokenStep

__all__ = ["Engine", "EngineError", "FinishReason", "GenerateRequest", "TokenStep"]
