"""The governance service watching the lab's SLA (issue 16; root, real namespaces, in CI).

The paper's testbed with its committee (three members, k = 2), the tenant's steady UDP flow
h1 -> h2 (200 packets/s, source ports 41000..41009 in turn) and ``beatctl serve`` run by member 1
in the management namespace (receipt epochs and anchors of 1 s, n = 2 consecutive epochs):

1. healthy for 30 epochs (30 s): every epoch evaluated, no violation, no dispute; the delay
   sampled;
2. r2 drops every tenth packet (a kernel rule blackholing source port 41000, as the scenarios):
   the service opens a dispute within n epochs plus one anchor period (plus the time to settle
   the epochs), the interrogation names r2 DROPPED and member 1's approval is filed; member 2
   judges the archived evidence again (beatctl decide) and the decision executes; the service's
   web page shows the dispute with its verdict and report (headless Chromium);
3. r1 moves the flow onto the detour r4: a sampled interrogation finds r1 DEVIATED and the
   service disputes that window by itself;
4. r3's Interrogation service unreachable for 10 s (a blackhole route in the management
   namespace): those epochs are unknown, no dispute.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, require_root
from beat_lab.data import topology_path

PAPER = topology_path("paper")
PREFIX = f"beat-m{os.getpid() % 10000}-"
L = 10**9
RATE = 200
PORTS = 10

# the tenant's flow: UDP h1 -> h2, sport 41000 + seq % 10, a sequence number in the payload (each
# packet its own digest), RATE packets/s until killed
_FLOW = r"""
import socket, struct, sys, time
src, dst, rate, ports = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
sa, da = socket.inet_aton(src), socket.inet_aton(dst)
t0 = time.monotonic(); seq = 0
while True:
    payload = struct.pack("!Q", seq) + b"beat-monitor"
    udp = struct.pack("!HHHH", 41000 + seq % ports, 7, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), seq & 0xFFFF, 0, 64, 17, 0, sa, da)
    try:
        s.sendto(ip + udp, (dst, 0))
    except OSError:
        pass
    seq += 1
    ahead = seq / rate - (time.monotonic() - t0)
    if ahead > 0:
        time.sleep(ahead)
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    require_root()
    from beat_lab.lab import Lab

    lb = Lab(PAPER, prefix=PREFIX, state_root=str(tmp_path_factory.mktemp("monitor")))
    lb.up()
    yield lb
    lb.down()


class Flow:
    def __init__(self, lab):
        topo = lab.topo
        argv = lab.net.exec_argv(topo.src, [sys.executable, "-c", _FLOW,
                                            str(topo.host_addr(topo.src)),
                                            str(topo.host_addr(topo.dst)), str(RATE),
                                            str(PORTS)])
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self):
        self.proc.kill()
        self.proc.wait(timeout=10)


class Serve:
    """``beatctl serve`` as committee member 1, in the management namespace."""

    def __init__(self, lab, tmp):
        self.lab, self.tmp = lab, tmp
        self.state_dir = tmp / "service"
        self.config = tmp / "gov.toml"
        with open(lab.governance_config_path) as f:
            base = f.read()
        self.config.write_text(base + f"""
[service]
state_dir = "{self.state_dir}"
listen = "127.0.0.1:19480"
poll_s = 0.5
receipt_epoch_ms = 1000
consecutive = 2
final_after_s = 3
delay_sample_every_s = 4
delay_sample_window_s = 1
delay_sample_lag_s = 3
retry_undecided_s = 5
min_dispute_gap_s = 4
log_format = "text"
""")
        argv = lab.net_ledger_argv([sys.executable, "-m", "governance.cli", "--ledger",
                                    lab.ledger_spec, "--key", lab.member_key_path(1), "serve",
                                    "--config", str(self.config)])
        env = dict(os.environ, PYTHONPATH=REPO)
        self.log = open(tmp / "serve.log", "w")
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def state(self):
        from governance.service.state import read
        return read(str(self.state_dir)) or {}

    def sla(self):
        return self.state().get("slas", {}).get("1", {})

    def disputes(self):
        return sorted((d for d in self.state().get("disputes", {}).values()),
                      key=lambda d: d["requested_ns"])

    def api(self, path):
        argv = self.lab.net_ledger_argv([sys.executable, "-c",
                                         "import sys, urllib.request; sys.stdout.write("
                                         "urllib.request.urlopen(sys.argv[1]).read().decode())",
                                         f"http://127.0.0.1:19480{path}"])
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def page(self, dispute_id):
        """What the service's page shows of ``dispute_id`` (tests/governance/page_browser.py,
        headless Chromium in the management namespace)."""
        script = os.path.join(REPO, "tests", "governance", "page_browser.py")
        argv = self.lab.net_ledger_argv([sys.executable, script, "http://127.0.0.1:19480/",
                                         str(dispute_id), "60"])
        out = subprocess.run(argv, capture_output=True, text=True, timeout=180,
                             env=dict(os.environ, PYTHONPATH=REPO))
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout)

    def logtext(self):
        self.log.flush()
        return (self.tmp / "serve.log").read_text()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _wait(pred, timeout, what, serve):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        assert serve.proc.poll() is None, f"beatctl serve exited:\n{serve.logtext()[-3000:]}"
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout} s\n{serve.logtext()[-3000:]}")


def test_the_service_disputes_what_the_routers_do(lab, tmp_path):
    from ledger_client.local import LocalLedger

    flow = Flow(lab)
    serve = Serve(lab, tmp_path)
    try:
        # 1. healthy for 30 epochs (~30 s, the healthy half-minute) ----------------------
        start = time.time_ns()
        _wait(lambda: serve.sla().get("epochs_evaluated", 0) >= 1, 30, "first epoch", serve)
        # until 30 epochs are evaluated, 28 of them ok, and 3 delay samples taken (every 4 s),
        # not a fixed 38 s (a violation on the way still fails below)
        def healthy_enough():
            got = serve.sla()
            return (got.get("epochs_evaluated", 0) >= 30 and got.get("samples", 0) >= 3
                    and [r["result"] for r in got.get("series", ())].count("ok") >= 28)
        _wait(healthy_enough, 75, "30 epochs evaluated, 28 ok, 3 delay samples", serve)
        st = serve.sla()
        assert st["epochs_evaluated"] >= 30, st
        results = [r["result"] for r in st["series"]]
        assert "violation" not in results and serve.disputes() == [], st["series"]
        assert results.count("ok") >= 28, results
        ok = [r for r in st["series"] if r["result"] == "ok"]
        assert all(abs(r["ingress"] - RATE) <= RATE // 10 for r in ok[1:]), ok
        assert st["samples"] >= 3 and st["last_delay"]["e2e"]["count"] > 0, st
        assert 0 < st["last_delay"]["e2e"]["p99_us"] < 20_000
        assert [h["prev_id"] for h in st["last_delay"]["hops"]][:2] == [1, 2]
        metrics = serve.api("/metrics")
        assert 'beat_gov_sla_epochs_total{result="ok",sla="1"}' in metrics
        assert "beat_gov_sla_delay_us" in metrics
        routers = json.loads(serve.api("/api/v1/routers"))
        assert {r["name"] for r in routers} == {"r1", "r2", "r3", "r4"}
        assert all(r["lag_s"] is not None and r["lag_s"] < 10 for r in routers
                   if r["name"] != "r4"), routers
        with LocalLedger(lab.ledger_path, hash_name=None) as led:
            assert led.disputes() == []

        # 2. r2 drops every tenth packet ------------------------------------------------------
        lab.net.run("r2", ["ip", "rule", "add", "pref", "100", "ipproto", "udp", "sport",
                           "41000", "blackhole"])
        t_drop = time.time_ns()
        try:
            d1 = _wait(lambda: next((d for d in serve.disputes() if d.get("dispute_id")), None),
                       60, "a dispute for r2's drops", serve)
            opened_s = (d1["opened_ns"] - t_drop) / 1e9
            lab.net.run("r2", ["ip", "rule", "del", "pref", "100"])
            d1 = _wait(lambda: next((d for d in serve.disputes() if d["state"] == "filed"),
                                    None), 90, "the decision filed", serve)
        finally:
            lab.net.run("r2", ["ip", "rule", "del", "pref", "100"], check=False)
        # the bound: within n epochs (2) plus one anchor period (1 s), plus 1.5 s for
        # the rest of the epoch the drop began in and the evaluation (an epoch is counted once
        # both ends' anchored receipts land: measured 1.76 and 1.78 s after the rule went in)
        assert opened_s < 2 + 1 + 1.5, opened_s
        assert d1["verdicts"] == {"1": "CONSISTENT", "2": "DROPPED", "3": "CONSISTENT",
                                  "4": "CONSISTENT"}, d1
        assert d1["faulty"] == [2] and d1["from_ns"] >= t_drop - 2 * L
        with LocalLedger(lab.ledger_path, hash_name=None) as led:
            votes = led.dispute_votes(d1["dispute_id"])
            assert len(votes) == 1 and votes[0].verdict_digest.hex() == d1["verdict_digest"]
            assert led.get_dispute(d1["dispute_id"]).state == "opened"     # 1 of k = 2
        # member 2 judges member 1's archived evidence again: the decision executes
        p = lab.decide(d1["dispute_id"], d1["evidence_dir"], 2)
        assert p.returncode == 0, p.stderr
        got = json.loads(p.stdout)
        assert got["faulty"] == [2] and got["state"] == "settled", got
        # the service's web page shows it, in a real headless Chromium (run where the service
        # listens: the management namespace)
        shown = serve.page(d1["dispute_id"])
        assert shown["verdicts"]["r2"] == "DROPPED" and shown["verdicts"]["r1"] == "CONSISTENT"
        assert shown["steps"][:3] == ["opened", "evidence", "decided"] and "r2" in \
            shown["decision"], shown
        assert shown["evidence_digest"] == d1["evidence_digest"], shown
        assert shown["slas"] == [1] and "violation" in " ".join(shown["loss_points"]["1"])
        assert shown["routers"] == ["r1", "r2", "r3", "r4"] and shown["console_errors"] == []
        # the tenant sees it
        p = lab.beatctl("disputes", "--tenant", "--json", key=lab.tenant_key_path)
        assert p.returncode == 0, p.stderr
        mine = {d["dispute"]: d for d in json.loads(p.stdout)}
        assert mine[d1["dispute_id"]]["state"] == "settled"

        # 3. r1 takes the detour via r4 -------------------------------------------------------
        lab.net.route_via("r1", lab.topo.dst, "r4")
        try:
            d2 = _wait(lambda: next((d for d in serve.disputes() if d["state"] == "filed"
                                     and d["verdicts"].get("1") == "DEVIATED"), None),
                       60, "a dispute for r1's detour", serve)
        finally:
            lab.net.route_via("r1", lab.topo.dst, "r2")
        assert d2["verdicts"]["1"] == "DEVIATED" and d2["faulty"] == [1], d2
        assert "sampled interrogation" in d2["reason"]
        n_disputes = len(serve.disputes())

        # 4. r3 unreachable for 10 s ----------------------------------------------------------
        time.sleep(3)
        addr = lab.grpc_endpoint("r3").rsplit(":", 1)[0]
        block = lab.net_ledger_argv(["ip", "route", "add", "blackhole", f"{addr}/32"])
        subprocess.run(block, check=True, timeout=10)
        t_block = time.time_ns()
        try:
            time.sleep(10)
        finally:
            subprocess.run(lab.net_ledger_argv(["ip", "route", "del", "blackhole",
                                                f"{addr}/32"]), check=False, timeout=10)
        t_unblock = time.time_ns()
        _wait(lambda: serve.sla()["next_epoch"] > t_unblock + 2 * L, 60,
              "the epochs after the outage evaluated", serve)
        series = {r["epoch_ns"]: r for r in serve.sla()["series"]}
        # an epoch is asked for once its anchors land (~1 s after its end), again at each new
        # anchor, and given up final_after_s (3 s) after its end: those wholly inside the
        # outage that way are unknown
        during = [e for e in series if t_block <= e <= t_unblock - 5 * L]
        assert len(during) >= 4
        for e in during:
            assert series[e]["result"] == "unknown", series[e]
            assert "egress unreachable" in " ".join(series[e]["reasons"]), series[e]
        assert len(serve.disputes()) == n_disputes
        assert serve.sla()["unknown"] >= len(during)
        slas = json.loads(serve.api("/api/v1/slas"))
        assert slas[0]["terms"] == {"max_loss_ppm": 10_000, "max_delay_us": 20_000,
                                    "loss_budget_ppm": 10_000}
        ds = json.loads(serve.api("/api/v1/disputes"))
        mine = [d["dispute_id"] for d in ds if d["service"]]
        assert d1["dispute_id"] in mine and d2["dispute_id"] in mine
        print(f"monitor: dispute opened {opened_s:.1f} s after r2 began dropping; "
              f"{serve.sla()['epochs_evaluated']} epochs evaluated in "
              f"{(time.time_ns() - start) / 1e9:.0f} s")
    finally:
        flow.stop()
        serve.stop()
