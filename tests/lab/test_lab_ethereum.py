"""The paper lab on an ``ethereum`` ledger (root): ``beat-lab up --ledger ethereum`` starts a
proof-of-authority network of EthereumJS client nodes (beat_lab.chain, ledger_client.poa_network):
one per router in its namespace on its management address (its operator's node), one per
committee member in the lab's ledger namespace; the governance's node (member 1's) seals, the
others follow. It deploys the contract from the governance's node, registers every router (its
own owner; its account funded at genesis) and every router-router link, and runs every beatd
with ``[ledger] backend = "ethereum"`` pointing to its own router's node, anchors counted 2 blocks
deep. Known packets h1 -> h2 (the demo: the agreed path, then the detour); the daemons stopped
(SIGTERM: the last batch submitted): every router has anchors on the chain, listed by ``beatctl
--ledger ethereum:URL#CONTRACT anchors --json`` (run inside the ledger namespace), every node
holds the same chain, and no tenant packet crossed a management link (the ledger namespace's
kernel counters: only TCP arrived there). The demo's dispute is decided on the chain by the
committee (r1 DEVIATED), member 2 through its own node. ``beat-lab down`` stops the nodes and
removes everything."""
import io
import json
import os
import subprocess
import sys
import time

from conftest import REPO, require_root
from test_lab_committee import committee_dispute_with_a_dissenting_member
from beat_lab.data import topology_path

PAPER = topology_path("paper")
PREFIX = f"beat-e{os.getpid()}-"


def _lab_cli(state, *args, timeout=420):
    return subprocess.run([sys.executable, "-m", "beat_lab", "--topology", PAPER, "--prefix",
                           PREFIX, "--state-dir", str(state), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=timeout)


def _namespaces():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_lab_up_ethereum_anchors_every_router(tmp_path):
    require_root()
    from beat_lab.lab import Lab, _pid_alive
    from beat_lab.netns import MGMT_IF, management_stats
    from ledger_client.ethereum import Account

    state = tmp_path / "state"
    lab = Lab(PAPER, prefix=PREFIX, state_root=str(state), ledger="ethereum")
    try:
        p = _lab_cli(state, "up", "--ledger", "ethereum")
        assert p.returncode == 0, p.stdout + p.stderr
        spec = lab.ledger_spec
        assert spec.startswith(f"ethereum:http://{lab.net.ledger_address()}:") and lab.contract
        assert spec in p.stdout
        st = lab._read_state()
        chain_pids = st["ethereum"]["pids"]
        names = {f"member{i}" for i in (1, 2, 3)} | {r.name for r in lab.topo.routers}
        assert set(chain_pids) == names and all(_pid_alive(p) for p in chain_pids.values())
        assert lab.net.ledger_ns in st["namespaces"] and lab.net.ledger_ns in _namespaces()
        # one chain: every node (each in its namespace) holds the same block 2 below its head
        from beat_lab.chain import one_chain
        same, heads = one_chain(lab, depth=2)
        assert same and min(h[0] for h in heads.values()) > 2, heads

        mgmt_net = lab.net.management_subnet()
        mgmt = {name: str(raddr) for name, _l, _la, raddr, _n in lab.net.management_links()}
        for r in lab.topo.routers:
            text = open(lab.config_path(r.name)).read()
            assert '[ledger]\nbackend = "ethereum"' in text
            # its own (its operator's) node, on its management address, anchors 2 blocks deep
            assert f'url = "http://{mgmt[r.name]}:8545"' in text and "confirmations = 2" in text
            # its node listens (JSON-RPC and peers) on the management address only
            listening = subprocess.run(["ip", "netns", "exec", lab.net.ns(r.name), "ss", "-Hltn"],
                                       capture_output=True, text=True).stdout.split()
            assert f"{mgmt[r.name]}:8545" in listening and f"{mgmt[r.name]}:30303" in listening
            assert not [x for x in listening if x.endswith((":8545", ":30303"))
                        and not x.startswith(mgmt[r.name])], listening
            assert f'contract = "{lab.contract}"' in text and lab.device_eth_path(r.name) in text
            assert os.stat(lab.device_eth_path(r.name)).st_mode & 0o077 == 0
            s = lab.status(r.name)
            assert s["anchor"]["backend"] == "ethereum" and s["anchor"]["last_error"] is None
            # the tenant's destination is routed over the lab links, never over mgmt
            assert lab.net.route_get(r.name, lab.topo.host_addr(lab.topo.dst)) != MGMT_IF
            assert lab.net.route_get(r.name, lab.net.ledger_address()) == MGMT_IF
        for l in lab.topo.links:
            assert not l.network.overlaps(mgmt_net)

        # the committee: three members (their accounts), k = 2; nothing left open by up
        p = subprocess.run(lab.beatctl_argv("committee", "--json"), capture_output=True,
                           text=True, cwd=REPO, env=lab._env(), timeout=60)
        assert p.returncode == 0, p.stderr
        c = json.loads(p.stdout)
        assert c["k"] == 2 and [m["account"].lower() for m in c["members"]] == [
            Account.from_file(lab.parties.member(i, True)).address.lower() for i in (1, 2, 3)]
        # every router registered with its Ed25519 key, its account and its operator's
        p = subprocess.run(lab.beatctl_argv("nodes", "--json"), capture_output=True, text=True,
                           cwd=REPO, env=lab._env(), timeout=60)
        assert p.returncode == 0, p.stderr
        nodes = {n["node_id"]: n for n in json.loads(p.stdout)}
        assert set(nodes) == {r.node_id for r in lab.topo.routers}
        for r in lab.topo.routers:
            acct = Account.from_file(lab.device_eth_path(r.name))
            assert nodes[r.node_id]["account"] == acct.address_bytes.hex()
            assert nodes[r.node_id]["owner"] == f"operator-{r.name}"
        # each router's operator (its own account), who locked the lab's deposit for it
        view = lab.ledger_view()
        for r in lab.topo.routers:
            assert view["operators"][str(r.node_id)] == Account.from_file(
                lab.operator_key_path(r.name)).address.lower()
            assert view["deposits"][str(r.node_id)]["amount"] == lab.money.deposit
        # every router-router link of the topology, on the chain
        p = subprocess.run(lab.beatctl_argv("links", "--json"), capture_output=True, text=True,
                           cwd=REPO, env=lab._env(), timeout=60)
        assert p.returncode == 0, p.stderr
        assert [(x["a"], x["b"]) for x in json.loads(p.stdout)] == lab.topo.router_link_ids()

        # the committee's dispute with a dissenting member (member 3), decided at k = 2 and the
        # penalty moved, on this chain: test_lab_committee.py's scenario, run on this lab (one
        # `up` for both tests)
        committee_dispute_with_a_dissenting_member(lab, tmp_path)

        before = management_stats(lab.net)
        # the demo's traffic: known packets (and load) on the agreed path, then on the detour
        # (so that r4 records too); then SIGTERM to every daemon (the last batch submitted)
        out = io.StringIO()
        report = lab.demo(known=10, flows=20, load_packets=500, rate=5000.0, out=out)
        assert set(report["stopped"].values()) <= {0, "exited"}, report["stopped"]
        for name in lab.topo.agreed:
            assert report["routers"][name]["known_agreed"] == 10, out.getvalue()
        for name in lab.topo.detour:
            assert report["routers"][name]["known_detour"] == 10, out.getvalue()
        assert f"ledger {spec}:" in out.getvalue()
        sent = 20 + report["load"]["sent"]
        # the demo ends with the dispute, decided on the chain (the state read back from it)
        d = report["dispute"]
        assert d["not_anchored"] == {}, out.getvalue()
        assert d["verdicts"] == {"r1": "DEVIATED", "r2": "CONSISTENT", "r3": "CONSISTENT",
                                 "r4": "CONSISTENT"}, out.getvalue()
        # member 2 judged through its own node (ledger namespace, port 8546)
        assert f"ethereum:{lab.member_chain_url(2)}#" in " ".join(
            lab.beatctl_argv("pending", key=lab.member_key_path(2)))
        assert lab.member_chain_url(2).endswith(":8546")
        # ... by the committee (member 1 interrogated, member 2 re-judged the archive): decided
        # and settled at k = 2; the penalty (wei) went from r1's deposit to the tenant's account
        assert d["decision"]["state"] == "settled" and d["decision"]["faulty"] == [1]
        assert d["decision"]["penalty"] == lab.money.penalty > 0
        assert [v["dissent"] for v in d["votes"]] == [False, False]
        b, a = d["before"], d["after"]
        assert a["deposits"]["1"]["amount"] == b["deposits"]["1"]["amount"] - lab.money.penalty
        assert a["balances"]["tenant"] == b["balances"]["tenant"] + lab.money.penalty
        assert a["contract_balance"] == b["contract_balance"] - lab.money.penalty
        assert a["pending"] == [] and "open proposals (beatctl pending): none" in out.getvalue()

        # every router's anchors on the chain, listed by beatctl (in the ledger namespace)
        p = subprocess.run(lab.beatctl_argv("anchors", "--json"), capture_output=True, text=True,
                           cwd=REPO, env=lab._env(), timeout=60)
        assert p.returncode == 0, p.stderr
        listed = [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
        by_node = {}
        for x in listed:
            by_node.setdefault(x["node_id"], []).append(x)
            assert x["ref"].startswith("0x") and "@" in x["ref"]
        for r in lab.topo.routers:
            got = sorted(by_node.get(r.node_id, []), key=lambda x: x["batch_seq"])
            assert got, f"{r.name}: no anchors on the chain\n{open(lab.log_path(r.name)).read()}"
            assert [x["batch_seq"] for x in got] == list(range(len(got)))
            log = open(lab.log_path(r.name)).read()
            assert "anchors at stop" in log and "PermissionDenied" not in log, log
        on_path = sum(x["tree_size"] for r in lab.topo.agreed for x in
                      by_node[lab.topo.node(r).node_id])
        assert on_path >= len(lab.topo.agreed)
        assert {r: len(v) for r, v in lab.anchors().items()} == {
            r.name: len(by_node[r.node_id]) for r in lab.topo.routers}
        assert {r: v["anchors"] for r, v in report["anchors"].items()} == {
            r.name: len(by_node[r.node_id]) for r in lab.topo.routers}

        # the tenant traffic stayed off the management links: every packet that reached the
        # ledger namespace was the routers' JSON-RPC (TCP to the node); nothing UDP (the known
        # packets and the load are UDP), nothing for another address, nothing forwarded
        after = management_stats(lab.net)
        snmp0, snmp1 = before["snmp"], after["snmp"]
        for r in lab.topo.routers:
            assert after[r.name]["rx"] > 0, f"{r.name}: no ledger traffic on its management link"
        for key in ("InDatagrams", "NoPorts", "InErrors"):
            assert snmp1["Udp"][key] == 0, (key, snmp1["Udp"])
        for key in ("InAddrErrors", "ForwDatagrams", "InUnknownProtos", "InDiscards"):
            assert snmp1["Ip"][key] == 0, (key, snmp1["Ip"])
        assert snmp1["Icmp"]["InMsgs"] == 0, snmp1["Icmp"]
        mgmt_rx = sum(after[r.name]["rx"] - before[r.name]["rx"] for r in lab.topo.routers)
        tcp_in = snmp1["Tcp"]["InSegs"] - snmp0["Tcp"]["InSegs"]
        assert mgmt_rx <= tcp_in, (mgmt_rx, tcp_in)   # (lo carries the rest of InSegs)
        # (the routers' nodes exchange blocks with the members' every second over these links:
        # their volume is the ledger's, no longer below the tenant's `sent`; the zero UDP, ICMP
        # and forwarding counters above are what shows no tenant packet came this way)
        assert sent > 0

        p = _lab_cli(state, "down")
        assert p.returncode == 0, p.stderr
        deadline = time.monotonic() + 10
        while any(_pid_alive(p) for p in chain_pids.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [n for n, p in chain_pids.items() if _pid_alive(p)], \
            "ledger nodes still run after down"
        assert not (set(st["namespaces"]) & _namespaces())
        assert not state.joinpath(PREFIX.rstrip("-")).exists()
    finally:
        lab.down()
