"""The ``local`` ledger backend: a single-host ledger for labs and tests, NOT a distributed one.

One LMDB file holds a hash chain of signed entries; every process on the host may open it (LMDB's
own lock file serialises the writers) and every write is one LMDB transaction: the entry and the
indexes derived from it commit together or not at all. Nothing is replicated and nobody but the
host's owner stands behind it: it has the semantics of the real ledger (docs/ledger.md: the same
permissions, idempotency, ordering and dispute life cycle), not its trust model.

The on-disk format and its guarantees: docs/ledger-local.md.

Beyond the Backend protocol:
- ``register_sla(sla, signer=..., tenant_pubkey=None)``: the tenant's Ed25519 public key, stored
  with the SLA; that key (or the governance) may open disputes on it; ``tenant_pubkey(sla_id)``
  reads it.
- ``slas()``, ``entries()``, ``entry_count()``, ``verify_chain()``, ``governance_pubkey``.

The registered topology (``register_link``, ``retire_link``, ``links``, ``neighbours``) is in the
Backend protocol: undirected links between registered nodes, kept as (a, b) with a < b.
"""
import json
import os
import struct
import time

import lmdb

from fastpath.hashes import digest_function

from .errors import (ConflictError, LedgerError, NotFound, OrderError, PermissionDenied,
                     Unavailable)
from .keys import WeakKeyError, check_public
from .keys import verify as ed25519_verify
from .types import DISPUTE_STATES, SLA, Anchor, Dispute, Node

FORMAT_VERSION = 1
GENESIS_TAG = b"BEAT local ledger v1\x00"
DEFAULT_MAP_SIZE = 1 << 30

# entry kinds
K_NODE, K_SLA, K_ANCHOR, K_OPEN, K_EVIDENCE, K_DECIDE, K_SETTLE = 1, 2, 3, 4, 5, 6, 7
# decide, with the contract's rule that every faulty node is on the SLA's route. Kind 6 (written
# before that rule) keeps its meaning, so that older chains still verify; writes use kind 8 only.
K_DECIDE_ROUTE = 8
DECIDE_KINDS = (K_DECIDE, K_DECIDE_ROUTE)
# the registered topology: an undirected link between two registered nodes, and its retirement
K_LINK, K_UNLINK = 9, 10
LINK_KINDS = (K_LINK, K_UNLINK)
KIND_NAMES = {K_NODE: "register_node", K_SLA: "register_sla", K_ANCHOR: "anchor",
              K_OPEN: "open_dispute", K_EVIDENCE: "record_evidence", K_DECIDE: "decide",
              K_SETTLE: "settle", K_DECIDE_ROUTE: "decide", K_LINK: "register_link",
              K_UNLINK: "retire_link"}
HEAD = 33            # prev_hash(32) kind(1)
TAIL = 32 + 64       # signer_pubkey(32) signature(64)

DB_NAMES = ("meta", "entries", "nodes", "node_by_key", "slas", "anchors", "next_seq", "disputes",
            "links")
INDEX_DBS = DB_NAMES[2:]


class LedgerMismatch(LedgerError):
    """The file is a ledger of another governance, another hash, or another format version."""


hasher = digest_function  # H by name: data -> 32 bytes


def _k64(n):
    return struct.pack(">Q", n)


def _canon(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _hex(b):
    return None if b is None else bytes(b).hex()


def _unhex(s):
    return None if s is None else bytes.fromhex(s)


def _signer_name(pub):
    return f"key {pub.hex()[:16]}..."


# -- records <-> JSON bodies -------------------------------------------------------------------

def _node_body(n):
    return {"node_id": n.node_id, "owner": n.owner, "pubkey": _hex(n.pubkey),
            "account": _hex(n.account)}


def _node_of(d):
    return Node(d["node_id"], d["owner"], _unhex(d["pubkey"]), _unhex(d["account"]))


def _sla_body(s, tenant_pubkey):
    return {"sla_id": s.sla_id, "tenant": s.tenant, "src": _hex(s.src), "dst": _hex(s.dst),
            "route": list(s.route), "max_loss_ppm": s.max_loss_ppm, "max_delay_us": s.max_delay_us,
            "loss_budget_ppm": s.loss_budget_ppm,
            "penalty_per_violation": s.penalty_per_violation, "valid_from_ns": s.valid_from_ns,
            "valid_to_ns": s.valid_to_ns, "qm_terms": json.loads(s.qm_json()),
            "tenant_pubkey": _hex(tenant_pubkey)}


def _sla_of(d):
    return SLA(d["sla_id"], d["tenant"], _unhex(d["src"]), _unhex(d["dst"]), tuple(d["route"]),
               d["max_loss_ppm"], d["max_delay_us"], d["loss_budget_ppm"],
               d["penalty_per_violation"], d["valid_from_ns"], d["valid_to_ns"],
               dict(d["qm_terms"]))


def _anchor_body(a):
    return {"node_id": a.node_id, "batch_seq": a.batch_seq, "tree_size": a.tree_size,
            "root": _hex(a.root), "first_t_ns": a.first_t_ns, "last_t_ns": a.last_t_ns}


def _anchor_of(d, ref=None):
    return Anchor(d["node_id"], d["batch_seq"], d["tree_size"], _unhex(d["root"]),
                  d["first_t_ns"], d["last_t_ns"], ref, d.get("ledger_t_ns"))


def _dispute_of(d):
    return Dispute(d["dispute_id"], d["sla_id"], d["from_ns"], d["to_ns"], d["state"],
                   _unhex(d["evidence_digest"]), _unhex(d["verdict_digest"]), tuple(d["faulty"]),
                   d["penalty"])


def _is_u64(x):
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < (1 << 64)


def _need_u64(name, x):
    if not _is_u64(x):
        raise ValueError(f"{name} must be an integer in 0..2^64-1, got {x!r}")


def _need_digest(name, b):
    if not isinstance(b, (bytes, bytearray)) or len(b) != 32:
        raise ValueError(f"{name} must be 32 bytes")


# -- the state the entries derive: LMDB indexes (writes) or dicts (verify_chain) ----------------

class _TxnState:
    def __init__(self, txn, dbs):
        self.txn, self.dbs = txn, dbs

    def get(self, db, key):
        v = self.txn.get(key, db=self.dbs[db])
        return None if v is None else bytes(v)

    def put(self, db, key, value):
        self.txn.put(key, value, db=self.dbs[db])


class _DictState:
    def __init__(self):
        self.d = {name: {} for name in DB_NAMES}

    def get(self, db, key):
        return self.d[db].get(key)

    def put(self, db, key, value):
        self.d[db][key] = value


def _jget(st, db, key):
    v = st.get(db, key)
    return None if v is None else json.loads(v)


def _apply(st, gov, n, kind, body, signer):
    """Check one entry against the state before it (permissions, order, conflicts) and derive the
    indexes. The one rule book: writes run it in their transaction, verify_chain() on a replay."""
    is_gov = signer == gov
    op = KIND_NAMES.get(kind)
    if op is None:
        raise LedgerError(f"unknown entry kind {kind}")
    who = "the governance" if is_gov else _signer_name(signer)
    if kind in (K_NODE, K_SLA, K_EVIDENCE, K_DECIDE, K_SETTLE, K_DECIDE_ROUTE,
                *LINK_KINDS) and not is_gov:
        ids = (f"{body.get('a')}-{body.get('b')}" if kind in LINK_KINDS else
               body.get("node_id", body.get("sla_id", body.get("dispute_id"))))
        raise PermissionDenied(f"{op} {ids}: {who} is not the governance")
    if kind == K_NODE:
        node = _node_of(body)
        if st.get("nodes", _k64(node.node_id)) is not None:
            raise ConflictError(f"register_node {node.node_id}: already registered")
        other = st.get("node_by_key", node.pubkey)
        if other is not None:
            raise ConflictError(f"register_node {node.node_id}: public key {node.pubkey.hex()} is "
                                f"already node {struct.unpack('>Q', other)[0]}'s")
        st.put("nodes", _k64(node.node_id), _canon(_node_body(node)))
        st.put("node_by_key", node.pubkey, _k64(node.node_id))
        st.put("next_seq", _k64(node.node_id), _k64(0))
    elif kind == K_SLA:
        sla = _sla_of(body)
        tp = body.get("tenant_pubkey")
        if tp is not None and len(_unhex(tp)) != 32:
            raise ValueError(f"register_sla {sla.sla_id}: tenant_pubkey must be 32 bytes")
        if st.get("slas", _k64(sla.sla_id)) is not None:
            raise ConflictError(f"register_sla {sla.sla_id}: already registered")
        st.put("slas", _k64(sla.sla_id), _canon(_sla_body(sla, _unhex(tp))))
    elif kind == K_ANCHOR:
        a = _anchor_of(body)
        mine = st.get("node_by_key", signer)
        if mine is None:
            raise PermissionDenied(f"anchor node {a.node_id} batch {a.batch_seq}: {who} is not a "
                                   "registered node")
        mine = struct.unpack(">Q", mine)[0]
        if mine != a.node_id:
            raise PermissionDenied(f"anchor node {a.node_id} batch {a.batch_seq}: signed by node "
                                   f"{mine}, which may anchor only for itself")
        key = _k64(a.node_id) + _k64(a.batch_seq)
        old = _jget(st, "anchors", key)
        if old is not None:
            raise ConflictError(f"anchor node {a.node_id} batch {a.batch_seq}: already anchored "
                                f"at entry {old['entry']}")
        nxt = struct.unpack(">Q", st.get("next_seq", _k64(a.node_id)))[0]
        if a.batch_seq != nxt:
            raise OrderError(f"anchor node {a.node_id} batch {a.batch_seq}: the next batch_seq of "
                             f"node {a.node_id} is {nxt} (no gap allowed)")
        st.put("anchors", key, _canon(dict(body, entry=n)))
        st.put("next_seq", _k64(a.node_id), _k64(nxt + 1))
    elif kind in LINK_KINDS:
        a, b = body["a"], body["b"]
        if not (_is_u64(a) and _is_u64(b)):
            raise ValueError(f"{op}: node ids must be integers in 0..2^64-1, got {a!r}, {b!r}")
        if a == b:      # the contract's InvalidLink: LedgerError
            raise LedgerError(f"{op} {a}-{b}: a link joins two nodes; node {a} to itself is "
                              "not one")
        if a > b:
            raise LedgerError(f"{op} {a}-{b}: a link is written (a, b) with a < b")
        key = _k64(a) + _k64(b)
        old = _jget(st, "links", key)
        if kind == K_LINK:
            for x in (a, b):
                if st.get("nodes", _k64(x)) is None:
                    raise NotFound(f"register_link {a}-{b}: node {x} is not registered")
            if old is not None and old["state"] == "active":
                raise ConflictError(f"register_link {a}-{b}: already registered")
            rec = old or {"a": a, "b": b, "entries": []}
            rec["state"] = "active"
        else:
            if old is None:
                raise NotFound(f"retire_link {a}-{b}: no such link")
            if old["state"] != "active":
                raise ConflictError(f"retire_link {a}-{b}: already retired")
            rec = dict(old, state="retired")
        rec["entries"] = rec["entries"] + [n]
        st.put("links", key, _canon(rec))
    elif kind == K_OPEN:
        did, sla_id = body["dispute_id"], body["sla_id"]
        sla = _jget(st, "slas", _k64(sla_id))
        if sla is None:
            raise NotFound(f"open_dispute on sla {sla_id}: no such SLA")
        tenant = _unhex(sla.get("tenant_pubkey"))
        if not is_gov and signer != tenant:
            raise PermissionDenied(f"open_dispute on sla {sla_id}: {who} is neither the "
                                   "governance nor the SLA's tenant")
        if body["from_ns"] > body["to_ns"]:     # the contract's InvalidRange: LedgerError
            raise LedgerError(f"open_dispute on sla {sla_id}: from_ns {body['from_ns']} after "
                              f"to_ns {body['to_ns']}")
        meta_next = st.get("meta", b"next_dispute")
        expect = 1 if meta_next is None else struct.unpack(">Q", meta_next)[0]
        if did != expect:
            raise OrderError(f"open_dispute on sla {sla_id}: dispute id {did}, expected {expect}")
        st.put("disputes", _k64(did), _canon({
            "dispute_id": did, "sla_id": sla_id, "from_ns": body["from_ns"],
            "to_ns": body["to_ns"], "state": "opened", "evidence_digest": None,
            "verdict_digest": None, "faulty": [], "penalty": 0, "entries": [n]}))
        st.put("meta", b"next_dispute", _k64(did + 1))
    else:
        did = body["dispute_id"]
        d = _jget(st, "disputes", _k64(did))
        if d is None:
            raise NotFound(f"{op} dispute {did}: no such dispute")
        need = {K_EVIDENCE: "opened", K_DECIDE: "evidence", K_DECIDE_ROUTE: "evidence",
                K_SETTLE: "decided"}[kind]
        if d["state"] != need:
            raise OrderError(f"{op} dispute {did}: the dispute is {d['state']!r}, {op} needs "
                             f"{need!r}")
        if kind == K_EVIDENCE:
            d["evidence_digest"] = body["evidence_digest"]
        elif kind in DECIDE_KINDS:
            faulty = body["faulty"]
            sla = _jget(st, "slas", _k64(d["sla_id"]))
            # the contract's FaultyNotOnRoute / FaultyDuplicate (both LedgerError there), in its
            # order: for each faulty node, on the route first, then not listed before it
            for i, x in enumerate(faulty):
                if kind == K_DECIDE_ROUTE and x not in sla["route"]:
                    raise LedgerError(f"decide dispute {did}: faulty node {x} is not on the "
                                      f"route {sla['route']} of sla {d['sla_id']}")
                if x in faulty[:i]:
                    raise LedgerError(f"decide dispute {did}: faulty lists node {x} twice")
            penalty = sla["penalty_per_violation"] * len(faulty)
            if body["penalty"] != penalty:
                raise ConflictError(f"decide dispute {did}: penalty {body['penalty']}, the SLA "
                                    f"gives {penalty}")
            d.update(verdict_digest=body["verdict_digest"], faulty=faulty, penalty=penalty)
        d["state"] = DISPUTE_STATES[DISPUTE_STATES.index(need) + 1]
        d["entries"].append(n)
        st.put("disputes", _k64(did), _canon(d))


class LocalLedger:
    """The ``local`` backend (docs/ledger.md, docs/ledger-local.md). ``path`` is the LMDB data file
    (its lock file is ``path + "-lock"``). A new ledger needs ``governance_pubkey`` (32 bytes, or a
    key with ``.public``); an existing one must be opened with the same key or ``None``, and with
    its own hash (or ``hash_name=None``), else ``LedgerMismatch``."""

    def __init__(self, path, hash_name="sha3-256", governance_pubkey=None, map_size=None):
        self.path = os.fspath(path)
        if hash_name is not None:
            hasher(hash_name)
        if governance_pubkey is not None and not isinstance(governance_pubkey, (bytes, bytearray)):
            governance_pubkey = governance_pubkey.public
        if governance_pubkey is not None and len(governance_pubkey) != 32:
            raise ValueError(f"governance_pubkey must be 32 bytes, got {len(governance_pubkey)}")
        existed = os.path.exists(self.path)
        self.map_size = map_size or DEFAULT_MAP_SIZE
        try:
            self.env = lmdb.open(self.path, subdir=False, lock=True, map_size=self.map_size,
                                 max_dbs=len(DB_NAMES), readahead=False)
        except lmdb.Error as exc:
            raise LedgerError(f"{self.path}: cannot open the ledger: {exc}") from None
        try:
            with self.env.begin(write=True) as txn:
                self.dbs = {name: self.env.open_db(name.encode(), txn=txn, create=True)
                            for name in DB_NAMES}
                self._check_or_init(txn, hash_name, governance_pubkey)
        except BaseException:
            self.env.close()
            self.env = None
            if not existed:
                for p in (self.path, self.path + "-lock"):
                    try:
                        os.unlink(p)
                    except OSError:
                        pass
            raise
        self._h = hasher(self.hash_name)

    def _check_or_init(self, txn, hash_name, gov):
        meta = self.dbs["meta"]
        version = txn.get(b"format_version", db=meta)
        if version is None:
            if gov is None:
                raise LedgerError(f"{self.path}: a new ledger needs the governance's public key")
            hash_name = hash_name or "sha3-256"
            txn.put(b"format_version", _k64(FORMAT_VERSION), db=meta)
            txn.put(b"hash", hash_name.encode(), db=meta)
            txn.put(b"governance", bytes(gov), db=meta)
            txn.put(b"next_entry", _k64(0), db=meta)
            txn.put(b"head", hasher(hash_name)(GENESIS_TAG + bytes(gov)), db=meta)
            self.hash_name, self.governance_pubkey = hash_name, bytes(gov)
            return
        version = struct.unpack(">Q", version)[0]
        if version != FORMAT_VERSION:
            raise LedgerMismatch(f"{self.path}: local ledger format {version}, this code reads "
                                 f"{FORMAT_VERSION}")
        stored_hash = bytes(txn.get(b"hash", db=meta)).decode()
        stored_gov = bytes(txn.get(b"governance", db=meta))
        if hash_name is not None and hash_name != stored_hash:
            raise LedgerMismatch(f"{self.path}: this ledger uses hash {stored_hash}, not "
                                 f"{hash_name}")
        if gov is not None and bytes(gov) != stored_gov:
            raise LedgerMismatch(f"{self.path}: this ledger belongs to governance key "
                                 f"{stored_gov.hex()}, not {bytes(gov).hex()}")
        self.hash_name, self.governance_pubkey = stored_hash, stored_gov

    # -- life cycle -----------------------------------------------------------------------------

    def close(self):
        if self.env is not None:
            self.env.close()
            self.env = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- writing --------------------------------------------------------------------------------

    def _write(self, kind, build, signer):
        """One write transaction: ``build(state)`` returns the entry's body (or a string: nothing
        to write, returned as is); the entry is signed, its signature checked, the rules applied,
        the entry and its indexes stored, all or nothing."""
        pub = bytes(signer.public)
        try:
            with self.env.begin(write=True) as txn:
                st = _TxnState(txn, self.dbs)
                body = build(st, pub)
                if isinstance(body, str):
                    return body
                n = struct.unpack(">Q", st.get("meta", b"next_entry"))[0]
                unsigned = st.get("meta", b"head") + bytes([kind]) + _canon(body) + pub
                sig = bytes(signer.sign(unsigned))
                if not ed25519_verify(pub, unsigned, sig):
                    raise PermissionDenied(f"{KIND_NAMES[kind]}: the signature of "
                                           f"{_signer_name(pub)} does not verify")
                _apply(st, self.governance_pubkey, n, kind, body, pub)
                entry = unsigned + sig
                st.put("entries", _k64(n), entry)
                st.put("meta", b"next_entry", _k64(n + 1))
                st.put("meta", b"head", self._h(entry))
                return n
        except lmdb.MapFullError:
            raise LedgerError(f"{self.path}: the ledger is full (map_size {self.map_size}); "
                              "reopen it with a larger map_size") from None
        except lmdb.Error as exc:
            raise LedgerError(f"{self.path}: {KIND_NAMES[kind]}: {exc}") from None

    def _same(self, st, pub, db, key, body):
        """The governance repeating a write whose record is already there, identical: a no-op
        (as on the ethereum backend), nothing written. Anyone else goes on to the rules."""
        if pub != self.governance_pubkey:
            return False
        return _jget(st, db, key) == json.loads(_canon(body))

    def register_node(self, node, *, signer):
        """Idempotent: the identical node again writes nothing; another node under its id, or
        its public key under another id, is ConflictError. A weak public key (small order, or not
        canonical: keys.check_public) is WeakKeyError (a ValueError), nothing written."""
        try:
            check_public(node.pubkey)
        except WeakKeyError as exc:
            raise WeakKeyError(f"register_node {node.node_id}: {exc}") from None

        def build(st, pub):
            body = _node_body(node)
            return "exists" if self._same(st, pub, "nodes", _k64(node.node_id), body) else body

        self._write(K_NODE, build, signer)

    def register_sla(self, sla, *, signer, tenant_pubkey=None):
        """Idempotent: the identical SLA (every field, and the same tenant_pubkey) again writes
        nothing; other terms under its id are ConflictError."""
        if tenant_pubkey is not None and len(tenant_pubkey) != 32:
            raise ValueError(f"register_sla {sla.sla_id}: tenant_pubkey must be 32 bytes")
        if tenant_pubkey is not None:       # a weak key would let anybody open disputes as it
            try:
                check_public(tenant_pubkey)
            except WeakKeyError as exc:
                raise WeakKeyError(f"register_sla {sla.sla_id}: tenant_pubkey: {exc}") from None
        _need_u64("sla_id", sla.sla_id)

        def build(st, pub):
            body = _sla_body(sla, tenant_pubkey)
            return "exists" if self._same(st, pub, "slas", _k64(sla.sla_id), body) else body

        self._write(K_SLA, build, signer)

    # -- the registered topology --------------------------------------------------------------

    def _link(self, kind, a, b, signer):
        _need_u64("a", a)
        _need_u64("b", b)
        a, b = min(a, b), max(a, b)
        done = "active" if kind == K_LINK else "retired"

        def build(st, pub):
            old = _jget(st, "links", _k64(a) + _k64(b))
            if pub == self.governance_pubkey and old is not None and old["state"] == done:
                return "exists"
            return {"a": a, "b": b}

        self._write(kind, build, signer)

    def register_link(self, a, b, *, signer):
        """The undirected link between registered nodes ``a`` and ``b`` (governance only).
        Idempotent: an active link again writes nothing; a retired one becomes active again.
        An unregistered node is NotFound, ``a == b`` LedgerError (the contract's InvalidLink)."""
        self._link(K_LINK, a, b, signer)

    def retire_link(self, a, b, *, signer):
        """The link between ``a`` and ``b`` no longer exists (governance only). Idempotent: a
        retired link again writes nothing; a link never registered is NotFound."""
        self._link(K_UNLINK, a, b, signer)

    def anchor(self, a, *, signer):
        for name in ("node_id", "batch_seq", "tree_size", "first_t_ns", "last_t_ns"):
            _need_u64(name, getattr(a, name))
        _need_digest("root", a.root)

        def build(st, pub):
            old = _jget(st, "anchors", _k64(a.node_id) + _k64(a.batch_seq))
            if old is not None and st.get("node_by_key", pub) == _k64(a.node_id):
                if _anchor_of(old).content() == a.content():
                    return "exists"
                raise ConflictError(f"anchor node {a.node_id} batch {a.batch_seq}: already "
                                    f"anchored at entry {old['entry']} with other content "
                                    f"(root {old['root']})")
            # the ledger's time of the anchor (docs/gap-records.md: what makes a gap timely)
            return dict(_anchor_body(a), ledger_t_ns=time.time_ns())

        r = self._write(K_ANCHOR, build, signer)
        return r if r == "exists" else "anchored"

    def open_dispute(self, sla_id, from_ns, to_ns, *, signer):
        _need_u64("sla_id", sla_id)
        _need_u64("from_ns", from_ns)
        _need_u64("to_ns", to_ns)
        out = {}

        def build(st, pub):
            nxt = st.get("meta", b"next_dispute")
            out["id"] = 1 if nxt is None else struct.unpack(">Q", nxt)[0]
            return {"dispute_id": out["id"], "sla_id": sla_id, "from_ns": from_ns,
                    "to_ns": to_ns}

        self._write(K_OPEN, build, signer)
        return out["id"]

    def _dispute_done(self, st, pub, dispute_id, **same):
        """The governance repeating a dispute step already taken with this content: a no-op (as
        on the ethereum backend). Other content after the step is the rules' OrderError."""
        if pub != self.governance_pubkey:
            return False
        d = _jget(st, "disputes", _k64(dispute_id))
        return d is not None and all(d[k] == v for k, v in same.items())

    def record_evidence(self, dispute_id, evidence_digest, *, signer):
        """Idempotent: the same digest again, at any later state, writes nothing."""
        _need_u64("dispute_id", dispute_id)
        _need_digest("evidence_digest", evidence_digest)

        def build(st, pub):
            if self._dispute_done(st, pub, dispute_id, evidence_digest=_hex(evidence_digest)):
                return "exists"
            return {"dispute_id": dispute_id, "evidence_digest": _hex(evidence_digest)}

        self._write(K_EVIDENCE, build, signer)

    def decide(self, dispute_id, verdict_digest, faulty, *, signer):
        """Every faulty node on the SLA's route, each once (else LedgerError, as the contract's
        FaultyNotOnRoute / FaultyDuplicate); the same verdict and faulty list again (in the same
        order) writes nothing."""
        _need_u64("dispute_id", dispute_id)
        _need_digest("verdict_digest", verdict_digest)
        faulty = [int(x) for x in faulty]
        for x in faulty:
            _need_u64("faulty node_id", x)

        def build(st, pub):
            if self._dispute_done(st, pub, dispute_id, verdict_digest=_hex(verdict_digest),
                                  faulty=faulty):
                return "exists"
            d = _jget(st, "disputes", _k64(dispute_id))
            penalty = 0
            if d is not None:
                sla = _jget(st, "slas", _k64(d["sla_id"]))
                penalty = sla["penalty_per_violation"] * len(faulty)
            return {"dispute_id": dispute_id, "verdict_digest": _hex(verdict_digest),
                    "faulty": faulty, "penalty": penalty}

        self._write(K_DECIDE_ROUTE, build, signer)

    def settle(self, dispute_id, *, signer):
        """Idempotent: settling a settled dispute again writes nothing."""
        _need_u64("dispute_id", dispute_id)

        def build(st, pub):
            if self._dispute_done(st, pub, dispute_id, state="settled"):
                return "exists"
            return {"dispute_id": dispute_id}

        self._write(K_SETTLE, build, signer)

    # -- reading --------------------------------------------------------------------------------

    def _get(self, db, key):
        with self.env.begin() as txn:
            v = txn.get(key, db=self.dbs[db])
            return None if v is None else json.loads(bytes(v))

    def _all(self, db, prefix=b"", start=b""):
        with self.env.begin() as txn:
            cur = txn.cursor(db=self.dbs[db])
            out = []
            if not cur.set_range(prefix + start):
                return out
            for k, v in cur:
                if not bytes(k).startswith(prefix):
                    break
                out.append(json.loads(bytes(v)))
            return out

    def get_node(self, node_id):
        d = self._get("nodes", _k64(node_id))
        return None if d is None else _node_of(d)

    def nodes(self):
        return [_node_of(d) for d in self._all("nodes")]

    def links(self):
        """Every active link, as sorted (a, b) pairs with a < b."""
        return [(d["a"], d["b"]) for d in self._all("links") if d["state"] == "active"]

    def neighbours(self, node_id):
        """The node ids linked with ``node_id`` (active links), sorted; [] for an unknown node."""
        return sorted({b if a == node_id else a for a, b in self.links() if node_id in (a, b)})

    def get_sla(self, sla_id):
        d = self._get("slas", _k64(sla_id))
        return None if d is None else _sla_of(d)

    def tenant_pubkey(self, sla_id):
        d = self._get("slas", _k64(sla_id))
        return None if d is None else _unhex(d.get("tenant_pubkey"))

    def slas(self):
        return [_sla_of(d) for d in self._all("slas")]

    def get_anchor(self, node_id, batch_seq):
        d = self._get("anchors", _k64(node_id) + _k64(batch_seq))
        return None if d is None else _anchor_of(d, str(d["entry"]))

    def anchors(self, node_id=None, from_seq=0):
        if node_id is None:
            rows = [d for d in self._all("anchors") if d["batch_seq"] >= from_seq]
        else:
            rows = self._all("anchors", _k64(node_id), _k64(from_seq))
        return [_anchor_of(d, str(d["entry"])) for d in rows]

    def next_batch_seq(self, node_id):
        with self.env.begin() as txn:
            v = txn.get(_k64(node_id), db=self.dbs["next_seq"])
            return 0 if v is None else struct.unpack(">Q", v)[0]

    def get_dispute(self, dispute_id):
        d = self._get("disputes", _k64(dispute_id))
        return None if d is None else _dispute_of(d)

    def entry_count(self):
        with self.env.begin() as txn:
            return struct.unpack(">Q", txn.get(b"next_entry", db=self.dbs["meta"]))[0]

    def entries(self):
        """Every entry, in order: dicts with n, kind, op, body (decoded), signer, raw."""
        out = []
        with self.env.begin() as txn:
            for k, v in txn.cursor(db=self.dbs["entries"]):
                v = bytes(v)
                kind = v[32]
                out.append({"n": struct.unpack(">Q", k)[0], "kind": kind,
                            "op": KIND_NAMES.get(kind, "?"), "body": json.loads(v[HEAD:-TAIL]),
                            "signer": v[-TAIL:-64], "raw": v})
        return out

    # -- verification ---------------------------------------------------------------------------

    def verify_chain(self):
        """Re-check every entry: numbering, its link to the previous entry, its signature, the
        rules (replayed from the start), and the stored indexes against the replay. Returns the
        problems, each naming the entry (or index) concerned; an empty list for a good ledger."""
        problems = []
        st = _DictState()
        with self.env.begin() as txn:
            meta = {bytes(k): bytes(v) for k, v in txn.cursor(db=self.dbs["meta"])}
            gov = meta[b"governance"]
            prev = self._h(GENESIS_TAG + gov)
            expect = 0
            for k, v in txn.cursor(db=self.dbs["entries"]):
                k, v = bytes(k), bytes(v)
                n = struct.unpack(">Q", k)[0] if len(k) == 8 else None
                if n != expect:
                    problems.append(f"entry {n}: expected entry number {expect}")
                    expect = n if n is not None else expect
                expect += 1
                if len(v) < HEAD + TAIL:
                    problems.append(f"entry {n}: truncated ({len(v)} bytes)")
                    prev = self._h(v)
                    continue
                if v[:32] != prev:
                    problems.append(f"entry {n}: prev_hash does not match the hash of the entry "
                                    "before it")
                pub, sig = v[-TAIL:-64], v[-64:]
                if not ed25519_verify(pub, v[:-64], sig):
                    problems.append(f"entry {n}: bad signature by {_signer_name(pub)}")
                prev = self._h(v)
                try:
                    body = json.loads(v[HEAD:-TAIL])
                    _apply(st, gov, n, v[32], body, pub)
                except (LedgerError, ValueError, KeyError, TypeError, AttributeError) as exc:
                    problems.append(f"entry {n}: {KIND_NAMES.get(v[32], '?')} breaks the "
                                    f"rules: {exc}")
            if meta.get(b"next_entry") != _k64(expect):
                problems.append(f"meta: next_entry is not {expect}, the number of entries")
            if meta.get(b"head") != prev:
                problems.append("meta: head is not the hash of the last entry")
            if st.d["meta"].get(b"next_dispute") != meta.get(b"next_dispute"):
                problems.append("meta: next_dispute does not match the entries")
            for name in INDEX_DBS:
                stored = {bytes(k): bytes(v) for k, v in txn.cursor(db=self.dbs[name])}
                if stored != st.d[name]:
                    bad = sorted(set(stored) ^ set(st.d[name]) |
                                 {k for k in stored if st.d[name].get(k, stored[k]) != stored[k]})
                    problems.append(f"index {name}: {len(bad)} key(s) differ from the entries "
                                    f"(first {bad[0].hex() if bad else '?'})")
        return problems


class AwaitedLocalLedger:
    """The local ledger at a path the governance has not created yet (beatd's default ledger).

    Until the file exists every operation raises ``Unavailable`` naming the path, so that the
    batcher keeps its batches and retries with its backoff; from then on it is that
    ``LocalLedger`` (checked to use ``hash_name``: another hash is a ``LedgerMismatch``, which halts
    the submission with a message instead of anchoring roots the ledger cannot check)."""

    def __init__(self, path, hash_name):
        self.path = os.fspath(path)
        self.expected_hash = hash_name
        self._ledger = None

    @property
    def ready(self):
        return self._ledger is not None

    @property
    def hash_name(self):
        return self._ledger.hash_name if self._ledger is not None else self.expected_hash

    def _open(self):
        if self._ledger is None:
            if not os.path.exists(self.path):
                raise Unavailable(f"{self.path}: no ledger here yet (the governance creates it: "
                                  f"beatctl --ledger local:{self.path} --key GOV_KEY "
                                  "register-node ...)")
            led = LocalLedger(self.path, hash_name=None)
            if self.expected_hash is not None and led.hash_name != self.expected_hash:
                led.close()
                raise LedgerMismatch(f"{self.path}: a ledger of hash {led.hash_name}, not "
                                     f"{self.expected_hash}")
            self._ledger = led
        return self._ledger

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._open(), name)

    def close(self):
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None
