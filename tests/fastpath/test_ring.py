"""Live capture (fastpath._native.Ring, docs/daemon.md) on veth pairs between network namespaces
that each test builds and removes itself: frames in both directions, the forwarding join across two
rings, geometry and interface errors, kernel drop counters, fanout. Root only."""
import contextlib
import ctypes
import errno
import os
import socket
import struct
import subprocess
import time

import pytest

from conftest import require_root

pytestmark = pytest.mark.root
CLONE_NEWNET = 0x40000000
NONE = 0xFFFFFFFFFFFFFFFF
_libc = ctypes.CDLL(None, use_errno=True)
_seq = [0]


@pytest.fixture
def n():
    require_root()
    try:
        import fastpath._native as native
    except ImportError as exc:
        pytest.fail(f"the native fast path is not built: {exc}")
    if not hasattr(native, "Ring"):
        pytest.fail("fastpath._native has no Ring: ring.pxi is not included in _native.pyx")
    return native


def _ip(*args, check=True):
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and r.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


class Lab:
    """Namespaces and veth pairs named after this process, removed even when the test fails."""

    def __init__(self):
        self.tag = f"bt{os.getpid() % 100000}"
        self.names = []

    def ns(self, suffix):
        _seq[0] += 1
        name = f"beat-t{os.getpid()}-{_seq[0]}{suffix}"
        _ip("netns", "add", name)
        self.names.append(name)
        # no IPv6: no router solicitations or ND in the captures
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw",
                        "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
                       check=True)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def veth(self, ns1, if1, mac1, ns2, if2, mac2):
        _ip("link", "add", if1, "netns", ns1, "address", mac1, "type", "veth", "peer", "name", if2,
            "netns", ns2, "address", mac2)
        _ip("-n", ns1, "link", "set", if1, "up")
        _ip("-n", ns2, "link", "set", if2, "up")

    def cleanup(self):
        for name in reversed(self.names):
            _ip("netns", "del", name, check=False)


@pytest.fixture
def lab():
    require_root()
    lb = Lab()
    try:
        yield lb
    finally:
        lb.cleanup()


@contextlib.contextmanager
def netns(name):
    """This thread inside namespace `name`; sockets opened here stay there after the exit."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET):
            raise OSError(ctypes.get_errno(), f"setns into {name}")
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET):
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(target)


def mac(s):
    return bytes.fromhex(s.replace(":", ""))


def udp_frame(dst, src, i, flow=0):
    """A 60-byte Ethernet/IPv4/UDP frame with its own IP id and a sequence number in the payload."""
    payload = struct.pack(">Q", i) + bytes(10)
    udp = struct.pack(">HHHH", 10000 + flow, 9, 8 + len(payload), 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                     bytes((10, 0, flow >> 8 & 255, flow & 255)), bytes((10, 1, 0, 1)))
    return mac(dst) + mac(src) + b"\x08\x00" + ip + udp


def sender(ns, ifname):
    with netns(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        s.bind((ifname, 0))
    return s


def send_all(sock, frames):
    for f in frames:
        while True:
            try:
                sock.send(f)
                break
            except OSError as exc:   # a full veth backlog: try again
                if exc.errno != errno.ENOBUFS:
                    raise
                time.sleep(0.001)


def drain(ring, pipe, want, timeout=3.0):
    """Reads until `want` frames came (then once more, briefly) or the timeout passes."""
    got, end = 0, time.monotonic() + timeout
    while got < want and time.monotonic() < end:
        got += ring.read(pipe, 50)
    got += ring.read(pipe, 20)
    return got


def records(out):
    r = out.records
    return [(*struct.unpack_from(">QQQ", r, i), r[i + 24:i + 40], r[i + 40:i + 48])
            for i in range(0, len(r), 48)]


MAC_A, MAC_B, MAC_R0, MAC_R1 = "02:be:a7:00:00:0a", "02:be:a7:00:00:0b", "02:be:a7:00:01:00", \
    "02:be:a7:00:01:01"


@pytest.fixture
def pair(lab):
    """a <-> b: returns (lab, ns_a, if_a, ns_b, if_b)."""
    a, b = lab.ns("a"), lab.ns("b")
    ia, ib = lab.tag + "a0", lab.tag + "b0"
    lab.veth(a, ia, MAC_A, b, ib, MAC_B)
    return a, ia, b, ib


def test_frames_from_the_peer_arrive_as_ingress_with_their_pd(n, pair):
    import scapy.all as sc

    a, ia, b, ib = pair
    frames = [bytes(sc.Ether(src=MAC_A, dst=MAC_B) / sc.IP(src="10.7.0.1", dst="10.7.0.2", id=i)
                    / sc.UDP(sport=4000 + i, dport=53) / (b"beat-%03d" % i)) for i in range(40)]
    frames = [f + bytes(max(0, 60 - len(f))) for f in frames]
    want = {n.pd_ft(f, 1, "sha3-256")[1:] for f in frames}
    assert len(want) == 40
    with netns(b):
        ring = n.Ring(ib, block_timeout_ms=5)
    pipe = n.Pipeline(2, neighbours={mac(MAC_A): 11}, join_window_ns=10**9)
    with ring, sender(a, ia) as s:
        assert ring.ifname == ib and ring.ifindex > 0 and ring.fileno() >= 0
        assert ring.geometry["block_size"] == 1 << 20
        t0 = time.time_ns()
        send_all(s, frames)
        assert drain(ring, pipe, len(frames)) == len(frames)
        pipe.flush()
        out = pipe.take()
        c = ring.counters()
    recs = records(out)
    assert len(recs) == 40
    assert {(pd, ft) for _, _, _, pd, ft in recs} == want
    for t, prev_id, next_id, _, _ in recs:
        assert prev_id == 11 and next_id == NONE
        assert t0 - 10**9 < t < time.time_ns() + 10**9
    assert out.stats["ingress"] == 40 and out.stats["egress"] == 0
    assert c["frames"] == 40 and c["bytes"] == 40 * 60 and c["blocks"] >= 1
    assert c["vlan_tagged"] == 0 and c["snap_truncated"] == 0


def test_own_sends_are_egress(n, pair):
    a, ia, b, ib = pair
    frames = [udp_frame(MAC_A, MAC_B, i) for i in range(30)]
    with netns(b):
        ring = n.Ring(ib, block_timeout_ms=5)
    pipe = n.Pipeline(2, neighbours={mac(MAC_A): 11}, join_window_ns=10**9)
    with ring, sender(b, ib) as s:
        send_all(s, frames)
        assert drain(ring, pipe, len(frames)) == len(frames)
        pipe.flush()
        out = pipe.take()
    recs = records(out)
    assert out.stats["egress"] == 30 and out.stats["ingress"] == 0
    assert {(p, q) for _, p, q, _, _ in recs} == {(NONE, 11)}
    assert {pd for *_, pd, _ in recs} == {n.pd_ft(f, 1, "sha3-256")[1] for f in frames}


@pytest.mark.parametrize("capture", ["two-rings", "any", "any-filtered"])
def test_forwarded_packets_join(n, lab, capture):
    """a - r - b with forwarding in r: r captures into one pipeline, on both interfaces (two rings)
    or on "any" (one ring); each packet gives one record, prev_id = a, next_id = b."""
    a, r, b = lab.ns("a"), lab.ns("r"), lab.ns("b")
    ia, ir0, ir1, ib = (lab.tag + s for s in ("a0", "r0", "r1", "b0"))
    lab.veth(a, ia, MAC_A, r, ir0, MAC_R0)
    lab.veth(r, ir1, MAC_R1, b, ib, MAC_B)
    _ip("-n", a, "addr", "add", "10.9.1.1/24", "dev", ia)
    _ip("-n", r, "addr", "add", "10.9.1.254/24", "dev", ir0)
    _ip("-n", r, "addr", "add", "10.9.2.254/24", "dev", ir1)
    _ip("-n", b, "addr", "add", "10.9.2.1/24", "dev", ib)
    _ip("-n", a, "route", "add", "default", "via", "10.9.1.254")
    _ip("-n", b, "route", "add", "default", "via", "10.9.2.254")
    _ip("-n", a, "neigh", "add", "10.9.1.254", "lladdr", MAC_R0, "dev", ia)
    _ip("-n", r, "neigh", "add", "10.9.2.1", "lladdr", MAC_B, "dev", ir1)
    subprocess.run(["ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
    A, B, R = 101, 202, 303
    with netns(r):
        rings = ([n.Ring(ir0, block_timeout_ms=5), n.Ring(ir1, block_timeout_ms=5)]
                 if capture == "two-rings" else
                 [n.Ring("any", block_timeout_ms=5,
                         interfaces=(ir0, ir1) if capture == "any-filtered" else None)])
    assert rings[0].ifindex == (0 if capture == "any" else rings[0].ifindex)
    with netns(a):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with netns(b):   # a listener, so that b sends no ICMP port unreachable back through r
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("10.9.2.1", 9))
    pipe = n.Pipeline(R, neighbours={mac(MAC_A): A, mac(MAC_B): B}, join_window_ns=5 * 10**9)
    count = 50
    with contextlib.ExitStack() as stack:
        for ring in rings + [s, sink]:
            stack.enter_context(ring)
        for i in range(count):
            s.sendto(b"beat-fwd-%06d-padding" % i, ("10.9.2.1", 9))
        time.sleep(0.05)
        # Two rings: the ingress side is read first, because the join needs the ingress copy fed
        # before the egress copy, and nothing orders two sockets. One "any" ring keeps the order.
        got = [drain(ring, pipe, count * (3 - len(rings))) for ring in rings]
        pipe.flush()
        out = pipe.take()
    assert got == ([count] * 2 if capture == "two-rings" else [2 * count])
    recs = records(out)
    assert len(recs) == count
    assert {(p, q) for _, p, q, _, _ in recs} == {(A, B)}
    assert out.stats["joined"] == count
    assert out.stats["ingress"] == count and out.stats["egress"] == count


def test_geometry_errors_carry_the_numbers(n):
    require_root()
    g = n.ring_geometry(1 << 20, 16, 2048)
    assert g["frames_per_block"] == 512 and g["ring_bytes"] == 16 << 20
    cases = [((1000, 16, 2048), "block_size 1000 is not a power of two multiple of the page size"),
             ((3 * 4096, 16, 2048), "block_size 12288 is not a power of two"),
             ((1 << 20, 16, 2050), "frame_size 2050 is not a multiple of 16 (TPACKET_ALIGNMENT)"),
             ((1 << 20, 16, 64), "frame_size 64 must be at least"),
             ((4096, 16, 8192), "frame_size 8192 is more than block_size (4096 bytes)"),
             ((1 << 20, 0, 2048), "block_count 0 must be at least 1"),
             ((1 << 20, 1025, 2048), "block_count 1025 exceeds 1073741824 bytes"),
             ((1 << 20, 16, 2048, 0), "block_timeout_ms 0 must be in 1..1000"),
             ((1 << 20, 16, 2048, 1001), "block_timeout_ms 1001 must be in 1..1000"),
             ((-1, 16, 2048), "block_size must be a non-negative integer, got -1")]
    for args, text in cases:
        with pytest.raises(n.RingError) as ei:
            n.ring_geometry(*args)
        assert ei.value.errno == errno.EINVAL
        assert text in str(ei.value), (args, str(ei.value))
    with pytest.raises(n.RingError) as ei:
        n.Ring("lo", block_size=1000)
    assert "block_size 1000" in str(ei.value)
    missing = f"beatnone{os.getpid() % 10000}"
    with pytest.raises(n.RingError) as ei:
        n.Ring(missing)
    assert ei.value.errno == errno.ENODEV and missing in str(ei.value)
    assert isinstance(ei.value, OSError)
    with pytest.raises(n.RingError) as ei:
        n.Ring("lo", fanout_group=1, fanout_mode="rr")
    assert "fanout_mode" in str(ei.value)


def _kernel_stats_once(ring, packets, timeout=10.0):
    """ring.kernel_stats() once the kernel counted ``packets`` (the veth pair delivers in
    softirq, later on a busy machine), or when ``timeout`` passed."""
    end = time.monotonic() + timeout
    while True:
        k = ring.kernel_stats()
        if k["packets"] >= packets or time.monotonic() > end:
            return k
        time.sleep(0.01)


def test_kernel_stats_accumulate_and_count_drops(n, pair):
    a, ia, b, ib = pair
    with netns(b):
        ring = n.Ring(ib, block_size=4096, block_count=2, frame_size=2048, block_timeout_ms=1)
    pipe = n.Pipeline(2, join_window_ns=10**9)
    with ring, sender(a, ia) as s:
        send_all(s, [udp_frame(MAC_B, MAC_A, i, i % 50) for i in range(2000)])   # nobody reads
        k1 = _kernel_stats_once(ring, 2000)
        k2 = ring.kernel_stats()        # the kernel reset its counters: the totals stay
        assert k2 == k1
        assert k1["drops"] > 0 and k1["packets"] == 2000
        send_all(s, [udp_frame(MAC_B, MAC_A, 5000 + i) for i in range(500)])
        k3 = _kernel_stats_once(ring, 2500)
        assert all(k3[key] >= k1[key] for key in k1) and k3["packets"] == 2500
        got = 0
        for _ in range(20):
            got += ring.read(pipe, 10)
        k4 = ring.kernel_stats()
        assert got + k4["drops"] == k4["packets"] == 2500
        assert ring.counters()["frames"] == got
    ring.close()
    assert ring.kernel_stats() == k4        # closed: the last totals, no error
    with pytest.raises(n.RingError) as ei:
        ring.read(pipe)
    assert ei.value.errno == errno.EBADF


@pytest.mark.parametrize("mode", ["lb", "hash"])
def test_fanout_splits_every_frame_once(n, pair, mode):
    a, ia, b, ib = pair
    group = (os.getpid() + (mode == "hash")) & 0xFFFF
    with netns(b):
        r1 = n.Ring(ib, block_timeout_ms=5, fanout_group=group, fanout_mode=mode)
        r2 = n.Ring(ib, block_timeout_ms=5, fanout_group=group, fanout_mode=mode)
    assert r1.geometry["fanout_mode"] == mode
    frames = [udp_frame(MAC_B, MAC_A, i, i % 64) for i in range(3000)]
    p1, p2 = (n.Pipeline(2, neighbours={mac(MAC_A): 11}, join_window_ns=10**9) for _ in "12")
    with r1, r2, sender(a, ia) as s:
        send_all(s, frames)
        time.sleep(0.05)
        g1 = g2 = 0
        end = time.monotonic() + 3
        while g1 + g2 < len(frames) and time.monotonic() < end:
            g1 += r1.read(p1, 20)
            g2 += r2.read(p2, 20)
        g1 += r1.read(p1, 20)
        g2 += r2.read(p2, 20)
        assert r1.kernel_stats()["drops"] == r2.kernel_stats()["drops"] == 0
    assert g1 + g2 == len(frames) and g1 > 0 and g2 > 0
    pds = []
    for p in (p1, p2):
        p.flush()
        pds.append({pd for *_, pd, _ in records(p.take())})
    assert len(pds[0]) == g1 and len(pds[1]) == g2 and not pds[0] & pds[1]
    assert pds[0] | pds[1] == {n.pd_ft(f, 1, "sha3-256")[1] for f in frames}


def test_read_releases_the_gil_and_close_waits_for_it(n, pair):
    import threading

    a, ia, b, ib = pair
    with netns(b):
        ring = n.Ring(ib)
    pipe = n.Pipeline(2)
    res = []

    def reader():
        res.append(ring.read(pipe, 400))

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.05)
    spins, end = 0, time.monotonic() + 0.1
    while time.monotonic() < end:      # runs only if the reader does not hold the GIL
        spins += 1
    with pytest.raises(n.RingError) as ei:
        ring.read(pipe, 1)             # one reader per ring
    assert ei.value.errno == errno.EBUSY
    ring.close()                       # deferred: the reader is inside the ring
    assert ring.closed
    t.join(2)
    assert not t.is_alive() and res == [0] and spins > 1000
    with pytest.raises(n.RingError):
        ring.fileno()
    ring.close()                       # idempotent


def test_any_ring_keeps_only_the_named_interfaces(n, pair):
    a, ia, b, ib = pair
    with netns(b):
        everything = n.Ring("any", block_timeout_ms=5)
        only_veth = n.Ring("any", block_timeout_ms=5, interfaces=[ib])
        lo = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        lo.bind(("lo", 0))
        with pytest.raises(n.RingError) as ei:
            n.Ring("any", interfaces=[ib, "beatnone0"])
    assert ei.value.errno == errno.ENODEV and "beatnone0" in str(ei.value)
    assert only_veth.geometry["interfaces"] == [ib] and only_veth.ifindex == 0
    p1, p2 = n.Pipeline(2), n.Pipeline(2)
    with everything, only_veth, lo, sender(a, ia) as s:
        send_all(s, [udp_frame(MAC_B, MAC_A, i) for i in range(20)])
        send_all(lo, [udp_frame(MAC_B, MAC_A, 100 + i) for i in range(10)])
        time.sleep(0.05)
        got_all = drain(everything, p1, 40)      # lo: the outgoing and the looped-back copy
        got_veth = drain(only_veth, p2, 20)
        assert only_veth.kernel_stats()["packets"] == 20
    assert (got_all, got_veth) == (40, 20)


MAC_C, MAC_R2 = "02:be:a7:00:00:0c", "02:be:a7:00:01:02"


def test_each_frame_carries_the_slot_of_its_interface(n, lab):
    """r has a link to a (r0) and one to c (r2); one "any" ring filtered to (r0, r2) numbers them
    slots 1 and 2 and hands each frame over with its interface's slot, in both directions. A
    pipeline that binds a's MAC to slot 1 names a by it there only: a's MAC coming in (or going
    out) on r2 is from (or to) outside, 0, counted as neighbour_wrong_interface."""
    a, c, r = lab.ns("a"), lab.ns("c"), lab.ns("r")
    ia, ic, ir0, ir2 = (lab.tag + s for s in ("a0", "c0", "r0", "r2"))
    lab.veth(a, ia, MAC_A, r, ir0, MAC_R0)
    lab.veth(c, ic, MAC_C, r, ir2, MAC_R2)
    with netns(r):
        ring = n.Ring("any", block_timeout_ms=5, interfaces=(ir0, ir2))
        one = n.Ring(ir2, block_timeout_ms=5)
        every = n.Ring("any", block_timeout_ms=5)
    assert ring.slots == {ir0: 1, ir2: 2} and one.slots == {ir2: 1} and every.slots == {}
    A, C = 11, 12
    pipe = n.Pipeline(3, neighbours={mac(MAC_A): (A, (1,)), mac(MAC_C): (C, (2,))},
                      join_window_ns=10**9)
    with ring, one, every, sender(a, ia) as sa, sender(c, ic) as sc_, sender(r, ir2) as sr:
        send_all(sa, [udp_frame(MAC_R0, MAC_A, i, flow=1) for i in range(10)])     # a, on r0
        send_all(sc_, [udp_frame(MAC_R2, MAC_A, i, flow=2) for i in range(6)])     # a's MAC on r2
        send_all(sc_, [udp_frame(MAC_R2, MAC_C, i, flow=3) for i in range(5)])     # c, on r2
        send_all(sr, [udp_frame(MAC_A, MAC_R2, i, flow=4) for i in range(4)])      # to a's MAC, r2
        time.sleep(0.05)
        assert drain(ring, pipe, 25) == 25
        pipe.flush()
        out = pipe.take()
        wrong = pipe.take_wrong_interface()
    flows = {}
    for _, p, q, _, ft in records(out):
        flows.setdefault(ft, set()).add((p, q))
    ft = {k: n.pd_ft(udp_frame(MAC_B, MAC_A, 0, flow=k), 1)[2] for k in (1, 2, 3, 4)}
    assert {k: flows.get(ft[k]) for k in ft} == {1: {(A, NONE)}, 2: {(0, NONE)}, 3: {(C, NONE)},
                                                 4: {(NONE, 0)}}
    assert out.stats["neighbour_wrong_interface"] == 10 and out.stats["unknown_mac"] == 0
    assert wrong == [(mac(MAC_A), 2, 1, A, 6), (mac(MAC_A), 2, 2, A, 4)]
