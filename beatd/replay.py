"""Offline replay: a capture file through the fast path into a store, as the live daemon would.

``replay(path, config, store, ...)`` reads the capture in batches (``CaptureReader``: C reads the
mapped file and feeds a native pipeline directly), feeds the pipeline (resumed from
the store, so a replay into an existing store continues it), commits every ``take()`` in one store
transaction, flushes at the end and commits that too. It returns a summary dict; with ``emit`` given,
it calls ``emit(output)`` after each commit (the CLI writes JSON lines from it).
"""
import time

import fastpath
from fastpath.output import REASON_CLASS, STAT_NAMES

from .capfile import CaptureReader

__all__ = ["replay", "summarise", "json_records", "format_summary", "DEFAULT_BATCH"]

CLASSES = ("non-IP", "truncated", "malformed")
# frames per batch (one feed, take and store transaction): 4,096 cost joined traffic a quarter of
# its rate (per-call work, segments hashed fewer side by side), 16,384 is where it levels off
DEFAULT_BATCH = 16384


def replay(path, config, store, batch_frames=DEFAULT_BATCH, emit=None, pipeline_cls=None):
    """Replay the capture at ``path``; ``config`` is a ``beatd.config.Config`` with a node_id."""
    reader = CaptureReader(path, batch_frames)      # CaptureError here: not a capture at all
    # The store reads segments, not the records output: that is made only for emit (JSON lines).
    # Without emit, the store is the only reader of the segments: their records come as read-only
    # views of the pipeline's own buffer (no copy; docs/fastpath.md "Outputs").
    pipe = (pipeline_cls or fastpath.Pipeline)(**config.pipeline_kwargs(),
                                                records_out=emit is not None,
                                                segment_views=emit is None)
    pipe.resume(**store.resume_state())
    started = time.monotonic()
    for _ in reader.feeds(pipe):        # a native pipeline gets the frames straight from C
        out = pipe.take()
        store.commit(out)
        if emit is not None:
            emit(out)
    pipe.flush()
    out = pipe.take()
    store.commit(out)
    if emit is not None:
        emit(out)
    elapsed = time.monotonic() - started
    return summarise(pipe.totals(), reader, store, config, elapsed)


def summarise(totals, reader, store, config, elapsed):
    """The run's counts (this replay only), and the store's ring and totals."""
    stats = {name: totals.get(name, 0) for name in STAT_NAMES}
    reasons = {name: stats[name] for name in REASON_CLASS}
    by_class = dict.fromkeys(CLASSES, 0)
    for name, cls in REASON_CLASS.items():
        by_class[cls] += stats[name]
    # offline, "now" is the newest record's time: does the ring cover the threshold before it?
    ring_now = store.proof_ring_status(0, 0)["newest_t_ns"] or 0
    return {
        "file": reader.path,
        "format": reader.format,
        "impl": fastpath.IMPL,
        "node_id": config.node_id,
        "hash": config.hash,
        "frames": stats["frames"],
        "ip": stats["ip"],
        "dropped": sum(reasons.values()),
        "dropped_by_class": by_class,
        "dropped_by_reason": reasons,
        "records": stats["records"],
        "ingress": stats["ingress"], "egress": stats["egress"], "joined": stats["joined"],
        "ingress_only": stats["ingress_only"], "egress_only": stats["egress_only"],
        "unknown_mac": stats["unknown_mac"], "join_overflow": stats["join_overflow"],
        "receipt_late": stats["receipt_late"],
        "receipts": stats["receipts"],
        "segments": stats["segments"],
        "capture_truncated": reader.capture_truncated,
        "capture_errors": list(reader.errors),
        "store": store.path,
        "store_totals": {k: v for k, v in store.stats().items() if k in ("records", "segments",
                                                                          "receipts", "frames")},
        "ring": store.proof_ring_status(ring_now, config.threshold_ns),
        "seconds": round(elapsed, 3),
    }


def json_records(out, node_id, hash_name):
    """One dict per proof record of an Output, with its FP."""
    records = out.records
    if not records:
        return []
    fps = fastpath.fp_many(records, node_id, hash_name)
    rows = []
    for i in range(len(records) // 48):
        r = records[i * 48:(i + 1) * 48]
        rows.append({
            "t_ns": int.from_bytes(r[0:8], "big"),
            "prev_id": int.from_bytes(r[8:16], "big"),
            "next_id": int.from_bytes(r[16:24], "big"),
            "pd": r[24:40].hex(),
            "ft": r[40:48].hex(),
            "fp": fps[i * 32:(i + 1) * 32].hex(),
        })
    return rows


def format_summary(s):
    """The human summary printed by ``beatd replay``."""
    ring = s["ring"]
    lines = [
        f"{s['file']}: {s['format']}, {s['frames']} frames, {s['ip']} IP packets "
        f"({s['impl']} fast path, {s['seconds']} s)",
        f"  proof records  {s['records']}  (ingress {s['ingress']}, egress {s['egress']}, joined "
        f"{s['joined']}, ingress only {s['ingress_only']}, egress only {s['egress_only']})",
        f"  dropped        {s['dropped']}  " + ", ".join(
            f"{cls} {n}" for cls, n in s["dropped_by_class"].items()),
    ]
    detail = ", ".join(f"{k} {v}" for k, v in s["dropped_by_reason"].items() if v)
    if detail:
        lines.append(f"                 ({detail})")
    lines += [
        f"  unknown MACs   {s['unknown_mac']}, join overflow {s['join_overflow']}, "
        f"late receipts {s['receipt_late']}",
        f"  receipts       {s['receipts']}",
        f"  segments       {s['segments']}",
        f"  ring           {ring['segments']} segments, {ring['bytes']} of {ring['ring_size']} bytes, "
        f"wraps {ring['wraps']}, oldest seg {ring['oldest_seg_seq']}"
        + (" (SHORT of the threshold)" if ring["short"] else ""),
        f"  store          {s['store'] or 'temporary, removed'}",
    ]
    if s["capture_truncated"]:
        lines += [f"  capture damaged: {e}" for e in s["capture_errors"]]
    return "\n".join(lines)
