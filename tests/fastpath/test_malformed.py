"""Every drop reason of docs/fastpath.md, produced on purpose, counted under its name, no record.

Expected reasons follow the order of checks in docs/fastpath.md ("Link layers", "Ethertype walk",
"IP checks"); good frames' records are computed with tests/fastpath/spec_ref.py.
"""
import struct

import pytest
from scapy.all import ARP, IP, UDP, Ether, IPv6, Raw, raw

import spec_ref
from spec_ref import HASHES, MAC_A, MAC_B, NONE

DROP_REASONS = ("non_ip", "unsupported_linktype", "runt", "truncated", "bad_version", "bad_ihl",
                "bad_length", "vlan_depth")

V4 = raw(IP(src="192.0.2.1", dst="198.51.100.7", id=3) / UDP(sport=1, dport=2) / Raw(b"x" * 40))
V6 = raw(IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=1, dport=2) / Raw(b"y" * 40))
ETH = MAC_B + MAC_A


def v4hdr(ihl=5, total_length=None, version=4, extra=b""):
    """A hand-made IPv4 header with any ihl/total_length, followed by `extra`."""
    hlen = max(ihl, 5) * 4
    tl = hlen + len(extra) if total_length is None else total_length
    h = struct.pack(">BBHHHBBH4s4s", version << 4 | ihl, 0, tl, 1, 0, 64, 17, 0,
                    bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return h + b"\x01" * (hlen - 20) + extra


def eth(rest, ethertype):
    return ETH + struct.pack(">H", ethertype) + rest


def cases():
    """(name, frame, linktype, reason)"""
    c = []
    # --- runt: out of bytes inside the link layer ---
    for n in range(0, 14):
        c.append((f"eth_runt_{n}", spec_ref.link_ether(V4)[0][:n], 1, "runt"))
    c.append(("eth_vlan_tag_cut", eth(b"\x00\x05", 0x8100), 1, "runt"))
    c.append(("eth_vlan_tag_none", eth(b"", 0x8100), 1, "runt"))
    c.append(("eth_qinq_inner_cut", eth(b"\x00\x05\x81\x00\x00", 0x88A8), 1, "runt"))
    c.append(("eth_mpls_label_cut", eth(b"\x00\x01\x01", 0x8847), 1, "runt"))
    c.append(("eth_mpls_no_bos", spec_ref.link_ether(V4, mpls=3)[0][:14 + 8], 1, "runt"))
    c.append(("eth_mpls_no_bos2", spec_ref.link_ether(V4, mpls=3)[0][:14 + 10], 1, "runt"))
    sll = spec_ref.link_sll(V4)[0]
    for n in (0, 1, 8, 15):
        c.append((f"sll_runt_{n}", sll[:n], 113, "runt"))
    c.append(("sll_vlan_cut", spec_ref.link_sll(V4, tags=[0x8100])[0][:18], 113, "runt"))
    sll2 = spec_ref.link_sll2(V4)[0]
    for n in (0, 2, 16, 19):
        c.append((f"sll2_runt_{n}", sll2[:n], 276, "runt"))
    for n in (0, 1, 3):
        c.append((f"null_runt_{n}", spec_ref.link_null(V4, 2)[0][:n], 0, "runt"))
        c.append((f"loop_runt_{n}", spec_ref.link_loop(V4, 2)[0][:n], 108, "runt"))
        c.append((f"chdlc_runt_{n}", spec_ref.link_chdlc(V4)[0][:n], 104, "runt"))
    c.append(("chdlc_vlan_cut", spec_ref.link_chdlc(V4, tags=[0x8100])[0][:6], 104, "runt"))
    c.append(("ppp_runt_0", b"", 9, "runt"))
    c.append(("ppp_runt_1", b"\x00", 9, "runt"))
    c.append(("ppp_ff03_runt_3", b"\xff\x03\x00", 9, "runt"))
    c.append(("ppp50_runt_1", b"\x00", 50, "runt"))
    # --- truncated: the IP header or P is cut ---
    for lt_name, wrap in (("eth", lambda ip: spec_ref.link_ether(ip)),
                          ("vlan", lambda ip: spec_ref.link_ether(ip, tags=[0x8100])),
                          ("mpls", lambda ip: spec_ref.link_ether(ip, mpls=2)),
                          ("sll", lambda ip: spec_ref.link_sll(ip)),
                          ("sll2", lambda ip: spec_ref.link_sll2(ip)),
                          ("raw", lambda ip: spec_ref.link_raw(ip, 101)),
                          ("null", lambda ip: spec_ref.link_null(ip, 2 if ip[0] >> 4 == 4 else 30)),
                          ("ppp", lambda ip: spec_ref.link_ppp(ip))):
        for cut in (1, 19, 20 + 23):      # v4 header cut, P cut (L = 48, P = 24)
            f, lt = wrap(V4[:cut])
            c.append((f"{lt_name}_v4_trunc_{cut}", f, lt, "truncated"))
        for cut in (1, 39, 40 + 23):
            f, lt = wrap(V6[:cut])
            c.append((f"{lt_name}_v6_trunc_{cut}", f, lt, "truncated"))
    c.append(("eth_v4_empty_ip", eth(b"", 0x0800), 1, "truncated"))
    c.append(("eth_v6_empty_ip", eth(b"", 0x86DD), 1, "truncated"))
    c.append(("raw228_empty", b"", 228, "truncated"))
    c.append(("raw229_empty", b"", 229, "truncated"))
    c.append(("null_v4_empty_ip", struct.pack("<I", 2), 0, "truncated"))
    c.append(("loop_v6_empty_ip", struct.pack(">I", 10), 108, "truncated"))
    c.append(("ppp_v4_empty_ip", b"\x00\x21", 9, "truncated"))
    c.append(("v4_options_cut", eth(v4hdr(ihl=8, total_length=40)[:28], 0x0800), 1, "truncated"))
    c.append(("v4_small_P_cut", eth(v4hdr(extra=b"abcde")[:24], 0x0800), 1, "truncated"))
    c.append(("v6_small_P_cut", eth(raw(IPv6() / Raw(b"abc"))[:42], 0x86DD), 1, "truncated"))
    c.append(("v6_ext_P_cut", eth(V6[:40 + 10], 0x86DD), 1, "truncated"))
    c.append(("v4_ihl3_short", eth(v4hdr(ihl=3)[:12], 0x0800), 1, "truncated"))  # cap<20 first
    # --- bad_version: the IP version differs from what the link layer announces ---
    c.append(("eth_0800_v6", eth(V6, 0x0800), 1, "bad_version"))
    c.append(("eth_0800_v6_1byte", eth(b"\x60", 0x0800), 1, "bad_version"))  # before cap<20
    c.append(("eth_86dd_v4", eth(V4, 0x86DD), 1, "bad_version"))
    c.append(("eth_0800_v5", eth(v4hdr(version=5), 0x0800), 1, "bad_version"))
    c.append(("eth_0800_v0", eth(b"\x00" * 40, 0x0800), 1, "bad_version"))
    c.append(("vlan_0800_v6", spec_ref.link_ether(V6, tags=[0x8100], ethertype=0x0800)[0], 1,
              "bad_version"))
    c.append(("sll_86dd_v4", spec_ref.link_sll(V4, ethertype=0x86DD)[0], 113, "bad_version"))
    c.append(("sll2_0800_v6", spec_ref.link_sll2(V6, ethertype=0x0800)[0], 276, "bad_version"))
    c.append(("raw228_v6", V6, 228, "bad_version"))
    c.append(("raw229_v4", V4, 229, "bad_version"))
    c.append(("null_2_v6", spec_ref.link_null(V6, 2)[0], 0, "bad_version"))
    c.append(("null_be_2_v6", spec_ref.link_null(V6, 2, True)[0], 0, "bad_version"))
    c.append(("null_30_v4", spec_ref.link_null(V4, 30)[0], 0, "bad_version"))
    c.append(("loop_24_v4", spec_ref.link_loop(V4, 24)[0], 108, "bad_version"))
    c.append(("loop_2_v6", spec_ref.link_loop(V6, 2)[0], 108, "bad_version"))
    c.append(("ppp_0021_v6", spec_ref.link_ppp(V6, protocol=0x0021)[0], 9, "bad_version"))
    c.append(("ppp_0057_v4", spec_ref.link_ppp(V4, False, protocol=0x0057)[0], 9, "bad_version"))
    c.append(("chdlc_0800_v6", spec_ref.link_chdlc(V6, ethertype=0x0800)[0], 104, "bad_version"))
    # --- bad_ihl ---
    for ihl in range(0, 5):
        c.append((f"v4_ihl{ihl}", eth(v4hdr(ihl=ihl, extra=b"z" * 30), 0x0800), 1, "bad_ihl"))
    c.append(("v4_ihl4_tl_small", eth(v4hdr(ihl=4, total_length=3), 0x0800), 1, "bad_ihl"))
    c.append(("raw_v4_ihl0", v4hdr(ihl=0), 101, "bad_ihl"))
    # --- bad_length: total_length < ihl*4 ---
    c.append(("v4_tl0", eth(v4hdr(total_length=0, extra=b"q" * 30), 0x0800), 1, "bad_length"))
    c.append(("v4_tl19", eth(v4hdr(total_length=19, extra=b"q" * 30), 0x0800), 1, "bad_length"))
    c.append(("v4_ihl6_tl23", eth(v4hdr(ihl=6, total_length=23, extra=b"q"), 0x0800), 1,
              "bad_length"))
    # total_length is checked before the options are known to be captured
    c.append(("v4_ihl15_tl20_cut", eth(v4hdr(ihl=15, total_length=20)[:20], 0x0800), 1,
              "bad_length"))
    c.append(("raw228_tl10", v4hdr(total_length=10), 228, "bad_length"))
    # --- vlan_depth: a third VLAN tag ---
    for tags in ((0x8100, 0x8100, 0x8100), (0x88A8, 0x8100, 0x8100), (0x9100, 0x9100, 0x9100),
                 (0x88A8, 0x88A8, 0x8100, 0x8100)):
        c.append((f"eth_vlan3_{'_'.join(map(hex, tags))}", spec_ref.link_ether(V4, tags=tags)[0],
                  1, "vlan_depth"))
    c.append(("sll_vlan3", spec_ref.link_sll(V6, tags=[0x8100] * 3)[0], 113, "vlan_depth"))
    c.append(("chdlc_vlan3", spec_ref.link_chdlc(V4, tags=[0x8100] * 3)[0], 104, "vlan_depth"))
    # --- non_ip ---
    c.append(("eth_arp", raw(Ether(src=MAC_A, dst=MAC_B) / ARP()), 1, "non_ip"))
    c.append(("eth_lldp", eth(b"\x02\x07" + b"\0" * 40, 0x88CC), 1, "non_ip"))
    c.append(("eth_8023_len", eth(b"\xaa\xaa\x03" + b"\0" * 40, 0x002E), 1, "non_ip"))
    c.append(("eth_zero_type", eth(V4, 0x0000), 1, "non_ip"))
    c.append(("vlan_arp", spec_ref.link_ether(raw(ARP()), tags=[0x8100], ethertype=0x0806)[0], 1,
              "non_ip"))
    c.append(("mpls_nibble0", spec_ref.link_ether(b"\x00\x00\x00\x00" + V4, mpls=1,
                                                  ethertype=0x8847)[0], 1, "non_ip"))
    c.append(("mpls3_nibble0", spec_ref.link_ether(b"\x00" * 60, mpls=3)[0], 1, "non_ip"))
    c.append(("mpls_nibble5", spec_ref.link_ether(b"\x50" + V4, mpls=1)[0], 1, "non_ip"))
    c.append(("sll_arp", spec_ref.link_sll(raw(ARP()), ethertype=0x0806)[0], 113, "non_ip"))
    c.append(("sll2_arp", spec_ref.link_sll2(raw(ARP()), ethertype=0x0806)[0], 276, "non_ip"))
    for first in (0x00, 0x50, 0xF0, 0x10):
        c.append((f"raw101_nibble{first >> 4}", bytes([first]) + V4[1:], 101, "non_ip"))
        c.append((f"raw12_nibble{first >> 4}", bytes([first]) + V4[1:], 12, "non_ip"))
    c.append(("null_fam7", spec_ref.link_null(V4, 7)[0], 0, "non_ip"))
    c.append(("null_fam0", spec_ref.link_null(V4, 0)[0], 0, "non_ip"))
    c.append(("null_fam_junk", b"\x07\x00\x00\x07" + V4, 0, "non_ip"))
    c.append(("loop_fam7", spec_ref.link_loop(V4, 7)[0], 108, "non_ip"))
    c.append(("loop_fam2_le", spec_ref.link_null(V4, 2)[0], 108, "non_ip"))  # loop is big-endian
    c.append(("chdlc_slarp", spec_ref.link_chdlc(V4, ethertype=0x8035)[0], 104, "non_ip"))
    c.append(("ppp_lcp", spec_ref.link_ppp(V4, protocol=0xC021)[0], 9, "non_ip"))
    c.append(("ppp_ipcp", spec_ref.link_ppp(V4, False, protocol=0x8021)[0], 9, "non_ip"))
    # --- unsupported_linktype ---
    for lt in (2, 105, 127, 147, 192, 65535):
        c.append((f"linktype_{lt}", spec_ref.link_ether(V4)[0], lt, "unsupported_linktype"))
    c.append(("linktype_147_empty", b"", 147, "unsupported_linktype"))
    return c


CASES = cases()
assert {r for *_, r in CASES} == set(DROP_REASONS)


def feed(p, mod, frames, t0=5_000_000_000, step=1000):
    """frames: [(frame, linktype) or (frame, linktype, dir)]"""
    buf, desc = bytearray(), bytearray()
    for i, fr in enumerate(frames):
        frame, lt = fr[0], fr[1]
        d = fr[2] if len(fr) > 2 else 0
        desc += mod.pack_desc(t0 + i * step, len(buf), len(frame), len(frame), lt, d)
        buf += frame
    p.feed(bytes(buf), bytes(desc))


def only(stats, **expected):
    """Every stat is 0 except the given ones."""
    want = {k: 0 for k in stats}
    want.update(expected)
    return stats == want


@pytest.mark.parametrize("h", HASHES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_drop_reason(impl, case, h):
    name, frame, lt, reason = case
    r, _, _ = impl.pd_ft(frame, lt, h)
    assert r == reason, f"pd_ft: {name}"
    p = impl.Pipeline(1, hash_name=h, own_macs=(MAC_A,), neighbours={MAC_B: 5})
    for d in (0, 1, 2):
        feed(p, impl, [(frame, lt, d)])
        out = p.take()
        assert out.records == b"" and out.counters == b""
        assert only(out.stats, frames=1, **{reason: 1}), (name, d, out.stats)
    p.flush()
    out = p.take()
    assert out.records == b"" and out.segments == [] and out.receipts == b""
    assert out.open_records == b"" and out.open_receipts == b""
    assert p.totals()[reason] == 3 and p.totals()["frames"] == 3


@pytest.mark.parametrize("h", HASHES)
def test_unclear_edge_cases(impl, h):
    """Cases docs/fastpath.md leaves open: only that they are dropped, under a sensible reason."""
    for name, frame, lt, allowed in (
            ("raw101_empty", b"", 101, {"truncated", "runt", "non_ip"}),
            ("mpls_bos_then_end", spec_ref.link_ether(b"", mpls=1)[0], 1, {"truncated", "runt"}),
            ("vlan3_cut", eth(b"\0\1\x81\0\0\2\x81\0", 0x8100), 1, {"vlan_depth", "runt"}),
            ("ppp_ff03_only", b"\xff\x03", 9, {"runt", "non_ip"})):
        r, _, _ = impl.pd_ft(frame, lt, h)
        assert r in allowed, (name, r)
        p = impl.Pipeline(1, hash_name=h)
        feed(p, impl, [(frame, lt)])
        p.flush()
        out = p.take()
        assert out.records == b"" and only(out.stats, frames=1, **{r: 1}), (name, out.stats)


@pytest.mark.parametrize("h", HASHES)
def test_jumbo_and_snapped_frames(impl, h):
    """Jumbo frames are digested; a capture cut by the snap length still is if header+P are in."""
    good = []
    for ip in (raw(IP(src="10.1.1.1", dst="10.2.2.2") / UDP() / Raw(b"j" * 8958)),
               raw(IPv6(src="2001:db8::7", dst="2001:db8::8") / UDP() / Raw(b"k" * 9100)),
               raw(IP(src="10.1.1.1", dst="10.2.2.2", proto=50) / Raw(b"m" * 65515))):
        good.append(ip)
    p = impl.Pipeline(1, hash_name=h, neighbours={MAC_A: 9})
    buf, desc, exp, t = b"", b"", b"", 10_000
    for ip in good:
        frame = spec_ref.link_ether(ip)[0]
        hdr = 14 + (20 if ip[0] >> 4 == 4 else 40)
        for caplen in (len(frame), hdr + 24, 128):       # whole, exactly header+P, snaplen 128
            desc += impl.pack_desc(t, len(buf), caplen, len(frame), 1, 0)
            buf += frame[:caplen]
            exp += spec_ref.record(t, 9, NONE, ip, h)
            t += 1000
        desc += impl.pack_desc(t, len(buf), hdr + 23, len(frame), 1, 0)   # P cut by 1 byte
        buf += frame[:hdr + 23]
        t += 1000
    p.feed(buf, desc)
    p.flush()
    out = p.take()
    assert out.records == exp
    assert out.stats["truncated"] == len(good)
    assert out.stats["records"] == 3 * len(good)
    # counters count the IP length the header announces, not the captured length
    prev, nxt, pkts, nbytes = struct.unpack(">QQQQ", out.counters[:32])
    assert (prev, nxt, pkts, nbytes) == (9, NONE, 3 * len(good),
                                         3 * sum(spec_ref.ip_len(ip) for ip in good))


def test_descriptor_out_of_range_rejected(impl):
    p = impl.Pipeline(1)
    frame = spec_ref.link_ether(V4)[0]
    desc = impl.pack_desc(1, 0, len(frame), len(frame), 1, 0) + \
        impl.pack_desc(2, 1, len(frame), len(frame), 1, 0)
    with pytest.raises(ValueError):
        p.feed(frame, desc)
    assert p.take().stats["frames"] == 0     # nothing of the batch was processed
    p.feed(frame, desc[:24])
    assert p.take().stats["frames"] == 1


@pytest.mark.parametrize("h", HASHES)
def test_mixed_batch(impl, h):
    """All bad frames interleaved with good ones, in one batch and in many: good records intact."""
    goods = []
    for k, ip in enumerate((V4, V6, raw(IP(src="10.9.9.9", dst="10.8.8.8") / Raw(b"p" * 3)))):
        for name, frame, lt in spec_ref.all_links(ip):
            goods.append((frame, lt, ip, MAC_A if name.startswith(("eth", "sll")) else None))
    frames, expected, want = [], [], {r: 0 for r in DROP_REASONS}
    t0, step = 2_000_000_000, 10
    gi = 0
    for i, (name, frame, lt, reason) in enumerate(CASES * 2):
        frames.append((frame, lt))
        want[reason] += 1
        g = goods[gi % len(goods)]
        gi += 1
        expected.append(spec_ref.record(t0 + len(frames) * step, 7 if g[3] else 0, NONE, g[2], h))
        frames.append((g[0], g[1]))
    for split in (len(frames), 1, 7):
        p = impl.Pipeline(3, hash_name=h, neighbours={MAC_A: 7})
        for s in range(0, len(frames), split):
            buf, desc = b"", b""
            for i in range(s, min(s + split, len(frames))):
                f, lt = frames[i]
                desc += impl.pack_desc(t0 + i * step, len(buf), len(f), len(f), lt, 0)
                buf += f
            p.feed(buf, desc)
        p.flush()
        out = p.take()
        assert out.records == b"".join(expected), split
        got = {r: out.stats[r] for r in DROP_REASONS}
        assert got == want
        assert out.stats["frames"] == len(frames)
        assert out.stats["ip"] == out.stats["records"] == len(expected)
        assert out.stats["frames"] == out.stats["ip"] + sum(want.values())
