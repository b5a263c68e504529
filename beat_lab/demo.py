"""``beat-lab demo --offline`` (``make demo`` without root): router r2's capture through the whole
pipeline.

Replays the bundled capture ``beat_lab/capture/r2.pcap`` (what r2 of the paper's path
h1-r1-r2-r3-h2 saw; see ``beat_lab/capture/make_capture.py``) with ``capture/r2.toml`` into a
temporary store, then shows what r2 would hand the governance: the proof
records with their FP, the counters per neighbour pair, the segment commitments, and the store's own
consistency check.
"""
import sys
import tempfile

import fastpath

from beatd.config import load
from beatd.replay import format_summary, json_records, replay
from beatd.store import Store

from .data import data_path


def _id(v):
    return "NONE" if v == fastpath.NONE else str(v)


def main():
    cfg = load(data_path("capture", "r2.toml"))
    capture = data_path("capture", "r2.pcap")
    with tempfile.TemporaryDirectory(prefix="beat-demo-") as tmp:
        store = Store(tmp, **{k: v for k, v in cfg.store_kwargs().items() if k != "path"})
        first = []

        def keep(out):
            if len(first) < 6:
                first.extend(json_records(out, cfg.node_id, cfg.hash)[:6 - len(first)])

        summary = replay(capture, cfg, store, emit=keep)
        print(f"== router r2 (node {cfg.node_id}), {fastpath.IMPL} fast path, {cfg.hash}")
        print(format_summary(summary))
        print("\n== first proof records (t_ns, prev_id -> next_id, PD, FP)")
        for r in first:
            print(f"  {r['t_ns']}  {_id(r['prev_id']):>4} -> {_id(r['next_id']):<4}  "
                  f"{r['pd']}  {r['fp'][:16]}...")
        print("\n== counters per (prev_id, next_id): what r2 claims it forwarded")
        for (prev, nxt), (packets, nbytes, first_t, last_t) in sorted(store.counters().items()):
            print(f"  {_id(prev):>4} -> {_id(nxt):<4}  {packets:5} packets  {nbytes:7} bytes")
        commitments = store.commitments()
        print(f"\n== {len(commitments)} segment commitments S (the future ledger outbox)")
        for item in commitments[:4]:
            seg_seq, value = item[0], item[1]
            print(f"  seg {seg_seq}: {value.hex()}")
        problems = store.verify()
        print("\n== store check: " + ("consistent" if not problems else "; ".join(problems)))
        store.close()
        return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
