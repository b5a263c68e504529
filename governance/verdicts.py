"""The Interrogation Protocol's judgement (docs/architecture.md "The Interrogation Protocol";
docs/threat-model.md): from the checked evidence of every interrogated device, the path every
packet of the SLA's flow really took, hop by hop, and one verdict per device.

Input: the SLA (agreed route, src/dst, loss budget), the window ``[from_ns, to_ns]``, one
``NodeEvidence`` per interrogated device (governance/verify.py checked its segments, receipts and
signed coverage), the registered topology (adjacency: never taken from the devices' claims), the
owner of every device and ``f``, how many owners may lie together.

**The rule** (governance/explain.py): a device is named at fault only if it is faulty in every
explanation of the evidence with at most ``f`` lying owners, or if its own signed evidence
convicts it. Its own evidence convicts it of:

- ``TAMPERED``: a segment or receipt that does not match its anchored commitment;
- ``MISSING``: it answered, but refused, stopped mid-answer or signed wrongly; its signed answer
  contradicts itself (an index with a gap, a segment header its records deny: withheld); its
  verified receipts count more packets than its records where it declares no capture gap;
- ``FABRICATED``: a record no truthful device writes (naming itself, a device that is not its
  registered neighbour, or neither a previous nor a next hop);
- ``DEVIATED``: a route device's own record of the flow leaving it for another next hop than its
  agreed successor (``route[i+1]``; outside, ``0``, after the last);
- ``DROPPED``: a route device's own records with ``next_id NONE`` (an ingress-only record that no
  egress-only record of the same passage completes), outside its declared capture gaps, beyond
  ``sla.loss_budget_ppm`` of the packets its records show it received (plus, as received, every
  packet it may have missed in a gap).

Named by the explanations: a device that lies in every explanation (``FABRICATED`` when records of
its own are what no truthful world allows, ``MISSING`` when it is a record it does not have) or a
route device that every explanation shows deviating (a truthful neighbour received the flow from
it: ``DEVIATED``). A device in some explanations and not in all is ``AMBIGUOUS``, never at fault;
the report lists the minimal explanations. When no explanation has at most ``f`` owners, only the
devices' own evidence names anyone, and the report gives the smallest owner sets that would
explain it.

Not judged: ``UNREACHABLE`` (no answer after the retries: reported, retried later, its claims are
free), ``NOT_INTERROGATED`` (no evidence was asked of it), ``RING_SHORT`` (its signed coverage does
not reach back to the window: it is judged only where it holds records; the report says whether
that falls short of the governance's threshold time).

Packets: a cluster (the records of one packet digest within one hop delay of each other) is judged
when its first record is in the window. Records of unanchored segments never accuse another
device: they are left out of the explanations (the device is taken as possibly missing those
packets) and count only against the device itself.

The descriptive part (observed paths, per-hop counts and delays) follows every PD: a claim
``X: next_id = Y`` confirmed by Y's ``prev_id = X`` within ``[-skew, max_hop_delay + skew]``,
greedily in time order; honest loose ends tied (a join missed, an egress unseen that the next
device confirms); a packet its upstream and downstream both put through a device with no record
of it shows that device as ``(no record)``. These counts describe the claims; the verdicts come
from the rule above.

Speed: records are grouped by PD in one pass (``struct.iter_unpack``, the cyclic garbage collector
paused); a PD whose records form one clean chain of distinct devices takes a short path that counts
the chain by its shape (its pattern follows from the shape); every other PD goes through the full
path-following and its clusters' patterns are built record by record. The explanations are then
computed per pattern (a handful), never per packet.
"""
import bisect
import contextlib
import dataclasses
import gc
import math
import struct
from array import array

import fastpath
from fastpath.hashes import constructor
from beat_common.gap_record import GAP_KERNEL_DROPS
from beat_common.spec import is_node_id
from fastpath.output import NONE, RECORD_SIZE

from . import explain, verify

__all__ = ["CONSISTENT", "DEVIATED", "FABRICATED", "MISSING", "TAMPERED", "DROPPED", "AMBIGUOUS",
           "UNREACHABLE", "NOT_INTERROGATED", "RING_SHORT", "PRIORITY", "FAULTS", "VERDICTS",
           "KINDS", "ANSWERED", "STATUSES", "Coverage", "NodeEvidence", "DeviceJudgement", "Hop",
           "ObservedPath", "Judgement", "flow_tag", "judge", "adjacency", "check_route"]

CONSISTENT, DEVIATED, FABRICATED = "CONSISTENT", "DEVIATED", "FABRICATED"
MISSING, TAMPERED, DROPPED = "MISSING", "TAMPERED", "DROPPED"
AMBIGUOUS = "AMBIGUOUS"                # in some explanations, not in all: not at fault
UNREACHABLE = "UNREACHABLE"            # no answer: not judged (retried later)
NOT_INTERROGATED = "NOT_INTERROGATED"  # no evidence was asked of it: not judged
RING_SHORT = "RING_SHORT"              # its signed coverage does not reach the window
PRIORITY = (TAMPERED, FABRICATED, MISSING, DEVIATED, DROPPED)
FAULTS = frozenset(PRIORITY)
VERDICTS = PRIORITY + (CONSISTENT, AMBIGUOUS, RING_SHORT, UNREACHABLE, NOT_INTERROGATED)

# How a device's answer ended (NodeEvidence.status).
ANSWERED = "answered"
STATUS_UNREACHABLE = "unreachable"     # transport failed after the retries: not judged
STATUS_REFUSED = "refused"             # answered the handshake, then an error status: MISSING
# the next two name the device MISSING when a judge is given them; an interrogation's judgement
# (governance/interrogate.py replay) gives them as unreachable: an archive cannot show who made
# an answer so (docs/threat-model.md, "What an archive proves")
STATUS_INCOMPLETE = "incomplete"       # the answer stopped before its last chunk
STATUS_BAD_EVIDENCE = "bad_evidence"   # bad signature, malformed, another answer
STATUSES = (ANSWERED, STATUS_UNREACHABLE, STATUS_REFUSED, STATUS_INCOMPLETE, STATUS_BAD_EVIDENCE)
_AT_FAULT_STATUSES = (STATUS_REFUSED, STATUS_INCOMPLETE, STATUS_BAD_EVIDENCE)

# Kinds of claims counted per device (DeviceJudgement.counts), over judged packets. The first
# ones describe what the records say (the observed paths); the last ones are the rule's.
RECEIVED = "received"              # passages through the device (its records)
FORWARDED = "forwarded"            # ... that left it (next_id not NONE, or seen leaving)
DROPS = "dropped"                  # ... with next_id NONE that no neighbour saw leave
DEVIATIONS = "deviated"            # ... that left a route device for another than its successor
FAB_PREV = "fabricated_prev"       # prev_id contradicted by the neighbour's confirmed record
FAB_NEXT = "fabricated_next"       # next_id contradicted by the neighbour's confirmed record
MISSING_PACKETS = "missing"        # upstream: sent here; downstream: came from here; no record here
RECEIPT_GAP = "receipts_over_records"  # packets its verified receipts count beyond its records
UNCONFIRMED = "unconfirmed"        # its claims naming a neighbour with no record of it (1 witness)
ABSENT = "absent"                  # neighbours' claims naming it, no record here (one witness)
DISPUTED = "disputed"              # its claims contradicted by an unconfirmed record
UNVERIFIABLE = "unverifiable"      # its claims naming a device that gave no evidence
EGRESS_UNSEEN = "egress_unseen"    # next_id NONE, yet the next device got it and passed it on
JOIN_MISSED = "join_missed"        # one passage as ingress-only and egress-only records
TAMPERED_ITEMS = "tampered"        # segments/receipts not matching their anchored commitment
UNANCHORED_ITEMS = "unanchored"    # segments/receipts not anchored (yet)
UNPROVEN_RECORDS = "unproven_records"  # records (any flow) from unanchored segments
WITHHELD_ITEMS = "withheld"        # contradictions in its own signed answer (completeness)
OWN_DEVIATIONS = "own_deviations"  # its own records: left a route device for another next hop
OWN_DROPS = "own_drops"            # its own ingress-only records outside its capture gaps
OWN_RECEIVED = "own_received"      # passages its records show (the drop budget's base)
IMPOSSIBLE = "impossible_records"  # records naming itself, a non-neighbour, or no hop at all
NEEDS_LIE = "needs_lie"            # judged packets whose evidence has no world with it truthful
DEVIATED_BY_NEIGHBOUR = "deviated_by_neighbour"  # truthful neighbours got the flow from it
BLIND = "blind"                    # packets in its honoured capture gaps it cannot show
KINDS = (RECEIVED, FORWARDED, DROPS, DEVIATIONS, FAB_PREV, FAB_NEXT, MISSING_PACKETS, RECEIPT_GAP,
         UNCONFIRMED, ABSENT, DISPUTED, UNVERIFIABLE, EGRESS_UNSEEN, JOIN_MISSED, TAMPERED_ITEMS,
         UNANCHORED_ITEMS, UNPROVEN_RECORDS, WITHHELD_ITEMS, OWN_DEVIATIONS, OWN_DROPS,
         OWN_RECEIVED, IMPOSSIBLE, NEEDS_LIE, DEVIATED_BY_NEIGHBOUR, BLIND)

_REC = struct.Struct(">QQQ16s8s")
_OUTSIDE = 0

# link kinds between two records of one packet
_HOP, _INTERNAL, _LATE, _GAP = 1, 2, 3, 4
# status of an unconfirmed claim
_UNVERIFIABLE, _ABSENT, _EXTRA, _CONTRADICTED = 1, 2, 3, 4


def flow_tag(hash_name, src, dst):
    """SPEC "Flow tag": ``FT = first 8 bytes of H("BEAT-FT-v1" || src(16) || dst(16))``."""
    src, dst = bytes(src), bytes(dst)
    if len(src) != 16 or len(dst) != 16:
        raise ValueError(f"src and dst must be 16 bytes, got {len(src)} and {len(dst)}")
    return constructor(hash_name)(b"BEAT-FT-v1" + src + dst).digest()[:8]


@dataclasses.dataclass(frozen=True)
class Coverage:
    """What a device's signed coverage says it holds (docs/interrogation.md, the coverage chunk):
    ``oldest_t_ns`` the ring's oldest record (0 with ``empty``: it holds none);
    ``newest_t_ns`` the newest record of a closed segment (later ones are not answered yet);
    ``anchored_until_t_ns`` every record up to it is in an anchored segment; ``ring_short`` its
    ring covers less than ``threshold_ns``; ``gaps``: ``(from_ns, to_ns, frames, reason)`` where
    its capture lost frames or stopped; ``wrapped``: its ring has dropped segments (records
    before ``oldest_t_ns`` existed and are gone)."""
    oldest_t_ns: int = 0
    newest_t_ns: int = NONE
    anchored_until_t_ns: int = NONE
    ring_short: bool = False
    threshold_ns: int = 0
    gaps: tuple = ()
    empty: bool = False
    wrapped: bool = False

    def missing_intervals(self):
        """The times where this device may have missed packets or lacks records: its capture
        gaps (a store's first start is a gap from 0), up to its oldest record's time once its
        ring has wrapped, after its newest closed record (inclusive ``(lo, hi)`` pairs)."""
        out = [(min(lo, hi), max(lo, hi)) for lo, hi, *_ in self.gaps]
        if self.empty:
            return out + ([(0, NONE)] if self.wrapped else [])
        if self.wrapped:
            # up to and with its oldest held record's time: the segments the ring dropped may
            # end with records of that same time (a capture file's records stamped 0 included)
            out.append((0, self.oldest_t_ns))
        if self.newest_t_ns < NONE:
            out.append((self.newest_t_ns + 1, NONE))
        return out


@dataclasses.dataclass
class NodeEvidence:
    """What one interrogated device gave, after governance/verify.py.

    ``status``: how its answer ended (``STATUSES``; ``error`` says why when not answered).
    ``records``: 48-byte records (SPEC encoding) of its segments that are proven in their anchors
    (any flow: the judge keeps the SLA's FT); ``unanchored_records``: those of segments whose S
    checks out but are not anchored (yet): signed, not proven. ``tampered``: one
    ``verify.Problem`` (or text) per segment or receipt that does not match its commitment (their
    records are in neither); ``withheld``: contradictions in its own signed answer (an index with
    a gap, a header its records deny). ``coverage``: its signed ``Coverage`` (None: assume it
    holds everything). ``receipts``: the verified receipts (proven or unanchored), ``counters`` as
    the device reported them."""
    node_id: int
    status: str = ANSWERED
    error: str = ""
    records: bytes = b""
    unanchored_records: bytes = b""
    tampered: tuple = ()
    withheld: tuple = ()
    unanchored: int = 0
    coverage: Coverage = None
    counters: tuple = ()
    receipts: tuple = ()
    # its served gap records as the governance checked them (governance/gaps.py DeclaredGap):
    # the honoured ones are its coverage's gaps, the pending ones count like unanchored records
    declared_gaps: tuple = ()

    def __post_init__(self):
        if not is_node_id(self.node_id):
            raise ValueError(f"node_id must be in 1..2^64-2, got {self.node_id}")
        if self.status not in STATUSES:
            raise ValueError(f"node {self.node_id}: status {self.status!r} is not one of "
                             f"{', '.join(STATUSES)}")
        for name in ("records", "unanchored_records"):
            if len(getattr(self, name)) % RECORD_SIZE:
                raise ValueError(f"node {self.node_id}: {name} are {len(getattr(self, name))} "
                                 f"bytes, not whole {RECORD_SIZE}-byte records")

    @property
    def answered(self):
        return self.status == ANSWERED

    @property
    def unproven_records(self):
        return len(self.unanchored_records) // RECORD_SIZE

    @classmethod
    def from_checks(cls, segments, receipts=None, counters=(), coverage=None, withheld=()):
        """From ``verify.verify_segments`` (and ``verify_receipts``) results of one node."""
        problems = list(segments.problems) + (list(receipts.problems) if receipts else [])
        return cls(segments.node_id, ANSWERED, "", segments.records, segments.unproven,
                   tuple(p for p in problems if p.kind == verify.TAMPERED),
                   tuple(withheld) + tuple(p for p in problems
                                           if p.kind == getattr(verify, "WITHHELD", None)),
                   sum(p.kind == verify.UNANCHORED for p in problems), coverage,
                   tuple(counters),
                   tuple(receipts.receipts + receipts.unproven) if receipts else ())

    @classmethod
    def no_answer(cls, node_id, error, status=STATUS_UNREACHABLE):
        """A device without evidence: ``status`` unreachable (not judged) by default, or refused,
        incomplete, bad_evidence (MISSING); ``error`` says why."""
        if status == ANSWERED:
            raise ValueError(f"node {node_id}: no_answer with status {ANSWERED!r}")
        return cls(node_id, status=status, error=str(error) or "no answer")


@dataclasses.dataclass
class DeviceJudgement:
    node_id: int
    verdict: str
    applies: tuple          # every verdict whose rule matched, in PRIORITY order
    reasons: list           # one line per matched rule, with its numbers
    on_route: bool
    answered: bool
    error: str
    counts: dict            # KINDS -> number
    examples: dict          # kind -> [(PD, [(t_ns, node_id, prev_id, next_id), ...]), ...]
    receipts: dict          # "ingress"/"egress" -> {"epochs", "packets", "bytes"} in the window
    counters: list          # as reported: [(prev_id, next_id, packets, bytes, first, last)]
    owner: str = ""         # its owner on the ledger (devices of one owner are one adversary)
    status: str = ANSWERED  # how its answer ended (NodeEvidence.status)
    basis: str = ""         # named: "own evidence" or "every explanation (f = N)"
    gaps: list = dataclasses.field(default_factory=list)   # its declared gaps in the window

    @property
    def at_fault(self):
        return self.verdict in FAULTS


@dataclasses.dataclass
class Hop:
    """Claims between two adjacent devices over judged packets. ``sent``: records of ``prev_id``
    naming ``next_id``; ``received``: records of ``next_id`` naming ``prev_id``; ``confirmed``:
    both agree; ``lost``: sent and not received by a device that answered; ``unverified``: the
    other side gave no evidence. Delays from confirmed pairs (receiver t_ns - sender t_ns)."""
    prev_id: int
    next_id: int
    sent: int = 0
    received: int = 0
    confirmed: int = 0
    lost: int = 0
    unverified: int = 0
    delay_p50_ns: int = None
    delay_p99_ns: int = None
    delay_max_ns: int = None


@dataclasses.dataclass
class ObservedPath:
    nodes: tuple            # node ids in order
    unproven: tuple         # the ones without a record (missing: their neighbours vouch)
    entry_prev_id: int      # the first record's prev_id (0: from outside)
    exit_next_id: int       # the last record's next_id (0: outside, NONE: dropped)
    packets: int


@dataclasses.dataclass
class Judgement:
    sla: object
    from_ns: int
    to_ns: int
    hash_name: str
    ft: bytes
    packets: int                        # judged packets (first observation in the window)
    devices: dict                       # node_id -> DeviceJudgement, route first
    hops: list                          # Hop, by (prev_id, next_id)
    paths: list                         # ObservedPath, most packets first
    not_interrogated: dict              # node_id named by claims -> number of claims
    notes: list
    params: dict
    f: int = 1                          # lying owners the rule allows for
    explained: bool = True              # some explanation has at most f lying owners
    explanations: list = dataclasses.field(default_factory=list)   # minimal, at most f owners
    owners_needed: int = None           # not explained: the fewest lying owners that explain it
    candidates: list = dataclasses.field(default_factory=list)     # ... their minimal explanations
    owners: dict = dataclasses.field(default_factory=dict)         # node_id -> owner

    @property
    def faulty(self):
        """The devices named at fault (never an AMBIGUOUS, UNREACHABLE or RING_SHORT one)."""
        return [n for n, d in self.devices.items() if d.verdict in FAULTS]


# -------------------------------------------------------------------------------------------------
# grouping records by PD

def _group(evidence, ft, receipt_epochs, epoch_ns):
    """{PD: [(t_ns, node_id, prev_id, next_id), ...]} over every answered device's records of
    ``ft`` (proven and unanchored), the unanchored ones by PD ({PD: {record tuple: copies}}), and the
    edge records per receipt epoch of the nodes in ``receipt_epochs``
    ({node: {(role, epoch_ns): records}})."""
    obs = {}
    get = obs.get
    unanchored = {}
    edge_counts = {}
    for node in sorted(evidence):           # the same order whatever order they came in
        ev = evidence[node]
        if not ev.answered:
            continue
        epochs = receipt_epochs.get(node)
        counts = None if epochs is None else edge_counts.setdefault(node, {})
        for blob, proven in ((ev.records, True), (ev.unanchored_records, False)):
            if not blob:
                continue
            it = _REC.iter_unpack(blob)
            if epochs is None and proven:
                for t, p, q, pd, f in it:
                    if f == ft:
                        r = (t, node, p, q)
                        lst = get(pd)
                        if lst is None:
                            obs[pd] = [r]
                        else:
                            lst.append(r)
                continue
            for t, p, q, pd, f in it:
                if f == ft:
                    r = (t, node, p, q)
                    lst = get(pd)
                    if lst is None:
                        obs[pd] = [r]
                    else:
                        lst.append(r)
                    if not proven:
                        copies = unanchored.setdefault(pd, {})
                        copies[r] = copies.get(r, 0) + 1
                    if epochs is not None:
                        e = t - t % epoch_ns
                        if p == _OUTSIDE and (1, e) in epochs:
                            counts[(1, e)] = counts.get((1, e), 0) + 1
                        if q == _OUTSIDE and (2, e) in epochs:
                            counts[(2, e)] = counts.get((2, e), 0) + 1
    return obs, unanchored, edge_counts


# -------------------------------------------------------------------------------------------------
# following packets

_MAY_HAVE_RECEIVED = "may_have_received"     # in a gap and no record: counted as received


def _merge_intervals(ivs):
    """Sorted, merged inclusive intervals as ``(starts, ends)`` lists (empty: ``()``)."""
    if not ivs:
        return ()
    ivs = sorted(ivs)
    starts, ends = [ivs[0][0]], [ivs[0][1]]
    for lo, hi in ivs[1:]:
        if lo <= ends[-1] + 1:
            ends[-1] = max(ends[-1], hi)
        else:
            starts.append(lo)
            ends.append(hi)
    return starts, ends


def _overlaps(merged, lo, hi):
    """Whether ``[lo, hi]`` meets one of the merged intervals."""
    starts, ends = merged
    i = bisect.bisect_right(starts, hi) - 1
    return i >= 0 and ends[i] >= lo


class _Follow:
    """Per-PD work. ``paths``: {(nodes, unproven positions, entry prev_id, exit next_id):
    [packets, examples, delays per hop position]}; ``counts``/``examples``: the claims that only
    the full rules find, per node."""

    def __init__(self, answered, from_ns, to_ns, lo, hi, n_examples, *, unanchored=None,
                 allow=None, gaps=None, succ=None, neighbours=None, bounded=None,
                 owners=None):
        self.answered = answered
        self.from_ns, self.to_ns = from_ns, to_ns
        self.lo, self.hi = lo, hi
        self.n_examples = n_examples
        self.paths = {}
        self.counts = {}
        self.examples = {}
        # the rule's inputs: unanchored records by PD, the intervals where a device may have
        # missed packets ({node: [(lo, hi)]}, widened by hi), route successors, adjacency
        self.unanchored = unanchored or {}
        raw = {n: ivs for n, ivs in (allow or {}).items() if ivs}
        self.allow = {n: _merge_intervals(ivs) for n, ivs in raw.items()}
        self.allow_union = _merge_intervals([iv for ivs in raw.values() for iv in ivs])
        self.gaps = {n: _merge_intervals(ivs) for n, ivs in (gaps or {}).items() if ivs}
        # the frames bound (finding G5): {node: (its kernel-drops gaps, its other missing
        # intervals)}, merged; ``bound_counts`` {node: [witnessed, ingress_only]}: the passages
        # of clusters that meet its drops gaps and no other missing interval of it, which it
        # cannot show (no record, yet devices of two owners name it before and after), and its
        # ingress-only records there (each a drop or a missed egress frame)
        self.bounded = {n: (_merge_intervals(d), _merge_intervals(o))
                        for n, (d, o) in (bounded or {}).items() if d}
        self.bound_counts = {}
        self.owners = owners or {}
        self.succ = succ or {}
        self.neighbours = neighbours
        self.clean = {}                 # (nodes, entry prev_id, exit next_id) -> [packets, exs]
        self.patterns = {}              # explain.pattern -> [packets, examples]
        self.oversized = 0              # clusters too large for the explanations
        self.own = {}                   # node -> {kind: count}: its own records' facts
        self.own_examples = {}

    def run(self, obs):
        """Every PD: the clean-chain short path inline (counted by its shape in ``clean``, the
        paths made of it in ``finish``), the rest through ``general``."""
        answered, clean = self.answered, self.clean
        unanchored, allow_union = self.unanchored, self.allow_union
        from_ns, to_ns, lo, hi = self.from_ns, self.to_ns, self.lo, self.hi
        n_ex = self.n_examples
        general = self.general
        for pd, recs in obs.items():
            if len(recs) > 1:
                recs.sort()
            t0, n, p0, q = recs[0]
            if t0 > to_ns or recs[-1][0] < from_ns:
                continue                    # no record of it in the window
            if p0 in answered:
                general(pd, recs)
                continue
            nodes = [n]
            ds = []
            t = t0
            ok = True
            for t1, n1, p1, q1 in recs[1:]:
                d = t1 - t
                # a device twice in one chain: its pattern may hold more links than the shape's
                if q != n1 or p1 != n or d < lo or d > hi or n1 in nodes:
                    ok = False
                    break
                nodes.append(n1)
                ds.append(d)
                t, n, q = t1, n1, q1
            if not ok or q in answered or pd in unanchored or t0 < from_ns or t > to_ns or (
                    allow_union and _overlaps(allow_union, t0 - hi, t + hi)):
                general(pd, recs)
                continue
            key = (tuple(nodes), p0, q)
            e = clean.get(key)
            if e is None:
                clean[key] = [1, [(pd, recs)], [array("q", (d,)) for d in ds]]
            else:
                e[0] += 1
                if len(e[1]) < n_ex:
                    e[1].append((pd, recs))
                for k, d in enumerate(ds):
                    e[2][k].append(d)

    def _count(self, node, kind, pd=None, recs=None):
        c = self.counts.setdefault(node, {})
        c[kind] = c.get(kind, 0) + 1
        if pd is not None:
            ex = self.examples.setdefault(node, {}).setdefault(kind, [])
            if len(ex) < self.n_examples:
                ex.append((pd, recs))

    def _status(self, recs, by_node, q, tmin, tmax, field, x):
        """Status of an unconfirmed claim naming ``q``: what q's records between ``tmin`` and
        ``tmax`` say in ``field`` (2 prev_id, 3 next_id) instead of ``x``. (status, witness)."""
        if q not in self.answered:
            return _UNVERIFIABLE, -1
        found = -1
        for j in by_node.get(q, ()):
            r = recs[j]
            if tmin <= r[0] <= tmax:
                v = r[field]
                if v != x and v != NONE:
                    return _CONTRADICTED, j
                found = j
        return (_ABSENT, -1) if found < 0 else (_EXTRA, found)

    def _claim(self, x, named, status, pd, crecs, recs):
        """Count an unconfirmed claim of ``x`` naming ``named`` that no rule made a verdict of."""
        st, w = status
        if st == _UNVERIFIABLE:
            return                          # counted from the path (_tally), as the short path
        if st == _CONTRADICTED:
            self._count(x, DISPUTED, pd, crecs + [recs[w]])
        else:
            self._count(x, UNCONFIRMED, pd, crecs)
            if st == _ABSENT:
                self._count(named, ABSENT, pd, crecs)

    # -- the rule's side: patterns of clusters and each device's own facts --

    def _clusters(self, pd, recs):
        """Split one PD's records (sorted) where consecutive records are more than a hop delay
        apart; each cluster with a record in the window gives its pattern, and its records in
        the window their devices' own facts (so that nobody can move a device's records in or
        out of the judgement by adding records of its own next to them)."""
        hi, from_ns, to_ns = self.hi, self.from_ns, self.to_ns
        start = 0
        n = len(recs)
        for k in range(1, n + 1):
            if k == n or recs[k][0] - recs[k - 1][0] > hi:
                if recs[start][0] <= to_ns and recs[k - 1][0] >= from_ns:
                    self._cluster(pd, recs[start:k])
                start = k

    def _cluster(self, pd, cl):
        hi = self.hi
        t_lo, t_hi = cl[0][0] - hi, cl[-1][0] + hi
        allow = {x for x, ivs in self.allow.items() if _overlaps(ivs, t_lo, t_hi)}
        self._own(pd, cl, {x for x, ivs in self.gaps.items() if _overlaps(ivs, t_lo, t_hi)},
                  t_lo, t_hi)
        if len(cl) > explain.MAX_CLUSTER_RECORDS:
            self.oversized += 1             # left out of the explanations (module doc)
            return
        un = self.unanchored.get(pd)
        if un:
            left = dict(un)                 # the unanchored copies (a proven one may be alike)
            proven = []
            for r in cl:
                if left.get(r):
                    left[r] -= 1
                    allow.add(r[1])
                else:
                    proven.append(r)
        else:
            proven = cl
        key = explain.pattern(proven, self.lo, hi, allow)
        e = self.patterns.get(key)
        if e is None:
            self.patterns[key] = [1, [(pd, cl)]]
        else:
            e[0] += 1
            if len(e[1]) < self.n_examples:
                e[1].append((pd, cl))

    def _own_count(self, node, kind, c, pd=None, recs=None):
        nc = self.own.setdefault(node, {})
        nc[kind] = nc.get(kind, 0) + c
        if pd is not None:
            ex = self.own_examples.setdefault(node, {}).setdefault(kind, [])
            if len(ex) < self.n_examples:
                ex.append((pd, recs))

    def _bound(self, x, t_lo, t_hi):
        """Its counts for the frames bound when the cluster ``[t_lo, t_hi]`` meets only its
        kernel-drops gaps among its missing intervals (None otherwise)."""
        b = self.bounded.get(x)
        if b is None or not _overlaps(b[0], t_lo, t_hi) or (b[1] and _overlaps(b[1], t_lo, t_hi)):
            return None
        return self.bound_counts.setdefault(x, [0, 0])

    def _witnessed(self, x, cl):
        """A device before ``x`` (naming it next) and one after it (naming it previous), of two
        owners: one owner cannot make up a passage both sides of it."""
        owner = self.owners.get
        before = {owner(r[1], r[1]) for r in cl if r[3] == x}
        after = {owner(r[1], r[1]) for r in cl if r[2] == x}
        return bool(before and after) and len(before | after) > 1

    def _own(self, pd, cl, allow, t_lo=0, t_hi=NONE):
        """What each device's own records of one cluster say about itself (module doc): the
        passages, records no truthful device writes, deviations, drops outside its capture gaps
        (``allow``: the devices with a gap near the cluster)."""
        by = {}
        for r in cl:
            by.setdefault(r[1], []).append(r)
        succ, neighbours, hi = self.succ, self.neighbours, self.hi
        from_ns, to_ns = self.from_ns, self.to_ns
        for x, rs in by.items():
            ins = [r[0] for r in rs if r[3] == NONE and r[2] != NONE]
            outs = [r[0] for r in rs if r[2] == NONE and r[3] != NONE]
            joined_ins, joined_outs = set(), set()
            k = 0
            for i, t in enumerate(ins):     # one passage seen as two records (join missed)
                while k < len(outs) and outs[k] < t:
                    k += 1
                if k < len(outs) and outs[k] - t <= hi:
                    joined_ins.add(i)
                    joined_outs.add(k)
                    k += 1
            # the passages whose (first) record is in the window
            passages = sum(from_ns <= r[0] <= to_ns for r in rs) - sum(
                from_ns <= outs[k] <= to_ns for k in joined_outs)
            self._own_count(x, OWN_RECEIVED, passages)
            s = succ.get(x)
            for t, _, p, q in rs:
                if not from_ns <= t <= to_ns:
                    continue
                if not explain._truthful_possible(x, p, q, neighbours):
                    self._own_count(x, IMPOSSIBLE, 1, pd, cl)
                if s is not None and q != NONE and q != s:
                    self._own_count(x, OWN_DEVIATIONS, 1, pd, cl)
            drops = sum(from_ns <= t <= to_ns and i not in joined_ins for i, t in enumerate(ins))
            if x not in allow and drops:
                self._own_count(x, OWN_DROPS, drops, pd, cl)
            elif drops:                     # blind: its egress copy may be what it missed
                self._own_count(x, BLIND, drops, pd, cl)
                bc = self._bound(x, t_lo, t_hi)
                if bc is not None:
                    bc[1] += drops
        named = {r[2] for r in cl} | {r[3] for r in cl}
        for x in allow:
            if x not in by:                 # it may have passed this packet unseen
                self._own_count(x, _MAY_HAVE_RECEIVED, 1)
                if x in named:              # blind to a packet a neighbour says passed it
                    self._own_count(x, BLIND, 1)
                bc = self._bound(x, t_lo, t_hi)
                if bc is not None and self._witnessed(x, cl):
                    bc[0] += 1

    def finish(self):
        """The clean chains' paths, patterns and own facts, by their shape."""
        succ, neighbours = self.succ, self.neighbours
        for (nodes, p0, q), (c, exs, delays) in self.clean.items():
            key = (nodes, (), p0, q)
            e = self.paths.get(key)
            if e is None:
                self.paths[key] = [c, list(exs), delays]
            else:
                e[0] += c
                e[1].extend(exs[:self.n_examples - len(e[1])])
                for k, d in enumerate(delays):
                    e[2][k].extend(d)
            key = explain.chain_pattern(nodes, p0, q)
            e = self.patterns.get(key)
            if e is None:
                self.patterns[key] = [c, list(exs)]
            else:
                e[0] += c
                e[1].extend(exs[:self.n_examples - len(e[1])])
            last = len(nodes) - 1
            ex = exs[0]
            for k, x in enumerate(nodes):
                p = nodes[k - 1] if k else p0
                nxt = nodes[k + 1] if k < last else q
                self._own_count(x, OWN_RECEIVED, c)
                if not explain._truthful_possible(x, p, nxt, neighbours):
                    self._own_count(x, IMPOSSIBLE, c, *ex)
                s = succ.get(x)
                if s is not None and nxt != NONE and nxt != s:
                    self._own_count(x, OWN_DEVIATIONS, c, *ex)
            if q == NONE:
                self._own_count(nodes[-1], OWN_DROPS, c, *ex)

    def general(self, pd, recs):
        """The full rules (module doc, 1.-5.) for one PD's records, sorted by time."""
        self._clusters(pd, recs)
        n = len(recs)
        lo, hi = self.lo, self.hi
        by_node = {}
        dropped = False
        for i, r in enumerate(recs):
            by_node.setdefault(r[1], []).append(i)
            dropped = dropped or r[3] == NONE
        succ, pred, link, via = [-1] * n, [-1] * n, [0] * n, {}

        # 1. X: next_id = Y confirmed by Y: prev_id = X, greedily in time order
        for i, (t, x, p, q) in enumerate(recs):
            for j in by_node.get(q, ()):
                tj, _, pj, _ = recs[j]
                if pred[j] < 0 and pj == x and j != i and lo <= tj - t <= hi:
                    succ[i], pred[j], link[i] = j, i, _HOP
                    break
        # 2a. one passage as ingress-only (next NONE) and egress-only (prev NONE) records
        for i, (t, x, p, q) in enumerate(recs if dropped else ()):
            if q == NONE and succ[i] < 0 and p != NONE:
                for j in by_node[x]:
                    tj, _, pj, qj = recs[j]
                    if pj == NONE and qj != NONE and pred[j] < 0 and 0 <= tj - t <= hi:
                        succ[i], pred[j], link[i] = j, i, _INTERNAL
                        break
        # 2b. next_id NONE, but the next device got it from X and a third device confirms it
        for j, (tj, y, pj, qj) in enumerate(recs if dropped else ()):
            if pred[j] < 0 and link[j] == _HOP:
                for i in by_node.get(pj, ()):
                    t, _, _, q = recs[i]
                    if q == NONE and succ[i] < 0 and lo <= tj - t <= hi:
                        succ[i], pred[j], link[i] = j, i, _LATE
                        break
        # 3. the claims left unconfirmed
        dep, arr = {}, {}
        for i, (t, x, p, q) in enumerate(recs):
            if succ[i] < 0 and q != _OUTSIDE and q != NONE:
                dep[i] = self._status(recs, by_node, q, t + lo, t + hi, 2, x)
            if pred[i] < 0 and p != _OUTSIDE and p != NONE:
                arr[i] = self._status(recs, by_node, p, t - hi, t - lo, 3, x)
        # 4. fabrications: contradicted by a record whose own claim a third device confirms
        fab = {}
        for i, (st, w) in dep.items():
            if st == _CONTRADICTED and pred[w] >= 0 and link[pred[w]] in (_HOP, _LATE):
                fab.setdefault(i, []).append((FAB_NEXT, w))
        for j, (st, w) in arr.items():
            if st == _CONTRADICTED and link[w] == _HOP:
                fab.setdefault(j, []).append((FAB_PREV, w))
        # 5. missing: the upstream and the downstream both name Y, which has no record of it
        gaps = {}
        for i, (st, _) in dep.items():
            if st == _ABSENT and i not in fab:
                gaps.setdefault(recs[i][3], ([], []))[0].append(i)
        for j, (st, _) in arr.items():
            if st == _ABSENT and j not in fab:
                gaps.setdefault(recs[j][2], ([], []))[1].append(j)
        for y, (ups, downs) in gaps.items():
            for i in ups:
                for j in downs:
                    if pred[j] < 0 and j != i and 2 * lo <= recs[j][0] - recs[i][0] <= 2 * hi:
                        succ[i], pred[j], link[i] = j, i, _GAP
                        via[i] = y
                        break

        # packets: the chains of linked records (a cycle, possible only through clock skew, is
        # cut at its earliest record)
        seen = [False] * n
        left = n
        for start in [i for i in range(n) if pred[i] < 0] + (list(range(n)) if left else []):
            if seen[start]:
                continue
            chain = []
            i = start
            while i >= 0 and not seen[i]:
                seen[i] = True
                chain.append(i)
                i = succ[i]
            left -= len(chain)
            self._chain(pd, recs, chain, pred, link, via, dep, arr, fab)
            if not left:
                break

    def _chain(self, pd, recs, chain, pred, link, via, dep, arr, fab):
        first = recs[min(chain)][0]         # recs are sorted by time
        if not self.from_ns <= first <= self.to_ns:
            return
        crecs = [recs[i] for i in chain]
        count = self._count
        for i in chain:
            t, x, p, q = recs[i]
            for kind, w in fab.get(i, ()):
                count(x, kind, pd, [recs[i], recs[w]])
            if i in fab:
                continue
            if i in dep and link[i] != _GAP:
                self._claim(x, q, dep[i], pd, crecs, recs)
            if i in arr and not (pred[i] >= 0 and link[pred[i]] == _GAP):
                self._claim(x, p, arr[i], pd, crecs, recs)
            if link[i] == _LATE:
                count(x, EGRESS_UNSEEN, pd, crecs)
            elif link[i] == _INTERNAL:
                count(x, JOIN_MISSED, pd, crecs)
            elif link[i] == _GAP:
                count(via[i], MISSING_PACKETS, pd, crecs)
        if all(i in fab for i in chain):
            return                          # nothing but fabrications: not a packet
        # the path: nodes along the links, a node without a record where a gap was bridged
        head = recs[chain[0]]
        nodes, unproven, ds = [head[1]], [], []
        t_visit = head[0]
        for m in range(len(chain) - 1):
            i, j = chain[m], chain[m + 1]
            tj, y = recs[j][0], recs[j][1]
            if link[i] == _INTERNAL:
                continue
            if link[i] == _GAP:
                unproven.append(len(nodes))
                nodes.append(via[i])
                ds.extend((None, None))
            else:
                ds.append(tj - t_visit)
            nodes.append(y)
            t_visit = tj
        key = (tuple(nodes), tuple(unproven), head[2], recs[chain[-1]][3])
        e = self.paths.get(key)
        if e is None:
            e = self.paths[key] = [0, [], [array("q") for _ in ds]]
        e[0] += 1
        if len(e[1]) < self.n_examples:
            e[1].append((pd, crecs))
        for k, d in enumerate(ds):
            if d is not None:
                e[2][k].append(d)


# -------------------------------------------------------------------------------------------------
# from paths and claims to devices and hops

def _percentile(sorted_values, p):
    """Nearest-rank percentile of a sorted list."""
    return sorted_values[max(0, math.ceil(p * len(sorted_values)) - 1)]


def _tally(paths, route_next, answered, n_examples):
    """Per-node counts and examples, hops and observed paths from the path shapes."""
    counts, examples, hops, observed = {}, {}, {}, []

    def add(node, kind, c, exs):
        nc = counts.setdefault(node, {})
        nc[kind] = nc.get(kind, 0) + c
        if exs:
            ex = examples.setdefault(node, {}).setdefault(kind, [])
            ex.extend(exs[:n_examples - len(ex)])

    def hop(x, y):
        h = hops.get((x, y))
        if h is None:
            h = hops[(x, y)] = [Hop(x, y), []]
        return h

    for (nodes, unproven, p0, q), (c, exs, delays) in paths.items():
        observed.append(ObservedPath(nodes, tuple(nodes[k] for k in unproven), p0, q, c))
        last = len(nodes) - 1
        for k, x in enumerate(nodes):
            if k in unproven:
                continue
            nxt = nodes[k + 1] if k < last else q
            add(x, RECEIVED, c, None)
            if nxt == NONE:
                add(x, DROPS, c, exs)
                continue
            add(x, FORWARDED, c, None)
            if x in route_next and nxt != route_next[x]:
                add(x, DEVIATIONS, c, exs)
        for k in range(last):
            h, d = hop(nodes[k], nodes[k + 1])
            if k not in unproven:
                h.sent += c
                if k + 1 in unproven:
                    h.lost += c
            if k + 1 not in unproven:
                h.received += c
            if k not in unproven and k + 1 not in unproven:
                h.confirmed += c
                d.append(delays[k])
        if q != _OUTSIDE and q != NONE:
            h, _ = hop(nodes[-1], q)
            h.sent += c
            if q in answered:
                h.lost += c
            else:
                h.unverified += c
                add(nodes[-1], UNVERIFIABLE, c, exs)
        if p0 != _OUTSIDE and p0 != NONE:
            h, _ = hop(p0, nodes[0])
            h.received += c
            if p0 not in answered:
                h.unverified += c
                add(nodes[0], UNVERIFIABLE, c, exs)
    out = []
    for key in sorted(hops):
        h, parts = hops[key]
        ds = sorted(v for part in parts for v in part)
        if ds:
            h.delay_p50_ns, h.delay_p99_ns, h.delay_max_ns = (_percentile(ds, 0.5),
                                                              _percentile(ds, 0.99), ds[-1])
        out.append(h)
    observed.sort(key=lambda o: (-o.packets, o.nodes, o.unproven, o.entry_prev_id,
                                 o.exit_next_id))
    return counts, examples, out, observed


def _merge(counts, examples, more_counts, more_examples, n_examples):
    for node, kinds in more_counts.items():
        nc = counts.setdefault(node, {})
        for kind, c in kinds.items():
            nc[kind] = nc.get(kind, 0) + c
    for node, kinds in more_examples.items():
        for kind, exs in kinds.items():
            ex = examples.setdefault(node, {}).setdefault(kind, [])
            ex.extend(exs[:n_examples - len(ex)])


def _receipt_epochs(evidence, sla, from_ns, to_ns, epoch_ns):
    """{node: {(role, epoch_ns): (packets, bytes)}} of the flow's receipts whose epoch lies whole
    inside the window."""
    out = {}
    src, dst = bytes(sla.src), bytes(sla.dst)
    for node, ev in evidence.items():
        for rc in ev.receipts if ev.answered else ():
            if (bytes(rc.src) == src and bytes(rc.dst) == dst and rc.role in (1, 2)
                    and from_ns <= rc.epoch_ns and rc.epoch_ns + epoch_ns - 1 <= to_ns):
                cur = out.setdefault(node, {}).get((rc.role, rc.epoch_ns), (0, 0))
                out[node][(rc.role, rc.epoch_ns)] = (cur[0] + rc.packets, cur[1] + rc.bytes)
    return out


def _receipt_gaps(rc_epochs, edge_counts, counts, allow, epoch_ns):
    """Receipt totals per node and role; ``counts[node][RECEIPT_GAP]``: packets the receipts count
    beyond the records, epoch by epoch (an honest device's receipts never count more than its
    records: a late record is left out of receipts, never the reverse), over the epochs where it
    declares no capture gap and holds its records (``allow``: its merged missing intervals)."""
    receipts = {}
    for node, per in rc_epochs.items():
        summary = receipts[node] = {}
        gap = 0
        ivs = allow.get(node)
        for (role, epoch), (pk, by) in sorted(per.items()):
            s = summary.setdefault("ingress" if role == 1 else "egress",
                                   {"epochs": 0, "packets": 0, "bytes": 0})
            s["epochs"] += 1
            s["packets"] += pk
            s["bytes"] += by
            if ivs and _overlaps(ivs, epoch, epoch + epoch_ns - 1):
                continue
            gap += max(0, pk - edge_counts.get(node, {}).get((role, epoch), 0))
        if gap:
            counts.setdefault(node, {})[RECEIPT_GAP] = gap
    return receipts


@contextlib.contextmanager
def _no_gc():
    """Millions of small tuples and lists, none in a reference cycle: the cyclic collector would
    walk them again and again for nothing (a third of the time)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()



def adjacency(topology):
    """The registered topology as ``{node: frozenset(neighbours)}``, from such a mapping or from
    ``(a, b)`` links (undirected); ``None`` stays ``None`` (adjacency not checked)."""
    if topology is None:
        return None
    adj = {}
    items = topology.items() if isinstance(topology, dict) else None
    if items is not None:
        for a, ns in items:
            for b in ns:
                adj.setdefault(a, set()).add(b)
                adj.setdefault(b, set()).add(a)
    else:
        for a, b in topology:
            adj.setdefault(a, set()).add(b)
            adj.setdefault(b, set()).add(a)
    for a, ns in adj.items():
        if a in ns or _OUTSIDE in ns or NONE in ns:
            raise ValueError(f"topology: node {a} cannot be its own, outside's or NONE's neighbour")
    return {a: frozenset(ns) for a, ns in adj.items()}


def check_route(route, neighbours):
    """ValueError for an agreed route no honest device can follow: one that visits a device
    twice, or (``neighbours`` the registered adjacency, or None) a step that is not a link."""
    route = tuple(route)
    twice = sorted({x for x in route if route.count(x) > 1})
    if twice:
        raise ValueError(f"the agreed route {list(route)} visits node {twice[0]} twice: no "
                         "device can forward to two successors")
    if neighbours is not None:
        for a, b in zip(route, route[1:]):
            if b not in neighbours.get(a, ()):
                raise ValueError(f"the agreed route {list(route)} goes from node {a} to node "
                                 f"{b}, which are not registered neighbours")


def _missing_intervals(ev):
    """Where a device may have missed packets, as two lists of inclusive ``(lo, hi)``: its
    capture gaps (they excuse its own drops too), and the rest (outside its ring, not closed or
    not anchored yet: there it may lack records, and its unanchored records accuse nobody)."""
    cov = ev.coverage
    gaps, other = [], []
    if cov is not None:
        gaps = [(min(lo, hi), max(lo, hi)) for lo, hi, *_ in cov.gaps]
        other = [iv for iv in cov.missing_intervals() if (min(iv), max(iv)) not in gaps]
        if cov.anchored_until_t_ns < NONE:
            other.append((cov.anchored_until_t_ns + 1, NONE))
    if ev.unanchored_records:
        first = min(t for (t,) in struct.iter_unpack(">Q40x", ev.unanchored_records))
        other.append((first, NONE))
    # gap records not anchored yet (their anchor period may not have passed): like records not
    # anchored yet, it may lack records there; they excuse no drop of its own. An honest
    # device's gap record precedes in its outbox the segments closed after it (the batcher
    # anchors a prefix): a pending one speaks only of the last PENDING_REACH_NS before what the
    # device has anchored (a record reaching further back would have been anchored with them)
    until = NONE if cov is None else min(cov.anchored_until_t_ns, cov.newest_t_ns)
    for g in ev.declared_gaps:
        if g.status == "pending":
            lo = g.from_ns if until >= NONE else max(g.from_ns, until - PENDING_REACH_NS, 0)
            if lo <= g.to_ns:
                other.append((lo, g.to_ns))
    return gaps, other


PENDING_REACH_NS = 15 * 10**9   # a drops record spans <= 10 s and is written ~1 s after its end


def _name(n):
    return "outside" if n == _OUTSIDE else ("NONE" if n == NONE else f"node {n}")


def _set_text(nodes):
    nodes = sorted(nodes)
    if len(nodes) == 1:
        return _name(nodes[0])
    return ", ".join(_name(n) for n in nodes[:-1]) + " and " + _name(nodes[-1]) + " together"


def _coverage_contradiction(ev, tolerance):
    """Why a device's signed coverage contradicts the records its answer holds (more than
    ``tolerance``, the disorder an honest store may have), or ``""``."""
    cov = ev.coverage
    if cov is None or not (ev.records or ev.unanchored_records):
        return ""
    ranges = {name: fastpath.t_range(b) for name, b in (("proven", ev.records),
                                                        ("unanchored", ev.unanchored_records)) if b}
    lo = min(r[0] for r in ranges.values())
    hi = max(r[1] for r in ranges.values())
    if cov.empty:
        return "it says its ring is empty"
    if cov.oldest_t_ns > lo + tolerance:
        return f"it says its oldest record is at {cov.oldest_t_ns}, it gave one at {lo}"
    if hi > cov.newest_t_ns + tolerance and cov.newest_t_ns < NONE:
        return f"it says it holds records up to {cov.newest_t_ns}, it gave one at {hi}"
    if "proven" in ranges and cov.anchored_until_t_ns < NONE:
        proven_hi = ranges["proven"][1]
        if proven_hi > cov.anchored_until_t_ns + tolerance:
            return (f"it says its records are anchored up to {cov.anchored_until_t_ns}, it gave "
                    f"an anchored one at {proven_hi}")
    return ""


def _own_faults(node, ev, own, counts, succ, budget_ppm, hi):
    """What a device's own evidence convicts it of: ``({verdict: reason}, liar)``; ``liar``:
    whether that makes it a liar in every explanation (not only a forwarding fault)."""
    out, liar = {}, False
    c = own.get
    if ev.tampered:
        out[TAMPERED] = (f"{len(ev.tampered)} segment(s)/receipt(s) do not match their anchored "
                         f"commitment; first: {ev.tampered[0]}")
        liar = True
    missing = []
    if ev.status in _AT_FAULT_STATUSES:
        missing.append(f"its answer is not evidence ({ev.status}): {ev.error}")
    if ev.withheld:
        missing.append(f"its signed answer contradicts itself ({len(ev.withheld)} finding(s)): "
                       f"{ev.withheld[0]}")
    if counts.get(RECEIPT_GAP, 0):
        missing.append(f"its receipts count {counts[RECEIPT_GAP]} packet(s) more than its "
                       f"records, where it declares no capture gap")
    contradiction = _coverage_contradiction(ev, hi)
    if contradiction:
        missing.append(f"its signed coverage contradicts the records it gave: {contradiction}")
    if missing:
        out[MISSING] = "; ".join(missing)
        liar = True
    if c(IMPOSSIBLE, 0):
        out[FABRICATED] = (f"{c(IMPOSSIBLE)} record(s) of its own that no truthful device "
                           f"writes (naming itself, a device that is not its registered "
                           f"neighbour, or no hop at all)")
        liar = True
    if node in succ:
        if c(OWN_DEVIATIONS, 0):
            to = "outside (0)" if succ[node] == _OUTSIDE else f"node {succ[node]}"
            out[DEVIATED] = (f"its own records: {c(OWN_DEVIATIONS)} of {c(OWN_RECEIVED, 0)} "
                             f"packet(s) left it for another next hop than the agreed {to}")
        drops = c(OWN_DROPS, 0)
        received = c(OWN_RECEIVED, 0) + c(_MAY_HAVE_RECEIVED, 0)
        if drops and drops * 1_000_000 > budget_ppm * received:
            out[DROPPED] = (f"its own records: {drops} of {received} packet(s) dropped "
                            f"({drops * 1_000_000 // received} ppm > loss budget {budget_ppm} "
                            f"ppm)")
    return out, liar


def judge(sla, from_ns, to_ns, evidence, *, topology=None, owners=None, f=1,
          hash_name="sha3-256", max_hop_delay_ns=1_000_000_000, skew_ns=50_000_000,
          receipt_epoch_ns=1_000_000_000, examples=5, asked=None, _frames_checked=False):
    """Judge the SLA's flow in ``[from_ns, to_ns]`` (inclusive) from ``evidence``: one
    ``NodeEvidence`` per interrogated device (a mapping by node_id, or an iterable). Returns a
    ``Judgement``.

    ``topology``: the registered adjacency (``{node: neighbours}`` or ``(a, b)`` links; ``None``:
    not checked, only for tests of other parts); ``owners``: ``{node: owner}`` (default: every
    device its own owner); ``f``: how many owners may lie together (module doc);
    ``max_hop_delay_ns``: the most one hop may take (device plus link); ``skew_ns``: the clock
    difference tolerated between neighbours; ``receipt_epoch_ns``: the domain's receipt epoch;
    ``examples``: example PDs kept per device and kind of claim; ``asked``: ``(lo, hi)``, the
    interval every device was asked for (the window and its margin): beyond it nobody's records
    were asked, so every device may lack them.

    ValueError for an agreed route no honest device can follow: one that visits a device twice,
    or (with a topology) a step that is not a registered link."""
    if not 0 <= from_ns <= to_ns:
        raise ValueError(f"window [{from_ns}, {to_ns}]: from_ns must be >= 0 and <= to_ns")
    for name, v, least in (("max_hop_delay_ns", max_hop_delay_ns, 0), ("skew_ns", skew_ns, 0),
                           ("receipt_epoch_ns", receipt_epoch_ns, 1), ("examples", examples, 0),
                           ("f", f, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {v!r}")
    if not isinstance(evidence, dict):
        evidence = list(evidence)
        ids = [ev.node_id for ev in evidence]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"evidence given twice for node(s) {dup}")
        evidence = {ev.node_id: ev for ev in evidence}
    for node, ev in evidence.items():
        if node != ev.node_id:
            raise ValueError(f"evidence[{node}] is the evidence of node {ev.node_id}")
    route = tuple(sla.route)
    neighbours = adjacency(topology)
    check_route(route, neighbours)
    route_next = {x: route[k + 1] if k + 1 < len(route) else _OUTSIDE
                  for k, x in enumerate(route)}
    owners = owners or {}
    owners = {n: owners[n] if n in owners else f"node {n}" for n in set(evidence) | set(route)}
    ft = flow_tag(hash_name, sla.src, sla.dst)
    answered = frozenset(n for n, ev in evidence.items() if ev.answered)
    lo, hi = -skew_ns, max_hop_delay_ns + skew_ns
    gaps_iv, missing_iv = {}, {}
    beyond = []                         # what nobody was asked for
    if asked is not None:
        if asked[0] > 0:
            beyond.append((0, asked[0] - 1))
        if asked[1] < NONE:
            beyond.append((asked[1] + 1, NONE))
    bounded, frames = {}, {}             # the frames bound (finding G5; _frames_bound)
    for n, ev in evidence.items():
        if ev.answered:
            g, other = _missing_intervals(ev)
            gaps_iv[n], missing_iv[n] = g, g + other + beyond
            drops = _drops_gaps(ev, from_ns - 2 * hi, to_ns + 2 * hi)
            if drops:
                ivs = [(lo_, hi_) for lo_, hi_, _ in drops]
                bounded[n] = (ivs, [iv for iv in g if iv not in ivs] + other + beyond)
                frames[n] = sum(k for _, _, k in drops)
    notes = []

    rc_epochs = _receipt_epochs(evidence, sla, from_ns, to_ns, receipt_epoch_ns)
    with _no_gc():
        obs, unanchored, edge_counts = _group(evidence, ft, rc_epochs, receipt_epoch_ns)
        follow = _Follow(answered, from_ns, to_ns, lo, hi, examples, unanchored=unanchored,
                         allow=missing_iv, gaps=gaps_iv, succ=route_next,
                         neighbours=neighbours, bounded=bounded, owners=owners)
        follow.run(obs)
        follow.finish()
        del obs
    exceeded, bound_notes = _frames_bound(follow, frames)
    if exceeded and not _frames_checked:
        # judged again without the kernel-drops gaps that excuse more than their frames
        evidence = {n: _without_drops_gaps(ev, from_ns - 2 * hi, to_ns + 2 * hi, *exceeded[n])
                    if n in exceeded else ev for n, ev in evidence.items()}
        return judge(sla, from_ns, to_ns, evidence, topology=topology, owners=owners, f=f,
                     hash_name=hash_name, max_hop_delay_ns=max_hop_delay_ns, skew_ns=skew_ns,
                     receipt_epoch_ns=receipt_epoch_ns, examples=examples, asked=asked,
                     _frames_checked=True)
    with _no_gc():
        counts, exs, hops, paths = _tally(follow.paths, route_next, answered, examples)
    _merge(counts, exs, follow.counts, follow.examples, examples)
    _merge(counts, exs, follow.own, follow.own_examples, examples)
    receipts = _receipt_gaps(rc_epochs, edge_counts, counts, follow.gaps, receipt_epoch_ns)

    # -- the rule --
    free = frozenset(n for n, ev in evidence.items() if ev.status == STATUS_UNREACHABLE)
    own_faults, forced = {}, set()
    for node, ev in evidence.items():
        if node in free:
            continue
        out, liar = _own_faults(node, ev, follow.own.get(node, {}), counts.get(node, {}),
                                route_next, sla.loss_budget_ppm, hi)
        if out:
            own_faults[node] = out
        if liar:
            forced.add(node)
    self_faulty = frozenset(n for n, out in own_faults.items()
                            if set(out) & {DEVIATED, DROPPED})
    devices = frozenset(evidence) - free
    patterns = {key: c for key, (c, _) in follow.patterns.items()}
    rule = explain.Judge(patterns, devices, owners, route_next, free=free, forced=forced,
                         self_faulty=self_faulty, region=frozenset(evidence),
                         neighbours=neighbours, f=f)
    sets = rule.explained()
    named = rule.named() if sets else {}
    explanations = rule.explanations() if sets else []
    owners_needed, candidates = (None, []) if sets else rule.candidates()
    in_some = set()
    for e in explanations or candidates:
        in_some |= e.faulty

    elim = _elimination_faults(rule, sets, named, follow.patterns, counts, exs, examples)
    devices_out = {}
    for node in list(dict.fromkeys(route)) + sorted(set(evidence) - set(route)):
        ev = evidence.get(node)
        c = dict.fromkeys(KINDS, 0)
        c.update({k: v for k, v in counts.get(node, {}).items() if k in c})
        if ev is not None:
            c[TAMPERED_ITEMS] = len(ev.tampered)
            c[WITHHELD_ITEMS] = len(ev.withheld)
            c[UNANCHORED_ITEMS] = ev.unanchored
            c[UNPROVEN_RECORDS] = ev.unproven_records
        matched = dict(own_faults.get(node, {}))
        basis = "own evidence" if matched else ""
        for v, why in elim.get(node, {}).items():
            if v not in matched:
                matched[v] = why
                basis = basis or f"every explanation with at most {f} lying owner(s)"
        applies = tuple(v for v in PRIORITY if v in matched)
        reasons = [f"{v}: {matched[v]}" for v in applies]
        if applies:
            verdict = applies[0]
        elif ev is None:
            verdict = NOT_INTERROGATED
            reasons = ["no evidence was asked of it"]
        elif ev.status == STATUS_UNREACHABLE:
            verdict = UNREACHABLE
            reasons = [f"did not answer: {ev.error} (not judged; interrogate it again)"]
        elif node in in_some:
            verdict = AMBIGUOUS
            reasons = ["in some explanations of the evidence, not in all: not at fault"]
        elif _short(ev, from_ns):
            verdict = RING_SHORT
            reasons = [_short_reason(ev, from_ns)]
        else:
            verdict = CONSISTENT
        if applies and ev is not None and ev.unproven_records:
            reasons.append(f"note: {ev.unproven_records} of its records (any flow) come from "
                           f"segments not anchored yet: signed, not proven")
        counters = [tuple(getattr(k, fld) for fld in ("prev_id", "next_id", "packets", "bytes",
                                                      "first_t_ns", "last_t_ns"))
                    for k in (ev.counters if ev is not None else ())]
        declared = [g for g in (ev.declared_gaps if ev is not None else ())
                    if g.from_ns <= to_ns + hi and g.to_ns >= from_ns - hi]
        reasons += _gap_reasons(declared, c[BLIND]) + bound_notes.get(node, [])
        devices_out[node] = DeviceJudgement(
            node, verdict, applies, reasons, node in route_next,
            ev is not None and ev.answered, "" if ev is None else ev.error, c,
            exs.get(node, {}), receipts.get(node, {}), counters, owners.get(node, ""),
            ev.status if ev is not None else "", basis, [g.as_dict() for g in declared])
        notes += [gap_text(g) for g in declared[:MAX_GAP_NOTES]]
        if len(declared) > MAX_GAP_NOTES:
            notes.append(f"node {node}: {len(declared) - MAX_GAP_NOTES} more declared gap(s) in "
                         "the window (in the report's data)")
        if c[UNANCHORED_ITEMS]:
            notes.append(f"node {node}: {c[UNANCHORED_ITEMS]} segment(s)/receipt(s) not "
                         f"anchored (yet): their records are signed but unproven, and accuse "
                         f"no other device")

    if follow.oversized:
        notes.append(f"{follow.oversized} cluster(s) of more than {explain.MAX_CLUSTER_RECORDS} "
                     f"records of one packet digest (a packet repeated within a hop delay) are "
                     f"left out of the explanations; the devices' own records in them count")
    if sets:
        if len(explanations) > 1:
            alts = "; or ".join(_set_text(e.faulty) for e in explanations if e.faulty)
            notes.append(f"the evidence has {len(explanations)} explanations with at most {f} "
                         f"lying owner(s) (minimal; at fault in each): {alts}; only who is at "
                         f"fault in all of them is named")
        elif explanations and explanations[0].liars:
            e = explanations[0]
            notes.append(f"the only explanation with at most {f} lying owner(s): "
                         f"{_set_text(e.liars)} lying (at fault: {_set_text(e.faulty)})")
    else:
        if owners_needed:
            alts = "; or ".join(_set_text(e.faulty) for e in candidates)
            notes.append(f"no explanation with at most {f} lying owner(s): at least "
                         f"{owners_needed} owners must be lying; the smallest explanations: "
                         f"{alts}. Only the devices' own evidence names anyone")
        else:
            notes.append(f"no explanation with at most {f} lying owner(s), nor with more: only "
                         f"the devices' own evidence names anyone")
    named_claims = {}
    for h in hops:
        for x, n in ((h.prev_id, h.received), (h.next_id, h.sent)):
            if x not in evidence and n:
                named_claims[x] = named_claims.get(x, 0) + n
    named_claims = dict(sorted(named_claims.items()))
    if named_claims:
        notes.append(f"named by claims but not interrogated: "
                     f"{', '.join(f'node {n} ({c} claims)' for n, c in named_claims.items())}")
    for node, ev in sorted(evidence.items()):
        if ev.coverage is not None and (ev.coverage.ring_short or (ev.coverage.wrapped and
                                                                   ev.coverage.empty)):
            notes.append(f"node {node}: its signed coverage says its ring covers less than the "
                         f"threshold time ({ev.coverage.threshold_ns} ns): at fault for its "
                         f"coverage")
    packets = sum(p.packets for p in paths)
    if not packets:
        notes.append(f"no traffic: no packet of the flow (FT {ft.hex()}) was first observed in "
                     f"[{from_ns}, {to_ns}]")
    elsewhere = sum(p.packets for p in paths
                    if p.nodes[0] != route[0] or p.entry_prev_id != _OUTSIDE)
    if elsewhere:
        notes.append(f"{elsewhere} packet(s) entered the domain elsewhere than from outside at "
                     f"the agreed first device {route[0]}")
    return Judgement(sla, from_ns, to_ns, hash_name, ft, packets, devices_out, hops, paths,
                     named_claims, notes,
                     {"max_hop_delay_ns": max_hop_delay_ns, "skew_ns": skew_ns,
                      "receipt_epoch_ns": receipt_epoch_ns, "loss_budget_ppm": sla.loss_budget_ppm,
                      "examples": examples, "f": f, "patterns": len(patterns)},
                     f, bool(sets), explanations, owners_needed, candidates, owners)


MAX_GAP_NOTES = 5       # declared gaps named in the notes per device (all are in its data)


def _drops_gaps(ev, lo, hi):
    """``[(from_ns, to_ns, frames_dropped)]`` of a device's honoured kernel-drops gaps (its
    coverage's gaps of reason 1) that meet ``[lo, hi]``."""
    cov = ev.coverage
    if cov is None:
        return []
    return [(min(g[0], g[1]), max(g[0], g[1]), g[2]) for g in cov.gaps
            if len(g) >= 4 and g[3] == GAP_KERNEL_DROPS and min(g[0], g[1]) <= hi
            and max(g[0], g[1]) >= lo]


def _frames_bound(follow, frames):
    """The frames bound (finding G5; docs/threat-model.md, "Declared capture loss"): a device's
    honoured kernel-drops gaps excuse at most as many passages as the frames they say the kernel
    dropped (each lost frame hides at most one passage: an honest device never exceeds it).
    ``({node: (witnessed, frames)}, {node: [report lines]})``: the devices whose passages that
    devices of two owners saw on both sides and it cannot show exceed the frames (their drops gaps then
    excuse nothing: judged again without them), and for the others, those of their
    ingress-only records in the gaps beyond what the frames left, moved from "blind" to their
    own drops (``follow.own`` changed in place)."""
    exceeded, lines = {}, {}
    for node, budget in frames.items():
        witnessed, ingress_only = follow.bound_counts.get(node, (0, 0))
        if witnessed > budget:
            exceeded[node] = (witnessed, budget)
            continue
        over = ingress_only - (budget - witnessed)
        if over > 0:
            own = follow.own.setdefault(node, {})
            own[BLIND] = own.get(BLIND, 0) - over
            own[OWN_DROPS] = own.get(OWN_DROPS, 0) + over
            lines[node] = [f"gaps: its kernel-drops gaps state {budget} frame(s) dropped; "
                           f"{witnessed} passage(s) it cannot show and {ingress_only} record(s) "
                           f"of a packet arriving and not leaving fall in them: {over} of these "
                           f"records count as its own drops (each lost frame hides at most one "
                           f"passage)"]
    return exceeded, lines


def _without_drops_gaps(ev, lo, hi, witnessed, budget):
    """``ev`` without its honoured kernel-drops gaps that meet ``[lo, hi]``: their declared
    gaps marked ``exceeded`` (governance/gaps.py) with why."""
    from .gaps import EXCEEDED
    cov = ev.coverage
    drops = set(_drops_gaps(ev, lo, hi))
    gaps = tuple(g for g in cov.gaps
                 if (min(g[0], g[1]), max(g[0], g[1]), g[2]) not in drops or len(g) < 4
                 or g[3] != GAP_KERNEL_DROPS)
    why = (f"{witnessed} passage(s) of the flow in its kernel-drops gaps, which devices before "
           f"and after it saw and it cannot show, are more than the {budget} frame(s) these gaps "
           f"say the kernel dropped (each lost frame hides at most one passage): its drops gaps "
           f"excuse nothing here")
    declared = tuple(dataclasses.replace(g, status=EXCEEDED, why=why)
                     if g.honoured and g.reason == GAP_KERNEL_DROPS and g.from_ns <= hi
                     and g.to_ns >= lo else g for g in ev.declared_gaps)
    return dataclasses.replace(ev, coverage=dataclasses.replace(cov, gaps=gaps),
                               declared_gaps=declared)


def gap_text(g):
    from .gaps import describe
    return describe(g)


def _gap_reasons(declared, blind):
    """The lines that tell "this device was blind then" from "this device lost packets"."""
    out = []
    honoured = [g for g in declared if g.honoured]
    if honoured:
        kinds = []
        drops = [g for g in honoured if g.reason == GAP_KERNEL_DROPS]
        if drops:
            span = sum(g.to_ns - g.from_ns for g in drops) / 1e9
            kinds.append(f"kernel drops over {span:.3f} s, "
                         f"{sum(g.frames_dropped for g in drops)} frames dropped by the kernel")
        stopped = [g for g in honoured if g.reason != GAP_KERNEL_DROPS]
        if stopped:
            kinds.append(f"capture stopped {len(stopped)} time(s), the last until "
                         f"{max(g.to_ns for g in stopped)}")
        seen = (f"{blind} packet(s) of the flow that a neighbour says passed it fall in them, "
                f"which its records cannot show; it was blind then (neither at fault nor cleared "
                f"for them)" if blind else "no packet of the flow that a neighbour says passed "
                f"it falls in them")
        out.append(f"blind: {len(honoured)} declared capture gap(s) anchored in time "
                   f"({'; '.join(kinds)}): {seen}")
    rejected = [g for g in declared if g.status not in ("honoured", "pending")]
    if rejected:
        kinds = sorted({g.status for g in rejected})
        out.append(f"gaps: {len(rejected)} declared capture gap(s) NOT honoured "
                   f"({', '.join(kinds)}): its packets there count as any others; first: "
                   f"[{rejected[0].from_ns}, {rejected[0].to_ns}]: {rejected[0].why}")
    pending = [g for g in declared if g.status == "pending"]
    if pending:
        out.append(f"gaps: {len(pending)} declared capture gap(s) not anchored yet (signed, "
                   f"not proven): treated like its records not anchored yet")
    return out


def _short(ev, from_ns):
    """Its ring wrapped past the window's start (it no longer holds what it recorded there)."""
    cov = ev.coverage
    return cov is not None and cov.wrapped and (cov.empty or cov.oldest_t_ns > from_ns)


def _short_reason(ev, from_ns):
    cov = ev.coverage
    held = "none" if cov.empty else f"records from {cov.oldest_t_ns}"
    return (f"its signed coverage does not reach back to the window start {from_ns} (it holds "
            f"{held}): judged only where it holds records")


def _elimination_faults(rule, sets, named, patterns, counts, exs, n_examples):
    """``{node: {verdict: reason}}`` for the devices named by every explanation, with the
    packets that need them lying (FABRICATED when their own records are what no truthful world
    allows, MISSING when a record they do not have is) or deviating."""
    out = {}
    f = rule.f
    for node, (liar_all, dev_all) in named.items():
        kinds = {}
        if node not in rule.forced and (liar_all or not (dev_all or node in rule.self_faulty)):
            own, absent = 0, 0
            seen = set()
            for _, ds in sets:
                if node not in ds:
                    continue
                for k, (pat, c) in enumerate(rule.patterns):
                    if k in seen or not rule.feasible(k, ds) or rule.feasible(k, ds - {node}):
                        continue
                    seen.add(k)
                    mine = any(x == node for x, _, _ in pat[0])
                    if mine:
                        own += c
                    else:
                        absent += c
                    kind = FABRICATED if mine else MISSING
                    ex = exs.setdefault(node, {}).setdefault(kind, [])
                    for e in patterns[pat][1]:
                        if len(ex) < n_examples:
                            ex.append(e)
            nc = counts.setdefault(node, {})
            nc[NEEDS_LIE] = own + absent
            if own:
                kinds[FABRICATED] = (f"{own} packet(s) whose records of its own no truthful "
                                     f"device writes given its neighbours' evidence, in every "
                                     f"explanation with at most {f} lying owner(s)")
            if absent:
                kinds[MISSING] = (f"{absent} packet(s) that its neighbours' evidence puts through "
                                  f"it, with no record of it here, in every explanation with at "
                                  f"most {f} lying owner(s)")
        if dev_all:
            n = 0
            for pat, c in rule.patterns:
                if any(p == node and x != rule.succ.get(node) and x not in rule.free
                       for x, p, _ in pat[0]):
                    n += c
            counts.setdefault(node, {})[DEVIATED_BY_NEIGHBOUR] = n
            to = rule.succ.get(node)
            to = "outside (0)" if to == _OUTSIDE else f"node {to}"
            kinds[DEVIATED] = (f"{n} packet(s) that neighbours other than the agreed {to} "
                               f"received from it, truthful in every explanation with at most "
                               f"{f} lying owner(s)")
        out[node] = kinds
    return out
