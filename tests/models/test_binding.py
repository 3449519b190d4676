"""Bindings over the real GGUFs (tokenizer + chat template + hash): SmolLM2-135M-Instruct behind
basis-default and basis-small, Gemma 3 270M behind basis-large."""

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


@pytest.fixture(scope="module")
def gemma(bindings):
    return bindings["basis-large"]


def test_binding_hash_is_published_shape_and_shared_by_same_gguf(bindings):
    h = bindings["basis-default"].binding_hash
    assert re.fullmatch(r"0x[0-9a-f]{64}", h)
    assert bindings["basis-small"].binding_hash == h != bindings["basis-large"].binding_hash
    assert re.fullmatch(r"0x[0-9a-f]{64}", bindings["basis-large"].binding_hash)
    assert bindings["basis-default"].describe() == {
        "backing_model": "SmolLM2-135M-Instruct (Q4_1 GGUF)",
        "binding_hash": h,
    }
    assert bindings["basis-large"].describe()["backing_model"] == "gemma-3-270m (base, Q4_K_M GGUF)"


def test_default_is_instruction_tuned_chatml(binding):
    """SmolLM2's own ChatML template: system kept as its own turn, its default system prompt when none."""
    text = binding.render_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert binding.render_chat([{"role": "user", "content": "Hi"}]).startswith(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    ids = binding.apply_chat_template([{"role": "user", "content": "Hi"}])
    im_start, im_end = (binding.tokenize(t, special=True) for t in ("<|im_start|>", "<|im_end|>"))
    assert len(im_start) == len(im_end) == 1
    assert ids[0] == im_start[0]  # no BOS: the GGUF says add_bos_token false
    assert ids[-4:] == [im_start[0], *binding.tokenize("assistant\n")]
    assert im_end[0] in binding.eos_token_ids and binding.vocab.eos_id == im_end[0]
    assert binding.tokenize("<|endoftext|>", special=True)[0] in binding.eos_token_ids
    assert binding.detokenize(im_end) == b""


def test_every_context_window_fits_its_backing_model(bindings):
    from basis.models import check_context_window

    trained = {m: check_context_window(b) for m, b in bindings.items()}
    assert trained == {"basis-default": 8192, "basis-small": 8192, "basis-large": 32768}
    assert all(bindings[m].context_window <= trained[m] for m in bindings)


def test_a_context_window_beyond_the_backing_model_is_refused():
    from basis.models import CatalogError

    entry = {"id": "too-long", "context_window": 16384, "max_output_tokens": 512, "multiplier_bps": 10_000,
             "backing": {"engine": "llama-cpp", "gguf": "smollm2-135m-instruct"}}
    with pytest.raises(CatalogError, match="trained for 8192"):
        load_bindings([entry])
    with pytest.raises(CatalogError, match="max_output_tokens"):
        load_bindings([{**entry, "context_window": 512, "max_output_tokens": 512}])
    assert load_bindings([{**entry, "context_window": 8192}])["too-long"].context_window == 8192


def test_binding_hash_definition(binding):
    v = binding.vocab
    assert compute_binding_hash(v.special_pieces, v.chat_template) == binding.binding_hash
    assert compute_binding_hash(v.special_pieces, v.chat_template + " ") != binding.binding_hash
    changed = list(v.special_pieces)
    changed[1000] = changed[1000] + b"x"
    assert compute_binding_hash(changed, v.chat_template) != binding.binding_hash


def test_eos_ids_include_end_of_turn_and_eos(gemma):
    v = gemma.vocab
    eot = gemma.tokenize("<end_of_turn>", special=True)
    assert len(eot) == 1 and eot[0] in gemma.eos_token_ids
    assert v.eos_id in gemma.eos_token_ids
    assert gemma.detokenize(eot) == b""  # control tokens render as nothing


def test_chat_template_folds_system_into_first_user_turn(gemma):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": "Ça va ? 日本"},
    ]
    text = gemma.render_chat(msgs)
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nUse French.\n\nHi there<end_of_turn>\n"
        "<start_of_turn>model\nBonjour<end_of_turn>\n"
        "<start_of_turn>user\nÇa va ? 日本<end_of_turn>\n<start_of_turn>model\n"
    )
    ids = gemma.apply_chat_template(msgs)
    assert ids[0] == gemma.bos_token_id and ids.count(gemma.bos_token_id) == 1
    assert ids == gemma.tokenize(text, special=True)
    start = gemma.tokenize("<start_of_turn>", special=True)
    assert ids[-3:] == [*start, *gemma.tokenize("model\n")]


def test_system_only_conversation_becomes_a_user_turn(gemma):
    text = gemma.render_chat([{"role": "system", "content": "S"}])
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
