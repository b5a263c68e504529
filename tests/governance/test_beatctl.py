"""beatctl end to end on a temporary local ledger."""
import json
import time
import os
import subprocess
import sys

import pytest

from governance.cli import main
from ledger_client.keys import DeviceKey
from ledger_client.local import LocalLedger
from ledger_client.types import Anchor

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SLA_TOML = """
sla_id = 7
tenant = "acme"
src = "10.0.0.1"
dst = "2001:db8::2"
route = [1, 2]
max_loss_ppm = 100
max_delay_us = 5000
penalty_per_violation = 3
tenant_pubkey = "{tenant}"

[qm_terms]
min_throughput_kbps = 1000
"""


@pytest.fixture
def env(tmp_path, capsys):
    gov = tmp_path / "gov.ed25519"
    assert main(["keygen", "--out", str(gov)]) == 0
    gov_pub = capsys.readouterr().out.strip()
    led = f"local:{tmp_path / 'ledger.mdb'}"
    return {"tmp": tmp_path, "gov": str(gov), "gov_pub": gov_pub, "led": led,
            "path": str(tmp_path / "ledger.mdb")}


def run(env, *argv, key=True):
    base = ["--ledger", env["led"]] + (["--key", env["gov"]] if key else [])
    return main(base + list(argv))


def test_end_to_end(env, capsys):
    n1, n2, tenant = DeviceKey.generate(), DeviceKey.generate(), DeviceKey.generate()
    (env["tmp"] / "n2.pub").write_text(n2.public_hex + "\n")
    assert run(env, "register-node", "--node-id", "1", "--owner", "isp-a",
               "--pubkey", n1.public_hex) == 0
    assert run(env, "register-node", "--node-id", "2", "--owner", "isp-b",
               "--pubkey-file", str(env["tmp"] / "n2.pub"), "--account", "0x" + "ab" * 20) == 0
    sla = env["tmp"] / "sla.toml"
    sla.write_text(SLA_TOML.format(tenant=tenant.public_hex))
    assert run(env, "register-sla", "--file", str(sla)) == 0
    capsys.readouterr()

    assert run(env, "nodes", "--json", key=False) == 0
    nodes = json.loads(capsys.readouterr().out)
    assert nodes == [{"node_id": 1, "owner": "isp-a", "pubkey": n1.public_hex, "account": None},
                     {"node_id": 2, "owner": "isp-b", "pubkey": n2.public_hex,
                      "account": "ab" * 20}]
    assert run(env, "nodes", key=False) == 0
    assert "isp-b" in capsys.readouterr().out

    assert run(env, "slas", "--json", key=False) == 0
    (s,) = json.loads(capsys.readouterr().out)
    assert (s["sla_id"], s["src"], s["dst"], s["route"], s["penalty_per_violation"]) == \
        (7, "10.0.0.1", "2001:db8::2", [1, 2], 3)
    assert s["qm_terms"] == {"min_throughput_kbps": 1000}
    assert s["tenant_pubkey"] == tenant.public_hex

    with LocalLedger(env["path"]) as led:
        assert led.governance_pubkey.hex() == env["gov_pub"]
        for seq in range(3):
            led.anchor(Anchor(1, seq, 4, bytes([seq]) * 32, seq, seq + 1), signer=n1)
        led.anchor(Anchor(2, 0, 1, b"\x09" * 32, 5, 6), signer=n2)
    assert run(env, "anchors", "--json", key=False) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(r["node_id"], r["batch_seq"]) for r in rows] == [(1, 0), (1, 1), (1, 2), (2, 0)]
    assert rows[3]["root"] == "09" * 32 and rows[3]["ref"] == "6"
    assert run(env, "anchors", "--node-id", "1", "--from-seq", "1", key=False) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[:2] for line in out] == [["1", "1"], ["1", "2"]]
    assert run(env, "verify", "--json", key=False) == 0
    assert json.loads(capsys.readouterr().out) == {"entries": 7, "problems": []}


def test_refusals_exit_1(env, capsys, tmp_path):
    k = DeviceKey.generate()
    assert run(env, "register-node", "--node-id", "1", "--owner", "a", "--pubkey",
               k.public_hex) == 0
    capsys.readouterr()
    # the identical node again: a no-op, as on the contract
    assert run(env, "register-node", "--node-id", "1", "--owner", "a", "--pubkey",
               k.public_hex) == 0
    capsys.readouterr()
    # another node under the same id: the ledger refuses
    assert run(env, "register-node", "--node-id", "1", "--owner", "b", "--pubkey",
               k.public_hex) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "register_node 1" in err
    # another governance key: refused
    other = tmp_path / "other.ed25519"
    DeviceKey.generate().save(other)
    assert main(["--ledger", env["led"], "--key", str(other), "register-node", "--node-id", "2",
                 "--owner", "b", "--pubkey", DeviceKey.generate().public_hex]) == 1
    assert "governance key" in capsys.readouterr().err


def test_links(env, capsys):
    for i in (1, 2, 3):
        assert run(env, "register-node", "--node-id", str(i), "--owner", f"isp-{i}", "--pubkey",
                   DeviceKey.generate().public_hex) == 0
    capsys.readouterr()
    assert run(env, "register-link", "--a", "2", "--b", "1") == 0
    assert capsys.readouterr().out == "registered link 1-2\n"
    assert run(env, "register-link", "--a", "1", "--b", "2") == 0     # again: a no-op
    assert run(env, "register-link", "--a", "3", "--b", "2") == 0
    capsys.readouterr()
    assert run(env, "links", key=False) == 0
    assert capsys.readouterr().out == "1\t2\n2\t3\n"
    assert run(env, "links", "--json", key=False) == 0
    assert json.loads(capsys.readouterr().out) == [{"a": 1, "b": 2}, {"a": 2, "b": 3}]
    with LocalLedger(env["path"]) as led:
        assert led.neighbours(2) == [1, 3] and led.entry_count() == 5
    # refused by the ledger (exit 1): an unknown node, another key than the governance's
    assert run(env, "register-link", "--a", "1", "--b", "9") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "register_link 1-9: node 9 is not registered" in err
    other = env["tmp"] / "other.ed25519"
    DeviceKey.generate().save(other)
    assert main(["--ledger", env["led"], "--key", str(other), "register-link", "--a", "1",
                 "--b", "3"]) == 1
    assert "not the governance" in capsys.readouterr().err
    # bad input (exit 2): a node to itself, not a node id, no key
    for argv, needle in ((["--a", "2", "--b", "2"], "two different nodes"),
                         (["--a", "0", "--b", "2"], "--a 0")):
        assert run(env, "register-link", *argv) == 2
        assert needle in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:                  # argparse's own usage error
        run(env, "register-link", "--a", "x", "--b", "2")
    assert info.value.code == 2 and "--a" in capsys.readouterr().err
    assert run(env, "register-link", "--a", "1", "--b", "3", key=False) == 2
    assert "--key" in capsys.readouterr().err
    # retire-link
    assert run(env, "retire-link", "--a", "2", "--b", "3") == 0
    assert capsys.readouterr().out == "retired link 2-3\n"
    assert run(env, "retire-link", "--a", "1", "--b", "3") == 1
    assert "no such link" in capsys.readouterr().err
    assert run(env, "links", key=False) == 0
    assert capsys.readouterr().out == "1\t2\n"
    assert run(env, "verify", key=False) == 0


def test_links_need_an_existing_ledger(env, capsys):
    assert run(env, "register-link", "--a", "1", "--b", "2") == 2
    assert "no such ledger" in capsys.readouterr().err
    assert not os.path.exists(env["path"])


@pytest.mark.parametrize("argv,needle", [
    (["register-node", "--node-id", "1", "--owner", "a", "--pubkey", "xyz"], "--pubkey"),
    (["register-node", "--node-id", "1", "--owner", "a", "--pubkey", "00" * 31], "32 bytes"),
    (["register-node", "--node-id", "0", "--owner", "a", "--pubkey", "11" * 32], "node_id"),
    (["register-node", "--node-id", "1", "--owner", "a", "--pubkey", "11" * 32,
      "--account", "abcd"], "account"),
    (["register-node", "--node-id", "1", "--owner", "a", "--pubkey-file", "/nonexistent/p"],
     "/nonexistent/p"),
    (["register-sla", "--file", "/nonexistent/sla.toml"], "/nonexistent/sla.toml"),
])
def test_bad_input_exit_2(env, capsys, argv, needle):
    assert run(env, *argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err
    assert not os.path.exists(env["path"])


@pytest.mark.parametrize("body,needle", [
    ("sla_id = 1\n", "missing"),
    ('sla_id = 1\ntenant = "t"\nsrc = "1.2.3.4"\ndst = "nope"\nroute = [1]\n', "dst"),
    ('sla_id = 1\ntenant = "t"\nsrc = "1.2.3.4"\ndst = "1.2.3.5"\nroute = [1]\ncolour = 1\n',
     "colour"),
    ('sla_id = 1\ntenant = "t"\nsrc = "1.2.3.4"\ndst = "1.2.3.5"\nroute = []\n', "route"),
    ('sla_id = 1\ntenant = "t"\nsrc = "1.2.3.4"\ndst = "1.2.3.5"\nroute = [1]\n'
     'tenant_pubkey = "00"\n', "32 bytes"),
    ("sla_id = [", "TOML"),
])
def test_bad_sla_file(env, capsys, body, needle):
    f = env["tmp"] / "sla.toml"
    f.write_text(body)
    assert run(env, "register-sla", "--file", str(f)) == 2
    err = capsys.readouterr().err
    assert needle in err and "sla.toml" in err


def test_key_and_ledger_errors(env, capsys):
    os.chmod(env["gov"], 0o644)
    assert run(env, "register-node", "--node-id", "1", "--owner", "a",
               "--pubkey", "11" * 32) == 2
    err = capsys.readouterr().err
    assert env["gov"] in err and "0644" in err
    assert run(env, "nodes", key=False) == 2
    assert "no such ledger" in capsys.readouterr().err
    assert main(["--ledger", "ethereum:http://x", "nodes"]) == 2
    assert "local:PATH" in capsys.readouterr().err
    assert main(["keygen", "--out", env["gov"]]) == 2
    assert "--force" in capsys.readouterr().err


def test_console_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "governance.cli", "--help"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "register-node" in r.stdout


def test_a_reader_that_leaves_early_is_not_an_error(env, capsys):
    """`beatctl anchors | head -1`: the pipe closes early; beatctl exits without a traceback."""
    node = DeviceKey.generate()
    assert run(env, "register-node", "--node-id", "1", "--owner", "isp-a",
               "--pubkey", node.public_hex) == 0
    with LocalLedger(env["path"]) as led:
        for seq in range(1500):
            led.anchor(Anchor(1, seq, 1, bytes([seq % 256]) * 32, seq, seq), signer=node)
    cmd = (f"{sys.executable} -m governance.cli --ledger {env['led']} anchors --json | head -c 100")
    r = subprocess.run(["bash", "-c", "set -o pipefail; " + cmd], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    assert len(r.stdout) == 100
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr


# -- the committee (docs/ledger.md, "The committee") --------------------------------------------

def _beatctl_as(tmp_path, capsys, *roles):
    """A key per role (keygen), their public keys, and bc(role, *argv): beatctl on a local ledger
    in tmp_path with that role's --key (role None: no key)."""
    keys = {}
    for r in roles:
        keys[r] = str(tmp_path / f"{r}.ed25519")
        assert main(["keygen", "--out", keys[r]]) == 0
    pubs = {r: v.strip() for r, v in zip(keys, capsys.readouterr().out.split())}
    led = f"local:{tmp_path / 'ledger.mdb'}"

    def bc(role, *argv):
        return main(["--ledger", led] + (["--key", keys[role]] if role else []) + list(argv))
    return keys, pubs, bc


def test_committee_commands(tmp_path, capsys):
    from ledger_client.types import Node
    keys, pubs, bc = _beatctl_as(tmp_path, capsys, "m1", "m2", "m3", "stranger", "tenant")

    assert bc("m1", "create", "--member", pubs["m1"], "--member", pubs["m2"],
              "--member", pubs["m3"], "--threshold", "2", "--ttl", "3600") == 0
    assert "a committee of 3, k = 2" in capsys.readouterr().out
    assert bc("m1", "create", "--member", pubs["m1"], "--threshold", "1") == 2      # exists
    assert "exists" in capsys.readouterr().err
    assert bc(None, "committee", "--json") == 0
    c = json.loads(capsys.readouterr().out)
    assert (c["k"], c["epoch"], c["ttl_s"], [m["pubkey"] for m in c["members"]]) == (
        2, 0, 3600, [pubs["m1"], pubs["m2"], pubs["m3"]])
    n1 = DeviceKey.generate()
    # register-node is a proposal when k > 1
    assert bc("m1", "register-node", "--node-id", "1", "--owner", "isp-a",
              "--pubkey", n1.public_hex) == 0
    assert capsys.readouterr().out.strip() == "proposal 1: 1 of 2 approvals"
    assert bc(None, "nodes", "--json") == 0 and json.loads(capsys.readouterr().out) == []
    assert bc(None, "pending", "--json") == 0
    p = json.loads(capsys.readouterr().out)
    assert [(x["proposal"], x["act"], x["args"]["node_id"], x["approvals"], x["k"], x["state"])
            for x in p] == [(1, "register_node", 1, [pubs["m1"]], 2, "open")]
    # a stranger may not approve; m1 again counts once
    assert bc("stranger", "approve", "1") == 1
    assert "not a member" in capsys.readouterr().err
    assert bc("m1", "approve", "1", "--json") == 0
    assert json.loads(capsys.readouterr().out)["approvals"] == [pubs["m1"]]
    assert bc("m2", "approve", "1") == 0
    assert "proposal 1: 2 approvals (register_node): executed" in capsys.readouterr().out
    assert bc(None, "nodes", "--json") == 0
    assert [n["node_id"] for n in json.loads(capsys.readouterr().out)] == [1]
    assert bc("m3", "approve", "1") == 1                                  # executed already
    assert "executed" in capsys.readouterr().err
    # a dispute, decided with one dissenting member (k = 2)
    sla = tmp_path / "sla.toml"
    sla.write_text(SLA_TOML.format(tenant=pubs["tenant"]).replace("route = [1, 2]",
                                                                   "route = [1]"))
    for r in ("m1", "m2", "m3"):
        assert bc(r, "register-sla", "--file", str(sla)) == 0
    assert "executed" in capsys.readouterr().out
    with LocalLedger(str(tmp_path / "ledger.mdb")) as lg:
        tenant = DeviceKey.load(keys["tenant"])
        assert lg.open_dispute(7, 0, 10, signer=tenant) == 1
        ev, va, vb = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
        lg.approve_decision(1, ev, va, [1], signer=DeviceKey.load(keys["m1"]))
        lg.approve_decision(1, ev, vb, [], signer=DeviceKey.load(keys["m2"]))
        lg.approve_decision(1, ev, va, [1], signer=DeviceKey.load(keys["m3"]))
        assert lg.get_node(1) == Node(1, "isp-a", n1.public)
    assert bc(None, "dissent", "1", "--json") == 0
    assert json.loads(capsys.readouterr().out) == [
        {"member": pubs["m2"], "verdict_digest": vb.hex(), "evidence_digest": ev.hex()}]
    assert bc(None, "dissent", "9") == 2
    capsys.readouterr()
    assert bc("tenant", "disputes", "--tenant", "--json") == 0
    d = json.loads(capsys.readouterr().out)
    assert [(x["dispute"], x["state"], x["evidence_digest"], x["faulty"], x["penalty"])
            for x in d] == [(1, "settled", ev.hex(), [1], 3)]
    assert bc("stranger", "disputes", "--tenant", "--json") == 0
    assert json.loads(capsys.readouterr().out) == []
    # membership commands
    assert bc("m1", "propose", "set-threshold", "--k", "4") == 1
    assert "k must be in 1..n = 3" in capsys.readouterr().err
    assert bc("m1", "propose", "set-threshold", "--k", "3") == 0
    assert capsys.readouterr().out.strip() == "proposal 3: 1 of 2 approvals"
    assert bc("m3", "propose", "set-threshold", "--k", "3") == 0
    assert "proposal 3: 2 approvals: executed: k = 3" in capsys.readouterr().out
    assert bc("m1", "propose", "remove-member", "--pubkey", pubs["m3"]) == 1   # 2 < k = 3
    assert "fewer than k = 3" in capsys.readouterr().err
    assert bc("m1", "propose", "add-member", "--pubkey", pubs["tenant"][:10]) == 2   # bad key
    capsys.readouterr()


def test_money_commands(tmp_path, capsys):
    """deposit, withdraw --request / withdraw, deposits, debts, balances on a local committee
    ledger: exit codes and JSON; a decision's penalty moves the deposit to the tenant."""
    keys, pubs, bc = _beatctl_as(tmp_path, capsys, "m1", "op", "tenant", "stranger")

    assert bc("m1", "create", "--member", pubs["m1"], "--threshold", "1", "--ttl", "3600",
              "--notice", "1000", "--balance", f"{pubs['op']}=100") == 2    # notice < ttl
    assert "notice" in capsys.readouterr().err
    assert bc("m1", "create", "--member", pubs["m1"], "--threshold", "1", "--ttl", "3600",
              "--notice", "7200", "--balance", f"{pubs['op']}=100") == 0
    n1 = DeviceKey.generate()
    assert bc("m1", "register-node", "--node-id", "1", "--owner", "isp", "--pubkey",
              n1.public_hex, "--operator", pubs["op"]) == 0
    sla = tmp_path / "sla.toml"
    sla.write_text(SLA_TOML.format(tenant=pubs["tenant"]).replace("route = [1, 2]",
                                                                   "route = [1]\nprice = 70"))
    assert bc("m1", "register-sla", "--file", str(sla)) == 0
    capsys.readouterr()
    assert bc(None, "slas", "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["price"] == 70
    assert bc("op", "deposit", "--node-id", "1", "--amount", "500") == 1      # balance 100
    assert "more than the balance 100" in capsys.readouterr().err
    assert bc("stranger", "deposit", "--node-id", "1", "--amount", "5") == 1
    assert "not the node's operator" in capsys.readouterr().err
    assert bc("op", "deposit", "--node-id", "1", "--amount", "0") == 2
    capsys.readouterr()
    assert bc("op", "deposit", "--node-id", "1", "--amount", "40", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {
        "node_id": 1, "amount": 40, "withdrawal_due_ns": None, "withdrawal_lapses_ns": None,
        "debt": 0, "frozen_by": None}
    assert bc("op", "withdraw", "--node-id", "1") == 1                        # not asked
    assert "not due" in capsys.readouterr().err
    assert bc("op", "withdraw", "--node-id", "1", "--request", "--json") == 0
    w = json.loads(capsys.readouterr().out)
    assert w["withdrawal_due_ns"] is not None
    # the request lapses two proposal lifetimes after it is due (docs/ledger.md, findings C4)
    assert w["withdrawal_lapses_ns"] == w["withdrawal_due_ns"] + 2 * 3600 * 10**9
    assert bc("op", "withdraw", "--node-id", "1") == 1                        # the notice
    assert "not due" in capsys.readouterr().err
    # a decision: penalty 3 per faulty device, from node 1's deposit to the tenant
    with LocalLedger(str(tmp_path / "ledger.mdb")) as lg:
        did = lg.open_dispute(7, 0, 10, signer=DeviceKey.load(keys["tenant"]))
        lg.approve_decision(did, b"\x01" * 32, b"\x02" * 32, [1],
                            signer=DeviceKey.load(keys["m1"]))
    assert bc(None, "deposits", "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["amount"] == 37
    assert bc(None, "balances", "--json") == 0
    b = json.loads(capsys.readouterr().out)
    assert (b[pubs["op"]]["balance"], b[pubs["tenant"]]["balance"]) == (60, 3)
    assert bc(None, "debts", "--json") == 0 and json.loads(capsys.readouterr().out) == []
    assert bc(None, "deposits") == 0
    out = capsys.readouterr().out
    assert "node 1: deposit 37, debt 0, withdrawal due" in out
    assert f"(lapses {w['withdrawal_lapses_ns']})" in out


def test_tenant_opens_a_dispute(tmp_path, capsys):
    """``beatctl open-dispute``: the SLA's tenant opens a dispute on a window and sees it with
    ``disputes --tenant``; a stranger is refused (exit 1), a bad window is bad input (exit 2), a
    dispute on an SLA that does not exist is refused."""
    keys, pubs, bc = _beatctl_as(tmp_path, capsys, "m1", "tenant", "stranger")

    assert bc("m1", "create", "--member", pubs["m1"], "--threshold", "1") == 0
    n1 = DeviceKey.generate()
    assert bc("m1", "register-node", "--node-id", "1", "--owner", "isp", "--pubkey",
              n1.public_hex) == 0
    sla = tmp_path / "sla.toml"
    sla.write_text(SLA_TOML.format(tenant=pubs["tenant"]).replace("route = [1, 2]", "route = [1]"))
    assert bc("m1", "register-sla", "--file", str(sla)) == 0
    capsys.readouterr()
    assert bc("stranger", "open-dispute", "--sla", "7", "--from-ns", "10", "--to-ns", "20") == 1
    assert "tenant" in capsys.readouterr().err
    for bad in (["--from-ns", "20", "--to-ns", "10"], ["--from-ns", "10"],
                ["--last", "0"], ["--last", "5", "--to-ns", "10"], ["--from-ns", "-1", "--to-ns", "3"]):
        assert bc("tenant", "open-dispute", "--sla", "7", *bad) == 2, bad
        assert capsys.readouterr().err.startswith("beatctl: ")
    assert bc("tenant", "open-dispute", "--sla", "8", "--from-ns", "10", "--to-ns", "20") == 1
    capsys.readouterr()
    assert bc("tenant", "open-dispute", "--sla", "7", "--from-ns", "10", "--to-ns", "20",
              "--json") == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["dispute"], d["sla"], d["from_ns"], d["to_ns"], d["state"]) == (1, 7, 10, 20, "opened")
    before = time.time_ns()
    assert bc("tenant", "open-dispute", "--sla", "7", "--last", "60") == 0
    assert capsys.readouterr().out.startswith("dispute 2 opened on SLA 7: window [")
    assert bc("tenant", "disputes", "--tenant", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(x["dispute"], x["state"]) for x in rows] == [(1, "opened"), (2, "opened")]
    assert rows[1]["to_ns"] >= before and rows[1]["to_ns"] - rows[1]["from_ns"] == 60 * 10**9


def test_decide_approves_what_the_archived_evidence_gives(tmp_path_factory):
    """``beatctl decide DISPUTE --evidence DIR`` on the loopback domain's real interrogation
    archive: it re-judges the archive (as verify-decision), approves that content; with a committee
    of one (k = 1) the decision executes at once, and verify-decision then finds it identical. A
    dispute of another SLA than the archive's is bad input (exit 2); an approval by a key that is
    not a member is refused (exit 1)."""
    from loopback_domain import Domain
    d = Domain(tmp_path_factory.mktemp("domain"), [(1, 2), (2, 3), (1, 4), (4, 3)])
    lo, hi = d.send((1, 4, 3), 60, tag=2)
    d.start()
    try:
        ev = tmp_path_factory.mktemp("decide") / "evidence"
        code, out, err = d.interrogate(lo, hi, "--evidence", ev, "--no-record")
        assert code == 3, err
        with d.ledger() as led:
            did = led.open_dispute(1, lo, hi, signer=d.gov)
            assert led.get_dispute(did).state == "opened"
        code, out, err = d.beatctl("decide", did, "--evidence", ev, "--json")
        assert code == 0, err
        r = json.loads(out)
        assert (r["dispute"], r["faulty"], r["state"], r["approvals"], r["k"]) == (
            did, [1], "settled", 1, 1)
        code, out, err = d.beatctl("verify-decision", did, "--evidence", ev, key=False)
        assert code == 0, out + err
        stranger = tmp_path_factory.mktemp("k") / "stranger.key"
        DeviceKey.generate().save(str(stranger))
        from governance.cli import main as beatctl
        with d.ledger() as led:
            did2 = led.open_dispute(1, lo, hi, signer=d.gov)
        assert beatctl(["--ledger", f"local:{d.ledger_path}", "--key", str(stranger), "decide",
                        str(did2), "--evidence", str(ev)]) == 1
        code, out, err = d.beatctl("decide", 99, "--evidence", ev)
        assert code == 2 and "dispute 99: not on the ledger" in err
    finally:
        d.stop()
