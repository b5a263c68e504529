"""``beatctl interrogate``: the Interrogation Protocol end to end (ARCHITECTURE.md).

1. the SLA's agreed route and flow (src, dst) from the ledger, the flow tag ``FT`` from them;
2. every device of the route, then every device the proofs name (``prev_id``/``next_id``), asked in
   parallel over gRPC with mutual TLS (``governance/client.py``: every chunk's signature checked
   against the public key registered on the ledger) for its proof segments holding ``FT`` in the
   window widened by a margin, its receipts of the flow and its counter report;
3. every segment and receipt checked against its anchored commitment (``governance/verify.py``);
4. the judgement (``governance/verdicts.py``) and the report (``governance/report.py``);
5. the dispute on the ledger: opened (or the one given), the evidence digest recorded, the
   decision (verdict digest, the faulty devices of the route) recorded.

The governance's own configuration (``--config``, TOML; ``beatd lab up`` writes one)::

    [interrogation]
    ca = "/etc/beat/governance/ca.crt"       # the domain CA
    cert = "/etc/beat/governance/governance.crt"
    key = "/etc/beat/governance/governance.key"
    margin_s = 2.0                           # asked beyond the window on each side
    timeout_s = 60.0                         # per device
    [[endpoints]]
    node_id = 1
    address = "10.199.1.2:9478"
    name = "r1"                              # optional: the label in the report
"""
import concurrent.futures
import dataclasses
import os
import re
import sys
import time
from array import array
from datetime import datetime, timezone

from beatd.tomlfile import read_toml
from fastpath.output import NONE, RECORD_SIZE

from . import verify
from .verdicts import NodeEvidence, flow_tag, judge

__all__ = ["GovernanceConfig", "ConfigError", "load_config", "parse_time", "collect",
           "interrogate"]

DEFAULT_MARGIN_S = 2.0
DEFAULT_TIMEOUT_S = 60.0
MAX_ROUNDS = 8           # neighbours of neighbours... at most this deep


class ConfigError(Exception):
    """The governance configuration is wrong; the message names the key and the value."""


@dataclasses.dataclass(frozen=True)
class GovernanceConfig:
    ca: str
    cert: str
    key: str
    endpoints: dict                     # node_id -> "host:port"
    names: dict = dataclasses.field(default_factory=dict)   # node_id -> a label (optional)
    margin_s: float = DEFAULT_MARGIN_S
    timeout_s: float = DEFAULT_TIMEOUT_S


def load_config(path):
    raw = read_toml(path, ConfigError, "governance configuration")
    unknown = sorted(set(raw) - {"interrogation", "endpoints"})
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: unknown key (known: endpoints, interrogation)")
    it = raw.get("interrogation", {})
    if not isinstance(it, dict):
        raise ConfigError(f"{path}: interrogation: not a table")
    known = {"ca", "cert", "key", "margin_s", "timeout_s"}
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
    nums = {}
    for name, default in (("margin_s", DEFAULT_MARGIN_S), ("timeout_s", DEFAULT_TIMEOUT_S)):
        v = it.get(name, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (
                name == "timeout_s" and v == 0):
            raise ConfigError(f"{path}: interrogation.{name}: {v!r} is not a number of seconds")
        nums[name] = float(v)
    endpoints, names = {}, {}
    eps = raw.get("endpoints", [])
    if not isinstance(eps, list):
        raise ConfigError(f"{path}: endpoints: not an array of tables ([[endpoints]])")
    for i, ep in enumerate(eps):
        if not isinstance(ep, dict) or not {"node_id", "address"} <= set(ep) <= {
                "node_id", "address", "name"}:
            raise ConfigError(f"{path}: endpoints[{i}]: needs node_id and address (and "
                              "optionally name)")
        nid, addr = ep["node_id"], ep["address"]
        if isinstance(nid, bool) or not isinstance(nid, int) or not 1 <= nid <= NONE - 1:
            raise ConfigError(f"{path}: endpoints[{i}].node_id: {nid!r} is not a node id")
        if not isinstance(addr, str) or not re.match(r"^.+:\d{1,5}$", addr):
            raise ConfigError(f"{path}: endpoints[{i}].address: {addr!r} is not host:port")
        if nid in endpoints:
            raise ConfigError(f"{path}: endpoints[{i}]: node_id {nid} given twice")
        endpoints[nid] = addr
        if "name" in ep:
            if not isinstance(ep["name"], str) or not ep["name"]:
                raise ConfigError(f"{path}: endpoints[{i}].name: {ep['name']!r} is not a name")
            names[nid] = ep["name"]
    return GovernanceConfig(endpoints=endpoints, names=names, **files, **nums)


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


def _ask(node_id, ledger, cfg, hash_name, sla, ft, lo, hi, anchors):
    """One device's evidence, checked: a NodeEvidence (no_answer when it could not be had)."""
    from beat_rpc.evidence import EvidenceError

    from .client import ClientError, InterrogationClient, NoEvidence

    try:
        node = ledger.get_node(node_id)
    except Exception as exc:  # noqa: BLE001 (the ledger: named in the report)
        return NodeEvidence.no_answer(node_id, f"the ledger cannot say who node {node_id} is: "
                                               f"{exc}"), {}
    if node is None:
        return NodeEvidence.no_answer(node_id, f"node {node_id} is not registered on the "
                                               "ledger"), {}
    addr = cfg.endpoints.get(node_id)
    if addr is None:
        return NodeEvidence.no_answer(node_id, f"no endpoint for node {node_id} in the "
                                               "governance configuration"), {}
    info = {"endpoint": addr}
    try:
        with InterrogationClient(addr, cfg.ca, cfg.cert, cfg.key, hash_name, node_id,
                                 node.pubkey, timeout=cfg.timeout_s) as client:
            t0 = time.monotonic()
            try:
                segments = client.proof_segments(lo, hi, [ft])
            except NoEvidence:
                segments = []
            try:
                receipts = client.receipts(lo, hi, sla.src, sla.dst)
            except NoEvidence:
                receipts = []
            counters = client.counter_report()
            info["seconds"] = round(time.monotonic() - t0, 3)
    except (ClientError, EvidenceError) as exc:
        return NodeEvidence.no_answer(node_id, f"{type(exc).__name__}: {exc}"), info
    seg_check = verify.verify_segments(node_id, hash_name, segments, ledger, anchors)
    rc_check = verify.verify_receipts(node_id, hash_name, receipts, ledger, anchors)
    info.update(segments=len(segments), receipts=len(receipts),
                records=sum(len(s.records) for s in segments) // RECORD_SIZE)
    return NodeEvidence.from_checks(seg_check, rc_check, counters), info


def collect(ledger, sla, from_ns, to_ns, cfg, hash_name, workers=8):
    """Every device's checked evidence: the route's, then the devices the proofs name, round by
    round. Returns ({node_id: NodeEvidence}, {node_id: {"endpoint", "seconds", ...}})."""
    ft = flow_tag(hash_name, sla.src, sla.dst)
    margin = int(cfg.margin_s * 1e9)
    lo, hi = max(0, from_ns - margin), to_ns + margin
    anchors = verify.AnchorCache(ledger)
    evidence, info = {}, {}
    todo = list(dict.fromkeys(sla.route))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in range(MAX_ROUNDS):
            if not todo:
                break
            futures = {n: pool.submit(_ask, n, ledger, cfg, hash_name, sla, ft, lo, hi, anchors)
                       for n in todo}
            named = set()
            for n, f in futures.items():
                evidence[n], info[n] = f.result()
                named |= _named(evidence[n].records, ft)
            todo = sorted(named - set(evidence))
    return evidence, info


def interrogate(ledger, sla_id, from_ns, to_ns, cfg, *, receipt_epoch_ns=10**9,
                max_hop_delay_ns=10**9, skew_ns=50_000_000):
    """Collect and judge: (Judgement, evidence, info). Raises LookupError for an unknown SLA."""
    sla = ledger.get_sla(sla_id)
    if sla is None:
        raise LookupError(f"SLA {sla_id}: not on the ledger")
    hash_name = ledger.hash_name
    evidence, info = collect(ledger, sla, from_ns, to_ns, cfg, hash_name)
    judgement = judge(sla, from_ns, to_ns, evidence, hash_name=hash_name,
                      max_hop_delay_ns=max_hop_delay_ns, skew_ns=skew_ns,
                      receipt_epoch_ns=receipt_epoch_ns)
    return judgement, evidence, info


# -- the dispute on the ledger --------------------------------------------------------------------

def verdict_digest(judgement, evidence_digest):
    """``H`` over the canonical JSON of the decision: the SLA, the window, each device's verdict
    and the evidence digest (what ``decide`` records next to the faulty devices)."""
    from fastpath.hashes import constructor

    from .report import canonical_json
    body = {"format": "beat-verdict-v1", "sla_id": judgement.sla.sla_id,
            "from_ns": judgement.from_ns, "to_ns": judgement.to_ns,
            "verdicts": {str(n): d.verdict for n, d in judgement.devices.items()},
            "evidence_digest": evidence_digest.hex()}
    return constructor(judgement.hash_name)(canonical_json(body)).digest()


def record_decision(ledger, judgement, evidence_digest, signer, dispute_id=None):
    """Open the dispute (unless ``dispute_id`` names one already opened), record the evidence
    digest and decide: the verdict digest and the faulty devices of the agreed route (the ledger
    accepts only those; others named faulty are in the report). Returns a dict of what was
    written."""
    sla = judgement.sla
    if dispute_id is None:
        dispute_id = ledger.open_dispute(sla.sla_id, judgement.from_ns, judgement.to_ns,
                                         signer=signer)
    ledger.record_evidence(dispute_id, evidence_digest, signer=signer)
    route = set(sla.route)
    faulty = tuple(n for n in judgement.faulty if n in route)
    vd = verdict_digest(judgement, evidence_digest)
    ledger.decide(dispute_id, vd, faulty, signer=signer)
    d = ledger.get_dispute(dispute_id)
    return {"dispute_id": dispute_id, "evidence_digest": evidence_digest.hex(),
            "verdict_digest": vd.hex(), "faulty": list(faulty),
            "state": getattr(d, "state", None), "penalty": getattr(d, "penalty", None)}
