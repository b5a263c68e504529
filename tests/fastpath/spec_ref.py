"""An independent reference of docs/formats.md "Packet digest PD" and "Flow tag FT", for the tests.

Written from the format text only (docs/formats.md), never from fastpath/: the tests compare both
twins against these few lines. The input is the IP packet as scapy built it, starting at the IP
header (no link layer); anything after the announced length (Ethernet padding) is ignored.

The second half (``link_*``) wraps an IP packet in the link layers of docs/fastpath.md's table, by
hand where scapy has no layer, so the tests can feed the same packet through every link type.
"""
import hashlib
import struct

HASHES = ("sha3-256", "blake2b-256")
NONE = 0xFFFFFFFFFFFFFFFF


def H(hash_name, data):
    if hash_name == "sha3-256":
        return hashlib.sha3_256(data).digest()
    if hash_name == "blake2b-256":
        return hashlib.blake2b(data, digest_size=32).digest()
    raise ValueError(hash_name)


def addrs(ip):
    """(src16, dst16) of an IPv4/IPv6 packet; IPv4 mapped to ::ffff:a.b.c.d."""
    if ip[0] >> 4 == 4:
        return b"\0" * 10 + b"\xff\xff" + ip[12:16], b"\0" * 10 + b"\xff\xff" + ip[16:20]
    return ip[8:24], ip[24:40]


def pd_input(ip):
    """(family, input) exactly as SPEC lists the fields."""
    version = ip[0] >> 4
    if version == 4:
        ihl = ip[0] & 0x0F
        total_length = int.from_bytes(ip[2:4], "big")
        L = total_length - ihl * 4
        P = ip[ihl * 4: ihl * 4 + min(24, L)]
        assert len(P) == min(24, L), "packet shorter than its header says"
        fields = (ip[0:1]             # ver_ihl
                  + ip[2:4]           # total_length
                  + ip[4:6]           # identification
                  + ip[6:8]           # flags_fragment
                  + ip[9:10]          # protocol (ToS ip[1], TTL ip[8], checksum ip[10:12] left out)
                  + ip[12:16]         # src
                  + ip[16:20])        # dst   (options ip[20:ihl*4] left out)
        return 4, fields + P
    if version == 6:
        L = int.from_bytes(ip[4:6], "big")
        P = ip[40: 40 + min(24, L)]
        assert len(P) == min(24, L), "packet shorter than its header says"
        flow_label = (int.from_bytes(ip[0:4], "big") & 0x000FFFFF).to_bytes(3, "big")
        fields = (ip[4:6]             # payload_length
                  + ip[6:7]           # next_header (traffic class, hop limit ip[7] left out)
                  + flow_label        # 3 bytes, top 4 bits zero
                  + ip[8:24]          # src
                  + ip[24:40])        # dst
        return 6, fields + P
    raise ValueError(f"not IP: version {version}")


def pd(ip, hash_name):
    family, data = pd_input(bytes(ip))
    return H(hash_name, b"BEAT-PD-v1" + bytes([family]) + data)[:16]


def ft(ip, hash_name):
    src, dst = addrs(bytes(ip))
    return H(hash_name, b"BEAT-FT-v1" + src + dst)[:8]


def pd_ft(ip, hash_name):
    return pd(ip, hash_name), ft(ip, hash_name)


def ip_len(ip):
    """The IP length counted in counters/receipts (docs/fastpath.md: total_length / 40 + payload)."""
    ip = bytes(ip)
    if ip[0] >> 4 == 4:
        return int.from_bytes(ip[2:4], "big")
    return 40 + int.from_bytes(ip[4:6], "big")


def record(t_ns, prev_id, next_id, ip, hash_name):
    """SPEC canonical 48-byte record."""
    p, f = pd_ft(ip, hash_name)
    return struct.pack(">QQQ", t_ns, prev_id, next_id) + p + f


def fp(node_id, record48, hash_name):
    """SPEC "Forwarding proof": H("BEAT-FP-v1" || node_id || prev_id || next_id || PD || t_ns)."""
    t_ns, prev_id, next_id = struct.unpack(">QQQ", record48[:24])
    return H(hash_name, b"BEAT-FP-v1" + struct.pack(">QQQ", node_id, prev_id, next_id)
             + record48[24:40] + struct.pack(">Q", t_ns))


def receipt(node_id, role, src16, dst16, epoch_ns, packets, nbytes, hash_name):
    """SPEC "Receipts": H("BEAT-RC-v1" || node_id || role || src || dst || epoch_ns || packets || bytes)."""
    return H(hash_name, b"BEAT-RC-v1" + struct.pack(">QB", node_id, role) + src16 + dst16
             + struct.pack(">QQQ", epoch_ns, packets, nbytes))


def segment(node_id, seg_seq, records, hash_name):
    """SPEC "Proof segments": H("BEAT-SG-v1" || node_id || seg_seq || count || records)."""
    return H(hash_name, b"BEAT-SG-v1" + struct.pack(">QQQ", node_id, seg_seq, len(records))
             + b"".join(records))


def leaf(kind, value32):
    """SPEC "Anchors" leaf data: type(1) || value(32); type 1 receipt, 2 segment."""
    return bytes([kind]) + value32


def _split(n):
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(leaves, hash_name):
    """RFC 9162 2.1 Merkle tree hash over leaf data."""
    if not leaves:
        return H(hash_name, b"")
    if len(leaves) == 1:
        return H(hash_name, b"\x00" + leaves[0])
    k = _split(len(leaves))
    return H(hash_name, b"\x01" + mth(leaves[:k], hash_name) + mth(leaves[k:], hash_name))


def inclusion_path(leaves, m, hash_name):
    """RFC 9162 2.1.3.1 PATH(m, D[n]), leaf first."""
    if len(leaves) <= 1:
        return []
    k = _split(len(leaves))
    if m < k:
        return inclusion_path(leaves[:k], m, hash_name) + [mth(leaves[k:], hash_name)]
    return inclusion_path(leaves[k:], m - k, hash_name) + [mth(leaves[:k], hash_name)]


# ---------------------------------------------------------------------------------------------
# Link layers (docs/fastpath.md, "Link layers"). Each returns (frame, linktype).

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
ETH_V4, ETH_V6 = 0x0800, 0x86DD


def ethertype_of(ip):
    return ETH_V4 if bytes(ip)[0] >> 4 == 4 else ETH_V6


def link_ether(ip, dst=MAC_B, src=MAC_A, tags=(), mpls=0, ethertype=None):
    """Ethernet; tags: a list of VLAN TPIDs (0x8100, 0x88a8, 0x9100) outermost first; mpls: labels."""
    ip = bytes(ip)
    return dst + src + walk(ip, tags, mpls, ethertype), 1


def walk(ip, tags=(), mpls=0, ethertype=None):
    """The bytes from the first ethertype field on: tags, MPLS labels, the IP packet."""
    inner = ethertype if ethertype is not None else (0x8847 if mpls else ethertype_of(ip))
    out = b""
    types = list(tags) + [inner]
    out += struct.pack(">H", types[0])
    for i, _ in enumerate(tags):
        out += struct.pack(">HH", 0x0100 + i, types[i + 1])  # TCI (prio 0, vid 256+i), next type
    for i in range(mpls):
        bos = 1 if i == mpls - 1 else 0
        out += struct.pack(">I", (1000 + i) << 12 | bos << 8 | 64)
    return out + ip


def link_sll(ip, pkttype=0, addr=MAC_A, arphrd=1, ethertype=None, tags=(), mpls=0):
    addr8 = addr + b"\0" * (8 - len(addr))
    hdr = struct.pack(">HHH", pkttype, arphrd, len(addr)) + addr8
    return hdr + walk(ip, tags, mpls, ethertype), 113


def link_sll2(ip, pkttype=0, addr=MAC_A, arphrd=1, ethertype=None, ifindex=3):
    """SLL2: protocol(2) reserved(2) ifindex(4) arphrd(2) pkttype(1) addrlen(1) addr(8)."""
    ip = bytes(ip)
    proto = ethertype if ethertype is not None else ethertype_of(ip)
    addr8 = addr + b"\0" * (8 - len(addr))
    return struct.pack(">HHIHBB", proto, 0, ifindex, arphrd, pkttype, len(addr)) + addr8 + ip, 276


def link_raw(ip, linktype=101):
    return bytes(ip), linktype


def link_null(ip, family, big_endian=False, linktype=0):
    return struct.pack(">I" if big_endian else "<I", family) + bytes(ip), linktype


def link_loop(ip, family):
    return struct.pack(">I", family) + bytes(ip), 108


def link_chdlc(ip, ethertype=None, tags=(), mpls=0):
    return b"\x0f\x00" + walk(ip, tags, mpls, ethertype), 104


def link_ppp(ip, ff03=True, protocol=None, linktype=9):
    ip = bytes(ip)
    if protocol is None:
        protocol = 0x0021 if ip[0] >> 4 == 4 else 0x0057
    return (b"\xff\x03" if ff03 else b"") + struct.pack(">H", protocol) + ip, linktype


def all_links(ip):
    """Every link type of docs/fastpath.md that can carry this IP packet: [(name, frame, linktype)]."""
    ip = bytes(ip)
    v6 = ip[0] >> 4 == 6
    out = [
        ("eth", *link_ether(ip)),
        ("eth_8100", *link_ether(ip, tags=[0x8100])),
        ("eth_9100", *link_ether(ip, tags=[0x9100])),
        ("eth_qinq", *link_ether(ip, tags=[0x88A8, 0x8100])),
        ("eth_mpls1", *link_ether(ip, mpls=1)),
        ("eth_mpls3", *link_ether(ip, mpls=3)),
        ("eth_mpls3_8848", *link_ether(ip, mpls=3, ethertype=0x8848)),
        ("eth_vlan_mpls2", *link_ether(ip, tags=[0x8100], mpls=2)),
        ("sll", *link_sll(ip)),
        ("sll_vlan", *link_sll(ip, tags=[0x8100])),
        ("sll2", *link_sll2(ip)),
        ("raw101", *link_raw(ip, 101)),
        ("raw12", *link_raw(ip, 12)),
        ("raw14", *link_raw(ip, 14)),
        ("raw" + ("229" if v6 else "228"), *link_raw(ip, 229 if v6 else 228)),
        ("chdlc", *link_chdlc(ip)),
        ("chdlc_mpls", *link_chdlc(ip, mpls=2)),
        ("ppp_ff03", *link_ppp(ip, True)),
        ("ppp", *link_ppp(ip, False)),
        ("ppp50", *link_ppp(ip, True, linktype=50)),
    ]
    for fam in ((10, 24, 28, 30) if v6 else (2,)):
        out.append((f"null_le_{fam}", *link_null(ip, fam, False)))
        out.append((f"null_be_{fam}", *link_null(ip, fam, True)))
        out.append((f"loop_{fam}", *link_loop(ip, fam)))
    return out
