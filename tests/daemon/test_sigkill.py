"""SIGKILL consistency: ``beatd replay`` killed at random moments never leaves a broken store.

One capture (~200k frames, several flows, ingress and egress frames that join, three receipt epochs)
is replayed again and again into the same store, each run killed with SIGKILL after a random delay;
after every kill the store must be consistent (``verify()``) and satisfy the invariants, checked here
again independently of ``verify()`` (hashlib, not the fast path).
"""
import hashlib
import os
import random
import signal
import struct
import subprocess
import sys
import time

import pytest

from beatd.store import Store

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OWN = bytes.fromhex("020000000001")
NEIGHBOURS = {bytes.fromhex("020000000002"): 2, bytes.fromhex("020000000003"): 3}
HOST = bytes.fromhex("0a0000000099")            # not a neighbour: outside the domain (id 0)
T0 = 1_700_000_000_000_000_000
CONFIG = """
node_id = 1
own_macs = ["02:00:00:00:00:01"]
[[neighbours]]
node_id = 2
mac = "02:00:00:00:00:02"
[[neighbours]]
node_id = 3
mac = "02:00:00:00:00:03"
[store]
ring_size = "512MiB"
map_size = "2GiB"
[governance]
segment_records = 256
receipt_epoch_ms = 1000
"""


def udp_frame(src_mac, dst_mac, i, flow):
    payload = struct.pack(">Q", i) + b"beat-sig"
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), i & 0xFFFF, 0, 64, 17, 0,
                     bytes([10, 0, flow, 1]), bytes([10, 9, flow, 2]))
    udp = struct.pack(">HHHH", 4000 + flow, 53, 8 + len(payload), 0)
    return dst_mac + src_mac + b"\x08\x00" + ip + udp + payload


def write_capture(path, packets, spacing_ns=30_000, egress_delay_ns=20_000):
    """A pcap (nanosecond) of ``packets`` IP packets, most of them seen arriving and leaving.

    Flow f of 6: arrives from neighbour 2, a neighbour 3 or a host, leaves towards neighbour 3, 2 or
    a host; every 10th packet is dropped (no egress frame). Egress frames come egress_delay_ns after
    their ingress, interleaved with later packets' ingress frames. Returns the number of frames.
    """
    srcs = [(list(NEIGHBOURS)[0]), HOST, list(NEIGHBOURS)[1]]
    dsts = [list(NEIGHBOURS)[1], list(NEIGHBOURS)[0], HOST]
    events = []
    for i in range(packets):
        flow = i % 6
        t = T0 + i * spacing_ns
        events.append((t, 0, udp_frame(srcs[flow % 3], OWN, i, flow)))
        if i % 10 != 9:
            events.append((t + egress_delay_ns, 1, udp_frame(OWN, dsts[flow % 3], i, flow)))
    events.sort(key=lambda e: (e[0], e[1]))
    out = [struct.pack("<IHHiIII", 0xa1b23c4d, 2, 4, 0, 0, 65535, 1)]
    for t, _, frame in events:
        out.append(struct.pack("<IIII", t // 1_000_000_000, t % 1_000_000_000, len(frame),
                               len(frame)) + frame)
    with open(path, "wb") as f:
        f.write(b"".join(out))
    return len(events)


def H(data):
    return hashlib.sha3_256(data).digest()


def check_store(path, checked):
    """verify(), and the invariants checked here with hashlib. Returns (store stats, records).

    ``checked``: {seg_seq: S} already recomputed here by an earlier call (only new ones are hashed
    again; a stored S that changed since is an error too).
    """
    with Store(path, 1, "sha3-256", 512 << 20) as s:
        assert s.verify() == []
        meta = s.meta()
        segs = s.segments()
        commits = s.commitments()
        leaves = s.outbox()
        receipts = s.receipts()
        counters = s.counters()
    assert meta["ring_wraps"] == 0, "size the ring so that it does not wrap in this test"
    # seg_seqs contiguous from 0, commitments for each
    assert [x[0] for x in segs] == list(range(meta["next_seg_seq"]))
    assert [c[0] for c in commits] == list(range(meta["next_seg_seq"]))
    for (seq, count, value, records), c in zip(segs, commits):
        assert len(records) == 48 * count
        if seq not in checked:
            checked[seq] = H(b"BEAT-SG-v1" + struct.pack(">QQQ", 1, seq, count) + records)
        assert value == checked[seq]
        assert c[1] == value and c[2] == count
    # one leaf per commitment, one per receipt, none doubled, no gap
    assert [leaf[0] for leaf in leaves] == list(range(meta["next_leaf_seq"]))
    seg_values = [v for _, t, v in leaves if t == 2]
    rc_values = [v for _, t, v in leaves if t == 1]
    assert len(seg_values) + len(rc_values) == len(leaves)
    assert seg_values == [c[1] for c in commits]          # and in seg_seq order
    assert len(set(rc_values)) == len(rc_values) == len(receipts)
    assert set(rc_values) == {r[6] for r in receipts}
    assert len({r[:4] for r in receipts}) == len(receipts)
    # counters count every record ever committed
    held = sum(x[1] for x in segs) + len(meta["open_records"]) // 48
    assert sum(c[0] for c in counters.values()) == held == meta["stats"]["records"]
    return meta["stats"], held


@pytest.mark.slow
def test_sigkill_never_breaks_the_store(tmp_path):
    cap = tmp_path / "flows.pcap"
    frames = write_capture(cap, 105_000)
    assert frames >= 190_000
    cfg = tmp_path / "beatd.toml"
    cfg.write_text(CONFIG)
    store = tmp_path / "store"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "beatd", "replay", str(cap), "--node-id", "1", "--config", str(cfg),
           "--store", str(store), "--batch-frames", "97"]
    rng = random.Random(1234)
    checked = {}
    started = time.monotonic()
    # a first run to the end: how long a whole replay takes (then kills land anywhere in one)
    first = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, timeout=120)
    assert first.returncode == 0, first.stderr.decode()
    whole = time.monotonic() - started
    _, held = check_store(store, checked)
    records = [held]
    kills = runs = 0
    while kills < 15 and runs < 80:
        runs += 1
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            proc.wait(timeout=rng.uniform(0.05, 0.6) * whole)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        _, err = proc.communicate()
        assert proc.returncode in (0, -signal.SIGKILL), err.decode()
        _, held = check_store(store, checked)
        records.append(held)
    assert kills >= 15, f"only {kills} of {runs} runs were killed"
    assert records == sorted(records)           # each run resumes the store and adds to it
    assert records[-1] > records[0]
    # a last run to the end
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    stats, held = check_store(store, checked)
    assert held > records[-1]
    assert stats["joined"] > 0 and stats["receipts"] > 0 and stats["segments"] > 0
    assert time.monotonic() - started < 600    # a hang detector, not a speed test
