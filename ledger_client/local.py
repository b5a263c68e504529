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
from .types import (ACTS, DEFAULT_NOTICE_S, DEFAULT_TTL_S, DISPUTE_STATES, Debt, Deposit, SLA, Anchor, Committee, Dispute, Member,
                    Node, Proposal, Vote)

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
# the committee (docs/ledger.md, "The committee"): a proposal (the proposer's approval), an
# approval, a member's approval of a dispute decision
K_PROPOSE, K_APPROVE, K_VOTE = 11, 12, 13
# the money (docs/ledger.md, "Settlement"): an operator's deposit for its node, its request to
# withdraw it, the withdrawal
K_DEPOSIT, K_REQUEST_WITHDRAWAL, K_WITHDRAW = 14, 15, 16
MONEY_KINDS = (K_DEPOSIT, K_REQUEST_WITHDRAWAL, K_WITHDRAW)
TIMED_KINDS = (K_OPEN, K_PROPOSE, K_APPROVE, K_VOTE, *MONEY_KINDS)   # bodies carry t_ns
MEMBER_KINDS = (K_PROPOSE, K_APPROVE, K_VOTE)
# A new entry's t_ns must be within MAX_SKEW_NS of the host's clock at write (findings C1, C2);
# verify_chain names every entry stamped after the verifier's clock + MAX_SKEW_NS.
MAX_SKEW_NS = 5 * 1_000_000_000
HOST_CLOCK_ENV = "BEAT_LEDGER_HOST_CLOCK"   # tests: "writer" (no check) or a fixed ns
KIND_NAMES = {K_NODE: "register_node", K_SLA: "register_sla", K_ANCHOR: "anchor",
              K_OPEN: "open_dispute", K_EVIDENCE: "record_evidence", K_DECIDE: "decide",
              K_SETTLE: "settle", K_DECIDE_ROUTE: "decide", K_LINK: "register_link",
              K_UNLINK: "retire_link", K_PROPOSE: "propose", K_APPROVE: "approve",
              K_VOTE: "approve_decision", K_DEPOSIT: "deposit",
              K_REQUEST_WITHDRAWAL: "request_withdrawal", K_WITHDRAW: "withdraw"}
# a proposal's act -> the entry kind that does it at k = 1 (None: proposals only)
ACT_KINDS = {"register_node": K_NODE, "register_sla": K_SLA, "register_link": K_LINK,
             "retire_link": K_UNLINK, "retire_node": None, "add_member": None,
             "remove_member": None, "set_threshold": None}
GENESIS_TAG_COMMITTEE = b"BEAT local ledger v1 committee\x00"
HEAD = 33            # prev_hash(32) kind(1)
TAIL = 32 + 64       # signer_pubkey(32) signature(64)

DB_NAMES = ("meta", "entries", "nodes", "node_by_key", "slas", "anchors", "next_seq", "disputes",
            "links", "state", "proposals", "votes", "money")
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
    body = {"node_id": n.node_id, "owner": n.owner, "pubkey": _hex(n.pubkey),
            "account": _hex(n.account)}
    if n.operator is not None:         # absent, not null: older entries stay as they were
        body["operator"] = _hex(n.operator)
    return body


def _node_of(d):
    return Node(d["node_id"], d["owner"], _unhex(d["pubkey"]), _unhex(d["account"]),
                _unhex(d.get("operator")))


def _sla_body(s, tenant_pubkey):
    return {"sla_id": s.sla_id, "tenant": s.tenant, "src": _hex(s.src), "dst": _hex(s.dst),
            "route": list(s.route), "max_loss_ppm": s.max_loss_ppm, "max_delay_us": s.max_delay_us,
            "loss_budget_ppm": s.loss_budget_ppm,
            "penalty_per_violation": s.penalty_per_violation, "valid_from_ns": s.valid_from_ns,
            "valid_to_ns": s.valid_to_ns, "qm_terms": json.loads(s.qm_json()),
            "tenant_pubkey": _hex(tenant_pubkey), **({"price": s.price} if s.price else {})}


SLA_CACHE_MAX = 16384


def _sla_of(d):
    return SLA(d["sla_id"], d["tenant"], _unhex(d["src"]), _unhex(d["dst"]), tuple(d["route"]),
               d["max_loss_ppm"], d["max_delay_us"], d["loss_budget_ppm"],
               d["penalty_per_violation"], d["valid_from_ns"], d["valid_to_ns"],
               dict(d["qm_terms"]), d.get("price", 0))


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

    def items(self, db):
        return [(bytes(k), bytes(v)) for k, v in self.txn.cursor(db=self.dbs[db])]


class _DictState:
    def __init__(self):
        self.d = {name: {} for name in DB_NAMES}

    def get(self, db, key):
        return self.d[db].get(key)

    def put(self, db, key, value):
        self.d[db][key] = value

    def items(self, db):
        return sorted(self.d[db].items())


def _jget(st, db, key):
    v = st.get(db, key)
    return None if v is None else json.loads(v)


def genesis_of(gov, genesis_json=None):
    """The ledger's founding committee: from meta ``genesis`` (a committee ledger), else the
    single governance key of a ledger made before committees (a committee of one, k = 1)."""
    if genesis_json is not None:
        return json.loads(genesis_json)
    return {"members": [{"pubkey": gov.hex(), "account": None}], "k": 1,
            "ttl_s": DEFAULT_TTL_S}


# -- the money: balances (the local stand-in for money), deposits, debts ----------------------

def _balance(st, genesis, pub_hex):
    v = st.get("money", b"B" + bytes.fromhex(pub_hex))
    if v is None:
        return int(genesis.get("balances", {}).get(pub_hex, 0))
    return struct.unpack(">Q", v)[0]


def _credit(st, genesis, pub_hex, delta):
    b = _balance(st, genesis, pub_hex) + delta
    if not _is_u64(b):
        raise LedgerError(f"balance of key {pub_hex[:16]}... would be {b}")
    st.put("money", b"B" + bytes.fromhex(pub_hex), _k64(b))


def _deposit_rec(st, node_id):
    return _jget(st, "money", b"D" + _k64(node_id)) or {"amount": 0, "due_ns": None}


def _debts_of(st, node_id):
    return _jget(st, "money", b"X" + _k64(node_id)) or []


def _frozen_by(st, genesis, node_id, t_ns):
    """The open dispute that freezes the node's deposit now, or None: the freezing dispute of an
    SLA whose route holds the node (one per SLA), not settled and opened less than a ttl ago.
    The loop is over the SLAs (registered by the committee), never over the disputes."""
    ttl = genesis["ttl_s"] * 1_000_000_000
    for _, v in st.items("slas"):
        sla = json.loads(v)
        if node_id not in sla["route"]:
            continue
        did = _jget(st, "money", b"Z" + _k64(sla["sla_id"]))
        d = None if did is None else _jget(st, "disputes", _k64(did))
        if d is not None and d["state"] != "settled" and t_ns < d["opened_t_ns"] + ttl:
            return did
    return None


def withdrawal_window_ns(genesis):
    """A withdrawal request is good in [due, due + 2 ttl): then it lapses (findings C4)."""
    return 2 * genesis["ttl_s"] * 1_000_000_000


def _settle_effect(st, genesis, d):
    """The penalty of each faulty node from its operator's deposit to the tenant's balance; what
    the deposit can not cover is a debt (node, tenant, amount). Nothing moves for a node without
    an SLA without a tenant key; a node without an operator (or not registered) owes all of it
    (on a ledger made before settlement, with no money at all, nothing moves for it)."""
    sla = _jget(st, "slas", _k64(d["sla_id"]))
    tenant, ppv = sla.get("tenant_pubkey"), sla["penalty_per_violation"]
    if tenant is None or ppv == 0:
        return
    for node_id in d["faulty"]:
        if "notice_s" not in genesis and (_jget(st, "nodes", _k64(node_id)) or {}).get(
                "operator") is None:
            continue          # a ledger made before settlement: no money, it replays unchanged
        dep = _deposit_rec(st, node_id)
        take = min(dep["amount"], ppv)
        dep["amount"] -= take
        st.put("money", b"D" + _k64(node_id), _canon(dep))
        _credit(st, genesis, tenant, take)
        if ppv > take:
            st.put("money", b"X" + _k64(node_id), _canon(_debts_of(st, node_id) + [
                {"dispute_id": d["dispute_id"], "tenant": tenant, "amount": ppv - take}]))


def _apply_money(st, genesis, n, kind, body, signer):
    nid, t = body["node_id"], body["t_ns"]
    op = KIND_NAMES[kind]
    node = _jget(st, "nodes", _k64(nid))
    if node is None:
        raise NotFound(f"{op} node {nid}: no such node")
    if node.get("operator") != signer.hex():
        raise PermissionDenied(f"{op} node {nid}: {_signer_name(signer)} is not the node's "
                               f"operator ({(node.get('operator') or 'none')[:16]})")
    me = signer.hex()
    dep = _deposit_rec(st, nid)
    if kind == K_DEPOSIT:
        amount = body["amount"]
        if not _is_u64(amount) or amount == 0:
            raise ValueError(f"deposit node {nid}: amount must be 1..2^64-1, got {amount!r}")
        have = _balance(st, genesis, me)
        if have < amount:
            raise LedgerError(f"deposit node {nid}: {amount} is more than the balance {have} of "
                              f"{_signer_name(signer)}")
        _credit(st, genesis, me, -amount)
        left, debts = amount, _debts_of(st, nid)
        for x in debts:                        # the node's debts first, oldest first
            pay = min(x["amount"], left)
            x["amount"] -= pay
            left -= pay
            _credit(st, genesis, x["tenant"], pay)
        st.put("money", b"X" + _k64(nid), _canon([x for x in debts if x["amount"] > 0]))
        dep["amount"] += left
    elif kind == K_REQUEST_WITHDRAWAL:
        dep["due_ns"] = t + genesis.get("notice_s", DEFAULT_NOTICE_S) * 1_000_000_000
    else:
        if dep["due_ns"] is None or t < dep["due_ns"]:
            raise OrderError(f"withdraw node {nid}: not due (the notice ends at "
                             f"{dep['due_ns']}, now {t})")
        if t >= dep["due_ns"] + withdrawal_window_ns(genesis):
            raise OrderError(f"withdraw node {nid}: not due: the request lapsed at "
                             f"{dep['due_ns'] + withdrawal_window_ns(genesis)} (now {t}); "
                             "request the withdrawal again")
        owed = sum(x["amount"] for x in _debts_of(st, nid))
        if owed:
            raise OrderError(f"withdraw node {nid}: the node owes {owed} (debts are paid "
                             "first)")
        f = _frozen_by(st, genesis, nid, t)
        if f is not None:
            raise OrderError(f"withdraw node {nid}: dispute {f} is open on a route holding it")
        if body.get("amount") != dep["amount"]:
            raise ConflictError(f"withdraw node {nid}: amount {body.get('amount')}, the "
                                f"deposit is {dep['amount']}")
        _credit(st, genesis, me, dep["amount"])
        dep = {"amount": 0, "due_ns": None}
    st.put("money", b"D" + _k64(nid), _canon(dep))


def _committee(st, genesis):
    c = _jget(st, "state", b"committee")
    if c is None:
        c = {"members": genesis["members"], "k": genesis["k"], "epoch": 0}
    c["ttl_s"] = genesis["ttl_s"]
    return c


def _is_member(c, signer):
    return any(m["pubkey"] == signer.hex() for m in c["members"])


def _u64_of(st, db, key, default=0):
    v = st.get(db, key)
    return default if v is None else struct.unpack(">Q", v)[0]


def _apply(st, genesis, n, kind, body, signer):
    """Check one entry against the state before it (permissions, order, conflicts) and derive the
    indexes. The one rule book: writes run it in their transaction, verify_chain() on a replay."""
    op = KIND_NAMES.get(kind)
    if op is None:
        raise LedgerError(f"unknown entry kind {kind}")
    c = _committee(st, genesis)
    member = _is_member(c, signer)
    is_gov = member and c["k"] == 1           # the single governance of before
    who = "the governance" if is_gov else _signer_name(signer)
    if kind in TIMED_KINDS and "t_ns" in body:  # the entry's time: never before the last one
        # A member's entry (proposal, approval, decision approval) is judged against the last
        # member entry only: a tenant's or an operator's stamp does not move the clock the
        # committee's deadlines use (findings C1). Other entries: against every entry.
        t = body["t_ns"]
        floor = b"last_member_t_ns" if kind in MEMBER_KINDS else b"last_t_ns"
        last = _u64_of(st, "state", floor)
        if not _is_u64(t) or t < last:
            raise OrderError(f"{op}: entry time {t} is before the last entry's time {last}")
        if kind in MEMBER_KINDS:
            st.put("state", b"last_member_t_ns", _k64(t))
        st.put("state", b"last_t_ns", _k64(max(t, _u64_of(st, "state", b"last_t_ns"))))
    if kind in (K_NODE, K_SLA, K_EVIDENCE, K_DECIDE, K_DECIDE_ROUTE,
                *LINK_KINDS) and not is_gov:
        ids = (f"{body.get('a')}-{body.get('b')}" if kind in LINK_KINDS else
               body.get("node_id", body.get("sla_id", body.get("dispute_id"))))
        if member:
            raise PermissionDenied(f"{op} {ids}: the committee needs {c['k']} approvals; "
                                   f"{who} alone proposes it (beatctl propose)")
        raise PermissionDenied(f"{op} {ids}: {who} is not the governance (not a member of the "
                               "committee)")
    if kind == K_SETTLE and not member:
        raise PermissionDenied(f"settle {body.get('dispute_id')}: {who} is not the governance "
                               "(not a member of the committee)")
    if kind in MONEY_KINDS:
        return _apply_money(st, genesis, n, kind, body, signer)
    if kind in (K_PROPOSE, K_APPROVE, K_VOTE):
        if not member:
            raise PermissionDenied(f"{op}: {who} is not a member of the committee")
        if kind == K_VOTE:
            return _apply_vote(st, genesis, c, n, body, signer)
        return _apply_proposal(st, genesis, c, n, kind, body, signer)
    _effect(st, genesis, n, kind, body, signer, who, is_gov or member)


def _content(act, args):
    return json.loads(_canon({"act": act, "args": args}))


def _proposal_state(p, c, t_ns):
    if p["executed"]:
        return "executed"
    if p["epoch"] != c["epoch"]:
        return "stale"
    if t_ns >= p["t_ns"] + c["ttl_s"] * 1_000_000_000:
        return "expired"
    return "open"


def _live_proposal(st, c, act, args, t_ns):
    """The open proposal of this content (this epoch, unexpired, not executed), or None."""
    want = _content(act, args)
    nxt = _u64_of(st, "state", b"next_proposal", 1)
    for pid in range(nxt - 1, 0, -1):
        p = _jget(st, "proposals", _k64(pid))
        if p["epoch"] != c["epoch"]:
            break                 # older epochs are void: nothing before them is open either
        if _content(p["act"], p["args"]) == want and _proposal_state(p, c, t_ns) == "open":
            return p
    return None


def _check_penalty(sla_id, ppv, route):
    """Penalty terms whose total can not be paid (balances are u64) are refused (C8)."""
    if not _is_u64(ppv) or ppv * max(len(route), 1) >= (1 << 64):
        raise LedgerError(f"register_sla {sla_id}: penalty_per_violation {ppv} x {len(route)} "
                          "route nodes is above 2^64-1")


def _canon_args(act, args):
    """The act's arguments decoded and encoded again (hex lower case, ints as ints, no unknown
    keys): what a proposal must carry, so that one content has one form (C10)."""
    if not isinstance(args, dict):
        raise LedgerError(f"propose {act}: the arguments are not an object")
    try:
        if act == "register_node":
            return json.loads(_canon(_node_body(_node_of(args))))
        if act == "register_sla":
            return json.loads(_canon(_sla_body(_sla_of(args), _unhex(args.get("tenant_pubkey")))))
        if act in ("register_link", "retire_link"):
            return {"a": int(args["a"]), "b": int(args["b"])}
        if act == "retire_node":
            return {"node_id": int(args["node_id"])}
        if act == "add_member":
            return {"pubkey": _hex(_unhex(args["pubkey"])), "account": _hex(_unhex(args.get("account")))}
        if act == "remove_member":
            return {"pubkey": _hex(_unhex(args["pubkey"]))}
        if act == "set_threshold":
            return {"k": args["k"]}
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise LedgerError(f"propose {act}: bad arguments: {exc}") from None
    return args


def _check_act(c, act, args):
    """The committee acts' own rules, checked at proposal and at execution."""
    if act not in ACTS:
        raise LedgerError(f"propose: {act!r} is not an act ({', '.join(ACTS)})")
    pubs = [m["pubkey"] for m in c["members"]]
    if act == "add_member":
        pk = args.get("pubkey")
        if not isinstance(pk, str) or len(_unhex(pk)) != 32:
            raise LedgerError("add_member: the member's Ed25519 key (32 bytes) is missing")
        check_public(_unhex(pk))
        if pk in pubs:
            raise LedgerError(f"add_member {pk[:16]}...: already a member")
    elif act == "remove_member":
        pk = args.get("pubkey")
        if pk not in pubs:
            raise LedgerError(f"remove_member {str(pk)[:16]}...: not a member")
        if len(pubs) - 1 < c["k"]:
            raise LedgerError(f"remove_member {pk[:16]}...: {len(pubs) - 1} members would be "
                              f"left, fewer than k = {c['k']} (lower k first)")
    elif act == "register_sla":
        _check_penalty(args.get("sla_id"), args.get("penalty_per_violation"),
                       args.get("route") or [])
    elif act == "set_threshold":
        k = args.get("k")
        if not (_is_u64(k) and 1 <= k <= len(pubs)):
            raise LedgerError(f"set_threshold {k}: k must be in 1..n = {len(pubs)}")


def _execute(st, genesis, c, n, act, args, signer):
    _check_act(c, act, args)
    kind = ACT_KINDS[act]
    if kind is not None:
        return _effect(st, genesis, n, kind, args, signer, "the committee", True)
    if act == "retire_node":
        nid = args["node_id"]
        if st.get("nodes", _k64(nid)) is None:
            raise NotFound(f"retire_node {nid}: no such node")
        st.put("state", b"retired" + _k64(nid), _canon({"entry": n}))
        return
    c = {k: v for k, v in c.items() if k != "ttl_s"}
    if act == "add_member":
        c["members"] = c["members"] + [{"pubkey": args["pubkey"],
                                        "account": args.get("account")}]
    elif act == "remove_member":
        c["members"] = [m for m in c["members"] if m["pubkey"] != args["pubkey"]]
    else:
        c["k"] = args["k"]
    c["epoch"] += 1                 # every open proposal and decision approval of before: void
    st.put("state", b"committee", _canon(c))


def _apply_proposal(st, genesis, c, n, kind, body, signer):
    t = body["t_ns"]
    me = signer.hex()
    if kind == K_PROPOSE:
        pid = body["proposal_id"]
        expect = _u64_of(st, "state", b"next_proposal", 1)
        if pid != expect:
            raise OrderError(f"propose: proposal id {pid}, expected {expect}")
        act, args = body["act"], body["args"]
        if act in ACTS and _canon_args(act, args) != args:
            raise LedgerError(f"propose {act}: the arguments are not in canonical form "
                              f"(expected {_canon(_canon_args(act, args)).decode()[:120]})")
        _check_act(c, act, args)
        if _live_proposal(st, c, act, args, t) is not None:
            raise ConflictError(f"propose {act}: an identical proposal is open (approve it)")
        p = {"proposal_id": pid, "act": act, "args": args, "epoch": c["epoch"], "t_ns": t,
             "approvals": [], "executed": False, "entries": []}
        st.put("state", b"next_proposal", _k64(pid + 1))
    else:
        pid = body["proposal_id"]
        p = _jget(st, "proposals", _k64(pid))
        if p is None:
            raise NotFound(f"approve {pid}: no such proposal")
        state = _proposal_state(p, c, t)
        if state != "open":
            raise OrderError(f"approve {pid}: the proposal is {state}"
                             + (" (a membership or threshold change since: propose it again)"
                                if state == "stale" else ""))
        if me in p["approvals"]:
            raise ConflictError(f"approve {pid}: {_signer_name(signer)} approved it already")
    p["approvals"].append(me)
    p["entries"].append(n)
    if len(p["approvals"]) >= c["k"]:
        p["executed"] = True
        _execute(st, genesis, c, n, p["act"], p["args"], signer)
    st.put("proposals", _k64(pid), _canon(p))


def _vote_content(did, ev, vd, faulty):
    return _canon({"dispute_id": did, "evidence_digest": ev, "verdict_digest": vd,
                   "faulty": faulty}).decode()


def _apply_vote(st, genesis, c, n, body, signer):
    did, t = body["dispute_id"], body["t_ns"]
    d = _jget(st, "disputes", _k64(did))
    if d is None:
        raise NotFound(f"approve_decision dispute {did}: no such dispute")
    faulty = body["faulty"]
    for i in range(1, len(faulty)):
        if faulty[i] <= faulty[i - 1]:       # the contract's FaultyDuplicate
            raise LedgerError(f"approve_decision dispute {did}: faulty must list each node once, "
                              f"ascending (node {faulty[i]} twice or out of order)")
    ev, vd = body["evidence_digest"], body["verdict_digest"]
    content = _vote_content(did, ev, vd, faulty)
    rec = _jget(st, "votes", _k64(did)) or {"votes": [], "decided": None}
    me = signer.hex()
    done = d["state"] in ("decided", "settled")
    mine = [v for v in rec["votes"] if v["member"] == me]
    ttl_ns = c["ttl_s"] * 1_000_000_000
    if mine and mine[0]["content"] == content and mine[0]["epoch"] == c["epoch"] and not done \
            and t >= mine[0]["t_ns"] + ttl_ns:
        mine[0].update(t_ns=t, entry=n)       # an expired approval renewed (same content: C3)
    elif mine:
        v = mine[0]
        if v["epoch"] == c["epoch"] or done:
            if v["content"] == content:
                raise ConflictError(f"approve_decision dispute {did}: {_signer_name(signer)} "
                                    "approved this content already")
            raise ConflictError(f"approve_decision dispute {did}: {_signer_name(signer)} "
                                f"approved another content (verdict {v['verdict_digest'][:16]}"
                                "...); a member approves one content per dispute")
        v.update(epoch=c["epoch"], t_ns=t, content=content, evidence_digest=ev,
                 verdict_digest=vd, faulty=faulty, entry=n)
    else:
        rec["votes"].append({"member": me, "epoch": c["epoch"], "t_ns": t, "content": content,
                             "evidence_digest": ev, "verdict_digest": vd, "faulty": faulty,
                             "entry": n})
    count = sum(1 for v in rec["votes"] if v["content"] == content and v["epoch"] == c["epoch"]
                and t < v["t_ns"] + ttl_ns)
    if not done and count >= c["k"]:
        d["evidence_digest"] = ev
        d["state"] = "evidence"
        _decide_effect(st, d, did, vd, faulty, K_DECIDE_ROUTE, "approve_decision")
        d["state"] = "settled"
        _settle_effect(st, genesis, d)
        rec["decided"] = content
    d["entries"].append(n)
    st.put("disputes", _k64(did), _canon(d))
    st.put("votes", _k64(did), _canon(rec))


def _decide_effect(st, d, did, vd, faulty, kind, op):
    sla = _jget(st, "slas", _k64(d["sla_id"]))
    # the contract's FaultyNotOnRoute / FaultyDuplicate (both LedgerError there), in its
    # order: for each faulty node, on the route first, then not listed before it
    for i, x in enumerate(faulty):
        if kind == K_DECIDE_ROUTE and x not in sla["route"]:
            raise LedgerError(f"{op} dispute {did}: faulty node {x} is not on the "
                              f"route {sla['route']} of sla {d['sla_id']}")
        if x in faulty[:i]:
            raise LedgerError(f"{op} dispute {did}: faulty lists node {x} twice")
    penalty = sla["penalty_per_violation"] * len(faulty)
    d.update(verdict_digest=vd, faulty=faulty, penalty=penalty)
    return penalty


def _effect(st, genesis, n, kind, body, signer, who, is_gov):
    """What a legacy kind (or an executed proposal of that act) does to the state."""
    op = KIND_NAMES[kind]
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
        _check_penalty(sla.sla_id, body["penalty_per_violation"], body["route"])
        st.put("slas", _k64(sla.sla_id), _canon(_sla_body(sla, _unhex(tp))))
    elif kind == K_ANCHOR:
        a = _anchor_of(body)
        mine = st.get("node_by_key", signer)
        if mine is None:
            raise PermissionDenied(f"anchor node {a.node_id} batch {a.batch_seq}: {who} is not a "
                                   "registered node")
        mine = struct.unpack(">Q", mine)[0]
        if st.get("state", b"retired" + _k64(mine)) is not None:
            raise PermissionDenied(f"anchor node {a.node_id} batch {a.batch_seq}: node {mine} "
                                   "is retired")
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
        rec = {"dispute_id": did, "sla_id": sla_id, "from_ns": body["from_ns"],
               "to_ns": body["to_ns"], "state": "opened", "evidence_digest": None,
               "verdict_digest": None, "faulty": [], "penalty": 0, "entries": [n]}
        if "t_ns" in body:
            rec["opened_t_ns"] = body["t_ns"]
            # one dispute per SLA freezes its route's deposits (a ttl at most); the next one
            # freezes once that one is settled (an expired undecided one: decide it first)
            key = b"Z" + _k64(sla_id)
            f = _jget(st, "money", key)
            if f is None or _jget(st, "disputes", _k64(f))["state"] == "settled":
                st.put("money", key, _canon(did))
        st.put("disputes", _k64(did), _canon(rec))
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
            penalty = _decide_effect(st, d, did, body["verdict_digest"], body["faulty"], kind,
                                     "decide")
            if body["penalty"] != penalty:
                raise ConflictError(f"decide dispute {did}: penalty {body['penalty']}, the SLA "
                                    f"gives {penalty}")
        d["state"] = DISPUTE_STATES[DISPUTE_STATES.index(need) + 1]
        if kind == K_SETTLE:
            _settle_effect(st, genesis, d)
        d["entries"].append(n)
        st.put("disputes", _k64(did), _canon(d))


class LocalLedger:
    """The ``local`` backend (docs/ledger.md, docs/ledger-local.md). ``path`` is the LMDB data file
    (its lock file is ``path + "-lock"``). A new ledger needs ``governance_pubkey`` (32 bytes, or a
    key with ``.public``); an existing one must be opened with the same key or ``None``, and with
    its own hash (or ``hash_name=None``), else ``LedgerMismatch``."""

    def __init__(self, path, hash_name="sha3-256", governance_pubkey=None, map_size=None,
                 committee=None, clock=None, balances=None, notice_s=None, host_clock=...):
        """``committee``: a new ledger's founding ``types.Committee`` (members with their
        Ed25519 keys; k; ttl_s) instead of ``governance_pubkey`` (a committee of one, k = 1, as
        before committees); an existing ledger's must match. ``clock``: ns since the epoch
        (default time.time_ns), the time new entries carry. ``balances`` ({Ed25519 public key:
        amount}) and ``notice_s`` (a deposit's withdrawal notice, >= the ttl; default the larger
        of 14 days and the ttl): a new committee ledger's money, the local stand-in for it (no
        entry mints any more later). ``host_clock``: the clock a new entry's time is checked
        against (within MAX_SKEW_NS), default the host's real time (time.time_ns) even when
        ``clock`` is injected; ``None`` opts out (the writer's clock is trusted), as does the
        environment variable BEAT_LEDGER_HOST_CLOCK=writer (an integer there: a fixed host time,
        for tests that simulate the passing of time)."""
        self.path = os.fspath(path)
        self.clock = clock or time.time_ns
        if host_clock is ...:
            env = os.environ.get(HOST_CLOCK_ENV, "")
            if env == "writer":
                host_clock = None
            elif env.isdigit():
                host_clock = (lambda v: lambda: v)(int(env))
            else:
                host_clock = time.time_ns
        self.host_clock = host_clock
        self._high_ns = 0        # the latest time this process read: its clock never goes back
        genesis = None
        if committee is not None:
            for m in committee.members:
                if m.pubkey is None:
                    raise ValueError("committee: every member of a local ledger needs its "
                                     "Ed25519 key")
                check_public(m.pubkey)
            if len({m.pubkey for m in committee.members}) != len(committee.members):
                raise ValueError("committee: a key is listed twice")
            genesis = {"members": [{"pubkey": _hex(m.pubkey), "account": _hex(m.account)}
                                   for m in committee.members],
                       "k": committee.k, "ttl_s": committee.ttl_s,
                       "notice_s": (notice_s if notice_s is not None
                                    else max(DEFAULT_NOTICE_S, committee.ttl_s)),
                       "balances": {bytes(k).hex(): int(v) for k, v in (balances or {}).items()}}
            if genesis["notice_s"] < committee.ttl_s:
                raise ValueError(f"the withdrawal notice ({genesis['notice_s']} s) must be at "
                                 f"least the proposal ttl ({committee.ttl_s} s)")
            for k, v in genesis["balances"].items():
                if len(k) != 64 or not _is_u64(v):
                    raise ValueError(f"balances: {k[:16]}...: a 32-byte key and an amount in "
                                     "0..2^64-1")
            governance_pubkey = governance_pubkey or committee.members[0].pubkey
        if hash_name is not None:
            hasher(hash_name)
        if governance_pubkey is not None and not isinstance(governance_pubkey, (bytes, bytearray)):
            governance_pubkey = governance_pubkey.public
        if governance_pubkey is not None and len(governance_pubkey) != 32:
            raise ValueError(f"governance_pubkey must be 32 bytes, got {len(governance_pubkey)}")
        existed = os.path.exists(self.path)
        self.map_size = map_size or DEFAULT_MAP_SIZE
        self._sla_cache = {}        # stored bytes -> SLA: slas() is read every poll of a service
        try:
            self.env = lmdb.open(self.path, subdir=False, lock=True, map_size=self.map_size,
                                 max_dbs=len(DB_NAMES), readahead=False)
        except lmdb.Error as exc:
            raise LedgerError(f"{self.path}: cannot open the ledger: {exc}") from None
        try:
            with self.env.begin(write=True) as txn:
                self.dbs = {name: self.env.open_db(name.encode(), txn=txn, create=True)
                            for name in DB_NAMES}
                self._check_or_init(txn, hash_name, governance_pubkey, genesis)
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

    def _check_or_init(self, txn, hash_name, gov, genesis=None):
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
            if genesis is not None:
                txn.put(b"genesis", _canon(genesis), db=meta)
            txn.put(b"head", self._genesis_hash(hash_name, bytes(gov),
                                                txn.get(b"genesis", db=meta)), db=meta)
            self.hash_name, self.governance_pubkey = hash_name, bytes(gov)
            self.genesis = genesis_of(bytes(gov), txn.get(b"genesis", db=meta))
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
        stored_genesis = txn.get(b"genesis", db=meta)
        stored_genesis = None if stored_genesis is None else bytes(stored_genesis)
        if gov is not None and bytes(gov) != stored_gov and not (
                stored_genesis is not None and _is_member(_committee(
                    _TxnState(txn, self.dbs), genesis_of(stored_gov, stored_genesis)), bytes(gov))):
            raise LedgerMismatch(f"{self.path}: this ledger belongs to governance key "
                                 f"{stored_gov.hex()}, not {bytes(gov).hex()}")
        if genesis is not None and (_canon(genesis) != stored_genesis and not (
                stored_genesis is None and genesis == genesis_of(stored_gov))):
            raise LedgerMismatch(f"{self.path}: this ledger was created with another committee")
        self.hash_name, self.governance_pubkey = stored_hash, stored_gov
        self.genesis = genesis_of(stored_gov, stored_genesis)

    @staticmethod
    def _genesis_hash(hash_name, gov, genesis_json):
        """Entry 0's prev_hash: binds the chain to its governance (and its founding committee)."""
        if genesis_json is None:
            return hasher(hash_name)(GENESIS_TAG + gov)
        return hasher(hash_name)(GENESIS_TAG_COMMITTEE + bytes(genesis_json))

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
                if isinstance(body, tuple):
                    kind, body = body
                n = struct.unpack(">Q", st.get("meta", b"next_entry"))[0]
                unsigned = st.get("meta", b"head") + bytes([kind]) + _canon(body) + pub
                sig = bytes(signer.sign(unsigned))
                if not ed25519_verify(pub, unsigned, sig):
                    raise PermissionDenied(f"{KIND_NAMES[kind]}: the signature of "
                                           f"{_signer_name(pub)} does not verify")
                _apply(st, self.genesis, n, kind, body, pub)
                if kind in TIMED_KINDS and "t_ns" in body and self.host_clock is not None:
                    host, t = int(self.host_clock()), body["t_ns"]
                    if abs(t - host) > MAX_SKEW_NS:
                        raise OrderError(
                            f"{KIND_NAMES[kind]}: entry time {t} is {(t - host) / 1e9:+.0f} s "
                            f"from the host's clock ({host}); more than "
                            f"{MAX_SKEW_NS // 10**9} s is refused (a writer's clock is wrong, "
                            "or the entry is back- or post-dated)")
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
        if not self._member(st, pub):
            return False
        return _jget(st, db, key) == json.loads(_canon(body))

    def _member(self, st, pub):
        return _is_member(_committee(st, self.genesis), pub)

    def _now(self, st, member=True):
        """The time a new entry carries: the clock (never back within this process), never
        before the last member entry's time (a member's entry, and the committee's deadlines)
        or the last entry's time (anyone else's)."""
        self._high_ns = max(self._high_ns, int(self.clock()))
        return max(self._high_ns, _u64_of(st, "state", b"last_member_t_ns"),
                   0 if member else _u64_of(st, "state", b"last_t_ns"))

    def _act_build(self, act, args, legacy_kind, out):
        """build() of a governance act: the legacy entry (k = 1, or a signer who is not a
        member: the rules refuse it as before), else propose-or-approve the identical open
        proposal; out["proposal"] gets its id."""
        def build(st, pub):
            c = _committee(st, self.genesis)
            member = _is_member(c, pub)
            if legacy_kind is not None and (c["k"] == 1 or not member):
                return (legacy_kind, args)
            t = self._now(st)
            args_j = json.loads(_canon(args))
            p = _live_proposal(st, c, act, args_j, t) if member else None
            if p is not None:
                out["proposal"] = p["proposal_id"]
                if pub.hex() in p["approvals"]:
                    return "exists"             # counted once
                return (K_APPROVE, {"proposal_id": p["proposal_id"], "t_ns": t})
            out["proposal"] = _u64_of(st, "state", b"next_proposal", 1)
            return (K_PROPOSE, {"proposal_id": out["proposal"], "act": act, "args": args_j,
                                "t_ns": t})
        return build

    def _act(self, act, args, legacy_kind, signer, done=None):
        """Run a governance act; returns its Proposal (None when done directly, k = 1).
        ``done(st, pub)``: True when the act's result is already there (a no-op)."""
        out = {}
        inner = self._act_build(act, args, legacy_kind, out)

        def build(st, pub):
            if done is not None and self._member(st, pub) and done(st, pub):
                return "exists"
            return inner(st, pub)

        self._write(K_PROPOSE, build, signer)
        return self.proposal(out["proposal"]) if "proposal" in out else None

    def register_node(self, node, *, signer):
        """Idempotent: the identical node again writes nothing; another node under its id, or
        its public key under another id, is ConflictError. A weak public key (small order, or not
        canonical: keys.check_public) is WeakKeyError (a ValueError), nothing written."""
        try:
            check_public(node.pubkey)
        except WeakKeyError as exc:
            raise WeakKeyError(f"register_node {node.node_id}: {exc}") from None

        if node.operator is not None:
            if len(node.operator) != 32:
                raise LedgerError(f"register_node {node.node_id}: the local backend needs the "
                                  "operator's Ed25519 key (32 bytes)")
            check_public(node.operator)
        body = _node_body(node)
        return self._act("register_node", body, K_NODE, signer, done=lambda st, pub: self._same(
            st, pub, "nodes", _k64(node.node_id), body))

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

        body = _sla_body(sla, tenant_pubkey)
        return self._act("register_sla", body, K_SLA, signer, done=lambda st, pub: self._same(
            st, pub, "slas", _k64(sla.sla_id), body))

    # -- the registered topology --------------------------------------------------------------

    def _link(self, kind, a, b, signer):
        _need_u64("a", a)
        _need_u64("b", b)
        a, b = min(a, b), max(a, b)
        done = "active" if kind == K_LINK else "retired"

        def same(st, pub):
            old = _jget(st, "links", _k64(a) + _k64(b))
            return old is not None and old["state"] == done

        return self._act("register_link" if kind == K_LINK else "retire_link", {"a": a, "b": b},
                         kind, signer, done=same)

    def register_link(self, a, b, *, signer):
        """The undirected link between registered nodes ``a`` and ``b`` (governance only).
        Idempotent: an active link again writes nothing; a retired one becomes active again.
        An unregistered node is NotFound, ``a == b`` LedgerError (the contract's InvalidLink)."""
        return self._link(K_LINK, a, b, signer)

    def retire_link(self, a, b, *, signer):
        """The link between ``a`` and ``b`` no longer exists (governance only). Idempotent: a
        retired link again writes nothing; a link never registered is NotFound."""
        return self._link(K_UNLINK, a, b, signer)

    # -- the committee ------------------------------------------------------------------------

    def retire_node(self, node_id, *, signer):
        """The node anchors no more (its anchors stay). Committee act; idempotent."""
        _need_u64("node_id", node_id)
        return self._act("retire_node", {"node_id": node_id}, None, signer,
                         done=lambda st, pub: st.get("state", b"retired" + _k64(node_id))
                         is not None)

    def node_retired(self, node_id):
        return self._get("state", b"retired" + _k64(node_id)) is not None

    def add_member(self, member, *, signer):
        """Propose (or approve) adding ``member`` (a types.Member with its Ed25519 key)."""
        if member.pubkey is None:
            raise LedgerError("add_member: the local backend needs the member's Ed25519 key")
        return self._act("add_member", {"pubkey": _hex(member.pubkey),
                                        "account": _hex(member.account)}, None, signer)

    def remove_member(self, member, *, signer):
        """Propose (or approve) removing ``member`` (a types.Member, or its Ed25519 key)."""
        pub = member.pubkey if isinstance(member, Member) else member
        if pub is None:
            raise LedgerError("remove_member: the local backend needs the member's Ed25519 key")
        return self._act("remove_member", {"pubkey": _hex(pub)}, None, signer)

    def set_threshold(self, k, *, signer):
        return self._act("set_threshold", {"k": k}, None, signer)

    def approve(self, proposal_id, *, signer):
        """Approve proposal ``proposal_id`` (a member; again: a no-op). Returns it."""
        _need_u64("proposal_id", proposal_id)

        def build(st, pub):
            p = _jget(st, "proposals", _k64(proposal_id))
            if p is not None and pub.hex() in p["approvals"] and self._member(st, pub):
                return "exists"
            return {"proposal_id": proposal_id, "t_ns": self._now(st)}

        self._write(K_APPROVE, build, signer)
        return self.proposal(proposal_id)

    def committee(self):
        with self.env.begin() as txn:
            c = _committee(_TxnState(txn, self.dbs), self.genesis)
        return Committee(tuple(Member(_unhex(m["pubkey"]), _unhex(m.get("account")))
                               for m in c["members"]), c["k"], c["epoch"], c["ttl_s"])

    def _proposal_of(self, p, c, now):
        ttl = c["ttl_s"] * 1_000_000_000
        return Proposal(p["proposal_id"], p["act"], p["args"], p["epoch"], p["t_ns"],
                        p["t_ns"] + ttl, tuple(p["approvals"]), _proposal_state(p, c, now),
                        c["k"])

    def proposal(self, proposal_id):
        with self.env.begin() as txn:
            st = _TxnState(txn, self.dbs)
            p = _jget(st, "proposals", _k64(proposal_id))
            if p is None:
                return None
            return self._proposal_of(p, _committee(st, self.genesis), self._now(st))

    def proposals(self):
        with self.env.begin() as txn:
            st = _TxnState(txn, self.dbs)
            c, now = _committee(st, self.genesis), self._now(st)
            return [self._proposal_of(json.loads(bytes(v)), c, now)
                    for _, v in txn.cursor(db=self.dbs["proposals"])]

    def pending(self):
        """The open proposals (this epoch, unexpired, not executed) with their approvals."""
        return [p for p in self.proposals() if p.state == "open"]

    def approve_decision(self, dispute_id, evidence_digest, verdict_digest, faulty, *, signer):
        """This member's approval of the dispute's decision: (evidence digest, verdict digest,
        faulty). At the k-th approval of one content the dispute is decided and settled in the
        same entry; another content is dissent; one content per member. Returns the dispute."""
        _need_u64("dispute_id", dispute_id)
        _need_digest("evidence_digest", evidence_digest)
        _need_digest("verdict_digest", verdict_digest)
        faulty = sorted(int(x) for x in faulty)
        for x in faulty:
            _need_u64("faulty node_id", x)
        ev, vd = _hex(evidence_digest), _hex(verdict_digest)

        def build(st, pub):
            rec = _jget(st, "votes", _k64(dispute_id))
            d = _jget(st, "disputes", _k64(dispute_id))
            if rec is not None and d is not None and self._member(st, pub):
                c = _committee(st, self.genesis)
                content = _vote_content(dispute_id, ev, vd, faulty)
                now = self._now(st)
                for v in rec["votes"]:
                    live = now < v["t_ns"] + c["ttl_s"] * 1_000_000_000
                    if v["member"] == pub.hex() and v["content"] == content and (
                            (v["epoch"] == c["epoch"] and live)
                            or d["state"] in ("decided", "settled")):
                        return "exists"           # counted once (an expired one: renewed)
            return {"dispute_id": dispute_id, "evidence_digest": ev, "verdict_digest": vd,
                    "faulty": faulty, "t_ns": self._now(st)}

        self._write(K_VOTE, build, signer)
        return self.get_dispute(dispute_id)

    def dispute_votes(self, dispute_id):
        rec = self._get("votes", _k64(dispute_id))
        if rec is None:
            return []
        return [Vote(v["member"], _unhex(v["evidence_digest"]), _unhex(v["verdict_digest"]),
                     v["epoch"], rec["decided"] is not None and v["content"] != rec["decided"])
                for v in rec["votes"]]

    def dispute_dissent(self, dispute_id):
        """The members who approved another content than the one decided (and theirs)."""
        return [v for v in self.dispute_votes(dispute_id) if v.dissent]

    def disputes(self):
        return [_dispute_of(d) for d in self._all("disputes")]

    # -- the money ------------------------------------------------------------------------------

    def _money(self, kind, node_id, signer, **extra):
        _need_u64("node_id", node_id)

        def build(st, pub):
            body = {"node_id": node_id, "t_ns": self._now(st, member=False), **extra}
            if kind == K_WITHDRAW:
                body["amount"] = _deposit_rec(st, node_id)["amount"]
            return body

        self._write(kind, build, signer)

    def deposit(self, node_id, amount, *, signer):
        """The node's operator locks ``amount`` of its balance for the node (its debts are paid
        first, to their tenants). Returns the Deposit."""
        self._money(K_DEPOSIT, node_id, signer, amount=amount)
        return self.deposit_of(node_id)

    def request_withdrawal(self, node_id, *, signer):
        self._money(K_REQUEST_WITHDRAWAL, node_id, signer)
        return self.deposit_of(node_id)

    def withdraw(self, node_id, *, signer):
        """The whole deposit back to the operator's balance once the notice passed; refused
        (OrderError) before, with a debt, or while a dispute on a route holding the node is open
        (for at most a ttl after it was opened). Returns the amount."""
        amount = self.deposit_of(node_id).amount
        self._money(K_WITHDRAW, node_id, signer)
        return amount

    def deposit_of(self, node_id):
        with self.env.begin() as txn:
            st = _TxnState(txn, self.dbs)
            dep = _deposit_rec(st, node_id)
            due = dep["due_ns"]
            return Deposit(node_id, dep["amount"], due,
                           sum(x["amount"] for x in _debts_of(st, node_id)),
                           _frozen_by(st, self.genesis, node_id, self._now(st)),
                           None if due is None else due + withdrawal_window_ns(self.genesis))

    def debts(self, node_id=None):
        with self.env.begin() as txn:
            st = _TxnState(txn, self.dbs)
            ids = [node_id] if node_id is not None else [
                struct.unpack(">Q", bytes(k))[0] for k, _ in txn.cursor(db=self.dbs["nodes"])]
            return [Debt(i, _unhex(x["tenant"]), x["amount"], x["dispute_id"])
                    for i in ids for x in _debts_of(st, i)]

    def balance(self, pubkey):
        """The key's balance: the local stand-in for money (genesis balances, then entries)."""
        pub = pubkey.public if hasattr(pubkey, "public") else pubkey
        with self.env.begin() as txn:
            return _balance(_TxnState(txn, self.dbs), self.genesis, bytes(pub).hex())

    def balances(self):
        out = dict(self.genesis.get("balances", {}))
        with self.env.begin() as txn:
            for k, v in txn.cursor(db=self.dbs["money"]):
                k = bytes(k)
                if k[:1] == b"B":
                    out[k[1:].hex()] = struct.unpack(">Q", bytes(v))[0]
        return {bytes.fromhex(k): v for k, v in sorted(out.items())}

    def tenant_of(self, sla_id):
        return self.tenant_pubkey(sla_id)

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
                    "to_ns": to_ns, "t_ns": self._now(st, member=False)}

        self._write(K_OPEN, build, signer)
        return out["id"]

    def _dispute_done(self, st, pub, dispute_id, **same):
        """The governance repeating a dispute step already taken with this content: a no-op (as
        on the ethereum backend). Other content after the step is the rules' OrderError."""
        if not self._member(st, pub):
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
        """Every SLA. An entry's decoded SLA (frozen) is kept by its stored bytes: a governance
        service reads all of them every poll (1,000 SLAs: ~90 ms of JSON and checks a poll)."""
        cache = self._sla_cache
        out = []
        with self.env.begin() as txn:
            for _k, v in txn.cursor(db=self.dbs["slas"]):
                raw = bytes(v)
                sla = cache.get(raw)
                if sla is None:
                    sla = _sla_of(json.loads(raw))
                    if len(cache) >= SLA_CACHE_MAX:
                        cache.clear()
                    cache[raw] = sla
                out.append(sla)
        return out

    def get_anchor(self, node_id, batch_seq):
        d = self._get("anchors", _k64(node_id) + _k64(batch_seq))
        return None if d is None else _anchor_of(d, str(d["entry"]))

    def anchors(self, node_id=None, from_seq=0):
        if node_id is None:
            rows = [d for d in self._all("anchors") if d["batch_seq"] >= from_seq]
        else:
            rows = self._all("anchors", _k64(node_id), _k64(from_seq))
        return [_anchor_of(d, str(d["entry"])) for d in rows]

    def settled_ns(self):
        """A time T such that every anchor this ledger took at or before T (its ``ledger_t_ns``)
        is readable now: the clock read while holding the write lock (an anchor's time is taken
        inside its write transaction, so every one stamped before T has committed)."""
        try:
            with self.env.begin(write=True) as txn:
                t = time.time_ns()
                txn.abort()
            return t
        except lmdb.Error:                # a read-only ledger: nobody writes through it
            return time.time_ns()

    def change_marker(self):
        """A number that changes whenever anything is written to the ledger, by any process
        (LMDB's last transaction id): a watcher reads it every few tens of milliseconds and the
        whole ledger only when it moved."""
        return self.env.info()["last_txnid"]

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
        now = int((self.host_clock or self.clock)())
        with self.env.begin() as txn:
            meta = {bytes(k): bytes(v) for k, v in txn.cursor(db=self.dbs["meta"])}
            gov = meta[b"governance"]
            genesis = genesis_of(gov, meta.get(b"genesis"))
            prev = self._genesis_hash(self.hash_name, gov, meta.get(b"genesis"))
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
                    t = body.get("t_ns") if isinstance(body, dict) else None
                    if v[32] in TIMED_KINDS and isinstance(t, int) and t > now + MAX_SKEW_NS:
                        problems.append(f"entry {n}: {KIND_NAMES.get(v[32], '?')} is stamped "
                                        f"{t}, after this verifier's clock ({now}): a forged "
                                        "time")
                    _apply(st, genesis, n, v[32], body, pub)
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
