"""A device's store and everything the Interrogation service would serve from it, for the
differential tests of tests/store/test_adversary_refactor.py. Runs under ANY tree of the project
(the evidence reader moved from beatd/interrogation.py to beatd/store/evidence.py in issue 13): the
caller puts that tree first on PYTHONPATH (and its tests/ for MemLedger).

``python adv_evidence_scenario.py build STORE_DIR``: a store written by the pipeline (transit and
edge traffic, several receipt epochs and anchor periods, the proof ring wrapping), batches
anchored on an in-memory ledger (the last ones left pending), pruned, capture gaps recorded.
Deterministic (fixed clocks and seeds; Ed25519 not involved).

``python adv_evidence_scenario.py dump STORE_DIR OUT.json``: what that store serves: for a grid of
windows (edges on and beside segment edges, before, after, across everything) and flow filters,
the answer plan, the index entries, every segment chunk and every coverage chunk as built by the
reader, the held segments, the counters, every flow's receipts with their anchor refs, NodeInfo's
store fields, the proof ring status, the prune status, the meta and verify()."""
import inspect
import json
import os
import random
import struct
import sys

SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC
NODE = 7
H = "sha3-256"
SEG_RECORDS = 16
SEG_BYTES = 8 + 40 + 48 * SEG_RECORDS
RING = 20 * SEG_BYTES
THRESHOLD_NS = 6 * SEC
OWN = bytes.fromhex("0a00000000f1")
PREV_MAC = bytes.fromhex("020000000001")
NEXT_MAC = bytes.fromhex("020000000002")
OUTSIDE = bytes.fromhex("02aaaaaaaaaa")
FLOWS = [(bytes((10, 0, 0, i)), bytes((10, 9, 0, i % 3))) for i in range(1, 9)]


def _evidence_module():
    try:
        from beatd.store import evidence as mod           # after issue 13
        return mod
    except ImportError:
        from beatd import interrogation as mod            # d756536
        return mod


def _outbox_class():
    try:
        from beatd.store import Outbox
        return Outbox
    except ImportError:
        from ledger_client.outbox import Outbox
        return Outbox


def ipv4(src, dst, ident):
    udp = struct.pack(">HHHH", 1000, 9, 12, 0) + b"pr" + struct.pack(">H", ident & 0xFFFF)
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident & 0xFFFF, 0, 64, 17, 0,
                       src, dst) + udp


def build(path):
    import fastpath
    from beatd.store import Store
    from ledger_client.batcher import Batcher
    from test_batcher import Clock, MemLedger

    store = Store(path, NODE, H, RING)
    pipe = fastpath.Pipeline(NODE, H, own_macs=[OWN], neighbours={PREV_MAC: 21, NEXT_MAC: 22},
                             join_window_ns=SEC // 1000, receipt_epoch_ns=SEC,
                             segment_records=SEG_RECORDS, anchor_period_ns=SEC)
    pipe.resume(**store.resume_state())
    ledger, clock = MemLedger(H), Clock()
    batcher = Batcher(store, ledger, NODE, H, "device-key", 1.0, clock=clock,
                      rng=random.Random(1))
    rng = random.Random(7)
    ident = 0
    seconds = 20
    for second in range(seconds):
        t = T0 + second * SEC
        for part in range(3):
            frames = []
            for k in range(rng.randrange(5, 30)):
                src, dst = rng.choice(FLOWS)
                ip = ipv4(src, dst, ident)
                ident += 1
                tt = t + part * (SEC // 3) + k * 1000
                kind = rng.random()
                came = OUTSIDE if kind < 0.4 else PREV_MAC
                frames.append((tt, OWN + came + b"\x08\x00" + ip))
                if kind < 0.9:                       # most leave, a few are dropped
                    b = bytearray(ip)
                    b[8] -= 1
                    went = OUTSIDE if kind > 0.7 else NEXT_MAC
                    frames.append((tt + 500, went + OWN + b"\x08\x00" + bytes(b)))
            buf, desc = bytearray(), bytearray()
            for tt, f in frames:
                desc += fastpath.pack_desc(tt, len(buf), len(f), len(f), 1)
                buf += f
            pipe.feed(bytes(buf), bytes(desc))
            store.commit(pipe.take())
        pipe.advance(t + SEC + SEC // 100)
        if second % 2 == 0:
            pipe.close_segment()
        store.commit(pipe.take())
        if second % 5 == 3:
            # the merged view only, as before gap records (issue 14) made gaps ledger leaves: the
            # commit path is compared byte for byte with the former one's
            extra = {"records": False} if "records" in inspect.signature(
                store.record_capture).parameters else {}
            store.record_capture([(t + SEC // 4, t + SEC // 3, 12, 1, "eth0"),
                                  (t + SEC // 2, t + SEC // 2, 0, 2, "")],
                                 alive_t_ns=t + SEC, threshold_ns=THRESHOLD_NS, **extra)
        clock.t += 1.0
        if second < seconds - 2:                     # the last batches stay pending / unbatched
            batcher.tick()
        store.prune(t + SEC, THRESHOLD_NS)
    store.close()


def _body_segments(chunk_seq, segs, last):
    return {"chunk_seq": chunk_seq, "last": last,
            "segments": [[s.seg_seq, bytes(s.S).hex(), repr(s.anchor), bytes(s.records).hex()]
                         for s in segs]}


def _body_coverage(k, coverage, last):
    return {"k": k, "last": last, "coverage": repr(coverage)}


def dump(path, out_path):
    from beatd.store import Store

    ev_mod = _evidence_module()
    store = Store(path, NODE, H, RING)
    ev = ev_mod.EvidenceStore(store)
    ev.refresh()
    commits = store.commitments() if hasattr(store, "commitments") else []
    edges = set()
    for c in commits:
        first, last = c[-2], c[-1]
        for t in (first, last):
            edges.update((t - 1, t, t + 1))
    edges.update((0, T0 - 1, T0, T0 + 20 * SEC, (1 << 64) - 1))
    edges = sorted(edges)
    rng = random.Random(3)
    windows = [(0, (1 << 64) - 1), (T0, T0 + 3 * SEC), (T0 + 30 * SEC, T0 + 40 * SEC)]
    windows += [tuple(sorted(rng.sample(edges, 2))) for _ in range(60)]
    windows += [(e, e) for e in edges[:: max(1, len(edges) // 30)]]
    now = T0 + 21 * SEC

    def ft_filter(tags):
        if tags is None:
            return None
        from beatd.interrogation import FlowTagFilter
        return FlowTagFilter(tags)

    tags_all = sorted({bytes(r[40:48]) for r in store.iter_records()})
    assert len(tags_all) >= 5, tags_all
    filters = [None, tags_all[:1], tags_all[2:5], [b"\x00" * 8]]
    answers = []
    for w in windows:
        for tags in filters:
            plan = ev.plan_answer(w[0], w[1], ft_filter(tags), THRESHOLD_NS)
            ring = plan.proof_ring if hasattr(plan, "proof_ring") else plan.ring
            entries = ev.index_entries(plan.first_seq, plan.count)
            sent = set()
            seg_chunks = list(ev.segment_chunks(plan.selected, _body_segments, final=False,
                                                sent=sent))
            cov = list(ev.coverage_chunks(plan, entries, sent, _body_coverage))
            answers.append({"window": list(w), "tags": None if tags is None else
                            [t.hex() for t in tags],
                            "selected": plan.selected, "first_seq": plan.first_seq,
                            "count": plan.count, "ring": ring, "gaps": repr(plan.gaps),
                            "entries": [[e[0], e[1], e[2], e[3], e[4].hex(), e[5]]
                                        for e in entries],
                            "segment_chunks": seg_chunks, "coverage_chunks": cov})
    receipts = {}
    for s, d in FLOWS + [(bytes(4), bytes(4))]:
        s16, d16 = bytes(10) + b"\xff\xff" + s, bytes(10) + b"\xff\xff" + d
        if s == bytes(4):
            s16 = d16 = bytes(16)
        for w in ((0, (1 << 64) - 1), (T0 + 2 * SEC, T0 + 9 * SEC)):
            receipts[f"{s.hex()}-{d.hex()}-{w[0]}"] = [repr(r) for r in
                                                       ev.receipts(w[0], w[1], s16, d16)]
    ring_status = (store.proof_ring_status if hasattr(store, "proof_ring_status")
                   else store.ring_status)
    meta = {k: (v.hex() if isinstance(v, (bytes, bytearray)) else v)
            for k, v in store.meta().items()}
    result = {
        "answers": answers,
        "held": ev.held_segments(range(0, 200)),
        "counters": [repr(c) for c in ev.counters()],
        "receipts": receipts,
        "node_info": ev.node_info(now, THRESHOLD_NS),
        "node_info_late": ev.node_info(now + 100 * SEC, THRESHOLD_NS),
        "ring_status": ring_status(now, THRESHOLD_NS),
        "prune_status": store.prune_status(),
        "meta": meta,
        "verify": store.verify(),
        "gaps": store.capture_gaps(),
        "outbox": [repr(v) for v in store.outbox()],
        "batches": [[b.batch_seq, b.tree_size, b.root.hex(), b.first_t_ns, b.last_t_ns,
                     b.first_leaf_seq, b.seg_leaves_end, b.status, b.ref]
                    for b in _outbox_class()(store).batches()],
    }
    store.close()
    with open(out_path, "w") as f:
        json.dump(result, f, indent=0, sort_keys=True, default=repr)


if __name__ == "__main__":
    if sys.argv[1] == "build":
        build(sys.argv[2])
    else:
        dump(sys.argv[2], sys.argv[3])
    os._exit(0)
