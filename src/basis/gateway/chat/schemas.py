"""The chat completions request, validated as OpenAI does (and refusing what Basis can't honour)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from basis.protocol import MAX_TOP_LOGPROBS

MAX_MESSAGES = 1024
MAX_STOP = 4


def stop_sequences(v: str | list[str] | None) -> list[str] | None:
    """``stop`` as chat and completions take it: one string or up to MAX_STOP non-empty ones."""
    if v is None:
        return None
    stops = [v] if isinstance(v, str) else v
    if len(stops) > MAX_STOP:
        raise ValueError(f"at most {MAX_STOP} stop sequences")
    if any(not s for s in stops):
        raise ValueError("stop sequences must be non-empty")
    return stops or None


def lone_surrogate_path(body: Any) -> str | None:
    """The dotted path (``messages.0.content``) of the first string, key or value, that holds a
    lone UTF-16 surrogate: JSON's ``\\ud800`` escapes decode to one, and it is not valid Unicode
    (it cannot be encoded, tokenized or sent on). None when every string is well formed."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(body, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return ".".join(path) or "body"
        elif isinstance(value, dict):
            for k, v in reversed(list(value.items())):
                stack.append((v, (*path, str(k))))
                stack.append((k, path))  # a bad key is reported at its parent
        elif isinstance(value, list):
            stack.extend((v, (*path, str(i))) for i, v in reversed(list(enumerate(value))))
    return None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    # "tool" results and assistant "tool_calls" are rendered by basis.gateway.chat.structured.
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    # Unknown OpenAI parameters are accepted and ignored, as OpenAI-compatible servers do;
    # the ones that would change the result and are not supported are refused below.
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str] | None:
        return stop_sequences(v)

    def unsupported(self) -> tuple[str, str] | None:
        """(param, message) for a parameter whose effect this server cannot honour."""
        if self.n not in (None, 1):
            return "n", "Only n=1 is supported."
        # response_format, tools and tool_choice: basis.gateway.chat.structured.constraint_for
        return None
