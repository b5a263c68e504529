"""A brute-force reference of the judgement's rule (docs/threat-model.md), for small cases only.

It shares the definitions with governance/verdicts.py and governance/explain.py and none of their
shortcuts: no patterns (every cluster on its own), no owner-maximal liar sets (every coalition of
devices with at most f owners is tried), no matching theorem (every pairing of records is tried),
no memo. The tests check that the fast engine names exactly the devices this names.

The definitions, once more in plain words:
- a cluster: the records of one PD whose consecutive times are at most ``hi`` apart; judged when
  one of its records is in the window (clusters of more than 256 records are left out of the
  explanations); a device's own facts (passages, drops, deviations, records no truthful device
  writes) count its records in the window, its ingress-only and egress-only records of one
  packet paired canonically (each ingress, in time order, with the earliest egress after it
  within ``hi``);
- a device whose signed coverage contradicts the records it gave (an empty ring, an oldest record
  or a newest one, or an anchored-until, that the records pass by more than ``hi``) is a liar;
- a device may have missed a cluster when one of its missing intervals (coverage, gaps, from its
  first unanchored record on) meets ``[first - hi, last + hi]``, or when one of its records in the
  cluster is unanchored; unanchored records never constrain anyone; only its capture gaps excuse
  its own drops (and there it counts as having received every cluster it has no record of);
- a liar set L is possible when, in every judged cluster, the proven records of the devices
  outside L and outside the free ones can be paired (next side to prev side: a hop within
  ``[lo, hi]`` to the device the record names, naming back; or one device's ingress-only then
  egress-only record within ``[0, hi]``) so that every claim naming a device that is truthful and
  cannot have missed it is paired, and every egress-only record of a device that cannot have missed
  the ingress is paired; and no such record is one a truthful device cannot write;
- faulty with L: L, the route devices a truthful record shows sending the flow off their agreed
  successor, and the devices their own evidence convicts;
- named: the devices their own evidence convicts, and, when some L with at most f owners is
  possible, the devices faulty with every possible L.
"""
import itertools
import struct

NONE = (1 << 64) - 1
OUTSIDE = 0
MAX_CLUSTER_RECORDS = 256       # larger clusters are left out of the explanations
_REC = struct.Struct(">QQQ16s8s")
_AT_FAULT = ("refused", "incomplete", "bad_evidence")


def _records(ev, ft):
    """[(t, node, p, q, pd, proven)] of the flow tag ``ft``."""
    out = []
    for blob, proven in ((ev.records, True), (ev.unanchored_records, False)):
        for off in range(0, len(blob), 48):
            t, p, q, pd, f = _REC.unpack_from(blob, off)
            if f == ft:
                out.append((t, ev.node_id, p, q, pd, proven))
    return out


def _missing(ev):
    """(capture gaps, every interval where it may lack records), unwidened."""
    gaps, ivs = [], []
    cov = ev.coverage
    if cov is not None:
        gaps = [(min(g[0], g[1]), max(g[0], g[1])) for g in cov.gaps]
        if cov.wrapped:
            ivs.append((0, NONE if cov.empty else cov.oldest_t_ns))
        if not cov.empty and cov.newest_t_ns < NONE:
            ivs.append((cov.newest_t_ns + 1, NONE))
        if cov.anchored_until_t_ns < NONE:
            ivs.append((cov.anchored_until_t_ns + 1, NONE))
    un = [struct.unpack_from(">Q", ev.unanchored_records, o)[0]
          for o in range(0, len(ev.unanchored_records), 48)]
    if un:
        ivs.append((min(un), NONE))
    return gaps, gaps + ivs


def _possible_record(x, p, q, adj):
    if p == x or q == x or (p == NONE and q == NONE):
        return False
    if adj is None:
        return True
    ns = adj.get(x, set())
    return (p in (OUTSIDE, NONE) or p in ns) and (q in (OUTSIDE, NONE) or q in ns)


def _pairings(cands, i=0, used=frozenset()):
    """Every partial pairing: for next side i, nothing or one unused compatible prev side."""
    if i == len(cands):
        yield {}
        return
    left, rights = cands[i]
    for rest in _pairings(cands, i + 1, used):
        yield rest
    for r in rights:
        if r in used:
            continue
        for rest in _pairings(cands, i + 1, used | {r}):
            if r in rest.values():
                continue
            out = dict(rest)
            out[left] = r
            yield out


def _cluster_possible(cl, liars, free, allow, region, adj, lo, hi):
    truthful = [r for r in cl if r[1] not in liars and r[1] not in free and r[5]]
    for t, x, p, q, _, _ in truthful:
        if not _possible_record(x, p, q, adj):
            return False

    def loose(y):
        return y in liars or y in free or y in allow or y not in region

    n = len(truthful)
    cands = []
    for i in range(n):
        t, x, p, q = truthful[i][:4]
        rights = []
        for j in range(n):
            if i == j:
                continue
            tj, y, pj, qj = truthful[j][:4]
            if q not in (OUTSIDE, NONE) and y == q and pj == x and lo <= tj - t <= hi:
                rights.append(j)
            if (q == NONE and p != NONE and y == x and pj == NONE and qj != NONE
                    and 0 <= tj - t <= hi):
                rights.append(j)
        cands.append((i, rights))
    must_left = {i for i in range(n) if truthful[i][3] not in (OUTSIDE, NONE)
                 and not loose(truthful[i][3])}
    must_right = {j for j in range(n)
                  if (truthful[j][2] == NONE and truthful[j][1] not in allow)
                  or (truthful[j][2] not in (OUTSIDE, NONE) and not loose(truthful[j][2]))}
    for pairing in _pairings(cands):
        if must_left <= set(pairing) and must_right <= set(pairing.values()):
            return True
    return False


def _greedy_joins(ins, outs, hi):
    """The canonical pairing of one device's ingress-only and egress-only records of one packet
    (both sorted by time): each ingress in turn with the earliest egress at or after it that is
    still free, when it is within ``hi``; an egress passed over is never taken later. Returns the
    set of (ingress index, egress index) pairs."""
    pairs, k = set(), 0
    for i, t in enumerate(ins):
        while k < len(outs) and outs[k] < t:
            k += 1
        if k < len(outs) and outs[k] - t <= hi:
            pairs.add((i, k))
            k += 1
    return pairs


def _coverage_contradiction(ev, tolerance):
    cov = ev.coverage
    ts = [t for t, *_ in _all_records(ev)]
    if cov is None or not ts:
        return False
    if cov.empty or cov.oldest_t_ns > min(ts) + tolerance:
        return True
    if cov.newest_t_ns < NONE and max(ts) > cov.newest_t_ns + tolerance:
        return True
    proven = [struct.unpack_from(">Q", ev.records, o)[0] for o in range(0, len(ev.records), 48)]
    return bool(proven) and cov.anchored_until_t_ns < NONE and \
        max(proven) > cov.anchored_until_t_ns + tolerance


def _all_records(ev):
    out = []
    for blob in (ev.records, ev.unanchored_records):
        for off in range(0, len(blob), 48):
            out.append(_REC.unpack_from(blob, off))
    return out


def _drops_gaps(ev, a, b):
    """A device's kernel-drops gaps (reason 1) of its coverage that meet ``[a, b]``:
    ``[(lo, hi, frames)]``."""
    cov = ev.coverage
    if cov is None or ev.status != "answered":
        return []
    return [(min(g[0], g[1]), max(g[0], g[1]), g[2]) for g in cov.gaps
            if len(g) >= 4 and g[3] == 1 and min(g[0], g[1]) <= b and max(g[0], g[1]) >= a]


def reference(sla, from_ns, to_ns, evidence, *, topology, owners, f, hash_name, lo, hi,
              receipt_gap=None, asked=None, _frames_checked=False):
    """``(named, explained)``: the set of devices the rule names and whether some liar set of at
    most f owners explains the evidence. ``receipt_gap``: devices whose receipts count more than
    their records (computed by the caller; default none); ``asked``: the interval every device
    was asked for. ValueError for a route no honest device can follow."""
    from governance.verdicts import flow_tag

    ft = flow_tag(hash_name, sla.src, sla.dst)
    route = list(sla.route)
    if len(set(route)) != len(route):
        raise ValueError(f"the agreed route {route} visits a node twice")
    succ = {}
    for k, x in enumerate(route):
        succ[x] = route[k + 1] if k + 1 < len(route) else OUTSIDE
    adj = None
    if topology is not None:
        adj = {}
        for a, b in topology:
            adj.setdefault(a, set()).add(b)
            adj.setdefault(b, set()).add(a)
        for a, b in zip(route, route[1:]):
            if b not in adj.get(a, set()):
                raise ValueError(f"the agreed route {route}: {a} -> {b} is not a link")
    region = set(evidence)
    # the frames bound: a device's kernel-drops gaps near the window, and their frames
    near = (from_ns - 2 * hi, to_ns + 2 * hi)
    dgaps = {n: _drops_gaps(ev, *near) for n, ev in evidence.items()}
    dgaps = {n: g for n, g in dgaps.items() if g}
    free = {n for n, ev in evidence.items() if ev.status == "unreachable"}
    devices = [n for n in sorted(evidence) if n not in free]
    owner = {n: owners.get(n, f"node {n}") for n in devices}
    missing = {n: _missing(ev) for n, ev in evidence.items() if ev.status == "answered"}
    if asked is not None:
        beyond = [(0, asked[0] - 1)] if asked[0] > 0 else []
        beyond += [(asked[1] + 1, NONE)] if asked[1] < NONE else []
        missing = {n: (g, ivs + beyond) for n, (g, ivs) in missing.items()}

    by_pd = {}
    for n, ev in evidence.items():
        if ev.status == "answered":
            for r in _records(ev, ft):
                by_pd.setdefault(r[4], []).append(r)
    clusters = []
    for recs in by_pd.values():
        recs.sort(key=lambda r: (r[0], r[1], r[2], r[3]))
        cur = [recs[0]]
        for r in recs[1:]:
            if r[0] - cur[-1][0] > hi:
                clusters.append(cur)
                cur = []
            cur.append(r)
        clusters.append(cur)
    judged = []
    for cl in clusters:
        if not any(from_ns <= r[0] <= to_ns for r in cl):
            continue
        a, b = cl[0][0] - hi, cl[-1][0] + hi
        allow = {n for n, (_, ivs) in missing.items()
                 if any(lo_ <= b and hi_ >= a for lo_, hi_ in ivs)}
        gap = {n for n, (ivs, _) in missing.items()
               if any(lo_ <= b and hi_ >= a for lo_, hi_ in ivs)}
        allow |= {r[1] for r in cl if not r[5]}
        judged.append((cl, allow, gap))

    def bounded(x, a, b):
        """In this cluster, x's missing intervals that meet it are its drops gaps only."""
        mine = [(g_lo, g_hi) for g_lo, g_hi, _ in dgaps.get(x, ())]
        if not any(g_lo <= b and g_hi >= a for g_lo, g_hi in mine):
            return False
        others = [iv for iv in missing[x][0] if iv not in mine] + [
            iv for iv in missing[x][1][len(missing[x][0]):]]
        return not any(o_lo <= b and o_hi >= a for o_lo, o_hi in others)

    witnessed, ingress_only = {}, {}

    # the devices' own evidence
    forced, self_faulty = set(), set()
    received, drops = {}, {}
    for n, ev in evidence.items():
        if n in free:
            continue
        if ev.status in _AT_FAULT or ev.tampered or ev.withheld or n in (receipt_gap or ()):
            forced.add(n)
        if ev.status == "answered" and _coverage_contradiction(ev, hi):
            forced.add(n)

    def inside(t):
        return from_ns <= t <= to_ns

    for cl, _, gap in judged:
        for x in {r[1] for r in cl}:
            mine = [r for r in cl if r[1] == x]
            ins = [r[0] for r in mine if r[3] == NONE and r[2] != NONE]
            outs = [r[0] for r in mine if r[2] == NONE and r[3] != NONE]
            pairs = _greedy_joins(sorted(ins), sorted(outs), hi)
            ins, outs = sorted(ins), sorted(outs)
            joined_in = {i for i, _ in pairs}
            joined_out = {k for _, k in pairs}
            received[x] = received.get(x, 0) + sum(inside(r[0]) for r in mine) - sum(
                inside(outs[k]) for k in joined_out)
            unjoined = sum(inside(ins[i]) for i in range(len(ins)) if i not in joined_in)
            if x not in gap:
                drops[x] = drops.get(x, 0) + unjoined
            elif bounded(x, cl[0][0] - hi, cl[-1][0] + hi):
                ingress_only[x] = ingress_only.get(x, 0) + unjoined
            for t, _, p, q, _, _ in mine:
                if not inside(t):
                    continue
                if not _possible_record(x, p, q, adj):
                    forced.add(x)
                if x in succ and q != NONE and q != succ[x]:
                    self_faulty.add(x)
        for x in gap:
            if x not in {r[1] for r in cl}:
                received[x] = received.get(x, 0) + 1
                before = {owners.get(r[1], f"node {r[1]}") for r in cl if r[3] == x}
                after = {owners.get(r[1], f"node {r[1]}") for r in cl if r[2] == x}
                if (bounded(x, cl[0][0] - hi, cl[-1][0] + hi) and before and after
                        and len(before | after) > 1):
                    witnessed[x] = witnessed.get(x, 0) + 1
    over_frames = {x for x, g in dgaps.items() if witnessed.get(x, 0) > sum(k for *_, k in g)}
    if over_frames and not _frames_checked:
        import dataclasses
        stripped = {}
        for n, ev in evidence.items():
            if n in over_frames:
                drop = {(g_lo, g_hi) for g_lo, g_hi, _ in dgaps[n]}
                gaps = tuple(g for g in ev.coverage.gaps if not (
                    len(g) >= 4 and g[3] == 1 and (min(g[0], g[1]), max(g[0], g[1])) in drop))
                ev = dataclasses.replace(ev, coverage=dataclasses.replace(ev.coverage,
                                                                          gaps=gaps))
            stripped[n] = ev
        return reference(sla, from_ns, to_ns, stripped, topology=topology, owners=owners, f=f,
                         hash_name=hash_name, lo=lo, hi=hi, receipt_gap=receipt_gap,
                         asked=asked, _frames_checked=True)
    for x, g in dgaps.items():
        over = ingress_only.get(x, 0) - (sum(k for *_, k in g) - witnessed.get(x, 0))
        if over > 0:
            drops[x] = drops.get(x, 0) + over
    for x in succ:
        d = drops.get(x, 0)
        if d and d * 1_000_000 > sla.loss_budget_ppm * received.get(x, 0):
            self_faulty.add(x)
    forced &= set(devices)

    def deviating(liars):
        out = set()
        for cl, _, _ in judged:
            if len(cl) > MAX_CLUSTER_RECORDS:
                continue
            for t, x, p, q, _, proven in cl:
                if x in liars or x in free or not proven:
                    continue
                if x in succ and q != NONE and q != succ[x]:
                    out.add(x)
                if p in succ and p not in free and x != succ[p]:
                    out.add(p)
        return out

    optional = [n for n in devices if n not in forced]
    faulty_sets = []
    for size in range(len(optional) + 1):
        for extra in itertools.combinations(optional, size):
            liars = forced | set(extra)
            if len({owner[n] for n in liars}) > f:
                continue
            if all(_cluster_possible(cl, liars, free, allow, region, adj, lo, hi)
                   for cl, allow, _ in judged if len(cl) <= MAX_CLUSTER_RECORDS):
                faulty_sets.append(liars | deviating(liars) | self_faulty)
    named = set(forced) | self_faulty
    if faulty_sets:
        named |= set.intersection(*faulty_sets)
    return named & set(devices), bool(faulty_sets)
