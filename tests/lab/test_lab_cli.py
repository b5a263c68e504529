"""``beat-lab``, the testbed's command line (beat_lab/cli.py): its actions, ``dump NODE`` in a
human table and with ``--json``, the offline demo, the bundled topologies found as package data,
and ``beatd lab|gns3|certs`` pointing at it (the router daemon holds no testbed)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, require_root
from beat_lab import cli
from beat_lab.data import DataError, bundled_topologies, data_path, topology_path
from fastpath import NONE

PREFIX = f"beat-l{os.getpid() % 10000}-"


def _run(*argv, timeout=120):
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


@pytest.mark.parametrize("argv, instead", [
    (["lab", "up"], "beat-lab up|demo|dump NODE|down"),
    (["lab", "dump", "r1", "--json"], "beat-lab up|demo|dump NODE|down"),
    (["gns3", "project", "--out", "x.gns3project"], "beat-lab gns3 project|appliances"),
    (["certs", "ca", "--out", "ca"], "beat-lab certs ca|device|governance"),
])
def test_beatd_points_at_beat_lab(argv, instead):
    p = _run("-m", "beatd", *argv)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith(f"beatd: {argv[0]}: the testbed is not part of the router daemon")
    assert instead in p.stderr
    assert "beat-lab" in _run("-m", "beatd", "--help").stdout


def test_the_router_daemon_holds_no_testbed():
    import beatd
    import beatd.certs

    pkg = os.path.dirname(beatd.__file__)
    for gone in ("lab/__init__.py", "lab/lab.py", "gns3.py", "demo.py"):
        assert not os.path.exists(os.path.join(pkg, gone)), gone
    # the device half of the certificates stays: roles; making them is the lab CA's
    assert hasattr(beatd.certs, "peer_role") and not hasattr(beatd.certs, "make_ca")


def test_dump_takes_json_and_defaults_to_a_table():
    args = cli.parser().parse_args(["dump", "r2", "--json"])
    assert (args.lab_command, args.node, args.json) == ("dump", "r2", True)
    args = cli.parser().parse_args(["--prefix", "x-", "dump", "r2"])
    assert (args.node, args.json, args.prefix) == ("r2", False, "x-")


def test_format_dump():
    dumped = {"records": [{"t_ns": 5, "prev_id": 1, "next_id": 3, "pd": "ab" * 8,
                           "ft": "cd" * 8, "fp": "ef" * 32},
                          {"t_ns": 9, "prev_id": 1, "next_id": NONE, "pd": "12" * 8,
                           "ft": "cd" * 8, "fp": "34" * 32}],
              "other": [{"summary": {"store": "/s/r2/store", "records": 2,
                                     "counters": [{"prev_id": 1, "next_id": 3, "packets": 1,
                                                   "bytes": 60},
                                                  {"prev_id": 1, "next_id": NONE,
                                                   "packets": 1, "bytes": 70}]}}]}
    lines = cli.format_dump("r2", 2, dumped).splitlines()
    assert lines[0] == "# r2 (node 2): t_ns prev_id -> next_id pd ft fp"
    assert lines[1].split() == ["5", "1", "->", "3", "ab" * 8, "cd" * 8, "ef" * 32]
    assert lines[2].split()[:4] == ["9", "1", "->", "NONE"]
    assert lines[3].startswith("# counters of r2")
    assert lines[4].split() == ["#", "1", "->", "3", "1", "60"]
    assert lines[5].split() == ["#", "1", "->", "NONE", "1", "70"]
    assert lines[-1] == "# 2 records in /s/r2/store (r2, node 2)"


def test_lab_actions_need_root_the_others_do_not(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for action in (["up"], ["down"], ["dump", "r1", "--json"], ["demo"]):
        assert cli.main(action) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"beat-lab: {action[0]}: needs root (network namespaces)"), err
    assert "beat-lab demo --offline" in err
    assert cli.main(["certs", "ca", "--out", str(tmp_path / "ca")]) == 0
    assert cli.main(["gns3", "appliances", "--out", str(tmp_path / "appl")]) == 0


def test_offline_demo():
    """`make demo` without root: the bundled capture of router r2, found as package data."""
    p = _run("-m", "beat_lab", "demo", "--offline")
    assert p.returncode == 0, p.stderr
    assert "== router r2 (node 2)" in p.stdout
    assert f"{data_path('capture', 'r2.pcap')}: pcap, 440 frames" in p.stdout
    assert "== store check: consistent" in p.stdout


def test_bundled_topologies_are_package_data(tmp_path):
    import beat_lab

    pkg = os.path.dirname(beat_lab.__file__)
    assert bundled_topologies() == ["line4", "paper"]
    assert topology_path() == os.path.join(pkg, "topologies", "paper.toml")
    assert topology_path("line4") == topology_path("line4.toml") == \
        os.path.join(pkg, "topologies", "line4.toml")
    # a file given is a file, even when it shadows a bundled name
    (tmp_path / "paper").write_text("x")
    os.chdir(tmp_path)
    assert topology_path("paper") == str(tmp_path / "paper")
    assert topology_path("nope.toml") == str(tmp_path / "nope.toml")
    with pytest.raises(DataError, match=r"beat_lab/topologies/nope\.toml: missing"):
        data_path("topologies", "nope.toml")


def test_scapy_missing_names_the_extra(monkeypatch, capsys, tmp_path):
    from beat_lab import traffic

    monkeypatch.setitem(sys.modules, "scapy.layers.inet", None)
    with pytest.raises(ImportError, match=r"pip install 'beat\[lab\]'"):
        traffic.known_packets("10.0.0.1", "10.0.0.2", 1)
    # the lab demo says so before it builds anything
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert cli.main(["--prefix", PREFIX, "--state-dir", str(tmp_path), "demo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("beat-lab: demo: the lab's exact packets are built with scapy") and \
        err.rstrip().endswith("pip install 'beat[lab]'"), err
    assert os.listdir(tmp_path) == []


def test_dump_through_the_command_line(tmp_path):
    """`beat-lab dump NODE --json`: beatd dump's JSON lines (records, then the summary);
    `beat-lab dump NODE`: the same records as a table; an unknown router: exit 2, named."""
    require_root()
    from beat_lab import traffic
    from beat_lab.lab import Lab
    from test_lab import _arrived, _stats

    state = str(tmp_path / "state")
    lab = Lab(None, prefix=PREFIX, state_root=state, ledger="none")
    try:
        ok, why = lab.daemon_available()
        assert ok, f"`beatd run` is not available: {why}"
        lab.up()
        t, n = lab.topo, 12
        pk = traffic.known_packets(t.host_addr("h1"), t.host_addr("h2"), n)
        s0 = _stats(lab)
        assert traffic.send_packets(lab.net, "h1", pk, gap_s=0.002) == n
        _arrived(lab, s0, n)
        assert all(v == 0 for v in lab.stop_daemons().values())
        base = ["-m", "beat_lab", "--prefix", PREFIX, "--state-dir", state, "dump"]
        pj = _run(*base, "r2", "--json")
        assert pj.returncode == 0, pj.stderr
        rows = [json.loads(l) for l in pj.stdout.splitlines()]
        records, summary = rows[:-1], rows[-1]["summary"]
        pds = {traffic.expected_pd(p).hex() for p in pk}
        assert {r["pd"] for r in records} == pds
        assert all((r["prev_id"], r["next_id"]) == (1, 3) for r in records)
        assert summary["records"] == n and summary["node_id"] == 2
        ph = _run(*base, "r2")
        assert ph.returncode == 0, ph.stderr
        lines = ph.stdout.splitlines()
        table = [l for l in lines if not l.startswith("#")]
        assert [l.split()[4] for l in table] == [r["pd"] for r in records]
        assert lines[-1] == f"# {n} records in {summary['store']} (r2, node 2)"
        assert any(l.split() == ["#", "1", "->", "3", str(n), str(summary["counters"][0]["bytes"])]
                   for l in lines)
        bad = _run(*base, "h1", "--json")
        assert bad.returncode == 2
        assert bad.stderr.strip() == \
            "beat-lab: dump: 'h1' is not a router of paper (r1, r2, r3, r4)"
    finally:
        lab.down()
