"""The ISO text of a moment, built from a per-second cache, is exactly datetime.isoformat's."""

from __future__ import annotations

from hypothesis import given, strategies as st

from api.moments import from_us, iso_utc, to_us

# from 2000-01-01 (the earliest sale accepted) to the year 2100
MOMENTS = st.integers(min_value=946_684_800_000_000, max_value=4_102_444_800_000_000)


@given(st.lists(MOMENTS, min_size=1, max_size=20))
def test_iso_utc_is_isoformat(moments):
    for us in moments + [us - us % 1_000_000 for us in moments]:  # whole seconds have no fraction
        assert iso_utc(us) == from_us(us).isoformat()
        assert to_us(from_us(us)) == us
