"""The writer process's pipe framing: frames split anywhere come out whole, in order."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from basis.ledger.errors import IdempotencyConflict
from basis.ledger.writer_process import _frame, _portable, _unframe


@given(st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=40))
def test_frames_split_at_any_point_arrive_whole_and_in_order(cuts):
    frames = [[(i, "accept_job", {"job_id": uuid.uuid4(), "note": "x" * (i * 7 % 500)})] for i in range(12)]
    data = b"".join(_frame(f) for f in frames)
    buf, out, pos = bytearray(), [], 0
    for cut in cuts * (len(data) // sum(cuts) + 1):
        if pos >= len(data):
            break
        buf += data[pos:pos + cut]
        pos += cut
        out += _unframe(buf)
    assert out == frames and not buf


def test_an_exception_that_cannot_cross_says_what_it_was():
    class Local(Exception):  # defined in a function: pickle cannot find it by name
        pass

    lost = _portable(Local("disk on fire"))
    assert isinstance(lost, RuntimeError) and "Local: disk on fire" in str(lost)
    kept = _portable(IdempotencyConflict("another body", "job-1"))
    assert isinstance(kept, IdempotencyConflict) and kept.job_id == "job-1"
