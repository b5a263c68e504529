"""The native pipeline is shared by capture workers (feeding) and a committer (taking): under
concurrent use nothing may be lost, doubled or torn."""
import struct
import threading

OWN = bytes.fromhex("020000000001")


def _frames(worker, n):
    parts, descs, off = [], [], 0
    for i in range(n):
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 40, i & 0xFFFF, 0, 64, 17, 0,
                         bytes((10, worker, i >> 8 & 255, i & 255)), bytes((10, 9, 9, 9))) + bytes(20)
        f = OWN + bytes.fromhex("02000000aa01") + b"\x08\x00" + ip
        parts.append(f)
        descs.append(struct.pack("<QIIIHBB", 10**18 + i, off, len(f), len(f), 1, 0, 0))
        off += len(f)
    return b"".join(parts), b"".join(descs)


def test_concurrent_feeds_and_takes_lose_nothing(native):
    p = native.Pipeline(1, segment_records=100, join_window_ns=1)
    workers, per = 4, 20000
    batches = [_frames(w, per) for w in range(workers)]
    outs = []
    done = threading.Event()

    def feed(buf, desc):
        for i in range(0, len(desc), 24 * 500):
            p.feed(buf, desc[i:i + 24 * 500])

    def take():
        while not done.is_set():
            outs.append(p.take())
        outs.append(p.take())

    taker = threading.Thread(target=take)
    taker.start()
    threads = [threading.Thread(target=feed, args=b) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p.flush()
    done.set()
    taker.join()
    records = b"".join(o.records for o in outs)
    frames = sum(o.stats["frames"] for o in outs)
    seg_seqs = [s[0] for o in outs for s in o.segments]
    assert frames == workers * per
    assert len(records) // 48 == workers * per
    assert len(set(records[i:i + 48] for i in range(0, len(records), 48))) == workers * per
    assert seg_seqs == list(range(len(seg_seqs))) and sum(s[1] for o in outs for s in o.segments) \
        == workers * per
