"""Behaviour of the fast-path pipeline (docs/fastpath.md): the join, release order, counters,
receipts, segments, resume, batching and validation, on both twins.

Every expected value is computed here from docs/formats.md's formulas with hashlib, never taken from an
implementation's output.
"""
import hashlib
import ipaddress
import random
import struct

import pytest
from scapy.all import ARP, IP, UDP, CookedLinux, CookedLinuxV2, Dot1Q, Ether, IPv6, raw

NONE = 0xFFFFFFFFFFFFFFFF
MS = 1_000_000
SEC = 1_000_000_000
W = 50 * MS                     # the default join window
T0 = 1_700_000_000 * SEC        # a capture time, on a second boundary

OWN = bytes.fromhex("020000000001")      # this device
OWN2 = bytes.fromhex("020000000002")
MAC_A = bytes.fromhex("0a000000000a")    # neighbour 11
MAC_B = bytes.fromhex("0b000000000b")    # neighbour 22
MAC_C = bytes.fromhex("0c000000000c")    # neighbour 33
HOST = bytes.fromhex("aa0000000001")     # not a neighbour
HOST2 = bytes.fromhex("aa0000000002")
NEIGHBOURS = {MAC_A: 11, MAC_B: 22, MAC_C: 33}
HASHES = ["sha3-256", "blake2b-256"]


# ---- SPEC formulas, written out independently ----------------------------------------------

def H(hash_name, data):
    if hash_name == "sha3-256":
        return hashlib.sha3_256(data).digest()
    return hashlib.blake2b(data, digest_size=32).digest()


def addr16(a):
    ip = ipaddress.ip_address(a)
    if ip.version == 4:
        return ipaddress.IPv6Address("::ffff:" + a).packed
    return ip.packed


def spec_pd(hash_name, ip):
    """PD of an IP packet (bytes starting at the IP header), SPEC "Packet digest"."""
    if ip[0] >> 4 == 4:
        hl = (ip[0] & 15) * 4
        total = int.from_bytes(ip[2:4], "big")
        p = ip[hl:hl + min(24, total - hl)]
        inp = ip[0:1] + ip[2:4] + ip[4:6] + ip[6:8] + ip[9:10] + ip[12:16] + ip[16:20] + p
        return H(hash_name, b"BEAT-PD-v1" + b"\x04" + inp)[:16]
    plen = int.from_bytes(ip[4:6], "big")
    flow = bytes([ip[1] & 0x0F]) + ip[2:4]
    inp = ip[4:6] + ip[6:7] + flow + ip[8:24] + ip[24:40] + ip[40:40 + min(24, plen)]
    return H(hash_name, b"BEAT-PD-v1" + b"\x06" + inp)[:16]


def spec_ft(hash_name, src, dst):
    return H(hash_name, b"BEAT-FT-v1" + addr16(src) + addr16(dst))[:8]


def spec_record(t_ns, prev_id, next_id, pd, ft):
    return struct.pack(">QQQ", t_ns, prev_id, next_id) + pd + ft


def spec_segment(hash_name, node_id, seg_seq, records):
    count = len(records) // 48
    return H(hash_name, b"BEAT-SG-v1" + struct.pack(">QQQ", node_id, seg_seq, count) + records)


def spec_receipt(hash_name, node_id, role, src, dst, epoch_ns, packets, nbytes):
    return H(hash_name, b"BEAT-RC-v1" + struct.pack(">QB", node_id, role) + addr16(src)
             + addr16(dst) + struct.pack(">QQQ", epoch_ns, packets, nbytes))


def receipt_entry(hash_name, node_id, role, src, dst, epoch_ns, packets, nbytes):
    return (struct.pack(">QB", epoch_ns, role) + addr16(src) + addr16(dst)
            + struct.pack(">QQ", packets, nbytes)
            + spec_receipt(hash_name, node_id, role, src, dst, epoch_ns, packets, nbytes))


def records_of(out):
    return [out.records[i:i + 48] for i in range(0, len(out.records), 48)]


def split(b, size):
    return [b[i:i + size] for i in range(0, len(b), size)]


# ---- frames --------------------------------------------------------------------------------

class Pkt:
    """One IP packet: its frames at different hops and its SPEC values."""

    def __init__(self, src="10.0.0.1", dst="10.9.0.1", ident=1, sport=1000, payload=b"x" * 10,
                 v6=False):
        self.src, self.dst = src, dst
        if v6:
            self.ip = IPv6(src=src, dst=dst, fl=0x12345, hlim=64) / UDP(sport=sport, dport=53) \
                / payload
        else:
            self.ip = IP(src=src, dst=dst, id=ident, ttl=64) / UDP(sport=sport, dport=53) / payload
        self.v6 = v6

    def hop(self, ttl_less=0):
        ip = self.ip.copy()
        if self.v6:
            ip.hlim -= ttl_less
        else:
            ip.ttl -= ttl_less
            ip.tos = ttl_less       # ToS is left out of PD too
        return raw(ip)

    def eth(self, src_mac, dst_mac, ttl_less=0):
        et = 0x86DD if self.v6 else 0x0800
        return raw(Ether(src=src_mac, dst=dst_mac, type=et)) + self.hop(ttl_less)

    def pd(self, hash_name):
        return spec_pd(hash_name, raw(self.ip))

    def ft(self, hash_name):
        return spec_ft(hash_name, self.src, self.dst)

    @property
    def ip_len(self):
        return len(raw(self.ip))


def arp(t_mac=HOST):
    return raw(Ether(src=t_mac, dst="ff:ff:ff:ff:ff:ff") / ARP())


def make_batch(impl, frames):
    """frames: (t_ns, bytes[, linktype[, dir]]) -> (buf, desc)."""
    buf = bytearray()
    desc = bytearray()
    for f in frames:
        t, data = f[0], f[1]
        lt = f[2] if len(f) > 2 else 1
        d = f[3] if len(f) > 3 else 0
        desc += impl.pack_desc(t, len(buf), len(data), len(data), lt, d)
        buf += data
    return bytes(buf), bytes(desc)


def feed(p, impl, frames):
    buf, desc = make_batch(impl, frames)
    p.feed(buf, desc)


def pipe(impl, hash_name="sha3-256", node_id=7, **kw):
    kw.setdefault("own_macs", (OWN, OWN2))
    kw.setdefault("neighbours", NEIGHBOURS)
    return impl.Pipeline(node_id, hash_name, **kw)


# ---- the join --------------------------------------------------------------------------------

@pytest.mark.parametrize("hash_name", HASHES)
def test_ingress_and_egress_joined(impl, hash_name):
    p = pipe(impl, hash_name)
    k = Pkt()
    feed(p, impl, [(T0 + 1000, k.eth(MAC_A, OWN)), (T0 + 9000, k.eth(OWN, MAC_B, ttl_less=1))])
    out = p.take()
    # the joined head is done: released at step 5 of the egress frame, no flush needed
    assert out.records == spec_record(T0 + 1000, 11, 22, k.pd(hash_name), k.ft(hash_name))
    s = out.stats
    assert (s["frames"], s["ip"], s["ingress"], s["egress"], s["joined"], s["records"]) == \
        (2, 2, 1, 1, 1, 1)
    assert s["ingress_only"] == s["egress_only"] == s["unknown_mac"] == 0
    assert list(s) == list(impl.STAT_NAMES)
    p.flush()
    assert p.take().records == b""


def test_ipv6_join(impl):
    p = pipe(impl)
    k = Pkt("2001:db8::1", "2001:db8::2", v6=True)
    feed(p, impl, [(T0 + 1, k.eth(MAC_A, OWN)), (T0 + 2, k.eth(OWN, MAC_B, ttl_less=1))])
    assert p.take().records == spec_record(T0 + 1, 11, 22, k.pd("sha3-256"), k.ft("sha3-256"))


def test_egress_without_ingress(impl):
    p = pipe(impl)
    k = Pkt()
    feed(p, impl, [(T0 + 5, k.eth(OWN, MAC_C))])
    out = p.take()
    assert out.records == spec_record(T0 + 5, NONE, 33, k.pd("sha3-256"), k.ft("sha3-256"))
    assert out.stats["egress_only"] == 1 and out.stats["joined"] == 0


def test_ingress_never_leaving_released_after_window(impl):
    p = pipe(impl)
    k = Pkt()
    rec = spec_record(T0, 11, NONE, k.pd("sha3-256"), k.ft("sha3-256"))
    feed(p, impl, [(T0, k.eth(MAC_A, OWN)), (T0 + W, arp())])    # clock == t + W: still pending
    out = p.take()
    assert out.records == b""
    feed(p, impl, [(T0 + W + 1, arp())])                          # a non-IP frame moves the clock
    out = p.take()
    assert out.records == rec
    assert out.stats["ingress_only"] == 1 and out.stats["non_ip"] == 1
    assert out.stats["frames"] == 1 and out.stats["ip"] == 0


def test_ingress_never_leaving_released_at_flush(impl):
    p = pipe(impl)
    k1, k2 = Pkt(ident=1), Pkt(ident=2)
    feed(p, impl, [(T0, k1.eth(MAC_A, OWN)), (T0 + 1, k2.eth(MAC_B, OWN))])
    assert p.take().records == b""
    p.flush()
    out = p.take()
    assert records_of(out) == [
        spec_record(T0, 11, NONE, k1.pd("sha3-256"), k1.ft("sha3-256")),
        spec_record(T0 + 1, 22, NONE, k2.pd("sha3-256"), k2.ft("sha3-256"))]
    assert out.stats["ingress_only"] == 2


def test_identical_packets_joined_oldest_first(impl):
    p = pipe(impl)
    k = Pkt()
    pd, ft = k.pd("sha3-256"), k.ft("sha3-256")
    feed(p, impl, [(T0 + 1, k.eth(MAC_A, OWN)), (T0 + 2, k.eth(MAC_C, OWN)),
                   (T0 + 3, k.eth(OWN, MAC_B, 1)), (T0 + 4, k.eth(OWN, HOST, 1))])
    out = p.take()
    assert records_of(out) == [spec_record(T0 + 1, 11, 22, pd, ft),
                               spec_record(T0 + 2, 33, 0, pd, ft)]
    assert out.stats["joined"] == 2 and out.stats["unknown_mac"] == 1


def test_release_waits_for_the_head(impl):
    # a joined entry behind an unjoined head is released only after the head (FIFO order)
    p = pipe(impl)
    k1, k2 = Pkt(ident=1), Pkt(ident=2)
    feed(p, impl, [(T0, k1.eth(MAC_A, OWN)), (T0 + 1, k2.eth(MAC_A, OWN)),
                   (T0 + 2, k2.eth(OWN, MAC_B, 1))])
    assert p.take().records == b""
    feed(p, impl, [(T0 + W + 1, arp())])
    assert records_of(p.take()) == [
        spec_record(T0, 11, NONE, k1.pd("sha3-256"), k1.ft("sha3-256")),
        spec_record(T0 + 1, 11, 22, k2.pd("sha3-256"), k2.ft("sha3-256"))]


def test_egress_at_window_edge_joined_beyond_not(impl):
    k = Pkt()
    pd, ft = k.pd("sha3-256"), k.ft("sha3-256")
    p = pipe(impl)
    feed(p, impl, [(T0, k.eth(MAC_A, OWN)), (T0 + W, k.eth(OWN, MAC_B, 1))])
    assert p.take().records == spec_record(T0, 11, 22, pd, ft)

    p = pipe(impl)
    feed(p, impl, [(T0, k.eth(MAC_A, OWN)), (T0 + W + 1, k.eth(OWN, MAC_B, 1))])
    out = p.take()
    assert records_of(out) == [spec_record(T0, 11, NONE, pd, ft),
                               spec_record(T0 + W + 1, NONE, 22, pd, ft)]
    assert out.stats["joined"] == 0

    # a smaller window, and an egress with an older timestamp than the clock
    p = pipe(impl, join_window_ns=10)
    feed(p, impl, [(T0, k.eth(MAC_A, OWN)), (T0 + 10, arp()), (T0 + 11, k.eth(OWN, MAC_B, 1))])
    assert p.take().stats["joined"] == 0


def test_sll_direction_from_pkttype(impl):
    k = Pkt()
    pd, ft = k.pd("sha3-256"), k.ft("sha3-256")
    ing = raw(CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, src=MAC_A + b"\0\0",
                          proto=0x0800)) + k.hop()
    egr = raw(CookedLinux(pkttype=4, lladdrtype=1, lladdrlen=6, src=OWN + b"\0\0", proto=0x0800)) \
        + k.hop(1)
    p = pipe(impl)
    feed(p, impl, [(T0 + 1, ing, 113), (T0 + 2, egr, 113)])
    out = p.take()
    assert out.records == spec_record(T0 + 1, 11, 0, pd, ft)   # SLL has no destination MAC
    assert (out.stats["joined"], out.stats["unknown_mac"]) == (1, 1)

    # SLL2 the same way; an address that is not a MAC (arphrd != 1) is unknown
    ing2 = raw(CookedLinuxV2(proto=0x0800, lladdrtype=1, pkttype=0, lladdrlen=6,
                             src=MAC_C + b"\0\0")) + k.hop()
    egr2 = raw(CookedLinuxV2(proto=0x0800, lladdrtype=772, pkttype=4, lladdrlen=6,
                             src=OWN + b"\0\0")) + k.hop(1)
    ing3 = raw(CookedLinux(pkttype=0, lladdrtype=772, lladdrlen=6, src=MAC_A + b"\0\0",
                           proto=0x0800)) + Pkt(ident=9).hop()
    p = pipe(impl)
    feed(p, impl, [(T0 + 1, ing2, 276), (T0 + 2, egr2, 276), (T0 + 3, ing3, 113)])
    p.flush()
    out = p.take()
    assert records_of(out) == [spec_record(T0 + 1, 33, 0, pd, ft),
                               spec_record(T0 + 3, 0, NONE, Pkt(ident=9).pd("sha3-256"), ft)]
    assert out.stats["unknown_mac"] == 2


def test_dir_overrides_link_layer(impl):
    k1, k2, k3 = Pkt(ident=1), Pkt(ident=2), Pkt(ident=3)
    sll_out = raw(CookedLinux(pkttype=4, lladdrtype=1, lladdrlen=6, src=MAC_B + b"\0\0",
                              proto=0x0800)) + k3.hop()
    p = pipe(impl)
    feed(p, impl, [
        (T0 + 1, k1.eth(OWN, MAC_B), 1, 1),       # own source MAC but dir=1: ingress, prev from src
        (T0 + 2, k2.eth(MAC_A, MAC_C), 1, 2),     # neighbour source but dir=2: egress to MAC_C
        (T0 + 3, sll_out, 113, 1),                # SLL outgoing, dir=1: ingress from MAC_B
        (T0 + 4, k1.hop(1), 101, 2),              # raw IP, dir=2: egress, next 0, no unknown_mac
    ])
    p.flush()
    out = p.take()
    assert records_of(out) == [
        spec_record(T0 + 1, 0, 0, k1.pd("sha3-256"), k1.ft("sha3-256")),
        spec_record(T0 + 2, NONE, 33, k2.pd("sha3-256"), k2.ft("sha3-256")),
        spec_record(T0 + 3, 22, NONE, k3.pd("sha3-256"), k3.ft("sha3-256"))]
    s = out.stats
    assert (s["ingress"], s["egress"], s["joined"], s["unknown_mac"]) == (2, 2, 1, 1)


def test_raw_null_and_vlan_link_layers(impl):
    k = Pkt()
    pd, ft = k.pd("sha3-256"), k.ft("sha3-256")
    vlan = raw(Ether(src=MAC_A, dst=OWN) / Dot1Q(vlan=5) / Dot1Q(vlan=6, type=0x0800)) + k.hop()
    vlan3 = raw(Ether(src=MAC_A, dst=OWN) / Dot1Q(vlan=5) / Dot1Q(vlan=6)
                / Dot1Q(vlan=7, type=0x0800)) + k.hop()
    null = struct.pack("<I", 2) + k.hop()
    p = pipe(impl)
    feed(p, impl, [(T0, k.hop(), 101), (T0 + 1, null, 0), (T0 + 2, k.hop(), 228),
                   (T0 + 3, vlan, 1), (T0 + 4, vlan3, 1), (T0 + 5, k.hop(), 229),
                   (T0 + 6, k.hop(), 147), (T0 + 7, b"\x02\x00", 1)])
    p.flush()
    out = p.take()
    assert records_of(out) == [spec_record(T0, 0, NONE, pd, ft),
                               spec_record(T0 + 1, 0, NONE, pd, ft),
                               spec_record(T0 + 2, 0, NONE, pd, ft),
                               spec_record(T0 + 3, 11, NONE, pd, ft)]
    s = out.stats
    assert (s["frames"], s["ip"], s["vlan_depth"], s["bad_version"], s["unsupported_linktype"],
            s["runt"], s["unknown_mac"]) == (8, 4, 1, 1, 1, 1, 0)
    assert impl.pd_ft(vlan, 1, "sha3-256") == (None, pd, ft)
    assert impl.pd_ft(vlan3, 1, "sha3-256")[0] == "vlan_depth"


def test_max_pending_overflow(impl):
    p = pipe(impl, max_pending=16)
    pkts = [Pkt(ident=i) for i in range(17)]
    feed(p, impl, [(T0 + i, k.eth(MAC_A, OWN)) for i, k in enumerate(pkts)])
    out = p.take()
    assert out.records == spec_record(T0, 11, NONE, pkts[0].pd("sha3-256"), pkts[0].ft("sha3-256"))
    assert out.stats["join_overflow"] == 1
    # the released packet can no longer be joined; the FIFO is full again: another overflow
    feed(p, impl, [(T0 + 20, pkts[0].eth(OWN, MAC_B, 1))])
    out = p.take()
    assert records_of(out) == [
        spec_record(T0 + 1, 11, NONE, pkts[1].pd("sha3-256"), pkts[1].ft("sha3-256"))]
    assert (out.stats["join_overflow"], out.stats["joined"]) == (1, 0)
    # a joining egress appends nothing: no overflow
    feed(p, impl, [(T0 + 21, pkts[2].eth(OWN, MAC_B, 1))])
    out = p.take()
    assert out.stats["join_overflow"] == 0 and out.stats["joined"] == 1
    assert records_of(out) == [
        spec_record(T0 + 2, 11, 22, pkts[2].pd("sha3-256"), pkts[2].ft("sha3-256"))]


# ---- counters --------------------------------------------------------------------------------

def test_counter_deltas(impl):
    p = pipe(impl)
    k1 = Pkt(ident=1, payload=b"a" * 10)
    k2 = Pkt(ident=2, payload=b"b" * 100)
    k3 = Pkt(ident=3, payload=b"c" * 50)
    feed(p, impl, [(T0 + 10, k1.eth(MAC_A, OWN)), (T0 + 11, k1.eth(OWN, MAC_B, 1)),
                   (T0 + 20, k2.eth(MAC_A, OWN)), (T0 + 21, k2.eth(OWN, MAC_B, 1)),
                   (T0 + 30, k3.eth(OWN, HOST))])
    out = p.take()
    want = sorted([
        struct.pack(">QQQQQQ", 11, 22, 2, k1.ip_len + k2.ip_len, T0 + 10, T0 + 20),
        struct.pack(">QQQQQQ", NONE, 0, 1, k3.ip_len, T0 + 30, T0 + 30)])
    assert out.counters == b"".join(want)
    assert k1.ip_len == 38 and k2.ip_len == 128
    # deltas: the next take only has what was released since
    feed(p, impl, [(T0 + 40, k3.eth(OWN, HOST))])
    assert p.take().counters == struct.pack(">QQQQQQ", NONE, 0, 1, k3.ip_len, T0 + 40, T0 + 40)
    assert p.take().counters == b""


# ---- receipts --------------------------------------------------------------------------------

@pytest.mark.parametrize("hash_name", HASHES)
def test_receipts_roles_and_finalisation(impl, hash_name):
    node = 77
    p = pipe(impl, hash_name, node_id=node)
    e0 = T0 + 10 * SEC                      # the epoch
    a = Pkt("10.0.0.1", "10.9.0.1", ident=1, payload=b"a" * 20)    # host -> neighbour B: role 1
    b = Pkt("10.0.0.2", "10.9.0.2", ident=2, payload=b"b" * 30)    # neighbour A -> host: role 2
    c = Pkt("10.0.0.3", "10.9.0.3", ident=3, payload=b"c" * 40)    # host -> host: both roles
    a2 = Pkt("10.0.0.1", "10.9.0.1", ident=4, payload=b"d" * 60)   # a's flow again
    x = Pkt("10.0.0.5", "10.9.0.5", ident=5)                        # A -> B: no receipt
    feed(p, impl, [
        (e0 + 100 * MS, a.eth(HOST, OWN)), (e0 + 100 * MS + 1, a.eth(OWN, MAC_B, 1)),
        (e0 + 200 * MS, b.eth(MAC_A, OWN)), (e0 + 200 * MS + 1, b.eth(OWN, HOST2, 1)),
        (e0 + 300 * MS, c.eth(HOST, OWN)), (e0 + 300 * MS + 1, c.eth(OWN2, HOST2, 1)),
        (e0 + 400 * MS, a2.eth(HOST, OWN)), (e0 + 400 * MS + 1, a2.eth(OWN, MAC_B, 1)),
        (e0 + 500 * MS, x.eth(MAC_A, OWN)), (e0 + 500 * MS + 1, x.eth(OWN, MAC_B, 1)),
        (e0 + SEC + W - 1, arp()),          # not yet past epoch end + window
    ])
    out = p.take()
    assert out.receipts == b"" and out.stats["receipts"] == 0
    want_open = sorted([
        struct.pack(">QB", e0, 1) + addr16(a.src) + addr16(a.dst)
        + struct.pack(">QQ", 2, a.ip_len + a2.ip_len),
        struct.pack(">QB", e0, 2) + addr16(b.src) + addr16(b.dst) + struct.pack(">QQ", 1, b.ip_len),
        struct.pack(">QB", e0, 1) + addr16(c.src) + addr16(c.dst) + struct.pack(">QQ", 1, c.ip_len),
        struct.pack(">QB", e0, 2) + addr16(c.src) + addr16(c.dst) + struct.pack(">QQ", 1, c.ip_len),
    ])
    assert out.open_receipts == b"".join(want_open)
    assert out.closed_before == e0

    feed(p, impl, [(e0 + SEC + W, arp())])
    out = p.take()
    want = sorted([
        receipt_entry(hash_name, node, 1, a.src, a.dst, e0, 2, a.ip_len + a2.ip_len),
        receipt_entry(hash_name, node, 2, b.src, b.dst, e0, 1, b.ip_len),
        receipt_entry(hash_name, node, 1, c.src, c.dst, e0, 1, c.ip_len),
        receipt_entry(hash_name, node, 2, c.src, c.dst, e0, 1, c.ip_len),
    ], key=lambda r: r[:41])
    assert out.receipts == b"".join(want)
    assert out.stats["receipts"] == 4
    assert out.open_receipts == b""
    assert out.closed_before == e0 + SEC
    assert impl.receipt_value(hash_name, node, 1, addr16(a.src), addr16(a.dst), e0, 2,
                              a.ip_len + a2.ip_len) == want[[r[:41] for r in want].index(
                                  struct.pack(">QB", e0, 1) + addr16(a.src) + addr16(a.dst))][-32:]


def test_receipt_late_and_flush(impl):
    node = 5
    p = pipe(impl, node_id=node, receipt_epoch_ns=SEC)
    e0 = T0 + 20 * SEC
    a = Pkt("10.0.0.1", "10.9.0.1", ident=1)
    late = Pkt("10.0.0.7", "10.9.0.7", ident=7)
    feed(p, impl, [(e0 + 2 * SEC, arp())])      # closed_before = e0 + SEC
    assert p.take().closed_before == e0 + SEC
    # an ingress stamped in a closed epoch: released at once (window passed), late for role 1;
    # its egress-only twin to a host is late for role 2
    feed(p, impl, [(e0 + 500 * MS, late.eth(HOST, OWN)), (e0 + 600 * MS, a.eth(OWN, HOST))])
    out = p.take()
    assert out.stats["receipt_late"] == 2 and out.open_receipts == b""
    assert len(out.records) == 96
    # flush finalises every open receipt, whatever its epoch
    feed(p, impl, [(e0 + 2 * SEC + 1, a.eth(HOST, OWN)), (e0 + 2 * SEC + 2, a.eth(OWN, MAC_B, 1))])
    p.flush()
    out = p.take()
    assert out.receipts == receipt_entry("sha3-256", node, 1, a.src, a.dst, e0 + 2 * SEC, 1,
                                         a.ip_len)
    assert out.open_receipts == b"" and out.stats["receipts"] == 1
    # ...and closes the clock's epoch: the same flow and epoch again is late, not a second receipt
    assert out.closed_before == e0 + 3 * SEC
    feed(p, impl, [(e0 + 2 * SEC + 3, a.eth(HOST, OWN))])
    p.flush()
    out = p.take()
    assert out.receipts == b"" and out.stats["receipt_late"] == 1


# ---- segments --------------------------------------------------------------------------------

@pytest.mark.parametrize("hash_name", HASHES)
def test_segments_by_count_period_and_demand(impl, hash_name):
    node = 3
    p = pipe(impl, hash_name, node_id=node, segment_records=3, anchor_period_ns=SEC)
    pk = [Pkt(ident=i) for i in range(10)]
    ts = [T0 + 100 * MS, T0 + 101 * MS, T0 + 102 * MS, T0 + 103 * MS,      # seg 0: 3, then 1...
          T0 + SEC + 1, T0 + SEC + 2,                           # ...closed by the period
          T0 + SEC + 3, T0 + SEC + 4]
    feed(p, impl, [(t, k.eth(OWN, MAC_B)) for t, k in zip(ts, pk)])       # egress-only: at once
    out = p.take()
    recs = [spec_record(t, NONE, 22, k.pd(hash_name), k.ft(hash_name)) for t, k in zip(ts, pk)]
    groups = [recs[0:3], recs[3:4], recs[4:7]]
    assert [(s[0], s[1]) for s in out.segments] == [(0, 3), (1, 1), (2, 3)]
    for seq, (s, g) in enumerate(zip(out.segments, groups)):
        assert s[3] == b"".join(g)
        assert s[2] == spec_segment(hash_name, node, seq, b"".join(g))
        assert impl.segment_value(hash_name, node, seq, b"".join(g)) == s[2]
    assert out.open_seg_seq == 3 and out.open_records == recs[7]
    assert out.stats["segments"] == 3
    p.close_segment()
    out = p.take()
    assert out.segments == [(3, 1, spec_segment(hash_name, node, 3, recs[7]), recs[7])]
    assert out.open_seg_seq == 4 and out.open_records == b""
    p.close_segment()                           # empty: nothing
    p.flush()
    assert p.take().segments == []
    feed(p, impl, [(T0 + SEC + 5, pk[8].eth(OWN, MAC_B))])
    p.flush()
    r = spec_record(T0 + SEC + 5, NONE, 22, pk[8].pd(hash_name), pk[8].ft(hash_name))
    assert p.take().segments == [(4, 1, spec_segment(hash_name, node, 4, r), r)]


def test_fp_many(impl):
    k = Pkt()
    for hn in HASHES:
        r1 = spec_record(T0 + 1, 11, 22, k.pd(hn), k.ft(hn))
        r2 = spec_record(T0 + 2, NONE, 0, k.pd(hn), k.ft(hn))
        want = b"".join(H(hn, b"BEAT-FP-v1" + struct.pack(">QQQ", 9, prev, nxt) + k.pd(hn)
                          + struct.pack(">Q", t)) for t, prev, nxt in
                        [(T0 + 1, 11, 22), (T0 + 2, NONE, 0)])
        assert impl.fp_many(r1 + r2, 9, hn) == want


# ---- resume, batching ------------------------------------------------------------------------

def traffic(seed, n, start=T0):
    """A deterministic mix: joined pairs, ingress-only, egress-only, duplicates, non-IP."""
    rnd = random.Random(seed)
    frames = []
    t = start
    macs_in = [MAC_A, MAC_B, HOST, HOST2]
    macs_out = [MAC_B, MAC_C, HOST]
    for i in range(n):
        t += rnd.randrange(1, 40 * MS)
        k = Pkt(f"10.0.{rnd.randrange(3)}.1", f"10.1.0.{rnd.randrange(3)}", ident=rnd.randrange(6))
        kind = rnd.random()
        if kind < 0.5:
            frames.append((t, k.eth(rnd.choice(macs_in), OWN)))
            frames.append((t + rnd.randrange(0, 2 * W), k.eth(OWN, rnd.choice(macs_out), 1)))
        elif kind < 0.7:
            frames.append((t, k.eth(rnd.choice(macs_in), OWN)))
        elif kind < 0.85:
            frames.append((t, k.eth(OWN2, rnd.choice(macs_out))))
        else:
            frames.append((t, arp()))
    frames.sort(key=lambda f: f[0])
    return frames


def collect(outs):
    recs = b"".join(o.records for o in outs)
    segs = [s for o in outs for s in o.segments]
    rcpts = sorted(split(b"".join(o.receipts for o in outs), 89))
    stats = {k: sum(o.stats[k] for o in outs) for k in outs[0].stats}
    counters = {}
    for o in outs:
        for c in split(o.counters, 48):
            prev, nxt, n, b, first, last = struct.unpack(">QQQQQQ", c)
            old = counters.get((prev, nxt))
            counters[(prev, nxt)] = (n, b, first, last) if old is None else \
                (old[0] + n, old[1] + b, min(old[2], first), max(old[3], last))
    return recs, segs, rcpts, stats, counters


KW = dict(segment_records=7, anchor_period_ns=2 * SEC, receipt_epoch_ns=SEC // 2, max_pending=16)


@pytest.mark.parametrize("hash_name", HASHES)
def test_batch_split_invariance(impl, hash_name):
    frames = traffic(1, 300)
    whole = pipe(impl, hash_name, **KW)
    feed(whole, impl, frames)
    whole.flush()
    one = whole.take()
    assert one.stats["frames"] == len(frames) and one.stats["joined"] > 10
    assert one.stats["receipts"] > 5 and len(one.segments) > 5

    # many small feeds, one take: the very same Output
    p = pipe(impl, hash_name, **KW)
    i = 0
    rnd = random.Random(2)
    while i < len(frames):
        n = rnd.randrange(0, 9)
        feed(p, impl, frames[i:i + n])
        i += n
    p.flush()
    assert p.take() == one

    # small feeds with a take after each: the same records, segments, receipts, counters, stats
    p = pipe(impl, hash_name, **KW)
    outs = []
    for i in range(0, len(frames), 5):
        feed(p, impl, frames[i:i + 5])
        outs.append(p.take())
    p.flush()
    outs.append(p.take())
    assert collect(outs) == collect([one])
    assert p.totals() == one.stats


def test_resume_continues(impl):
    frames = traffic(3, 200)
    # cut where nothing is pending: the FIFO is empty after a frame far from the others
    cut = T0 + 2 * SEC
    first = [f for f in frames if f[0] < cut - SEC]
    second = [(cut, arp())] + [f for f in frames if f[0] >= cut]
    assert len(first) > 20 and len(second) > 20
    kw = dict(KW, receipt_epoch_ns=10 * SEC, anchor_period_ns=60 * SEC)

    ref = pipe(impl, **kw)
    feed(ref, impl, first + [(cut - SEC // 2, arp())])     # releases everything pending
    mid = ref.take()
    assert mid.open_records and mid.open_receipts and mid.open_seg_seq > 0
    feed(ref, impl, second)
    ref.flush()
    want = ref.take()

    p = pipe(impl, **kw)
    p.resume(mid.open_seg_seq, mid.open_records, mid.open_receipts, mid.closed_before)
    out = p.take()
    assert (out.open_seg_seq, out.open_records, out.open_receipts, out.closed_before) == \
        (mid.open_seg_seq, mid.open_records, mid.open_receipts, mid.closed_before)
    feed(p, impl, second)
    p.flush()
    got = p.take()
    for name in ("records", "segments", "receipts", "counters", "open_seg_seq", "open_records",
                 "open_receipts", "closed_before"):
        assert getattr(got, name) == getattr(want, name), name
    assert got.segments[0][0] == mid.open_seg_seq
    assert got.segments[0][3].startswith(mid.open_records)


def test_resume_validation(impl):
    rec = spec_record(T0, NONE, 0, b"\1" * 16, b"\2" * 8)
    p = pipe(impl, segment_records=3)
    with pytest.raises(ValueError, match="open_records"):
        p.resume(1, rec * 3)                # a full segment would have been closed
    with pytest.raises(ValueError, match="open_records"):
        p.resume(1, rec[:47])
    with pytest.raises(ValueError, match="open_receipts"):
        p.resume(1, rec, b"\0" * 56)
    p.resume(5, rec * 2)
    feed(p, impl, [(T0 + 1, Pkt().eth(OWN, HOST))])
    out = p.take()
    assert [(s[0], s[1]) for s in out.segments] == [(5, 3)]
    assert out.open_seg_seq == 6


# ---- validation ------------------------------------------------------------------------------

def test_validation(impl):
    with pytest.raises(ValueError, match="node_id"):
        impl.Pipeline(0)
    with pytest.raises(ValueError, match="node_id"):
        impl.Pipeline(NONE)
    with pytest.raises(ValueError, match="hash_name.*md5"):
        impl.Pipeline(1, "md5")
    with pytest.raises(ValueError, match="own_macs"):
        impl.Pipeline(1, own_macs=(b"\x01\x02\x03\x04\x05",))
    with pytest.raises(ValueError, match="neighbour"):
        impl.Pipeline(1, neighbours={b"\x01" * 7: 3})
    with pytest.raises(ValueError, match="neighbour"):
        impl.Pipeline(1, neighbours={MAC_A: 0})
    with pytest.raises(ValueError, match="join_window_ns.*-5"):
        impl.Pipeline(1, join_window_ns=-5)
    with pytest.raises(ValueError, match="receipt_epoch_ns"):
        impl.Pipeline(1, receipt_epoch_ns=0)
    with pytest.raises(ValueError, match="anchor_period_ns"):
        impl.Pipeline(1, anchor_period_ns=0)
    with pytest.raises(ValueError, match="segment_records"):
        impl.Pipeline(1, segment_records=0)
    with pytest.raises(ValueError, match="max_pending.*100"):
        impl.Pipeline(1, max_pending=100)
    with pytest.raises(ValueError, match="max_pending"):
        impl.Pipeline(1, max_pending=8)
    with pytest.raises(ValueError, match="hash_name"):
        impl.pd_ft(b"", 1, "sha1")
    p = pipe(impl)
    with pytest.raises(ValueError, match="neighbour"):
        p.set_neighbours({b"\x01": 3})


def test_bad_desc_length(impl):
    p = pipe(impl)
    f = Pkt().eth(MAC_A, OWN)
    with pytest.raises(ValueError, match="desc"):
        p.feed(f, impl.pack_desc(T0, 0, len(f), len(f), 1) + b"\0")
    assert p.totals()["frames"] == 0


def test_descriptor_out_of_range(impl):
    p = pipe(impl)
    k = Pkt()
    f = k.eth(MAC_A, OWN)
    buf = f + f
    desc = impl.pack_desc(T0, 0, len(f), len(f), 1) + impl.pack_desc(T0 + 1, len(f), len(f) + 1,
                                                                     len(f), 1)
    with pytest.raises(ValueError, match=r"descriptor 1.*%d" % (len(f) + 1)):
        p.feed(buf, desc)
    # nothing of the batch was processed
    assert p.totals()["frames"] == 0
    out = p.take()
    assert out.stats["frames"] == 0 and out.records == b""
    p.feed(buf, desc[:24])
    assert p.totals()["frames"] == 1


def test_set_neighbours_replaces_map(impl):
    k1, k2 = Pkt(ident=1), Pkt(ident=2)
    p = pipe(impl)
    feed(p, impl, [(T0, k1.eth(OWN, MAC_A))])
    p.set_neighbours({MAC_A: 99})
    feed(p, impl, [(T0 + 1, k2.eth(OWN, MAC_B))])
    out = p.take()
    assert records_of(out) == [spec_record(T0, NONE, 11, k1.pd("sha3-256"), k1.ft("sha3-256")),
                               spec_record(T0 + 1, NONE, 0, k2.pd("sha3-256"), k2.ft("sha3-256"))]
    assert out.stats["unknown_mac"] == 1


# ---- the twins agree --------------------------------------------------------------------------

def test_twins_byte_identical(pure, native):
    frames = traffic(11, 300)
    rnd = random.Random(12)
    # some odd frames: truncated, non-IP, raw, SLL, forced directions, older timestamps
    extra = []
    for t, f in frames[::7]:
        extra.append((t + 1, f[:rnd.randrange(len(f))]))
        extra.append((t + 2, f[14:], 101, rnd.choice([0, 1, 2])))
        extra.append((max(0, t - 200 * MS), f, 1, rnd.choice([0, 1, 2])))
    frames = sorted(frames + extra, key=lambda f: f[0] // (30 * MS))
    for hn in HASHES:
        outs = []
        for m in (pure, native):
            p = pipe(m, hn, **KW)
            o = []
            i = 0
            r = random.Random(13)
            while i < len(frames):
                n = r.randrange(1, 20)
                feed(p, m, frames[i:i + n])
                if r.random() < 0.1:
                    p.close_segment()
                o.append(p.take())
                i += n
            p.flush()
            o.append(p.take())
            outs.append((o, p.totals()))
        assert outs[0] == outs[1]


def test_advance_releases_on_a_quiet_link(impl):
    """With no further frames, advance(now) lets the join window pass: the ingress-only packet is
    released with next_id NONE and its receipt epoch closes; both twins alike."""
    from scapy.all import IP, UDP, raw
    ip = raw(IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / b"x")
    p = impl.Pipeline(1, join_window_ns=1000, receipt_epoch_ns=10_000)
    p.feed(ip, impl.pack_desc(5_000, 0, len(ip), len(ip), 101))
    out = p.take()
    assert out.records == b"" and out.stats["ingress"] == 1
    p.advance(5_500)                      # still inside the window: nothing yet
    assert p.take().records == b""
    p.advance(6_001)                      # window passed
    out = p.take()
    assert len(out.records) == 48
    assert int.from_bytes(out.records[16:24], "big") == impl.NONE
    assert out.receipts == b""            # epoch 0..10,000 still open
    p.advance(11_001)                     # epoch end + window passed
    out = p.take()
    assert len(out.receipts) == 89 and out.closed_before == 10_000
    p.advance(3)                          # the clock never goes back
    assert p.take().closed_before == 10_000
    with pytest.raises(ValueError):
        p.advance(-1)


@pytest.mark.parametrize("inband, stripped, reason", [
    (0, 0, None), (2, 0, None), (3, 0, "vlan_depth"),
    (1, 1, None), (2, 1, "vlan_depth"), (0, 2, None), (1, 2, "vlan_depth"), (0, 3, "vlan_depth"),
])
def test_vlan_tags_stripped_by_the_capture_count_toward_two(impl, inband, stripped, reason):
    """A live ring gets the outer VLAN tag in its auxiliary data, not in the frame: the descriptor's
    flags carry how many were stripped, and they count toward the limit of two."""
    from scapy.all import IP, UDP, Dot1Q, Ether, raw
    pkt = Ether(src="02:00:00:00:00:05", dst="02:00:00:00:00:06")
    for v in range(inband):
        pkt = pkt / Dot1Q(vlan=10 + v)
    f = raw(pkt / IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / b"payload")
    p = impl.Pipeline(1)
    p.feed(f, impl.pack_desc(1000, 0, len(f), len(f), 1, 0, stripped))
    st = p.take().stats
    if reason is None:
        assert st["ip"] == 1 and st["vlan_depth"] == 0
    else:
        assert st[reason] == 1 and st["ip"] == 0


def test_descriptor_flags_carry_the_vlan_count_and_the_interface_slot(impl):
    """Byte 23 of a descriptor: bits 0-1 the VLAN tags the capture stripped, bits 2-7 the slot of
    the interface the frame was captured on (docs/fastpath.md); every value is valid."""
    import struct as _struct
    from scapy.all import IP, UDP, Ether, raw
    nb = bytes.fromhex("020000000005")
    f = raw(Ether(src="02:00:00:00:00:05", dst="02:00:00:00:00:06") /
            IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / b"payload")
    p = impl.Pipeline(1, neighbours={nb: (7, (15,))})
    for t, flags in ((1000, 15 << 2), (2000, 14 << 2), (3000, 15 << 2 | 3), (4000, 0), (5000, 255)):
        p.feed(f, _struct.pack("<QIIIHBB", t, 0, len(f), len(f), 1, 1, flags))
    p.flush()
    out = p.take()
    prevs = [_struct.unpack_from(">Q", out.records, i + 8)[0] for i in range(0, len(out.records), 48)]
    # slot 15: neighbour 7; slot 14: not it; 3 VLAN tags stripped: vlan_depth; slot 0: unknown,
    # the MAC names it; 255 = slot 63 with 3 tags: vlan_depth
    assert prevs == [7, 0, 7]
    assert out.stats["vlan_depth"] == 2 and out.stats["neighbour_wrong_interface"] == 1
