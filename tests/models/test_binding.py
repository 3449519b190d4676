"""Bindings over the real Gemma 3 270M GGUF (tokenizer + chat template + hash)."""

from __future__ import annotations

import re

import pytest

from basis.models import (
    ChatTemplateError,
    ModelBinding,
    UTF8Matcher,
    compute_binding_hash,
    load_bindings,
    normalize_messages,
)

pytestmark = pytest.mark.llama


def test_binding_hash_is_published_shape_and_shared_by_same_gguf(bindings):
    h = bindings["basis-default"].binding_hash
    assert re.fullmatch(r"0x[0-9a-f]{64}", h)
    assert bindings["basis-small"].binding_hash == h == bindings["basis-large"].binding_hash
    assert bindings["basis-default"].describe() == {
        "backing_model": "gemma-3-270m (base, Q4_K_M GGUF)",
        "binding_hash": h,
    }


def test_binding_hash_definition(binding):
    v = binding.vocab
    assert compute_binding_hash(v.special_pieces, v.chat_template) == binding.binding_hash
    assert compute_binding_hash(v.special_pieces, v.chat_template + " ") != binding.binding_hash
    changed = list(v.special_pieces)
    changed[1000] = changed[1000] + b"x"
    assert compute_binding_hash(changed, v.chat_template) != binding.binding_hash


def test_eos_ids_include_end_of_turn_and_eos(binding):
    v = binding.vocab
    eot = binding.tokenize("<end_of_turn>", special=True)
    assert len(eot) == 1 and eot[0] in binding.eos_token_ids
    assert v.eos_id in binding.eos_token_ids
    assert binding.detokenize(eot) == b""  # control tokens render as nothing


def test_chat_template_folds_system_into_first_user_turn(binding):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": "Ça va ? 日本"},
    ]
    text = binding.render_chat(msgs)
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nUse French.\n\nHi there<end_of_turn>\n"
        "<start_of_turn>model\nBonjour<end_of_turn>\n"
        "<start_of_turn>user\nÇa va ? 日本<end_of_turn>\n<start_of_turn>model\n"
    )
    ids = binding.apply_chat_template(msgs)
    assert ids[0] == binding.bos_token_id and ids.count(binding.bos_token_id) == 1
    assert ids == binding.tokenize(text, special=True)
    start = binding.tokenize("<start_of_turn>", special=True)
    assert ids[-3:] == [*start, *binding.tokenize("model\n")]


def test_system_only_conversation_becomes_a_user_turn(binding):
    text = binding.render_chat([{"role": "system", "content": "S"}])
    assert text.startswith("<bos><start_of_turn>user\nS<end")


def test_user_text_round_trips_through_ids(binding):
    text = "Hello, wörld! 日本語 🙂 «quotes» \n\ttabs"
    ids = binding.tokenize(text)
    assert binding.detokenize(ids).decode("utf-8") == text
    m = UTF8Matcher()
    # an honest stream of these ids with their text is accepted token by token
    from basis.models import IncrementalText

    dec = IncrementalText()
    total = sum(m.feed([p], dec.push(p)) for p in binding.token_pieces(ids)) + m.finish(dec.flush())
    assert total == len(ids)


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "tool", "content": "x"}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        [{"role": "user", "content": 5}],
        [],
    ],
)
def test_bad_messages_are_rejected(binding, messages):
    with pytest.raises(ChatTemplateError):
        binding.apply_chat_template(messages)


def test_normalize_merges_consecutive_turns():
    out = normalize_messages(
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], fold_system=True
    )
    assert out == [{"role": "user", "content": "a\n\nb"}]


def test_loading_is_lazy(tmp_path):
    missing = tmp_path / "nope.gguf"
    bindings = load_bindings(
        {
            "models": [
                {
                    "id": "m1",
                    "context_window": 8192,
                    "max_output_tokens": 256,
                    "multiplier_bps": 15_000,
                    "backing": {"engine": "llama-cpp", "gguf": str(missing)},
                }
            ]
        }
    )
    b = bindings["m1"]
    assert isinstance(b, ModelBinding) and not b.loaded
    assert (b.context_window, b.max_output_tokens, b.multiplier_bps) == (8192, 256, 15_000)
    with pytest.raises(Exception):  # noqa: B017 - only on first use does it touch the file
        _ = b.binding_hash


def test_duplicate_ids_rejected():
    with pytest.raises(ValueError):
        load_bindings([{"id": "a"}, {"id": "a"}])
