"""The native join tables start small and grow with what is pending (the FIFO ring doubles and its
links are remapped; the join index rehashes). Both twins must still agree exactly while thousands
of observations are pending, with repeated identical packets (queues of several entries per digest
input), late and missing egress copies, and overflow."""
import random
import struct

import pytest

OWN = bytes.fromhex("020000000001")
PEER = bytes.fromhex("020000000002")
NEXT = bytes.fromhex("020000000003")


def _traffic(seed, packets):
    rng = random.Random(seed)
    events = []  # (order key, t_ns, frame)
    t = 10**18
    for i in range(packets):
        t += rng.randrange(1, 2000)
        ident = rng.randrange(64) if rng.random() < 0.3 else i  # repeats: same digest input
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 40, ident & 0xFFFF, 0, 64, 17, 0,
                         bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2))) + bytes(20)
        events.append((len(events), t, OWN + PEER + b"\x08\x00" + ip))  # in from PEER
        if rng.random() < 0.85:  # most leave, some much later, some never
            lag = rng.choice((1, 5, 50, 3000, 6000))
            events.append((len(events) + lag, t + lag * 1000, NEXT + OWN + b"\x08\x00" + ip))
    events.sort(key=lambda e: e[0])
    buf, desc, off = [], [], 0
    for _, ts, f in events:
        buf.append(f)
        desc.append(struct.pack("<QIIIHBB", ts, off, len(f), len(f), 1, 0, 0))
        off += len(f)
    return b"".join(buf), b"".join(desc)


@pytest.mark.parametrize("max_pending", [1 << 16, 1 << 12, 1 << 10, 1 << 6])
def test_twins_agree_while_tables_grow(pure, native, max_pending):
    buf, desc = _traffic(max_pending, 12000)
    kw = dict(own_macs=[OWN], neighbours={PEER: 7, NEXT: 8}, join_window_ns=10**10,
              segment_records=500, receipt_epoch_ns=10**7, max_pending=max_pending)
    a, b = pure.Pipeline(3, **kw), native.Pipeline(3, **kw)
    rng = random.Random(1)
    n = len(desc) // 24
    i = 0
    while i < n:
        k = rng.choice((1, 7, 64, 500, 4000))
        chunk = desc[i * 24:(i + k) * 24]
        a.feed(buf, chunk)
        b.feed(buf, chunk)
        if rng.random() < 0.2:  # a quiet moment: the daemon advances the clock by wall time
            last_t = struct.unpack_from("<Q", chunk, len(chunk) - 24)[0]
            now = last_t + rng.choice((0, 10**6, 10**9, 2 * 10**10))
            a.advance(now)
            b.advance(now)
        assert a.take() == b.take(), f"batch at frame {i}"
        i += k
    a.flush()
    b.flush()
    assert a.take() == b.take()
    ta, tb = a.totals(), b.totals()
    assert ta == tb
    assert ta["joined"] > 1000 and ta["records"] > 10000
    # never-leaving packets alone keep far more pending than the tables' starting sizes
    assert ta["ingress_only"] > 1500
    if max_pending <= 1 << 10:
        assert ta["join_overflow"] > 0
