"""The Interrogation Protocol's scenarios on the paper's testbed (root; they run in CI).

One lab (four routers in namespaces, real beatd daemons capturing with AF_PACKET, a local ledger,
the Interrogation service over mutual TLS on the management links), the tenant's known packets
h1 -> h2, and `beatctl interrogate` run as the governance in the management namespace. Each
scenario sends its own packets (its own payload tag, so its own packet digests) in its own window
and checks the verdict of every device: the one at fault is named, no honest device is accused.

Misbehaviour is real where the kernel can do it (a route change; `ip rule ... blackhole` dropping
every tenth packet by UDP source port: this kernel has no netem and no tc classifiers), or comes
from the test: r2's beatd runs with the test-only `--testing-allow-inject` (fabricated frames) and
the test rewrites a stored record in r2's LMDB store (tampering), or kills r3's beatd (missing).
"""
import json
import os
import signal
import struct
import time

import pytest

from conftest import REPO, require_root
from beat_lab.data import topology_path

PAPER = topology_path("paper")
PREFIX = f"beat-s{os.getpid() % 10000}-"
N = 200                                    # known packets per scenario
NONE = (1 << 64) - 1
ANCHOR_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    require_root()
    from beat_lab.lab import Lab

    lb = Lab(PAPER, prefix=PREFIX, state_root=str(tmp_path_factory.mktemp("scenarios")),
             # these scenarios judge the devices: a committee of one (k = 1) decides at once, as
             # the single governance key did (the committee's own rules: test_lab_committee.py)
             committee=(1, 1))
    lb.testing_inject = {"r2"}
    lb.up()
    yield lb
    lb.down()


def _send(lab, tag, sport=40000):
    from beat_lab import traffic

    topo = lab.topo
    packets = traffic.known_packets(topo.host_addr(topo.src), topo.host_addr(topo.dst), N,
                                    sport=sport, tag=tag)
    t0 = time.time_ns()
    sent = traffic.send_packets(lab.net, topo.src, packets)
    t1 = time.time_ns()
    assert sent == N
    return packets, t0, t1


def _anchored(lab, t1):
    """Every running router's records up to t1 anchored (Lab.wait_anchored: on the daemons'
    status, not a sleep)."""
    late = {r: why for r, why in lab.wait_anchored(t1, timeout=ANCHOR_TIMEOUT_S).items() if why}
    assert not late, f"not anchored within {ANCHOR_TIMEOUT_S} s: {late}"


def _judge(lab, t0, t1, tmp_path, name):
    _anchored(lab, t1)
    jpath, spath = str(tmp_path / f"{name}.json"), str(tmp_path / f"{name}.svg")
    p = lab.interrogate(t0, t1, jpath, spath)
    assert p.returncode in (0, 3, 4), f"beatctl interrogate: exit {p.returncode}\n{p.stderr}"
    with open(jpath) as f:
        report = json.load(f)
    return p, report, _devices(lab, report)


def _devices(lab, report):
    """{router name: its judgement in the report}."""
    ids = {r.node_id: r.name for r in lab.topo.routers}
    return {ids[d["node_id"]]: d for d in report["devices"]}


def _verdicts(lab, report):
    return {name: d["verdict"] for name, d in _devices(lab, report).items()}


FAULTS = {"TAMPERED", "FABRICATED", "MISSING", "DEVIATED", "DROPPED"}


def _check(lab, p, report, expected):
    """Every router's verdict, the exit code, and the decision on the ledger: the faulty devices
    of the route and the digest of this very evidence."""
    got = _verdicts(lab, report)
    assert got == expected, (got, p.stdout, p.stderr)
    assert p.returncode == (3 if FAULTS & set(expected.values()) else 0), p.stderr
    dec = report["decision"]
    assert dec["state"] == "decided"
    faulty = sorted(lab.topo.node(r).node_id for r, v in expected.items()
                    if v in FAULTS and r in lab.topo.agreed)
    assert sorted(dec["faulty"]) == faulty
    from ledger_client.local import LocalLedger
    with LocalLedger(lab.ledger_path, hash_name=None) as led:
        d = led.get_dispute(dec["dispute_id"])
    assert d.state == "decided" and d.evidence_digest.hex() == report["evidence_digest"]
    assert sorted(d.faulty) == faulty
    assert {x["owner"] for x in report["devices"]} == {f"operator-{r}" for r in expected}


ALL_CONSISTENT = {"r1": "CONSISTENT", "r2": "CONSISTENT", "r3": "CONSISTENT", "r4": "CONSISTENT"}


def _restore_route(lab):
    lab.net.route_via("r1", lab.topo.dst, "r2")


def test_1_honest_path_all_consistent(lab, tmp_path):
    _, t0, t1 = _send(lab, b"honest")
    p, report, _ = _judge(lab, t0, t1, tmp_path, "honest")
    _check(lab, p, report, ALL_CONSISTENT)
    assert report["packets"] == N
    paths = [(pth["nodes"], pth["packets"]) for pth in report["paths"]]
    assert paths and paths[0][1] == N
    svg = open(tmp_path / "honest.svg").read()
    assert svg.startswith("<svg") or svg.startswith("<?xml")


def test_2_deviation_via_r4(lab, tmp_path):
    lab.net.route_via("r1", lab.topo.dst, "r4")
    try:
        _, t0, t1 = _send(lab, b"deviate")
    finally:
        _restore_route(lab)
    p, report, _ = _judge(lab, t0, t1, tmp_path, "deviate")
    _check(lab, p, report, {"r1": "DEVIATED", "r2": "CONSISTENT", "r3": "CONSISTENT",
                            "r4": "CONSISTENT"})
    assert _devices(lab, report)["r1"]["counts"]["deviated"] == N


def _fabricated_pcap(lab, packets, tmp_path):
    """What r2 'claims': each packet received from r1 and sent to r3, 40 and 80 us after r1 saw
    it (r1's own record time, from r1's store)."""
    from beat_lab import traffic
    from capture_files import write_pcap

    pds = {traffic.expected_pd(pk): pk for pk in packets}
    times = {}
    for r in lab.dump("r1")["records"]:
        pd = bytes.fromhex(r["pd"])
        if pd in pds:
            times[pd] = min(times.get(pd, r["t_ns"]), r["t_ns"])
    assert len(times) == len(packets), "r1 did not record every packet"
    net = lab.net
    l12, l23 = lab.topo.link_between("r1", "r2"), lab.topo.link_between("r2", "r3")

    def mac(node, link):
        return bytes.fromhex(net.mac(node, link).replace(":", ""))

    recs = []
    for pd, pk in pds.items():
        t = times[pd]
        eth_in = mac("r2", l12) + mac("r1", l12) + b"\x08\x00" + pk
        eth_out = mac("r3", l23) + mac("r2", l23) + b"\x08\x00" + pk
        for dt, frame in ((40_000, eth_in), (80_000, eth_out)):
            ts = t + dt
            recs.append((ts // 10**9, (ts % 10**9) // 1000, frame, len(frame)))
    recs.sort(key=lambda r: (r[0], r[1]))
    return write_pcap(tmp_path / "fabricated.pcap", recs)


def test_3_replicated_proofs_r2_fabricated(lab, tmp_path):
    lab.net.route_via("r1", lab.topo.dst, "r4")
    try:
        packets, t0, t1 = _send(lab, b"replicate")
    finally:
        _restore_route(lab)
    _anchored(lab, t1)          # r1's records committed (and anchored)
    pcap = _fabricated_pcap(lab, packets, tmp_path)
    assert lab.inject("r2", str(pcap)) == 2 * N
    # the injected records carry the window's times but reach r2's store now: anchored up to now
    _anchored(lab, time.time_ns())
    p, report, _ = _judge(lab, t0, t1, tmp_path, "replicate")
    _check(lab, p, report, {"r1": "DEVIATED", "r2": "FABRICATED", "r3": "CONSISTENT",
                            "r4": "CONSISTENT"})
    r2 = _devices(lab, report)["r2"]
    assert r2["counts"]["fabricated_prev"] > 0 and r2["counts"]["fabricated_next"] > 0


def test_4_r2_drops_ten_percent(lab, tmp_path):
    # every tenth packet (by UDP source port: known packet i uses sport 41000 + i) is blackholed
    # by r2's routing; r2 still captures it arriving
    dropped = [41000 + i for i in range(0, N, 10)]
    ns = lab.net.ns("r2")
    for k, port in enumerate(dropped):
        lab.net.run("r2", ["ip", "rule", "add", "pref", str(100 + k), "ipproto", "udp", "sport",
                           str(port), "blackhole"])
    try:
        _, t0, t1 = _send(lab, b"drop", sport=41000)
    finally:
        for k in range(len(dropped)):
            lab.net.run("r2", ["ip", "rule", "del", "pref", str(100 + k)], check=False)
    assert ns
    p, report, _ = _judge(lab, t0, t1, tmp_path, "drop")
    _check(lab, p, report, dict(ALL_CONSISTENT, r2="DROPPED"))
    assert _devices(lab, report)["r2"]["counts"]["dropped"] == len(dropped)
    hops = {(h["prev_id"], h["next_id"]): h for h in report["hops"]}
    assert hops[(2, 3)]["received"] == N - len(dropped)


def _tamper(lab, t0, t1, also_S=False):
    """Rewrite one stored record of the window in r2's store: next_id -> 4 (r4)."""
    import lmdb

    path = os.path.join(lab.router_dir("r2"), "store")
    env = lmdb.open(path, max_dbs=16, subdir=True, lock=True, map_size=1 << 30)
    try:
        proofs = env.open_db(b"proofs")
        commitments = env.open_db(b"commitments")
        with env.begin(write=True) as txn:
            for key, val in txn.cursor(db=proofs):
                val = bytearray(val)
                count = struct.unpack_from(">Q", val, 0)[0]
                for i in range(count):
                    off = 40 + 48 * i
                    t, prev, nxt = struct.unpack_from(">QQQ", val, off)
                    if t0 <= t <= t1 and prev == 1 and nxt == 3:
                        struct.pack_into(">Q", val, off + 16, 4)
                        if also_S:
                            import fastpath
                            S = fastpath.segment_value("sha3-256", 2, struct.unpack(">Q", key)[0],
                                                       bytes(val[40:40 + 48 * count]))
                            val[8:40] = S
                            c = bytearray(txn.get(key, db=commitments))
                            c[0:32] = S
                            txn.put(key, bytes(c), db=commitments)
                        txn.put(key, bytes(val), db=proofs)
                        return int.from_bytes(key, "big")
    finally:
        env.close()
    raise AssertionError("no record of the window found in r2's proof ring")


@pytest.mark.parametrize("also_S", [False, True], ids=["record", "record-and-S"])
def test_5_rewritten_records_tampered(lab, tmp_path, also_S):
    _, t0, t1 = _send(lab, b"tamper-S" if also_S else b"tamper")
    _anchored(lab, t1)                  # anchored first, rewritten after
    _tamper(lab, t0, t1, also_S)
    p, report, _ = _judge(lab, t0, t1, tmp_path, "tamper")
    _check(lab, p, report, dict(ALL_CONSISTENT, r2="TAMPERED"))


def test_wait_anchored_names_the_router_that_is_behind(lab):
    """Lab.wait_anchored waits on each router's own status: a daemon that cannot answer (r2
    stopped) is named with the reason once the timeout passes while the others are anchored;
    after SIGCONT it catches up."""
    from beat_lab.lab import _pid_alive

    _anchored(lab, time.time_ns())      # r2 idle (nothing to anchor) when it is stopped
    pid = lab._read_state()["daemons"]["r2"]
    os.kill(pid, signal.SIGSTOP)
    try:
        _, t0, t1 = _send(lab, b"behind")               # the kernel forwards; r2's ring waits
        others = [r.name for r in lab.topo.routers if r.name != "r2"]
        got = lab.wait_anchored(t1, timeout=ANCHOR_TIMEOUT_S, routers=others)
        assert got == {r: None for r in others}, got
        got = lab.wait_anchored(t1, timeout=3.0)
        assert _pid_alive(pid)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert set(got) == {r.name for r in lab.topo.routers}
    assert got["r2"] and got["r2"].startswith("status: "), got
    assert {r: why for r, why in got.items() if r != "r2" and why} == {}
    _anchored(lab, t1)


def test_6_silent_router_unreachable_not_judged(lab, tmp_path):
    """r3's daemon killed: the governance retries it, then reports it UNREACHABLE (not judged:
    silence accuses nobody, and nobody is accused by it) and decides nothing (exit 4): the
    dispute stays open to be interrogated again."""
    from beat_lab.lab import _pid_alive

    _, t0, t1 = _send(lab, b"silent")
    _anchored(lab, t1)                  # r3 recorded and anchored its part, then goes silent
    pid = lab._read_state()["daemons"]["r3"]
    os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 10
    while _pid_alive(pid) and time.monotonic() < end:
        time.sleep(0.05)
    assert not _pid_alive(pid)
    try:
        p, report, _ = _judge(lab, t0, t1, tmp_path, "silent")
        assert p.returncode == 4, p.stderr
        assert _verdicts(lab, report) == dict(ALL_CONSISTENT, r3="UNREACHABLE")
        assert "decision" not in report
        r3 = _devices(lab, report)["r3"]
        assert not r3["answered"] and r3["error"] and r3["status"] == "unreachable"
        assert report["interrogation"]["3"]["attempts"] >= 2
        assert "unreachable after the retries: nothing decided" in p.stderr
    finally:
        lab.start_daemon("r3")
        lab.wait_capturing("r3")
