"""docs/formats.md conformance of the packet digest PD and the flow tag FT, on both twins.

Every packet is built with scapy, wrapped in every link type of docs/fastpath.md and digested by
`pd_ft` and by a `Pipeline`; the expected values come from tests/fastpath/spec_ref.py, which follows
the SPEC text, never from an implementation.
"""
import hashlib
import struct

import pytest
from scapy.all import (ICMP, IP, TCP, UDP, CookedLinux, Dot1AD, Dot1Q, Ether, IPOption_EOL,
                       IPOption_NOP, IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
                       IPv6ExtHdrRouting, ICMPv6EchoRequest, Raw, fragment, raw)
from scapy.contrib.mpls import MPLS

import spec_ref
from spec_ref import HASHES, MAC_A, MAC_B, NONE

V4 = dict(src="192.0.2.1", dst="198.51.100.7")
V6 = dict(src="2001:db8::1", dst="2001:db8:ffff::2")


def payload(n, seed=0):
    return bytes((i * 7 + seed * 13 + 1) % 256 for i in range(n))


def packets():
    """[(name, ip_bytes)], each exactly as long as its header announces."""
    out = []
    for n in (0, 1, 23, 24, 25, 1400):
        out.append((f"v4_tcp_{n}", raw(IP(**V4, id=0x1234) / TCP(sport=1234, dport=80) / Raw(payload(n)))
                    if n else raw(IP(**V4, id=0x1234, proto=6))))
        out.append((f"v4_udp_{n}", raw(IP(**V4) / UDP(sport=53, dport=5353) / Raw(payload(n)))))
        out.append((f"v4_raw_{n}", raw(IP(**V4, proto=253) / Raw(payload(n, 1))) if n
                    else raw(IP(**V4, proto=253))))
        out.append((f"v6_raw_{n}", raw(IPv6(**V6, nh=253) / Raw(payload(n, 2))) if n
                    else raw(IPv6(**V6, nh=59))))
        out.append((f"v6_udp_{n}", raw(IPv6(**V6, fl=0xABCDE, tc=0x5A) / UDP() / Raw(payload(n)))))
    out.append(("v4_icmp", raw(IP(**V4) / ICMP(id=7, seq=9) / Raw(b"ping" * 10))))
    out.append(("v6_icmp", raw(IPv6(**V6) / ICMPv6EchoRequest(id=7, seq=9, data=b"ping" * 10))))
    out.append(("v6_tcp", raw(IPv6(**V6) / TCP(sport=443, dport=50000, flags="S"))))
    for k in range(1, 11):  # ihl 6..15
        opts = [IPOption_NOP()] * (4 * k - 1) + [IPOption_EOL()]
        for n in (0, 3, 40):
            out.append((f"v4_ihl{5 + k}_{n}", raw(IP(**V4, options=opts, proto=17) / Raw(payload(n)))
                        if n else raw(IP(**V4, options=opts, proto=17))))
    frags = fragment(IP(**V4, id=999) / UDP(sport=1, dport=2) / Raw(payload(3000)), fragsize=1480)
    for i, f in enumerate(frags):
        out.append((f"v4_frag{i}", raw(f)))
    out.append(("v4_frag_tiny_later", raw(IP(**V4, id=5, flags=0, frag=3, proto=17) / Raw(b"xyz"))))
    ext = (IPv6(**V6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting(addresses=["2001:db8::5"])
           / IPv6ExtHdrFragment(id=5, m=1))
    out.append(("v6_ext_udp", raw(ext / UDP() / Raw(payload(30)))))
    out.append(("v6_ext_short", raw(IPv6(**V6) / IPv6ExtHdrHopByHop() / Raw(b"ab"))))
    out.append(("v6_ext_later_frag", raw(IPv6(**V6) / IPv6ExtHdrFragment(offset=100, id=5, nh=17)
                                         / Raw(payload(100)))))
    out.append(("v4_jumbo", raw(IP(**V4) / UDP() / Raw(payload(9000 - 14 - 28)))))
    out.append(("v6_jumbo", raw(IPv6(**V6) / UDP() / Raw(payload(9000 - 14 - 48)))))
    out.append(("v4_zero_addrs", raw(IP(src="0.0.0.0", dst="255.255.255.255") / UDP())))
    return out


PACKETS = packets()
LINK_NAMES = sorted({name for _, ip in PACKETS for name, _, _ in spec_ref.all_links(ip)})


def check_pd_ft(mod, frame, linktype, h, ip, what):
    reason, pd, ft = mod.pd_ft(frame, linktype, h)
    exp_pd, exp_ft = spec_ref.pd_ft(ip, h)
    assert reason is None, f"{what}: dropped as {reason}"
    assert (bytes(pd), bytes(ft)) == (exp_pd, exp_ft), f"{what}: PD/FT differ from SPEC"


# --- the reference itself, against hand-written SPEC inputs --------------------------------------

def test_spec_ref_known_inputs():
    ip4 = bytes.fromhex("4500001c123440004011abcd0a0000010a000002" "0035003500080000")
    inp4 = bytes.fromhex("45" "001c" "1234" "4000" "11" "0a000001" "0a000002" "0035003500080000")
    assert spec_ref.pd(ip4, "sha3-256") == hashlib.sha3_256(b"BEAT-PD-v1\x04" + inp4).digest()[:16]
    assert spec_ref.ft(ip4, "blake2b-256") == hashlib.blake2b(
        b"BEAT-FT-v1" + bytes(10) + b"\xff\xff\x0a\0\0\x01" + bytes(10) + b"\xff\xff\x0a\0\0\x02",
        digest_size=32).digest()[:8]
    src, dst = bytes.fromhex("20010db8" + "00" * 11 + "01"), bytes.fromhex("20010db8" + "00" * 11 + "02")
    ip6 = bytes.fromhex("6fabcdef" "0002" "3b" "40") + src + dst + b"\x99\x98"
    inp6 = bytes.fromhex("0002" "3b" "0bcdef") + src + dst + b"\x99\x98"
    assert spec_ref.pd(ip6, "blake2b-256") == hashlib.blake2b(
        b"BEAT-PD-v1\x06" + inp6, digest_size=32).digest()[:16]


def test_scapy_framing_matches_hand_framing():
    """The hand-built link headers of spec_ref equal scapy's where scapy has the layer."""
    ip = raw(IP(**V4) / UDP() / Raw(b"hello"))
    e = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    assert raw(e / IP(ip)) == spec_ref.link_ether(ip)[0]
    assert raw(e / Dot1Q(vlan=256) / IP(ip)) == spec_ref.link_ether(ip, tags=[0x8100])[0]
    assert raw(e / Dot1AD(vlan=256) / Dot1Q(vlan=257) / IP(ip)) == \
        spec_ref.link_ether(ip, tags=[0x88A8, 0x8100])[0]
    assert raw(e / MPLS(label=1000, s=0, ttl=64) / MPLS(label=1001, s=0, ttl=64)
               / MPLS(label=1002, s=1, ttl=64) / IP(ip)) == spec_ref.link_ether(ip, mpls=3)[0]
    sll = CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, src=MAC_A + b"\0\0", proto=0x0800)
    assert raw(sll / IP(ip)) == spec_ref.link_sll(ip)[0]


# --- pd_ft: every packet in every link type -----------------------------------------------------

@pytest.mark.parametrize("h", HASHES)
@pytest.mark.parametrize("link", LINK_NAMES)
def test_pd_ft_all_links(impl, link, h):
    n = 0
    for pname, ip in PACKETS:
        for lname, frame, lt in spec_ref.all_links(ip):
            if lname == link:
                check_pd_ft(impl, frame, lt, h, ip, f"{pname} in {lname}")
                n += 1
    assert n > 0


@pytest.mark.parametrize("h", HASHES)
def test_scapy_built_frames(impl, h):
    """The frames as scapy builds them whole (Ether/Dot1Q/Dot1AD/MPLS/CookedLinux)."""
    e = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    for pname, ip in PACKETS:
        l3 = IP(ip) if ip[0] >> 4 == 4 else IPv6(ip)
        et = 0x0800 if ip[0] >> 4 == 4 else 0x86DD
        frames = {
            "ether": raw(e / l3), "dot1q": raw(e / Dot1Q(vlan=5) / l3),
            "qinq": raw(e / Dot1AD(vlan=5) / Dot1Q(vlan=6) / l3),
            "mpls1": raw(e / MPLS(label=16, s=1) / l3),
            "mpls3": raw(e / MPLS(label=16, s=0) / MPLS(label=17, s=0) / MPLS(label=18, s=1) / l3),
        }
        for k, f in frames.items():
            check_pd_ft(impl, f, 1, h, ip, f"{pname} {k}")
        sll = raw(CookedLinux(pkttype=4, lladdrtype=1, lladdrlen=6, src=MAC_A + b"\0\0", proto=et) / l3)
        check_pd_ft(impl, sll, 113, h, ip, f"{pname} sll")


@pytest.mark.parametrize("h", HASHES)
def test_ethernet_padding_not_in_p(impl, h):
    """Short frames padded to 60 bytes with non-zero junk: P stops at the announced length."""
    cases = [raw(IP(**V4, proto=253)), raw(IP(**V4) / UDP()), raw(IP(**V4) / Raw(b"A")),
             raw(IP(**V4) / TCP()), raw(IPv6(**V6, nh=59)), raw(IPv6(**V6) / Raw(b"B" * 5))]
    for ip in cases:
        for tags in ((), (0x8100,), (0x88A8, 0x8100)):
            frame, lt = spec_ref.link_ether(ip, tags=tags)
            for pad in (b"\xee" * max(1, 60 - len(frame)), b"\x5a" * 30):
                check_pd_ft(impl, frame + pad, lt, h, ip, f"padded {ip[:1].hex()} tags={tags}")
                # the same packet unpadded gives the same digest
                assert impl.pd_ft(frame + pad, lt, h)[1:] == impl.pd_ft(frame, lt, h)[1:]
        for fam in (2, 10):
            if (ip[0] >> 4 == 4) == (fam == 2):
                frame, lt = spec_ref.link_null(ip, fam)
                check_pd_ft(impl, frame + b"\x77" * 7, lt, h, ip, "null padded")
        frame, lt = spec_ref.link_raw(ip, 101)
        check_pd_ft(impl, frame + b"\x77" * 7, lt, h, ip, "raw padded")


# --- which fields are covered --------------------------------------------------------------------

def _v4(**kw):
    pl = kw.pop("pl", payload(40))
    return raw(IP(**{**V4, "id": 77, "proto": 17, **kw}) / Raw(pl))


def _v6(**kw):
    pl = kw.pop("pl", payload(40))
    return raw(IPv6(**{**V6, "nh": 17, "fl": 0x12345, **kw}) / Raw(pl))


def _flip(ip, i, mask=0x01):
    b = bytearray(ip)
    b[i] ^= mask
    return bytes(b)


def variants():
    """(name, base, variant, same_pd, same_ft)"""
    b4, b6 = _v4(), _v6()
    yield "v4_ttl", b4, _v4(ttl=3), True, True
    yield "v4_tos", b4, _v4(tos=0xB8), True, True
    yield "v4_chksum", b4, _v4(chksum=0x1234), True, True
    o1 = [IPOption_NOP()] * 4
    o2 = [IPOption_NOP()] * 3 + [IPOption_EOL()]
    yield "v4_options_content", _v4(options=o1), _v4(options=o2), True, True
    yield "v4_after_P", b4, _flip(b4, 20 + 24), True, True
    yield "v4_last_byte", b4, _flip(b4, len(b4) - 1), True, True
    yield "v4_id", b4, _v4(id=78), False, True
    yield "v4_df", b4, _v4(flags="DF"), False, True
    yield "v4_frag", b4, _v4(frag=1), False, True
    yield "v4_proto", b4, _v4(proto=6), False, True
    yield "v4_src", b4, _v4(src="192.0.2.2"), False, False
    yield "v4_dst", b4, _v4(dst="198.51.100.8"), False, False
    yield "v4_total_length", b4, _v4(pl=payload(41)), False, True
    yield "v4_ihl_only", b4, _v4(options=o1, pl=payload(36)), False, True  # same total_length and P
    yield "v4_P0", b4, _flip(b4, 20), False, True
    yield "v4_P23", b4, _flip(b4, 20 + 23), False, True
    yield "v4_P_short", _v4(pl=b"abc"), _v4(pl=b"abd"), False, True
    yield "v6_hlim", b6, _v6(hlim=1), True, True
    yield "v6_tc", b6, _v6(tc=0xFF), True, True
    yield "v6_after_P", b6, _flip(b6, 40 + 24), True, True
    yield "v6_plen", b6, _v6(pl=payload(41)), False, True
    yield "v6_nh", b6, _v6(nh=6), False, True
    yield "v6_fl_low", b6, _v6(fl=0x12344), False, True
    yield "v6_fl_high", b6, _v6(fl=0x92345), False, True
    yield "v6_src", b6, _v6(src="2001:db8::9"), False, False
    yield "v6_dst", b6, _v6(dst="2001:db8::9"), False, False
    yield "v6_P0", b6, _flip(b6, 40), False, True
    yield "v6_P23", b6, _flip(b6, 40 + 23, 0x80), False, True
    # IPv4 10.0.0.1 vs IPv6 ::ffff:10.0.0.1: the same FT, another PD (family byte)
    yield "v4_vs_mapped_v6", raw(IP(src="10.0.0.1", dst="10.0.0.2", proto=59)), \
        raw(IPv6(src="::ffff:10.0.0.1", dst="::ffff:10.0.0.2", nh=59)), False, True


VARIANTS = list(variants())


@pytest.mark.parametrize("h", HASHES)
@pytest.mark.parametrize("case", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_covered_fields(impl, case, h):
    name, base, var, same_pd, same_ft = case
    results = []
    for ip in (base, var):
        for lname, frame, lt in spec_ref.all_links(ip)[:4]:  # eth, vlan, qinq
            check_pd_ft(impl, frame, lt, h, ip, f"{name} {lname}")
        results.append(impl.pd_ft(spec_ref.link_ether(ip)[0], 1, h))
    (_, pd0, ft0), (_, pd1, ft1) = results
    assert (bytes(pd0) == bytes(pd1)) == same_pd, name
    assert (bytes(ft0) == bytes(ft1)) == same_ft, name


# --- the twins agree ----------------------------------------------------------------------------

@pytest.mark.parametrize("h", HASHES)
def test_pd_ft_twins_identical(pure, native, h):
    n = 0
    for pname, ip in PACKETS:
        for lname, frame, lt in spec_ref.all_links(ip):
            for cut in (len(frame), len(frame) - 1, len(frame) // 2, 3, 0):
                f = frame[:cut]
                a, b = pure.pd_ft(f, lt, h), native.pd_ft(f, lt, h)
                assert (a[0], a[1] and bytes(a[1]), a[2] and bytes(a[2])) == \
                    (b[0], b[1] and bytes(b[1]), b[2] and bytes(b[2])), f"{pname} {lname} cut {cut}"
                n += 1
    assert n > 1000


# --- end to end through Pipeline ----------------------------------------------------------------

NB_A, NB_B = 42, 43
OWN = bytes.fromhex("0a0000000099")
MACS_OF_LINK = {"eth", "eth_8100", "eth_9100", "eth_qinq", "eth_mpls1", "eth_mpls3",
                "eth_mpls3_8848", "eth_vlan_mpls2", "sll", "sll_vlan", "sll2"}


def feed(p, mod, frames, t0=1_000_000_000_000, step=1000, dirs=None):
    buf, desc, off = b"", b"", 0
    for i, (frame, lt) in enumerate(frames):
        d = dirs[i] if dirs else 0
        desc += mod.pack_desc(t0 + i * step, off, len(frame), len(frame), lt, d)
        buf += frame
        off += len(frame)
    p.feed(buf, desc)


@pytest.mark.parametrize("h", HASHES)
@pytest.mark.parametrize("link", LINK_NAMES)
def test_pipeline_records_per_link(impl, link, h):
    """Every packet fed once as ingress; after flush the records carry SPEC's PD/FT."""
    p = impl.Pipeline(9, hash_name=h, own_macs=(OWN,), neighbours={MAC_A: NB_A, MAC_B: NB_B})
    frames, expected = [], []
    t0, step = 1_700_000_000_000_000_000, 1000
    for pname, ip in PACKETS:
        for lname, frame, lt in spec_ref.all_links(ip):
            if lname == link:
                prev = NB_A if lname in MACS_OF_LINK else 0
                expected.append(spec_ref.record(t0 + len(frames) * step, prev, NONE, ip, h))
                frames.append((frame, lt))
    feed(p, impl, frames, t0, step)
    p.flush()
    out = p.take()
    got = [out.records[i:i + 48] for i in range(0, len(out.records), 48)]
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"record {i}"
    s = out.stats
    assert s["frames"] == s["ip"] == s["ingress"] == s["records"] == s["ingress_only"] == len(frames)
    for reason in ("non_ip", "unsupported_linktype", "runt", "truncated", "bad_version", "bad_ihl",
                   "bad_length", "vlan_depth", "egress", "joined", "egress_only"):
        assert s[reason] == 0, reason
    assert s["unknown_mac"] == 0


@pytest.mark.parametrize("h", HASHES)
def test_pipeline_join_ttl_changed(impl, h):
    """Ingress from neighbour A, egress (TTL-1, new checksum, new MACs) to neighbour B: one record."""
    p = impl.Pipeline(9, hash_name=h, own_macs=(OWN,), neighbours={MAC_A: NB_A, MAC_B: NB_B})
    frames, expected = [], []
    for pname, ip in PACKETS:
        fwd = bytearray(ip)
        if ip[0] >> 4 == 4:
            fwd[8] -= 1
            fwd[10:12] = b"\xbe\xef"
        else:
            fwd[7] -= 1
        i_frame, _ = spec_ref.link_ether(ip, dst=OWN, src=MAC_A)
        e_frame, _ = spec_ref.link_ether(bytes(fwd), dst=MAC_B, src=OWN, tags=[0x8100])
        frames += [(i_frame, 1), (e_frame, 1)]
    t0 = 1_000_000_000
    buf, desc = b"", b""
    for i, (f, lt) in enumerate(frames):
        desc += impl.pack_desc(t0 + i * 1000 + (i % 2) * 500, len(buf), len(f), len(f), lt, 0)
        buf += f
    p.feed(buf, desc)
    p.flush()
    out = p.take()
    exp = b"".join(spec_ref.record(t0 + 2 * k * 1000, NB_A, NB_B, ip, h)
                   for k, (_, ip) in enumerate(PACKETS))
    assert out.records == exp
    assert out.stats["joined"] == len(PACKETS)
    assert out.stats["ingress"] == out.stats["egress"] == len(PACKETS)
    # counters: one pair (A, B), bytes = sum of IP lengths
    c = out.counters
    assert len(c) == 48
    assert struct.unpack(">QQQQQQ", c) == (NB_A, NB_B, len(PACKETS),
                                             sum(spec_ref.ip_len(ip) for _, ip in PACKETS),
                                             t0, t0 + 2 * (len(PACKETS) - 1) * 1000)
