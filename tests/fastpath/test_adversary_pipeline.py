"""Adversary of the fast path's optimisations (issue 13, branch i13-replay): the proof records are
the evidence, so the native pipeline must give exactly what the pure twin (the reference) gives,
record for record, receipt for receipt, whatever the traffic does to its caches and tables.

Targets, each written against a change of beat_pipe.c:
- the two-way FT cache (flows sharing a set; more flows than the cache: eviction by fh's bit 40);
- receipts found by the flow's hash (``entry.fh``), the receipt table growing (rehash by the
  41-byte key), the cap's overflow receipts (found by the key's hash), resumed open receipts;
- the join index's 16-byte slots (the digest input kept beside the FIFO): queues of identical
  inputs, joins at exactly the window's edge, FIFO overflow while queues are long;
- the cached epoch and anchor-period starts: times exactly on, one before and one after epoch and
  period edges, time going back over an edge, huge jumps, times near 2^64.

Every Output of ``take()`` is compared field by field (tests/fastpath/test_twins.py's ``diff``),
then the totals. They pass against both the merged main and i13-replay unless the report says otherwise.
"""
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastpath.pure as pure_mod
from test_twins import diff

OWN = bytes.fromhex("0a00000000f1")
PREV_MAC = bytes.fromhex("020000000001")     # the neighbour packets come from (node 21)
NEXT_MAC = bytes.fromhex("020000000002")     # the neighbour they leave to (node 22)
OUTSIDE = bytes.fromhex("02aaaaaaaaaa")       # a host outside: records with prev/next 0
NEIGH = {PREV_MAC: 21, NEXT_MAC: 22}
U64 = (1 << 64) - 1


def ipv4(src, dst, ident, ttl=64, payload=b""):
    udp = struct.pack(">HHHH", 1000 + (ident & 0xFF), 53, 8 + len(payload), 0) + payload
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident & 0xFFFF, 0, ttl, 17, 0,
                       src, dst) + udp


def ingress(ip, src_mac=PREV_MAC):
    return OWN + src_mac + b"\x08\x00" + ip


def egress(ip, dst_mac=NEXT_MAC):
    b = bytearray(ip)
    b[8] = (b[8] - 1) & 0xFF                   # forwarded: TTL - 1 (the digest leaves it out)
    return dst_mac + OWN + b"\x08\x00" + bytes(b)


def addr(n):
    return bytes((10, (n >> 16) & 0xFF, (n >> 8) & 0xFF, n & 0xFF))


def pack(mod, frames):
    """``(buf, desc)`` of ``[(t_ns, frame)]`` (Ethernet, direction from the MACs)."""
    buf, desc = bytearray(), bytearray()
    for t, f in frames:
        desc += mod.pack_desc(t, len(buf), len(f), len(f), 1)
        buf += f
    return bytes(buf), bytes(desc)


def run_twins(native, events, kw, batch=None, seed=0, check=None):
    """Feed ``events`` (``("frames", [(t, frame)])``, ``("advance", t)``, ``("close",)``,
    ``("flush",)``) through both twins, comparing every take(). Returns the pure twin's outputs
    (a list of Outputs) and totals."""
    pipes = [pure_mod.Pipeline(**kw), native.Pipeline(**kw)]
    rng = random.Random(seed)
    outs = []

    def take(where):
        a, b = (p.take() for p in pipes)
        diff(a, b, where)
        outs.append(a)

    for k, ev in enumerate(events):
        if ev[0] == "frames":
            frames = ev[1]
            i = 0
            while i < len(frames):
                n = batch or rng.choice((1, 3, 64, 700))
                buf, desc = pack(pure_mod, frames[i:i + n])
                for p in pipes:
                    p.feed(buf, desc)
                i += n
                if rng.random() < 0.3:
                    take(f"event {k} frame {i}")
        elif ev[0] == "advance":
            for p in pipes:
                p.advance(ev[1])
        elif ev[0] == "close":
            for p in pipes:
                p.close_segment()
        elif ev[0] == "flush":
            for p in pipes:
                p.flush()
        take(f"after event {k} {ev[0]}")
    for p in pipes:
        p.flush()
    take("after the final flush")
    ta, tb = (p.totals() for p in pipes)
    assert ta == tb
    return outs, ta


def receipt_keys(outs):
    """Every finalised receipt's key (epoch_ns, role, src, dst) over the run, in order."""
    from fastpath.output import RECEIPT_SIZE
    keys = []
    for o in outs:
        r = bytes(o.receipts)
        for i in range(0, len(r), RECEIPT_SIZE):
            keys.append(r[i:i + 41])
    return keys


# -- the two-way FT cache ------------------------------------------------------------------------

def test_ft_cache_more_flows_than_slots(native):
    """40,000 flows (the cache has 16,384 slots, 2 ways per set): round-robin so that every set
    sees three flows and more in turn (each miss evicts a way); then the first flows again. Every
    record's FT must be the flow's own, as the pure twin (no cache) computes it."""
    flows = 40_000
    t = 1_000_000_000
    frames = []
    for rnd in range(2):
        for f in range(flows):
            ip = ipv4(addr(f), addr(0xFFFFFF - f % 7), rnd * flows + f)
            frames.append((t, ingress(ip)))
            frames.append((t + 5, egress(ip)))
            t += 10
    kw = dict(node_id=5, own_macs=[OWN], neighbours=NEIGH, join_window_ns=1_000,
              receipt_epoch_ns=10**12, segment_records=4096, anchor_period_ns=10**13)
    outs, tot = run_twins(native, [("frames", frames)], kw, batch=4096)
    assert tot["joined"] == 2 * flows and tot["records"] == 2 * flows


# -- receipts found by the flow's hash -----------------------------------------------------------

@pytest.mark.parametrize("cap", [3, 50, 100_000])
def test_receipts_by_flow_hash_while_the_table_grows(native, cap):
    """An edge router: packets from outside (role 1) leaving to outside (role 2) for thousands of
    flows over several epochs, each flow seen again and again in an epoch, while the receipt
    table grows; with a cap the overflow receipts take the rest. No receipt key may be finalised
    twice (a lookup by the flow's hash that missed the flow's receipt would open a second one)."""
    rng = random.Random(cap)
    flows = 3000
    t = 10**12
    frames = []
    for epoch in range(4):
        order = [rng.randrange(flows) for _ in range(9000)]
        for f in order:
            ip = ipv4(addr(f), addr(0x0A0000 + f % 13), rng.randrange(1 << 16))
            frames.append((t, ingress(ip, OUTSIDE)))
            frames.append((t + 3, egress(ip, OUTSIDE)))
            t += 100
        t += 10**6
    kw = dict(node_id=9, own_macs=[OWN], neighbours=NEIGH, join_window_ns=50,
              receipt_epoch_ns=1_000_000, segment_records=1000, anchor_period_ns=10**9,
              max_receipts_per_epoch=cap)
    outs, tot = run_twins(native, [("frames", frames)], kw, seed=cap)
    keys = receipt_keys(outs)
    assert len(keys) == len(set(keys)), "a receipt key finalised twice"
    assert tot["receipts"] > 0
    if cap < flows:
        assert tot["receipt_overflow"] > 0


def test_resumed_open_receipts_are_found_by_the_flow_hash(native):
    """A restart: the open receipts come back through resume (inserted by their 41-byte key);
    the next packets of those flows, in the same epoch, must add to them (found by the flow's
    hash), not open second receipts of the same key."""
    kw = dict(node_id=9, own_macs=[OWN], neighbours=NEIGH, join_window_ns=50,
              receipt_epoch_ns=10**9, segment_records=10_000, anchor_period_ns=10**11)
    t0 = 5 * 10**9
    first = [(t0 + 10 * f, ingress(ipv4(addr(f), addr(77), f), OUTSIDE)) for f in range(500)]
    pipes = [pure_mod.Pipeline(**kw), native.Pipeline(**kw)]
    for p in pipes:
        p.feed(*pack(pure_mod, first))
        p.advance(t0 + 10**6)
    a, b = (p.take() for p in pipes)
    diff(a, b, "before the restart")
    assert a.open_receipts
    state = (a.open_seg_seq, bytes(a.open_records), bytes(a.open_receipts), a.closed_before)
    again = [(t0 + 10**7 + 10 * f, ingress(ipv4(addr(f), addr(77), 1000 + f), OUTSIDE))
             for f in range(500)]
    outs = []
    pipes = [pure_mod.Pipeline(**kw), native.Pipeline(**kw)]
    for p in pipes:
        p.resume(*state)
        p.feed(*pack(pure_mod, again))
        p.advance(t0 + 3 * 10**9)
    a, b = (p.take() for p in pipes)
    diff(a, b, "after the restart")
    outs.append(a)
    for p in pipes:
        p.flush()
    a, b = (p.take() for p in pipes)
    diff(a, b, "after the flush")
    outs.append(a)
    keys = receipt_keys(outs)
    assert len(keys) == len(set(keys)) == 500
    from fastpath.output import RECEIPT_SIZE
    r = bytes(outs[0].receipts)
    packets = {struct.unpack_from(">Q", r, i + 41)[0] for i in range(0, len(r), RECEIPT_SIZE)}
    assert packets == {2}, "each flow's receipt counts both of its packets"


# -- the join index: queues of one digest input, the window's edge, overflow ----------------------

@pytest.mark.parametrize("max_pending", [16, 64, 1 << 16])
def test_join_queues_and_the_window_edge(native, max_pending):
    """Copies of one packet (one digest input) arriving again and again, their egress copies at
    exactly the window's edge (joins), one past it (does not), before their ingress (egress only),
    with the FIFO overflowing while the queues are long."""
    window = 1000
    rng = random.Random(max_pending)
    base = [ipv4(addr(1), addr(2), i) for i in range(5)]   # five digest inputs
    frames = []
    t = 10**15
    for _ in range(6000):
        ip = rng.choice(base)
        frames.append((t, ingress(ip)))
        lag = rng.choice((0, 1, window - 1, window, window + 1, 3 * window))
        if rng.random() < 0.15:
            frames.append((t - 1, egress(ip)))             # egress before any ingress
        elif rng.random() < 0.8:
            frames.append((t + lag, egress(ip)))
        t += rng.choice((0, 1, 7, 300))
    frames.sort(key=lambda e: e[0])
    kw = dict(node_id=3, own_macs=[OWN], neighbours=NEIGH, join_window_ns=window,
              receipt_epoch_ns=10**6, segment_records=97, anchor_period_ns=10**7,
              max_pending=max_pending)
    _, tot = run_twins(native, [("frames", frames)], kw, seed=max_pending)
    assert tot["joined"] > 1000 and tot["egress_only"] > 0 and tot["ingress_only"] > 0
    if max_pending == 16:
        assert tot["join_overflow"] > 0


# -- cached epoch and anchor period starts ---------------------------------------------------------

EPOCH = 1000
PERIOD = 3000


def _edge_times(base):
    """Times on, one before and one after the epoch and period edges near ``base``."""
    out = []
    for k in range(0, 7):
        for edge in (base + k * EPOCH, base + k * PERIOD):
            out += [edge - 1, edge, edge + 1]
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_epoch_and_period_edges(native, data):
    """Times drawn from the edges of receipt epochs and anchor periods, in any order (time going
    back over an edge, repeating, jumping a million epochs), with edge and transit packets and
    clock advances between: the cached epoch and period starts must give what a division gives."""
    base = data.draw(st.sampled_from([PERIOD * 10**6, 10**18 - 10**18 % PERIOD]))
    times = _edge_times(base) + [base + 10**9 * PERIOD, base - 10**4 * PERIOD]
    n = data.draw(st.integers(5, 60))
    events = []
    frames = []
    for i in range(n):
        t = data.draw(st.sampled_from(times))
        kind = data.draw(st.sampled_from(("edge-in", "edge-out", "transit", "advance", "close")))
        ip = ipv4(addr(i % 4), addr(100 + i % 3), i)
        if kind == "edge-in":
            frames.append((t, ingress(ip, OUTSIDE)))
            frames.append((t + data.draw(st.sampled_from((0, 1, 10))), egress(ip)))
        elif kind == "edge-out":
            frames.append((t, ingress(ip)))
            frames.append((t, egress(ip, OUTSIDE)))
        elif kind == "transit":
            frames.append((t, ingress(ip)))
        else:
            if frames:
                events.append(("frames", frames))
                frames = []
            events.append(("advance", t) if kind == "advance" else ("close",))
    if frames:
        events.append(("frames", frames))
    kw = dict(node_id=4, own_macs=[OWN], neighbours=NEIGH, join_window_ns=5,
              receipt_epoch_ns=EPOCH, segment_records=data.draw(st.sampled_from((1, 3, 1000))),
              anchor_period_ns=PERIOD, max_receipts_per_epoch=data.draw(st.sampled_from((1, 64))))
    run_twins(native, events, kw, batch=data.draw(st.sampled_from((1, 2, 1000))))


@pytest.mark.xfail(strict=True, reason="pre-existing (main and i13-replay alike): near 2^64 the "
                   "native twin's t_ns + window wraps (joins refused, records differ) and the pure "
                   "twin's closed_before passes 2^64 (not a u64); no live clock gets there")
@pytest.mark.parametrize("t_top", [U64 - 10**6, U64 - 1000, U64 - 1])
def test_times_near_2_64(native, t_top):
    """Frames stamped within a join window of 2^64 - 1 (the last representable nanoseconds):
    both twins record the same, and every record keeps its own time."""
    window = 1000
    frames = []
    t = t_top - 3000
    for i in range(40):
        ip = ipv4(addr(i), addr(9), i)
        tt = min(t + i * 97, U64)
        frames.append((tt, ingress(ip, OUTSIDE)))
        if i % 3:
            frames.append((min(tt + 50, U64), egress(ip)))
    frames.sort(key=lambda e: e[0])
    kw = dict(node_id=4, own_macs=[OWN], neighbours=NEIGH, join_window_ns=window,
              receipt_epoch_ns=10**9, segment_records=10, anchor_period_ns=10**10)
    outs, tot = run_twins(native, [("frames", frames), ("advance", U64)], kw, batch=7)
    assert tot["records"] == 40
