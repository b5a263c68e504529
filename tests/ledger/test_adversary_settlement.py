"""The adversary of settlement (issue 15): operators, tenants and members who lie or collude with
one other, against the money on BOTH backends -- the local ledger (counted balances) and the Beat
contract on a real ganache chain (wei, eth_getBalance). A refused attack is a passing test naming
the refusal; an attack that works is a strict xfail naming its finding
(/work/prompts/findings-committee.md).

The set-up: a committee of 3 with k = 2; nodes 1, 2, 3 of operators op1, op2, op3; SLA 7 of the
tenant on route (1, 2, 3) with penalty P per faulty device.
"""
import json
import os
import subprocess
import tempfile

import pytest

from conftest import require_ganache
from ledger_client.errors import LedgerError, OrderError, PermissionDenied
from ledger_client.keys import DeviceKey
from ledger_client.types import SLA, Committee, Member, Node

# the tests simulate the passing of time with an injected clock: the local ledger trusts it
# (a test that checks the host clock marks itself with its own)
pytestmark = pytest.mark.ledger_host_clock("writer")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TTL_S = 3600
NOTICE_S = 2 * TTL_S
P = 1000
START = 100_000
T0 = 1_700_000_000 * 10**9
V4 = bytes(10) + b"\xff\xff"
EV, VA, VB = b"\xee" * 32, b"\xaa" * 32, b"\xbb" * 32
ROLES = ("m1", "m2", "m3", "tenant", "stranger", "n1", "n2", "n3", "op1", "op2", "op3")
BACKENDS = ("local", "ethereum")


def ed(i):
    return DeviceKey.from_seed(bytes([0x80 + i]) * 32)


def sla(route=(1, 2, 3), ppv=P):
    return SLA(7, "acme", V4 + bytes([10, 0, 0, 1]), V4 + bytes([10, 0, 0, 2]), route,
               penalty_per_violation=ppv)


class Side:
    def __init__(self, kind, led, signers, advance, tenant_kw, account_of, operator_of):
        self.kind, self.led, self.signers, self.advance = kind, led, signers, advance
        self.tenant_kw, self.account_of, self.operator_of = tenant_kw, account_of, operator_of

    def s(self, role):
        return self.signers[role]

    def node(self, i, operator=True):
        return Node(i, f"isp-{i}", ed(20 + i).public, self.account_of(f"n{i}"),
                    self.operator_of(f"op{i}") if operator else None)

    def balance(self, role):
        if self.kind == "local":
            return self.led.balance(self.signers[role].public)
        return self.led.balance(self.signers[role].address)

    def held(self):
        """What the ledger holds: every deposit (local), the contract's wei (ethereum)."""
        if self.kind == "local":
            return sum(self.led.deposit_of(i).amount for i in (1, 2, 3))
        return self.led.w3.eth.get_balance(self.led.address)


def local_side(tmp_path):
    from ledger_client.local import LocalLedger
    signers = {r: ed(i) for i, r in enumerate(ROLES)}
    for i in (1, 2, 3):
        signers[f"n{i}"] = ed(20 + i)
    now = [T0]
    led = LocalLedger(str(tmp_path / "money.mdb"), clock=lambda: now[0], notice_s=NOTICE_S,
                      committee=Committee(tuple(Member(signers[r].public)
                                                for r in ("m1", "m2", "m3")), 2, ttl_s=TTL_S),
                      balances={signers[r].public: START for r in ("op1", "op2", "op3")})

    def advance(s):
        now[0] += s * 10**9

    side = Side("local", led, signers, advance, {"tenant_pubkey": signers["tenant"].public},
                lambda r: None, lambda r: signers[r].public)
    side.now, side.path = now, str(tmp_path / "money.mdb")
    return side


@pytest.fixture(scope="module")
def ganache(tmp_path_factory):
    require_ganache()
    from ledger_client.devnode import DevNode
    from ledger_client.ethereum import Account
    accounts = {r: Account.generate() for r in ROLES}
    node = DevNode(str(tmp_path_factory.mktemp("adv-money") / "chain"),
                   accounts=[(a, 10**22) for a in accounts.values()])
    node.start()
    yield node, accounts
    node.stop()


def chain_side(ganache):
    from ledger_client.ethereum import EthereumLedger
    node, accounts = ganache
    led = EthereumLedger.deploy(node.url, accounts["m1"], "sha3-256", timeout=30,
                                notice_s=NOTICE_S,
                                committee=Committee(tuple(Member(None, accounts[r].address_bytes)
                                                          for r in ("m1", "m2", "m3")), 2,
                                                    ttl_s=TTL_S))

    def advance(s):
        led.w3.provider.make_request("evm_increaseTime", [s])
        led.w3.provider.make_request("evm_mine", [])

    return Side("ethereum", led, accounts, advance, {"tenant_account": accounts["tenant"]},
                lambda r: accounts[r].address_bytes, lambda r: accounts[r].address_bytes)


@pytest.fixture(params=BACKENDS)
def side(request, tmp_path):
    if request.param == "local":
        s = local_side(tmp_path)
        yield s
        s.led.close()
    else:
        yield chain_side(request.getfixturevalue("ganache"))


def setup(S, route=(1, 2, 3), ppv=P, deposits=(2000, 2000, 2000), operators=(True,) * 3):
    for i in (1, 2, 3):
        for r in ("m1", "m2"):
            S.led.register_node(S.node(i, operators[i - 1]), signer=S.s(r))
    for r in ("m1", "m2"):
        S.led.register_sla(sla(route, ppv), signer=S.s(r), **S.tenant_kw)
    for i, amount in zip((1, 2, 3), deposits):
        if amount and operators[i - 1]:
            S.led.deposit(i, amount, signer=S.s(f"op{i}"))


def decide(S, did, faulty, members=("m1", "m2"), verdict=VA):
    d = None
    for r in members:
        d = S.led.approve_decision(did, EV, verdict, faulty, signer=S.s(r))
    return d


def amounts(S):
    return [S.led.deposit_of(i).amount for i in (1, 2, 3)]


# -- the penalty: from the right deposit, exactly once -------------------------------------------

def test_penalty_moves_only_from_the_faulty_nodes_deposit(side):
    S = side
    setup(S)
    did = S.led.open_dispute(7, 0, 10, signer=S.s("tenant"))
    t0, h0 = S.balance("tenant"), S.held()
    d = S.led.approve_decision(did, EV, VA, [2], signer=S.s("m1"))
    assert d.state == "opened" and amounts(S) == [2000, 2000, 2000]   # one member: nothing
    d = S.led.approve_decision(did, EV, VA, [2], signer=S.s("m2"))
    assert d.state == "settled" and d.penalty == P
    assert amounts(S) == [2000, 2000 - P, 2000]           # op1, op3: untouched
    assert S.balance("tenant") - t0 == P and h0 - S.held() == P


def test_a_decided_dispute_pays_once(side):
    """Repeats after the decision (same content, another content as dissent, the old settle
    call) move nothing more."""
    S = side
    setup(S)
    did = S.led.open_dispute(7, 0, 10, signer=S.s("tenant"))
    t0 = S.balance("tenant")
    decide(S, did, [1, 2])
    assert S.balance("tenant") - t0 == 2 * P
    S.led.approve_decision(did, EV, VA, [1, 2], signer=S.s("m1"))
    S.led.approve_decision(did, EV, VB, [1, 2, 3], signer=S.s("m3"))    # late dissent
    try:
        S.led.settle(did, signer=S.s("m3"))             # settled already: no-op or refused
    except (OrderError, PermissionDenied):
        pass
    assert S.balance("tenant") - t0 == 2 * P
    assert amounts(S) == [2000 - P, 2000 - P, 2000]
    assert S.led.debts() == []


def test_debt_recorded_and_paid_exactly_once(side):
    S = side
    setup(S, deposits=(2000, 300, 2000))
    did = S.led.open_dispute(7, 0, 10, signer=S.s("tenant"))
    t0 = S.balance("tenant")
    decide(S, did, [2])
    assert S.balance("tenant") - t0 == 300
    assert [(x.node_id, x.amount, x.dispute_id) for x in S.led.debts()] == [(2, P - 300, did)]
    S.led.deposit(2, 500, signer=S.s("op2"))              # pays 500 of the 700 owed
    assert S.balance("tenant") - t0 == 800 and S.led.deposit_of(2).amount == 0
    assert S.led.deposit_of(2).debt == 200
    S.led.deposit(2, 1000, signer=S.s("op2"))             # pays the last 200, keeps 800
    assert S.balance("tenant") - t0 == P and S.led.deposit_of(2).amount == 800
    S.led.deposit(2, 100, signer=S.s("op2"))              # nothing owed: all locked
    assert S.balance("tenant") - t0 == P and S.led.deposit_of(2).amount == 900
    assert S.led.debts() == []


# -- deposits and withdrawals: who, when ------------------------------------------------------

def test_nobody_moves_anothers_deposit(side):
    S = side
    setup(S)
    for who in ("stranger", "op1", "m1", "tenant"):
        with pytest.raises(PermissionDenied):
            S.led.deposit(2, 10, signer=S.s(who))
        with pytest.raises(PermissionDenied):
            S.led.request_withdrawal(2, signer=S.s(who))
        with pytest.raises(PermissionDenied):
            S.led.withdraw(2, signer=S.s(who))
    assert amounts(S) == [2000, 2000, 2000]


def test_withdraw_refused_while_the_dispute_runs_with_a_debt_and_twice(side):
    """The front-run the notice is for: request, the tenant opens a dispute before the notice
    ends, the notice ends: frozen; the decision leaves a debt: refused while it is owed; after a
    withdrawal, another is refused (not requested)."""
    S = side
    setup(S, deposits=(2000, 300, 2000))
    S.led.request_withdrawal(2, signer=S.s("op2"))
    S.advance(NOTICE_S - 60)
    did = S.led.open_dispute(7, 0, 10, signer=S.s("tenant"))
    S.advance(120)
    with pytest.raises(OrderError, match=f"dispute {did}|DepositFrozen"):
        S.led.withdraw(2, signer=S.s("op2"))
    decide(S, did, [2])
    with pytest.raises(OrderError, match="owes|DepositInDebt"):
        S.led.withdraw(2, signer=S.s("op2"))
    # op1 (not faulty) withdraws its whole deposit, once
    S.led.request_withdrawal(1, signer=S.s("op1"))
    S.advance(NOTICE_S + 1)
    assert S.led.withdraw(1, signer=S.s("op1")) == 2000
    with pytest.raises(OrderError, match="not due|WithdrawalNotDue"):
        S.led.withdraw(1, signer=S.s("op1"))
    assert amounts(S) == [0, 0, 2000]


def test_one_undecided_dispute_freezes_for_one_ttl_only(side):
    S = side
    setup(S)
    S.led.request_withdrawal(3, signer=S.s("op3"))
    S.advance(NOTICE_S - 10)
    S.led.open_dispute(7, 0, 10, signer=S.s("tenant"))
    S.advance(20)
    with pytest.raises(OrderError):
        S.led.withdraw(3, signer=S.s("op3"))
    S.advance(TTL_S)
    assert S.led.withdraw(3, signer=S.s("op3")) == 2000


def test_a_standing_withdrawal_request_front_runs_the_dispute(side):
    S = side
    setup(S)
    S.led.request_withdrawal(2, signer=S.s("op2"))        # early, 'just in case'
    S.advance(NOTICE_S + 30 * TTL_S)                      # months of service later...
    # node 2 drops the tenant's packets; its operator sees it first and withdraws at once
    try:
        S.led.withdraw(2, signer=S.s("op2"))
    except OrderError:
        pass
    did = S.led.open_dispute(7, 0, 10, signer=S.s("tenant"))
    t0 = S.balance("tenant")
    d = decide(S, did, [2])
    assert d.state == "settled" and d.penalty == P
    assert S.balance("tenant") - t0 == P, "the faulty operator escaped its penalty"


def test_a_tenant_reopening_disputes_freezes_for_ever(side):
    S = side
    setup(S)
    S.led.request_withdrawal(3, signer=S.s("op3"))
    S.advance(NOTICE_S - 10)
    paid = None
    for _ in range(6):                                    # six ttls past the notice
        S.led.open_dispute(7, 0, 10, signer=S.s("tenant"))
        S.advance(TTL_S - 5)
        try:
            paid = S.led.withdraw(3, signer=S.s("op3"))
            break
        except OrderError:
            continue
    assert paid == 2000, "op3 (honest, never named) could never withdraw"


def test_a_penalty_is_paid_or_owed_never_lost(side):
    S = side
    setup(S, operators=(True, False, True), deposits=(2000, 0, 2000))
    did = S.led.open_dispute(7, 0, 10, signer=S.s("tenant"))
    t0 = S.balance("tenant")
    d = decide(S, did, [2])
    assert d.penalty == P
    owed = sum(x.amount for x in S.led.debts())
    assert S.balance("tenant") - t0 + owed == d.penalty


def test_penalty_terms_that_overflow_are_refused_at_registration(side):
    S = side
    for i in (1, 2, 3):
        for r in ("m1", "m2"):
            S.led.register_node(S.node(i), signer=S.s(r))
    with pytest.raises(LedgerError):
        for r in ("m1", "m2"):
            S.led.register_sla(sla(ppv=1 << 255), signer=S.s(r), **S.tenant_kw)


# -- local: the writer's clock is the notice's clock -------------------------------------------

@pytest.mark.ledger_host_clock(T0)
def test_local_operator_clock_ahead_skips_notice_and_freeze(tmp_path):
    S = local_side(tmp_path)
    setup(S)
    S.led.request_withdrawal(2, signer=S.s("op2"))
    S.led.open_dispute(7, 0, 10, signer=S.s("tenant"))
    real = S.now[0]
    S.now[0] = real + (NOTICE_S + TTL_S + 1) * 10**9       # op2's clock only
    try:
        S.led.withdraw(2, signer=S.s("op2"))
    except OrderError:
        pass
    S.now[0] = real + 10**9                                # the others: 1 s later
    assert S.led.deposit_of(2).amount == 2000, "op2 took its deposit out before the notice"


# -- chain: reentrancy, refusing tenants, gas -------------------------------------------------

ATTACKER = """
// SPDX-License-Identifier: UNLICENSED
pragma solidity ^0.8.26;
interface IBeat {
    function withdrawCredit() external;
    function openDispute(uint64 slaId, uint64 fromNs, uint64 toNs) external returns (uint64);
    function deposit(uint64 nodeId) external payable;
}
/// A tenant account that is a contract: mode 0 accepts, 1 reverts, 2 re-enters withdrawCredit
/// (caught), 3 re-enters and reverts, 4 burns all gas it is given.
contract Tenant {
    IBeat public beat;
    uint8 public mode;
    uint256 public received;
    uint256 public reentered;
    constructor(address b) { beat = IBeat(b); }
    function setMode(uint8 m) external { mode = m; }
    function open(uint64 slaId) external returns (uint64) { return beat.openDispute(slaId, 0, 10); }
    function pull() external { beat.withdrawCredit(); }
    receive() external payable {
        received += msg.value;
        if (mode == 1) revert("no");
        if (mode == 2) { try beat.withdrawCredit() { reentered++; } catch {} }
        if (mode == 3) { beat.withdrawCredit(); }
        if (mode == 4) { while (true) { reentered++; } }
    }
}
"""


_ATTACKER = []


def _compile_attacker():
    """The attacker, compiled with the pinned solcjs (its warnings before the JSON skipped)."""
    if _ATTACKER:
        return _ATTACKER[0]
    from ledger_client.contracts import compile as beat_compile
    request = {"language": "Solidity", "sources": {"Tenant.sol": {"content": ATTACKER}},
               "settings": {"optimizer": {"enabled": True, "runs": 200}, "evmVersion": "paris",
                            "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}}}}
    with tempfile.TemporaryFile("w+b") as out:
        subprocess.run(["node", beat_compile.SOLCJS, "--standard-json"],
                       input=json.dumps(request).encode(), stdout=out, check=True, timeout=300)
        out.seek(0)
        text = out.read().decode()
        res = json.loads(text[text.index("{"):])
    errors = [e for e in res.get("errors", []) if e["severity"] == "error"]
    assert not errors, errors
    c = res["contracts"]["Tenant.sol"]["Tenant"]
    _ATTACKER.append((c["abi"], c["evm"]["bytecode"]["object"]))
    return _ATTACKER[0]


def _send(S, fn, who, value=0):
    w3, acct = S.led.w3, S.s(who)
    S.led._nonces.pop(acct.address, None)
    tx = fn.build_transaction({"from": acct.address, "value": value, "gas": 3_000_000,
                               "nonce": w3.eth.get_transaction_count(acct.address, "pending"),
                               "chainId": w3.eth.chain_id, "gasPrice": w3.eth.gas_price})
    r = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(acct.sign_transaction(tx).raw_transaction))
    return r


def _deploy_tenant(S):
    abi, bytecode = _compile_attacker()
    w3 = S.led.w3
    ctor = w3.eth.contract(abi=abi, bytecode=bytecode).constructor(S.led.address)
    r = _send(S, ctor, "stranger")
    assert r["status"] == 1
    return w3.eth.contract(address=r["contractAddress"], abi=abi)


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_chain_tenant_contract_can_neither_block_nor_double_the_payment(ganache, mode):
    """The tenant is a contract: accepting, reverting, re-entering (caught or not). The decision
    executes in every case; the tenant ends with exactly the penalty (pushed, or credited and
    pulled once)."""
    _tenant_contract_case(ganache, mode)


def test_chain_gas_burning_tenant_does_not_block_the_decision(ganache):
    _tenant_contract_case(ganache, 4)


def _tenant_contract_case(ganache, mode):
    S = chain_side(ganache)
    t = _deploy_tenant(S)
    S.tenant_kw = {"tenant_account": t.address}
    setup(S)
    assert _send(S, t.functions.setMode(mode), "stranger")["status"] == 1
    assert _send(S, t.functions.open(7), "stranger")["status"] == 1
    d = decide(S, 1, [2])
    assert d.state == "settled" and d.penalty == P
    assert S.led.deposit_of(2).amount == 2000 - P
    pushed = S.led.w3.eth.get_balance(t.address)
    credited = S.led.credit_of(t.address)
    assert pushed + credited == P and pushed in (0, P)
    if credited:
        _send(S, t.functions.setMode(0), "stranger")
        assert _send(S, t.functions.pull(), "stranger")["status"] == 1
        _send(S, t.functions.pull(), "stranger")            # a second pull: nothing more
    assert S.led.w3.eth.get_balance(t.address) == P
    assert S.led.credit_of(t.address) == 0


def test_chain_withdraw_gas_does_not_grow_with_old_disputes(ganache):
    S = chain_side(ganache)
    setup(S)
    fn = S.led.contract.functions
    S.led.request_withdrawal(3, signer=S.s("op3"))
    S.led.open_dispute(7, 0, 10, signer=S.s("tenant"))
    S.advance(NOTICE_S + 1)
    gas1 = fn.withdraw(3).estimate_gas({"from": S.s("op3").address})
    for _ in range(40):
        S.led.open_dispute(7, 0, 10, signer=S.s("tenant"))
    S.advance(TTL_S + 1)                                  # all 41 undecided and expired
    gas41 = fn.withdraw(3).estimate_gas({"from": S.s("op3").address})
    per = (gas41 - gas1) / 40
    limit = S.led.w3.eth.get_block("latest")["gasLimit"]
    print(f"withdraw gas: {gas1} with 1 dispute, {gas41} with 41: {per:.0f} per dispute; "
          f"block gas limit {limit}: ~{int((limit - gas1) / max(per, 1))} disputes freeze it")
    assert gas41 - gas1 < 20_000
