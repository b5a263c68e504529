"""Throughput of the whole fast-path pipeline, LMDB store included, on one core.

The traffic is an edge router's view: every packet is seen arriving from a host (an unknown MAC, so
`prev_id = 0` and an ingress receipt) and, 20 µs later, leaving to neighbour 2 (the frame's source
MAC is the router's own): parse, two digests' worth of hashing, the join, counters, receipts,
segments and one LMDB transaction per batch. Frames are built up front; only feed + take + commit is
timed.
"""
import os
import struct
import tempfile
import time

OWN = bytes.fromhex("020000000001")
HOST = bytes.fromhex("02000000aa01")
NEXT = bytes.fromhex("020000000002")
IMIX = (60,) * 7 + (576,) * 4 + (1500,)


def _ipv4_udp(size, src, dst, ident):
    """An Ethernet-less IPv4/UDP packet whose Ethernet frame is `size` bytes long."""
    ip_len = size - 14
    udp_len = ip_len - 20
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, ip_len, ident & 0xFFFF, 0, 64, 17, 0, src, dst)
    udp = struct.pack(">HHHH", 1024 + ident % 7, 53, udp_len, 0)
    return ip + udp + bytes(udp_len - 8)


def build_frames(n_frames, flows=1000, sizes=(60,), span_ns=4_000_000_000, desc_pack=None):
    """n_frames frames (n_frames // 2 packets, each seen in and out) over `flows` flows.

    Returns (buf, desc) in the batch format of docs/fastpath.md."""
    packets = n_frames // 2
    step = max(1, span_ns // max(1, packets))
    parts = []
    descs = []
    off = 0
    pending = []
    for i in range(packets):
        flow = i % flows
        src = bytes((10, 0, flow >> 8, flow & 0xFF))
        dst = bytes((10, 1, flow >> 8, flow & 0xFF))
        ip = _ipv4_udp(sizes[i % len(sizes)], src, dst, i // flows)
        t = 1_700_000_000_000_000_000 + i * step
        ingress = OWN + HOST + b"\x08\x00" + ip
        egress = NEXT + OWN + b"\x08\x00" + ip
        parts.append(ingress)
        descs.append(desc_pack(t, off, len(ingress), len(ingress), 1, 0))
        off += len(ingress)
        pending.append((t + 20_000, egress))
        if len(pending) > 8:  # the egress of a packet shows up a few packets later
            te, e = pending.pop(0)
            parts.append(e)
            descs.append(desc_pack(max(te, t), off, len(e), len(e), 1, 0))
            off += len(e)
    for te, e in pending:
        parts.append(e)
        descs.append(desc_pack(te, off, len(e), len(e), 1, 0))
        off += len(e)
    return b"".join(parts), b"".join(descs)


def run_once(impl, buf, desc, hash_name, batch_frames=8192, store_dir=None):
    # (batch_frames: frames per feed, take and store transaction)
    """Feed, take and commit every batch; returns (seconds, frames, records)."""
    from beatd.store import Store

    pipe = impl.Pipeline(1, hash_name=hash_name, own_macs=[OWN], neighbours={NEXT: 2})
    n = len(desc) // 24
    tmp = tempfile.TemporaryDirectory(dir=store_dir)
    store = Store(tmp.name, node_id=1, hash_name=hash_name, ring_size=256 << 20,
                  map_size=2 << 30)
    records = 0
    mv = memoryview(desc)
    t0 = time.perf_counter()
    for i in range(0, n, batch_frames):
        pipe.feed(buf, mv[i * 24:(i + batch_frames) * 24])
        out = pipe.take()
        records += len(out.records) // 48
        store.commit(out)
    pipe.flush()
    out = pipe.take()
    records += len(out.records) // 48
    store.commit(out)
    elapsed = time.perf_counter() - t0
    store.close()
    tmp.cleanup()
    return elapsed, n, records


def pin_one_core():
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    except (AttributeError, OSError):
        pass
