"""Traffic inside the lab: exact packets (built with scapy) and a load generator with many flows.

Both send from a host namespace through a small Python program started with ``ip netns exec``; it
writes IPv4 packets to a raw socket (``IPPROTO_RAW``, the header is ours: the kernel only fills in
the IP checksum), so the bytes on the wire are exactly the bytes built here and their packet digest
can be computed in advance (``expected_pd``). Everything is bounded: a count, a time limit, and a
``timeout`` on the child process.
"""
import json
import subprocess
import sys

__all__ = ["known_packets", "send_packets", "send_load", "expected_pd", "require_scapy",
           "TrafficError"]


class TrafficError(Exception):
    pass


# The sender: reads packets from stdin ([u32 length][bytes] ...), sends each to its IPv4 dst.
_SENDER = r"""
import socket, struct, sys, time, json
gap = float(sys.argv[1])
data = sys.stdin.buffer.read()
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
off = n = 0
while off < len(data):
    (ln,) = struct.unpack_from("!I", data, off); off += 4
    pkt = data[off:off + ln]; off += ln
    s.sendto(pkt, (socket.inet_ntoa(pkt[16:20]), 0))
    n += 1
    if gap:
        time.sleep(gap)
print(json.dumps({"sent": n}))
"""

# The load generator: UDP in IPv4 over a raw socket; flow i = (src_base + i, dst_base + i,
# sport 10000 + i % 50000, dport 9); round robin over the flows until `count` packets or `seconds`.
_LOAD = r"""
import socket, struct, sys, time, json
src_base, dst_base, flows, count, seconds, size, rate = sys.argv[1:8]
src_base = struct.unpack("!I", socket.inet_aton(src_base))[0]
dst_base = struct.unpack("!I", socket.inet_aton(dst_base))[0]
flows, count, size = int(flows), int(count), int(size)
seconds, rate = float(seconds), float(rate)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
plen = max(0, size - 28)
pkts = []
for i in range(flows):
    src = struct.pack("!I", src_base + i); dst = struct.pack("!I", dst_base + i)
    udp_hdr = struct.pack("!HHHH", 10000 + i % 50000, 9, 8 + plen, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + plen, 0, 0, 64, 17, 0, src, dst)
    pkts.append((ip, udp_hdr, (socket.inet_ntoa(dst), 0)))
t0 = time.monotonic(); deadline = t0 + seconds
sent = errors = 0
seq = 0
while sent < count:
    ip, udp_hdr, addr = pkts[sent % flows]
    # distinct payload per packet (sequence number) so that no two packets share a digest;
    # the IP id carries it too
    payload = struct.pack("!Q", seq).ljust(plen, b"\0")[:plen]
    pkt = ip[:4] + struct.pack("!H", seq & 0xFFFF) + ip[6:] + udp_hdr + payload
    seq += 1
    try:
        s.sendto(pkt, addr)
        sent += 1
    except OSError:
        errors += 1
        if errors > 100000:
            break
        time.sleep(0.0005)
    if (sent & 255) == 0:
        now = time.monotonic()
        if now >= deadline:
            break
        if rate > 0:
            ahead = sent / rate - (now - t0)
            if ahead > 0:
                time.sleep(ahead)
print(json.dumps({"sent": sent, "errors": errors, "flows": min(flows, sent),
                  "seconds": round(time.monotonic() - t0, 3)}))
"""


def require_scapy():
    """scapy's ``(IP, UDP)`` (slow to import: only when needed); ImportError naming the extra to
    install when scapy is missing."""
    try:
        from scapy.layers.inet import IP, UDP
    except ImportError as exc:
        raise ImportError(f"the lab's exact packets are built with scapy, which is not installed "
                          f"({exc}): pip install 'beat[lab]'") from None
    return IP, UDP


def known_packets(src, dst, n=10, sport=40000, dport=7, tag=b"beat-lab"):
    """``n`` distinct UDP/IPv4 packets ``src -> dst`` (scapy), as bytes; each carries its index
    in the payload and the IP id, so that each has its own packet digest."""
    IP, UDP = require_scapy()

    out = []
    for i in range(n):
        p = IP(src=str(src), dst=str(dst), id=(i + 1) & 0xFFFF, ttl=64) / \
            UDP(sport=sport + i, dport=dport) / (tag + b"-%06d" % i)
        out.append(bytes(p))
    return out


def expected_pd(packet, hash_name="sha3-256"):
    """The packet digest (16 bytes) BEAT gives the IPv4 packet ``packet`` (TTL and checksum do
    not enter it, so it is the same at every hop)."""
    from fastpath import pure

    reason, pd, _ft = pure.pd_ft(packet, 228, hash_name)
    if reason:
        raise TrafficError(f"packet has no digest: {reason}")
    return pd


def send_packets(net, host, packets, gap_s=0.0, timeout=30, python=None):
    """Send ``packets`` (IPv4 bytes) from ``host``'s namespace, in order; returns the count."""
    data = b"".join(len(p).to_bytes(4, "big") + p for p in packets)
    argv = net.exec_argv(host, [python or sys.executable, "-c", _SENDER, str(gap_s)])
    p = subprocess.run(argv, input=data, capture_output=True, timeout=timeout)
    if p.returncode != 0:
        raise TrafficError(f"sender in {net.ns(host)}: exit {p.returncode}: "
                           f"{p.stderr.decode(errors='replace').strip()}")
    return json.loads(p.stdout.decode().strip().splitlines()[-1])["sent"]


def send_load(net, src_host, dst_host, flows=1000, count=20000, seconds=10.0, size=64,
              rate=0.0, python=None, wait=True):
    """Load from ``src_host``'s site to ``dst_host``'s site: ``flows`` flows (distinct source and
    destination addresses, so distinct flow tags), at most ``count`` packets and ``seconds``;
    ``rate`` packets/s (0 = as fast as it goes). Returns the sender's JSON summary, or the Popen
    when ``wait`` is false (read it with ``finish_load``)."""
    topo = net.topo
    if not 1 <= flows <= 60000:
        raise TrafficError(f"flows: {flows} is not in 1..60000")
    if count < 0 or seconds <= 0 or not 28 <= size <= 1500:
        raise TrafficError("count >= 0, seconds > 0 and size in 28..1500 are needed")
    src = topo.sites[src_host].network_address + 256
    dst = topo.sites[dst_host].network_address + 256
    argv = net.exec_argv(src_host, [python or sys.executable, "-c", _LOAD, str(src), str(dst),
                                    str(flows), str(count), str(seconds), str(size), str(rate)])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.beat_timeout = seconds + 30
    if not wait:
        return proc
    return finish_load(proc)


def finish_load(proc):
    try:
        out, err = proc.communicate(timeout=proc.beat_timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise TrafficError("load generator did not stop in time (killed)") from None
    if proc.returncode != 0:
        raise TrafficError(f"load generator: exit {proc.returncode}: "
                           f"{err.decode(errors='replace').strip()}")
    return json.loads(out.decode().strip().splitlines()[-1])
