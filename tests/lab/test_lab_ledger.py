"""The paper lab on the ``local`` ledger (root): every router registered (with its own owner) and
every router-router link, its beatd anchoring; after the demo traffic (and SIGTERM) every router's
anchors are on the ledger, ``beatctl anchors`` lists them and the ledger's hash chain is sound.
``--ledger none`` too (``--ledger ethereum``: tests/lab/test_lab_ethereum.py)."""
import io
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, require_root
from beat_lab.data import topology_path

PAPER = topology_path("paper")
PREFIX = f"beat-l{os.getpid()}-"


@pytest.fixture
def lab(tmp_path):
    require_root()
    from beat_lab.lab import Lab

    lb = Lab(PAPER, prefix=PREFIX, state_root=str(tmp_path / "state"))
    yield lb
    lb.down()


def test_lab_demo_anchors_every_router(lab):
    from ledger_client.local import LocalLedger

    ok, why = lab.daemon_available()
    assert ok, f"`beatd run` is not available: {why}"
    lab.up()
    assert lab.ledger == "local" and os.path.exists(lab.ledger_path)
    with LocalLedger(lab.ledger_path, hash_name=None) as led:
        nodes = {n.node_id: n for n in led.nodes()}
    assert set(nodes) == {r.node_id for r in lab.topo.routers}
    # each router with its own owner (the topology gives none), every router-router link
    assert {i: n.owner for i, n in nodes.items()} == {
        r.node_id: f"operator-{r.name}" for r in lab.topo.routers}
    with LocalLedger(lab.ledger_path, hash_name=None) as led:
        assert led.links() == lab.topo.router_link_ids() == [(1, 2), (1, 4), (2, 3), (3, 4)]
        # the committee: members 1..3 (their Ed25519 keys), k = 2; every act of the set-up
        # proposed by member 1 and executed at member 2's approval; nothing left open
        c = led.committee()
        from ledger_client.keys import DeviceKey
        assert c.k == 2 and [m.pubkey for m in c.members] == [
            DeviceKey.load(lab.parties.member(i)).public for i in (1, 2, 3)]
        ps = led.proposals()
        assert len(ps) == len(nodes) + 4 + 1 and led.pending() == []
        m12 = [DeviceKey.load(lab.parties.member(i)).public.hex() for i in (1, 2)]
        assert all(p.state == "executed" and list(p.approvals) == m12 for p in ps), ps
        # each node's operator (the owner's key) locked the deposit; the operators and the
        # tenant hold the rest of their balance
        for r in lab.topo.routers:
            op = DeviceKey.load(lab.operator_key_path(r.name)).public
            assert led.get_node(r.node_id).operator == op
            assert led.deposit_of(r.node_id).amount == lab.money.deposit
            assert led.balance(op) == lab.money.balance - lab.money.deposit
        assert led.balance(DeviceKey.load(lab.tenant_key_path)) == lab.money.balance
    for r in lab.topo.routers:
        text = open(lab.config_path(r.name)).read()
        assert '[ledger]\nbackend = "local"' in text and lab.device_key_path(r.name) in text
        st = lab.status(r.name)
        assert st["anchor"]["backend"] == "local" and st["anchor"]["last_error"] is None

    out = io.StringIO()
    report = lab.demo(known=10, flows=50, load_packets=1000, rate=5000.0, out=out)
    assert all(v == 0 for v in report["stopped"].values()), report["stopped"]
    assert f"ledger {lab.ledger_path}" in out.getvalue()
    assert report["dispute"]["not_anchored"] == {}, out.getvalue()
    # the tenant's dispute, decided by the committee at k = 2: the penalty moved
    d = report["dispute"]
    assert d["decision"]["state"] == "settled" and d["decision"]["faulty"] == [1]
    assert d["after"]["balances"]["tenant"] == d["before"]["balances"]["tenant"] + \
        lab.money.penalty
    assert d["after"]["deposits"]["1"]["amount"] == lab.money.deposit - lab.money.penalty
    assert "r1's deposit (operator-r1): 500 units -> 400 units" in out.getvalue()
    assert "the tenant's balance: 10000 units -> 10100 units" in out.getvalue()

    anchors = lab.anchors()
    for r in lab.topo.routers:
        got = anchors[r.name]
        assert got, f"{r.name}: no anchors on the ledger\n{open(lab.log_path(r.name)).read()}"
        assert [a.batch_seq for a in got] == list(range(len(got)))
        assert report["anchors"][r.name]["anchors"] == len(got)
        # nothing pending in the router's store: the last tick at SIGTERM submitted it all
        log = open(lab.log_path(r.name)).read()
        assert "anchors at stop" in log and "PermissionDenied" not in log
    assert lab.verify_ledger() == []

    p = subprocess.run([sys.executable, "-m", "governance.cli", "--ledger",
                        f"local:{lab.ledger_path}", "anchors", "--json"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 0, p.stderr
    listed = [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
    want = {(a.node_id, a.batch_seq, a.root.hex()) for got in anchors.values() for a in got}
    assert {(x["node_id"], x["batch_seq"], x["root"]) for x in listed} == want
    p = subprocess.run([sys.executable, "-m", "governance.cli", "--ledger",
                        f"local:{lab.ledger_path}", "verify", "--json"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 0 and json.loads(p.stdout)["problems"] == []


def test_lab_ledger_none(tmp_path):
    require_root()
    from beat_lab.lab import Lab, LabError

    lb = Lab(PAPER, prefix=PREFIX, state_root=str(tmp_path / "state"), ledger="none")
    try:
        lb.up(daemons=False)
        lb.write_configs()
        assert '[ledger]\nbackend = "none"' in open(lb.config_path("r1")).read()
        from beatd import config as bconfig
        assert not bconfig.load(lb.config_path("r1")).ledger_enabled
        assert not os.path.exists(lb.ledger_path)
    finally:
        lb.down()
    # (--ledger ethereum: tests/lab/test_lab_ethereum.py)
    with pytest.raises(LabError, match="ledger: 'chain' is not one of"):
        Lab(PAPER, prefix=PREFIX, state_root=str(tmp_path / "state"), ledger="chain")
