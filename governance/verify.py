"""Check a device's evidence against its commitments on the ledger (SPEC.md "Proof segments",
"Receipts", "Anchors"; docs/interrogation.md).

The input is already authenticated (signatures, node_id, request digest: governance/client.py);
what is left is whether the evidence is what the device committed to:

- a proof segment: ``S`` recomputed over its records (``fastpath.segment_value``) must equal the
  ``S`` it came with, and the leaf ``0x02 || S`` must be in the tree of the anchor
  ``(node_id, batch_seq)`` read from the ledger (RFC 9162 inclusion proof);
- a receipt: ``R`` recomputed from its fields (``fastpath.receipt_value``), and the leaf
  ``0x01 || R`` in its anchor.

Either check failing is ``TAMPERED`` evidence: the device hands over something other than what it
anchored. A segment or receipt that is not anchored yet (``batch_seq = NONE``), or whose anchor is
not on the ledger (yet), is ``UNANCHORED``: not evidence of tampering, its records are kept but
flagged as unproven. Anchors are read once per ``(node_id, batch_seq)`` (``AnchorCache``).

``ledger_client.errors.Unavailable`` from the ledger is not caught: without the ledger nothing can
be proven, and the caller retries later.
"""
import dataclasses

import fastpath
from fastpath.output import NONE, RECORD_SIZE
from ledger_client.errors import NotFound
from ledger_client.merkle import verify_inclusion

__all__ = ["TAMPERED", "UNANCHORED", "NOT_ANCHORED", "Problem", "SegmentsCheck", "ReceiptsCheck",
           "AnchorCache", "verify_segments", "verify_receipts"]

TAMPERED = "tampered"
UNANCHORED = "unanchored"
NOT_ANCHORED = NONE          # AnchorRef.batch_seq of a leaf that is not anchored yet

_SEGMENT_LEAF = b"\x02"
_RECEIPT_LEAF = b"\x01"


@dataclasses.dataclass(frozen=True)
class Problem:
    """One piece of evidence that is not proven: ``kind`` TAMPERED or UNANCHORED."""
    node_id: int
    kind: str
    item: str          # "segment 12", "receipt epoch_ns=... role=1"
    reason: str

    def __str__(self):
        return f"node {self.node_id} {self.item}: {self.kind}: {self.reason}"


@dataclasses.dataclass
class SegmentsCheck:
    """What ``verify_segments`` found for one node."""
    node_id: int
    records: bytes = b""       # records of the segments whose S and anchor check out
    unproven: bytes = b""      # records of segments whose S checks out but are not anchored (yet)
    problems: list = dataclasses.field(default_factory=list)
    segments: int = 0          # segments given
    proven: int = 0            # segments that fully check out

    @property
    def tampered(self):
        return [p for p in self.problems if p.kind == TAMPERED]

    @property
    def unanchored(self):
        return sum(p.kind == UNANCHORED for p in self.problems)


@dataclasses.dataclass
class ReceiptsCheck:
    """What ``verify_receipts`` found for one node."""
    node_id: int
    receipts: list = dataclasses.field(default_factory=list)   # R and anchor check out
    unproven: list = dataclasses.field(default_factory=list)   # R checks out, not anchored (yet)
    problems: list = dataclasses.field(default_factory=list)

    @property
    def tampered(self):
        return [p for p in self.problems if p.kind == TAMPERED]

    @property
    def unanchored(self):
        return sum(p.kind == UNANCHORED for p in self.problems)


class AnchorCache:
    """``ledger.get_anchor`` once per ``(node_id, batch_seq)``, for one interrogation. An anchor the
    ledger does not have is remembered as missing too (it stays UNANCHORED for this judgement).
    Safe to share between threads: at worst two threads read the same anchor once each."""

    def __init__(self, ledger):
        self.ledger = ledger
        self.hash_name = getattr(ledger, "hash_name", None)
        self._anchors = {}
        self.reads = 0

    def get(self, node_id, batch_seq):
        key = (node_id, batch_seq)
        try:
            return self._anchors[key]
        except KeyError:
            pass
        self.reads += 1
        try:
            a = self.ledger.get_anchor(node_id, batch_seq)
        except NotFound:
            a = None
        self._anchors[key] = a
        return a


def _anchors_for(hash_name, ledger, anchors):
    if anchors is None:
        anchors = ledger if isinstance(ledger, AnchorCache) else AnchorCache(ledger)
    if anchors.hash_name is not None and anchors.hash_name != hash_name:
        raise ValueError(f"hash_name {hash_name!r} is not the ledger's hash "
                         f"{anchors.hash_name!r}")
    return anchors


def _check_anchor(node_id, hash_name, leaf, ref, anchors, item):
    """None when ``leaf`` is proven in its anchor, else the Problem."""
    if ref.batch_seq == NOT_ANCHORED:
        return Problem(node_id, UNANCHORED, item, "not anchored yet (batch_seq NONE)")
    a = anchors.get(node_id, ref.batch_seq)
    if a is None:
        return Problem(node_id, UNANCHORED, item,
                       f"anchor (node {node_id}, batch {ref.batch_seq}) is not on the ledger")
    if ref.tree_size != a.tree_size:
        return Problem(node_id, TAMPERED, item,
                       f"inclusion proof for a tree of {ref.tree_size} leaves, anchor "
                       f"(node {node_id}, batch {ref.batch_seq}) has {a.tree_size}")
    if not verify_inclusion(hash_name, leaf, ref.leaf_index, a.tree_size, ref.path, a.root):
        return Problem(node_id, TAMPERED, item,
                       f"leaf {leaf[:1].hex()}||{leaf[1:].hex()} at index {ref.leaf_index} is not "
                       f"in anchor (node {node_id}, batch {ref.batch_seq}, root {a.root.hex()})")
    return None


def verify_segments(node_id, hash_name, segments, ledger, anchors=None):
    """Check every proof segment of ``node_id`` (objects with ``seg_seq``, ``S``, ``anchor``,
    ``records``) against ``S`` and its anchor on ``ledger`` (a backend or an ``AnchorCache``).
    ``anchors``: an ``AnchorCache`` shared across nodes and calls (default: one for this call).

    A ``seg_seq`` given twice with the same ``S`` counts once; with another ``S``, the second is
    TAMPERED (a device has one segment per ``seg_seq``)."""
    anchors = _anchors_for(hash_name, ledger, anchors)
    out = SegmentsCheck(node_id)
    proven, unproven, seen = [], [], {}
    for seg in segments:
        out.segments += 1
        item = f"segment {seg.seg_seq}"
        records = seg.records if type(seg.records) is bytes else bytes(seg.records)
        if seg.seg_seq in seen:
            if seen[seg.seg_seq] != bytes(seg.S):
                out.problems.append(Problem(node_id, TAMPERED, item,
                                            f"given twice, with S {seen[seg.seg_seq].hex()} and "
                                            f"{bytes(seg.S).hex()}"))
            continue
        seen[seg.seg_seq] = bytes(seg.S)
        if len(records) % RECORD_SIZE:
            out.problems.append(Problem(node_id, TAMPERED, item,
                                        f"records are {len(records)} bytes, not whole "
                                        f"{RECORD_SIZE}-byte records"))
            continue
        S = fastpath.segment_value(hash_name, node_id, seg.seg_seq, records)
        if S != bytes(seg.S):
            out.problems.append(Problem(node_id, TAMPERED, item,
                                        f"S over its {len(records) // RECORD_SIZE} records is "
                                        f"{S.hex()}, the segment says {bytes(seg.S).hex()}"))
            continue
        problem = _check_anchor(node_id, hash_name, _SEGMENT_LEAF + S, seg.anchor, anchors, item)
        if problem is None:
            proven.append(records)
            out.proven += 1
        else:
            out.problems.append(problem)
            if problem.kind == UNANCHORED:
                unproven.append(records)
    out.records = b"".join(proven)
    out.unproven = b"".join(unproven)
    return out


def verify_receipts(node_id, hash_name, receipts, ledger, anchors=None):
    """Check every receipt of ``node_id`` (objects with ``epoch_ns``, ``role``, ``src``, ``dst``,
    ``packets``, ``bytes``, ``R``, ``anchor``): ``R`` recomputed from its fields, and the leaf
    ``0x01 || R`` in its anchor."""
    anchors = _anchors_for(hash_name, ledger, anchors)
    out = ReceiptsCheck(node_id)
    for rc in receipts:
        item = f"receipt epoch_ns={rc.epoch_ns} role={rc.role}"
        try:
            R = fastpath.receipt_value(hash_name, node_id, rc.role, rc.src, rc.dst, rc.epoch_ns,
                                       rc.packets, rc.bytes)
        except ValueError as exc:
            out.problems.append(Problem(node_id, TAMPERED, item, f"not a valid receipt: {exc}"))
            continue
        if R != bytes(rc.R):
            out.problems.append(Problem(node_id, TAMPERED, item,
                                        f"R over its fields is {R.hex()}, the receipt says "
                                        f"{bytes(rc.R).hex()}"))
            continue
        problem = _check_anchor(node_id, hash_name, _RECEIPT_LEAF + R, rc.anchor, anchors, item)
        if problem is None:
            out.receipts.append(rc)
        else:
            out.problems.append(problem)
            if problem.kind == UNANCHORED:
                out.unproven.append(rc)
    return out
