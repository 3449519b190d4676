"""Is this sglang server running the binding's model? Asked once per server before any job is claimed.

A verifier scoring against the wrong model fails every honest worker's checked jobs (refunds,
forfeits, suspensions): a money-path hazard worth two questions at start-up.

**Tokenizer** (exact). A fixed probe of ``PROBE_TOKENS`` ordinary ids spread evenly over the
binding's vocabulary (read from its GGUF, no llama.cpp needed) is sent as one prefill::

    POST /generate {"input_ids": probe, "sampling_params": {"max_new_tokens": 0, ...},
                    "return_logprob": true, "logprob_start_len": 0, "return_text_in_logprobs": true}

sglang answers ``meta_info.input_token_logprobs`` as ``[logprob, id, text]`` per id, the text being
its Hugging Face tokenizer's ``batch_decode`` of that id alone (``detokenize_logprob_tokens``:
0.5.6 passes the ids flat to transformers 4.57, which decodes each; 0.5.10 and 0.5.23 wrap each id
for transformers 5, which would join flat ids). Each text is compared, whitespace-trimmed
(tokenizers differ in whether a lone token keeps its leading space, and in
``clean_up_tokenization_spaces``), with the same id's
token in the GGUF decoded as its tokenizer type decodes (byte-level BPE ``gpt2``: GPT-2's byte
alphabet reversed; SentencePiece ``llama``: U+2581 as a space). Only normal tokens of two or more
visible characters that decode to whole UTF-8 are probed, and up to ``MAX_PROBE_MISMATCHES``
disagreements are tolerated, so decoder quirks cannot refuse the right pairing; another tokenizer
agrees on almost none of the probe (its ids mean other strings), and one with a smaller
vocabulary answers the high ids as 0 (sglang clips ids >= vocab_size - 1).

**Weights** (by name). Models that share a tokenizer (a base model and its instruction-tuned
sibling: SmolLM2-135M and SmolLM2-135M-Instruct) answer the probe alike, and no cheap question to
the server tells their weights apart: comparing logits with llama.cpp's would need llama.cpp on
the GPU box and a drift threshold between a 4-bit GGUF and bf16 weights. So the served
``model_path`` (``GET /model_info``, or ``/get_model_info``, its older name) must name the
binding's model: its last path component (or the ``NAME`` of a Hugging Face cache folder
``models--ORG--NAME``), lower-cased with everything but letters and digits dropped, must equal one
of the binding's names normalised alike: the backing name the gateway publishes (up to its
first " ("), the GGUF file's name less ``.gguf`` and a quantization suffix, and the GGUF header's
``general.name``. Equality, not containment:
``gemma-3-270m-it`` is not ``gemma-3-270m``. The packaged pairings pass
(SmolLM2-135M-Instruct.Q4_1.gguf with ``HuggingFaceTB/SmolLM2-135M-Instruct``; Gemma 3 270M with
``google/gemma-3-270m``). A server started from a folder of another name is refused until the
operator pins its ``model_path`` for that model (``--sglang-model-path MODEL=PATH``,
``BASIS_VERIFIER_SGLANG_MODEL_PATH``): then that exact ``model_path`` is accepted instead of the
names, and the start-up note says so. The tokenizer probe still runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from basis.engines.sglang_server import auth_headers
from basis.models import ModelBinding
from basis.models.gguf_header import GGUFTokenizer, gguf_model_name, gguf_tokenizer

PROBE_TOKENS = 32
MAX_PROBE_MISMATCHES = 3  # of PROBE_TOKENS: decoder quirks, never a whole other tokenizer
MIN_PROBE_TOKENS = 16  # fewer ordinary tokens than this: the vocabulary cannot be probed
_NORMAL = 1  # llama.cpp's LLAMA_TOKEN_TYPE_NORMAL
_QUANT_SUFFIX = re.compile(r"[-._](?:i?q\d\w*|bf16|fp16|f16|f32)$", re.IGNORECASE)
_HF_CACHE = re.compile(r"^models--[^/]+?--(.+)$")
PINNED = "model_path pinned by the operator, its name not checked"  # the start-up note's words


class ModelIdentityError(ValueError):
    """The server does not serve the binding's model, or cannot be asked (the message says which)."""


def _gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the printable bytes stand for themselves, the others
    (control, space, ...) for U+0100 onwards, in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(b): b for b in printable}
    shifted = (b for b in range(256) if b not in set(printable))
    table.update({chr(0x100 + n): b for n, b in enumerate(shifted)})
    return table


_BYTE_DECODER = _gpt2_byte_decoder()


def token_text(tokenizer_model: str, token: str) -> str | None:
    """The text of one GGUF token string, as its tokenizer decodes it alone (None: a tokenizer type
    this module does not decode). Invalid UTF-8 becomes U+FFFD."""
    if tokenizer_model == "gpt2":
        data = bytes(_BYTE_DECODER[c] for c in token if c in _BYTE_DECODER)
        return data.decode("utf-8", "replace") if len(data) == len(token) else None
    if tokenizer_model == "llama":
        return token.replace("\u2581", " ")
    return None


def tokenizer_probe(tokenizer: GGUFTokenizer, count: int = PROBE_TOKENS) -> list[tuple[int, str]]:
    """``count`` (id, text) of ordinary tokens spread evenly over the vocabulary: from each of
    ``count`` equal stretches, its first normal token whose text is whole UTF-8 with at least two
    visible characters. Ids stay below ``len - 1`` (sglang answers an id >= vocab_size - 1 as 0)."""
    n = len(tokenizer.tokens)
    limit = n - 1
    out: list[tuple[int, str]] = []
    for j in range(count):
        for i in range(j * limit // count, (j + 1) * limit // count):
            if tokenizer.types and tokenizer.types[i] != _NORMAL:
                continue
            text = token_text(tokenizer.model, tokenizer.tokens[i])
            if text is not None and "\ufffd" not in text and len(text.strip()) >= 2:
                out.append((i, text))
                break
    return out


def _stem(name: str) -> str:
    """A file or folder name less ``.gguf`` and quantization suffixes (``-q4_k_m``, ``.Q4_1``)."""
    name = name.strip().rstrip("/").rsplit("/", 1)[-1]
    if name.lower().endswith(".gguf"):
        name = name[: -len(".gguf")]
    while (m := _QUANT_SUFFIX.search(name)) and m.start() > 0:
        name = name[: m.start()]
    return name


def normalise_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def served_name(model_path: str) -> str:
    """The model's name in sglang's ``model_path``: a hub id's or folder's last component, or the
    ``NAME`` of a Hugging Face cache path ``.../models--ORG--NAME/snapshots/HASH``."""
    for part in model_path.strip().rstrip("/").split("/"):
        m = _HF_CACHE.match(part)
        if m:
            return m[1]
    return _stem(model_path)


def binding_names(binding: ModelBinding, gguf_path: str) -> list[str]:
    """The names the binding's model goes by (module doc), most telling first, duplicates dropped."""
    names = [_stem(binding.backing_name.split(" (", 1)[0]), _stem(gguf_path)]
    # Not general.basename + size_label (+ finetune): a finetune key need not say "Instruct"
    # (SmolLM2-135M-Instruct's holds its training run), and without it they name the base model.
    meta_name = gguf_model_name(gguf_path)
    if meta_name:
        names.append(meta_name)
    out: list[str] = []
    for name in names:
        if normalise_name(name) and normalise_name(name) not in map(normalise_name, out):
            out.append(name)
    return out


@dataclass(frozen=True)
class ModelIdentity:
    """What one advertised model's sglang server must show: the binding's names and tokenizer probe,
    or the operator's pinned ``model_path``."""

    model: str
    gguf_path: str
    names: tuple[str, ...]
    probe: tuple[tuple[int, str], ...]
    pinned_path: str | None = None

    @classmethod
    def of(cls, model: str, binding: ModelBinding, gguf_path: str, pinned_path: str | None = None) -> ModelIdentity:
        try:
            tokenizer = gguf_tokenizer(gguf_path)
        except (OSError, ValueError) as exc:
            raise ModelIdentityError(f"model {model!r}: cannot read {gguf_path}: {exc}") from exc
        probe = tokenizer_probe(tokenizer) if tokenizer is not None else []
        if len(probe) < MIN_PROBE_TOKENS:
            kind = tokenizer.model if tokenizer is not None else "none"
            raise ModelIdentityError(f"model {model!r}: the tokenizer of {gguf_path} (type {kind!r}) cannot be "
                                     "probed here, so no sglang server can be shown to serve it")
        return cls(model, gguf_path, tuple(binding_names(binding, gguf_path)), tuple(probe), pinned_path)

    def check_name(self, model_path: str) -> str:
        """How ``model_path`` was accepted (for the start-up note); ModelIdentityError if it is not."""
        if self.pinned_path is not None:
            if model_path.rstrip("/") != self.pinned_path.rstrip("/"):
                raise ModelIdentityError(f"serves {model_path!r}, not {self.pinned_path!r} as pinned for "
                                         f"{self.model!r}")
            return PINNED
        served = normalise_name(served_name(model_path))
        for name in self.names:
            if normalise_name(name) == served:
                return f"its name matches {name!r}"
        raise ModelIdentityError(
            f"serves {model_path!r}, which is not {self.model!r}'s model by name (one of: "
            f"{', '.join(repr(n) for n in self.names)}); start sglang with that model, or, if it is that model "
            f"under another name, pin it: --sglang-model-path {self.model}={model_path} "
            f"(BASIS_VERIFIER_SGLANG_MODEL_PATH for the gateway)")

    def check_texts(self, entries: list) -> int:
        """How many probe tokens agree; ModelIdentityError past the tolerance. ``entries``: sglang's
        ``input_token_logprobs`` for the probe, ``[logprob, id, text]`` each."""
        if len(entries) != len(self.probe):
            raise ModelIdentityError(f"answered {len(entries)} token texts for a probe of {len(self.probe)} ids")
        wrong = []
        for (token_id, want), entry in zip(self.probe, entries, strict=True):
            got_id, got = int(entry[1]), entry[2] if len(entry) > 2 else None
            if got is None:
                raise ModelIdentityError("returned no token texts (is it running with --skip-tokenizer-init?): "
                                         "its tokenizer cannot be compared with the binding's")
            if got_id != token_id:
                wrong.append(f"id {token_id} came back as id {got_id} (a smaller vocabulary)")
            elif str(got).strip() != want.strip():
                wrong.append(f"id {token_id} is {got!r} there, {want!r} in the binding's GGUF")
        if len(wrong) > MAX_PROBE_MISMATCHES:
            raise ModelIdentityError(
                f"does not use {self.model!r}'s tokenizer: {len(wrong)} of {len(self.probe)} probe ids decode "
                f"differently ({'; '.join(wrong[:3])}); start sglang with the model {self.gguf_path} was made from")
        return len(self.probe) - len(wrong)


async def fetch_model_info(client: httpx.AsyncClient, base_url: str, api_key: str | None,
                           timeout: httpx.Timeout | float) -> Mapping:
    """``GET /model_info`` (0.5.6 on), else ``/get_model_info`` (its older name)."""
    statuses = []
    for path in ("/model_info", "/get_model_info"):
        try:
            resp = await client.get(f"{base_url}{path}", headers=auth_headers(api_key), timeout=timeout)
        except httpx.HTTPError as exc:
            raise ModelIdentityError(f"did not answer {path}: {exc}") from exc
        if resp.status_code == 200:
            try:
                body = resp.json()
            except ValueError as exc:
                raise ModelIdentityError(f"{path} answered non-JSON: {resp.text[:200]!r}") from exc
            if not isinstance(body, Mapping) or not isinstance(body.get("model_path"), str):
                raise ModelIdentityError(f"{path} reported no model_path: {str(body)[:200]}")
            return body
        statuses.append(f"{path} {resp.status_code}")
    raise ModelIdentityError(f"reported no model ({', '.join(statuses)})")


def probe_payload(identity: ModelIdentity) -> dict:
    return {
        "input_ids": [i for i, _ in identity.probe],
        "sampling_params": {"max_new_tokens": 0, "temperature": 1.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0},
        "stream": False,
        "return_logprob": True,
        "logprob_start_len": 0,
        "top_logprobs_num": 0,
        "return_text_in_logprobs": True,
    }


async def probe_tokenizer(client: httpx.AsyncClient, base_url: str, api_key: str | None, identity: ModelIdentity,
                          timeout: httpx.Timeout | float) -> int:
    """Send the probe; how many of its tokens agree (ModelIdentityError past the tolerance)."""
    try:
        resp = await client.post(f"{base_url}/generate", json=probe_payload(identity), headers=auth_headers(api_key),
                                 timeout=timeout)
    except httpx.HTTPError as exc:
        raise ModelIdentityError(f"did not answer the tokenizer probe: {exc}") from exc
    if resp.status_code != 200:
        raise ModelIdentityError(f"answered the tokenizer probe with {resp.status_code}: {resp.text[:300]}")
    try:
        body = resp.json()
    except ValueError as exc:
        raise ModelIdentityError(f"answered the tokenizer probe with non-JSON: {resp.text[:200]!r}") from exc
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    entries = (body.get("meta_info") or {}).get("input_token_logprobs") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        raise ModelIdentityError(f"answered the tokenizer probe without input_token_logprobs: {str(body)[:300]}")
    return identity.check_texts(entries)


async def check_identity(client: httpx.AsyncClient, base_url: str, api_key: str | None, identity: ModelIdentity,
                         model_info: Mapping, timeout: httpx.Timeout | float) -> str:
    """The server serves ``identity``'s model, or ModelIdentityError; the start-up note otherwise."""
    model_path = str(model_info["model_path"])
    how = identity.check_name(model_path)
    agreed = await probe_tokenizer(client, base_url, api_key, identity, timeout)
    return (f"{identity.model}: sglang at {base_url} serves {model_path!r} ({how}; {agreed} of "
            f"{len(identity.probe)} probe tokens decode as in {identity.gguf_path})")
