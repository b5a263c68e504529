"""The Interrogation Protocol's judgement (ARCHITECTURE.md "The Interrogation Protocol"): from the
verified evidence of every interrogated device, the path every packet of the SLA's flow really
took, hop by hop, and one verdict per device.

Input: the SLA (agreed route, src/dst, loss budget), the window ``[from_ns, to_ns]`` and one
``NodeEvidence`` per interrogated device (governance/verify.py checked its segments and receipts).
Devices are queried with a margin around the window; a packet is judged when its first observation
(its earliest record, on any device) is in the window, so that a packet is judged whole or not at
all.

Following a packet digest ``PD`` (all records of the flow tag ``FT`` of ``sla.src/dst``):

1. A claim ``X: next_id = Y`` is *confirmed* when Y holds the PD with ``prev_id = X`` within
   ``[-skew, max_hop_delay + skew]`` of X's time; matched greedily in time order, so a PD that
   repeats pairs up in order. Two devices agreeing is taken as what happened.
2. Honest loose ends are tied: an ingress-only record (``next_id NONE``) and an egress-only record
   (``prev_id NONE``) of one passage through a device (its join window missed), and a
   ``next_id NONE`` at X that the next device Y contradicts by receiving the packet from X *and*
   forwarding it to a third device that confirms it (X's egress capture missed it). Y's word
   alone does not clear X's drop: it would let any device hide its upstream's drops for free.
3. A claim left unconfirmed is *contradicted* when the named neighbour has the PD at that time but
   names another neighbour (not NONE), *absent* when it has no record of it, *unverifiable* when
   the neighbour gave no evidence.
4. A contradicted claim is a *fabrication* when the contradicting record's own claim is confirmed
   by a third device (the paper's figure 7). If not, it is one word against another: *disputed*,
   reported, nobody accused.
5. A packet that its upstream says it handed to Y and its downstream says it got from Y, while Y
   (which answered) has no record of it: Y is *missing* it. One witness alone (only the upstream's
   claim) accuses nobody: a device that drops a packet and claims to have forwarded it would
   otherwise frame an honest successor. It is counted as ``unconfirmed`` at the claimant and
   ``absent`` at the named device, and shows as loss on that hop.
6. Receipts: a first/last device's verified receipts of the flow, for the epochs wholly inside the
   window, count its records with ``prev_id 0`` (role 1) / ``next_id 0`` (role 2). An honest
   device's receipts never count more than its records (a late record is left out of receipts,
   never the reverse): more means it withheld records, with no neighbour needed as witness.

Verdicts, exactly one per device, the first that applies in this order (``PRIORITY``):

- ``TAMPERED``: a segment or receipt that does not match its anchored commitment.
- ``FABRICATED``: at least one fabrication (4.) in a judged packet.
- ``MISSING``: no answer (unreachable, error, bad signature), no evidence for a device of the
  agreed route, a missing packet (5.), or receipts counting more packets than its records (6.).
- ``DEVIATED``: a device of the agreed route sent the flow to another next hop than its agreed
  successor (``route[i+1]``; ``0``, outside, for the last device). The path's next hop is
  confirmed by that neighbour; a device's own record that it sent the packet elsewhere (outside,
  or to a device with no record of it) is a claim against itself and counts too.
- ``DROPPED``: records with ``next_id NONE`` (step 2 aside) beyond ``sla.loss_budget_ppm`` of the
  packets the device received.
- ``CONSISTENT`` otherwise; an off-route device honestly forwarding what it got is consistent.

A packet that entered the domain elsewhere than at the agreed first device is a note, not a
verdict: a device is not at fault for where its packets come from.

Records of unanchored segments are used (they are signed) and flagged: counted as
``unproven_records``, named in a note and after the reasons of a verdict that rests on them.

Speed: records are grouped by PD in one pass (``struct.iter_unpack``, the cyclic garbage collector
paused); a PD whose records form one clean chain (each claim confirmed by the next record, nothing
else) takes a short path that only counts the chain by its shape; every other PD goes through the
full rules above (about 15 µs per PD).
"""
import contextlib
import dataclasses
import gc
import math
import struct
from array import array

from fastpath.hashes import constructor
from fastpath.output import NONE, RECORD_SIZE

from . import verify

__all__ = ["CONSISTENT", "DEVIATED", "FABRICATED", "MISSING", "TAMPERED", "DROPPED", "PRIORITY",
           "VERDICTS", "KINDS", "NodeEvidence", "DeviceJudgement", "Hop", "ObservedPath",
           "Judgement", "flow_tag", "judge"]

CONSISTENT, DEVIATED, FABRICATED = "CONSISTENT", "DEVIATED", "FABRICATED"
MISSING, TAMPERED, DROPPED = "MISSING", "TAMPERED", "DROPPED"
PRIORITY = (TAMPERED, FABRICATED, MISSING, DEVIATED, DROPPED)
VERDICTS = PRIORITY + (CONSISTENT,)

# Kinds of claims counted per device (DeviceJudgement.counts), all over judged packets.
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
KINDS = (RECEIVED, FORWARDED, DROPS, DEVIATIONS, FAB_PREV, FAB_NEXT, MISSING_PACKETS, RECEIPT_GAP,
         UNCONFIRMED, ABSENT, DISPUTED, UNVERIFIABLE, EGRESS_UNSEEN, JOIN_MISSED, TAMPERED_ITEMS,
         UNANCHORED_ITEMS, UNPROVEN_RECORDS)

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


@dataclasses.dataclass
class NodeEvidence:
    """What one interrogated device gave, after governance/verify.py.

    ``records``: 48-byte records (SPEC encoding) of its segments that check out, proven and
    unanchored ones (any flow: the judge keeps the SLA's FT); ``unproven_records`` of them come
    from unanchored segments. ``tampered``: one ``verify.Problem`` (or text) per segment or receipt
    that does not match its commitment; their records are not in ``records``. ``receipts``: the
    verified receipts (proven or unanchored), ``counters`` as the device reported them."""
    node_id: int
    answered: bool = True
    error: str = ""
    records: bytes = b""
    unproven_records: int = 0
    tampered: tuple = ()
    unanchored: int = 0
    counters: tuple = ()
    receipts: tuple = ()

    def __post_init__(self):
        if not 1 <= self.node_id <= NONE - 1:
            raise ValueError(f"node_id must be in 1..2^64-2, got {self.node_id}")
        if len(self.records) % RECORD_SIZE:
            raise ValueError(f"node {self.node_id}: records are {len(self.records)} bytes, not "
                             f"whole {RECORD_SIZE}-byte records")

    @classmethod
    def from_checks(cls, segments, receipts=None, counters=()):
        """From ``verify.verify_segments`` (and ``verify_receipts``) results of one node."""
        problems = list(segments.problems) + (list(receipts.problems) if receipts else [])
        return cls(segments.node_id, True, "", segments.records + segments.unproven,
                   len(segments.unproven) // RECORD_SIZE,
                   tuple(p for p in problems if p.kind == verify.TAMPERED),
                   sum(p.kind == verify.UNANCHORED for p in problems), tuple(counters),
                   tuple(receipts.receipts + receipts.unproven) if receipts else ())

    @classmethod
    def no_answer(cls, node_id, error):
        """A device that did not answer: unreachable, an error, a bad signature (``error`` says)."""
        return cls(node_id, answered=False, error=str(error) or "no answer")


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

    @property
    def faulty(self):
        return [n for n, d in self.devices.items() if d.verdict != CONSISTENT]


# -------------------------------------------------------------------------------------------------
# grouping records by PD

def _group(evidence, ft, receipt_epochs, epoch_ns):
    """{PD: [(t_ns, node_id, prev_id, next_id), ...]} over every answered device's records of
    ``ft``, and the edge records per receipt epoch of the nodes in ``receipt_epochs``
    ({node: {(role, epoch_ns): records}})."""
    obs = {}
    get = obs.get
    edge_counts = {}
    for node in sorted(evidence):           # the same order whatever order they came in
        ev = evidence[node]
        if not ev.answered or not ev.records:
            continue
        it = _REC.iter_unpack(ev.records)
        epochs = receipt_epochs.get(node)
        if epochs is None:
            for t, p, q, pd, f in it:
                if f == ft:
                    r = (t, node, p, q)
                    lst = get(pd)
                    if lst is None:
                        obs[pd] = [r]
                    else:
                        lst.append(r)
            continue
        counts = edge_counts[node] = {}
        for t, p, q, pd, f in it:
            if f == ft:
                r = (t, node, p, q)
                lst = get(pd)
                if lst is None:
                    obs[pd] = [r]
                else:
                    lst.append(r)
                e = t - t % epoch_ns
                if p == _OUTSIDE and (1, e) in epochs:
                    counts[(1, e)] = counts.get((1, e), 0) + 1
                if q == _OUTSIDE and (2, e) in epochs:
                    counts[(2, e)] = counts.get((2, e), 0) + 1
    return obs, edge_counts


# -------------------------------------------------------------------------------------------------
# following packets

class _Follow:
    """Per-PD work. ``paths``: {(nodes, unproven positions, entry prev_id, exit next_id):
    [packets, examples, delays per hop position]}; ``counts``/``examples``: the claims that only
    the full rules find, per node."""

    def __init__(self, answered, from_ns, to_ns, lo, hi, n_examples):
        self.answered = answered
        self.from_ns, self.to_ns = from_ns, to_ns
        self.lo, self.hi = lo, hi
        self.n_examples = n_examples
        self.paths = {}
        self.counts = {}
        self.examples = {}

    def run(self, obs):
        """Every PD: the clean-chain short path inline, the rest through ``general``."""
        answered, paths = self.answered, self.paths
        from_ns, to_ns, lo, hi = self.from_ns, self.to_ns, self.lo, self.hi
        n_ex = self.n_examples
        general = self.general
        for pd, recs in obs.items():
            if len(recs) > 1:
                recs.sort()
            t0, n, p0, q = recs[0]
            if t0 > to_ns or recs[-1][0] < from_ns:
                continue                    # no packet of it can be first observed in the window
            if p0 in answered:
                general(pd, recs)
                continue
            nodes = [n]
            ds = []
            t = t0
            ok = True
            for t1, n1, p1, q1 in recs[1:]:
                d = t1 - t
                if q != n1 or p1 != n or d < lo or d > hi:
                    ok = False
                    break
                nodes.append(n1)
                ds.append(d)
                t, n, q = t1, n1, q1
            if not ok or q in answered:
                general(pd, recs)
                continue
            if t0 < from_ns:
                continue
            key = (tuple(nodes), (), p0, q)
            e = paths.get(key)
            if e is None:
                paths[key] = [1, [(pd, recs)], [array("q", (d,)) for d in ds]]
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

    def general(self, pd, recs):
        """The full rules (module doc, 1.-5.) for one PD's records, sorted by time."""
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


def _decide(ev, counts, expected_next, budget_ppm):
    """(verdict, applies, reasons) for one device."""
    c = counts.get
    matched = {}
    if ev is not None and ev.tampered:
        matched[TAMPERED] = (f"{len(ev.tampered)} segment(s)/receipt(s) do not match their "
                             f"anchored commitment; first: {ev.tampered[0]}")
    if c(FAB_PREV, 0) or c(FAB_NEXT, 0):
        matched[FABRICATED] = (f"{c(FAB_PREV, 0)} record(s) claim a prev_id and {c(FAB_NEXT, 0)} "
                               f"a next_id that the named neighbour's confirmed records contradict")
    missing = []
    if ev is None:
        missing.append("no evidence was given for this device of the agreed route")
    elif not ev.answered:
        missing.append(f"did not answer: {ev.error}")
    if c(MISSING_PACKETS, 0):
        missing.append(f"{c(MISSING_PACKETS)} packet(s) that its upstream says it sent here and "
                       f"its downstream says came from here have no record here")
    if c(RECEIPT_GAP, 0):
        missing.append(f"its receipts count {c(RECEIPT_GAP)} packet(s) more than its records")
    if missing:
        matched[MISSING] = "; ".join(missing)
    if c(DEVIATIONS, 0):
        to = "outside (0)" if expected_next == _OUTSIDE else f"node {expected_next}"
        matched[DEVIATED] = (f"{c(DEVIATIONS)} of {c(RECEIVED, 0)} packet(s) left it for another "
                             f"next hop than the agreed {to}")
    drops, received = c(DROPS, 0), c(RECEIVED, 0)
    if drops and drops * 1_000_000 > budget_ppm * received:
        matched[DROPPED] = (f"{drops} of {received} packet(s) dropped "
                            f"({drops * 1_000_000 // received} ppm > loss budget {budget_ppm} ppm)")
    applies = tuple(v for v in PRIORITY if v in matched)
    verdict = applies[0] if applies else CONSISTENT
    reasons = [f"{v}: {matched[v]}" for v in applies]
    if reasons and ev is not None and ev.unproven_records:
        reasons.append(f"note: {ev.unproven_records} of its records (any flow) come from "
                       f"segments not anchored yet: signed, not proven")
    return verdict, applies, reasons


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


def _receipt_gaps(rc_epochs, edge_counts, counts):
    """Receipt totals per node and role; ``counts[node][RECEIPT_GAP]``: packets the receipts count
    beyond the records, epoch by epoch (rule 6)."""
    receipts = {}
    for node, per in rc_epochs.items():
        summary = receipts[node] = {}
        gap = 0
        for (role, epoch), (pk, by) in sorted(per.items()):
            s = summary.setdefault("ingress" if role == 1 else "egress",
                                   {"epochs": 0, "packets": 0, "bytes": 0})
            s["epochs"] += 1
            s["packets"] += pk
            s["bytes"] += by
            gap += max(0, pk - edge_counts.get(node, {}).get((role, epoch), 0))
        if gap:
            counts.setdefault(node, {})[RECEIPT_GAP] = gap
    return receipts


def _device(node, ev, counts, examples, receipts, route_next, budget_ppm):
    """The DeviceJudgement of one device (``ev`` None: a route device without evidence)."""
    c = dict.fromkeys(KINDS, 0)
    c.update(counts)
    if ev is not None:
        c[TAMPERED_ITEMS] = len(ev.tampered)
        c[UNANCHORED_ITEMS] = ev.unanchored
        c[UNPROVEN_RECORDS] = ev.unproven_records
    verdict, applies, reasons = _decide(ev, c, route_next.get(node), budget_ppm)
    counters = [tuple(getattr(k, f) for f in ("prev_id", "next_id", "packets", "bytes",
                                              "first_t_ns", "last_t_ns"))
                for k in (ev.counters if ev is not None else ())]
    return DeviceJudgement(node, verdict, applies, reasons, node in route_next,
                           ev is not None and ev.answered, "" if ev is None else ev.error, c,
                           examples, receipts, counters)


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


def judge(sla, from_ns, to_ns, evidence, *, hash_name="sha3-256",
          max_hop_delay_ns=1_000_000_000, skew_ns=50_000_000, receipt_epoch_ns=1_000_000_000,
          examples=5):
    """Judge the SLA's flow in ``[from_ns, to_ns]`` (inclusive) from ``evidence``: one
    ``NodeEvidence`` per interrogated device (a mapping by node_id, or an iterable). Returns a
    ``Judgement``. ``max_hop_delay_ns``: the most one hop may take (device plus link);
    ``skew_ns``: the clock difference tolerated between neighbours; ``receipt_epoch_ns``: the
    domain's receipt epoch; ``examples``: example PDs kept per device and kind of claim."""
    if not 0 <= from_ns <= to_ns:
        raise ValueError(f"window [{from_ns}, {to_ns}]: from_ns must be >= 0 and <= to_ns")
    for name, v, least in (("max_hop_delay_ns", max_hop_delay_ns, 0), ("skew_ns", skew_ns, 0),
                           ("receipt_epoch_ns", receipt_epoch_ns, 1), ("examples", examples, 0)):
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
    route_next = {}
    for k, x in enumerate(route):
        route_next.setdefault(x, route[k + 1] if k + 1 < len(route) else _OUTSIDE)
    ft = flow_tag(hash_name, sla.src, sla.dst)
    answered = frozenset(n for n, ev in evidence.items() if ev.answered)

    rc_epochs = _receipt_epochs(evidence, sla, from_ns, to_ns, receipt_epoch_ns)
    with _no_gc():
        obs, edge_counts = _group(evidence, ft, rc_epochs, receipt_epoch_ns)
        follow = _Follow(answered, from_ns, to_ns, -skew_ns, max_hop_delay_ns + skew_ns, examples)
        follow.run(obs)
        del obs
        counts, exs, hops, paths = _tally(follow.paths, route_next, answered, examples)
    _merge(counts, exs, follow.counts, follow.examples, examples)

    receipts = _receipt_gaps(rc_epochs, edge_counts, counts)
    notes = []
    devices = {}
    for node in list(dict.fromkeys(route)) + sorted(set(evidence) - set(route)):
        devices[node] = _device(node, evidence.get(node), counts.get(node, {}), exs.get(node, {}),
                                receipts.get(node, {}), route_next, sla.loss_budget_ppm)
        if devices[node].counts[UNANCHORED_ITEMS]:
            notes.append(f"node {node}: {devices[node].counts[UNANCHORED_ITEMS]} segment(s)/"
                         f"receipt(s) not anchored (yet): their records are signed but unproven")
    named = {}
    for h in hops:
        for x, n in ((h.prev_id, h.received), (h.next_id, h.sent)):
            if x not in evidence and n:
                named[x] = named.get(x, 0) + n
    named = dict(sorted(named.items()))
    if named:
        notes.append(f"named by claims but not interrogated (interrogate them): "
                     f"{', '.join(f'node {n} ({c} claims)' for n, c in named.items())}")
    packets = sum(p.packets for p in paths)
    if not packets:
        notes.append(f"no traffic: no packet of the flow (FT {ft.hex()}) was first observed in "
                     f"[{from_ns}, {to_ns}]")
    elsewhere = sum(p.packets for p in paths
                    if p.nodes[0] != route[0] or p.entry_prev_id != _OUTSIDE)
    if elsewhere:
        notes.append(f"{elsewhere} packet(s) entered the domain elsewhere than from outside at "
                     f"the agreed first device {route[0]}")
    return Judgement(sla, from_ns, to_ns, hash_name, ft, packets, devices, hops, paths, named,
                     notes, {"max_hop_delay_ns": max_hop_delay_ns, "skew_ns": skew_ns,
                             "receipt_epoch_ns": receipt_epoch_ns,
                             "loss_budget_ppm": sla.loss_budget_ppm, "examples": examples})
