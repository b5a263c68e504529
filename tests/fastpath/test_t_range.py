"""fastpath.t_range: the time span of a run of records, which the store keeps per segment."""
import random
import struct

import pytest


def test_t_range_is_min_and_max_of_record_times(impl):
    rng = random.Random(5)
    for n in (1, 2, 17, 1000):
        ts = [rng.randrange(1 << 64) for _ in range(n)]
        records = b"".join(struct.pack(">Q", t) + rng.randbytes(40) for t in ts)
        assert impl.t_range(records) == (min(ts), max(ts))
        assert impl.t_range(memoryview(records)) == (min(ts), max(ts))


def test_t_range_of_nothing_is_zero(impl):
    assert impl.t_range(b"") == (0, 0)


def test_t_range_refuses_a_partial_record(impl):
    with pytest.raises(ValueError, match="48"):
        impl.t_range(bytes(47))
