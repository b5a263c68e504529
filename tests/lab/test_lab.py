"""The namespace lab (beat_lab/): topology validation, the network, and beatd on every router.

The network tests need root (namespaces); the daemon tests also need `beatd run`: when it is missing
they FAIL and say so (they never skip silently). Each test run uses its own namespace prefix
(``beat-t<pid>-``) and state directory, and every lab is taken down in a finaliser.
"""
import copy
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib

import pytest

from conftest import REPO, require_root

from beat_lab import topology as topo_mod
from beat_lab.topology import TopologyError
from beat_lab.data import topology_path

PAPER = topology_path("paper")
PREFIX = f"beat-t{os.getpid()}-"
NONE = (1 << 64) - 1


def _paper_raw():
    with open(PAPER, "rb") as f:
        return tomllib.load(f)


# ---------------------------------------------------------------------- topology (no root needed)

def test_paper_topology():
    t = topo_mod.load(PAPER)
    assert [r.name for r in t.routers] == ["r1", "r2", "r3", "r4"]
    assert t.router_ids() == {"r1": 1, "r2": 2, "r3": 3, "r4": 4}
    assert (t.src, t.dst, t.agreed, t.detour) == ("h1", "h2", ("r1", "r2", "r3"),
                                                  ("r1", "r4", "r3"))
    # addresses stay in 10/8
    for l in t.links:
        assert l.network.subnet_of(__import__("ipaddress").ip_network("10.0.0.0/8"))


def _mut(fn):
    raw = copy.deepcopy(_paper_raw())
    fn(raw)
    return raw


BAD = [
    (lambda r: r["routers"][1].__setitem__("node_id", 1), "routers[1].node_id"),
    (lambda r: r["routers"][0].__setitem__("node_id", 0), "routers[0].node_id"),
    (lambda r: r["routers"][0].__setitem__("node_id", "one"), "routers[0].node_id"),
    (lambda r: r["routers"][2].__setitem__("name", "R3!"), "routers[2].name"),
    (lambda r: r["routers"][2].__setitem__("name", "r1"), "routers[2].name"),
    (lambda r: r["routers"][0].pop("node_id"), "routers[0].node_id: missing"),
    (lambda r: r["routers"][0].__setitem__("colour", "red"), "routers[0].colour: unknown key"),
    (lambda r: r["links"][1].__setitem__("b", "r9"), "links[1].b"),
    (lambda r: r["links"][1].__setitem__("b", "r1"), "links[1].b"),
    (lambda r: r["links"].append({"a": "r2", "b": "r1"}), "links[6].b"),
    (lambda r: r["links"].append({"a": "h1", "b": "h2"}), "links[6].b"),
    (lambda r: r["links"].append({"a": "h1", "b": "r2"}), "hosts"),
    (lambda r: r["path"].__setitem__("agreed", ["r1", "r3"]), "path.agreed[0]"),
    (lambda r: r["path"].__setitem__("agreed", ["r1", "r9"]), "path.agreed[1]"),
    (lambda r: r["path"].__setitem__("src", "r1"), "path.src"),
    (lambda r: r["path"].__setitem__("dst", "h1"), "path.dst"),
    (lambda r: r["path"].__setitem__("detour", ["r1", "r2", "r3"]), "path.detour[1]"),
    (lambda r: r["path"].__setitem__("detour", ["r4", "r3", "r2"]), "path.detour"),
    (lambda r: r["path"].pop("agreed"), "path.agreed: missing"),
    (lambda r: r.pop("path"), "path: missing"),
    (lambda r: r["lab"].__setitem__("subnet", "192.168.0.0/16"), "lab.subnet"),
    (lambda r: r["lab"].__setitem__("subnet", "nope"), "lab.subnet"),
    (lambda r: r["routers"].extend({"name": f"x{i}", "node_id": 100 + i} for i in range(7)),
     "routers: 11 given, at most 10"),
    (lambda r: r.__setitem__("extra", 1), "extra: unknown key"),
    (lambda r: r["routers"][1].__setitem__("owner", ""), 'routers[1].owner: ""'),
    (lambda r: r["routers"][1].__setitem__("owner", 7), "routers[1].owner: 7"),
    (lambda r: r["routers"][2].__setitem__("owner", " isp"), 'routers[2].owner: " isp"'),
    (lambda r: r["routers"][2].__setitem__("owner", "isp\n"), "routers[2].owner"),
    (lambda r: r["routers"][3].__setitem__("owner", "x" * 65), "routers[3].owner"),
]


@pytest.mark.parametrize("mutate,key", BAD, ids=[k for _, k in BAD])
def test_topology_errors_name_the_key(mutate, key):
    with pytest.raises(TopologyError) as ei:
        topo_mod.from_dict(_mut(mutate))
    assert key in str(ei.value)


def test_owners_default_one_per_router_or_from_the_file():
    t = topo_mod.load(PAPER)
    assert t.owners() == {"r1": "operator-r1", "r2": "operator-r2", "r3": "operator-r3",
                          "r4": "operator-r4"}
    assert all(h.owner == "" for h in t.hosts)
    raw = _paper_raw()
    raw["routers"][0]["owner"] = "isp-a"
    raw["routers"][2]["owner"] = "isp-a"                      # r1 and r3: one owner
    raw["routers"][3]["owner"] = "ISP B (north)"
    t = topo_mod.from_dict(raw)
    assert t.owners() == {"r1": "isp-a", "r2": "operator-r2", "r3": "isp-a",
                          "r4": "ISP B (north)"}


def test_router_links_are_the_topology_without_its_hosts():
    t = topo_mod.load(PAPER)
    assert [(l.a, l.b) for l in t.router_links()] == [("r1", "r2"), ("r2", "r3"), ("r1", "r4"),
                                                       ("r4", "r3")]
    assert t.router_link_ids() == [(1, 2), (1, 4), (2, 3), (3, 4)]
    line = topo_mod.load(topology_path("line4"))
    assert line.router_link_ids() == [(1, 2), (2, 3), (3, 4)]


def test_lab_registers_owners_and_links(tmp_path):
    """The lab's ledger and governance configuration (no namespaces needed): every router with
    its owner, every router-router link on the ledger and in governance.toml's [[links]]."""
    from beat_lab.lab import Lab
    from ledger_client.local import LocalLedger

    raw = _paper_raw()
    raw["routers"][0]["owner"] = "isp-a"
    raw["routers"][2]["owner"] = "isp-a"
    topo = tmp_path / "owned.toml"
    topo.write_text(_toml(raw))
    lab = Lab(str(topo), prefix=f"beat-o{os.getpid()}-", state_root=str(tmp_path / "state"))
    lab.setup_ledger()
    lab.setup_pki()
    with LocalLedger(lab.ledger_path) as led:
        assert {n.node_id: n.owner for n in led.nodes()} == {
            1: "isp-a", 2: "operator-r2", 3: "isp-a", 4: "operator-r4"}
        assert led.links() == [(1, 2), (1, 4), (2, 3), (3, 4)]
        assert led.neighbours(3) == [2, 4]
        assert led.verify_chain() == []
    with open(lab.governance_config_path, "rb") as f:
        cfg = tomllib.load(f)
    assert [(x["a"], x["b"]) for x in cfg["links"]] == [(1, 2), (1, 4), (2, 3), (3, 4)]
    assert all(set(x) == {"a", "b"} for x in cfg["links"])
    assert [e["node_id"] for e in cfg["endpoints"]] == [1, 2, 3, 4]


def _toml(raw):
    """A topology dict as TOML (strings, integers, lists of strings, tables, arrays of tables)."""
    import json

    def val(v):
        return json.dumps(v)
    out = []
    for key, v in raw.items():
        if isinstance(v, dict):
            out += [f"[{key}]"] + [f"{k} = {val(x)}" for k, x in v.items()] + [""]
    for key, v in raw.items():
        if isinstance(v, list):
            for t in v:
                out += [f"[[{key}]]"] + [f"{k} = {val(x)}" for k, x in t.items()] + [""]
    return "\n".join(out)


def test_topology_file_errors(tmp_path):
    with pytest.raises(TopologyError, match="cannot read"):
        topo_mod.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[routers]\n")
    with pytest.raises(TopologyError, match="not valid TOML"):
        topo_mod.load(bad)


# ---------------------------------------------------------------------- helpers (root)

def _namespaces():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _procs_mentioning(text):
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        pids.append(int(d))
            except OSError:
                pass
    return pids


@pytest.fixture
def lab(tmp_path):
    require_root()
    from beat_lab.lab import Lab

    lb = Lab(PAPER, prefix=PREFIX, state_root=str(tmp_path / "state"))
    yield lb
    lb.down()


def _require_daemon(lab):
    ok, why = lab.daemon_available()
    assert ok, f"`beatd run` is not available, so the lab cannot run its daemons: {why}"


def _delta(before, after):
    return {i: {k: after[i][k] - before[i][k] for k in ("rx", "tx")} for i in after}


def _stats(lab):
    from beat_lab.netns import link_stats

    return {n: link_stats(lab.net, n) for n in lab.topo.nodes}


def _arrived(lab, before, want, node="h2", ifname="to-r3", timeout=10.0):
    """Every node's link counters once ``node`` received ``want`` packets on ``ifname`` since
    ``before`` (the packets crossed every hop), or after ``timeout`` (the assertions then say
    what is missing)."""
    end = time.monotonic() + timeout
    while True:
        now = _stats(lab)
        if _delta(before[node], now[node])[ifname]["rx"] >= want or time.monotonic() > end:
            time.sleep(0.05)        # anything else in flight (nothing should be) shows too
            return _stats(lab)
        time.sleep(0.02)


# ---------------------------------------------------------------------- network only (root)

def test_up_down_network_leaves_nothing(lab):
    lab.up(daemons=False)
    ours = [ns for ns in _namespaces() if ns.startswith(PREFIX)]
    # the nodes' namespaces and the management namespace (the governance's seat)
    assert sorted(ours) == sorted(lab.net.namespaces() + [lab.net.ledger_ns])
    lab.down()
    assert not [ns for ns in _namespaces() if ns.startswith(PREFIX)]
    assert not os.path.exists(lab.state_dir)
    assert not _procs_mentioning(lab.state_dir)


def test_up_clears_a_crashed_run(lab):
    from beat_lab.lab import Lab

    lab.up(daemons=False)
    # a second Lab (as after a crash of the first process) finds and replaces it
    again = Lab(PAPER, prefix=PREFIX, state_root=os.path.dirname(lab.state_dir))
    again.up(daemons=False)
    assert sorted(ns for ns in _namespaces() if ns.startswith(PREFIX)) == \
        sorted(lab.net.namespaces() + [lab.net.ledger_ns])
    again.down()


def test_forwarding_agreed_path_then_detour(lab):
    from beat_lab import traffic

    lab.up(daemons=False)
    t, net = lab.topo, lab.net
    pk = traffic.known_packets(t.host_addr("h1"), t.host_addr("h2"), 25)
    s0 = _stats(lab)
    assert traffic.send_packets(net, "h1", pk) == 25
    s1 = _arrived(lab, s0, 25)
    d = {n: _delta(s0[n], s1[n]) for n in s1}
    assert d["r1"]["to-h1"]["rx"] == 25 and d["r1"]["to-r2"]["tx"] == 25
    assert d["r2"]["to-r1"]["rx"] == 25 and d["r2"]["to-r3"]["tx"] == 25
    assert d["r3"]["to-r2"]["rx"] == 25 and d["r3"]["to-h2"]["tx"] == 25
    assert d["h2"]["to-r3"]["rx"] == 25
    assert d["r4"]["to-r1"]["rx"] == 0 and d["r1"]["to-r4"]["tx"] == 0
    # nothing flows back (no ICMP from the hosts, no ARP: permanent neighbours, no IPv6)
    assert all(v["tx"] == 0 for v in d["h2"].values())
    assert d["r3"]["to-r2"]["tx"] == 0

    net.route_via("r1", "h2", "r4")
    assert net.route_get("r1", t.host_addr("h2")) == "to-r4"
    assert traffic.send_packets(net, "h1", pk) == 25
    s2 = _arrived(lab, s1, 25)
    d = {n: _delta(s1[n], s2[n]) for n in s2}
    assert d["r1"]["to-r4"]["tx"] == 25 and d["r1"]["to-r2"]["tx"] == 0
    assert d["r4"]["to-r1"]["rx"] == 25 and d["r4"]["to-r3"]["tx"] == 25
    assert d["r3"]["to-r4"]["rx"] == 25 and d["r3"]["to-h2"]["tx"] == 25
    assert d["r2"]["to-r1"]["rx"] == 0


def test_load_generator_1000_flows(lab):
    from beat_lab import traffic

    lab.up(daemons=False)
    s0 = _stats(lab)
    res = traffic.send_load(lab.net, "h1", "h2", flows=1000, count=10000, seconds=10)
    assert res["sent"] == 10000 and res["flows"] == 1000
    d = _delta(s0["h2"], _arrived(lab, s0, 10000)["h2"])
    assert d["to-r3"]["rx"] == 10000


def test_bounded_load_stops_by_time(lab):
    from beat_lab import traffic

    lab.up(daemons=False)
    t0 = time.monotonic()
    res = traffic.send_load(lab.net, "h1", "h2", flows=10, count=10 ** 9, seconds=1.0,
                            rate=2000)
    assert time.monotonic() - t0 < 10
    assert 0 < res["sent"] < 10 ** 9


# ---------------------------------------------------------------------- with beatd (root)

def test_up_down_with_daemons_leaves_nothing(lab):
    _require_daemon(lab)
    lab.up()
    pids = _procs_mentioning(lab.state_dir)
    assert len(pids) >= len(lab.topo.routers)
    lab.down()
    time.sleep(0.2)
    assert not [ns for ns in _namespaces() if ns.startswith(PREFIX)]
    assert not _procs_mentioning(lab.state_dir), "beatd processes left behind"
    assert not os.path.exists(lab.state_dir)


def _records_by_router(lab):
    return {r.name: lab.dump(r.name)["records"] for r in lab.topo.routers}


def test_known_packets_recorded_on_every_router(lab):
    from beat_lab import traffic

    _require_daemon(lab)
    lab.up()
    t = lab.topo
    n = 30
    pk = traffic.known_packets(t.host_addr("h1"), t.host_addr("h2"), n)
    s0 = _stats(lab)
    assert traffic.send_packets(lab.net, "h1", pk, gap_s=0.002) == n
    _arrived(lab, s0, n)        # through every router (beatd reads what its rings hold at stop)
    stopped = lab.stop_daemons()
    assert all(v == 0 for v in stopped.values()), f"daemons did not exit cleanly: {stopped}"
    dumps = {r.name: lab.dump(r.name) for r in lab.topo.routers}
    recs = {r: d["records"] for r, d in dumps.items()}
    counters = {r: lab.stored_counters(d) for r, d in dumps.items()}
    want = {"r1": (0, 2), "r2": (1, 3), "r3": (2, 0)}
    pds = [traffic.expected_pd(p).hex() for p in pk]
    for r, (prev, nxt) in want.items():
        by_pd = {}
        for x in recs[r]:
            by_pd.setdefault(x["pd"], []).append(x)
        for i, pd in enumerate(pds):
            got = by_pd.get(pd, [])
            assert [(x["prev_id"], x["next_id"]) for x in got] == [(prev, nxt)], \
                f"{r}: known packet {i} recorded as {[(x['prev_id'], x['next_id']) for x in got]}" \
                f", want one record ({prev}, {nxt}) (NONE = {NONE}: a half without its join)"
        # counters: the pair counts of the records equal the packets sent (nothing else flowed)
        assert lab.pair_counts(recs[r]) == {(prev, nxt): n}, f"{r}: {lab.pair_counts(recs[r])}"
        assert counters[r] == {(prev, nxt): n}, f"{r}: stored counters {counters[r]}"
    assert recs["r4"] == []
    for pd in pds:
        ts = [next(x["t_ns"] for x in recs[r] if x["pd"] == pd) for r in ("r1", "r2", "r3")]
        assert ts[0] < ts[1] < ts[2], f"t_ns not increasing along the path for {pd}: {ts}"


def test_route_moved_to_detour_shows_in_records(lab):
    from beat_lab import traffic

    _require_daemon(lab)
    lab.up()
    t = lab.topo
    n = 20
    a = traffic.known_packets(t.host_addr("h1"), t.host_addr("h2"), n, sport=40000, tag=b"A")
    b = traffic.known_packets(t.host_addr("h1"), t.host_addr("h2"), n, sport=50000, tag=b"B")
    s0 = _stats(lab)
    assert traffic.send_packets(lab.net, "h1", a, gap_s=0.002) == n
    s1 = _arrived(lab, s0, n)   # all of A delivered before the route moves
    lab.net.route_via("r1", "h2", "r4")
    t_move = time.time_ns()
    assert traffic.send_packets(lab.net, "h1", b, gap_s=0.002) == n
    _arrived(lab, s1, n)
    lab.stop_daemons()
    recs = _records_by_router(lab)
    pa = {traffic.expected_pd(p).hex() for p in a}
    pb = {traffic.expected_pd(p).hex() for p in b}

    def pairs(r, pds):
        return lab.pair_counts([x for x in recs[r] if x["pd"] in pds])

    assert pairs("r1", pa) == {(0, 2): n} and pairs("r1", pb) == {(0, 4): n}
    assert pairs("r2", pa) == {(1, 3): n} and pairs("r2", pb) == {}
    assert pairs("r4", pa) == {} and pairs("r4", pb) == {(1, 3): n}
    assert pairs("r3", pa) == {(2, 0): n} and pairs("r3", pb) == {(4, 0): n}
    # from the moment of the move: r4 gains records, r2 has none
    assert all(x["t_ns"] >= t_move for x in recs["r4"])
    assert not [x for x in recs["r2"] if x["t_ns"] >= t_move]


def test_beat_lab_cli_demo(tmp_path):
    """`beat-lab demo --down` end to end through the beat-lab command line."""
    require_root()
    state = str(tmp_path / "state")
    prefix = f"beat-c{os.getpid()}-"
    p = subprocess.run([sys.executable, "-m", "beat_lab", "--prefix", prefix, "--state-dir",
                        state, "demo", "--known", "5", "--load", "2000", "--down"],
                       capture_output=True, text=True, cwd=REPO, timeout=180)
    try:
        assert p.returncode == 0, p.stderr
        assert "r4 (node 4)" in p.stdout
        # it ends with the dispute: r1's detour named, nobody else, the decision on the ledger
        assert ("verdict: r1 DEVIATED, r2 CONSISTENT, r3 CONSISTENT, r4 CONSISTENT "
                "(beatctl exit 3)") in p.stdout, p.stdout
        assert "dispute 1 decided: faulty [1]" in p.stdout
        assert "waiting until every router's records" in p.stdout and "not anchored" not in p.stdout
        kept = re.search(r"picture (\S+dispute\.svg)", p.stdout).group(1)
        assert os.path.exists(kept)          # kept after --down
        shutil.rmtree(os.path.dirname(kept))
    finally:
        subprocess.run([sys.executable, "-m", "beat_lab", "--prefix", prefix,
                        "--state-dir", state, "down"], capture_output=True, cwd=REPO, timeout=60)
    assert not [ns for ns in _namespaces() if ns.startswith(prefix)]


def test_daemons_restarted_side_by_side_keep_the_state_file_whole(tmp_path):
    """Threads that start and stop daemons at once (the attack scenarios restart two liars side by
    side) each change the lab's state file: no change is lost and none fails on another's
    temporary file (it did: FileNotFoundError in one of them, CI run of issue 12)."""
    import threading

    from beat_lab.lab import Lab

    lab = Lab(prefix="beat-race-", state_root=str(tmp_path))
    errors = []

    def churn(router):
        try:
            for i in range(200):
                lab._set_pid(router, 1000 + i)
        except Exception as exc:  # noqa: BLE001 (collected, asserted below)
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(f"r{k}",)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert lab._read_state()["daemons"] == {f"r{k}": 1199 for k in range(8)}
