"""The judgement's rule: a device is named only if it is at fault in every explanation of the
evidence (docs/threat-model.md has the model, the guarantee and why it holds).

Terms, as the threat model uses them:

- An **explanation** is a set ``L`` of lying devices, of at most ``f`` owners, and a world (the
  true walk of every packet) in which every other device that gave evidence recorded the truth.
  A truthful device misses an observation only where it says it may have (``allow``: its
  declared capture gaps, records not closed or not anchored yet, outside its ring).
- **Free** devices gave no evidence (unreachable, not interrogated): they constrain nothing and
  are never named. A claim naming a liar, a free device, a device that may have missed the packet
  or a device outside the interrogated region needs no record there.
- A device is **faulty** in an explanation when it lies (it is in ``L``) or when the world shows it
  misbehaving: a route device that sent the flow to another next hop than its agreed successor
  (its own truthful record, or a truthful neighbour's record that the packet came from it).

The evidence of one packet digest within one hop delay (a *cluster*) is reduced to a **pattern**:
its records ``(node, prev_id, next_id)`` in time order and the links their times allow (a *hop*
``i -> j``: j's device is i's next_id, j's prev_id is i's device, ``lo <= t_j - t_i <= hi``; a
*join* ``i -> j``: one device's ingress-only record i and egress-only record j of one passage,
``0 <= t_j - t_i <= hi``), with the devices that may have missed it. Millions of packets make a
handful of patterns; every question below is asked per pattern, never per packet.

Is a pattern possible with liars ``L``? The truthful records must pair up: every claim that names
a truthful device that cannot have missed the packet needs that device's record of the same
passage (its next_id side matched to the other's prev_id side, one to one), and an egress-only
record of a device that cannot have missed the ingress needs its ingress-only record. That is a
bipartite matching that must cover two sets of vertices; by the Mendelsohn-Dulmage theorem one
matching covers both exactly when one covers each, so two augmenting-path searches decide it.

``Judge`` answers for the whole window: which owner sets explain all patterns, which devices are
faulty in every explanation, the minimal explanations (the report's "r2; or r3 and r5 together"),
and, when nothing explains the evidence with at most ``f`` owners, the smallest sets that would.
"""
import itertools

from fastpath.output import NONE

__all__ = ["OUTSIDE", "HOP", "JOIN", "MAX_CLUSTER_RECORDS", "pattern", "chain_pattern",
           "feasible", "deviators", "liars_needed", "Judge", "Explanation"]

OUTSIDE = 0
HOP, JOIN = 1, 2
_ENDS = (OUTSIDE, NONE)
# A cluster of more records than this (one packet repeated hundreds of times within a hop delay)
# is left out of the explanations: the rule asks less of the evidence, never more (it can only
# name fewer devices); the devices' own records in it still count against them.
MAX_CLUSTER_RECORDS = 256


def pattern(recs, lo, hi, allow=frozenset()):
    """The pattern of one cluster: ``recs`` its records ``(t_ns, node, prev_id, next_id)`` sorted
    by time; ``allow`` the devices that may have missed it. Returns ``(cells, edges, allow)``:
    ``cells`` the ``(node, prev_id, next_id)`` in order, ``edges`` the ``(i, j)`` links their times
    allow (module doc), sorted."""
    by_node = {}
    for k, r in enumerate(recs):
        by_node.setdefault(r[1], []).append(k)
    edges = []
    for i, (t, x, p, q) in enumerate(recs):
        if q not in _ENDS:
            for j in by_node.get(q, ()):
                tj, _, pj, _ = recs[j]
                if pj == x and j != i and lo <= tj - t <= hi:
                    edges.append((i, j))
        elif q == NONE and p != NONE:
            for j in by_node[x]:
                tj, _, pj, qj = recs[j]
                if pj == NONE and qj != NONE and 0 <= tj - t <= hi:
                    edges.append((i, j))
    return (tuple((r[1], r[2], r[3]) for r in recs), tuple(sorted(edges)), frozenset(allow))


_CHAIN_EDGES = {}


def chain_pattern(nodes, entry_prev_id, exit_next_id, allow=frozenset()):
    """The pattern of a clean chain of distinct devices (each record's next_id the next record's
    device and its prev_id the previous one's, each hop's time within the bounds): the same value
    ``pattern`` gives for it, built without looking at the records again."""
    n = len(nodes)
    cells = tuple((x, nodes[k - 1] if k else entry_prev_id, nodes[k + 1] if k + 1 < n
                   else exit_next_id) for k, x in enumerate(nodes))
    edges = _CHAIN_EDGES.get(n)
    if edges is None:
        edges = _CHAIN_EDGES[n] = tuple((k, k + 1) for k in range(n - 1))
    return cells, edges, frozenset(allow)


def _saturates(must, adj):
    """Whether a matching of the bipartite graph ``adj`` (left vertex -> right vertices) covers
    every left vertex in ``must`` (Kuhn's augmenting paths, searched with an explicit stack: no
    recursion however long a path)."""
    owner = {}                          # right vertex -> left vertex matched to it
    for root in must:
        seen = set()
        # stack of (left vertex, iterator over its right vertices); parent right vertex of each
        stack = [(root, iter(adj.get(root, ())))]
        via = []                        # the right vertex taken to reach stack[k + 1]
        found = False
        while stack:
            u, it = stack[-1]
            for v in it:
                if v in seen:
                    continue
                seen.add(v)
                w = owner.get(v)
                if w is None:           # a free right vertex: flip the path back to the root
                    via.append(v)
                    for (left, _), right in zip(stack, via):
                        owner[right] = left
                    found = True
                    break
                via.append(v)
                stack.append((w, iter(adj.get(w, ()))))
                break
            else:
                stack.pop()
                if via:
                    via.pop()
                continue
            if found:
                break
        if not found:
            return False
    return True


def _truthful_possible(x, p, q, neighbours):
    """A record a truthful device ``x`` can write (its own evidence convicts it otherwise)."""
    if p == x or q == x or (p == NONE and q == NONE):
        return False
    if neighbours is None:
        return True
    adj = neighbours.get(x, ())
    return (p in _ENDS or p in adj) and (q in _ENDS or q in adj)


def feasible(pat, liars, free=frozenset(), region=None, neighbours=None):
    """Whether the pattern ``pat`` can happen with the devices ``liars`` lying (module doc).
    ``free``: devices without evidence; ``region``: the devices interrogated (a claim naming one
    outside it needs no record; ``None``: every device is in it); ``neighbours``: registered
    adjacency ``{node: set}`` (``None``: not checked)."""
    cells, edges, allow = pat
    truthful = [k for k, (x, _, _) in enumerate(cells) if x not in liars and x not in free]
    if not truthful:
        return True

    def loose(y):
        return y in liars or y in free or y in allow or (region is not None and y not in region)

    must_next, must_prev = [], []
    for k in truthful:
        x, p, q = cells[k]
        if not _truthful_possible(x, p, q, neighbours):
            return False
        if q not in _ENDS and not loose(q):
            must_next.append(k)
        if (p == NONE and x not in allow) or (p not in _ENDS and not loose(p)):
            must_prev.append(k)
    if not must_next and not must_prev:
        return True
    t = set(truthful)
    fwd, back = {}, {}
    for i, j in edges:
        if i in t and j in t:
            fwd.setdefault(i, []).append(j)
            back.setdefault(j, []).append(i)
    return _saturates(must_next, fwd) and _saturates(must_prev, back)


def deviators(pat, liars, free, succ):
    """The route devices the truthful records of ``pat`` show sending it elsewhere than their
    agreed successor (``succ``: route device -> next route device, 0 after the last): a truthful
    device's own record, or a truthful device's record that it came from a route device."""
    out = set()
    for x, p, q in pat[0]:
        if x in liars or x in free:
            continue
        s = succ.get(x)
        if s is not None and q != NONE and q != s:
            out.add(x)
        s = succ.get(p)
        if s is not None and p not in free and x != s:
            out.add(p)
    return out


def liars_needed(pat, node, liars, free, region, neighbours):
    """Whether ``pat`` is possible with ``liars`` but not once ``node`` tells the truth."""
    return (feasible(pat, liars, free, region, neighbours)
            and not feasible(pat, liars - {node}, free, region, neighbours))


class Explanation:
    """One minimal explanation: ``liars`` (devices), their ``owners``, and ``faulty`` (the liars,
    the route devices the world shows deviating, and the devices their own records convict)."""

    __slots__ = ("liars", "owners", "faulty")

    def __init__(self, liars, owners, faulty):
        self.liars, self.owners, self.faulty = liars, owners, faulty

    def __repr__(self):
        return f"Explanation(liars={sorted(self.liars)}, faulty={sorted(self.faulty)})"


class Judge:
    """The rule over the window's patterns.

    ``patterns``: ``{pattern: packets}``; ``devices``: the devices that gave evidence (candidates
    for lying); ``owners``: ``{node: owner}``; ``succ``: the agreed successor of each route device;
    ``free``: devices without evidence; ``forced``: devices whose own evidence makes them liars in
    every explanation (tampered, withheld, refused, records no truthful device writes);
    ``self_faulty``: devices their own records convict of a forwarding fault (a deviation, drops
    beyond the budget); ``region``/``neighbours`` as ``feasible``; ``f``: lying owners at most.
    """

    MAX_SUBSET_DEVICES = 10         # minimal explanations enumerated below this many per owner set
    MAX_CANDIDATE_SETS = 4096       # owner sets tried beyond f when nothing explains the evidence

    def __init__(self, patterns, devices, owners, succ, *, free=frozenset(), forced=frozenset(),
                 self_faulty=frozenset(), region=None, neighbours=None, f=1):
        if isinstance(f, bool) or not isinstance(f, int) or f < 0:
            raise ValueError(f"f must be an integer >= 0, got {f!r}")
        self.patterns = list(patterns.items()) if isinstance(patterns, dict) else list(patterns)
        self.devices = frozenset(devices)
        self.owners = {d: owners.get(d, f"node {d}") for d in self.devices}
        self.succ = dict(succ)
        self.free = frozenset(free)
        self.forced = frozenset(forced) & self.devices
        self.self_faulty = frozenset(self_faulty)
        self.region = None if region is None else frozenset(region)
        self.neighbours = neighbours
        self.f = f
        self._nodes = []
        for (cells, _, _), _ in self.patterns:
            ns = set()
            for x, p, q in cells:
                ns.update((x, p, q))
            self._nodes.append(frozenset(ns & self.devices))
        self._feasible = {}
        self._admissible = {}
        self._deviators = {}

    # -- one liar set --

    def feasible(self, k, liars):
        key = (k, liars & self._nodes[k])
        v = self._feasible.get(key)
        if v is None:
            v = self._feasible[key] = feasible(self.patterns[k][0], key[1], self.free,
                                               self.region, self.neighbours)
        return v

    def admissible(self, liars):
        """Whether every pattern is possible with these liars (frozenset)."""
        v = self._admissible.get(liars)
        if v is None:
            v = self._admissible[liars] = all(self.feasible(k, liars)
                                              for k in range(len(self.patterns)))
        return v

    def deviators(self, liars):
        v = self._deviators.get(liars)
        if v is None:
            v = set()
            for pat, _ in self.patterns:
                v |= deviators(pat, liars, self.free, self.succ)
            v = self._deviators[liars] = frozenset(v)
        return v

    def faulty(self, liars):
        return frozenset(liars) | self.deviators(liars) | self.self_faulty

    # -- owner sets --

    def _owner_devices(self, owners):
        return frozenset(d for d in self.devices if self.owners[d] in owners) | self.forced

    def owner_sets(self, f=None):
        """The owner sets of at most ``f`` owners (default the Judge's) that can lie: every one
        includes the owners of the forced liars. Yields ``(owners, devices)``."""
        f = self.f if f is None else f
        base = frozenset(self.owners[d] for d in self.forced)
        if len(base) > f:
            return
        others = sorted(set(self.owners.values()) - base)
        for size in range(0, min(f - len(base), len(others)) + 1):
            for extra in itertools.combinations(others, size):
                owners = base | frozenset(extra)
                yield owners, self._owner_devices(owners)

    def explained(self):
        """The owner sets (at most f owners) whose devices lying explains the evidence:
        ``[(owners, devices)]``."""
        return [(o, ds) for o, ds in self.owner_sets() if self.admissible(ds)]

    # -- the rule --

    def named(self):
        """``{device: (liar, deviation)}``: the devices faulty in every explanation with at most
        ``f`` lying owners (``forced`` ones only when every explanation shows them deviating too;
        ``self_faulty`` ones when an explanation-based kind holds for them). ``liar``: it lies in every explanation (its
        truth is impossible there); ``deviation``: every explanation shows it deviating (as a
        liar or truthful); a device faulty in every explanation with neither holding in all is
        named with both False. Empty when nothing explains the evidence (then only the devices'
        own evidence names anyone)."""
        sets = self.explained()
        if not sets:
            return {}
        out = {}
        for d in sorted(self.forced):        # liars everywhere: do they deviate everywhere too?
            if all(d in self.deviators(ds) for _, ds in sets):
                out[d] = (True, True)
        for d in sorted(self.devices - self.forced):
            liar_all = dev_all = True
            for _, ds in sets:
                if d in ds:
                    rest = ds - {d}
                    if not self.admissible(rest):
                        dev_all = dev_all and d in self.deviators(ds)
                    elif d in self.deviators(rest):
                        liar_all = False
                    else:
                        break
                elif d in self.deviators(ds):
                    liar_all = False
                else:
                    break
            else:
                out[d] = (liar_all, dev_all)
        return out

    def _minimal(self, sets):
        """Minimal liar sets within each owner set's devices (subsets by size, forced included)."""
        found = []
        for owners, ds in sets:
            optional = sorted(ds - self.forced)
            if len(optional) > self.MAX_SUBSET_DEVICES:
                candidates = [ds]
            else:
                candidates = (self.forced | frozenset(c) for size in range(len(optional) + 1)
                              for c in itertools.combinations(optional, size))
            for liars in candidates:
                if any(m <= liars for m in found):
                    continue
                if self.admissible(liars):
                    found.append(liars)
        minimal = [m for m in found if not any(o < m for o in found)]
        minimal.sort(key=lambda s: (len(s), sorted(s)))
        return [Explanation(m, frozenset(self.owners[d] for d in m), self.faulty(m))
                for m in dict.fromkeys(minimal)]

    def explanations(self):
        """The minimal explanations with at most ``f`` lying owners."""
        return self._minimal(self.explained())

    def candidates(self, most=None):
        """When nothing explains the evidence with at most ``f`` owners: the minimal explanations
        with the fewest owners that do, trying f+1, f+2, ... up to ``most`` owners (default: all
        owners). ``(owners needed or None, [Explanation])``."""
        n_owners = len(set(self.owners.values()))
        most = n_owners if most is None else min(most, n_owners)
        tried = 0
        for f in range(self.f + 1, most + 1):
            sets = []
            for o, ds in self.owner_sets(f):
                tried += 1
                if tried > self.MAX_CANDIDATE_SETS:
                    return None, []
                if len(o) == f and self.admissible(ds):
                    sets.append((o, ds))
            if sets:
                return f, self._minimal(sets)
        return None, []
