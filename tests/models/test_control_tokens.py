"""Control ids other than end-of-sequence are never output (DESIGN 1.3), on the real vocabularies."""

from __future__ import annotations

import pytest

from basis.models import InvalidOutputToken, ModelBinding
from tests.models.support import require_llama

pytestmark = pytest.mark.llama


@pytest.fixture(scope="module")
def gemma() -> ModelBinding:
    require_llama()
    return ModelBinding("gemma", gguf="gemma3-270m")


def test_gemma_control_ids_are_padding_markers_and_unused_never_eos(gemma):
    pad = gemma.tokenize("<pad>", special=True)
    assert pad == [0]
    control = gemma.control_token_ids
    named = {gemma.vocab.special_pieces[i] for i in control}
    assert {b"<pad>", b"<bos>", b"<unk>", b"<mask>", b"<start_of_turn>", b"<unused0>"} <= named
    assert not control & gemma.eos_token_ids  # <eos>, <end_of_turn> end a job; they do not fail it
    # every id that renders to no bytes is a control or end-of-sequence id ...
    empty = {i for i, p in enumerate(gemma.vocab.pieces) if p == b""}
    assert empty <= control | gemma.eos_token_ids
    # ... and ordinary text never tokenizes to one
    assert not set(gemma.tokenize("Hello world, <b>bold</b> 123 €")) & control
    assert len(control) == 6247  # 6,250 ids of no bytes, less the 3 end-of-generation ids


def test_output_pieces_refuses_what_is_never_output(gemma):
    hello = gemma.tokenize("Hello")
    assert gemma.output_pieces(hello) == [b"Hello"]
    for bad, words in ((0, "control token"), (105, "control token"), (1, "end-of-sequence"),
                       (106, "end-of-sequence"), (-1, "outside the vocabulary"),
                       (gemma.n_vocab, "outside the vocabulary")):
        with pytest.raises(InvalidOutputToken, match=words):
            gemma.output_pieces([*hello, bad])
    with pytest.raises(InvalidOutputToken, match=r"<pad>"):
        gemma.output_pieces([0])


def test_smollm2_control_ids(gemma):
    try:
        smol = ModelBinding("smol", gguf="smollm2-135m-instruct")
        smol.vocab  # noqa: B018
    except RuntimeError as exc:
        print(f"SKIP: {exc}")
        pytest.skip(str(exc))
    named = {smol.vocab.special_pieces[i] for i in smol.control_token_ids}
    assert b"<|im_start|>" in named and b"<|im_end|>" not in named
    assert not smol.control_token_ids & smol.eos_token_ids
