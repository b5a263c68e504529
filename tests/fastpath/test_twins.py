"""The two twins are byte-identical: >= 100,000 random and mutated frames through both Pipelines.

Deterministic (seeded). Frames start from valid scapy-built packets in every link type and are
mutated (byte flips, truncations, extensions, random ethertypes/linktypes/lengths) or replaced by
random bytes; MACs are drawn from own/neighbour/unknown so ingress, egress and joins happen, and
frames carry interface slots while neighbours are bound to some (a neighbour's MAC on another
interface is recorded as from or to outside, counted as neighbour_wrong_interface);
timestamps jitter, repeat, go back and jump over epochs and anchor periods. Small windows, epochs,
segments and FIFOs make every path of the join / receipt / segment logic run. Every take() Output
is compared field by field, then flush() and totals().
"""
import random
import struct
import time

import pytest
from scapy.all import ICMP, IP, TCP, UDP, IPOption_NOP, IPv6, IPv6ExtHdrFragment, \
    IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, Raw, fragment, raw

import fastpath.pure as pure_mod
from fastpath.output import WRONG_IF_MAX
import spec_ref
from spec_ref import NONE

OWN = [bytes.fromhex("0a00000000f1"), bytes.fromhex("0a00000000f2")]
NB = [bytes.fromhex(f"02000000000{i}") for i in range(1, 6)]     # MAC_A, MAC_B, ... are NB[0..]
LINKTYPES = (1, 113, 276, 101, 12, 14, 228, 229, 0, 108, 104, 9, 50, 2, 147, 65535)
ETHERTYPES = (0x0800, 0x86DD, 0x8100, 0x88A8, 0x9100, 0x8847, 0x8848, 0x0806, 0x0000, 0xFFFF)
FIELDS = ("records", "segments", "receipts", "counters", "stats", "open_seg_seq", "open_records",
          "open_receipts", "closed_before")


def base_packets():
    v4 = [("10.0.0.%d" % i, "10.1.0.%d" % (i % 3)) for i in range(1, 5)]
    v6 = [("2001:db8::%x" % i, "2001:db8:1::%x" % (i % 2)) for i in range(1, 4)]
    out = []
    for k, (s, d) in enumerate(v4):
        out.append(raw(IP(src=s, dst=d, id=k) / UDP(sport=k, dport=53) / Raw(b"u" * (k * 9))))
        out.append(raw(IP(src=s, dst=d, id=k + 100) / TCP(sport=k, dport=80) / Raw(b"t" * 30)))
        out.append(raw(IP(src=s, dst=d) / ICMP(seq=k)))
    out.append(raw(IP(src="10.0.0.1", dst="10.1.0.1", options=[IPOption_NOP()] * 12, proto=17)
                   / Raw(b"o" * 5)))
    out.append(raw(IP(src="10.0.0.1", dst="10.1.0.1", proto=253)))
    out += [raw(f) for f in fragment(IP(src="10.0.0.2", dst="10.1.0.2", id=9) / UDP()
                                     / Raw(b"f" * 2000), fragsize=800)]
    for k, (s, d) in enumerate(v6):
        out.append(raw(IPv6(src=s, dst=d, fl=k) / UDP(sport=k) / Raw(b"v" * (k * 11))))
        out.append(raw(IPv6(src=s, dst=d) / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting(
            addresses=["2001:db8::99"]) / IPv6ExtHdrFragment(id=k) / UDP() / Raw(b"e" * 20)))
    out.append(raw(IPv6(src="2001:db8::1", dst="2001:db8:1::1", nh=59)))
    out.append(raw(IP(src="10.0.0.3", dst="10.1.0.0") / UDP() / Raw(b"J" * 8972)))
    return out


BASES = base_packets()
SEEDS = [(frame, lt, len(frame) - len(ip)) for ip in BASES
         for _, frame, lt in spec_ref.all_links(ip)]       # (frame, linktype, ip offset)


def forwarded(ip):
    """The packet as this router sends it on: TTL/hop limit - 1, a new checksum."""
    b = bytearray(ip)
    if b[0] >> 4 == 4:
        b[8] = (b[8] - 1) & 0xFF
        b[10:12] = b"\x12\x34"
    else:
        b[7] = (b[7] - 1) & 0xFF
    return bytes(b)


def mac(rng):
    r = rng.random()
    if r < 0.6:
        return rng.choice(NB)
    if r < 0.8:
        return rng.choice(OWN)
    return rng.randbytes(6)


def mutate(rng, frame, lt, ip_off):
    f = bytearray(frame)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        m = rng.randrange(9)
        if m == 0 and f:                                   # byte flip anywhere
            f[rng.randrange(len(f))] ^= 1 << rng.randrange(8)
        elif m == 1 and f:                                 # random byte in the first 80
            f[rng.randrange(min(80, len(f)))] = rng.randrange(256)
        elif m == 2:                                       # truncate
            del f[rng.randrange(len(f) + 1):]
        elif m == 3:                                       # extend
            f += rng.randbytes(rng.randrange(1, 40))
        elif m == 4 and lt == 1 and len(f) >= 14:          # random ethertype
            f[12:14] = struct.pack(">H", rng.choice(ETHERTYPES) if rng.random() < 0.8
                                   else rng.randrange(65536))
        elif m == 5 and len(f) > ip_off + 4:               # IP lengths
            v = rng.choice((0, 1, 19, 20, 21, 40, 44, 64, 65535, rng.randrange(65536)))
            at = ip_off + (2 if f[ip_off] >> 4 == 4 else 4)
            f[at:at + 2] = struct.pack(">H", v)
        elif m == 6 and len(f) > ip_off:                   # version / ihl nibble
            f[ip_off] = rng.randrange(256) if rng.random() < 0.5 else \
                (f[ip_off] & 0xF0) | rng.randrange(16)
        elif m == 7:                                       # shrink to around the IP header
            del f[ip_off + rng.randrange(0, 70):]
        elif m == 8 and len(f) > 4:                        # insert / remove bytes in the middle
            i = rng.randrange(len(f))
            if rng.random() < 0.5:
                f[i:i] = rng.randbytes(rng.choice((1, 2, 4)))
            else:
                del f[i:i + rng.choice((1, 2, 4))]
    return bytes(f)


def gen_stream(rng, n, t_start):
    """[(t_ns, frame, linktype, dir, wirelen)]"""
    out, deferred, t = [], [], t_start
    while len(out) < n:
        r = rng.random()
        step = rng.random()
        if step < 0.1:
            dt = 0                                          # repeated timestamp
        elif step < 0.85:
            dt = rng.randrange(0, 20_000)
        elif step < 0.95:
            dt = -rng.randrange(0, 200_000)                 # jitter back
        else:
            dt = rng.randrange(1_000_000, 30_000_000)       # jump over windows and epochs
        t = max(0, t + dt)
        d = 0 if rng.random() < 0.85 else rng.choice((1, 2))
        if r < 0.35:                                        # an Ethernet hop through this router
            ip = rng.choice(BASES)
            tags = rng.choice(((), (), (0x8100,), (0x88A8, 0x8100), (), (), (0x8100,), (0x88A8, 0x8100),
                               (0x88A8, 0x8100, 0x8100)))
            mpls = rng.choice((0, 0, 0, 1, 3))
            src_in = rng.choice(NB) if rng.random() < 0.8 else rng.randbytes(6)
            out.append((t, spec_ref.link_ether(ip, dst=rng.choice(OWN), src=src_in, tags=tags,
                                               mpls=mpls)[0], 1, d, None))
            if rng.random() < 0.8:
                e = spec_ref.link_ether(forwarded(ip), dst=mac(rng), src=rng.choice(OWN),
                                        tags=rng.choice(((), (0x8100,))))[0]
                deferred.append((rng.randrange(0, 6), e))
        elif r < 0.45:                                      # Linux cooked, in or out
            ip = rng.choice(BASES)
            kind = rng.choice((0, 4, 4, 1, 3))
            addr = mac(rng) if rng.random() < 0.9 else rng.randbytes(rng.choice((0, 4, 8)))
            arphrd = 1 if rng.random() < 0.9 else 772
            if rng.random() < 0.5:
                f = spec_ref.link_sll(ip, pkttype=kind, addr=addr, arphrd=arphrd)[0]
                out.append((t, f, 113, d, None))
            else:
                f = spec_ref.link_sll2(ip, pkttype=kind, addr=addr, arphrd=arphrd)[0]
                out.append((t, f, 276, d, None))
        elif r < 0.62:                                      # a seed as it is
            f, lt, _ = rng.choice(SEEDS)
            out.append((t, f, lt, d, None))
        elif r < 0.90:                                      # a mutated seed
            f, lt, off = rng.choice(SEEDS)
            out.append((t, mutate(rng, f, lt, off), lt, d, None))
        elif r < 0.95:                                      # a seed under another link type
            f, _, _ = rng.choice(SEEDS)
            out.append((t, f, rng.choice(LINKTYPES), d, None))
        else:                                               # random bytes
            out.append((t, rng.randbytes(rng.choice((0, 1, 3, 14, 20, 40, 90))),
                        rng.choice(LINKTYPES), d, None))
        # deferred egress copies come out a few frames later (after jitter)
        keep = []
        for k, e in deferred:
            if k <= 0:
                out.append((max(0, t + rng.randrange(0, 60_000)), e, 1, 0, None))
            else:
                keep.append((k - 1, e))
        deferred = keep
    out = out[:n]
    for i, (t, f, lt, d, _) in enumerate(out):
        wl = len(f) + (rng.randrange(0, 100) if rng.random() < 0.1 else 0)
        out[i] = (t, f, lt, d, wl)
    return out


def batches(rng, mod, stream, max_batch):
    """Yield (buf, desc) with frames at random offsets and gaps in the buffer."""
    i = 0
    while i < len(stream):
        n = rng.randint(1, max_batch)
        buf, desc = bytearray(rng.randbytes(rng.randrange(4))), bytearray()
        for t, f, lt, d, wl in stream[i:i + n]:
            # VLAN tags a live capture stripped: a property of the frame, the same for both twins
            vl = (0, 0, 0, 0, 0, 1, 1, 2, 3)[(t + len(f)) % 9]
            # and the interface it was captured on (0: unknown), a property of the frame too
            slot = (0, 1, 1, 2, 3, 63)[(t // 7 + len(f)) % 6]
            desc += mod.pack_desc(t, len(buf), len(f), wl, lt, d, vl, slot)
            buf += f
            buf += rng.randbytes(rng.choice((0, 0, 1, 7)))
        kind = rng.randrange(3)
        buf = bytes(buf) if kind == 0 else (buf if kind == 1 else memoryview(bytes(buf)))
        yield buf, bytes(desc)
        i += n


def diff(a, b, where):
    """Field-by-field comparison of two Outputs with a readable first difference."""
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if name == "segments":
            x = [tuple(bytes(v) if isinstance(v, (bytes, bytearray, memoryview)) else v for v in s)
                 for s in x]
            y = [tuple(bytes(v) if isinstance(v, (bytes, bytearray, memoryview)) else v for v in s)
                 for s in y]
        elif isinstance(x, (bytearray, memoryview)):
            x = bytes(x)
        if isinstance(y, (bytearray, memoryview)):
            y = bytes(y)
        if x == y:
            continue
        msg = f"{where}: {name} differ"
        if name in ("records", "open_records") and isinstance(x, bytes) and isinstance(y, bytes):
            for i in range(0, max(len(x), len(y)), 48):
                if x[i:i + 48] != y[i:i + 48]:
                    msg += f" at record {i // 48}: pure {x[i:i + 48].hex()} native {y[i:i + 48].hex()}"
                    break
            msg += f" (pure {len(x) // 48} records, native {len(y) // 48})"
        elif name == "stats":
            msg += ": " + str({k: (x.get(k), y.get(k)) for k in set(x) | set(y)
                                if x.get(k) != y.get(k)})
        else:
            msg += f": pure {x!r:.300} native {y!r:.300}"
        pytest.fail(msg)


CONFIGS = [
    # (frames, hash, params, t_start, resume)
    (40_000, "sha3-256", dict(node_id=11, join_window_ns=50_000, receipt_epoch_ns=1_000_000,
                              segment_records=7, anchor_period_ns=3_000_000, max_pending=16),
     1_700_000_000_000_000_000, None),
    (30_000, "blake2b-256", dict(node_id=(1 << 64) - 2, join_window_ns=1_000_000,
                                 receipt_epoch_ns=250_000, segment_records=1,
                                 anchor_period_ns=10_000_000_000, max_pending=1 << 18),
     0, None),
    (32_000, "sha3-256", dict(node_id=1, join_window_ns=20_000, receipt_epoch_ns=2_000_000,
                              segment_records=64, anchor_period_ns=7_000_000, max_pending=64,
                              max_receipts_per_epoch=3),
     5_000_000_000, dict(next_seg_seq=1000, closed_before=4_000_000_000)),
]


# Neighbours on every interface (an id) and bound to interface slots ((id, slots)); NB[3] is on none
# of the captured interfaces: it matches only where the interface is unknown (slot 0).
NEIGH = {NB[0]: 1, NB[1]: (2, (1,)), NB[2]: (3, [2, 3, 63]), NB[3]: (4, ())}


def random_neighbours(rng):
    """A new map (SIGHUP): each neighbour kept or not, on every interface or on some."""
    return {m: (rng.randrange(1, 1 << 20) if rng.random() < 0.4 else
                (rng.randrange(1, 1 << 20), tuple(rng.sample((1, 2, 3, 63), rng.randrange(4)))))
            for m in NB if rng.random() < 0.6}


def run_pair(mods, cfg, seed, max_batch=600, restart_at=None):
    n, h, params, t_start, resume = cfg
    rng = random.Random(seed)
    stream = gen_stream(rng, n, t_start)
    neigh = NEIGH
    pipes = [m.Pipeline(hash_name=h, own_macs=tuple(OWN), neighbours=neigh, **params) for m in mods]
    if resume:
        for p in pipes:
            p.resume(**resume)
    seen = {"records": 0, "segments": 0, "receipts": 0, "joined": 0, "join_overflow": 0,
            "receipt_late": 0, "egress_only": 0, "ingress_only": 0, "unknown_mac": 0,
            "neighbour_wrong_interface": 0, "receipt_overflow": 0}
    wrong_listed = 0
    brng = random.Random(seed + 1)
    frames_before_restart = 0
    for k, (buf, desc) in enumerate(batches(brng, mods[0], stream, max_batch)):
        if k == restart_at:
            # a restart: both twins resume from the state the pure one reported
            outs = [p.take() for p in pipes]
            for o in outs[1:]:
                diff(outs[0], o, f"seed {seed} before restart")
            for s in seen:
                seen[s] += outs[0].stats[s]
            frames_before_restart = pipes[0].totals()["frames"]
            o = outs[0]
            pipes = [m.Pipeline(hash_name=h, own_macs=tuple(OWN), neighbours=neigh, **params)
                     for m in mods]
            for p in pipes:
                p.resume(o.open_seg_seq, bytes(o.open_records), bytes(o.open_receipts),
                         o.closed_before)
            assert o.open_records or o.open_receipts, "the restart should carry open state"
        for p in pipes:
            p.feed(buf, desc)
        a = brng.random()
        if a < 0.03:
            for p in pipes:
                p.close_segment()
        elif a < 0.05:
            new = random_neighbours(brng)
            for p in pipes:
                p.set_neighbours(new)
        if brng.random() < 0.8:
            outs = [p.take() for p in pipes]
            for o in outs[1:]:
                diff(outs[0], o, f"seed {seed} batch {k}")
            wrong = [p.take_wrong_interface() for p in pipes]
            assert all(w == wrong[0] for w in wrong[1:]), \
                f"seed {seed} batch {k}: take_wrong_interface differs: {wrong}"
            wrong_listed += sum(x[4] for x in wrong[0])
            unknown = [p.take_unknown_macs() for p in pipes]
            assert all(u == unknown[0] for u in unknown[1:]), \
                f"seed {seed} batch {k}: take_unknown_macs differs: {unknown}"
            for s in seen:
                seen[s] += outs[0].stats[s]
    for p in pipes:
        p.flush()
    outs = [p.take() for p in pipes]
    for o in outs[1:]:
        diff(outs[0], o, f"seed {seed} after flush")
    for s in seen:
        seen[s] += outs[0].stats[s]
    totals = [p.totals() for p in pipes]
    assert all(t == totals[0] for t in totals[1:])
    assert totals[0]["frames"] + frames_before_restart == n
    assert wrong_listed > 0, "no wrong-interface frame was listed for the log"
    return seen, totals[0]


def test_twins_random_frames(native):
    """>= 100,000 frames through pure and native, compared after every take()."""
    t0 = time.perf_counter()
    total = 0
    for i, cfg in enumerate(CONFIGS):
        seen, totals = run_pair((pure_mod, native), cfg, seed=1000 + i,
                                restart_at=None if i == 1 else 60)
        total += cfg[0]             # run_pair checked that every frame was counted
        # the stream exercises what it is meant to
        for s in ("records", "segments", "receipts", "joined", "unknown_mac",
                  "neighbour_wrong_interface"):
            assert seen[s] > 0, (i, s)
        if cfg[2]["max_pending"] <= 64:
            assert seen["join_overflow"] > 0
        # the receipt cap (3 per role and epoch) is reached, and the restart carries it
        assert (seen["receipt_overflow"] > 0) == ("max_receipts_per_epoch" in cfg[2]), i
        for r in ("non_ip", "unsupported_linktype", "runt", "truncated", "bad_version",
                  "bad_ihl", "bad_length", "vlan_depth"):
            assert totals[r] > 0, (i, r)
    assert total >= 100_000
    print(f"twins: {total} frames in {time.perf_counter() - t0:.1f} s")


def _aggregate(outs):
    """What a sequence of takes produced, independent of how the frames were batched."""
    recs, segs, rcpts, counters, stats = b"", [], [], {}, {}
    for o in outs:
        recs += bytes(o.records)
        segs += [tuple(bytes(v) if not isinstance(v, int) else v for v in s) for s in o.segments]
        rcpts += [bytes(o.receipts[i:i + 89]) for i in range(0, len(o.receipts), 89)]
        for i in range(0, len(o.counters), 48):
            key = bytes(o.counters[i:i + 16])
            pk, by, first, last = struct.unpack(">QQQQ", o.counters[i + 16:i + 48])
            c = counters.setdefault(key, [0, 0, first, last])
            c[0] += pk
            c[1] += by
            c[2] = min(c[2], first)
            c[3] = max(c[3], last)
        for k, v in o.stats.items():
            stats[k] = stats.get(k, 0) + v
    return recs, segs, sorted(rcpts), counters, stats


@pytest.mark.parametrize("cfg", range(len(CONFIGS)))
def test_batch_split_invariance(impl, cfg):
    """Per docs/fastpath.md every step is per frame: how frames are batched changes nothing."""
    n, h, params, t_start, resume = CONFIGS[cfg]
    stream = gen_stream(random.Random(7 + cfg), 6000, t_start)
    results = []
    for split_seed, max_batch in ((1, 1), (2, 50), (3, 6000)):
        p = impl.Pipeline(hash_name=h, own_macs=tuple(OWN), neighbours={NB[0]: 1, NB[1]: 2},
                          **params)
        if resume:
            p.resume(**resume)
        outs = []
        for buf, desc in batches(random.Random(split_seed), impl, stream, max_batch):
            p.feed(buf, desc)
            if max_batch > 1:
                outs.append(p.take())
        p.flush()
        outs.append(p.take())
        results.append(_aggregate(outs))
    assert results[0] == results[1] == results[2]
    recs, segs, rcpts, counters, stats = results[0]
    assert stats["frames"] == len(stream)
    assert len(recs) == 48 * stats["records"] == 48 * (stats["ip"] - stats["joined"])
    assert b"".join(s[3] for s in segs) == recs
    assert stats["receipts"] == len(rcpts)


def test_no_second_receipt_for_a_closed_epoch(impl):
    """SPEC: one receipt per (src, dst) flow per receipt epoch. After flush() finalised the epoch's
    receipts, a later packet of that flow and epoch must not produce a second receipt for it."""
    ip = raw(IP(src="10.0.0.1", dst="10.0.0.2", proto=59))
    p = impl.Pipeline(1, receipt_epoch_ns=1000)
    p.feed(ip, impl.pack_desc(1500, 0, len(ip), len(ip), 101))
    p.flush()
    first = p.take()
    assert len(first.receipts) == 89 and first.receipts[:9] == struct.pack(">QB", 1000, 1)
    p.feed(ip, impl.pack_desc(1600, 0, len(ip), len(ip), 101))    # same epoch [1000, 2000)
    p.flush()
    second = p.take()
    keys = [second.receipts[i:i + 41] for i in range(0, len(second.receipts), 89)]
    assert first.receipts[:41] not in keys, "a second receipt for an epoch already finalised"
    assert second.stats["receipt_late"] == 1


# --- both twins against a model of docs/fastpath.md "The join", "Releasing", "Outputs" ----------
# Frames here are well formed and built by the test, so what the parser must find (IP packet,
# MACs, direction) is known without parsing; the model applies the documented steps to it.

class Model:
    def __init__(self, node_id, hash_name, own_macs, neighbours, join_window_ns, receipt_epoch_ns,
                 segment_records, anchor_period_ns, max_pending, max_receipts_per_epoch=1024):
        self.node, self.h, self.own = node_id, hash_name, set(own_macs)
        # {mac: (id, slots)}: slots None = every interface
        self.nb = {m: (v, None) if isinstance(v, int) else (v[0], set(v[1]))
                   for m, v in neighbours.items()}
        self.W, self.E, self.SR, self.A, self.MP = (join_window_ns, receipt_epoch_ns,
                                                    segment_records, anchor_period_ns, max_pending)
        self.RC_MAX = max_receipts_per_epoch
        self.fifo, self.clock, self.closed_before = [], 0, 0
        self.rc, self.seg, self.seg_seq = {}, [], 0
        self.stats = dict.fromkeys(STATS, 0)
        self._reset()

    def _reset(self):
        self.o_rec, self.o_seg, self.o_rc, self.o_cnt = [], [], [], {}
        self.taken = dict(self.stats)

    def H(self, data):
        return spec_ref.H(self.h, data)

    def neighbour(self, mac, slot):
        """docs/fastpath.md "Neighbour ids": the id of the neighbour with this MAC when it is at
        the frame's interface (slot 0: unknown, anywhere), else 0 (counted)."""
        if mac not in self.nb:
            self.stats["unknown_mac"] += 1
            return 0
        nid, slots = self.nb[mac]
        if slots is None or slot == 0 or slot in slots:
            return nid
        self.stats["neighbour_wrong_interface"] += 1
        return 0

    def frame(self, t, ip, kind, src_mac, dst_mac, pkttype, arphrd, d, slot):
        st = self.stats
        self.clock = max(self.clock, t)
        st["frames"] += 1
        st["ip"] += 1
        if kind == "eth":
            egress = d == 2 or (d == 0 and src_mac in self.own)
            nid = self.neighbour(dst_mac if egress else src_mac, slot)
        elif kind == "sll":
            egress = d == 2 or (d == 0 and pkttype == 4)
            if egress or arphrd != 1:
                nid = 0
                st["unknown_mac"] += 1
            else:
                nid = self.neighbour(src_mac, slot)
        else:                                   # raw: no MACs
            egress, nid = d == 2, 0
        pd, ft = spec_ref.pd_ft(ip, self.h)
        src, dst = spec_ref.addrs(ip)
        self.release_ready()
        e = dict(t=t, pd=pd, ft=ft, sd=src + dst, ip_len=spec_ref.ip_len(ip))
        if not egress:
            st["ingress"] += 1
            self.append(dict(e, prev=nid, next=NONE, done=False))
        else:
            st["egress"] += 1
            for x in self.fifo:
                if not x["done"] and x["prev"] != NONE and x["pd"] == pd and x["t"] + self.W >= t:
                    x["next"], x["done"] = nid, True
                    st["joined"] += 1
                    break
            else:
                self.append(dict(e, prev=NONE, next=nid, done=True))
        self.release_ready()
        target = max(0, self.clock - self.W)
        target -= target % self.E
        if target > self.closed_before:
            for key in sorted(k for k in self.rc if k[0] < target):
                self.finalise(key)
            self.closed_before = target

    def append(self, e):
        if len(self.fifo) >= self.MP:
            self.release(self.fifo.pop(0))
            self.stats["join_overflow"] += 1
        self.fifo.append(e)

    def release_ready(self):
        while self.fifo and (self.fifo[0]["done"] or self.fifo[0]["t"] + self.W < self.clock):
            self.release(self.fifo.pop(0))

    def release(self, e):
        st = self.stats
        rec = struct.pack(">QQQ", e["t"], e["prev"], e["next"]) + e["pd"] + e["ft"]
        self.o_rec.append(rec)
        st["records"] += 1
        st["ingress_only"] += e["next"] == NONE
        st["egress_only"] += e["prev"] == NONE
        c = self.o_cnt.setdefault((e["prev"], e["next"]), [0, 0, e["t"], e["t"]])
        c[0] += 1
        c[1] += e["ip_len"]
        c[2], c[3] = min(c[2], e["t"]), max(c[3], e["t"])
        epoch = e["t"] - e["t"] % self.E
        for role, yes in ((1, e["prev"] == 0), (2, e["next"] == 0)):
            if yes:
                if epoch < self.closed_before:
                    st["receipt_late"] += 1
                    continue
                # "Releasing": a flow gets a receipt of its own while the epoch holds fewer than
                # max_receipts_per_epoch of the role; beyond, the overflow receipt (src = dst = 0)
                key = (epoch, role, e["sd"])
                own = sum(1 for k in self.rc if k[:2] == (epoch, role) and k[2] != OVERFLOW_SD)
                if key not in self.rc and (e["sd"] == OVERFLOW_SD or own >= self.RC_MAX):
                    key = (epoch, role, OVERFLOW_SD)
                if key[2] == OVERFLOW_SD:
                    st["receipt_overflow"] += 1
                r = self.rc.setdefault(key, [0, 0])
                r[0] += 1
                r[1] += e["ip_len"]
        if self.seg and e["t"] // self.A != self.seg_first // self.A:
            self.close_segment()
        if not self.seg:
            self.seg_first = e["t"]
        self.seg.append(rec)
        if len(self.seg) == self.SR:
            self.close_segment()

    def close_segment(self):
        if not self.seg:
            return
        recs = b"".join(self.seg)
        S = self.H(b"BEAT-SG-v1" + struct.pack(">QQQ", self.node, self.seg_seq, len(self.seg))
                   + recs)
        self.o_seg.append((self.seg_seq, len(self.seg), S, recs))
        self.stats["segments"] += 1
        self.seg, self.seg_seq = [], self.seg_seq + 1

    def finalise(self, key):
        epoch, role, sd = key
        pk, by = self.rc.pop(key)
        R = self.H(b"BEAT-RC-v1" + struct.pack(">QB", self.node, role) + sd
                   + struct.pack(">QQQ", epoch, pk, by))
        self.o_rc.append(struct.pack(">QB", epoch, role) + sd + struct.pack(">QQ", pk, by) + R)
        self.stats["receipts"] += 1

    def flush(self):
        while self.fifo:
            self.release(self.fifo.pop(0))
        self.close_segment()
        for key in sorted(self.rc):
            self.finalise(key)
        # docs/fastpath.md "flush()": the finalised epochs stay closed (SPEC: one receipt per flow
        # per epoch), up to the end of the clock's epoch.
        end = self.clock - self.clock % self.E + self.E
        self.closed_before = max(self.closed_before, end)

    def take(self):
        out = dict(
            records=b"".join(self.o_rec), segments=self.o_seg,
            receipts=b"".join(sorted(self.o_rc)),
            counters=b"".join(struct.pack(">QQQQQQ", *k, *v) for k, v in sorted(self.o_cnt.items())),
            stats={k: self.stats[k] - self.taken[k] for k in STATS},
            open_seg_seq=self.seg_seq, open_records=b"".join(self.seg),
            open_receipts=b"".join(sorted(struct.pack(">QB", ep, role) + sd + struct.pack(">QQ", *v)
                                          for (ep, role, sd), v in self.rc.items())),
            closed_before=self.closed_before)
        self._reset()
        return out


STATS = ("frames", "ip", "non_ip", "unsupported_linktype", "runt", "truncated", "bad_version",
         "bad_ihl", "bad_length", "vlan_depth", "ingress", "egress", "joined", "ingress_only",
         "egress_only", "unknown_mac", "neighbour_wrong_interface", "join_overflow", "receipt_late",
         "records", "segments", "receipts", "receipt_overflow")
OVERFLOW_SD = bytes(32)


def model_events(rng, n, t_start, q=1):
    """[(t, ip, kind, src_mac, dst_mac, pkttype, arphrd, dir, slot)], with forwarded copies for
    joins. Times are multiples of q (q > 1 makes ties with the window and epoch bounds frequent);
    slot is the capture interface (0: unknown)."""
    slot = lambda: rng.choice((0, 1, 1, 2, 3))          # noqa: E731
    out, t = [], t_start
    while len(out) < n:
        s = rng.random()
        t = max(0, t + (0 if s < 0.1 else rng.randrange(0, 30_000) if s < 0.85
                        else -rng.randrange(0, 100_000) if s < 0.95
                        else rng.randrange(1_000_000, 20_000_000)))
        t -= t % q
        ip = rng.choice(BASES[:-1])
        d = 0 if rng.random() < 0.9 else rng.choice((1, 2))
        k = rng.random()
        if k < 0.6:
            out.append((t, ip, "eth", mac(rng), rng.choice(OWN), 0, 1, d, slot()))
            for _ in range(rng.choice((0, 1, 1, 1, 2))):      # 0, 1 or 2 copies sent on
                te = max(0, t + rng.randrange(-5_000, 80_000))
                out.append((te - te % q, forwarded(ip), "eth",
                            rng.choice(OWN), mac(rng), 0, 1, 0, slot()))
        elif k < 0.85:
            out.append((t, ip, "sll", mac(rng), None, rng.choice((0, 4, 1)),
                        1 if rng.random() < 0.85 else 772, d, slot()))
        else:
            out.append((t, ip, "raw", None, None, 0, 1, d, slot()))
    return out[:n]


def model_frame(ev):
    t, ip, kind, src, dst, pkttype, arphrd, d, _slot = ev
    if kind == "eth":
        return spec_ref.link_ether(ip, dst=dst, src=src)
    if kind == "sll":
        return spec_ref.link_sll(ip, pkttype=pkttype, addr=src, arphrd=arphrd)
    return spec_ref.link_raw(ip, 101)


MODEL_CONFIGS = [
    ("sha3-256", dict(node_id=21, join_window_ns=40_000, receipt_epoch_ns=500_000,
                      segment_records=5, anchor_period_ns=2_000_000, max_pending=16), 0),
    ("blake2b-256", dict(node_id=22, join_window_ns=3_000_000, receipt_epoch_ns=1_000_000,
                         segment_records=50, anchor_period_ns=4_000_000, max_pending=1024),
     1_600_000_000_000_000_000),
    ("sha3-256", dict(node_id=23, join_window_ns=20_000, receipt_epoch_ns=100_000,
                      segment_records=9, anchor_period_ns=200_000, max_pending=32), 10_000_000),
    # a receipt cap of 2 per role and epoch: the other flows go to the overflow receipts
    ("sha3-256", dict(node_id=24, join_window_ns=40_000, receipt_epoch_ns=2_000_000,
                      segment_records=13, anchor_period_ns=5_000_000, max_pending=16,
                      max_receipts_per_epoch=2), 0),
]


@pytest.mark.parametrize("cfg", range(len(MODEL_CONFIGS)))
def test_pipeline_against_doc_model(impl, cfg):
    h, params, t_start = MODEL_CONFIGS[cfg]
    rng = random.Random(99 + cfg)
    events = model_events(rng, 8000, t_start, q=10_000 if cfg == 2 else 1)
    # on every interface, on slot 1 only, on slots 2 and 3
    neigh = {NB[0]: 1, NB[1]: (2, (1,)), NB[2]: (3, (2, 3))}
    model = Model(hash_name=h, own_macs=OWN, neighbours=neigh, **params)
    p = impl.Pipeline(hash_name=h, own_macs=tuple(OWN), neighbours=neigh, **params)
    i, k = 0, 0
    while i < len(events):
        n = rng.randint(1, 300 if cfg < 2 else 4)
        buf, desc = b"", b""
        for ev in events[i:i + n]:
            f, lt = model_frame(ev)
            desc += impl.pack_desc(ev[0], len(buf), len(f), len(f), lt, ev[7], 0, ev[8])
            buf += f
            model.frame(*ev)
        p.feed(buf, desc)
        i += n
        k += 1
        if rng.random() < 0.05:
            p.close_segment()
            model.close_segment()
        _check_model(p.take(), model.take(), f"batch {k}")
    p.flush()
    model.flush()
    exp = model.take()
    _check_model(p.take(), exp, "flush")
    st = model.stats
    for s in ("joined", "receipts", "segments", "egress_only", "ingress_only", "unknown_mac",
              "neighbour_wrong_interface") + \
            (("join_overflow", "receipt_late") if cfg != 1 else ()) + \
            (("receipt_overflow",) if "max_receipts_per_epoch" in params else ()):
        assert st[s] > 0, s


def _check_model(out, exp, where):
    for name, want in exp.items():
        got = getattr(out, name)
        if name == "segments":
            got = [tuple(bytes(v) if not isinstance(v, int) else v for v in s) for s in got]
        elif not isinstance(got, (int, dict)):
            got = bytes(got)
        if got != want:
            msg = f"{where}: {name} differs from the docs model"
            if name in ("records", "open_records"):
                for j in range(0, max(len(got), len(want)), 48):
                    if got[j:j + 48] != want[j:j + 48]:
                        msg += f" at record {j // 48}: got {got[j:j + 48].hex()} want {want[j:j + 48].hex()}"
                        break
            elif name == "stats":
                msg += f": {({s: (got[s], want[s]) for s in want if got[s] != want[s]})}"
            else:
                msg += f": got {got!r:.300} want {want!r:.300}"
            pytest.fail(msg)


def test_window_bounds(impl):
    """docs/fastpath.md: join iff entry.t_ns + window >= t_ns; release iff head.t_ns + window < clock."""
    W = 1000
    ip = raw(IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / Raw(b"w" * 30))
    i_frame = spec_ref.link_ether(ip, src=NB[0], dst=OWN[0])[0]
    e_frame = spec_ref.link_ether(forwarded(ip), src=OWN[0], dst=NB[1])[0]
    arp = bytes(12) + b"\x08\x06" + bytes(28)
    pd, ft = spec_ref.pd_ft(ip, "sha3-256")

    def run(frames):
        p = impl.Pipeline(3, own_macs=(OWN[0],), neighbours={NB[0]: 1, NB[1]: 2},
                          join_window_ns=W)
        outs = []
        for t, f in frames:
            p.feed(f, impl.pack_desc(t, 0, len(f), len(f), 1))
            outs.append(p.take())
        return outs

    outs = run([(10_000, i_frame), (11_000, e_frame)])              # t + W == egress t: joined
    assert outs[1].records == struct.pack(">QQQ", 10_000, 1, 2) + pd + ft
    outs = run([(10_000, i_frame), (11_001, e_frame)])              # one ns later: not joined
    # step 2 releases the ingress (10_000 + W < 11_001), step 4 appends an egress-only entry
    # (done), step 5 releases it
    assert outs[1].records == struct.pack(">QQQ", 10_000, 1, NONE) + pd + ft + \
        struct.pack(">QQQ", 11_001, NONE, 2) + pd + ft
    assert outs[1].stats["joined"] == 0 and outs[1].stats["egress"] == 1
    outs = run([(10_000, i_frame), (11_000, arp), (11_001, arp)])   # release on the clock
    assert outs[1].records == b"" and outs[1].stats["non_ip"] == 1
    assert outs[2].records == struct.pack(">QQQ", 10_000, 1, NONE) + pd + ft


# --- a neighbour's MAC names it only on its own interface (docs/fastpath.md "Neighbour ids") -----

def _binding_run(impl, neighbours, hops, window=1000):
    """Each hop ``(src, in_slot, dst, out_slot)`` is one packet: its ingress frame from ``src``
    captured on ``in_slot`` and, 100 ns later, its egress frame to ``dst`` on ``out_slot``, the
    directions a live ring gives (1, 2). Returns (records [(prev, next)], stats, the list for the
    log)."""
    p = impl.Pipeline(5, own_macs=(OWN[0],), neighbours=neighbours, join_window_ns=window)
    buf, desc = b"", b""
    for k, (src, in_slot, dst, out_slot) in enumerate(hops):
        ip = raw(IP(src="10.0.0.1", dst="10.1.0.1", id=k) / UDP() / Raw(b"b" * 10))
        t = 1_000_000 + k * 10 * window
        for f, d, slot, tt in ((spec_ref.link_ether(ip, dst=OWN[0], src=src)[0], 1, in_slot, t),
                               (spec_ref.link_ether(forwarded(ip), dst=dst, src=OWN[0])[0], 2,
                                out_slot, t + 100)):
            desc += impl.pack_desc(tt, len(buf), len(f), len(f), 1, d, 0, slot)
            buf += f
    p.feed(buf, desc)
    p.flush()
    out = p.take()
    recs = [struct.unpack_from(">QQQ", out.records, i)[1:] for i in range(0, len(out.records), 48)]
    return recs, out.stats, p.take_wrong_interface()


def test_a_neighbour_mac_names_the_neighbour_only_on_its_interface(impl):
    """Neighbour 1 is on the interface of slot 1, neighbour 2 on slots 2 and 3, neighbour 3 on
    every interface. A frame carrying a bound neighbour's MAC on another interface is not from (or
    to) that neighbour: recorded as outside (0), counted as neighbour_wrong_interface (not as
    unknown_mac) and listed with the MAC, slot, direction and neighbour for the log. Where the
    interface is unknown (slot 0: a replayed capture) the MAC names the neighbour as before."""
    A, B, ANYWHERE, STRANGER = NB[0], NB[1], NB[2], bytes.fromhex("0e0000000099")
    neighbours = {A: (1, (1,)), B: (2, [2, 3]), ANYWHERE: 3}
    recs, st, wrong = _binding_run(impl, neighbours, [
        (A, 1, B, 2),                   # both on their own interfaces
        (A, 2, B, 3),                   # A's MAC on B's interface: from outside
        (A, 0, B, 1),                   # interface unknown: A; B's MAC on A's link: to outside
        (B, 3, ANYWHERE, 1),            # B on its second interface; the unbound one anywhere
        (ANYWHERE, 63, A, 1),
        (STRANGER, 1, STRANGER, 2),     # no neighbour's MAC: outside, unknown_mac
        (A, 2, A, 3),                   # A's MAC again on slot 2 (same log entry), and egress
    ])
    assert recs == [(1, 2), (0, 2), (1, 0), (2, 3), (3, 1), (0, 0), (0, 0)]
    assert st["neighbour_wrong_interface"] == 4 and st["unknown_mac"] == 2
    assert st["joined"] == 7 and st["records"] == 7
    assert wrong == [(A, 2, 1, 1, 2), (B, 1, 2, 2, 1), (A, 3, 2, 1, 1)]


def test_without_bindings_or_interface_the_mac_alone_names_the_neighbour(impl):
    """Today's behaviour is kept where nothing tells the interface: a neighbour given as an id
    alone matches on every slot, and every neighbour matches a frame of slot 0."""
    A, B = NB[0], NB[1]
    recs, st, wrong = _binding_run(impl, {A: 1, B: (2, (2,))},
                                   [(A, 1, B, 0), (A, 7, B, 0), (B, 0, A, 63)])
    assert recs == [(1, 2), (1, 2), (2, 1)]
    assert st["neighbour_wrong_interface"] == 0 and wrong == []


def test_a_neighbour_on_none_of_the_captured_interfaces_names_nothing_captured(impl):
    """``(id, ())``: a neighbour the kernel knows on an interface that is not captured; frames
    with its MAC on any captured interface are not from it."""
    A = NB[0]
    recs, st, wrong = _binding_run(impl, {A: (1, ())}, [(A, 1, A, 2), (A, 0, A, 0)])
    assert recs == [(0, 0), (1, 1)]
    assert st["neighbour_wrong_interface"] == 2
    assert wrong == [(A, 1, 1, 1, 1), (A, 2, 2, 1, 1)]


def test_the_log_list_keeps_the_first_distinct_ones_and_the_stats_count_all(impl):
    A = NB[0]
    hops = [(A, s, OWN[1], 1) for s in range(2, 22)] + [(A, 2, OWN[1], 1)]
    recs, st, wrong = _binding_run(impl, {A: (1, (1,))}, hops)
    assert st["neighbour_wrong_interface"] == 21
    assert wrong == [(A, 2, 1, 1, 2)] + [(A, s, 1, 1, 1) for s in range(3, 18)]
    assert len(wrong) == 16 == WRONG_IF_MAX


def test_set_neighbours_rebinds(impl):
    """SIGHUP: the new bindings apply to the frames after it; the list for the log is drained by
    each take_wrong_interface()."""
    A = NB[0]
    p = impl.Pipeline(5, neighbours={A: (1, (1,))})
    ip = raw(IP(src="10.0.0.1", dst="10.1.0.1") / UDP())
    f = spec_ref.link_ether(ip, dst=OWN[0], src=A)[0]
    p.feed(f, impl.pack_desc(1000, 0, len(f), len(f), 1, 1, 0, 2))
    assert p.take_wrong_interface() == [(A, 2, 1, 1, 1)] and p.take_wrong_interface() == []
    p.set_neighbours({A: (1, (1, 2))})
    p.feed(f, impl.pack_desc(2000, 0, len(f), len(f), 1, 1, 0, 2))
    p.flush()
    out = p.take()
    assert [struct.unpack_from(">QQ", out.records, i)[1] for i in (0, 48)] == [0, 1]
    assert p.totals()["neighbour_wrong_interface"] == 1 and p.take_wrong_interface() == []


@pytest.mark.parametrize("value, match", [
    ((1, (0,)), r"neighbours\[02:00:00:00:00:01\]: interface slot must be an integer in 1..63, "
                r"got 0"),
    ((1, (64,)), r"interface slot must be an integer in 1..63, got 64"),
    ((1, ("eth0",)), r"interface slot must be an integer in 1..63, got 'eth0'"),
    ((1, (True,)), r"interface slot must be an integer in 1..63, got True"),
    ((1, 5), r"neighbours\[02:00:00:00:00:01\]: slots must be an iterable of interface slots"),
    ((1, "eth0"), r"slots must be an iterable of interface slots \(1..63\), got 'eth0'"),
    ((1, (2,), 3), r"neighbours\[02:00:00:00:00:01\] must be node_id or \(node_id, slots\)"),
    ((0, (1,)), r"1..2\^64-2"),
])
def test_neighbour_bindings_are_checked(impl, value, match):
    with pytest.raises(ValueError, match=match):
        impl.Pipeline(1, neighbours={NB[0]: value})
    p = impl.Pipeline(1)
    with pytest.raises(ValueError, match=match):
        p.set_neighbours({NB[0]: value})


@pytest.mark.parametrize("kw, match", [
    (dict(slot=64), "slot must be an integer in 0..63, got 64"),
    (dict(slot=-1), "slot must be an integer in 0..63, got -1"),
    (dict(vlan_stripped=4), "vlan_stripped must be an integer in 0..3, got 4"),
])
def test_pack_desc_checks_the_flags(impl, kw, match):
    with pytest.raises(ValueError, match=match):
        impl.pack_desc(1, 0, 60, 60, 1, 1, **kw)


def test_the_flags_byte_holds_the_vlan_count_and_the_slot(impl):
    """docs/fastpath.md "Frames in": flags = vlan_stripped | slot << 2, byte 23 of the descriptor."""
    assert impl.pack_desc(1, 2, 3, 4, 1, 2, 3, 63)[22:] == bytes((2, 0xFF))
    assert impl.pack_desc(1, 2, 3, 4, 1, 1, 1, 5)[23] == 0b010101
