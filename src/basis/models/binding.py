"""Model bindings (DESIGN 1.3): advertised model id -> one concrete model, tokenizer, template.

``binding_hash`` (published at /v1/models, checked when a worker connects) is defined as::

    h = sha256()
    h.update(b"basis-binding-v1\\n")
    h.update(n_vocab.to_bytes(4, "big"))
    for token_id in range(n_vocab):                     # every id, in order
        piece = bytes of the token rendered with special tokens shown
                (llama.cpp: llama_token_to_piece(vocab, id, buf, n, lstrip=0, special=True);
                 SentencePiece "\u2581" is rendered as a space, byte tokens <0xNN> as the byte)
        h.update(len(piece).to_bytes(4, "big") + piece)
    template = chat template text, UTF-8 (GGUF metadata "tokenizer.chat_template")
    h.update(len(template).to_bytes(4, "big") + template)
    binding_hash = "0x" + h.hexdigest()

Anything that changes how ids map to bytes or how a conversation becomes ids changes the hash.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment

from basis.models.gguf import GGUFVocab, load_vocab, resolve_gguf

HASH_DOMAIN = b"basis-binding-v1\n"


class ChatTemplateError(ValueError):
    """The messages cannot be rendered (bad role, non-text content, template refused)."""


class InvalidOutputToken(ValueError):
    """An id a worker relayed as output that is never legitimate output (DESIGN 1.3): outside the
    vocabulary, an end-of-sequence/end-of-turn id, or another control id (padding, markers)."""


def compute_binding_hash(special_pieces: Sequence[bytes], chat_template: str) -> str:
    h = hashlib.sha256()
    h.update(HASH_DOMAIN)
    h.update(len(special_pieces).to_bytes(4, "big"))
    for piece in special_pieces:
        h.update(len(piece).to_bytes(4, "big"))
        h.update(piece)
    t = chat_template.encode("utf-8")
    h.update(len(t).to_bytes(4, "big"))
    h.update(t)
    return "0x" + h.hexdigest()


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, str):
                out.append(part)
                continue
            if not isinstance(part, Mapping) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise ChatTemplateError(f"unsupported content part type: {kind!r} (only 'text')")
            text = part.get("text")
            if not isinstance(text, str):
                raise ChatTemplateError("a text content part needs a string 'text'")
            out.append(text)
        return "".join(out)
    raise ChatTemplateError("message content must be a string or a list of text parts")


def normalize_messages(messages: Iterable[Any], *, fold_system: bool) -> list[dict[str, str]]:
    """Roles system/developer(as system)/user/assistant; content flattened to a string.

    With ``fold_system`` (Gemma), system messages are joined and prefixed to the first user turn
    (``system + "\\n\\n" + user``), and consecutive turns of the same role are merged with a blank
    line so the template's strict alternation holds.
    """
    norm: list[dict[str, str]] = []
    for m in messages:
        if hasattr(m, "model_dump"):
            m = m.model_dump()
        if not isinstance(m, Mapping):
            raise ChatTemplateError("each message must be an object with role and content")
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise ChatTemplateError(f"unsupported role: {role!r}")
        norm.append({"role": role, "content": _content_text(m.get("content"))})
    if not norm:
        raise ChatTemplateError("messages must not be empty")
    if not fold_system:
        return norm
    system = [m["content"] for m in norm if m["role"] == "system"]
    turns = [m for m in norm if m["role"] != "system"]
    if system:
        prefix = "\n\n".join(system)
        for t in turns:
            if t["role"] == "user":
                t["content"] = prefix + "\n\n" + t["content"]
                break
        else:
            turns.insert(0, {"role": "user", "content": prefix})
    merged: list[dict[str, str]] = []
    for t in turns:
        if merged and merged[-1]["role"] == t["role"]:
            merged[-1] = {"role": t["role"], "content": merged[-1]["content"] + "\n\n" + t["content"]}
        else:
            merged.append(dict(t))
    return merged


def _raise_exception(message: str):
    raise ChatTemplateError(message)


_jinja = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
_jinja.globals["raise_exception"] = _raise_exception


@dataclass
class ModelBinding:
    """An advertised model bound to a GGUF tokenizer + chat template. Loads lazily."""

    model_id: str
    gguf: str = "gemma3-270m"  # path, or "gemma3-270m" for the packaged default
    engine: str = "llama-cpp"
    backing_name: str = "gemma-3-270m (base, Q4_K_M GGUF)"
    context_window: int = 32768
    max_output_tokens: int = 2048
    multiplier_bps: int = 10_000
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._vocab: GGUFVocab | None = None
        self._hash: str | None = None
        self._lock = threading.Lock()
        self._template = None

    # -- loading -------------------------------------------------------------------------
    @property
    def gguf_path(self) -> str:
        return resolve_gguf(self.gguf)

    @property
    def vocab(self) -> GGUFVocab:
        if self._vocab is None:
            with self._lock:
                if self._vocab is None:
                    self._vocab = load_vocab(self.gguf_path)
        return self._vocab

    @property
    def loaded(self) -> bool:
        return self._vocab is not None

    # -- 1.3 -----------------------------------------------------------------------------
    @property
    def binding_hash(self) -> str:
        """Read back from ``vocab_cache`` when this file was hashed before: a (re)starting gateway
        publishes every model's hash without loading any vocabulary (~3 s for the two packaged)."""
        if self._hash is None:
            from basis.models import vocab_cache

            key = vocab_cache.file_key(self.gguf_path)
            cached = vocab_cache.load(key, "binding")
            if isinstance(cached, str):
                self._hash = cached
            else:
                v = self.vocab
                self._hash = compute_binding_hash(v.special_pieces, v.chat_template)
                vocab_cache.store(key, "binding", self._hash)
        return self._hash

    @property
    def chat_template(self) -> str:
        return self.vocab.chat_template

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """End-of-sequence / end-of-turn ids: never relayed, never counted."""
        return self.vocab.eog_ids

    @property
    def control_token_ids(self) -> frozenset[int]:
        """Control ids other than ``eos_token_ids`` (padding, unknown, unused, image/tool markers):
        never legitimate output; relaying one fails the job (DESIGN 1.3)."""
        return self.vocab.control_ids

    @property
    def bos_token_id(self) -> int:
        return self.vocab.bos_id

    @property
    def n_vocab(self) -> int:
        return self.vocab.n_vocab

    @property
    def fold_system(self) -> bool:
        v = self.vocab
        return v.architecture.startswith("gemma") or "<start_of_turn>" in v.chat_template

    def render_chat(self, messages: Iterable[Any]) -> str:
        """The prompt text the template produces (with the generation prompt)."""
        v = self.vocab
        msgs = normalize_messages(messages, fold_system=self.fold_system)
        if self._template is None:
            self._template = _jinja.from_string(v.chat_template)
        try:
            return self._template.render(
                messages=msgs,
                bos_token=v.special_pieces[v.bos_id].decode("utf-8", "replace"),
                eos_token=v.special_pieces[v.eos_id].decode("utf-8", "replace"),
                add_generation_prompt=True,
            )
        except ChatTemplateError:
            raise
        except Exception as exc:
            raise ChatTemplateError(f"chat template failed: {exc}") from exc

    def apply_chat_template(self, messages: Iterable[Any]) -> list[int]:
        """Prompt token ids exactly as the engine sees them (special tokens parsed, BOS once)."""
        return self.prompt_ids(self.render_chat(messages))

    def prompt_ids(self, rendered: str, *, hold_gil: bool = True) -> list[int]:
        """Token ids of a rendered chat prompt (``render_chat``'s output); ``hold_gil=False``
        from a thread, so a long prompt tokenizes beside the event loop (see GGUFVocab.tokenize)."""
        v = self.vocab
        ids = v.tokenize(rendered, special=True, hold_gil=hold_gil)
        if v.add_bos and (not ids or ids[0] != v.bos_id):
            ids.insert(0, v.bos_id)
        return ids

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return self.vocab.tokenize(text, special=special)

    def token_bytes(self, token_id: int) -> bytes:
        return self.vocab.pieces[token_id]

    def token_pieces(self, ids: Iterable[int]) -> list[bytes]:
        """Bytes of each id (what ``UTF8Matcher.feed`` takes). Raises IndexError for a bad id."""
        pieces = self.vocab.pieces
        out = []
        for i in ids:
            if i < 0:
                raise IndexError(f"token id {i} out of range")
            out.append(pieces[i])
        return out

    def output_pieces(self, ids: Iterable[int]) -> list[bytes]:
        """Bytes of each id a worker relayed as output; raises InvalidOutputToken for an id that
        is never output (out of range, end-of-sequence, other control id)."""
        v = self.vocab
        pieces, n, eog, control = v.pieces, v.n_vocab, v.eog_ids, v.control_ids
        out = []
        for i in ids:
            if not 0 <= i < n:
                raise InvalidOutputToken(f"token id {i} is outside the vocabulary (0..{n - 1})")
            if i in eog:
                raise InvalidOutputToken(f"the worker relayed an end-of-sequence token id ({i})")
            if i in control:
                name = v.special_pieces[i].decode("utf-8", "replace")
                raise InvalidOutputToken(f"token id {i} ({name}) is a control token, never output")
            out.append(pieces[i])
        return out

    def detokenize(self, ids: Iterable[int]) -> bytes:
        """Concatenated bytes of the ids (special tokens render as nothing)."""
        return b"".join(self.token_pieces(ids))

    def describe(self) -> dict[str, Any]:
        """The binding as /v1/models publishes it."""
        return {"backing_model": self.backing_name, "binding_hash": self.binding_hash}
