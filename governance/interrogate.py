"""``beatctl interrogate``: the Interrogation Protocol end to end (docs/architecture.md,
docs/threat-model.md).

1. the SLA's agreed route and flow (src, dst) from the ledger, the flow tag ``FT`` from them; the
   registered topology (links on the ledger, else ``[[links]]`` of the configuration: adjacency is
   never taken from what a suspect's records name) and every device's owner (the ledger);
2. every device of the route and every registered neighbour of one, asked in parallel over gRPC
   with mutual TLS (``governance/client.py``: every chunk's signature checked against the public
   key registered on the ledger) for its proof segments holding ``FT`` in the window widened by a
   margin, its receipts of the flow and its counter report; then the registered neighbours that
   the records name, round by round (at most ``MAX_ROUNDS`` rounds and ``max_devices`` devices);
   a device that does not answer is asked again with backoff; what is left unreachable is not
   judged;
3. every segment and receipt checked against its anchored commitment (``governance/verify.py``);
4. the judgement (``governance/verdicts.py``, the rule in ``governance/explain.py``: at most
   ``f`` lying owners) and the report (``governance/report.py``);
5. the dispute on the ledger: opened (or the one given), the evidence digest recorded, the
   decision (verdict digest, the faulty devices of the route) recorded -- unless a device stayed
   unreachable (then the dispute is left open: interrogate again).

The governance's own configuration (``--config``, TOML; ``beat-lab up`` writes one)::

    [interrogation]
    ca = "/etc/beat/governance/ca.crt"       # the domain CA
    cert = "/etc/beat/governance/governance.crt"
    key = "/etc/beat/governance/governance.key"
    margin_s = 2.0                           # asked beyond the window on each side
    timeout_s = 60.0                         # per device and request
    retry_s = 30.0                           # how long a device that does not answer is retried
    [judgement]
    f = 1                                    # lying owners the verdicts withstand
    threshold_s = 3600                       # older windows are not judgeable
    gap_anchor_delay_s = 120                 # a gap record not anchored later: unanchored
    gap_tolerance_s = 10                     # T: >= 2 anchor periods (docs/threat-model.md)
    max_devices = 64                         # devices interrogated at most
    [[endpoints]]
    node_id = 1
    address = "10.199.1.2:9478"
    name = "r1"                              # optional: the label in the report
    [[links]]                                # optional: the topology when the ledger has none
    a = 1
    b = 2
"""
import concurrent.futures
import dataclasses
import os
import random
import re
import sys
import time
from array import array
from datetime import datetime, timezone

from beat_common.tomlfile import read_toml
from fastpath.output import NONE, RECORD_SIZE

from . import archive, gaps, verify
from .verdicts import (STATUS_BAD_EVIDENCE, STATUS_INCOMPLETE, STATUS_UNREACHABLE, Coverage,
                       NodeEvidence, adjacency, check_route, flow_tag, judge)

__all__ = ["GovernanceConfig", "ConfigError", "NotJudgeable", "Interrogation", "load_config",
           "parse_time", "topology_of", "collect", "interrogate", "replay", "verdict_digest",
           "record_decision"]

DEFAULT_MARGIN_S = 2.0
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRY_S = 30.0
DEFAULT_F = 1
DEFAULT_THRESHOLD_S = 3600.0
DEFAULT_MAX_DEVICES = 64
MAX_ROUNDS = 8           # registered neighbours named by records, crawled at most this deep
SETTLE_TIMEOUT_S = 60.0  # how long a judgement waits for the ledger to settle past its cutoff
MAX_CUTOFF_AHEAD_NS = 5 * 10**9   # an archive's cutoff this far ahead of the judge's clock: refused


class ConfigError(Exception):
    """The governance configuration is wrong; the message names the key and the value."""


class NotJudgeable(Exception):
    """The window cannot be judged (older than the threshold time, or no topology)."""


@dataclasses.dataclass(frozen=True)
class GovernanceConfig:
    ca: str
    cert: str
    key: str
    endpoints: dict                     # node_id -> "host:port"
    names: dict = dataclasses.field(default_factory=dict)   # node_id -> a label (optional)
    margin_s: float = DEFAULT_MARGIN_S
    timeout_s: float = DEFAULT_TIMEOUT_S
    retry_s: float = DEFAULT_RETRY_S
    links: tuple = ()                   # ((a, b), ...): the topology when the ledger has none
    f: int = DEFAULT_F
    threshold_s: float = DEFAULT_THRESHOLD_S
    max_devices: int = DEFAULT_MAX_DEVICES
    gap_anchor_delay_s: float = gaps.DEFAULT_ANCHOR_DELAY_NS / 1e9
    gap_tolerance_s: float = gaps.DEFAULT_TOLERANCE_NS / 1e9


def _number(path, where, v, *, integer=False, least=0.0, above=False):
    bad = isinstance(v, bool) or not isinstance(v, int if integer else (int, float))
    if not bad and (v < least or (above and v == least)):
        bad = True
    if bad:
        what = "an integer" if integer else "a number of seconds"
        bound = f"> {least:g}" if above else f">= {least:g}"
        raise ConfigError(f"{path}: {where}: {v!r} is not {what} {bound}")
    return v if integer else float(v)


def _node_id(path, where, v):
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= NONE - 1:
        raise ConfigError(f"{path}: {where}: {v!r} is not a node id")
    return v


def load_config(path, extra=()):
    """The governance configuration at ``path``; ``extra``: top-level tables another reader of
    the same file owns (``beatctl serve``'s ``[service]``), left alone here."""
    raw = read_toml(path, ConfigError, "governance configuration")
    unknown = sorted(set(raw) - {"interrogation", "endpoints", "links", "judgement", *extra})
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: unknown key (known: endpoints, interrogation, "
                          "judgement, links)")
    it = raw.get("interrogation", {})
    if not isinstance(it, dict):
        raise ConfigError(f"{path}: interrogation: not a table")
    known = {"ca", "cert", "key", "margin_s", "timeout_s", "retry_s"}
    bad = sorted(set(it) - known)
    if bad:
        raise ConfigError(f"{path}: interrogation.{bad[0]}: unknown key (known: "
                          f"{', '.join(sorted(known))})")
    files = {}
    for name in ("ca", "cert", "key"):
        v = it.get(name)
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{path}: interrogation.{name}: missing (a PEM file)")
        if not os.path.isfile(v):
            raise ConfigError(f'{path}: interrogation.{name}: "{v}": no such file')
        files[name] = v
    nums = {"margin_s": _number(path, "interrogation.margin_s",
                                it.get("margin_s", DEFAULT_MARGIN_S)),
            "timeout_s": _number(path, "interrogation.timeout_s",
                                 it.get("timeout_s", DEFAULT_TIMEOUT_S), above=True),
            "retry_s": _number(path, "interrogation.retry_s", it.get("retry_s", DEFAULT_RETRY_S))}
    ju = raw.get("judgement", {})
    if not isinstance(ju, dict):
        raise ConfigError(f"{path}: judgement: not a table")
    bad = sorted(set(ju) - {"f", "threshold_s", "max_devices", "gap_anchor_delay_s",
                            "gap_tolerance_s"})
    if bad:
        raise ConfigError(f"{path}: judgement.{bad[0]}: unknown key (known: f, "
                          "gap_anchor_delay_s, gap_tolerance_s, max_devices, threshold_s)")
    nums["f"] = _number(path, "judgement.f", ju.get("f", DEFAULT_F), integer=True)
    nums["gap_anchor_delay_s"] = _number(
        path, "judgement.gap_anchor_delay_s",
        ju.get("gap_anchor_delay_s", gaps.DEFAULT_ANCHOR_DELAY_NS / 1e9), above=True)
    nums["gap_tolerance_s"] = _number(
        path, "judgement.gap_tolerance_s",
        ju.get("gap_tolerance_s", gaps.DEFAULT_TOLERANCE_NS / 1e9), above=True)
    nums["threshold_s"] = _number(path, "judgement.threshold_s",
                                  ju.get("threshold_s", DEFAULT_THRESHOLD_S), above=True)
    nums["max_devices"] = _number(path, "judgement.max_devices",
                                  ju.get("max_devices", DEFAULT_MAX_DEVICES), integer=True,
                                  least=1)
    endpoints, names = {}, {}
    eps = raw.get("endpoints", [])
    if not isinstance(eps, list):
        raise ConfigError(f"{path}: endpoints: not an array of tables ([[endpoints]])")
    for i, ep in enumerate(eps):
        if not isinstance(ep, dict) or not {"node_id", "address"} <= set(ep) <= {
                "node_id", "address", "name"}:
            raise ConfigError(f"{path}: endpoints[{i}]: needs node_id and address (and "
                              "optionally name)")
        nid = _node_id(path, f"endpoints[{i}].node_id", ep["node_id"])
        addr = ep["address"]
        if not isinstance(addr, str) or not re.match(r"^.+:\d{1,5}$", addr):
            raise ConfigError(f"{path}: endpoints[{i}].address: {addr!r} is not host:port")
        if nid in endpoints:
            raise ConfigError(f"{path}: endpoints[{i}]: node_id {nid} given twice")
        endpoints[nid] = addr
        if "name" in ep:
            if not isinstance(ep["name"], str) or not ep["name"]:
                raise ConfigError(f"{path}: endpoints[{i}].name: {ep['name']!r} is not a name")
            names[nid] = ep["name"]
    links = []
    lks = raw.get("links", [])
    if not isinstance(lks, list):
        raise ConfigError(f"{path}: links: not an array of tables ([[links]])")
    for i, lk in enumerate(lks):
        if not isinstance(lk, dict) or set(lk) != {"a", "b"}:
            raise ConfigError(f"{path}: links[{i}]: needs a and b (two node ids) and nothing "
                              "else")
        a = _node_id(path, f"links[{i}].a", lk["a"])
        b = _node_id(path, f"links[{i}].b", lk["b"])
        if a == b:
            raise ConfigError(f"{path}: links[{i}]: a and b are both {a}")
        links.append((min(a, b), max(a, b)))
    return GovernanceConfig(endpoints=endpoints, names=names, links=tuple(sorted(set(links))),
                            **files, **nums)


_REL = re.compile(r"^now(?:\s*([+-])\s*(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h))?$")
_UNIT_NS = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def parse_time(text, now_ns=None, what="time"):
    """Nanoseconds since the epoch from an integer (ns), ``now``, ``now-90s`` (ns, us, ms, s, m,
    h) or an ISO 8601 time (UTC unless it names its zone)."""
    s = str(text).strip()
    if re.fullmatch(r"\d+", s):
        return int(s)
    m = _REL.match(s)
    if m:
        now = time.time_ns() if now_ns is None else now_ns
        if not m.group(1):
            return now
        delta = int(float(m.group(2)) * _UNIT_NS[m.group(3)])
        return now + delta if m.group(1) == "+" else now - delta
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a time (nanoseconds, now, now-60s, or ISO "
                         "8601 such as 2026-11-21T10:00:00Z)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * 10**9 + dt.microsecond * 1000


def _named(records, ft):
    """The node ids this device's records of FT name as neighbours.

    The records (``t_ns || prev_id || next_id || PD(16) || FT(8)``: six 8-byte words) are read as
    one array of machine words and their FT, prev_id and next_id columns taken by C-level slices;
    only the distinct (FT, prev_id, next_id) triples are looked at in Python (a per-record
    Python loop took ~1 s per million records, in series after the devices had answered)."""
    assert RECORD_SIZE == 48
    words = array("Q")
    if words.itemsize != 8:                 # not on any platform we know of; keep it correct
        return _named_slow(records, ft)
    words.frombytes(records)
    fts = words[5::6]
    if fts.tobytes() == bytes(ft) * len(fts):
        # every record is of FT (the usual answer: segments asked for FT, one flow): the distinct
        # values of the prev_id and next_id columns
        ids = set(words[1::6])
        ids.update(words[2::6])
    else:
        ft_word = int.from_bytes(ft, sys.byteorder)
        ids = set()
        for f, prev, nxt in set(zip(fts, words[1::6], words[2::6])):
            if f == ft_word:
                ids.update((prev, nxt))
    out = {int.from_bytes(w.to_bytes(8, sys.byteorder), "big") for w in ids}
    out.difference_update((0, NONE))
    return out


def _named_slow(records, ft):
    out = set()
    mv = memoryview(records)
    for off in range(0, len(records), RECORD_SIZE):
        if mv[off + 40:off + 48] == ft:
            prev = int.from_bytes(mv[off + 8:off + 16], "big")
            nxt = int.from_bytes(mv[off + 16:off + 24], "big")
            out.update((prev, nxt))
    out.difference_update((0, NONE))
    return out


def topology_of(ledger, cfg):
    """The registered links as adjacency ``{node: frozenset}``: the ledger's (``links()``) when it
    holds any, else the configuration's ``[[links]]``; NotJudgeable when neither has one."""
    links = ()
    get = getattr(ledger, "links", None)
    if get is not None:
        links = tuple(tuple(lk)[:2] for lk in get())
    if not links:
        links = cfg.links
    if not links:
        raise NotJudgeable("no topology: register the links between the devices on the ledger "
                           "(beatctl register-link) or give them as [[links]] in the governance "
                           "configuration; adjacency is never taken from the devices' records")
    return adjacency(links)


def _with_retry(fetch, retry_s, **kw):
    """``fetch()`` asked again while the device is unreachable or busy, new attempts starting for
    ``retry_s`` (governance/retry.py's backoff and classification; an attempt itself takes the
    client's own timeout, so that a long answer is never cut short). Its result, or
    ``retry.InterrogationFailed`` naming how the device failed."""
    from .retry import ask_with_retry
    return ask_with_retry(lambda _timeout: fetch(), max(retry_s, 0.001), **kw)


def _fetch(client, node_id, ledger, hash_name, sla, ft, from_ns, to_ns, margin, anchors, seed):
    """Ask one device (a live ``InterrogationClient`` or an archived one) and check its segments
    answer against its coverage, with the audit chosen by ``seed``: ``(AnswerCheck, receipts,
    counters, gap records)`` (gap records None: the device serves none). The client's errors go
    up (an audit's too)."""
    from .client import NoEvidence

    lo, hi = max(0, from_ns - margin), to_ns + margin
    answer = client.proof_answer(lo, hi, [ft])
    check = verify.check_answer(node_id, hash_name, answer.segments, answer.coverage, ledger,
                                anchors, window=(from_ns, to_ns), margin=margin, flow_tags=[ft],
                                audit=client.get_segments, rng=random.Random(seed))
    if check.audit_error is not None:
        raise check.audit_error
    gap_records = _gap_records(client, lo, hi)
    try:
        receipts = client.receipts(lo, hi, sla.src, sla.dst)
    except NoEvidence:
        receipts = []
    return check, receipts, client.counter_report(), gap_records


def _gap_records(client, lo, hi):
    """The device's gap records (docs/gap-records.md), or None when it serves none (a device
    without GetGapRecords). An archive that holds no gap records answer where one was asked is
    refused (``archive.NotRecorded``): a recorder that skipped the question would otherwise have
    the device's anchored gaps ignored."""
    import grpc

    from .client import RequestRejected
    try:
        return client.gap_records(lo, hi)
    except RequestRejected as exc:
        if exc.code == grpc.StatusCode.UNIMPLEMENTED:
            return None
        raise


def _node_evidence(node_id, hash_name, check, receipts, counters, gap_records, ledger, anchors,
                   info, gap_params):
    """The judgement's NodeEvidence of a checked answer (``info`` gets the numbers);
    ``gap_params``: ``{"asked_at_ns", "gap_anchor_delay_ns", "gap_tolerance_ns"}``
    (governance/gaps.py)."""
    rc_check = verify.verify_receipts(node_id, hash_name, receipts, ledger, anchors)
    index = getattr(check.coverage, "index", None) or ()
    declared = gaps.check_gap_records(
        node_id, hash_name, gap_records or (), anchors, asked_at_ns=gap_params["asked_at_ns"],
        anchor_delay_ns=gap_params["gap_anchor_delay_ns"],
        tolerance_ns=gap_params.get("gap_tolerance_ns", gaps.DEFAULT_TOLERANCE_NS),
        own_records=check.records + check.unanchored,
        own_index=[(e.anchor.batch_seq, e.anchor.leaf_index, e.first_t_ns, e.last_t_ns)
                   for e in index if e.anchor.anchored and e.count])
    info.update(gap_records=None if gap_records is None else len(gap_records),
                gaps_honoured=sum(g.honoured for g in declared))
    problems = list(check.problems) + list(rc_check.problems)
    info.update(segments=check.segments, receipts=len(receipts),
                records=len(check.records) // RECORD_SIZE,
                unanchored_records=len(check.unanchored) // RECORD_SIZE,
                audited=list(check.audited),
                problems=[str(p) for p in problems if p.kind != verify.UNANCHORED][:20])
    return NodeEvidence(node_id, records=check.records, unanchored_records=check.unanchored,
                        tampered=tuple(p for p in problems if p.kind == verify.TAMPERED),
                        withheld=tuple(p for p in problems if p.kind == verify.WITHHELD),
                        unanchored=sum(p.kind == verify.UNANCHORED for p in problems),
                        coverage=coverage_of(check.coverage, declared),
                        counters=tuple(counters),
                        receipts=tuple(rc_check.receipts + rc_check.unproven),
                        declared_gaps=tuple(declared))


def _classified(node_id, call):
    """``call()``'s result, or the NodeEvidence its error makes (``governance.retry.classify``):
    an incomplete answer or bad evidence is MISSING (only the device, inside its TLS session, can
    have sent it); unreachable, busy or a refused request is not judged (someone else can cause
    the first two; an honest device refuses a request beyond its documented limits)."""
    from beat_rpc.evidence import EvidenceError

    from .client import ClientError
    from .retry import BAD_EVIDENCE, INCOMPLETE, InterrogationFailed, classify
    try:
        return call(), None
    except InterrogationFailed as exc:
        kind, why = exc.classification, f"{type(exc).__name__}: {exc}"
    except (ClientError, EvidenceError) as exc:
        kind, why = classify(exc).classification, f"{type(exc).__name__}: {exc}"
        if isinstance(exc, EvidenceError) and kind is None:
            kind = BAD_EVIDENCE                 # e.g. AnswerTooLarge: beyond the caps
    status = {INCOMPLETE: STATUS_INCOMPLETE,
              BAD_EVIDENCE: STATUS_BAD_EVIDENCE}.get(kind, STATUS_UNREACHABLE)
    return None, NodeEvidence.no_answer(node_id, why, status)


def _ask(node_id, ledger, cfg, hash_name, sla, ft, from_ns, to_ns, anchors, gap_params):
    """One device's evidence, checked: ``(NodeEvidence, info, recording)``. A device the
    governance cannot reach (after retries), or that refuses the request, is not judged
    (``unreachable``); one whose answer stops before its last chunk (``incomplete``) or is not
    acceptable evidence (``bad_evidence``: a bad signature, malformed, another request's) is
    classified so here (for the crawl), and not judged in the judgement (``_unattributable``).
    ``recording``: every chunk of the last attempt, for the evidence archive."""
    from .client import InterrogationClient

    try:
        node = ledger.get_node(node_id)
    except Exception as exc:  # noqa: BLE001 (the ledger: named in the report)
        return NodeEvidence.no_answer(node_id, f"the ledger cannot say who node {node_id} is: "
                                               f"{exc}"), {}, []
    if node is None:
        return NodeEvidence.no_answer(node_id, f"node {node_id} is not registered on the "
                                               "ledger"), {}, []
    addr = cfg.endpoints.get(node_id)
    if addr is None:
        return NodeEvidence.no_answer(node_id, f"no endpoint for node {node_id} in the "
                                               "governance configuration"), {}, []
    seed = int.from_bytes(os.urandom(8), "big")      # the audit's random choice (archived)
    info = {"endpoint": addr, "attempts": 0, "audit_seed": seed}
    margin = int(cfg.margin_s * 1e9)
    recording = []

    def fetch():
        info["attempts"] += 1
        with InterrogationClient(addr, cfg.ca, cfg.cert, cfg.key, hash_name, node_id,
                                 node.pubkey, timeout=cfg.timeout_s) as client:
            recording[:] = [client.record()]
            return _fetch(client, node_id, ledger, hash_name, sla, ft, from_ns, to_ns, margin,
                          anchors, seed)

    t0 = time.monotonic()

    got, failed = _classified(node_id, lambda: _with_retry(fetch, cfg.retry_s,
                                                           what=f"node {node_id}"))
    answers = recording[0].answers if recording else []
    if failed is not None:
        return failed, info, answers
    info["seconds"] = round(time.monotonic() - t0, 3)
    return (_node_evidence(node_id, hash_name, *got, ledger, anchors, info, gap_params), info,
            answers)


def coverage_of(cov, declared=None):
    """The judgement's ``Coverage`` from a device's signed coverage (``beat_rpc.evidence``):
    what it holds, and as its capture gaps the gap records the governance honours
    (``declared``: governance/gaps.py's DeclaredGap; None: the signed coverage's own gaps, as
    before gap records). It answered every record it made up to the open
    segment's first one, or, with no open segment, up to the time of its answer (``t_ns``, the
    coverage chunk's clock); every one of them is anchored when every closed segment is and none
    is open."""
    if cov is None:
        return None
    held = cov.open_first_t_ns - 1 if cov.open_first_t_ns else max(cov.newest_t_ns, cov.t_ns)
    anchored = cov.anchored_until_t_ns
    if cov.anchored_segments >= cov.next_seg_seq and not cov.open_first_t_ns:
        anchored = held
    return Coverage(oldest_t_ns=cov.oldest_t_ns, newest_t_ns=held,
                    anchored_until_t_ns=min(anchored, held), ring_short=cov.ring_short,
                    threshold_ns=cov.threshold_ns,
                    gaps=tuple((g.from_ns, g.to_ns, g.frames_dropped, g.reason)
                               for g in (cov.gaps if declared is None else
                                         [d for d in declared if d.honoured])),
                    empty=cov.ring_empty, wrapped=cov.ring_wraps > 0)


def collect(ledger, sla, from_ns, to_ns, cfg, hash_name, workers=8, topology=None,
            asked_at_ns=None):
    """Every device's checked evidence: the route's and every registered neighbour of one, then
    the registered neighbours the records name, round by round (at most ``MAX_ROUNDS`` rounds
    and ``cfg.max_devices`` devices). Returns ``({node_id: NodeEvidence}, {node_id: {"endpoint",
    "seconds", ...}}, adjacency, {node_id: owner}, {node_id: recorded answers})``."""
    if topology is None:
        topology = topology_of(ledger, cfg)
    ft = flow_tag(hash_name, sla.src, sla.dst)
    anchors = verify.AnchorCache(ledger)
    gap_params = {"asked_at_ns": time.time_ns() if asked_at_ns is None else asked_at_ns,
                  "gap_anchor_delay_ns": int(cfg.gap_anchor_delay_s * 1e9),
                  "gap_tolerance_ns": int(cfg.gap_tolerance_s * 1e9)}
    evidence, info, recordings = {}, {}, {}
    todo = list(dict.fromkeys(sla.route))
    for x in sla.route:
        todo += sorted(topology.get(x, ()))
    todo = list(dict.fromkeys(todo))[:cfg.max_devices]
    capped = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in range(MAX_ROUNDS):
            if not todo:
                break
            futures = {n: pool.submit(_ask, n, ledger, cfg, hash_name, sla, ft, from_ns, to_ns,
                                      anchors, gap_params) for n in todo}
            named = set()
            for n, fut in futures.items():
                evidence[n], info[n], recordings[n] = fut.result()
                ev = evidence[n]
                if ev.answered:       # only registered neighbours are crawled
                    named |= (_named(ev.records, ft) | _named(ev.unanchored_records, ft)) & \
                        topology.get(n, frozenset())
            todo = sorted(named - set(evidence))
            room = cfg.max_devices - len(evidence)
            capped += todo[max(0, room):]
            todo = todo[:max(0, room)]
    if capped:
        info["capped"] = sorted(set(capped))
    owners = {}
    for n in set(evidence) | set(sla.route):
        try:
            node = ledger.get_node(n)
        except Exception:  # noqa: BLE001 (an unknown owner: the device counts as its own)
            node = None
        owners[n] = node.owner if node is not None else f"unregistered node {n}"
    return evidence, info, topology, owners, recordings


@dataclasses.dataclass
class Interrogation:
    """One interrogation: the ``judgement``, every device's ``evidence`` and ``info``, and the
    evidence archive (``manifest``, ``blobs``: governance/archive.py) whose digest the ledger
    records (``evidence_digest``)."""
    judgement: object
    evidence: dict
    info: dict
    manifest: dict
    blobs: dict

    @property
    def evidence_digest(self):
        return archive.evidence_digest(self.manifest["hash"], self.manifest)

    def write_evidence(self, path):
        archive.write(path, self.manifest, self.blobs)


def interrogate(ledger, sla_id, from_ns, to_ns, cfg, *, receipt_epoch_ns=10**9,
                max_hop_delay_ns=10**9, skew_ns=50_000_000, f=None, now_ns=None,
                settle_timeout_s=SETTLE_TIMEOUT_S):
    """Collect and judge: an ``Interrogation``. LookupError for an unknown SLA; NotJudgeable for
    a window older than the threshold time or without a topology; ``verify.NotSettled`` (a
    ValueError) when the ledger does not settle past the cutoff within ``settle_timeout_s``.

    The judgement is the replay of the evidence archive (``replay``), made once the ledger is
    settled past the cutoff ``anchors_until_ns`` (the governance's clock when the last answer is
    in, plus the skew): an anchor counts when the ledger took it by then. So a member re-judging
    the archive later, when more anchors have landed, gets the same verdict digest."""
    sla = ledger.get_sla(sla_id)
    if sla is None:
        raise LookupError(f"SLA {sla_id}: not on the ledger")
    asked = time.time_ns()              # when the devices are asked (gap records' timeliness)
    now = asked if now_ns is None else now_ns
    threshold = int(cfg.threshold_s * 1e9)
    if from_ns < now - threshold:
        raise NotJudgeable(f"window [{from_ns}, {to_ns}] starts {(now - from_ns) / 1e9:.1f} s "
                           f"ago, more than the threshold time {cfg.threshold_s:g} s: the "
                           "devices' rings need not hold it")
    hash_name = ledger.hash_name
    f = cfg.f if f is None else f
    topology = topology_of(ledger, cfg)
    try:                                # before anyone is asked anything
        check_route(sla.route, topology)
    except ValueError as exc:
        raise NotJudgeable(f"SLA {sla.sla_id}: {exc}") from None
    evidence, info, topology, owners, recordings = collect(ledger, sla, from_ns, to_ns, cfg,
                                                           hash_name, topology=topology,
                                                           asked_at_ns=asked)
    margin = int(cfg.margin_s * 1e9)
    # the cutoff: every answer is in, and an honest device answers with the anchors it had (a
    # ledger whose times are coarse or ahead of this clock says by how much: ``clock_slack_ns``)
    anchors_until = time.time_ns() + skew_ns + getattr(ledger, "clock_slack_ns", 0)
    params = {"f": f, "margin_ns": margin, "skew_ns": skew_ns,
              "max_hop_delay_ns": max_hop_delay_ns, "receipt_epoch_ns": receipt_epoch_ns,
              "asked_at_ns": asked, "gap_anchor_delay_ns": int(cfg.gap_anchor_delay_s * 1e9),
              "gap_tolerance_ns": int(cfg.gap_tolerance_s * 1e9),
              "anchors_until_ns": anchors_until}
    links = sorted({(min(a, b), max(a, b)) for a, ns in topology.items() for b in ns})
    manifest = {"format": archive.FORMAT, "hash": hash_name, "sla_id": sla.sla_id,
                "window": {"from_ns": from_ns, "to_ns": to_ns}, "params": params,
                "links": [list(lk) for lk in links],
                "owners": {str(n): o for n, o in sorted(owners.items())},
                "devices": {str(n): {"status": ev.status, "error": ev.error,
                                     "endpoint": info.get(n, {}).get("endpoint", ""),
                                     "audit_seed": info.get(n, {}).get("audit_seed", 0)}
                            for n, ev in sorted(evidence.items())}}
    manifest, blobs = archive.assemble(manifest, recordings, hash_name)
    # judged from the archive, as every member re-judging it will: the same chunks, the same
    # anchors (those the ledger took by the cutoff, once it is settled past it), the same digest
    judgement, evidence = replay(archive.from_blobs(manifest, blobs), ledger,
                                 settle_timeout_s=settle_timeout_s)
    return Interrogation(judgement, evidence, info, manifest, blobs)


def replay(arch, ledger, settle_timeout_s=SETTLE_TIMEOUT_S):
    """The judgement again, from an evidence archive (governance/archive.py) and the ledger:
    every chunk's signature checked with the key registered on the ledger, every answer against
    its coverage and the anchors the ledger took by the archive's cutoff (``anchors_until_ns``,
    waiting up to ``settle_timeout_s`` for the ledger to settle past it), the audit with its
    recorded seed, the same parameters, topology and owners. Returns ``(Judgement, evidence)``.
    LookupError when the ledger lacks the SLA; ValueError for a cutoff that is missing or cannot
    be (before the devices were asked, or in the future) and ``verify.NotSettled`` (a
    ValueError) for a ledger not settled past it in time."""
    from .archive import ArchivedClient

    m = arch.manifest
    sla = ledger.get_sla(m["sla_id"])
    if sla is None:
        raise LookupError(f"SLA {m['sla_id']}: not on the ledger")
    hash_name = m["hash"]
    if getattr(ledger, "hash_name", hash_name) != hash_name:
        raise ValueError(f"the archive hashes with {hash_name}, the ledger with "
                         f"{ledger.hash_name}")
    p = m["params"]
    from_ns, to_ns = m["window"]["from_ns"], m["window"]["to_ns"]
    ft = flow_tag(hash_name, sla.src, sla.dst)
    until = anchors_cutoff(p)
    verify.wait_settled(ledger, until, timeout_s=settle_timeout_s)
    anchors = verify.AnchorCache(ledger, until_ns=until)
    evidence = {}
    for key, dev in sorted(m["devices"].items(), key=lambda kv: int(kv[0])):
        node = int(key)
        reg = ledger.get_node(node)
        if dev["status"] == STATUS_UNREACHABLE or reg is None:
            evidence[node] = NodeEvidence.no_answer(node, dev["error"] or "not registered")
            continue
        client = ArchivedClient(arch, node, hash_name, reg.pubkey)
        got, failed = _classified(node, lambda: _fetch(
            client, node, ledger, hash_name, sla, ft, from_ns, to_ns, p["margin_ns"], anchors,
            dev["audit_seed"]))
        gap_params = {"asked_at_ns": p.get("asked_at_ns", NONE),
                      "gap_anchor_delay_ns": p.get("gap_anchor_delay_ns",
                                                   gaps.DEFAULT_ANCHOR_DELAY_NS),
                      "gap_tolerance_ns": p.get("gap_tolerance_ns",
                                                gaps.DEFAULT_TOLERANCE_NS)}
        if failed is not None and failed.status in (STATUS_INCOMPLETE, STATUS_BAD_EVIDENCE):
            failed = _unattributable(failed)
        evidence[node] = failed if failed is not None else _node_evidence(
            node, hash_name, *got, ledger, anchors, {}, gap_params)
    judgement = _judge(sla, from_ns, to_ns, evidence, _checked_links(m, ledger, sla),
                       _checked_owners(m, ledger, sla), p, hash_name)
    return judgement, evidence


def _checked_links(m, ledger, sla):
    """The archive's links, which must hold every link the ledger registers between its devices
    (a recorder leaving one out makes the honest passages over it look fabricated). A link the
    ledger retired since may stay; one it registered since makes the archive too old (refused:
    interrogate again). A ledger without links (the topology of the governance's configuration)
    is not checked. ValueError names the first missing link."""
    links = [tuple(lk) for lk in m["links"]]
    get = getattr(ledger, "links", None)
    registered = [tuple(lk)[:2] for lk in get()] if get is not None else []
    nodes = {int(k) for k in m["devices"]} | set(sla.route)
    have = {(min(a, b), max(a, b)) for a, b in links}
    for a, b in sorted((min(a, b), max(a, b)) for a, b in registered):
        if a in nodes and b in nodes and (a, b) not in have:
            raise ValueError(f"the archive's links leave out {a}-{b}, registered on the ledger "
                             "(or registered since it was written: interrogate again)")
    return links


def _checked_owners(m, ledger, sla):
    """The archive's owners, which must be the ledger's (a node's owner is fixed when it is
    registered): whoever recorded the archive could otherwise join an honest device to a liar's
    owner and change the explanations. ValueError names the first that differs."""
    owners = {int(k): v for k, v in m["owners"].items()}
    expected = {int(k) for k in m["devices"]} | set(sla.route)
    if set(owners) != expected:
        raise ValueError(f"the archive's owners are of nodes {sorted(owners)}, its devices and "
                         f"route are {sorted(expected)}")
    for n, claimed in sorted(owners.items()):
        node = ledger.get_node(n)
        real = node.owner if node is not None else f"unregistered node {n}"
        if claimed != real:
            raise ValueError(f"the archive says node {n} is owned by {claimed!r}, the ledger "
                             f"{real!r}")
    return owners


def _unattributable(failed):
    """An archived answer cut short, or with a chunk that does not verify with the device's key,
    carries another request's digest or goes beyond the caps: whoever recorded the archive could
    have made it so (truncated it, flipped a byte, spliced in the device's chunks of another
    request), so it proves nothing against the device: not judged, as a device that did not
    answer (docs/threat-model.md, "What an archive proves")."""
    return NodeEvidence.no_answer(
        failed.node_id, f"{failed.error} (not evidence against the device: an archived answer "
                        "that is cut short or does not verify could have been made so by whoever "
                        "recorded it)", STATUS_UNREACHABLE)


def anchors_cutoff(params, now_ns=None):
    """The archive's ``anchors_until_ns``, checked: there, a whole number, not before the
    devices were asked (``asked_at_ns``), not ahead of this clock by more than
    ``MAX_CUTOFF_AHEAD_NS``. ValueError names what is wrong."""
    until = params.get("anchors_until_ns")
    if until is None:
        raise ValueError("the archive has no anchors_until_ns (the cutoff of the anchors that "
                         "count): its judgement would depend on when it is made; interrogate "
                         "again")
    if not isinstance(until, int) or isinstance(until, bool) or until < 0:
        raise ValueError(f"anchors_until_ns {until!r}: not a time in ns")
    asked = params.get("asked_at_ns")
    if isinstance(asked, int) and asked != NONE and until < asked:
        raise ValueError(f"anchors_until_ns {until} is before asked_at_ns {asked}: the cutoff "
                         "cannot precede the question")
    now = time.time_ns() if now_ns is None else now_ns
    if until > now + MAX_CUTOFF_AHEAD_NS:
        raise ValueError(f"anchors_until_ns {until} is {(until - now) / 1e9:.0f} s ahead of this "
                         "clock: not judged (a cutoff in the future)")
    return until


def _judge(sla, from_ns, to_ns, evidence, topology, owners, params, hash_name):
    """verdicts.judge with an interrogation's parameters: every device was asked for the window
    widened by the margin. NotJudgeable for an agreed route no honest device can follow."""
    margin = params["margin_ns"]
    try:
        return judge(sla, from_ns, to_ns, evidence, topology=topology, owners=owners,
                     f=params["f"], hash_name=hash_name,
                     max_hop_delay_ns=params["max_hop_delay_ns"], skew_ns=params["skew_ns"],
                     receipt_epoch_ns=params["receipt_epoch_ns"],
                     asked=(max(0, from_ns - margin), to_ns + margin))
    except ValueError as exc:
        if "agreed route" in str(exc):
            raise NotJudgeable(f"SLA {sla.sla_id}: {exc}") from None
        raise


# -- the dispute on the ledger --------------------------------------------------------------------

def verdict_digest(judgement, evidence_digest):
    """``H`` over the canonical JSON of the decision: the SLA, the window, each device's
    verdict, the digest of the whole judgement (report.to_dict: every reason, count, path and
    explanation) and the evidence digest (the archive of signed chunks it was judged from)."""
    from fastpath.hashes import constructor

    from .report import canonical_json, evidence_digest as judgement_digest
    body = {"format": "beat-verdict-v2", "sla_id": judgement.sla.sla_id,
            "from_ns": judgement.from_ns, "to_ns": judgement.to_ns,
            "verdicts": {str(n): d.verdict for n, d in judgement.devices.items()},
            "judgement_digest": judgement_digest(judgement).hex(),
            "evidence_digest": evidence_digest.hex()}
    return constructor(judgement.hash_name)(canonical_json(body)).digest()


def record_decision(ledger, judgement, evidence_digest, signer, dispute_id=None):
    """Open the dispute (unless ``dispute_id`` names one already opened) and decide it: the
    evidence digest, the verdict digest and the faulty devices of the agreed route (the ledger
    accepts only those; others named faulty are in the report). A committee of one (k = 1)
    records the evidence and decides, as before; with k > 1 this is the signer's approval of that
    content (docs/ledger.md, "The committee"): the decision executes, and settles, at the k-th
    member approving the same content. Returns a dict of what was written."""
    sla = judgement.sla
    if dispute_id is None:
        dispute_id = ledger.open_dispute(sla.sla_id, judgement.from_ns, judgement.to_ns,
                                         signer=signer)
    route = set(sla.route)
    faulty = tuple(n for n in judgement.faulty if n in route)
    vd = verdict_digest(judgement, evidence_digest)
    committee = getattr(ledger, "committee", None)
    k = committee().k if committee is not None else 1
    if k == 1:
        ledger.record_evidence(dispute_id, evidence_digest, signer=signer)
        ledger.decide(dispute_id, vd, faulty, signer=signer)
    else:
        ledger.approve_decision(dispute_id, evidence_digest, vd, faulty, signer=signer)
    d = ledger.get_dispute(dispute_id)
    return {"dispute_id": dispute_id, "evidence_digest": evidence_digest.hex(),
            "verdict_digest": vd.hex(), "faulty": list(faulty),
            "state": getattr(d, "state", None), "penalty": getattr(d, "penalty", None),
            "threshold": k}
