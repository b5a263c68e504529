"""Evidence as an adversary builds it, for tests/governance/test_adversary.py.

A ``Net`` is a registered topology (an agreed route of devices, off-route devices, links, owners);
``Book`` holds what every interrogated device hands over (its records of the SLA's flow, proven or
unanchored, its signed coverage, how its answer ended). ``judge_it`` runs the engine
(governance/verdicts.judge), ``reference_of`` the brute-force reference
(tests/governance/judge_reference.py), both on the same evidence and the same parameters.

Times are small integers: a hop takes at most ``MAX_HOP`` ns, clocks agree within ``SKEW`` ns; the
rule's bounds are then ``LO = -SKEW`` and ``HI = MAX_HOP + SKEW`` (governance/verdicts.judge).

``facts`` recomputes, independently of the engine and of the reference, the definitions of
docs/threat-model.md the completeness checks need: the clusters (records of one PD whose
consecutive times are at most HI apart; judged when the first is in the window), the devices that
may have missed each one, and what each device's own records say about itself.
"""
import dataclasses
import hashlib
import struct

from fastpath.output import NONE
from governance.verdicts import STATUS_UNREACHABLE, Coverage, NodeEvidence, flow_tag
from governance.verdicts import judge as _judge
from judge_reference import reference
from ledger_client.types import SLA

HASH = "sha3-256"
V4 = bytes(10) + b"\xff\xff"
SRC, DST = V4 + bytes([10, 0, 0, 1]), V4 + bytes([10, 0, 0, 2])
OTHER_DST = V4 + bytes([10, 9, 9, 9])
FT = flow_tag(HASH, SRC, DST)
OTHER_FT = flow_tag(HASH, SRC, OTHER_DST)
OUTSIDE = 0
SKEW = 50
MAX_HOP = 1000
LO, HI = -SKEW, MAX_HOP + SKEW
T0 = 1_000_000
WINDOW = (T0, T0 + 100 * HI)
_REC = struct.Struct(">QQQ16s8s")


def pd(i):
    """The digest of packet number ``i`` (16 bytes)."""
    return hashlib.sha256(b"BEAT adversary packet %d" % i).digest()[:16]


class Net:
    """The registered topology: ``route`` (agreed, node ids), ``links`` (undirected pairs),
    ``owners`` ({node: owner}, default every node its own)."""

    def __init__(self, route, links, owners=None, loss_budget_ppm=0):
        self.route = tuple(route)
        self.links = tuple(sorted({tuple(sorted(link)) for link in links}))
        self.nodes = tuple(sorted({n for link in self.links for n in link} | set(self.route)))
        self.owners = {n: f"op{n}" for n in self.nodes}
        self.owners.update(owners or {})
        self.loss_budget_ppm = loss_budget_ppm
        self.adj = {n: set() for n in self.nodes}
        for a, b in self.links:
            self.adj[a].add(b)
            self.adj[b].add(a)

    def succ(self, x):
        """The agreed successor of a route device (0 after the last), None off the route."""
        if x not in self.route:
            return None
        k = self.route.index(x)
        return self.route[k + 1] if k + 1 < len(self.route) else OUTSIDE

    def pred(self, x):
        if x not in self.route:
            return None
        k = self.route.index(x)
        return self.route[k - 1] if k else OUTSIDE

    def sla(self):
        return SLA(7, "tenant", SRC, DST, self.route, loss_budget_ppm=self.loss_budget_ppm)

    def devices_of(self, owners):
        return {n for n in self.nodes if self.owners[n] in owners}


@dataclasses.dataclass
class Answer:
    """What one device hands over: records ``(t, prev_id, next_id, pd, proven)`` of the flow
    (``ft`` another flow tag for records of another flow), and the rest of NodeEvidence."""
    records: list = dataclasses.field(default_factory=list)
    status: str = "answered"
    coverage: Coverage = None
    tampered: tuple = ()
    withheld: tuple = ()
    other: list = dataclasses.field(default_factory=list)   # (t, p, q, pd, proven) of OTHER_FT

    def add(self, t, p, q, d, proven=True):
        self.records.append((t, p, q, d, proven))


class Book(dict):
    """{node: Answer}: the evidence of every interrogated device, under construction."""

    def of(self, node):
        return self.setdefault(node, Answer())

    def evidence(self):
        out = {}
        for n, a in sorted(self.items()):
            if a.status != "answered":
                out[n] = NodeEvidence.no_answer(n, f"adversary: {a.status}", status=a.status)
                continue
            blobs = {True: [], False: []}
            for t, p, q, d, proven in a.records:
                blobs[proven].append(_REC.pack(t, p, q, d, FT))
            for t, p, q, d, proven in a.other:
                blobs[proven].append(_REC.pack(t, p, q, d, OTHER_FT))
            out[n] = NodeEvidence(n, records=b"".join(sorted(blobs[True])),
                                  unanchored_records=b"".join(sorted(blobs[False])),
                                  tampered=a.tampered, withheld=a.withheld,
                                  unanchored=1 if blobs[False] else 0, coverage=a.coverage)
        return out


def judge_it(net, book, f=1, window=WINDOW, **kw):
    ev = book if isinstance(book, dict) and not isinstance(book, Book) else book.evidence()
    return _judge(net.sla(), *window, ev, topology=net.links, owners=net.owners, f=f,
                  hash_name=HASH, max_hop_delay_ns=MAX_HOP, skew_ns=SKEW, **kw)


def reference_of(net, book, f=1, window=WINDOW, owners=None, asked=None):
    ev = book if isinstance(book, dict) and not isinstance(book, Book) else book.evidence()
    return reference(net.sla(), *window, ev, topology=net.links,
                     owners=net.owners if owners is None else owners, f=f, hash_name=HASH,
                     lo=LO, hi=HI, asked=asked)


def verdicts(j):
    return {n: d.verdict for n, d in j.devices.items()}


# -- the definitions, recomputed (for the completeness checks) -------------------------------------

def _missing(cov, unanchored_times):
    """(capture gaps, every interval where the device may lack records)."""
    gaps, ivs = [], []
    if cov is not None:
        gaps = [(min(g[0], g[1]), max(g[0], g[1])) for g in cov.gaps]
        if cov.wrapped and cov.empty:
            ivs.append((0, NONE))
        elif cov.wrapped:
            ivs.append((0, cov.oldest_t_ns))
        if not cov.empty and cov.newest_t_ns < NONE:
            ivs.append((cov.newest_t_ns + 1, NONE))
        if cov.anchored_until_t_ns < NONE:
            ivs.append((cov.anchored_until_t_ns + 1, NONE))
    if unanchored_times:
        ivs.append((min(unanchored_times), NONE))
    return gaps, gaps + ivs


@dataclasses.dataclass
class Cluster:
    pd: bytes
    recs: list          # (t, node, p, q, proven), sorted
    judged: bool
    allow: set          # may have missed it (coverage, gaps, unanchored)
    gap: set            # capture gaps near it (excuse own drops)


def clusters(book, window=WINDOW):
    """Every cluster of the flow's records, with the definitions of docs/threat-model.md."""
    missing = {}
    by_pd = {}
    for n, a in book.items():
        if a.status != "answered":
            continue
        un = [t for t, *_, proven in a.records + a.other if not proven]
        missing[n] = _missing(a.coverage, un)
        for t, p, q, d, proven in a.records:
            by_pd.setdefault(d, []).append((t, n, p, q, proven))
    out = []
    for d, recs in by_pd.items():
        recs.sort(key=lambda r: r[:4])
        cur = [recs[0]]
        groups = []
        for r in recs[1:]:
            if r[0] - cur[-1][0] > HI:
                groups.append(cur)
                cur = []
            cur.append(r)
        groups.append(cur)
        for g in groups:
            a, b = g[0][0] - HI, g[-1][0] + HI
            allow = {n for n, (_, ivs) in missing.items()
                     if any(lo <= b and hi >= a for lo, hi in ivs)}
            allow |= {r[1] for r in g if not r[4]}
            gap = {n for n, (ivs, _) in missing.items()
                   if any(lo <= b and hi >= a for lo, hi in ivs)}
            out.append(Cluster(d, g, any(window[0] <= r[0] <= window[1] for r in g), allow,
                               gap))
    return out


def possible_record(net, x, p, q):
    """A record a truthful device can write."""
    if p == x or q == x or (p == NONE and q == NONE):
        return False
    return ((p in (OUTSIDE, NONE) or p in net.adj.get(x, ())) and
            (q in (OUTSIDE, NONE) or q in net.adj.get(x, ())))


def own_convictions(net, book, window=WINDOW):
    """The devices their own evidence convicts (docs/threat-model.md "Completeness"), from the
    definitions (receipts left out: the tests give none)."""
    out = set()
    received, drops = {}, {}
    lo_w, hi_w = window
    for n, a in book.items():
        if a.status in ("refused", "incomplete", "bad_evidence") or a.tampered or a.withheld:
            out.add(n)
        ts = [r[0] for r in a.records + a.other]
        cov = a.coverage
        if a.status == "answered" and cov is not None and ts and (
                cov.empty or cov.oldest_t_ns > min(ts) + HI or
                (cov.newest_t_ns < NONE and max(ts) > cov.newest_t_ns + HI) or
                (cov.anchored_until_t_ns < NONE and any(
                    r[4] and r[0] > cov.anchored_until_t_ns + HI for r in a.records + a.other))):
            out.add(n)                      # its signed coverage contradicts its records
    for cl in clusters(book, window):
        if not cl.judged:
            continue
        nodes = {r[1] for r in cl.recs}
        for x in nodes:
            mine = [r for r in cl.recs if r[1] == x]
            ins = sorted(r[0] for r in mine if r[3] == NONE and r[2] != NONE)
            outs = sorted(r[0] for r in mine if r[2] == NONE and r[3] != NONE)
            joined_in, joined_out, k = set(), set(), 0
            for i, t in enumerate(ins):
                while k < len(outs) and outs[k] < t:
                    k += 1
                if k < len(outs) and outs[k] - t <= HI:
                    joined_in.add(i)
                    joined_out.add(k)
                    k += 1
            received[x] = received.get(x, 0) + sum(lo_w <= r[0] <= hi_w for r in mine) - sum(
                lo_w <= outs[k] <= hi_w for k in joined_out)
            if x not in cl.gap:
                drops[x] = drops.get(x, 0) + sum(lo_w <= t <= hi_w for i, t in enumerate(ins)
                                                 if i not in joined_in)
            s = net.succ(x)
            for t, _, p, q, _ in mine:
                if not lo_w <= t <= hi_w:
                    continue
                if not possible_record(net, x, p, q):
                    out.add(x)
                if s is not None and q != NONE and q != s:
                    out.add(x)
        for x in cl.gap - nodes:
            received[x] = received.get(x, 0) + 1
    for x in net.route:
        d = drops.get(x, 0)
        if d and d * 1_000_000 > net.loss_budget_ppm * received.get(x, 0):
            out.add(x)
    return {n for n in out if n in book and book[n].status != STATUS_UNREACHABLE}

