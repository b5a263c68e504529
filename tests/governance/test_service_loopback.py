"""The governance service (beatctl serve) against a BEAT domain on loopback: real stores written
by the fast path, anchored on a real local ledger, served by real Interrogation servers over
mutual TLS (tests/governance/loopback_domain.py). Node 2 drops every packet of the middle part of
the tenant's traffic: the service evaluates every epoch from the receipts of nodes 1 and 3, opens
one dispute after ``consecutive`` violating epochs, and files the interrogation's decision
(node 2 DROPPED). Then: killed and restarted at every step (no dispute twice, none missed), a
device unreachable (unknown, no dispute) and doctored receipts (refused, reported, not counted).
"""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from loopback_domain import STEP_NS, Domain

from governance.interrogate import load_config
from governance.service.config import ServiceConfig, load as load_service
from governance.service.disputes import CRASH_ENV
from governance.service.service import Service
from governance.service.state import State

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
L = 10**9
LINKS = [(1, 2), (2, 3)]


def make_domain(tmp, valid_to_ns=None):
    """Epochs X, X+1 healthy (1,000 packets each), X+2..X+4 dropped by node 2, X+5 healthy and
    half of X+6. ``valid_to_ns``: the SLA's end (default: never)."""
    d = Domain(tmp, LINKS)
    d.t = ((d.t0 // L) + 1) * L                      # at an epoch's start
    d.healthy = d.send((1, 2, 3), 2000, tag=1)
    d.dropped = d.send((1, 2, 3), 3000, tag=2, drop_at=2)
    d.after = d.send((1, 2, 3), 1500, tag=3)
    if valid_to_ns is not None:
        d.sla_valid_to_ns = valid_to_ns(d)
    return d.start()


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    d = make_domain(tmp_path_factory.mktemp("svc-domain"))
    yield d
    d.stop()


@pytest.fixture
def own_domain(tmp_path_factory):
    d = make_domain(tmp_path_factory.mktemp("svc-domain-own"))
    yield d
    d.stop()


def svc_config(tmp, **kw):
    # late_after_s: the domain's traffic is ~30 s old when its anchors land (more on a loaded
    # machine): the back-dating rule has its own tests (test_service_attacks.py)
    base = dict(state_dir=str(tmp / "state"), listen="127.0.0.1:0", poll_s=0.2, consecutive=2,
                final_after_s=0.5, delay_sample_every_s=0, retry_undecided_s=0.5,
                late_after_s=300)
    base.update(kw)
    return ServiceConfig(**base)


def service(domain, tmp, **kw):
    cfg = svc_config(tmp, **kw)
    led = domain.ledger()
    svc = Service(led, domain.gov, cfg, load_config(str(domain.config)), State(cfg.state_dir))
    with svc.state.lock:                       # evaluate the domain's traffic (in the past)
        st = svc.state.sla(1)
        if st["next_epoch"] is None:
            st["next_epoch"] = (domain.healthy[0] // L) * L
    svc.watcher.poll_once()
    return svc, led


def run_rounds(svc, until, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        svc.watcher.poll_once()
        svc.round()
        for f in list(svc._jobs.values()):
            f.result(timeout=timeout)
        if until():
            return
        time.sleep(0.1)
    raise AssertionError("the service did not get there in time")


def results(svc):
    return {r["epoch_ns"]: r for r in svc.state.snapshot(series=True)["slas"]["1"]["series"]}


def epochs_of(lo, hi):
    """The epochs wholly covered by packets sent from lo to hi (one every STEP_NS)."""
    return list(range(((lo + L - 1) // L) * L, hi + STEP_NS - L + 1, L))


def test_violation_opens_one_dispute_and_files_the_interrogations_decision(domain, tmp_path):
    svc, led = service(domain, tmp_path)
    try:
        run_rounds(svc, lambda: any(e["state"] == "filed" for e in
                                    svc.state.snapshot()["disputes"].values()))
        res = results(svc)
        for e in epochs_of(*domain.healthy):
            assert res[e]["result"] == "ok", res[e]
            assert res[e]["ingress"] == res[e]["egress"] == 1000
        bad = epochs_of(*domain.dropped)
        assert len(bad) == 3
        for e in bad:
            assert res[e]["result"] == "violation" and res[e]["egress"] == 0, res[e]
        disputes = led.disputes()
        assert len(disputes) == 1
        d = disputes[0]
        # the window of the first two violating epochs, decided by the interrogation: node 2
        assert (d.from_ns, d.to_ns) == (bad[0], bad[1] + L - 1)
        assert d.state == "decided" and list(d.faulty) == [2]
        entry = next(iter(svc.state.snapshot()["disputes"].values()))
        assert entry["verdicts"] == {"1": "CONSISTENT", "2": "DROPPED", "3": "CONSISTENT"}
        assert entry["faulty"] == [2]
        # the evidence archive kept: judged again (as beatctl verify-decision), the same decision
        from governance import archive, interrogate as itg
        arch = archive.read(entry["evidence_dir"])
        j, _ = itg.replay(arch, led)
        assert arch.digest == d.evidence_digest
        assert itg.verdict_digest(j, arch.digest) == d.verdict_digest
        # the API and the metrics
        svc.start()
        base = f"http://127.0.0.1:{svc.http.port}"
        slas = json.load(urllib.request.urlopen(base + "/api/v1/slas"))
        assert slas[0]["sla_id"] == 1 and slas[0]["route"] == [1, 2, 3]
        assert slas[0]["monitor"]["disputes_opened"] == 1
        assert {r["result"] for r in slas[0]["series"]} >= {"ok", "violation"}
        # the series from the history: all of it for one SLA, the last N when asked
        whole = svc.state.series(1)
        one = json.load(urllib.request.urlopen(base + "/api/v1/slas/1"))
        assert one["series"] == whole and len(whole) == one["monitor"]["epochs_evaluated"]
        last3 = json.load(urllib.request.urlopen(base + "/api/v1/slas?series=3"))[0]["series"]
        assert last3 == whole[-3:] and len(last3) == 3
        assert json.load(urllib.request.urlopen(base + "/api/v1/slas/1?series=0"))["series"] == []
        for bad_q in ("-1", "x", str(svc.svc.series_epochs + 1)):
            with pytest.raises(urllib.error.HTTPError) as exc:
                urllib.request.urlopen(base + f"/api/v1/slas/1?series={bad_q}")
            assert exc.value.code == 400
        ds = json.load(urllib.request.urlopen(base + "/api/v1/disputes"))
        assert ds[0]["steps"] == ["opened", "evidence", "decided"]
        assert ds[0]["service"]["report"]["faulty"] == [2]
        routers = json.load(urllib.request.urlopen(base + "/api/v1/routers"))
        assert [r["node_id"] for r in routers] == [1, 2, 3]
        assert all(r["last_anchor"]["batch_seq"] >= 0 for r in routers)
        metrics = urllib.request.urlopen(base + "/metrics").read().decode()
        assert 'beat_gov_sla_disputes_opened_total{sla="1"} 1.0' in metrics
        assert f'beat_gov_sla_violations_total{{sla="1"}} {float(len(bad))}' in metrics
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(urllib.request.Request(base + "/api/v1/slas", data=b"x"))
        assert exc.value.code == 405
    finally:
        svc.close()
        led.close()


def test_device_unreachable_gives_unknown_never_a_dispute(domain, tmp_path):
    """Node 3 (the egress) does not answer: the epochs of the drop are unknown, nobody is
    disputed (the loss is real, but nothing the service can check says so)."""
    server = domain.servers[3]
    port = server.port
    server.stop(0)
    try:
        svc, led = service(domain, tmp_path)
        n_before = len(led.disputes())
        try:
            last = epochs_of(*domain.after)[-1]
            run_rounds(svc, lambda: last in results(svc))
            res = results(svc)
            for e in epochs_of(domain.healthy[0], domain.after[1]):
                assert res[e]["result"] == "unknown", res[e]
                assert "egress unreachable" in res[e]["reasons"][0]
            assert len(led.disputes()) == n_before
            st = svc.state.snapshot()["slas"]["1"]
            assert st["violations"] == 0 and st["unknown_run"] == len(res)
        finally:
            svc.close()
            led.close()
    finally:
        from beatd.interrogation import InterrogationServer
        domain.servers[3] = InterrogationServer(
            domain.stores[3], domain.keys[3], ca=domain.pki / "ca.crt",
            cert=domain.pki / "device-3.crt", private_key=domain.pki / "device-3.key",
            listen=f"127.0.0.1:{port}", threshold_ns=3600 * 10**9).start()


@pytest.mark.parametrize("how", ["packets", "packets-and-R"])
def test_doctored_receipts_are_refused_and_reported(domain, tmp_path, monkeypatch, how):
    """Node 3 answers with a receipt whose packets were raised (R left: R does not match; or R
    recomputed: not in the anchor): refused, counted in the metrics, never counted as traffic."""
    import dataclasses

    import fastpath
    from governance import client as client_mod

    target = epochs_of(*domain.healthy)[0]
    real = client_mod.InterrogationClient.receipts

    def doctored(self, lo, hi, src, dst, timeout=None):
        out = real(self, lo, hi, src, dst, timeout)
        if self.node_id != 3:
            return out
        fixed = []
        for rc in out:
            if rc.epoch_ns == target and rc.role == 2:
                rc = dataclasses.replace(rc, packets=rc.packets + 500)
                if how == "packets-and-R":
                    rc = dataclasses.replace(rc, R=fastpath.receipt_value(
                        "sha3-256", 3, rc.role, rc.src, rc.dst, rc.epoch_ns, rc.packets,
                        rc.bytes))
            fixed.append(rc)
        return fixed

    monkeypatch.setattr(client_mod.InterrogationClient, "receipts", doctored)
    svc, led = service(domain, tmp_path, consecutive=50)
    try:
        run_rounds(svc, lambda: target + L in results(svc))
        r = results(svc)[target]
        assert r["result"] == "unknown" and r["egress"] is None, r
        assert "egress refused" in r["reasons"][0] and "tampered" in r["reasons"][0]
        assert svc.state.snapshot()["slas"]["1"]["refused_receipts"] >= 1
        assert svc.counters.refused[(1, 3)] >= 1
        assert results(svc)[target + L]["result"] == "ok"
    finally:
        svc.close()
        led.close()


# -- beatctl serve, killed and restarted --------------------------------------------------------

def _serve_config(domain, tmp):
    p = tmp / "gov.toml"
    p.write_text(domain.config.read_text() + f"""
[service]
state_dir = "{tmp}/state"
listen = "127.0.0.1:0"
poll_s = 0.2
consecutive = 2
final_after_s = 0.5
delay_sample_every_s = 0
retry_undecided_s = 0.5
backfill_s = {(time.time_ns() - (domain.healthy[0] // L) * L) / 1e9 + 5:.0f}
log_format = "text"
""")
    load_service(str(p))
    return p


def _serve(domain, cfg, crash=None):
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop(CRASH_ENV, None)
    if crash:
        env[CRASH_ENV] = crash
    return subprocess.Popen(
        [sys.executable, "-m", "governance.cli", "--ledger", f"local:{domain.ledger_path}",
         "--key", str(domain.gov_path), "serve", "--config", str(cfg)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _state(tmp):
    from governance.service.state import read
    return read(str(tmp / "state"))


def _wait(pred, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_killed_and_restarted_no_dispute_twice_none_missed(own_domain, tmp_path):
    domain = own_domain
    before = set()
    cfg = _serve_config(domain, tmp_path)
    # 1. dies (as by SIGKILL) once the streak is complete, before the ledger is asked ...
    p = _serve(domain, cfg, crash="before-open")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 137, err
    entry = next(iter(_state(tmp_path)["disputes"].values()))
    assert entry["state"] == "opening" and entry["dispute_id"] is None
    with domain.ledger() as led:
        assert led.disputes() == []
    # 2. ... dies right after the ledger opened the dispute (before its id is saved) ...
    p = _serve(domain, cfg, crash="after-open")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 137, err
    with domain.ledger() as led:
        new = [d for d in led.disputes() if d.dispute_id not in before]
    assert len(new) == 1 and new[0].state == "opened"
    # 3. ... the restart adopts it, interrogates, and dies before filing
    p = _serve(domain, cfg, crash="before-file")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 137, err
    assert "adopted" in err
    entry = next(iter(_state(tmp_path)["disputes"].values()))
    assert entry["state"] == "filing" and entry["dispute_id"] == new[0].dispute_id
    # 4. SIGKILL at some moment of a normal run ...
    p = _serve(domain, cfg)
    time.sleep(0.7)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=10)
    # 5. the restart files that very decision, once
    p = _serve(domain, cfg)
    head = []
    while not any("listening on" in ln for ln in head) and p.poll() is None:
        head.append(p.stderr.readline())
    try:
        assert _wait(lambda: next(iter(_state(tmp_path)["disputes"].values()))["state"] ==
                     "filed")
        last = epochs_of(*domain.after)[-1]
        assert _wait(lambda: any(r["epoch_ns"] == last for r in
                                 _state(tmp_path)["slas"]["1"]["series"]))
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=20)
    assert p.returncode == 0, "".join(head) + err
    with domain.ledger() as led:
        new = [d for d in led.disputes() if d.dispute_id not in before]
        assert len(new) == 1 and new[0].state == "decided" and list(new[0].faulty) == [2]
        assert new[0].evidence_digest.hex() == entry["evidence_digest"]
    st = _state(tmp_path)["slas"]["1"]
    epochs = [r["epoch_ns"] for r in st["series"]]
    assert len(epochs) == len(set(epochs)) == st["epochs_evaluated"]     # none twice
    assert epochs == list(range(epochs[0], epochs[-1] + 1, L))           # none skipped
    assert st["disputes_opened"] == 1
    bad = [r["epoch_ns"] for r in st["series"] if r["result"] == "violation"]
    assert bad == epochs_of(*domain.dropped)


def test_an_sla_that_ended_has_its_last_epochs_evaluated_and_no_more(tmp_path):
    """The SLA ended (valid_to_ns) at the end of the healthy epochs, before the service got to
    them: they are evaluated (ok), the dropped epochs after its end are not (no dispute), and the
    SLA is then left alone."""
    d = make_domain(tmp_path / "domain", valid_to_ns=lambda d: d.healthy[1])
    try:
        svc, led = service(d, tmp_path)
        try:
            valid = epochs_of(*d.healthy)
            assert time.time_ns() > d.sla_valid_to_ns and len(valid) == 2
            run_rounds(svc, lambda: set(valid) <= set(results(svc)))
            for _ in range(5):                  # more rounds: nothing after the SLA's end
                run_rounds(svc, lambda: True)
            got = results(svc)
            assert sorted(got) == valid, sorted(got)
            assert all(got[e]["result"] == "ok" for e in valid), got
            assert svc.state.snapshot()["slas"]["1"]["disputes_opened"] == 0
            assert not svc._active(led.get_sla(1), time.time_ns())
        finally:
            svc.close()
            led.close()
    finally:
        d.stop()
