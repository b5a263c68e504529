"""Writes beat_lab/capture/r2.pcap (the offline demo's capture, package data): what router r2
(node 2) of the paper's path h1-r1-r2-r3-h2 captures.

Deterministic (fixed timestamps and payloads), so the committed file can be regenerated:
    .venv/bin/python beat_lab/capture/make_capture.py
Traffic: h1 -> h2 packets arriving from r1 and leaving to r3 30 us later; replies h2 -> h1 the other
way; a few packets r2 drops (seen arriving only); and odd frames a real link carries (ARP, a runt,
a truncated IPv4 header, IHL below 5, three VLAN tags), which must be counted, not crash anything.
"""
import os
import struct

from scapy.all import ARP, IP, UDP, Dot1Q, Ether, raw

R1, R2, R3 = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"
H1, H2 = "10.0.1.10", "10.0.2.10"
T0 = 1_763_700_000 * 10**9  # ns
HERE = os.path.dirname(os.path.abspath(__file__))


def frames():
    t = T0
    out = []
    for i in range(200):
        ip = IP(src=H1, dst=H2, id=i, ttl=63) / UDP(sport=40000, dport=5001) / (b"video %04d" % i)
        out.append((t, Ether(src=R1, dst=R2) / ip))
        if i % 40 != 39:  # every 40th packet is dropped by r2
            fwd = ip.copy()
            fwd.ttl -= 1
            out.append((t + 30_000, Ether(src=R2, dst=R3) / fwd))
        if i % 10 == 0:
            rep = IP(src=H2, dst=H1, id=1000 + i, ttl=63) / UDP(sport=5001, dport=40000) / b"ack"
            out.append((t + 200_000, Ether(src=R3, dst=R2) / rep))
            back = rep.copy()
            back.ttl -= 1
            out.append((t + 230_000, Ether(src=R2, dst=R1) / back))
        t += 10_000_000
    odd = [
        Ether(src=R1, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.0.12.1", pdst="10.0.12.2"),
        raw(Ether(src=R1, dst=R2))[:10],
        raw(Ether(src=R1, dst=R2) / IP(src=H1, dst=H2))[:24],
        Ether(src=R1, dst=R2, type=0x0800) / (b"\x43" + bytes(40)),
        Ether(src=R1, dst=R2) / Dot1Q(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / IP(src=H1, dst=H2),
    ]
    for k, f in enumerate(odd):
        out.append((T0 + 500_000_000 + k * 100_000_000, f))
    out.sort(key=lambda x: x[0])
    return out


def main():
    """A nanosecond pcap, written by hand so that runts stay exactly as built."""
    path = os.path.join(HERE, "r2.pcap")
    with open(path, "wb") as w:
        w.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1))
        for t, f in frames():
            data = f if isinstance(f, bytes) else raw(f)
            w.write(struct.pack("<IIII", t // 10**9, t % 10**9, len(data), len(data)) + data)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
