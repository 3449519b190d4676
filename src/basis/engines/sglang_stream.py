"""Reading one sglang ``/generate`` stream: chunks in, new token ids out, with the checks that turn
every known way of losing or inventing ids into a clean failure (see ``sglang_server``).

A chunk is ``{"text", "output_ids", "meta_info": {"finish_reason", "prompt_tokens",
"completion_tokens", ...}}``. In cumulative mode ``output_ids`` is every id so far; in incremental
mode it is the ids since the previous chunk (0.5.10+ merges queued chunks, so none is lost). The
end-of-job check compares every id received, including those the adapter filters (end-of-sequence
and stop ids), with the server's own ``meta_info.completion_tokens``: leaked prompt ids, dropped
chunks and missing ``output_ids`` all show up there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from basis.engines.base import EngineError, TokenLogprob


@dataclass
class Chunk:
    new_ids: list[int]
    text: str | None  # sglang's own text delta (only used without a binding)
    finish_kind: str | None  # "stop" | "length" (abort and errors raise)
    prompt_tokens: int | None
    completion_tokens: int | None


def parse_event(data: str) -> dict | None:
    """One SSE ``data:`` payload -> the event, or None for ``[DONE]``; error frames raise."""
    if data == "[DONE]":
        return None
    try:
        event = json.loads(data)
    except json.JSONDecodeError as exc:
        raise EngineError(f"sglang sent a malformed event: {data[:200]!r}") from exc
    if not isinstance(event, dict):
        raise EngineError(f"sglang sent a non-object event: {data[:200]!r}")
    if "error" in event:
        err = event["error"]
        msg = err.get("message") if isinstance(err, dict) else str(err)
        raise EngineError(f"sglang error: {msg}")
    return event


class StreamReader:
    """State of one stream. ``incremental`` None means the server did not say: detected from the
    second chunk (cumulative chunks hold ``completion_tokens`` ids, incremental ones fewer)."""

    def __init__(self, incremental: bool | None, *, deltas_safe: bool = True) -> None:
        self.incremental = incremental
        self.deltas_safe = deltas_safe  # False before 0.5.10: delta streams drop queued chunks
        self.received = 0  # ids received so far, filtered ones included
        self._seen_text = 0

    def read(self, event: dict) -> Chunk:
        meta = event.get("meta_info") or {}
        completion = meta.get("completion_tokens")
        raw_ids = event.get("output_ids")
        if raw_ids is None:
            if completion:  # sglang < 0.5.1 streams text only: the ids would be silently lost
                raise EngineError("sglang streamed no output_ids (sglang older than 0.5.1?)")
            raw_ids = []
        out_ids = [int(i) for i in raw_ids]
        mode = self.incremental
        if mode is None and self.received > 0 and completion is not None:
            # A cumulative chunk holds every id counted so far; an incremental one only the new ones.
            mode = self.incremental = len(out_ids) != completion
            if mode and not self.deltas_safe:
                raise EngineError("sglang streams token-id deltas on a version that drops queued chunks "
                                  "(--stream-output before 0.5.10): restart it without --stream-output")
        if mode:
            new_ids = out_ids
            self.received += len(out_ids)
        else:
            if len(out_ids) < self.received:
                raise EngineError(f"sglang's cumulative output_ids shrank from {self.received} to {len(out_ids)}")
            new_ids = out_ids[self.received:]
            self.received = len(out_ids)
        raw_text = event.get("text")
        if raw_text is None:
            text = None
        elif mode:
            text = raw_text
        else:
            text, self._seen_text = raw_text[self._seen_text:], max(self._seen_text, len(raw_text))
        fr = meta.get("finish_reason")
        kind = None
        if fr:
            kind = fr.get("type") if isinstance(fr, dict) else str(fr)
            if kind == "abort":
                msg = fr.get("message", "") if isinstance(fr, dict) else ""
                raise EngineError(f"sglang aborted the request: {msg}".rstrip(": "))
            self.check_count(completion)
            kind = "length" if kind == "length" else "stop"
        return Chunk(new_ids, text, kind, meta.get("prompt_tokens"), completion)

    def logprobs(self, event: dict, new_ids: list[int], top: int) -> list[TokenLogprob]:
        """The logprobs of ``new_ids`` (this chunk's ids, just read) from ``meta_info``: sglang sends
        ``output_token_logprobs`` ([logprob, id, text]) and ``output_top_logprobs`` (per position, k
        [logprob, id, text]) for every id so far in every chunk, in cumulative and incremental
        streaming alike (only ids and text are sliced). Checked against the ids: a mismatch fails."""
        meta = event.get("meta_info") or {}
        tokens = meta.get("output_token_logprobs")
        tops = meta.get("output_top_logprobs") if top > 0 else None
        first = self.received - len(new_ids)
        if not isinstance(tokens, list) or len(tokens) != self.received or (
                top > 0 and (not isinstance(tops, list) or len(tops) != self.received)):
            raise EngineError(f"sglang sent {len(tokens) if isinstance(tokens, list) else 'no'} output logprobs "
                              f"for {self.received} ids")
        out = []
        for k, tok in enumerate(new_ids):
            entry = tokens[first + k]
            if int(entry[1]) != tok or entry[0] is None:
                raise EngineError(f"sglang's logprob entry {entry!r} is not for id {tok}")
            alternatives: tuple[tuple[int, float], ...] = ()
            if top > 0:
                alternatives = tuple((int(e[1]), float(e[0])) for e in (tops[first + k] or ())[:top])  # type: ignore[index]
            out.append(TokenLogprob(logprob=float(entry[0]), top=alternatives))
        return out

    def check_count(self, completion) -> None:
        """The job's ids must be exactly the ones the server counted (the end-of-job check)."""
        if completion is None:
            raise EngineError("sglang's final chunk has no meta_info.completion_tokens: the ids cannot be checked")
        if int(completion) != self.received:
            raise EngineError(
                f"sglang counted {completion} completion tokens but streamed {self.received} ids "
                "(prompt ids leaked or chunks dropped): job failed rather than relaying wrong ids"
            )
