"""UTF8Matcher / IncrementalText: the id/text agreement rule of DESIGN 1.3 (no llama needed)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from basis.models.utf8 import IncrementalText, TextMismatch, UTF8Matcher


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


def frames_for(pieces: list[bytes], group_cuts: list[int]):
    """Group token pieces into frames; produce each frame's text as an honest worker would."""
    groups = split_at(bytes(range(len(pieces))), group_cuts) if pieces else []
    dec = IncrementalText()
    frames, i = [], 0
    for g in groups:
        chunk = pieces[i : i + len(g)]
        i += len(g)
        frames.append((chunk, dec.push(b"".join(chunk))))
    return frames, dec.flush()


texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=60)
cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=30)


@settings(max_examples=300, deadline=None)
@given(text=texts, token_cuts=cuts, frame_cuts=cuts)
def test_random_unicode_split_at_random_byte_boundaries_matches(text, token_cuts, frame_cuts):
    data = text.encode("utf-8")
    pieces = split_at(data, token_cuts)  # "tokens" cut anywhere, even inside a character
    frames, final = frames_for(pieces, frame_cuts)
    m = UTF8Matcher()
    accepted = sum(m.feed(chunk, t) for chunk, t in frames)
    assert m.held_back <= 3
    accepted += m.finish(final)
    assert final == ""
    assert accepted == len(pieces)
    assert "".join(t for _, t in frames) == text


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=40), token_cuts=cuts, frame_cuts=cuts)
def test_arbitrary_bytes_follow_the_replacement_rule(data, token_cuts, frame_cuts):
    pieces = split_at(data, token_cuts)
    frames, final = frames_for(pieces, frame_cuts)
    m = UTF8Matcher()
    accepted = sum(m.feed(chunk, t) for chunk, t in frames) + m.finish(final)
    assert accepted == len(pieces)
    assert "".join(t for _, t in frames) + final == data.decode("utf-8", "replace")


def _corruptions(draw_text: str, k: int) -> list[str]:
    out = [draw_text + "x", "x" + draw_text]
    if draw_text:
        i = k % len(draw_text)
        out.append(draw_text[:i] + draw_text[i + 1 :])  # drop one character
        c = draw_text[i]
        out.append(draw_text[:i] + ("a" if c != "a" else "b") + draw_text[i + 1 :])  # change one
    return out


@settings(max_examples=300, deadline=None)
@given(
    text=texts.filter(bool),
    token_cuts=cuts,
    frame_cuts=cuts,
    which=st.integers(min_value=0, max_value=1000),
    k=st.integers(min_value=0, max_value=1000),
)
def test_any_corruption_is_detected(text, token_cuts, frame_cuts, which, k):
    pieces = split_at(text.encode("utf-8"), token_cuts)
    frames, final = frames_for(pieces, frame_cuts)
    idx = which % len(frames)
    candidates = _corruptions(frames[idx][1], k)
    bad = candidates[k % len(candidates)]
    frames[idx] = (frames[idx][0], bad)
    m = UTF8Matcher()
    with pytest.raises(TextMismatch):
        for chunk, t in frames:
            m.feed(chunk, t)
        m.finish(final)


def test_multibyte_character_split_across_tokens_is_held_back():
    euro = "€".encode()  # 3 bytes
    m = UTF8Matcher()
    assert m.feed([b"a", euro[:1]], "a") == 1  # 'a' accepted, the lead byte held back
    assert m.held_back == 1
    with pytest.raises(TextMismatch):
        UTF8Matcher().feed([euro[:2]], "€")  # text may not run ahead of the ids
    assert m.feed([euro[1:2]], "") == 0
    assert m.feed([euro[2:], b""], "€") == 4  # the 3 pieces of € and the zero-byte token
    assert m.finish("") == 0
    assert m.accepted == 5


def test_incomplete_tail_at_finish_must_be_flushed_as_replacement():
    m = UTF8Matcher()
    m.feed(["é".encode()[:1]], "")
    with pytest.raises(TextMismatch):
        m.finish("")
    m2 = UTF8Matcher()
    m2.feed(["é".encode()[:1]], "")
    assert m2.finish("\ufffd") == 1


def test_withheld_complete_text_is_a_mismatch():
    with pytest.raises(TextMismatch):
        UTF8Matcher().feed([b"hello"], "hell")
