"""The on-disk vocabulary cache gives back exactly what llama.cpp computes, and only for the same file."""

from __future__ import annotations

import os

import pytest

from basis.models import vocab_cache
from basis.models.binding import ModelBinding, compute_binding_hash
from basis.models.gguf import GGUFVocab, smollm2_gguf_path
from tests.models.support import require_llama


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BASIS_VOCAB_CACHE", str(tmp_path / "vocab-cache"))
    return tmp_path / "vocab-cache"


def test_a_second_process_reads_the_tables_and_hash_it_computed(cache, monkeypatch):
    require_llama()
    path = smollm2_gguf_path()
    cold = GGUFVocab(path)
    computed = (cold.pieces, cold.special_pieces, cold.eog_ids, cold.control_ids)
    expected_hash = compute_binding_hash(cold.special_pieces, cold.chat_template)
    assert ModelBinding("m", gguf=path).binding_hash == expected_hash  # computed, then stored
    cold.llama.close()

    def never(self):
        raise AssertionError("tables were rebuilt despite a valid cache entry")

    monkeypatch.setattr(GGUFVocab, "_build_tables", never)
    warm_binding = ModelBinding("m", gguf=path)
    assert warm_binding.binding_hash == expected_hash and not warm_binding.loaded  # no vocabulary loaded
    warm = GGUFVocab(path)
    assert (warm.pieces, warm.special_pieces, warm.eog_ids, warm.control_ids) == computed
    warm.llama.close()


def test_an_entry_is_used_only_for_the_same_file_and_never_when_damaged(cache, tmp_path):
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF stand-in")
    key = vocab_cache.file_key(model)
    vocab_cache.store(key, "binding", "0xabc")
    assert vocab_cache.load(key, "binding") == "0xabc"
    st = model.stat()
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # the file changed
    assert vocab_cache.file_key(model) != key and vocab_cache.load(vocab_cache.file_key(model), "binding") is None
    (cache / f"{key}.binding").write_bytes(b"\x00not marshal")
    assert vocab_cache.load(key, "binding") is None
    assert vocab_cache.file_key(tmp_path / "missing.gguf") is None
