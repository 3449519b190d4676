"""The legacy completions request, validated as OpenAI does (and refusing what Basis can't honour)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from basis.gateway.chat.schemas import StreamOptions, stop_sequences

MAX_JOBS = 16  # prompts x n in one request: each is a job with its own reservation and receipt
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint (chat's is the model's limit)

PromptInput = StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]


class CompletionRequest(BaseModel):
    # Unknown OpenAI parameters are accepted and ignored, as on chat; the ones that would change
    # the result and are not supported are refused by ``unsupported``.
    model_config = ConfigDict(extra="allow")

    model: str
    prompt: PromptInput
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(default=None, ge=1, le=MAX_JOBS)
    best_of: int | None = Field(default=None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    echo: bool | None = False
    logprobs: int | None = Field(default=None, ge=0, le=5)
    suffix: str | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str] | None:
        return stop_sequences(v)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: Any) -> Any:
        if isinstance(v, list) and (not v or any(isinstance(p, list) and not p for p in v)):
            raise ValueError("a prompt must not be empty")
        if isinstance(v, list) and isinstance(v[0], list | str) and len(v) > MAX_JOBS:
            raise ValueError(f"at most {MAX_JOBS} prompts in one request")
        return v

    def prompts(self) -> list[str | list[int]]:
        """Each prompt as text or as token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]

    def unsupported(self) -> tuple[str, str] | None:
        """(param, message) for a parameter whose effect this server cannot honour."""
        if self.logprobs is not None and self.echo:
            return "echo", ("echo with logprobs would need the prompt tokens' logprobs, which workers do not report; "
                            "ask for echo or logprobs, not both.")
        if self.best_of not in (None, 1, self.n or 1):
            return "best_of", "best_of is not supported (use n: each choice is its own job and receipt)."
        if self.suffix:
            return "suffix", "suffix (insertion) is not supported."
        extra: dict[str, Any] = self.model_extra or {}
        if extra.get("logit_bias"):
            return "logit_bias", "logit_bias is not supported."
        return None
