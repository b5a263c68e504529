"""The committee (docs/ledger.md, "The committee"): ONE table of cases, run against BOTH backends
-- the local ledger and the Beat contract on a ganache chain (ledger_client.devnode) -- with the
same outcomes: a committee of 3 with k = 2, proposals executing at 2 approvals and not at 1, a
member approving twice counting once, a non-member refused, expiry, a membership change voiding
older proposals, k out of range refused, two colluding members unable to lower k or remove an
honest member once k = 3, a decision with one dissenting member (the dissent recorded, the
decision executed), a member approving two contents for one dispute refused."""
import pytest

from conftest import require_ganache
from ledger_client.errors import LedgerError
from ledger_client.keys import DeviceKey
from ledger_client.types import SLA, Committee, Member, Node

# the local side simulates the passing of time with an injected clock: the ledger trusts it
pytestmark = pytest.mark.ledger_host_clock("writer")

TTL_S = 3600
V4 = bytes(10) + b"\xff\xff"
EV, VA, VB = b"\xee" * 32, b"\xaa" * 32, b"\xbb" * 32
ROLES = ("m1", "m2", "m3", "m4", "tenant", "stranger", "n1", "n2", "op1", "op2")


def ed(i):
    return DeviceKey.from_seed(bytes([0x40 + i]) * 32)


def sla():
    return SLA(7, "acme", V4 + bytes([10, 0, 0, 1]), V4 + bytes([10, 0, 0, 2]), (1, 2),
               penalty_per_violation=5)


class Side:
    """One backend and its signers per role; ``name_of`` maps a member's name back to a role."""

    def __init__(self, led, signers, members, advance, tenant_kw, node_account):
        self.led, self.signers, self.members = led, signers, members
        self.advance, self.tenant_kw, self.node_account = advance, tenant_kw, node_account

    def s(self, role):
        return self.signers[role]

    def role(self, name):
        for r, m in self.members.items():
            if name.lower() in ((m.pubkey or b"").hex(), "0x" + (m.account or b"").hex()):
                return r
        return name

    def node(self, i):
        return Node(i, f"op-{i}", ed(10 + i).public, self.node_account(i))


def outcome(side, fn):
    try:
        r = fn(side)
    except LedgerError as exc:
        return type(exc).__name__
    return shape(side, r)


def shape(side, r):
    from ledger_client.types import Dispute, Proposal
    if r is None:
        return "ok"
    if isinstance(r, Proposal):
        return ("proposal", r.proposal_id, len(r.approvals), r.state)
    if isinstance(r, Dispute):
        return ("dispute", r.state, r.faulty, r.penalty, r.evidence_digest, r.verdict_digest)
    return r


def committee_of(side):
    c = side.led.committee()
    return (sorted(side.role(m.name() if side.kind == "ethereum" else m.pubkey.hex())
                   for m in c.members), c.k, c.epoch)


def dissent(side, did):
    return sorted((side.role(v.member), v.verdict_digest) for v in
                  side.led.dispute_dissent(did))


def member(role):
    return lambda S: S.members[role]


# (what, operation(side) -> result, expected on both backends)
CASES = [
    ("the committee", committee_of, (["m1", "m2", "m3"], 2, 0)),
    ("m1 proposes node 1", lambda S: S.led.register_node(S.node(1), signer=S.s("m1")),
     ("proposal", 1, 1, "open")),
    ("not executed at 1 approval", lambda S: S.led.get_node(1) is None, True),
    ("m1 again: the same proposal, counted once",
     lambda S: S.led.register_node(S.node(1), signer=S.s("m1")), ("proposal", 1, 1, "open")),
    ("m1 approves it (a replay): counted once", lambda S: S.led.approve(1, signer=S.s("m1")),
     ("proposal", 1, 1, "open")),
    ("a stranger proposes it", lambda S: S.led.register_node(S.node(1), signer=S.s("stranger")),
     "PermissionDenied"),
    ("a stranger approves it", lambda S: S.led.approve(1, signer=S.s("stranger")),
     "PermissionDenied"),
    ("the node itself approves it", lambda S: S.led.approve(1, signer=S.s("n1")),
     "PermissionDenied"),
    ("pending: one proposal", lambda S: [shape(S, p) for p in S.led.pending()],
     [("proposal", 1, 1, "open")]),
    ("m2 approves: executed at 2", lambda S: S.led.approve(1, signer=S.s("m2")),
     ("proposal", 1, 2, "executed")),
    ("node 1 registered", lambda S: S.led.get_node(1) == S.node(1), True),
    ("pending: none", lambda S: S.led.pending(), []),
    ("m3 approves the executed one", lambda S: S.led.approve(1, signer=S.s("m3")), "OrderError"),
    ("approve an unknown proposal", lambda S: S.led.approve(99, signer=S.s("m3")), "NotFound"),
    ("m1 registers node 1 again (done: a no-op)",
     lambda S: S.led.register_node(S.node(1), signer=S.s("m1")), "ok"),
    ("a direct act is no longer one key's", lambda S: S.led.register_link(1, 2,
                                                                          signer=S.s("stranger")),
     "PermissionDenied"),
    ("m2 proposes node 2", lambda S: S.led.register_node(S.node(2), signer=S.s("m2")),
     ("proposal", 2, 1, "open")),
    ("m3 proposes node 2 too: executed", lambda S: S.led.register_node(S.node(2),
                                                                        signer=S.s("m3")),
     ("proposal", 2, 2, "executed")),
    # expiry
    ("m1 proposes link 1-2", lambda S: S.led.register_link(1, 2, signer=S.s("m1")),
     ("proposal", 3, 1, "open")),
    ("the ttl passes", lambda S: S.advance(TTL_S + 5), "ok"),
    ("m2 approves the expired proposal", lambda S: S.led.approve(3, signer=S.s("m2")),
     "OrderError"),
    ("expired: not pending", lambda S: S.led.pending(), []),
    ("m2 proposes the link anew: a new proposal",
     lambda S: S.led.register_link(1, 2, signer=S.s("m2")), ("proposal", 4, 1, "open")),
    ("no link yet", lambda S: S.led.links(), []),
    ("m1 approves it: executed", lambda S: S.led.approve(4, signer=S.s("m1")),
     ("proposal", 4, 2, "executed")),
    ("the link", lambda S: S.led.links(), [(1, 2)]),
    # a dispute decided by the committee, with one dissenting member
    ("m1 proposes sla 7", lambda S: S.led.register_sla(sla(), signer=S.s("m1"), **S.tenant_kw),
     ("proposal", 5, 1, "open")),
    ("m3 proposes sla 7 too: executed",
     lambda S: S.led.register_sla(sla(), signer=S.s("m3"), **S.tenant_kw),
     ("proposal", 5, 2, "executed")),
    ("the tenant opens a dispute", lambda S: S.led.open_dispute(7, 0, 10, signer=S.s("tenant")),
     1),
    ("a stranger approves a decision",
     lambda S: S.led.approve_decision(1, EV, VA, [1], signer=S.s("stranger")),
     "PermissionDenied"),
    ("the tenant approves a decision",
     lambda S: S.led.approve_decision(1, EV, VA, [1], signer=S.s("tenant")),
     "PermissionDenied"),
    ("m1 approves content A", lambda S: S.led.approve_decision(1, EV, VA, [1],
                                                               signer=S.s("m1")),
     ("dispute", "opened", (), 0, None, None)),
    ("m1 approves A again: counted once",
     lambda S: S.led.approve_decision(1, EV, VA, [1], signer=S.s("m1")),
     ("dispute", "opened", (), 0, None, None)),
    ("m1 approves content B as well", lambda S: S.led.approve_decision(1, EV, VB, [2],
                                                                       signer=S.s("m1")),
     "ConflictError"),
    ("m2 approves content B", lambda S: S.led.approve_decision(1, EV, VB, [2], signer=S.s("m2")),
     ("dispute", "opened", (), 0, None, None)),
    ("no dissent before the decision", lambda S: dissent(S, 1), []),
    ("m3 approves A: decided and settled",
     lambda S: S.led.approve_decision(1, EV, VA, [1], signer=S.s("m3")),
     ("dispute", "settled", (1,), 5, EV, VA)),
    ("the dissent of m2 stays visible", lambda S: dissent(S, 1), [("m2", VB)]),
    ("m2 approves A after: refused (one content per member)",
     lambda S: S.led.approve_decision(1, EV, VA, [1], signer=S.s("m2")), "ConflictError"),
    ("m3 approves A again: a no-op",
     lambda S: S.led.approve_decision(1, EV, VA, [1], signer=S.s("m3")),
     ("dispute", "settled", (1,), 5, EV, VA)),
    ("faulty off the route: refused at execution",
     lambda S: (S.led.open_dispute(7, 0, 10, signer=S.s("tenant")),
                S.led.approve_decision(2, EV, VA, [9], signer=S.s("m1")),
                S.led.approve_decision(2, EV, VA, [9], signer=S.s("m2")))[-1], "LedgerError"),
    # membership changes void older proposals
    ("m1 proposes retiring link 1-2", lambda S: S.led.retire_link(1, 2, signer=S.s("m1")),
     ("proposal", 6, 1, "open")),
    ("m1 proposes member m4", lambda S: S.led.add_member(S.members["m4"], signer=S.s("m1")),
     ("proposal", 7, 1, "open")),
    ("m2 approves m4: executed", lambda S: S.led.approve(7, signer=S.s("m2")),
     ("proposal", 7, 2, "executed")),
    ("the committee, epoch 1", committee_of, (["m1", "m2", "m3", "m4"], 2, 1)),
    ("m2 approves the older proposal: stale", lambda S: S.led.approve(6, signer=S.s("m2")),
     "OrderError"),
    ("m2 proposes it again: a new proposal",
     lambda S: S.led.retire_link(1, 2, signer=S.s("m2")), ("proposal", 8, 1, "open")),
    ("m4 (the new member) approves: executed", lambda S: S.led.approve(8, signer=S.s("m4")),
     ("proposal", 8, 2, "executed")),
    ("links", lambda S: S.led.links(), []),
    ("a member again", lambda S: S.led.add_member(S.members["m2"], signer=S.s("m1")),
     "LedgerError"),
    # k out of range
    ("k = 0", lambda S: S.led.set_threshold(0, signer=S.s("m1")), "LedgerError"),
    ("k = 5 of 4", lambda S: S.led.set_threshold(5, signer=S.s("m1")), "LedgerError"),
    ("k = 3: m1", lambda S: S.led.set_threshold(3, signer=S.s("m1")),
     ("proposal", 9, 1, "open")),
    ("k = 3: m3, executed", lambda S: S.led.set_threshold(3, signer=S.s("m3")),
     ("proposal", 9, 2, "executed")),
    # two colluding members (m1, m2) with k = 3: they can neither lower k nor remove m3
    ("m1 proposes removing m3", lambda S: S.led.remove_member(S.members["m3"],
                                                              signer=S.s("m1")),
     ("proposal", 10, 1, "open")),
    ("m2 approves it: 2 of 3, not executed", lambda S: S.led.approve(10, signer=S.s("m2")),
     ("proposal", 10, 2, "open")),
    ("m1 proposes k = 1", lambda S: S.led.set_threshold(1, signer=S.s("m1")),
     ("proposal", 11, 1, "open")),
    ("m2 approves it: 2 of 3, not executed", lambda S: S.led.approve(11, signer=S.s("m2")),
     ("proposal", 11, 2, "open")),
    ("the committee is unchanged", committee_of, (["m1", "m2", "m3", "m4"], 3, 2)),
    ("a removal leaving fewer than k: m1, m3, m4 remove m4",
     lambda S: [shape(S, S.led.remove_member(S.members["m4"], signer=S.s(r)))
                for r in ("m1", "m3", "m4")][-1], ("proposal", 12, 3, "executed")),
    ("then removing m3 would leave 2 < k = 3", lambda S: S.led.remove_member(
        S.members["m3"], signer=S.s("m1")), "LedgerError"),
    ("the committee at the end", committee_of, (["m1", "m2", "m3"], 3, 3)),
]


def _run(side):
    return [(what, outcome(side, op)) for what, op, _ in CASES]


def _expected():
    return [(what, exp) for what, _, exp in CASES]


def _members(accounts):
    return {r: Member(ed(i).public, accounts[r].address_bytes if accounts else None)
            for i, r in enumerate(("m1", "m2", "m3", "m4"))}


def local_side(tmp_path, **money):
    from ledger_client.local import LocalLedger
    members = _members(None)
    now = [1_700_000_000 * 10**9]
    signers = {r: ed(i) for i, r in enumerate(ROLES)}
    if "balances" in money:
        money["balances"] = {signers[r].public: v for r, v in money["balances"].items()}
    led = LocalLedger(str(tmp_path / "committee.mdb"), clock=lambda: now[0],
                      committee=Committee(tuple(members[r] for r in ("m1", "m2", "m3")), 2,
                                          ttl_s=TTL_S), **money)
    signers["n1"], signers["n2"] = ed(11), ed(12)

    def advance(s):
        now[0] += s * 10**9

    side = Side(led, signers, members, advance, {"tenant_pubkey": signers["tenant"].public},
                lambda i: None)
    side.kind = "local"
    side.now = now
    side.operator = lambda r: signers[r].public
    side.balance = lambda r: led.balance(signers[r].public)
    side.held = lambda: sum(led.deposit_of(i).amount for i in (1, 2))
    return side


@pytest.fixture
def chain(tmp_path):
    require_ganache()
    from ledger_client.devnode import DevNode
    from ledger_client.ethereum import Account
    accounts = {r: Account.generate() for r in ROLES}
    node = DevNode(str(tmp_path / "chain"), accounts=[(a, 10**21) for a in accounts.values()])
    node.start()
    yield node, accounts
    node.stop()


def chain_side(node, accounts, notice_s=None):
    from ledger_client.ethereum import EthereumLedger
    members = _members(accounts)
    led = EthereumLedger.deploy(node.url, accounts["m1"], "sha3-256", timeout=30,
                                committee=Committee(tuple(members[r] for r in
                                                          ("m1", "m2", "m3")), 2, ttl_s=TTL_S),
                                notice_s=notice_s)

    def advance(s):
        led.w3.provider.make_request("evm_increaseTime", [s])
        led.w3.provider.make_request("evm_mine", [])

    side = Side(led, accounts, members, advance, {"tenant_account": accounts["tenant"]},
                lambda i: accounts[f"n{i}"].address_bytes)
    side.kind = "ethereum"
    side.operator = lambda r: accounts[r].address_bytes
    side.balance = lambda r: led.balance(accounts[r].address)      # eth_getBalance, wei
    side.held = lambda: led.balance(led.address)                    # the contract's wei
    return side


def test_committee_table_local(tmp_path):
    side = local_side(tmp_path)
    assert _run(side) == _expected()
    assert side.led.verify_chain() == []


def test_committee_table_both_backends_agree(tmp_path, chain):
    local = _run(local_side(tmp_path))
    eth = _run(chain_side(*chain))
    assert eth == local
    assert local == _expected()


def test_a_ledger_written_before_committees_opens_as_a_committee_of_one(tmp_path):
    """A ledger file written by the code before committees (local.py at the parent of the commit
    that brought them, from git) opens as a committee of one with k = 1: its chain verifies, the
    governance key acts directly as before, and a stranger is refused."""
    import importlib.util
    import os
    import subprocess
    import sys

    from ledger_client.local import LocalLedger
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # the commit that brought committees to local.py (K_PROPOSE): its parent has the old code
    base = subprocess.run(["git", "-C", repo, "log", "--reverse", "--format=%H", "-S",
                           "K_PROPOSE", "--", "ledger_client/local.py"], capture_output=True,
                          text=True, check=True).stdout.split()
    if not base:
        pytest.fail("the commit bringing committees to local.py is not in this history")
    base = base[0]
    src = subprocess.run(["git", "-C", repo, "show", f"{base}~1:ledger_client/local.py"],
                         capture_output=True, text=True, check=True).stdout
    mod_path = tmp_path / "ledger_client_old_local.py"
    mod_path.write_text(src.replace("from .", "from ledger_client."))
    spec = importlib.util.spec_from_file_location("ledger_client_old_local", mod_path)
    old = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = old
    spec.loader.exec_module(old)
    gov, tenant = ed(1), ed(5)
    path = str(tmp_path / "old.mdb")
    with old.LocalLedger(path, governance_pubkey=gov.public) as lg:
        lg.register_node(Node(1, "a", ed(11).public), signer=gov)
        lg.register_node(Node(2, "b", ed(12).public), signer=gov)
        lg.register_sla(sla(), signer=gov, tenant_pubkey=tenant.public)
        did = lg.open_dispute(7, 0, 10, signer=tenant)
        lg.record_evidence(did, EV, signer=gov)
        lg.decide(did, VA, [1], signer=gov)
        lg.settle(did, signer=gov)
    with LocalLedger(path) as lg:
        assert lg.verify_chain() == []
        c = lg.committee()
        assert (c.members, c.k, c.epoch) == ((Member(gov.public),), 1, 0)
        assert lg.register_link(1, 2, signer=gov) is None          # direct, as before
        assert lg.links() == [(1, 2)]
        with pytest.raises(LedgerError, match="not the governance"):
            lg.register_link(1, 2, signer=ed(6))
        assert lg.get_dispute(did).state == "settled" and lg.debts() == []
        assert lg.verify_chain() == []

# -- local: entry times against the host's clock (findings C1, C2), canonical acts (C10) --------

def test_local_entry_time_is_checked_against_the_host_clock(tmp_path):
    """A writer whose clock is an hour ahead (or behind) of the host's real time is refused, even
    with an injected clock; host_clock=None opts out explicitly, and an entry so written in the
    future is named by verify_chain run on the real clock."""
    import time
    from ledger_client.errors import OrderError
    from ledger_client.local import LocalLedger
    from ledger_client.types import Committee, Member
    path = str(tmp_path / "clock.mdb")
    members = (Member(ed(0).public), Member(ed(1).public))
    now = [time.time_ns()]
    led = LocalLedger(path, committee=Committee(members, 2, ttl_s=TTL_S),
                      clock=lambda: now[0], host_clock=time.time_ns)
    led.register_node(Node(1, "isp-1", ed(11).public, None), signer=ed(0))   # on time: ok
    led.close()
    now[0] = time.time_ns() + 3600 * 10**9
    with LocalLedger(path, clock=lambda: now[0], host_clock=time.time_ns) as led:
        with pytest.raises(OrderError, match=r"\+3600 s from the host's clock"):
            led.register_node(Node(2, "isp-2", ed(12).public, None), signer=ed(0))
        assert [p.proposal_id for p in led.proposals()] == [1]
    now[0] = time.time_ns() - 3600 * 10**9         # back-dated, on a ledger with no entry yet
    with LocalLedger(str(tmp_path / "other.mdb"), committee=Committee(members, 2, ttl_s=TTL_S),
                     clock=lambda: now[0], host_clock=time.time_ns) as other:
        with pytest.raises(OrderError, match=r"-3600 s from the host's clock"):
            other.register_node(Node(2, "isp-2", ed(12).public, None), signer=ed(0))
    now[0] = time.time_ns() + 3600 * 10**9
    with LocalLedger(path, clock=lambda: now[0], host_clock=None) as ahead:   # opted out
        ahead.register_node(Node(2, "isp-2", ed(12).public, None), signer=ed(0))
    with LocalLedger(path, host_clock=time.time_ns) as verifier:
        problems = verifier.verify_chain()
    assert len(problems) == 1 and "entry 1: propose is stamped" in problems[0], problems


def test_local_act_arguments_must_be_canonical(tmp_path):
    """The same act in another form is refused, not a new proposal: a member's key in upper
    case, an unknown key, an integer written as a string."""
    from ledger_client.local import K_PROPOSE
    S = local_side(tmp_path)
    m3 = S.members["m3"].pubkey.hex()
    for args in ({"pubkey": m3.upper()}, {"pubkey": m3, "why": "x"}):
        with pytest.raises(LedgerError, match="canonical"):
            S.led._write(K_PROPOSE, lambda st, pub, a=args: {
                "proposal_id": 1, "act": "remove_member", "args": a, "t_ns": S.now[0]}, S.s("m1"))
    with pytest.raises(LedgerError, match="canonical"):
        S.led._write(K_PROPOSE, lambda st, pub: {
            "proposal_id": 1, "act": "register_link", "args": {"a": "1", "b": 2},
            "t_ns": S.now[0]}, S.s("m1"))
    assert S.led.proposals() == [] and S.led.verify_chain() == []
