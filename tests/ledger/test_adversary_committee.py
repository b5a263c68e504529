"""The adversary of the committee (issue 15): every member organisation, operator and tenant may
lie or collude with one other. Each attack runs against BOTH backends where it applies -- the local
ledger (LMDB, entries signed with Ed25519) and the Beat contract on a real ganache chain
(ledger_client.devnode) -- and either shows the refusal (a passing test asserting the error that
names the thing) or is a strict xfail naming its finding (/work/prompts/findings-committee.md,
C1, C2, ...).

The committee under attack: 3 members, k = 2, proposals live TTL_S seconds.
"""
import json
import os
import struct
import subprocess
import sys
import textwrap

import pytest

from conftest import require_ganache
from ledger_client.errors import (ConflictError, LedgerError, NotFound, OrderError,
                                  PermissionDenied)
from ledger_client.keys import DeviceKey
from ledger_client.types import SLA, Committee, Member, Node

# the tests simulate the passing of time with an injected clock: the local ledger trusts it
# (a test that checks the host clock marks itself with its own)
pytestmark = pytest.mark.ledger_host_clock("writer")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TTL_S = 3600
T0 = 1_700_000_000 * 10**9
V4 = bytes(10) + b"\xff\xff"
EV, VA, VB = b"\xee" * 32, b"\xaa" * 32, b"\xbb" * 32
ROLES = ("m1", "m2", "m3", "m4", "tenant", "stranger", "n1", "n2", "n3")
BACKENDS = ("local", "ethereum")


def ed(i):
    return DeviceKey.from_seed(bytes([0x60 + i]) * 32)


def sla(route=(1, 2), ppv=5):
    return SLA(7, "acme", V4 + bytes([10, 0, 0, 1]), V4 + bytes([10, 0, 0, 2]), route,
               penalty_per_violation=ppv)


class Side:
    """One backend with its signers per role (Ed25519 keys on local, accounts on ethereum)."""

    def __init__(self, kind, led, signers, members, advance, tenant_kw, account_of):
        self.kind, self.led, self.signers, self.members = kind, led, signers, members
        self.advance, self.tenant_kw, self.account_of = advance, tenant_kw, account_of

    def s(self, role):
        return self.signers[role]

    def node(self, i):
        return Node(i, f"op-{i}", ed(10 + i).public, self.account_of(f"n{i}"))

    def name(self, role):
        """How the backend names the member in a proposal's approvals."""
        m = self.members[role]
        return m.pubkey.hex() if self.kind == "local" else self.signers[role].address


def _members(accounts):
    return {r: Member(ed(i).public, accounts[r].address_bytes if accounts else None)
            for i, r in enumerate(("m1", "m2", "m3", "m4"))}


def local_side(tmp_path, k=2, n=3):
    from ledger_client.local import LocalLedger
    members = _members(None)
    now = [T0]
    led = LocalLedger(str(tmp_path / "committee.mdb"), clock=lambda: now[0],
                      committee=Committee(tuple(members[r] for r in ("m1", "m2", "m3")[:n]), k,
                                          ttl_s=TTL_S))
    signers = {r: ed(i) for i, r in enumerate(ROLES)}
    for i in (1, 2, 3):
        signers[f"n{i}"] = ed(10 + i)

    def advance(s):
        now[0] += s * 10**9

    side = Side("local", led, signers, members, advance,
                {"tenant_pubkey": signers["tenant"].public}, lambda r: None)
    side.now = now
    side.path = str(tmp_path / "committee.mdb")
    return side


@pytest.fixture(scope="module")
def ganache(tmp_path_factory):
    """One ganache chain for the module; every test deploys its own contract on it."""
    require_ganache()
    from ledger_client.devnode import DevNode
    from ledger_client.ethereum import Account
    accounts = {r: Account.generate() for r in ROLES}
    node = DevNode(str(tmp_path_factory.mktemp("adv-chain") / "chain"),
                   accounts=[(a, 10**22) for a in accounts.values()])
    node.start()
    yield node, accounts
    node.stop()


def chain_side(ganache, k=2, n=3):
    from ledger_client.ethereum import EthereumLedger
    node, accounts = ganache
    members = _members(accounts)
    led = EthereumLedger.deploy(node.url, accounts["m1"], "sha3-256", timeout=30,
                                committee=Committee(tuple(members[r] for r in
                                                          ("m1", "m2", "m3")[:n]), k,
                                                    ttl_s=TTL_S))

    def advance(s):
        led.w3.provider.make_request("evm_increaseTime", [s])
        led.w3.provider.make_request("evm_mine", [])

    return Side("ethereum", led, accounts, members, advance,
                {"tenant_account": accounts["tenant"]}, lambda r: accounts[r].address_bytes)


@pytest.fixture(params=BACKENDS)
def side(request, tmp_path):
    if request.param == "local":
        s = local_side(tmp_path)
        yield s
        s.led.close()
    else:
        yield chain_side(request.getfixturevalue("ganache"))


def _exec(S, role, act):
    """Propose act (a callable(S, signer)) as `role`; returns the proposal (or None: k = 1)."""
    return act(S, S.s(role))


def setup_nodes_and_sla(S, route=(1, 2)):
    """Nodes 1..3 and SLA 7 on `route`, each by two members (the committee's k = 2)."""
    for i in (1, 2, 3):
        for r in ("m1", "m2"):
            S.led.register_node(S.node(i), signer=S.s(r))
    for r in ("m1", "m2"):
        S.led.register_sla(sla(route), signer=S.s(r), **S.tenant_kw)
    assert [n.node_id for n in S.led.nodes()] == [1, 2, 3]
    assert S.led.get_sla(7) is not None


# -- A1: one member alone, k = 2 --------------------------------------------------------------

def test_one_member_alone_never_reaches_k(side):
    """m1 proposes, proposes again, approves its own proposal again and again: still 1 of 2,
    nothing executed; the add-member route to a second voice needs k approvals too."""
    S = side
    p = S.led.register_node(S.node(1), signer=S.s("m1"))
    for _ in range(3):
        q = S.led.register_node(S.node(1), signer=S.s("m1"))
        assert q.proposal_id == p.proposal_id
        q = S.led.approve(p.proposal_id, signer=S.s("m1"))
        assert q.approvals == (S.name("m1"),) and q.state == "open"
    assert S.led.get_node(1) is None
    # a sock puppet: m1 proposes adding a key of its own, then "approves" with the puppet
    puppet = S.members["m4"]
    a = S.led.add_member(puppet, signer=S.s("m1"))
    assert a.state == "open" and len(a.approvals) == 1
    with pytest.raises(PermissionDenied):
        S.led.approve(a.proposal_id, signer=S.s("m4"))
    with pytest.raises(PermissionDenied):
        S.led.approve(p.proposal_id, signer=S.s("m4"))
    assert S.led.committee().k == 2 and len(S.led.committee().members) == 3
    assert S.led.get_node(1) is None
    # lowering k alone: a proposal at 1 of 2
    t = S.led.set_threshold(1, signer=S.s("m1"))
    assert t.state == "open" and S.led.committee().k == 2


def test_direct_acts_refused_when_k_above_one(side):
    """The single-key calls of before (decide, record_evidence) are refused to one member with
    k = 2, naming the need for proposals; settle of an undecided dispute changes nothing."""
    S = side
    setup_nodes_and_sla(S)
    did = S.led.open_dispute(7, 0, 10, signer=S.s("tenant"))
    with pytest.raises(PermissionDenied):
        S.led.record_evidence(did, EV, signer=S.s("m1"))
    with pytest.raises(PermissionDenied):
        S.led.decide(did, VA, [1], signer=S.s("m1"))
    with pytest.raises(OrderError):
        S.led.settle(did, signer=S.s("m1"))
    d = S.led.get_dispute(did)
    assert d.state == "opened" and d.faulty == () and d.penalty == 0


# -- A2: approvals that must not count ----------------------------------------------------------

def test_approval_of_executed_expired_stale_and_by_removed_member(side):
    S = side
    p = S.led.register_node(S.node(1), signer=S.s("m1"))
    assert S.led.approve(p.proposal_id, signer=S.s("m2")).state == "executed"
    with pytest.raises(OrderError, match="executed|ProposalDone"):
        S.led.approve(p.proposal_id, signer=S.s("m3"))
    # expired
    q = S.led.register_node(S.node(2), signer=S.s("m1"))
    S.advance(TTL_S + 1)
    with pytest.raises(OrderError, match="expired|ProposalExpired"):
        S.led.approve(q.proposal_id, signer=S.s("m2"))
    assert S.led.get_node(2) is None
    # stale: m1's proposal, then the committee removes m1 (m2 + m3), then m1's approvals
    r = S.led.register_node(S.node(3), signer=S.s("m1"))
    rm = S.led.remove_member(S.members["m1"], signer=S.s("m2"))
    assert S.led.approve(rm.proposal_id, signer=S.s("m3")).state == "executed"
    assert S.led.committee().epoch == 1
    with pytest.raises(OrderError, match="stale|ProposalStale"):
        S.led.approve(r.proposal_id, signer=S.s("m2"))
    # the removed member can neither approve nor propose
    with pytest.raises(PermissionDenied):
        S.led.approve(r.proposal_id, signer=S.s("m1"))
    with pytest.raises(PermissionDenied):
        S.led.register_node(S.node(3), signer=S.s("m1"))
    # m1's approval does not carry over: m2 proposes the same content anew, 1 approval
    fresh = S.led.register_node(S.node(3), signer=S.s("m2"))
    assert fresh.proposal_id != r.proposal_id and fresh.approvals == (S.name("m2"),)
    assert S.led.get_node(3) is None
    # and a decision approval by the removed member is refused
    for rr in ("m2", "m3"):
        S.led.register_sla(sla(), signer=S.s(rr), **S.tenant_kw)
    did = S.led.open_dispute(7, 0, 10, signer=S.s("tenant"))
    with pytest.raises(PermissionDenied):
        S.led.approve_decision(did, EV, VA, [1], signer=S.s("m1"))


def test_decision_approvals_do_not_carry_across_an_epoch(side):
    """m1 approves decision A; the committee changes (epoch 1); m2 approving A alone does not
    decide (m1's approval is of an older epoch)."""
    S = side
    setup_nodes_and_sla(S)
    did = S.led.open_dispute(7, 0, 10, signer=S.s("tenant"))
    S.led.approve_decision(did, EV, VA, [1], signer=S.s("m1"))
    S.led.set_threshold(2, signer=S.s("m2"))
    assert S.led.set_threshold(2, signer=S.s("m3")).state == "executed"
    assert S.led.committee().epoch == 1
    d = S.led.approve_decision(did, EV, VA, [1], signer=S.s("m2"))
    assert d.state == "opened" and d.penalty == 0
    d = S.led.approve_decision(did, EV, VA, [1], signer=S.s("m1"))   # cast anew: 2 of 2
    assert d.state == "settled" and d.faulty == (1,)


# -- A3: two colluding members (k = 2 of 3): what they CAN do, by the rules ---------------------

def test_two_colluders_can_take_the_committee_and_it_shows(side):
    """k = 2 of 3: m1 and m2 together are the committee. They remove the honest m3, lower k to 1,
    and then m1 acts alone. The rules allow it (each step had k approvals); what must hold: no
    step executes on one approval, each bumps the epoch (m3's open proposals die) and the
    committee's state tells it. Documented in the findings (C-doc)."""
    S = side
    honest = S.led.register_node(S.node(1), signer=S.s("m3"))
    rm = S.led.remove_member(S.members["m3"], signer=S.s("m1"))
    assert rm.state == "open"
    assert S.led.approve(rm.proposal_id, signer=S.s("m2")).state == "executed"
    with pytest.raises(OrderError):
        S.led.approve(honest.proposal_id, signer=S.s("m1"))   # m3's proposal: stale
    k1 = S.led.set_threshold(1, signer=S.s("m1"))
    assert k1.state == "open"
    assert S.led.approve(k1.proposal_id, signer=S.s("m2")).state == "executed"
    c = S.led.committee()
    assert c.k == 1 and c.epoch == 2 and len(c.members) == 2
    assert S.led.register_node(S.node(2), signer=S.s("m1")) is None   # alone, k = 1
    assert S.led.get_node(2) == S.node(2)
    # removing below k is still refused: k = 1, 2 members -> 1 member ok, 0 never
    assert S.led.remove_member(S.members["m2"], signer=S.s("m1")).state == "executed"
    with pytest.raises(LedgerError, match="k|InvalidCommittee"):
        S.led.remove_member(S.members["m1"], signer=S.s("m1"))


def test_k_bounds_at_proposal_and_at_execution(side):
    """A removal proposed while it was fine, executed after k rose: refused at execution (k <= n
    after every change)."""
    S = side
    rm = S.led.remove_member(S.members["m3"], signer=S.s("m1"))      # n 3 -> 2, k = 2: fine
    # meanwhile k = 3 (epoch bump voids rm anyway: then re-propose it under k = 3)
    S.led.set_threshold(3, signer=S.s("m1"))
    S.led.set_threshold(3, signer=S.s("m2"))
    assert S.led.committee().k == 3
    with pytest.raises(OrderError):
        S.led.approve(rm.proposal_id, signer=S.s("m2"))
    with pytest.raises(LedgerError, match="k|InvalidCommittee"):
        S.led.remove_member(S.members["m3"], signer=S.s("m1"))
    for k in (0, 4):
        with pytest.raises(LedgerError, match="k|InvalidCommittee"):
            S.led.set_threshold(k, signer=S.s("m1"))
    assert S.led.committee().k == 3 and len(S.led.committee().members) == 3


# -- A4: the same act under two proposals; double effects ---------------------------------------

def test_same_act_twice_executes_once(side):
    """Proposals of an identical content merge (one proposal); once executed, a second proposal
    of the same registration re-executes nothing (no-op, or refused at its k-th approval)."""
    S = side
    p = S.led.register_node(S.node(1), signer=S.s("m1"))
    q = S.led.register_node(S.node(1), signer=S.s("m2"))
    assert q.proposal_id == p.proposal_id and q.state == "executed"
    assert S.led.register_node(S.node(1), signer=S.s("m3")) is None     # done: no-op
    assert S.led.pending() == []
    other = Node(1, "evil", ed(30).public, S.account_of("n2"))
    try:        # ethereum: refused by the client; local: a proposal that can not execute
        doomed = S.led.register_node(other, signer=S.s("m3"))
    except ConflictError:
        doomed = None
    if doomed is not None:
        assert doomed.state == "open"
        with pytest.raises(ConflictError, match="already registered"):
            S.led.approve(doomed.proposal_id, signer=S.s("m1"))
    assert S.led.get_node(1) == S.node(1)


def test_chain_non_canonical_encoding_is_another_proposal(ganache):
    """ethereum: the same act ABI-encoded with trailing bytes. It is a separate proposal (the
    approvals of the canonical one do not count for it) and executing it after the canonical one
    changes nothing (NodeExists refuses the k-th approval)."""
    from ledger_client.ethereum import ACT_CODES, ACT_TYPES, _abi_args
    import eth_abi
    S = chain_side(ganache)
    n1 = S.node(1)
    args = (n1.node_id, n1.owner, n1.pubkey, "0x" + n1.account.hex(), None)
    canon = eth_abi.encode(ACT_TYPES["register_node"], _abi_args("register_node", args))
    fn = S.led.contract.functions
    S.led._transact("propose", fn.propose(ACT_CODES["register_node"], canon), S.s("m1"))
    S.led._transact("propose", fn.propose(ACT_CODES["register_node"], canon + bytes(32)),
                    S.s("m2"))
    ids = [p.proposal_id for p in S.led.pending()]
    assert ids == [1, 2] and S.led.get_node(1) is None          # neither at 2 approvals
    assert S.led.approve(1, signer=S.s("m2")).state == "executed"
    assert S.led.get_node(1) == n1
    with pytest.raises(ConflictError, match="NodeExists"):
        S.led.approve(2, signer=S.s("m1"))
    assert S.led.get_node(1) == n1


def test_chain_replayed_signed_transaction_is_refused(ganache):
    """ethereum: m1's signed approve, re-sent byte for byte, is refused by the node (nonce) and
    a second copy never counts as a second member."""
    S = chain_side(ganache)
    p = S.led.register_node(S.node(1), signer=S.s("m1"))
    w3, m2 = S.led.w3, S.s("m2")
    tx = S.led.contract.functions.approve(p.proposal_id).build_transaction({
        "from": m2.address, "nonce": w3.eth.get_transaction_count(m2.address),
        "chainId": w3.eth.chain_id, "gas": 500_000, "gasPrice": w3.eth.gas_price})
    raw = m2.sign_transaction(tx).raw_transaction
    # m2's approval is sent (executes); its replay must not be mined again
    w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(raw))
    S.led._nonces.pop(m2.address, None)
    with pytest.raises(Exception, match="nonce|known"):
        w3.eth.send_raw_transaction(raw)
    assert S.led.proposal(p.proposal_id).approvals == (S.name("m1"), S.name("m2"))


# -- A5/A7 local: forged entries, edited files ------------------------------------------------

class _Forger:
    """Claims a member's public key, signs with another key."""

    def __init__(self, claimed, real):
        self.public, self._real = claimed.public, real

    def sign(self, msg):
        return self._real.sign(msg)


def test_local_approval_signed_by_the_wrong_key_is_refused(tmp_path):
    S = local_side(tmp_path)
    p = S.led.register_node(S.node(1), signer=S.s("m1"))
    with pytest.raises(PermissionDenied, match="signature"):
        S.led.approve(p.proposal_id, signer=_Forger(S.s("m2"), S.s("stranger")))
    with pytest.raises(PermissionDenied, match="signature"):
        S.led.approve_decision(1, EV, VA, [1], signer=_Forger(S.s("m2"), S.s("m1")))
    assert S.led.proposal(p.proposal_id).approvals == (S.name("m1"),)
    assert S.led.verify_chain() == []
    S.led.close()


def _raw_put(path, db, key, value):
    import lmdb
    env = lmdb.open(path, subdir=False, lock=True, max_dbs=32)
    with env.begin(write=True) as txn:
        d = env.open_db(db, txn=txn)
        txn.put(key, value, db=d)
    env.close()


def _raw_get(path, db, key):
    import lmdb
    env = lmdb.open(path, subdir=False, lock=True, max_dbs=32, readonly=True)
    with env.begin() as txn:
        v = txn.get(key, db=env.open_db(db, txn=txn))
        v = None if v is None else bytes(v)
    env.close()
    return v


def test_local_edits_of_the_file_are_named_by_verify_chain(tmp_path):
    """A member with write access to the file edits it: adds the approval of another member to
    a proposal (index), lowers k in the committee state, changes a signer of an entry, replays
    an entry at the end. verify_chain() names each; the write path does not execute on edited
    approvals without verify_chain seeing it."""
    from ledger_client.local import LocalLedger
    S = local_side(tmp_path)
    p = S.led.register_node(S.node(1), signer=S.s("m1"))
    path = S.path
    S.led.close()

    # 1. forge m2's approval in the proposals index
    key = struct.pack(">Q", p.proposal_id)
    rec = json.loads(_raw_get(path, b"proposals", key))
    rec["approvals"].append(S.s("m2").public.hex())
    _raw_put(path, b"proposals", key, json.dumps(rec, sort_keys=True,
                                                 separators=(",", ":")).encode())
    with LocalLedger(path) as led:
        problems = led.verify_chain()
    assert any("index proposals" in x for x in problems), problems

    # 2. lower k to 1 in the committee state, then m1 registers node 2 alone
    _raw_put(path, b"proposals", key, json.dumps(
        dict(rec, approvals=rec["approvals"][:1]), sort_keys=True,
        separators=(",", ":")).encode())
    st = json.loads(_raw_get(path, b"state", b"committee") or b"null")
    genesis = json.loads(_raw_get(path, b"meta", b"genesis"))
    st = st or {"members": genesis["members"], "k": genesis["k"], "epoch": 0}
    _raw_put(path, b"state", b"committee",
             json.dumps(dict(st, k=1), sort_keys=True, separators=(",", ":")).encode())
    with LocalLedger(path, clock=lambda: T0) as led:
        led.register_node(S.node(2), signer=S.s("m1"))     # the edited index lets it through...
        problems = led.verify_chain()
    # ... and verify_chain names both the index and the entry written alone
    assert any("index state" in x for x in problems), problems
    assert any("register_node" in x and "breaks the rules" in x for x in problems), problems


def test_local_replayed_entry_and_changed_signer_are_named(tmp_path):
    from ledger_client.local import LocalLedger
    S = local_side(tmp_path)
    p = S.led.register_node(S.node(1), signer=S.s("m1"))
    S.led.approve(p.proposal_id, signer=S.s("m2"))
    entries = S.led.entries()
    n = S.led.entry_count()
    path = S.path
    S.led.close()
    # replay m2's approval entry (valid signature, old prev_hash) as the next entry
    _raw_put(path, b"entries", struct.pack(">Q", n), entries[-1]["raw"])
    _raw_put(path, b"meta", b"next_entry", struct.pack(">Q", n + 1))
    with LocalLedger(path) as led:
        problems = led.verify_chain()
    assert any(f"entry {n}: prev_hash" in x for x in problems), problems
    # swap the signer of entry 1 (m2's approval) for m3's key: the signature no longer verifies
    raw = bytearray(entries[1]["raw"])
    raw[-96:-64] = S.s("m3").public
    _raw_put(path, b"entries", struct.pack(">Q", 1), bytes(raw))
    with LocalLedger(path) as led:
        problems = led.verify_chain()
    assert any("entry 1: bad signature" in x for x in problems), problems


def test_local_genesis_edits_are_named(tmp_path):
    """Deleting or rewriting the founding committee (meta genesis) to make m1 a committee of
    one: verify_chain names entry 0 (its prev_hash binds the genesis)."""
    import lmdb

    from ledger_client.local import LocalLedger
    S = local_side(tmp_path)
    S.led.register_node(S.node(1), signer=S.s("m1"))
    path = S.path
    S.led.close()
    g = json.loads(_raw_get(path, b"meta", b"genesis"))
    _raw_put(path, b"meta", b"genesis",
             json.dumps(dict(g, k=1), sort_keys=True, separators=(",", ":")).encode())
    with LocalLedger(path) as led:
        assert any("entry 0: prev_hash" in x for x in led.verify_chain())
    env = lmdb.open(path, subdir=False, lock=True, max_dbs=32)
    with env.begin(write=True) as txn:
        txn.delete(b"genesis", db=env.open_db(b"meta", txn=txn))
    env.close()
    with LocalLedger(path) as led:
        assert led.committee().k == 1                     # opens as m1's committee of one...
        assert any("entry 0: prev_hash" in x for x in led.verify_chain())   # ...and is named


# -- A6 local: the entries' time is the writer's ----------------------------------------------

def _tenant_writes(path, clock_ns):
    """The tenant, in its own process with its own clock, opens a dispute on SLA 7 (public API
    only: LocalLedger(path, clock=...).open_dispute)."""
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {REPO!r})
        from ledger_client.keys import DeviceKey
        from ledger_client.local import LocalLedger
        with LocalLedger({path!r}, clock=lambda: {clock_ns}) as led:
            print(led.open_dispute(7, 0, 10, signer=DeviceKey.from_seed(bytes([0x64]) * 32)))
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)


def test_local_tenant_future_stamp_expires_the_committees_proposals(tmp_path):
    S = local_side(tmp_path)
    setup_nodes_and_sla(S)
    p = S.led.register_link(1, 2, signer=S.s("m1"))          # open, fresh
    S.led.close()
    r = _tenant_writes(S.path, T0 + 30 * 86400 * 10**9)      # the tenant's clock: +30 days
    assert r.returncode == 0, r.stderr                       # (the dispute is opened)
    from ledger_client.local import LocalLedger
    with LocalLedger(S.path, clock=lambda: T0 + 10**9) as led:   # the members: 1 s later
        # a fresh proposal must still be approvable; the tenant's stamp made it "expired"
        q = led.approve(p.proposal_id, signer=S.s("m2"))
        assert q.state == "executed"


def test_local_max_stamp_turns_expiry_off(tmp_path):
    S = local_side(tmp_path)
    setup_nodes_and_sla(S)
    S.led.close()
    r = _tenant_writes(S.path, (1 << 64) - 1)
    assert r.returncode == 0, r.stderr
    from ledger_client.local import LocalLedger
    now = [T0]
    with LocalLedger(S.path, clock=lambda: now[0]) as led:
        problems = led.verify_chain()
        p = led.register_link(1, 2, signer=S.s("m1"))
        now[0] += 10 * TTL_S * 10**9                          # ten ttls later
        state = led.proposal(p.proposal_id).state
        assert problems or state == "expired", (problems, state)


def test_local_back_dated_approval_of_an_expired_proposal(tmp_path):
    S = local_side(tmp_path)
    setup_nodes_and_sla(S)
    p = S.led.register_link(1, 2, signer=S.s("m1"))
    S.advance(TTL_S + 60)                  # the real time: expired, nothing written since
    assert S.led.proposal(p.proposal_id).state == "expired"
    S.now[0] = T0 + 60 * 10**9             # m2's clock, set back (the write path takes it)
    with pytest.raises(OrderError, match="expired"):
        S.led.approve(p.proposal_id, signer=S.s("m2"))


def test_local_time_never_goes_back_between_entries(tmp_path):
    """The part of A6 the ledger does hold: an entry may not be stamped before the one before
    it (a crafted body with an older t_ns is refused, naming both times)."""
    from ledger_client.local import K_APPROVE
    S = local_side(tmp_path)
    p = S.led.register_node(S.node(1), signer=S.s("m1"))
    S.advance(10)
    S.led.register_node(S.node(2), signer=S.s("m1"))
    with pytest.raises(OrderError, match=f"entry time {T0} is before the last entry's time"):
        S.led._write(K_APPROVE, lambda st, pub: {"proposal_id": p.proposal_id, "t_ns": T0},
                     S.s("m2"))
    assert S.led.get_node(1) is None
    S.led.close()


# -- decisions: minority, two contents, wrong state ---------------------------------------------

def test_minority_cannot_name_an_honest_device(side):
    """m1 alone names node 2 at fault (k = 2): nothing happens; m2 and m3 find no fault: the
    decision executes with faulty () and m1's dissent is visible."""
    S = side
    setup_nodes_and_sla(S)
    did = S.led.open_dispute(7, 0, 10, signer=S.s("tenant"))
    d = S.led.approve_decision(did, EV, VA, [2], signer=S.s("m1"))
    assert d.state == "opened" and d.faulty == ()
    with pytest.raises(ConflictError):       # and it cannot approve a second content
        S.led.approve_decision(did, EV, VB, [], signer=S.s("m1"))
    S.led.approve_decision(did, EV, VB, [], signer=S.s("m2"))
    d = S.led.approve_decision(did, EV, VB, [], signer=S.s("m3"))
    assert d.state == "settled" and d.faulty == () and d.penalty == 0
    dissent = S.led.dispute_dissent(did)
    assert [(v.verdict_digest, v.member.lower()) for v in dissent] == [
        (VA, S.name("m1").lower())]


def test_two_members_cannot_split_evidence_from_verdict(side):
    """The content is (dispute, evidence, verdict, faulty): two members agreeing on the verdict
    and faulty but not on the evidence digest do not decide."""
    S = side
    setup_nodes_and_sla(S)
    did = S.led.open_dispute(7, 0, 10, signer=S.s("tenant"))
    S.led.approve_decision(did, EV, VA, [1], signer=S.s("m1"))
    d = S.led.approve_decision(did, b"\x01" * 32, VA, [1], signer=S.s("m2"))
    assert d.state == "opened" and d.penalty == 0


def test_decision_for_unknown_dispute_or_off_route_fault(side):
    S = side
    setup_nodes_and_sla(S, route=(1, 2))
    with pytest.raises(NotFound):
        S.led.approve_decision(42, EV, VA, [1], signer=S.s("m1"))
    did = S.led.open_dispute(7, 0, 10, signer=S.s("tenant"))
    S.led.approve_decision(did, EV, VA, [3], signer=S.s("m1"))       # node 3: not on the route
    with pytest.raises(LedgerError, match="route|FaultyNotOnRoute"):
        S.led.approve_decision(did, EV, VA, [3], signer=S.s("m2"))
    assert S.led.get_dispute(did).state == "opened"


def test_a_decided_dispute_is_never_decided_again(side):
    """After the k-th approval: the same content again is a no-op, another content is dissent,
    and neither changes the decision or its penalty (no second payment)."""
    S = side
    setup_nodes_and_sla(S)
    did = S.led.open_dispute(7, 0, 10, signer=S.s("tenant"))
    S.led.approve_decision(did, EV, VA, [1], signer=S.s("m1"))
    d1 = S.led.approve_decision(did, EV, VA, [1], signer=S.s("m2"))
    assert d1.state == "settled" and d1.penalty == 5
    assert S.led.approve_decision(did, EV, VA, [1], signer=S.s("m1")) == d1
    d2 = S.led.approve_decision(did, EV, VB, [1, 2], signer=S.s("m3"))
    assert d2 == d1
    with pytest.raises(ConflictError):
        S.led.approve_decision(did, EV, VA, [1], signer=S.s("m3"))
    # the single-key path of before cannot touch it either
    with pytest.raises((PermissionDenied, OrderError)):
        S.led.decide(did, VB, [1, 2], signer=S.s("m1"))
    assert S.led.get_dispute(did) == d1


def test_an_expired_decision_approval_can_be_renewed(side):
    S = side
    setup_nodes_and_sla(S)
    did = S.led.open_dispute(7, 0, 10, signer=S.s("tenant"))
    S.led.approve_decision(did, EV, VA, [1], signer=S.s("m1"))     # honest, early
    S.advance(TTL_S + 5)                                            # m1's approval expires
    try:                                                            # m1 renews it
        S.led.approve_decision(did, EV, VA, [1], signer=S.s("m1"))
    except LedgerError:
        pass
    d = S.led.approve_decision(did, EV, VA, [1], signer=S.s("m2"))  # honest, late
    assert d.state == "settled", d     # m3 (the faulty operator's friend) never approves


def test_local_member_key_in_another_hex_case_is_the_same_member(tmp_path):
    from ledger_client.local import K_PROPOSE
    S = local_side(tmp_path)
    upper = S.s("m3").public.hex().upper()

    def build(st, pub):
        return {"proposal_id": 1, "act": "add_member",
                "args": {"pubkey": upper, "account": None}, "t_ns": T0}

    try:
        S.led._write(K_PROPOSE, build, S.s("m1"))       # m1's client writes the act as it likes
        S.led.approve(1, signer=S.s("m2"))               # m2 approves "a new member"
    except LedgerError:
        pass
    c = S.led.committee()
    assert len({m.pubkey for m in c.members}) == len(c.members) == 3, c
    S.led.close()
