"""``beat-lab gns3 project``: the plan of the paper's testbed, the portable project loaded by GNS3's
own topology loader, and a real GNS3 server (3.x, on 127.0.0.1) that the project is created on
through its REST API (``--server``) or imported into.

The server has no Docker engine here (test_gns3_support.py: a stand-in answers the engine's
image and container-create calls). So the nodes exist, with their properties, ports and links,
but none can start: the test asks the server to start one and checks that it refuses.
"""
import ipaddress
import json
import os
import uuid
import zipfile

import pytest

from beat_lab import gns3
from test_gns3_support import REPO, gns3_server, in_gns3, require_gns3_venv
from beat_lab.data import topology_path

PAPER = topology_path("paper")


@pytest.fixture(scope="module")
def plan():
    return gns3.plan()


def _env(spec):
    """``a=b,c=d`` -> [(a, b), (c, d)]."""
    return [tuple(x.split("=", 1)) for x in spec.split(",") if x]


# ------------------------------------------------------------------------------ the plan

def test_plan_of_the_paper(plan):
    names = [n.name for n in plan.nodes]
    assert names == ["h1", "h2", "r1", "r2", "r3", "r4", gns3.GOVERNANCE_NAME]
    assert {n.name: n.adapters for n in plan.nodes} == {
        "h1": 1, "h2": 1, "r1": 4, "r2": 3, "r3": 4, "r4": 3, "gov": 4}
    assert {n.name: n.image for n in plan.nodes if n.kind != "governance"} == {
        n: gns3.ROUTER_IMAGE for n in ("h1", "h2", "r1", "r2", "r3", "r4")}
    assert plan.node("gov").image == gns3.GOVERNANCE_IMAGE
    assert len(plan.links) == 6 + 4                 # the topology's links, one management each
    # every adapter is used exactly once
    used = [(l.a, l.a_adapter) for l in plan.links] + [(l.b, l.b_adapter) for l in plan.links]
    assert len(used) == len(set(used))
    for n in plan.nodes:
        assert sorted(a for node, a in used if node == n.name) == list(range(n.adapters))
    # positions: distinct; the agreed path on one row, left to right
    pos = {n.name: (n.x, n.y) for n in plan.nodes}
    assert len(set(pos.values())) == len(pos)
    row = ["h1", "r1", "r2", "r3", "h2"]
    assert [pos[n][1] for n in row] == [pos["r1"][1]] * 5
    assert [pos[n][0] for n in row] == sorted(pos[n][0] for n in row)
    assert pos["r4"][1] > pos["r1"][1] > pos["gov"][1]


def test_plan_links_adapters_macs_and_neighbours_agree(plan):
    """What each router's environment says about its interfaces and neighbours is what the
    links and GNS3's MAC scheme (base MAC + adapter number) make of them."""
    def mac_of(node, adapter):
        base = int(plan.node(node).mac_base.replace(":", ""), 16)
        return ":".join(f"{b:02x}" for b in (base + adapter).to_bytes(6, "big"))

    for link in plan.links:
        if link.kind != "lab":
            continue
        for me, ma, peer, pa in ((link.a, link.a_adapter, link.b, link.b_adapter),
                                 (link.b, link.b_adapter, link.a, link.a_adapter)):
            env = plan.node(me).env
            ifaces = dict(_env(env["BEAT_IFACES"]))
            addr, _, mac = ifaces[f"eth{ma}"].partition("@")
            assert mac == mac_of(me, ma)
            peer_addr = dict(_env(plan.node(peer).env["BEAT_IFACES"]))[f"eth{pa}"].split("@")[0]
            assert ipaddress.IPv4Interface(addr).network == \
                ipaddress.IPv4Interface(peer_addr).network
            if env["BEAT_ROLE"] == "router" and plan.node(peer).kind == "router":
                nid = plan.node(peer).env["BEAT_NODE_ID"]
                neigh = dict(_env(env["BEAT_NEIGHBOURS"]))
                # the neighbour's MAC @ IP % this router's own interface on that link: its MAC
                # names it there only
                assert neigh[nid] == (f"{mac_of(peer, pa)}@{ipaddress.IPv4Interface(peer_addr).ip}"
                                      f"%eth{ma}")
    # management: router's last adapter <-> governance adapter i, same /24
    gov = dict(_env(plan.node("gov").env["BEAT_MGMT_IFACES"]))
    for link in plan.links:
        if link.kind == "mgmt":
            r = plan.node(link.a)
            ifname, spec = r.env["BEAT_MGMT"].split("=")
            assert ifname == f"eth{link.a_adapter}" == f"eth{r.adapters - 1}"
            raddr = ipaddress.IPv4Interface(spec.split("@")[0])
            gaddr = ipaddress.IPv4Interface(gov[f"eth{link.b_adapter}"].split("@")[0])
            assert raddr.network == gaddr.network
            assert r.env["BEAT_INTERROGATION_LISTEN"] == f"{raddr.ip}:9478"
            assert f"10.199.0.1/32={gaddr.ip}" in r.env["BEAT_ROUTES"]


def test_plan_routes_follow_the_agreed_path(plan):
    """r1 sends h2's traffic to r2 (the agreed path), r4 (the detour) to r3."""
    routes = {n.name: dict(_env(n.env["BEAT_ROUTES"])) for n in plan.nodes if n.kind == "router"}
    assert routes["r1"]["10.77.4.0/24"] == "10.77.2.2"       # r2's side of r1-r2
    assert routes["r2"]["10.77.4.0/24"] == "10.77.3.2"       # r3
    assert routes["r4"]["10.77.4.0/24"] == "10.77.6.2"       # r3's side of r4-r3
    assert dict(_env(plan.node("h1").env["BEAT_ROUTES"])) == {"default": "10.77.1.2"}


def test_plan_keys_and_contract(plan):
    """The accounts and the contract address are computed without web3: check them with it."""
    from eth_account import Account
    from eth_utils import keccak, to_checksum_address
    import rlp

    gov = plan.node("gov").env
    gov_addr = Account.from_key(gov["BEAT_GOV_ETH_KEY"]).address
    want = keccak(rlp.encode([bytes.fromhex(gov_addr[2:]), 0]))[12:]
    assert to_checksum_address(plan.contract) == to_checksum_address(want)
    assert gov["BEAT_CONTRACT"] == plan.contract
    nodes = {x.split(",")[0]: x.split(",") for x in gov["BEAT_NODES"].split()}
    for r in ("r1", "r2", "r3", "r4"):
        env = plan.node(r).env
        assert env["BEAT_LEDGER"] == f"ethereum:http://10.199.0.1:8545#{plan.contract}"
        assert Account.from_key(env["BEAT_ETH_KEY"]).address.lower() == nodes[r][4]
        assert nodes[r][1] == env["BEAT_NODE_ID"]
    assert gns3.create_address("0x" + "00" * 20, 1) != gns3.create_address("0x" + "00" * 20, 0)


def test_plan_rejects_a_bad_topology(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(open(PAPER).read().replace('b = "r2"', 'b = "r9"', 1))
    with pytest.raises(gns3.GNS3Error, match=r'links\[1\]\.b: "r9" is not a host or router'):
        gns3.plan(str(bad))


# ------------------------------------------------------------------------------ files

def _args(**kw):
    ns = {"gns3_command": "project", "topology": None, "name": None, "out": None,
          "server": None, "user": "admin", "password": "admin"}
    ns.update(kw)
    import argparse
    return argparse.Namespace(**ns)


def test_cli_writes_a_portable_project_and_a_directory(tmp_path, capsys):
    out = str(tmp_path / "paper.gns3project")
    assert gns3.main(_args(out=out)) == 0
    assert capsys.readouterr().out.strip() == out
    with zipfile.ZipFile(out) as z:
        assert z.namelist() == ["project.gns3"]
        doc = json.loads(z.read("project.gns3"))
    assert doc["revision"] == gns3.GNS3_REVISION and doc["name"] == "paper"
    d = str(tmp_path / "dir")
    assert gns3.main(_args(out=d, name="paper-b")) == 0
    assert os.path.isfile(os.path.join(d, "paper-b.gns3"))
    assert gns3.main(_args(out=str(tmp_path / "x.gns3"))) == 2
    assert "give a directory" in capsys.readouterr().err
    assert gns3.main(_args(out=d, server="http://127.0.0.1:1")) == 2


LOADER = r"""
import json, sys
from gns3server.controller.topology import load_topology
topo = load_topology(sys.argv[1])      # the server's loader: converts old files, validates
print(json.dumps(topo))
"""


def test_the_project_loads_with_the_servers_own_loader(tmp_path, plan):
    require_gns3_venv()
    out = gns3.write_project(plan, str(tmp_path / "p.gns3project"))
    with zipfile.ZipFile(out) as z:
        z.extractall(tmp_path / "x")
    path = str(tmp_path / "x" / "project.gns3")
    before = open(path).read()
    topo = in_gns3(LOADER, path)
    assert open(path).read() == before            # current revision: nothing converted
    assert not [f for f in os.listdir(tmp_path / "x") if ".backup" in f]
    assert [n["name"] for n in topo["topology"]["nodes"]] == [n.name for n in plan.nodes]
    assert len(topo["topology"]["links"]) == len(plan.links)
    # and the node properties are what the server's docker node model accepts
    got = in_gns3(r"""
import json, sys
from gns3server.schemas.compute.docker_nodes import DockerCreate
topo = json.load(open(sys.argv[1]))
for n in topo["topology"]["nodes"]:
    DockerCreate.model_validate(dict(n["properties"], name=n["name"], node_id=n["node_id"]))
print(json.dumps(len(topo["topology"]["nodes"])))
""", path)
    assert got == len(plan.nodes)
    # a broken file is refused by the same loader (the check is real)
    doc = json.loads(before)
    doc["topology"]["links"][0]["nodes"][0]["adapter_number"] = "first"
    bad = tmp_path / "bad.gns3"
    bad.write_text(json.dumps(doc))
    import subprocess
    from test_gns3_support import GNS3_PY
    p = subprocess.run([GNS3_PY, "-c", LOADER, str(bad)], capture_output=True, text=True)
    assert p.returncode != 0 and "Invalid data in topology file" in p.stderr


# ------------------------------------------------------------------------------ a real server

def _check_project(client, srv, pid, plan_, templates=None):
    """Every node and link of the plan on the server, with its properties."""
    nodes = {n["name"]: n for n in client.request("GET", f"/v3/projects/{pid}/nodes")}
    assert sorted(nodes) == sorted(n.name for n in plan_.nodes)
    for want in plan_.nodes:
        got = nodes[want.name]
        assert got["node_type"] == "docker"
        p = got["properties"]
        assert p["image"] == want.image
        assert p["adapters"] == want.adapters
        assert p["mac_address"] == want.mac_base
        assert p["environment"] == want.environment
        assert (got["x"], got["y"]) == (want.x, want.y)
        assert got["status"] == "stopped"
        assert got["console_type"] == "telnet"
        assert got["aux_type"] == ("none" if want.kind == "host" else "telnet")
        assert [port["name"] for port in got["ports"]] == [f"eth{i}"
                                                            for i in range(want.adapters)]
        # GNS3 gives adapter a the base MAC + a: what the environment of the node says
        macs = {port["name"]: port["mac_address"] for port in got["ports"]}
        for spec in want.env.get("BEAT_IFACES", "").split(",") + \
                [want.env.get("BEAT_MGMT", "")]:
            if spec:
                name, rest = spec.split("=")
                assert macs[name] == rest.split("@")[1], (want.name, name)
        if templates:
            kind = "router" if want.image == gns3.ROUTER_IMAGE else "governance"
            assert got["template_id"] == templates[kind]
    by_id = {n["node_id"]: n["name"] for n in nodes.values()}
    links = client.request("GET", f"/v3/projects/{pid}/links")
    got_links = sorted(tuple(sorted((by_id[e["node_id"]], e["adapter_number"], e["port_number"])
                                    for e in l["nodes"])) for l in links)
    want_links = sorted(tuple(sorted([(l.a, l.a_adapter, 0), (l.b, l.b_adapter, 0)]))
                        for l in plan_.links)
    assert got_links == want_links
    assert all(l["link_type"] == "ethernet" for l in links)
    return nodes


def test_create_on_a_real_server(tmp_path, plan):
    with gns3_server(tmp_path) as srv:
        assert srv.version.startswith("3.")
        client = gns3.GNS3Client(srv.url, "admin", srv.password)
        proj = gns3.create_on_server(plan, client)
        templates = {t["name"]: t["template_id"] for t in client.request("GET", "/v3/templates")}
        tids = {"router": templates[gns3.ROUTER_TEMPLATE],
                "governance": templates[gns3.GOVERNANCE_TEMPLATE]}
        nodes = _check_project(client, srv, proj["project_id"], plan, tids)
        # what GNS3 asked the Docker engine for each node: the environment and the image's
        # volumes mounted from the project (the stores survive a restart of the node)
        creates = [r for r in srv.docker_requests()
                   if r["method"] == "POST" and "/containers/create" in r["path"]]
        last = {}
        for r in creates:
            last[r["body"]["Hostname"]] = r["body"]
        assert set(last) >= {n.name for n in plan.nodes}
        r1 = last["r1"]
        assert "BEAT_NODE_ID=1" in r1["Env"]
        assert f"BEAT_LEDGER=ethereum:http://10.199.0.1:8545#{plan.contract}" in r1["Env"]
        assert "GNS3_MAX_ETHERNET=eth3" in r1["Env"]
        targets = {m["Target"] for m in r1["HostConfig"]["Mounts"]}
        assert "/gns3volumes/var/lib/beatd" in targets
        assert r1["Entrypoint"][-1] == "/opt/beat/gns3/router/entrypoint.py"
        assert "/gns3volumes/var/lib/beat" in {m["Target"] for m in
                                               last["gov"]["HostConfig"]["Mounts"]}
        # nodes cannot start here: no Docker engine (the server says why)
        with pytest.raises(gns3.GNS3Error) as exc:
            client.request("POST", f"/v3/projects/{proj['project_id']}/nodes/"
                                   f"{nodes['r1']['node_id']}/start", {})
        assert "busybox" in str(exc.value) or "Docker" in str(exc.value)
        # a second run with the same name is refused, naming it
        with pytest.raises(gns3.GNS3Error, match="already has a project named 'paper'"):
            gns3.create_on_server(plan, client)


def test_cli_server_and_import_of_the_portable_project(tmp_path, capsys):
    with gns3_server(tmp_path / "srv") as srv:
        # beat-lab gns3 project --server URL (the command line, its own plan)
        rc = gns3.main(_args(server=srv.url, password=srv.password, name="paper-cli"))
        out = capsys.readouterr()
        assert rc == 0, out.err
        pid = out.out.strip()
        client = gns3.GNS3Client(srv.url, "admin", srv.password)
        names = {n["name"] for n in client.request("GET", f"/v3/projects/{pid}/nodes")}
        assert names == {"h1", "h2", "r1", "r2", "r3", "r4", "gov"}
        assert len(client.request("GET", f"/v3/projects/{pid}/links")) == 10
        # a wrong password: exit 1, one line naming the server's refusal
        assert gns3.main(_args(server=srv.url, password="wrong", name="x")) == 1
        assert "HTTP 401" in capsys.readouterr().err
        # the portable project, imported by the server's own import (load_topology inside)
        plan_ = gns3.plan(name="paper-import")
        zpath = gns3.write_project(plan_, str(tmp_path / "paper-import.gns3project"))
        new_id = str(uuid.uuid4())
        import urllib.request
        with open(zpath, "rb") as f:
            req = urllib.request.Request(f"{srv.url}/v3/projects/{new_id}/import",
                                         data=f.read(), method="POST",
                                         headers={"Authorization": f"Bearer {client.token}"})
        with urllib.request.urlopen(req, timeout=60) as r:
            imported = json.loads(r.read())
        assert imported["name"] == "paper-import"
        client.request("POST", f"/v3/projects/{new_id}/open", {})
        _check_project(client, srv, new_id, plan_)
