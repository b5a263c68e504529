"""Check a device's evidence against its commitments on the ledger (docs/formats.md "Proof segments",
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

A whole proof segments answer (``check_answer``): the segments sent in full and the signed coverage
that ends the answer (docs/interrogation.md, chunk kind 4) are checked against each other, against
the anchors and, by an audit of index entries (GetSegments), against the device's own records.
Whatever contradicts is ``WITHHELD``: the device's own signed statements disagree (it left out
what it holds, or says what is not so), and each Problem names the device, the segment and what
disagrees:

- the index is contiguous from ``index_first_seq`` and within the ring it declares; it starts and
  ends with segments that overlap the window (the rule that defines it);
- every segment sent in full is in the index, flagged sent, with the same S, count and first/last
  ``t_ns`` as its records; every entry flagged sent was sent; an entry of no record has the S of
  an empty segment;
- every index entry is proven in its anchor (``TAMPERED`` if the ledger disagrees); an entry below
  ``anchored_segments`` that comes not anchored contradicts the coverage;
- the audit: the boundary segments ``index_first_seq - 1`` and the one after the index (when held)
  and a random sample of the entries not sent in full (``sample`` of them, all when there are no
  more; chosen here, after the index was signed; without flow tags, every entry overlapping the
  window that was not sent, too) are asked with ``audit(seg_seqs)`` (e.g.
  ``InterrogationClient.get_segments``). Their records must give the index's S, count and
  first/last ``t_ns``, hold no record of the flow tags in the window (without flow tags: no record
  in the window), and a boundary no record in the window. A segment asked that the audit's
  coverage still says is held, but that is not sent, is withheld; one that left the ring since is
  only reported (``unaudited``).

Records outside the requested window ``[from_ns - margin, to_ns + margin]`` are dropped as the
evidence is assembled (``verify_segments(..., window=)``), counted in ``dropped_records``.
"""
import dataclasses
import random

import fastpath
from fastpath.output import NONE, RECORD_SIZE
from ledger_client.errors import NotFound
from ledger_client.merkle import verify_inclusion

__all__ = ["TAMPERED", "UNANCHORED", "WITHHELD", "NOT_ANCHORED", "PROBLEM_KINDS",
           "DEFAULT_AUDIT_SAMPLE", "Problem", "SegmentsCheck", "ReceiptsCheck", "AnswerCheck",
           "AnchorCache", "NotSettled", "wait_settled", "verify_segments", "verify_receipts",
           "check_answer"]

TAMPERED = "tampered"
UNANCHORED = "unanchored"
WITHHELD = "withheld"
PROBLEM_KINDS = (TAMPERED, WITHHELD, UNANCHORED)
DEFAULT_AUDIT_SAMPLE = 8     # index entries not sent in full audited per answer (all if fewer)
NOT_ANCHORED = NONE          # AnchorRef.batch_seq of a leaf that is not anchored yet

_SEGMENT_LEAF = b"\x02"
_RECEIPT_LEAF = b"\x01"


@dataclasses.dataclass(frozen=True)
class Problem:
    """One piece of evidence that is not proven: ``kind`` TAMPERED (it contradicts its anchor on
    the ledger), WITHHELD (the device's own signed statements contradict each other: its coverage
    and the segments or audit answers) or UNANCHORED (not proven yet, not evidence against)."""
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
    dropped: int = 0           # records outside ``window`` (when given), left out of both

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
    A ``batch_seq`` at or beyond the node's ``next_batch_seq`` on the ledger (read once per node)
    is missing without a read: a device cannot make the governance read the ledger once per
    invented batch. Safe to share between threads: at worst two threads read the same anchor
    once each.

    ``until_ns``: the interrogation's cutoff (``anchors_until_ns``, docs/interrogation.md, "When
    an anchor counts"): an anchor the ledger took after it (``Anchor.ledger_t_ns``) is missing for
    this judgement, and remembered in ``late`` ({(node_id, batch_seq): ledger_t_ns}) so that the
    report says why. With the ledger settled past the cutoff (``wait_settled``), every judge of the
    same archive sees the same anchors, whenever it judges."""

    def __init__(self, ledger, until_ns=None):
        self.ledger = ledger
        self.hash_name = getattr(ledger, "hash_name", None)
        self.until_ns = until_ns
        self.late = {}
        self._anchors = {}
        self._next = {}
        self.reads = 0

    def _next_batch_seq(self, node_id):
        n = self._next.get(node_id)
        if n is None:
            get = getattr(self.ledger, "next_batch_seq", None)
            n = self._next[node_id] = get(node_id) if get is not None else NONE
        return n

    def known(self, node_id):
        """The anchors of ``node_id`` read so far (those on the ledger), by batch_seq."""
        return [a for (n, b), a in sorted(self._anchors.items()) if n == node_id and a is not None]

    def get(self, node_id, batch_seq):
        key = (node_id, batch_seq)
        try:
            return self._anchors[key]
        except KeyError:
            pass
        if batch_seq >= self._next_batch_seq(node_id):
            return None
        self.reads += 1
        try:
            a = self.ledger.get_anchor(node_id, batch_seq)
        except NotFound:
            a = None
        if a is not None and self.until_ns is not None:
            when = getattr(a, "ledger_t_ns", None)
            if when is not None and when > self.until_ns:
                self.late[key] = when
                a = None
        self._anchors[key] = a
        return a


class NotSettled(ValueError):
    """The ledger is not yet settled past an interrogation's cutoff (an anchor it took before the
    cutoff may still appear): the judgement would not be final. The message says how far."""


def wait_settled(ledger, until_ns, timeout_s=60.0, poll_s=0.05):
    """Return once every anchor the ledger took at or before ``until_ns`` is readable and stays
    so: ``ledger.settled_ns()`` (the local backend: its clock under the write lock; ethereum:
    ``confirmations`` deep and a whole second past, block times being whole seconds) at or past
    ``until_ns``; a ledger without ``settled_ns`` is taken as settled at its reader's clock.
    ``NotSettled`` after ``timeout_s``."""
    import time

    settled = getattr(ledger, "settled_ns", None) or time.time_ns
    deadline = time.monotonic() + timeout_s
    while True:
        now = settled()
        if now >= until_ns:
            return now
        if time.monotonic() >= deadline:
            raise NotSettled(f"the ledger is settled up to {now}, not yet past the "
                             f"interrogation's cutoff {until_ns} ({(until_ns - now) / 1e9:.1f} s "
                             f"to go after waiting {timeout_s:g} s): judge again later")
        time.sleep(min(poll_s, max(0.001, (until_ns - now) / 1e9)))


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
        late = anchors.late.get((node_id, ref.batch_seq))
        if late is not None:
            return Problem(node_id, UNANCHORED, item,
                           f"anchor (node {node_id}, batch {ref.batch_seq}) landed on the ledger "
                           f"at {late}, after this interrogation's cutoff {anchors.until_ns} "
                           "(anchors_until_ns): it does not count for this dispute")
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


def _t_ns(records, off):
    return int.from_bytes(records[off:off + 8], "big")


def in_window(records, lo, hi):
    """``(kept, dropped)``: the 48-byte records with ``lo <= t_ns <= hi`` (bytes) and how many
    were not. A segment wholly inside or outside is decided from its t range (C)."""
    if not records:
        return records, 0
    first, last = fastpath.t_range(records)
    if lo <= first and last <= hi:
        return records, 0
    n = len(records) // RECORD_SIZE
    if last < lo or first > hi:
        return b"", n
    kept = [records[o:o + RECORD_SIZE] for o in range(0, len(records), RECORD_SIZE)
            if lo <= _t_ns(records, o) <= hi]
    return b"".join(kept), n - len(kept)


def verify_segments(node_id, hash_name, segments, ledger, anchors=None, window=None):
    """Check every proof segment of ``node_id`` (objects with ``seg_seq``, ``S``, ``anchor``,
    ``records``) against ``S`` and its anchor on ``ledger`` (a backend or an ``AnchorCache``).
    ``anchors``: an ``AnchorCache`` shared across nodes and calls (default: one for this call).
    ``window``: ``(lo, hi)``: the records kept are those with ``lo <= t_ns <= hi`` (the others,
    outside the window and its margin, are dropped and counted in ``dropped``); the checks are
    over whole segments all the same.

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
        if window is not None and (problem is None or problem.kind == UNANCHORED):
            records, dropped = in_window(records, *window)
            out.dropped += dropped
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


# -- a whole proof segments answer: segments, signed coverage, audit -------------------------------

@dataclasses.dataclass
class AnswerCheck:
    """What ``check_answer`` found for one device's proof segments answer.

    ``records``: the records of the segments sent in full whose S and anchor check out, in the
    requested window (``window``: ``(lo, hi)``, the dispute window widened by the margin);
    ``unanchored``: those whose S checks out but are not anchored (yet), same range (never
    evidence against another device); ``coverage``: the device's signed ``Coverage``;
    ``problems``: every ``Problem`` (``by_kind``: {TAMPERED, WITHHELD, UNANCHORED: [...]});
    ``segments``/``proven``: segments sent in full / fully proven; ``dropped_records``: records
    outside the window left out; ``audited``: the seg_seqs the audit asked; ``unaudited``:
    {seg_seq: why it could not be audited} (it left the ring since, or no audit callable, or the
    audit failed); ``audit_error``: the exception the audit raised, if it did (a ``ClientError``
    or ``EvidenceError`` from the client: for the caller to classify)."""
    node_id: int
    window: tuple
    coverage: object = None
    records: bytes = b""
    unanchored: bytes = b""
    problems: list = dataclasses.field(default_factory=list)
    segments: int = 0
    proven: int = 0
    dropped_records: int = 0
    audited: tuple = ()
    unaudited: dict = dataclasses.field(default_factory=dict)
    audit_error: object = None

    @property
    def by_kind(self):
        out = {k: [] for k in PROBLEM_KINDS}
        for p in self.problems:
            out.setdefault(p.kind, []).append(p)
        return out

    @property
    def withheld(self):
        return [p for p in self.problems if p.kind == WITHHELD]

    @property
    def tampered(self):
        return [p for p in self.problems if p.kind == TAMPERED]


def _records_summary(records):
    """``(count, first_t_ns, last_t_ns)`` of packed records, as an index entry states them."""
    n = len(records) // RECORD_SIZE
    first, last = fastpath.t_range(records) if n else (0, 0)
    return n, first, last


def _of_interest(records, lo, hi, tags):
    """How many records are in [lo, hi] and (when ``tags`` is not empty) of one of the flow tags."""
    n = 0
    for o in range(0, len(records) - RECORD_SIZE + 1, RECORD_SIZE):
        if lo <= _t_ns(records, o) <= hi and (not tags or records[o + 40:o + 48] in tags):
            n += 1
    return n


def check_answer(node_id, hash_name, segments, coverage, ledger, anchors=None, *, window,
                 margin=0, flow_tags=(), audit=None, sample=DEFAULT_AUDIT_SAMPLE, rng=None):
    """Check one device's proof segments answer as a whole (see the module doc): an
    ``AnswerCheck``.

    ``segments``: the segments sent in full (``Segment``); ``coverage``: the signed ``Coverage``
    that ended the answer (``SegmentsAnswer.coverage``); ``ledger``/``anchors`` as
    ``verify_segments``; ``window``: ``(from_ns, to_ns)`` of the dispute and ``margin`` (ns): the
    request asked ``[max(0, from_ns - margin), to_ns + margin]`` (the coverage is checked against
    that window, and records outside it are dropped); ``flow_tags``: the flow tags asked (8 bytes
    each; empty: every record of the window was asked); ``audit``: ``seg_seqs -> answer with
    .segments and .coverage`` (``InterrogationClient.get_segments``), None: no audit (every
    candidate is reported unaudited); ``sample``: how many index entries not sent in full to
    audit (all when there are no more); ``rng``: the random choice (default: the system's)."""
    from_ns, to_ns = window
    lo, hi = max(0, from_ns - margin), to_ns + margin
    tags = frozenset(bytes(t) for t in flow_tags or ())
    anchors = _anchors_for(hash_name, ledger, anchors)
    seg_check = verify_segments(node_id, hash_name, segments, ledger, anchors, window=(lo, hi))
    out = AnswerCheck(node_id, (lo, hi), coverage, seg_check.records, seg_check.unproven,
                      list(seg_check.problems), seg_check.segments, seg_check.proven,
                      seg_check.dropped)

    def withheld(item, reason):
        out.problems.append(Problem(node_id, WITHHELD, item, reason))

    if coverage is None:
        withheld("coverage", "the answer has no coverage: it does not say what the device holds "
                             "for the window")
        return out
    cov = coverage
    where = f"[{lo}, {hi}]"
    index = list(cov.index)
    first = cov.index_first_seq
    # -- the index: contiguous, in the ring, starting and ending with overlapping segments --
    if not cov.ring_oldest_seq <= first <= cov.next_seg_seq:
        withheld("index", f"index_first_seq {first} is outside the ring the coverage declares "
                          f"(ring_oldest_seq {cov.ring_oldest_seq}, next_seg_seq "
                          f"{cov.next_seg_seq})")
    expected = first
    for e in index:
        if e.seg_seq != expected:
            withheld(f"index entry {e.seg_seq}",
                     f"the index goes from {expected - 1 if expected > first else 'its start'} "
                     f"to {e.seg_seq}: segments {expected}..{e.seg_seq - 1} are held "
                     f"(ring {cov.ring_oldest_seq}..{cov.next_seg_seq - 1}) but not listed"
                     if e.seg_seq > expected else
                     f"listed at the place of seg_seq {expected} (the index is contiguous from "
                     f"index_first_seq {first})")
        expected = e.seg_seq + 1
        if not cov.ring_oldest_seq <= e.seg_seq < cov.next_seg_seq:
            withheld(f"index entry {e.seg_seq}",
                     f"outside the ring the coverage declares ({cov.ring_oldest_seq}.."
                     f"{cov.next_seg_seq - 1})")
    for e, end in ((index[0], "first"), (index[-1], "last")) if index else ():
        if not e.overlaps(lo, hi):
            withheld(f"index entry {e.seg_seq}",
                     f"the index's {end} entry [{e.first_t_ns}, {e.last_t_ns}] ({e.count} "
                     f"records) does not overlap the window {where}: the index runs from the "
                     "first to the last segment that does")
    # -- the segments sent in full against the index --
    entries = {e.seg_seq: e for e in index}
    sent = {}
    for seg in segments:
        sent.setdefault(seg.seg_seq, seg)
    for seq, seg in sent.items():
        e = entries.get(seq)
        item = f"segment {seq}"
        if e is None:
            withheld(item, "sent in full but not in the coverage's index")
            continue
        if not e.sent:
            withheld(item, "sent in full, but its index entry says it was not")
        if bytes(e.S) != bytes(seg.S):
            withheld(item, f"sent with S {bytes(seg.S).hex()}, the index says "
                           f"{bytes(e.S).hex()}")
        got = _records_summary(bytes(seg.records))
        if got != (e.count, e.first_t_ns, e.last_t_ns):
            withheld(item, f"its records are {got[0]} in [{got[1]}, {got[2]}], the index says "
                           f"{e.count} in [{e.first_t_ns}, {e.last_t_ns}]")
    for e in index:
        item = f"index entry {e.seg_seq}"
        if e.sent and e.seg_seq not in sent:
            withheld(item, "flagged sent in full, but not in the answer")
        if e.count == 0 and bytes(e.S) != fastpath.segment_value(hash_name, node_id, e.seg_seq,
                                                                 b""):
            withheld(item, "says no record, but its S is not that of an empty segment")
        # -- every entry proven in its anchor --
        if not e.anchor.anchored:
            if e.seg_seq < cov.anchored_segments:
                withheld(item, f"comes not anchored, though the coverage says segments "
                               f"0..{cov.anchored_segments - 1} are in anchored batches")
            continue
        if e.seg_seq in sent:
            continue                       # its S was proven with the segment (same S)
        problem = _check_anchor(node_id, hash_name, _SEGMENT_LEAF + bytes(e.S), e.anchor, anchors,
                                item)
        if problem is not None and problem.kind == TAMPERED:
            out.problems.append(problem)
    # -- the audit --
    targets = {}
    before, after = first - 1, first + len(index)
    if first >= 1 and before >= cov.ring_oldest_seq:
        targets[before] = "boundary"
    if after < cov.next_seg_seq:
        targets[after] = "boundary"
    # without flow tags every entry that overlaps the window is sent in full: one that was not
    # (it may have left the ring during the answer) is always audited
    for e in index:
        if not tags and not e.sent and e.overlaps(lo, hi):
            targets[e.seg_seq] = "entry"
    candidates = [e.seg_seq for e in index
                  if not e.sent and e.count > 0 and e.seg_seq not in targets]
    if len(candidates) > sample:
        candidates = sorted((rng or random.SystemRandom()).sample(candidates, sample))
    for seq in candidates:
        targets.setdefault(seq, "entry")
    if not targets:
        return out
    if audit is None:
        out.unaudited = {seq: "no audit (GetSegments) was asked" for seq in targets}
        return out
    out.audited = tuple(sorted(targets))
    try:
        answer = audit(list(out.audited))
    except Exception as exc:  # noqa: BLE001 (kept for the caller, which classifies it)
        out.audit_error = exc
        out.unaudited = {seq: f"the audit failed: {type(exc).__name__}: {exc}" for seq in targets}
        return out
    acov = answer.coverage
    got = {}
    for seg in answer.segments:
        got.setdefault(seg.seg_seq, seg)
    audit_check = verify_segments(node_id, hash_name, list(got.values()), ledger, anchors)
    for p in audit_check.problems:
        if p.kind == TAMPERED:
            out.problems.append(dataclasses.replace(p, item=f"audit of {p.item}"))
    if acov is not None and (acov.ring_oldest_seq < cov.ring_oldest_seq or
                             acov.next_seg_seq < cov.next_seg_seq or
                             acov.anchored_segments < cov.anchored_segments):
        withheld("audit coverage",
                 f"the ring went back: ring_oldest_seq {cov.ring_oldest_seq} -> "
                 f"{acov.ring_oldest_seq}, next_seg_seq {cov.next_seg_seq} -> "
                 f"{acov.next_seg_seq}, anchored_segments {cov.anchored_segments} -> "
                 f"{acov.anchored_segments}")
    for seq, role in sorted(targets.items()):
        item = (f"boundary segment {seq}" if role == "boundary" else f"index entry {seq}")
        seg = got.get(seq)
        if seg is None:
            oldest = acov.ring_oldest_seq if acov is not None else None
            if oldest is not None and seq < oldest:
                out.unaudited[seq] = (f"left the ring since the answer (ring_oldest_seq now "
                                      f"{oldest})")
            else:
                withheld(item, f"held (ring {cov.ring_oldest_seq}..{cov.next_seg_seq - 1} when "
                               f"the index was signed"
                               + (f", {acov.ring_oldest_seq}..{acov.next_seg_seq - 1} when "
                                  "audited" if acov is not None else "")
                               + "), but not sent when asked by GetSegments")
            continue
        records = bytes(seg.records)
        if seq < cov.anchored_segments and not seg.anchor.anchored:
            withheld(item, f"audited not anchored, though the coverage says segments "
                           f"0..{cov.anchored_segments - 1} are in anchored batches")
        if role == "boundary":
            n = _of_interest(records, lo, hi, ())
            if n:
                withheld(item, f"{n} of its records are in the window {where}: the index "
                               f"({first}..{first + len(index) - 1}) leaves it out")
            continue
        e = entries[seq]
        if bytes(seg.S) != bytes(e.S):
            withheld(item, f"audited S {bytes(seg.S).hex()}, the index says {bytes(e.S).hex()}")
        summary = _records_summary(records)
        if summary != (e.count, e.first_t_ns, e.last_t_ns):
            withheld(item, f"audited records are {summary[0]} in [{summary[1]}, {summary[2]}], "
                           f"the index says {e.count} in [{e.first_t_ns}, {e.last_t_ns}]")
        n = _of_interest(records, lo, hi, tags)
        if n:
            what = (f"of the flow tags {', '.join(sorted(t.hex() for t in tags))}" if tags
                    else "")
            withheld(item, f"holds {n} records {what + ' ' if what else ''}in the window "
                           f"{where}, but was not sent in full")
    return out
