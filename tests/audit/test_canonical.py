"""The auditor's line reader and canonical writer (msgspec, C) against the reference encoders:
``rfc8785`` wherever JCS's domain reaches, the project's own pure-Python JCS (exact big integers)
everywhere, and the ``json`` module's parsing of the same text."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from basis.ledger.export import _has_float, _slow, canonical, canonical_bytes, decode_line

# Export-shaped values: objects with any text keys (non-ASCII, control characters, astral-plane
# characters that sort differently by code point and by UTF-16 code unit), integers well past 2^64,
# every string escape, and (rarely in a ledger, but legal) floats.
_text = st.text(max_size=12)
_keys = st.one_of(_text, st.sampled_from(["a", "\ue000", "\U0001f600", "\uffff", "é", "A", "_type_", "_data_"]))
_int = st.one_of(st.integers(-(2**53) + 1, 2**53 - 1), st.integers(-(10**40), 10**40))
_float = st.floats(allow_nan=False, allow_infinity=False)
_scalar = st.one_of(st.none(), st.booleans(), _int, _text, _float)
_value = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(_keys, inner, max_size=5)), max_leaves=20)
_state = st.dictionaries(_keys, _value, max_size=6)


def _within_jcs(value: Any) -> bool:
    """rfc8785 (IEEE doubles) takes integers up to 2^53 only."""
    if type(value) is int:
        return abs(value) < 2**53
    if isinstance(value, dict):
        return all(_within_jcs(v) for v in value.values())
    if isinstance(value, list):
        return all(_within_jcs(v) for v in value)
    return True


@settings(max_examples=200, deadline=None)
@given(_state)
def test_the_fast_canonical_bytes_are_jcs_with_exact_integers(state):
    reference = _slow(state).encode()
    assert canonical_bytes(state) == reference
    assert canonical(state).encode() == reference
    if _within_jcs(state):
        assert reference == rfc8785.dumps(state)


@settings(max_examples=200, deadline=None)
@given(_state, st.booleans())
def test_the_line_reader_parses_as_the_json_module_does(state, ascii_escapes):
    text = json.dumps(state, ensure_ascii=ascii_escapes)  # surrogate pairs as \ud83d\ude00 escapes, or literal
    value, has_float = decode_line(text.encode())
    assert value == json.loads(text)
    assert has_float == _has_float(state)
    assert canonical_bytes(value, has_float=has_float) == _slow(state).encode()


def test_a_float_is_noticed_and_takes_the_full_jcs_path():
    value, has_float = decode_line(b'{"x":1e21,"y":[1E-7],"z":10000000000000000000000000}')
    assert has_float
    assert canonical_bytes(value, has_float=has_float) == b'{"x":1e+21,"y":[1e-7],"z":10000000000000000000000000}'


@pytest.mark.parametrize("raw", [
    b'{"a":NaN}', b'{"a":Infinity}', b'{"a":1e400}', b'{"a":"\\ud800"}', b'{"a":"\xff"}', b'{"a":"\x01"}',
    b'{"a":1,}', b'[1,]', b'{"a":01}', b'\xef\xbb\xbf{"a":1}', b'{"a":1} x', b'',
])
def test_the_line_reader_rejects_what_json_does_not_allow_or_jcs_cannot_write(raw):
    """Not RFC 8259 JSON (NaN, a lone surrogate, bad UTF-8, raw control characters, trailing commas,
    leading zeros, a BOM, trailing text), or a number no IEEE double holds: no canonical form."""
    with pytest.raises(ValueError):
        decode_line(raw)


def test_non_finite_floats_have_no_canonical_form():
    with pytest.raises(ValueError):
        canonical_bytes({"x": math.inf})
