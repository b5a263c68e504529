"""Settlement that moves value (docs/ledger.md, "Settlement"): ONE table of cases, run against
BOTH backends -- the local ledger (counted balances, its stand-in for money) and the Beat contract
on ganache (real wei: eth_getBalance on the JSON-RPC node) -- with the same outcomes: deposits by
the node's operator only, the penalty of each faulty node moved from its deposit to the tenant at
the decision's execution (the k-th approval), a deposit that cannot cover it recorded as a debt, a
later deposit paying the debt first, withdrawal refused before the notice, while a dispute on the
node's route is open, and while the node owes; paid after the notice; a dispute left undecided
for a ttl no longer freezing a deposit (a tenant can not freeze deposits by opening disputes)."""

import pytest

from test_committee import (EV, TTL_S, VA, V4, chain, chain_side, ed, local_side,  # noqa: F401
                            outcome)
from ledger_client.types import SLA, Node

# the local side simulates the passing of time with an injected clock: the ledger trusts it
pytestmark = pytest.mark.ledger_host_clock("writer")

NOTICE_S = 2 * TTL_S
P = 1000                         # the penalty per faulty device (wei on the chain)
START = 10_000                   # the operators' local balances at creation


def sla():
    return SLA(7, "acme", V4 + bytes([10, 0, 0, 1]), V4 + bytes([10, 0, 0, 2]), (1, 2),
               penalty_per_violation=P, price=50)


def setup(S):
    for i, op in ((1, "op1"), (2, "op2")):
        node = Node(i, f"isp-{i}", ed(10 + i).public, S.node_account(i), S.operator(op))
        S.led.register_node(node, signer=S.s("m1"))
        S.led.register_node(node, signer=S.s("m2"))
    S.led.register_sla(sla(), signer=S.s("m1"), **S.tenant_kw)
    S.led.register_sla(sla(), signer=S.s("m2"), **S.tenant_kw)
    S.mark = {}


def dep(S, i):
    d = S.led.deposit_of(i)
    return (d.amount, d.due_ns is not None, d.debt, d.frozen_by)


def debts(S):
    return [(d.node_id, d.amount, d.dispute_id) for d in S.led.debts()]


def mark(S, *roles):
    S.mark = {r: S.balance(r) for r in roles}
    S.mark["held"] = S.held()
    return "ok"


def delta(S, *roles):
    out = {r: S.balance(r) - S.mark[r] for r in roles}
    out["held"] = S.held() - S.mark["held"]
    return out


CASES = [
    ("set up: nodes 1, 2 with operators op1, op2; sla 7 (route 1 2, penalty P)", setup, "ok"),
    ("the sla's price", lambda S: (S.led.get_sla(7).price, S.led.get_node(1).operator ==
                                   S.operator("op1")), (50, True)),
    ("balances before", lambda S: mark(S, "op1", "op2", "tenant"), "ok"),
    ("op1 deposits 1500 for node 1", lambda S: dep(S, 1) if S.led.deposit(
        1, 1500, signer=S.s("op1")) else None, (1500, False, 0, None)),
    ("op2 deposits 500 for node 2", lambda S: dep(S, 2) if S.led.deposit(
        2, 500, signer=S.s("op2")) else None, (500, False, 0, None)),
    ("held by the ledger", lambda S: delta(S, "tenant")["held"], 2000),
    ("a stranger deposits for node 1", lambda S: S.led.deposit(1, 10, signer=S.s("stranger")),
     "PermissionDenied"),
    ("op1 deposits for node 2", lambda S: S.led.deposit(2, 10, signer=S.s("op1")),
     "PermissionDenied"),
    ("a member deposits for node 1", lambda S: S.led.deposit(1, 10, signer=S.s("m1")),
     "PermissionDenied"),
    ("op1 asks to withdraw node 1's deposit", lambda S: dep(S, 1) if S.led.request_withdrawal(
        1, signer=S.s("op1")) else None, (1500, True, 0, None)),
    ("op1 withdraws before the notice", lambda S: S.led.withdraw(1, signer=S.s("op1")),
     "OrderError"),
    ("op1 withdraws without asking (node 2)", lambda S: S.led.withdraw(2, signer=S.s("op2")),
     "OrderError"),
    ("almost the notice later", lambda S: S.advance(NOTICE_S - 100), "ok"),
    ("the tenant opens a dispute (route 1 2)",
     lambda S: S.led.open_dispute(7, 0, 10, signer=S.s("tenant")), 1),
    ("the notice has passed", lambda S: S.advance(200), "ok"),
    ("op1 withdraws while the dispute is open", lambda S: S.led.withdraw(1, signer=S.s("op1")),
     "OrderError"),
    ("node 1 frozen by dispute 1", lambda S: dep(S, 1), (1500, True, 0, 1)),
    ("balances before the decision", lambda S: mark(S, "op1", "op2", "tenant"), "ok"),
    ("m1 approves: faulty 1 and 2", lambda S: S.led.approve_decision(
        1, EV, VA, [2, 1], signer=S.s("m1")).state, "opened"),
    ("nothing moved at 1 approval", lambda S: delta(S, "tenant", "op1"),
     {"tenant": 0, "op1": 0, "held": 0}),
    ("m2 approves: decided and settled in that transaction", lambda S: S.led.approve_decision(
        1, EV, VA, [1, 2], signer=S.s("m2")).state, "settled"),
    ("the tenant got P from node 1 and 500 from node 2 (all it had)",
     lambda S: delta(S, "tenant"), {"tenant": P + 500, "held": -(P + 500)}),
    ("node 1's deposit", lambda S: dep(S, 1), (500, True, 0, None)),
    ("node 2's deposit and debt", lambda S: dep(S, 2), (0, False, P - 500, None)),
    ("the debt", debts, [(2, P - 500, 1)]),
    ("op1 withdraws now: paid", lambda S: S.led.withdraw(1, signer=S.s("op1")), 500),
    ("the ledger paid it out", lambda S: delta(S, "tenant")["held"], -(P + 500) - 500),
    ("node 1 after", lambda S: dep(S, 1), (0, False, 0, None)),
    ("op2 asks, the notice passes", lambda S: (S.led.request_withdrawal(2, signer=S.s("op2")),
                                               S.advance(NOTICE_S + 1))[-1], "ok"),
    ("op2 withdraws while node 2 owes", lambda S: S.led.withdraw(2, signer=S.s("op2")),
     "OrderError"),
    ("balances before the deposit", lambda S: mark(S, "tenant"), "ok"),
    ("op2 deposits 800: the debt first", lambda S: dep(S, 2) if S.led.deposit(
        2, 800, signer=S.s("op2")) else None, (300, True, 0, None)),
    ("the tenant got the debt", lambda S: delta(S, "tenant"), {"tenant": P - 500, "held": 300}),
    ("no debt", debts, []),
    # a tenant opening a dispute only to freeze: it freezes for a ttl at most
    ("the tenant opens dispute 2", lambda S: S.led.open_dispute(7, 0, 10, signer=S.s("tenant")),
     2),
    ("op2 withdraws: frozen", lambda S: S.led.withdraw(2, signer=S.s("op2")), "OrderError"),
    ("a ttl passes, no decision", lambda S: S.advance(TTL_S + 1), "ok"),
    ("no longer frozen", lambda S: dep(S, 2), (300, True, 0, None)),
    ("op2 withdraws: paid", lambda S: S.led.withdraw(2, signer=S.s("op2")), 300),
    ("nothing left with the ledger", lambda S: delta(S, "tenant")["held"], 0),
    # one dispute per SLA freezes (findings C5): the next one only once that one is settled
    ("op1 deposits 100 and asks to withdraw", lambda S: (
        S.led.deposit(1, 100, signer=S.s("op1")),
        dep(S, 1) if S.led.request_withdrawal(1, signer=S.s("op1")) else None)[-1],
     (100, True, 0, None)),
    ("the tenant opens dispute 3 (dispute 2 expired undecided)",
     lambda S: S.led.open_dispute(7, 0, 10, signer=S.s("tenant")), 3),
    ("dispute 3 freezes nothing while the sla's freezing dispute 2 is undecided",
     lambda S: dep(S, 1), (100, True, 0, None)),
    ("the committee decides dispute 2: no fault", lambda S: [S.led.approve_decision(
        2, EV, VA, [], signer=S.s(m)).state for m in ("m1", "m2")], ["opened", "settled"]),
    ("the tenant opens dispute 4: the sla freezes again",
     lambda S: S.led.open_dispute(7, 0, 10, signer=S.s("tenant")), 4),
    ("node 1 frozen by dispute 4", lambda S: dep(S, 1), (100, True, 0, 4)),
    ("the tenant opens dispute 5 while 4 is open",
     lambda S: S.led.open_dispute(7, 20, 30, signer=S.s("tenant")), 5),
    ("the notice passes (and dispute 4's ttl)", lambda S: S.advance(NOTICE_S + 1), "ok"),
    ("no dispute freezes node 1 (5 never froze)", lambda S: dep(S, 1), (100, True, 0, None)),
    ("op1 withdraws: paid", lambda S: S.led.withdraw(1, signer=S.s("op1")), 100),
    # a withdrawal request lapses 2 ttl after its due time (findings C4)
    ("op1 deposits 100, asks, and waits the notice + 2 ttl", lambda S: (
        S.led.deposit(1, 100, signer=S.s("op1")), S.led.request_withdrawal(1, signer=S.s("op1")),
        S.advance(NOTICE_S + 2 * TTL_S))[-1], "ok"),
    ("the request lapsed: shown", lambda S: (lambda d: d.lapses_ns - d.due_ns)(S.led.deposit_of(1)),
     2 * TTL_S * 10**9),
    ("op1 withdraws on the lapsed request", lambda S: S.led.withdraw(1, signer=S.s("op1")),
     "OrderError"),
    ("op1 asks again and withdraws at once", lambda S: (
        S.led.request_withdrawal(1, signer=S.s("op1")),
        S.led.withdraw(1, signer=S.s("op1")))[-1], "OrderError"),
    ("a new notice later: paid", lambda S: (S.advance(NOTICE_S),
                                            S.led.withdraw(1, signer=S.s("op1")))[-1], 100),
    # an expired decision approval is renewed by its member, same content only (findings C3)
    ("m1 approves dispute 5: faulty 2", lambda S: S.led.approve_decision(
        5, EV, VA, [2], signer=S.s("m1")).state, "opened"),
    ("a ttl passes: m1's approval expired", lambda S: S.advance(TTL_S + 1), "ok"),
    ("m1 approves another content now", lambda S: S.led.approve_decision(
        5, EV, VA, [1], signer=S.s("m1")), "ConflictError"),
    ("m1 renews its approval", lambda S: S.led.approve_decision(
        5, EV, VA, [2], signer=S.s("m1")).state, "opened"),
    ("m2 approves it: decided; node 2 (deposit 0) owes P", lambda S: (S.led.approve_decision(
        5, EV, VA, [2], signer=S.s("m2")).state, debts(S)), ("settled", [(2, P, 5)])),
]


def _expected():
    return [(what, exp) for what, _, exp in CASES]


def _run(side):
    return [(what, outcome(side, op)) for what, op, _ in CASES]


def test_settlement_table_local(tmp_path):
    side = local_side(tmp_path, notice_s=NOTICE_S, balances={"op1": START, "op2": START})
    assert _run(side) == _expected()
    # the local stand-in for money: every unit accounted for
    led = side.led
    assert led.balance(ed(ROLE_INDEX["tenant"]).public) == P + 500 + P - 500
    assert led.balance(ed(ROLE_INDEX["op1"]).public) == START - 1500 + 500
    assert led.balance(ed(ROLE_INDEX["op2"]).public) == START - 500 - 800 + 300
    assert sum(led.balances().values()) == 2 * START
    assert led.verify_chain() == []


ROLE_INDEX = {r: i for i, r in enumerate(("m1", "m2", "m3", "m4", "tenant", "stranger", "n1",
                                          "n2", "op1", "op2"))}


def test_settlement_table_both_backends_agree(tmp_path, chain):
    local = _run(local_side(tmp_path, notice_s=NOTICE_S, balances={"op1": START,
                                                                   "op2": START}))
    eth = _run(chain_side(*chain, notice_s=NOTICE_S))
    assert eth == local
    assert local == _expected()


def test_notice_shorter_than_the_ttl_is_refused(tmp_path):
    from ledger_client.local import LocalLedger
    from ledger_client.types import Committee, Member
    with pytest.raises(ValueError, match="notice .* must be at least the proposal ttl"):
        LocalLedger(str(tmp_path / "l.mdb"), committee=Committee(
            (Member(ed(1).public),), 1, ttl_s=TTL_S), notice_s=TTL_S - 1)


# init code returning the runtime 60006000fd (PUSH1 0 PUSH1 0 REVERT): an account that refuses
# every transfer
REFUSER_INIT = bytes.fromhex("600580600b6000396000f3" + "60006000fd")


def test_a_tenant_refusing_the_transfer_does_not_block_the_decision(chain):
    """The tenant's account is a contract whose every call reverts: the decision still executes
    and settles; the penalty is credited to the tenant, to pull (withdrawCredit)."""
    S = chain_side(*chain, notice_s=NOTICE_S)
    led, gov = S.led, S.s("m1")
    tx = {"from": gov.address, "data": REFUSER_INIT, "nonce": led.w3.eth.get_transaction_count(
        gov.address), "gas": 100_000, "gasPrice": led.w3.eth.gas_price,
        "chainId": led.w3.eth.chain_id}
    h = led.w3.eth.send_raw_transaction(gov.sign_transaction(tx).raw_transaction)
    refuser = led.w3.eth.wait_for_transaction_receipt(h)["contractAddress"]
    led._nonces.pop(gov.address, None)
    for i, op in ((1, "op1"), (2, "op2")):
        node = Node(i, f"isp-{i}", ed(10 + i).public, S.node_account(i), S.operator(op))
        for m in ("m1", "m2"):
            led.register_node(node, signer=S.s(m))
    for m in ("m1", "m2"):
        led.register_sla(sla(), signer=S.s(m), tenant_account=refuser)
    led.deposit(1, 5000, signer=S.s("op1"))
    did = led.open_dispute(7, 0, 10, signer=S.s("m3"))
    held = led.balance(led.address)
    led.approve_decision(did, EV, VA, [1], signer=S.s("m1"))
    assert led.approve_decision(did, EV, VA, [1], signer=S.s("m2")).state == "settled"
    assert led.balance(refuser) == 0 and led.credit_of(refuser) == P
    assert led.balance(led.address) == held                 # still with the contract, owed
    assert led.deposit_of(1).amount == 5000 - P
