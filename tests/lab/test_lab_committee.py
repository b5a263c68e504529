"""The lab's committee decides a dispute and moves the penalty (issue 15; root, real namespaces).

``beat-lab up`` makes a committee of three member organisations with k = 2; the registrations
went through it (member 1 proposed, member 2 approved) and each operator locked a deposit per
router. Here r1 moves the tenant's flow onto the detour r4 (a deviation), the tenant opens the
dispute with its own key, and the committee decides with one member DISSENTING:

- member 1 interrogates the routers (beatctl interrogate --dispute D --evidence DIR): one approval,
  nothing decided, no value moved;
- member 3 approves another content first (the same evidence, a verdict naming nobody): still
  nothing decided, no value moved; a second content from member 3 is refused;
- member 2 judges member 1's archived evidence again (beatctl decide D --evidence DIR) and
  approves the same content as member 1: the decision executes at the 2 agreeing approvals; the
  penalty goes from r1's deposit to the tenant, exactly once (member 2 approving again moves
  nothing); member 3's dissent is recorded and shown by ``beatctl dissent``; nothing pending.

The same on ``--ledger ethereum`` (the chain the lab starts; wei read with eth_getBalance): that
run is ``committee_dispute_with_a_dissenting_member`` called by tests/lab/test_lab_ethereum.py on
its own lab (one ``up`` of the lab's seven ledger nodes for both tests: ~2 minutes spared).
"""
import hashlib
import json
import os
import time

import pytest

from conftest import require_root
from beat_lab.data import topology_path

PAPER = topology_path("paper")
N = 20                                     # known packets on the detour
ANCHOR_TIMEOUT_S = 60.0


@pytest.fixture(params=["local"])      # "ethereum": in test_lab_ethereum.py (see above)
def lab(request, tmp_path):
    require_root()
    from beat_lab.lab import Lab

    lb = Lab(PAPER, prefix=f"beat-k{request.param[0]}{os.getpid() % 10000}-",
             state_root=str(tmp_path / "state"), ledger=request.param)
    lb.up()
    yield lb
    lb.down()


def _deviate(lab):
    """r1 sends the tenant's known packets over r4 (the detour): r1 DEVIATED."""
    from beat_lab import traffic

    topo = lab.topo
    packets = traffic.known_packets(topo.host_addr(topo.src), topo.host_addr(topo.dst), N,
                                    sport=41000, tag=b"committee")
    lab.net.route_via("r1", topo.dst, "r4")
    try:
        t0 = time.time_ns()
        assert traffic.send_packets(lab.net, topo.src, packets) == N
        t1 = time.time_ns()
    finally:
        lab.net.route_via("r1", topo.dst, "r2")
    late = {r: why for r, why in lab.wait_anchored(t1, timeout=ANCHOR_TIMEOUT_S).items() if why}
    assert not late, f"not anchored within {ANCHOR_TIMEOUT_S} s: {late}"
    return t0, t1


def _money(view):
    return view["balances"], {n: d["amount"] for n, d in view["deposits"].items()}


def test_committee_dispute_with_a_dissenting_member(lab, tmp_path):
    committee_dispute_with_a_dissenting_member(lab, tmp_path)


def committee_dispute_with_a_dissenting_member(lab, tmp_path):
    """The scenario of the module doc on ``lab`` (up, its daemons running, nothing disputed yet,
    every deposit as locked at ``up``)."""
    money = lab.money
    r1 = str(lab.topo.node("r1").node_id)
    start = lab.ledger_view()
    # the set-up went through the committee: 3 members, k = 2, nothing left open; every
    # router's deposit locked by its operator
    assert start["committee"]["n"] == 3 and start["committee"]["k"] == 2
    assert start["pending"] == []
    assert start["deposits"] == {
        str(r.node_id): {"amount": money.deposit, "debt": 0, "frozen_by": None}
        for r in lab.topo.routers}, start["deposits"]
    p = lab.beatctl("slas", "--json")
    assert p.returncode == 0, p.stderr
    sla = json.loads(p.stdout)[0]
    assert sla["penalty_per_violation"] == money.penalty

    t0, t1 = _deviate(lab)
    did = lab.open_dispute(t0, t1)            # the tenant, with its own key
    before = lab.ledger_view(did)
    assert before["dispute"]["state"] == "opened" and before["votes"] == []

    # member 1 interrogates and approves its verdict: one approval, nothing moves
    evidence, jpath = str(tmp_path / "evidence"), str(tmp_path / "m1.json")
    p = lab.interrogate(t0, t1, jpath, dispute=did, evidence=evidence, member=1)
    assert p.returncode == 3, (p.returncode, p.stdout, p.stderr)
    with open(jpath) as f:
        report = json.load(f)
    verdicts = {d["node_id"]: d["verdict"] for d in report["devices"]}
    assert verdicts == {1: "DEVIATED", 2: "CONSISTENT", 3: "CONSISTENT", 4: "CONSISTENT"}
    m1 = report["decision"]
    assert m1["faulty"] == [1] and m1["threshold"] == 2
    one = lab.ledger_view(did)
    assert one["dispute"]["state"] == "opened" and one["dispute"]["penalty"] == 0
    assert _money(one) == _money(before)
    assert [v["dissent"] for v in one["votes"]] == [False]

    # member 3 approves another content first: the same evidence, a verdict naming nobody
    other = hashlib.sha3_256(b"member 3: nobody at fault").hexdigest()
    assert other != m1["verdict_digest"]
    assert lab.approve_decision(3, did, m1["evidence_digest"], other, []) == "opened"
    two = lab.ledger_view(did)
    assert two["dispute"]["state"] == "opened" and _money(two) == _money(before)
    # one content per member: member 3 cannot switch to the majority's afterwards
    q = lab.decide(did, evidence, 3)
    assert q.returncode != 0 and ("one content per dispute" in q.stderr
                                  or "DecisionConflict" in q.stderr), (q.returncode, q.stderr)
    assert _money(lab.ledger_view(did)) == _money(before)

    # member 2 judges member 1's archive again and approves the same content: executed at 2
    q = lab.decide(did, evidence, 2)
    assert q.returncode == 0, q.stderr
    got = json.loads(q.stdout)
    assert (got["verdict_digest"], got["evidence_digest"], got["faulty"]) == (
        m1["verdict_digest"], m1["evidence_digest"], [1])
    assert (got["approvals"], got["k"], got["state"]) == (2, 2, "settled")
    after = lab.ledger_view(did)
    d = after["dispute"]
    assert (d["state"], d["faulty"], d["penalty"]) == ("settled", [1], money.penalty)
    assert (d["verdict_digest"], d["evidence_digest"]) == (m1["verdict_digest"],
                                                           m1["evidence_digest"])
    # the penalty moved from r1's deposit to the tenant, and nothing else moved
    b_bal, b_dep = _money(before)
    a_bal, a_dep = _money(after)
    assert a_dep == dict(b_dep, **{r1: b_dep[r1] - money.penalty})
    assert a_bal == dict(b_bal, tenant=b_bal["tenant"] + money.penalty)
    if lab.ledger == "ethereum":     # the wei left the contract for the tenant's account
        assert after["contract_balance"] == before["contract_balance"] - money.penalty

    # the dissent is recorded and shown; the approvals are the members'
    names = lab.member_names()
    assert [(names[v["member"].lower()], v["dissent"]) for v in after["votes"]] == [
        ("member 1", False), ("member 3", True), ("member 2", False)]
    p = lab.beatctl("dissent", str(did), "--json")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert [(names[x["member"].lower()], x["verdict_digest"]) for x in rows] == [
        ("member 3", other)]
    p = lab.beatctl("dissent", str(did))
    assert p.returncode == 0 and "1 dissenting member(s)" in p.stdout, p.stdout

    # exactly once: member 2 approving again, member 1 likewise, move nothing more
    q = lab.decide(did, evidence, 2)
    assert q.returncode == 0 and json.loads(q.stdout)["state"] == "settled", q.stderr
    assert lab.approve_decision(1, did, m1["evidence_digest"], m1["verdict_digest"],
                                [1]) == "settled"
    again = lab.ledger_view(did)
    assert _money(again) == _money(after) and again["dispute"] == d
    p = lab.beatctl("pending", "--json")
    assert p.returncode == 0 and json.loads(p.stdout) == [], p.stdout
    if lab.ledger == "local":
        assert lab.verify_ledger() == []
