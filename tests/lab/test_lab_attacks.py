"""Issue 12's attacks with real daemons on the paper's testbed (root; they run in CI).

The lab of tests/lab/test_lab_scenarios.py (r1 - r2 - r3 agreed, r4 the detour r1 - r4 - r3; every
router its own owner; f = 1 unless said), whose routers lie the way a dishonest operator would:
in the records they keep and anchor (the test-only `beatd run --testing-lie SPEC`,
beatd/testing_lies.py: the records rewritten before they are committed, the segment commitment S
recomputed over the lie; counters and receipts honest), or by flooding an honest router. Each
scenario checks every device's verdict, the exit code of `beatctl interrogate` and the decision on
the ledger: the liar named where docs/threat-model.md says so, no honest device ever. The same
attacks at the engine level are in tests/governance/test_judgement_attacks.py.

Each scenario restores what it changed (the route, the daemons' switches, r2's ring) and checks
that the lie really was told (the daemon's status counts the records it rewrote or withheld).
"""
import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO, require_root
from test_lab_scenarios import (ALL_CONSISTENT, FAULTS, N, _anchored, _check, _devices, _judge,
                                _restore_route, _send, _verdicts)
from beat_lab.data import topology_path

PAPER = topology_path("paper")
PREFIX = f"beat-a{os.getpid() % 10000}-"
SMALL_RING = "128KiB"              # r2's ring in the flood scenario: ~2,700 records
FLOOD_BURST = 6000                 # junk packets per burst through r2
FLOOD_BURSTS_MAX = 10
REFLECTION_STREAMS = 24            # held open against r2 with r1's device certificate ...
WATCH_STREAMS = 24                 # ... and Health.Watch streams
# beatctl interrogate's defaults: --max-hop-delay-ms 1000, --skew-ms 50; and a margin
RECEIPT_EPOCH_NS = 1_000_000_000   # the lab's governance.receipt_epoch_ms (beatd's default)
RESTART_CLEAR_NS = 1_000_000_000 + 50_000_000 + 100_000_000
HARDENED = os.path.exists(os.path.join(REPO, "beatd", "rpc_guard.py"))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    require_root()
    from beat_lab.lab import Lab

    lb = Lab(PAPER, prefix=PREFIX, state_root=str(tmp_path_factory.mktemp("attacks")),
             # these scenarios judge the devices: a committee of one (k = 1) decides at once, as
             # the single governance key did (the committee's own rules: test_lab_committee.py)
             committee=(1, 1))
    lb.up()
    yield lb
    lb.down()


def _tenant_ft(lab):
    from governance.verdicts import flow_tag

    sla = lab.sla()
    return flow_tag(lab._hash(), sla.src, sla.dst)


def _restart(lab, routers):
    """Restart these routers' daemons side by side (each with its current switches)."""
    errors = {}

    def one(r):
        try:
            lab.restart_daemon(r)
        except Exception as exc:  # noqa: BLE001 (raised below, named)
            errors[r] = exc

    threads = [threading.Thread(target=one, args=(r,)) for r in routers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"restarting {sorted(errors)}: {errors}"


def _testing(lab, router):
    return lab.status(router, timeout=5.0).get("testing")


def _past_restart_gaps(lab, routers):
    """A restarted daemon declares a capture gap "capture stopped" up to its start, and a device
    may have missed a packet within one hop delay (plus skew) of its gaps: wait until the last gap
    of each of ``routers`` is further behind than that, so that the scenario's window is judged on
    what the devices say they saw, not excused by the restart."""
    for r in routers:
        last = (lab.status(r, timeout=5.0).get("capture_gaps") or {}).get("last") or {}
        ahead = (last.get("to_ns", 0) + RESTART_CLEAR_NS - time.time_ns()) / 1e9
        if ahead > 0:
            time.sleep(ahead)


@contextlib.contextmanager
def _lying(lab, lies):
    """``lies`` = {router: [SPEC, ...]}: those daemons restarted with --testing-lie SPEC ...;
    afterwards restarted honest again (also when the scenario fails). Yields a function giving
    {router: its testing status now} (the records it rewrote and withheld)."""
    lab.testing_lies = {r: list(s) for r, s in lies.items()}
    try:
        _restart(lab, sorted(lies))
        for r, specs in lies.items():
            got = _testing(lab, r)
            assert got and got["lies"] == list(specs), f"{r}: runs with {got}, not {specs}"
        _past_restart_gaps(lab, sorted(lies))
        yield lambda: {r: _testing(lab, r) for r in lies}
    finally:
        lab.testing_lies = {}
        _restart(lab, sorted(lies))
    for r in lies:
        assert _testing(lab, r) is None, f"{r} still runs with a testing switch"


@contextlib.contextmanager
def _route_via(lab, router, via):
    lab.net.route_via(router, lab.topo.dst, via)
    try:
        yield
    finally:
        _restore_route(lab)


def _send_in_one_epoch(lab, tag):
    """The known packets sent inside one receipt epoch, and that whole epoch as the window:
    (packets, t0, t1). Receipts count a whole epoch, so only a window that holds whole epochs
    lets the governance compare them with the records (governance/verdicts.py)."""
    now = time.time_ns()
    t0 = (now // RECEIPT_EPOCH_NS + 1) * RECEIPT_EPOCH_NS
    time.sleep((t0 - now) / 1e9 + 0.005)
    packets, s0, s1 = _send(lab, tag)
    t1 = t0 + RECEIPT_EPOCH_NS - 1
    assert t0 <= s0 and s1 <= t1, f"sending took from {s0} to {s1}: not inside [{t0}, {t1}]"
    time.sleep(max(0.0, (t1 - time.time_ns()) / 1e9) + 0.005)
    return packets, t0, t1


def _applies(lab, report, router):
    return _devices(lab, report)[router]["applies"]


# -- a. the figure-5 reroute, the route device lying about its next hop ---------------------------

def test_a_reroute_lying_about_the_next_hop_is_fabricated(lab, tmp_path):
    """r1 sends the flow to r4 and records next_id 2 (r2) for it, anchored. r4 (honest) recorded
    it from r1: only r1 lying explains both: FABRICATED, with DEVIATED among its applies."""
    with _lying(lab, {"r1": ["next=4:2"]}) as told:
        with _route_via(lab, "r1", "r4"):
            _, t0, t1 = _send(lab, b"a-lie-next")
        p, report, _ = _judge(lab, t0, t1, tmp_path, "a")
        assert told()["r1"]["records_rewritten"] >= N, told()
    _check(lab, p, report, dict(ALL_CONSISTENT, r1="FABRICATED"))
    assert _applies(lab, report, "r1") == ["FABRICATED", "DEVIATED"]
    r1 = _devices(lab, report)["r1"]
    assert r1["basis"] == "every explanation with at most 1 lying owner(s)", r1
    assert r1["counts"]["tampered"] == 0        # the lie matches its anchors: its content betrays it


# -- b. the same, the route device withholding the flow's records ----------------------------------

def test_b_reroute_withheld_caught_by_its_own_receipts(lab, tmp_path):
    """r1 sends the flow via r4 and writes none of its records. r4's word against r1's silence
    alone would be "r1; or r4"; but r1 is the edge, and its own anchored ingress receipts count
    the packets its answer lacks: MISSING on its own evidence, and then only r1 lying explains r4's
    records: DEVIATED applies too. The window is one whole receipt epoch (receipts count whole
    epochs)."""
    ft = _tenant_ft(lab)
    with _lying(lab, {"r1": [f"withhold={ft.hex()}"]}) as told:
        with _route_via(lab, "r1", "r4"):
            _, t0, t1 = _send_in_one_epoch(lab, b"b-withhold")
        p, report, _ = _judge(lab, t0, t1, tmp_path, "b")
        assert told()["r1"]["records_withheld"] >= N, told()
    _check(lab, p, report, dict(ALL_CONSISTENT, r1="MISSING"))
    assert _applies(lab, report, "r1") == ["MISSING", "DEVIATED"]
    r1 = _devices(lab, report)["r1"]
    assert r1["basis"] == "own evidence" and "receipts count" in r1["reasons"][0], r1
    assert r1["counts"]["received"] == 0 and r1["counts"]["receipts_over_records"] >= N, r1


# -- c. self-reference: a framing attempt ----------------------------------------------------------

def test_c_self_reference_convicts_the_framer(lab, tmp_path):
    """r2 forwards the flow to r3 honestly but writes next_id = 2 (itself) in every record: a
    record no truthful device writes. It convicts r2 and accuses nobody (r3's "from r2" is not
    made a lie by it)."""
    with _lying(lab, {"r2": ["self"]}) as told:
        _, t0, t1 = _send(lab, b"c-self")
        p, report, _ = _judge(lab, t0, t1, tmp_path, "c")
        assert told()["r2"]["records_rewritten"] >= N, told()
    _check(lab, p, report, dict(ALL_CONSISTENT, r2="FABRICATED"))
    r2 = _devices(lab, report)["r2"]
    assert r2["basis"] == "own evidence" and r2["counts"]["impossible_records"] >= N, r2
    # its own records also show the flow leaving it for another next hop than r3 (itself)
    assert _applies(lab, report, "r2") == ["FABRICATED", "DEVIATED"], r2


# -- d. the sandwich by two colluders --------------------------------------------------------------

def _check_nobody_named(lab, p, report):
    """No device at fault: exit 0, a decision with no faulty device on the ledger."""
    got = _verdicts(lab, report)
    assert not FAULTS & set(got.values()), (got, p.stdout, p.stderr)
    assert p.returncode == 0, (p.returncode, p.stderr)
    assert report["faulty"] == [] and report["decision"]["state"] == "decided"
    assert report["decision"]["faulty"] == []
    from ledger_client.local import LocalLedger
    with LocalLedger(lab.ledger_path, hash_name=None) as led:
        d = led.get_dispute(report["decision"]["dispute_id"])
    assert d.state == "decided" and list(d.faulty) == []
    assert d.evidence_digest.hex() == report["evidence_digest"]
    return got


def test_d_sandwich_by_two_owners_frames_nobody(lab, tmp_path):
    """r1 and r3 (two owners) send the flow around r2, via r4 (honest), and both claim it went
    through r2: r1 next_id 4 -> 2, r3 prev_id 4 -> 2. With f = 1 no explanation exists: nobody is
    named, the report says at least 2 owners must be lying (beatctl exits 0: no device at fault,
    the decision records none). With f = 2 the evidence is explained ("r1 and r3; or r2 and r4"),
    and nobody is named either. r2 and r4 are never named."""
    with _lying(lab, {"r1": ["next=4:2"], "r3": ["prev=4:2"]}) as told:
        with _route_via(lab, "r1", "r4"):
            _, t0, t1 = _send(lab, b"d-sandwich")
        p1, rep1, _ = _judge(lab, t0, t1, tmp_path, "d-f1")
        _anchored(lab, t1)
        jpath = str(tmp_path / "d-f2.json")
        p2 = lab.interrogate(t0, t1, jpath, f=2)
        assert p2.returncode in (0, 3), p2.stderr
        with open(jpath) as fh:
            rep2 = json.load(fh)
        said = told()
        assert said["r1"]["records_rewritten"] >= N and said["r3"]["records_rewritten"] >= N, said
    for f, p, report in ((1, p1, rep1), (2, p2, rep2)):
        got = _check_nobody_named(lab, p, report)
        assert got["r2"] in ("CONSISTENT", "AMBIGUOUS"), (f, got)
        assert got["r4"] in ("CONSISTENT", "AMBIGUOUS"), (f, got)
        assert report["rule"]["f"] == f
    rule1 = rep1["rule"]
    assert not rule1["explained"] and rule1["owners_needed"] == 2, rule1
    assert sorted(c["liars"] for c in rule1["candidates"]) == [[1, 3], [2, 4]], rule1
    assert any("at least 2 owners must be lying" in n for n in rep1["notes"]), rep1["notes"]
    rule2 = rep2["rule"]
    assert rule2["explained"], rule2
    assert sorted(e["liars"] for e in rule2["explanations"]) == [[1, 3], [2, 4]], rule2


# -- e. an honest router flooded until its ring wraps ----------------------------------------------

def _ring(lab, router):
    return ((lab.status(router, timeout=5.0).get("store") or {}).get("ring")) or {}


def test_e_honest_router_flooded_until_its_ring_wraps(lab, tmp_path):
    """r2 (a ring of SMALL_RING) forwards the tenant's window, then junk traffic (site to site:
    not the tenant's flow) through r2 until its ring no longer holds the window. r2's signed
    coverage says so: RING_SHORT (not judged there, not at fault); r1's and r3's records of the
    packets through r2 accuse nobody; nobody is named. (r2's ring goes back to its size after;
    its store keeps the count of its wraps, so its coverage says "wrapped" from then on: later
    windows are still held, and judged as before.)"""
    from beat_lab import traffic

    lab.ring_sizes["r2"] = SMALL_RING
    try:
        _restart(lab, ["r2"])
        assert _ring(lab, "r2")["ring_size"] == 128 << 10
        _past_restart_gaps(lab, ["r2"])
        _, t0, t1 = _send(lab, b"e-ring")
        _anchored(lab, t1)
        # before the flood r2 holds the window: nothing came after it, and its ~10 KB of records
        # are the newest of a ring of 128 KiB
        ring = _ring(lab, "r2")
        assert ring["oldest_t_ns"] is not None and ring["oldest_t_ns"] <= t1, ring
        assert ring["newest_t_ns"] is not None and ring["newest_t_ns"] >= t0, ring
        sent = 0
        for _ in range(FLOOD_BURSTS_MAX):
            load = traffic.send_load(lab.net, lab.topo.src, lab.topo.dst, flows=100,
                                     count=FLOOD_BURST, seconds=20.0, size=64)
            sent += load["sent"]
            time.sleep(0.5)            # the records reach r2's store (commit interval, join)
            ring = _ring(lab, "r2")
            if ring.get("wraps") and (ring.get("oldest_t_ns") or 0) > t1:
                break
        assert ring.get("wraps") and ring["oldest_t_ns"] > t1, (
            f"r2's ring still holds the window after {sent} junk packets: {ring}")
        _anchored(lab, time.time_ns())
        p, report, _ = _judge(lab, t0, t1, tmp_path, "e")
    finally:
        lab.ring_sizes.pop("r2", None)
        _restart(lab, ["r2"])
    _check(lab, p, report, dict(ALL_CONSISTENT, r2="RING_SHORT"))
    r2 = _devices(lab, report)["r2"]
    assert r2["counts"]["received"] == 0 and r2["answered"], r2
    assert "does not reach back to the window start" in r2["reasons"][0], r2
    # the separate finding on its coverage (its ring holds less than the threshold time): a
    # note, not a verdict on the dispute's packets (the decision above names nobody)
    assert any(n.startswith("node 2: its signed coverage says its ring covers less than the "
                            "threshold time") for n in report["notes"]), report["notes"]
    assert _ring(lab, "r2")["ring_size"] == 16 << 20


# -- f. a device certificate floods r2's services during an interrogation --------------------------

_FLOOD = r"""
import json, sys, threading, time
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

endpoint, ca, cert, key, n_refl, n_watch, settle = sys.argv[1:8]
read = lambda p: open(p, "rb").read()
creds = grpc.ssl_channel_credentials(read(ca), read(key), read(cert))
channels = [grpc.secure_channel(endpoint, creds) for _ in range(4)]
stop = threading.Event()
lock = threading.Lock()
results = {}

def note(k, v):
    with lock:
        results.setdefault(k, v)

def requests():
    yield reflection_pb2.ServerReflectionRequest(list_services="")
    stop.wait()                  # the request stream stays open: the handler waits for more

def reflect(i):
    stub = reflection_pb2_grpc.ServerReflectionStub(channels[i % len(channels)])
    try:
        call = stub.ServerReflectionInfo(requests())
        for _ in call:
            note(("reflection", i), "held")
            break
        stop.wait()
        call.cancel()
    except grpc.RpcError as e:
        note(("reflection", i), e.code().name)

def watch(i):
    stub = health_pb2_grpc.HealthStub(channels[i % len(channels)])
    try:
        call = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        for _ in call:
            note(("watch", i), "held")
            break
        stop.wait()
        call.cancel()
    except grpc.RpcError as e:
        note(("watch", i), e.code().name)

threads = [threading.Thread(target=reflect, args=(i,), daemon=True) for i in range(int(n_refl))]
threads += [threading.Thread(target=watch, args=(i,), daemon=True) for i in range(int(n_watch))]
for t in threads:
    t.start()
deadline = time.monotonic() + float(settle)
while time.monotonic() < deadline and len(results) < len(threads):
    time.sleep(0.05)
with lock:
    summary = {}
    for (kind, _), v in results.items():
        summary.setdefault(kind, {}).setdefault(v, 0)
        summary[kind][v] += 1
summary["pending"] = len(threads) - len(results)
summary["attempted"] = len(threads)
print(json.dumps(summary), flush=True)
sys.stdin.read()                 # held until the test closes stdin
stop.set()
"""


@pytest.mark.xfail(not HARDENED, strict=True,
                   reason="needs the service hardening (beatd/rpc_guard.py: reflection for the "
                          "governance role only, per-peer stream limits, the watchdog over every "
                          "stream), not in main yet: the flood holds every worker of r2's server")
def test_f_reflection_flood_from_a_device_certificate(lab, tmp_path):
    """r1's device certificate opens REFLECTION_STREAMS server-reflection streams and
    WATCH_STREAMS Health.Watch streams against r2 and holds them open while the governance
    interrogates: r2 answers, every verdict as in the honest case."""
    _, t0, t1 = _send(lab, b"f-flood")
    _anchored(lab, t1)
    tls = os.path.join(lab.router_dir("r1"), "tls")
    node = lab.topo.node("r1").node_id
    argv = lab.net_ledger_argv([lab.python, "-c", _FLOOD, lab.grpc_endpoint("r2"),
                                os.path.join(lab.pki_dir, "ca", "ca.crt"),
                                os.path.join(tls, f"device-{node}.crt"),
                                os.path.join(tls, f"device-{node}.key"),
                                str(REFLECTION_STREAMS), str(WATCH_STREAMS), "5"])
    flood = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd=REPO, env=lab._env())
    try:
        ready, _, _ = select.select([flood.stdout], [], [], 60)
        assert ready, "the flood did not report within 60 s"
        line = flood.stdout.readline().decode()
        assert line, f"the flood exited: {flood.stderr.read().decode()[-2000:]}"
        summary = json.loads(line)
        assert summary["attempted"] == REFLECTION_STREAMS + WATCH_STREAMS, summary
        assert flood.poll() is None, "the flood stopped before the interrogation"
        p, report, _ = _judge(lab, t0, t1, tmp_path, "f")
        assert flood.poll() is None, "the flood stopped during the interrogation"
    finally:
        with contextlib.suppress(OSError):
            flood.stdin.close()
        try:
            flood.wait(10)
        except subprocess.TimeoutExpired:
            flood.kill()
            flood.wait(5)
    _check(lab, p, report, ALL_CONSISTENT)
    assert report["packets"] == N, (report["packets"], summary)
    assert _devices(lab, report)["r2"]["status"] == "answered", summary
    assert report["interrogation"]["2"]["attempts"] == 1, (report["interrogation"]["2"], summary)
    print(f"flood against r2: {summary}", file=sys.stderr)
