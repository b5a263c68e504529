"""`python -m benchmarks.store`: what the store's commit and pruning cost, on one core.

Outputs made up front by the real pipeline (an edge router's view: 2^19 frames over 1,000 flows,
each packet seen arriving and leaving, 8,192 frames per take), then:

- ``commit``: only ``Store.commit`` is timed, on a fresh store, ``--runs`` times (best and median);
- ``commit + prune``: the same with ``Store.prune`` after every commit, as the daemon does, on a
  store that has the ledger outbox's databases but nothing anchored (the read that finds nothing
  to do);
- ``prune``: the same Outputs committed and every batch anchored, then ``prune()`` calls of at
  most PRUNE_LEAVES leaves until nothing is left: time per call and leaves per second, and a
  call that finds nothing to do.

The machine is shared: compare the best runs, and run it twice.
"""
import argparse
import statistics
import tempfile
import time

import fastpath
from beatd.store import PRUNE_LEAVES, Outbox, Store
from benchmarks.pipeline import NEXT, OWN, build_frames
from ledger_client.outbox import BatchRecord

FRAMES = 1 << 19
BATCH = 8192


def outputs(span_ns):
    buf, desc = build_frames(FRAMES, flows=1000, desc_pack=fastpath.pack_desc, span_ns=span_ns)
    p = fastpath.Pipeline(1, own_macs=(OWN,), neighbours={NEXT: 2})
    outs = []
    for i in range(0, FRAMES, BATCH):
        p.feed(buf, desc[i * fastpath.DESC_SIZE:(i + BATCH) * fastpath.DESC_SIZE])
        outs.append(p.take())
    p.flush()
    outs.append(p.take())
    return outs


def commits(outs, runs, prune):
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as d:
            s = Store(d, 1, "sha3-256", 256 << 20)
            if prune:
                Outbox(s)                 # the anchors / leaf_proofs databases, as with a ledger
            t0 = time.perf_counter()
            for o in outs:
                s.commit(o)
                if prune:
                    s.prune(o.closed_before, 3600 * 10**9)
            times.append(time.perf_counter() - t0)
            s.close()
    return times


def pruning(outs):
    with tempfile.TemporaryDirectory() as d:
        s = Store(d, 1, "sha3-256", 1 << 20, map_size=4 << 30)
        ob = Outbox(s)
        leaf = b = seg_end = 0
        for o in outs:
            s.commit(o)
            leaves = ob.leaves(leaf, 1 << 16)
            if not leaves:
                continue
            levels = fastpath.merkle_levels("sha3-256", b"".join(x for _, x in leaves))
            first, last, seg_end = ob.span(leaves, seg_end)
            ob.write_batch(BatchRecord(b, len(leaves), bytes(32), first, last, leaf, seg_end,
                                       0.0), levels)
            ob.mark_anchored(b)
            leaf += len(leaves)
            b += 1
        times, n = [], 0
        while True:
            t0 = time.perf_counter()
            done = s.prune(1 << 63, 0)
            dt = time.perf_counter() - t0
            if not done["leaves"]:
                break
            times.append(dt)
            n += done["leaves"]
        t0 = time.perf_counter()
        for _ in range(1000):
            s.prune(1 << 63, 0)
        idle = (time.perf_counter() - t0) / 1000
        problems = s.verify()
        s.close()
    return b, leaf, n, times, idle, problems


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=11)
    args = ap.parse_args(argv)
    outs = outputs(8_000_000_000)
    records = sum(len(o.records) // fastpath.RECORD_SIZE for o in outs)
    for name, prune in (("commit", False), ("commit + prune", True)):
        t = commits(outs, args.runs, prune)
        print(f"{name:>15}: {len(outs)} commits, {records} records: best {min(t) * 1e3:.1f} ms "
              f"({min(t) / len(outs) * 1e6:.0f} us/commit, {records / min(t) / 1e6:.2f} M "
              f"records/s), median {statistics.median(t) * 1e3:.1f} ms")
    batches, leaves, n, times, idle, problems = pruning(outputs(60_000_000_000))
    print(f"{'prune':>15}: {batches} anchored batches, {leaves} leaves; {n} pruned (the rest: "
          f"segments still in the ring) in {len(times)} calls of <= {PRUNE_LEAVES} leaves: median "
          f"{statistics.median(times) * 1e3:.2f} ms, max {max(times) * 1e3:.2f} ms per call, "
          f"{n / sum(times) / 1e3:.0f} k leaves/s; nothing to do: {idle * 1e6:.1f} us; "
          f"verify: {problems or 'consistent'}")


if __name__ == "__main__":
    main()
