"""The export's heads by position, as the auditor's reading keeps them (a page of consecutive lines
as one row, any other page a row per line), answer exactly as one row per line would."""

from __future__ import annotations

import hashlib
import sqlite3

from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from basis.ledger.replay import HeadIndex

# pages of positions: mostly runs going on from the last one, sometimes anything (out of order, repeated)
_RUN = st.tuples(st.integers(min_value=0, max_value=3), st.integers(min_value=1, max_value=6)).map(
    lambda gap_len: ("run", *gap_len))
_ANY = st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=6).map(lambda ps: ("any", ps))


@hsettings(max_examples=300, deadline=None)
@given(pages=st.lists(st.one_of(_RUN, _RUN, _ANY), min_size=1, max_size=8))
def test_heads_held_by_page_answer_as_heads_held_by_line(pages):
    db = sqlite3.connect(":memory:")
    index = HeadIndex(db)
    model: dict[int, str] = {}  # position -> the latest line's head there
    top, n = 0, 0
    for page in pages:
        if page[0] == "run":
            _, gap, length = page
            positions = list(range(top + 1 + gap, top + 1 + gap + length))
        else:
            positions = page[1]
        rows = []
        for p in positions:
            n += 1
            head = hashlib.sha256(b"%d" % n).digest()
            rows.append((p, head))
            model[p] = "0x" + head.hex()
        index.add(rows)
        top = max(top, *positions)
    for p in range(0, top + 3):
        assert index.head(p) == model.get(p), p
        after = [q for q in model if q > p]
        assert index.count_after(p) == len(after), p
        assert index.first_after(p) == (min(after) if after else None), p
