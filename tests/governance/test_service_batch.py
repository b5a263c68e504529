"""The service's round asks each device ONCE for the receipts of every flow of its SLAs (request
kind 7, ``RoundReads`` with the round's ``plan_requests``) instead of once per SLA end: it must
read exactly what the per-flow requests read, on the same devices.

A BEAT domain on loopback (tests/governance/loopback_domain.py: real stores, a real local ledger,
real Interrogation servers over mutual TLS), four SLAs over four routers: r2 drops part of SLA 1's
traffic; r3 answers SLA 2's flow with one receipt whose packets it raised and whose R it recomputed
(its inclusion proof then does not match its anchor); r4 does not answer (stopped). Every SLA end
is read both ways and the readings compared; then two services, one batched and one per flow,
evaluate every epoch and their series compared.
"""
import dataclasses
import time

import pytest

import fastpath
import loopback_domain as ld
from loopback_domain import Domain, V4
from test_service_loopback import epochs_of, run_rounds, service

from governance.client import InterrogationClient
from governance.service import service as service_mod
from governance.service.monitor import COUNTED, EGRESS, INGRESS, REFUSED, UNREACHABLE
from governance.service.service import RoundReads, plan_requests
from ledger_client.types import SLA

H = "sha3-256"
L = 10**9
LINKS = [(1, 2), (2, 3), (3, 4)]
FLOWS = {1: (1, (1, 2, 3)), 2: (2, (1, 2, 3)), 3: (3, (2, 3, 4)), 4: (4, (3, 4))}


def _addrs(k):
    return bytes([10, 1, 0, k]), bytes([10, 2, 0, k])


def _send(d, k, path, n, drop_at=None):
    """``n`` packets of flow ``k`` (10.1.0.k -> 10.2.0.k) along ``path``."""
    src, dst = ld.SRC_IP, ld.DST_IP
    ld.SRC_IP, ld.DST_IP = _addrs(k)
    try:
        return d.send(path, n, tag=k, drop_at=drop_at)
    finally:
        ld.SRC_IP, ld.DST_IP = src, dst


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    d = Domain(tmp_path_factory.mktemp("batch-domain"), LINKS)
    d.t = ((d.t0 // L) + 1) * L
    first = d.t
    for step in range(6):                          # every flow in every epoch
        for k, (_, path) in FLOWS.items():
            drop = 2 if (k == 1 and step in (2, 3)) else None
            _send(d, k, path, 100, drop_at=drop)
        d.t = ((d.t // L) + 1) * L                  # the next epoch
    d.span = (first, d.t - 1)
    d.start()
    with d.ledger() as led:
        for k, (sla_id, route) in FLOWS.items():
            if sla_id == 1:
                continue                            # Domain.start registered SLA 1 (flow 1)
            src, dst = _addrs(k)
            led.register_sla(SLA(sla_id, f"tenant-{sla_id}", V4 + src, V4 + dst, route),
                             signer=d.gov)
    # r3 lies about one receipt of flow 2 (its egress): packets raised, R recomputed
    store_receipts = d.servers[3].servicer.evidence.receipts
    target = {}

    def lying(lo, hi, src, dst):
        out = store_receipts(lo, hi, src, dst)
        if (src, dst) != (V4 + _addrs(2)[0], V4 + _addrs(2)[1]) or not out:
            return out
        rc = next((r for r in out if r.role == EGRESS), None)
        if rc is None:
            return out
        target["epoch"] = rc.epoch_ns
        bad = dataclasses.replace(rc, packets=rc.packets + 7)
        bad = dataclasses.replace(bad, R=fastpath.receipt_value(H, 3, bad.role, bad.src,
                                                                 bad.dst, bad.epoch_ns,
                                                                 bad.packets, bad.bytes))
        return [bad if r is rc else r for r in out]
    d.servers[3].servicer.evidence.receipts = lying
    d.lied = target
    d.servers[4].stop(0)                           # r4 does not answer
    yield d
    d.stop()


def _service(domain, tmp, batched):
    domain.healthy = domain.span                   # test_service_loopback.service starts there
    svc, led = service(domain, tmp, consecutive=1000)
    start = (domain.span[0] // L) * L
    with svc.state.lock:
        for sla_id in (1, 2, 3, 4):
            svc.state.sla(sla_id)["next_epoch"] = start
    if not batched:
        real = svc._plan                           # every SLA end asks on its own
        svc._plan = lambda slas, view, now: ([], real(slas, view, now)[1])
    return svc, led


def _plain(reading):
    if reading.status == UNREACHABLE:
        return (reading.status, reading.reason.split(":")[0])
    return dataclasses.astuple(reading)


def test_batched_and_per_flow_readings_are_the_same(domain, tmp_path, monkeypatch):
    svc, led = _service(domain, tmp_path, batched=True)
    asked = []
    real_hold = InterrogationClient.hold
    monkeypatch.setattr(InterrogationClient, "hold",
                        lambda self, *a, **kw: asked.append(self.node_id) or
                        real_hold(self, *a, **kw))
    try:
        view = svc.watcher.view
        assert sorted(view.slas) == [1, 2, 3, 4]
        now = time.time_ns()
        slas = [view.slas[i] for i in (1, 2, 3, 4)]
        plan, _ = svc._plan(slas, view, now)
        # one request per device (r1: flows 1, 2; r2: 3; r3: 1, 2, 4; r4: 3, 4), each naming
        # the overflow flow too
        assert sorted((r.node_id, len(r.flows)) for r in plan) == \
            [(1, 3), (2, 2), (3, 4), (4, 3)]
        epochs = epochs_of(*domain.span)
        assert len(epochs) >= 5
        batched, per_flow = RoundReads(led, plan), RoundReads(led)
        answers = {n: s.servicer.answers for n, s in domain.servers.items()}
        seen = set()
        for sla in slas:
            for node, role in ((sla.route[0], INGRESS), (sla.route[-1], EGRESS)):
                a = svc.read_end(sla, node, role, epochs, view, batched)
                b = svc.read_end(sla, node, role, epochs, view, per_flow)
                assert {e: _plain(r) for e, r in a.items()} == \
                    {e: _plain(r) for e, r in b.items()}, (sla.sla_id, node)
                seen |= {(sla.sla_id, node, r.status) for r in a.values()}
        # what the domain was built to show was read
        assert set(asked) == {1, 2, 3, 4} and len(asked) == 4      # once per device
        assert (1, 1, COUNTED) in seen and (1, 3, COUNTED) in seen
        assert (2, 3, REFUSED) in seen and (2, 3, COUNTED) in seen  # only the doctored epoch
        assert (3, 4, UNREACHABLE) in seen and (4, 4, UNREACHABLE) in seen
        assert (3, 2, COUNTED) in seen and (4, 3, COUNTED) in seen
        # the batched reads: one answer per device that answers, for four SLAs
        assert answers[1] < domain.servers[1].servicer.answers
        dropped = svc.read_end(slas[0], 3, EGRESS, epochs, view, batched)
        entered = svc.read_end(slas[0], 1, INGRESS, epochs, view, batched)
        assert any(dropped[e].packets < entered[e].packets for e in epochs)
        bad = domain.lied["epoch"]
        r2 = svc.read_end(slas[1], 3, EGRESS, epochs, view, RoundReads(led, plan))
        assert r2[bad].status == REFUSED and "tampered" in r2[bad].reason
    finally:
        svc.close()
        led.close()


def _series(svc, sla_id):
    return [(r["epoch_ns"], r["result"], r["ingress"], r["egress"], r["loss_ppm"])
            for r in svc.state.snapshot(series=True)["slas"][str(sla_id)]["series"]]


def test_a_batched_service_and_a_per_flow_service_evaluate_alike(domain, tmp_path):
    last = epochs_of(*domain.span)[-1]
    out = {}
    for batched in (True, False):
        svc, led = _service(domain, tmp_path / f"b{batched}", batched)
        try:
            run_rounds(svc, lambda: all(any(r[0] == last for r in _series(svc, i))
                                        for i in (1, 2, 3, 4)), timeout=90)
            out[batched] = {i: [r for r in _series(svc, i) if r[0] <= last]
                            for i in (1, 2, 3, 4)}
        finally:
            svc.close()
            led.close()
    assert out[True] == out[False]
    results = {i: {r[1] for r in out[True][i]} for i in (1, 2, 3, 4)}
    assert "violation" in results[1] and "ok" in results[1]
    assert "unknown" in results[2] and "ok" in results[2]
    assert results[3] == {"unknown"} and results[4] == {"unknown"}


def test_plan_groups_a_devices_flows_by_window_and_count():
    f = [(bytes([i]) * 16, bytes([i]) * 16) for i in range(1, 6)]
    over = (bytes(16), bytes(16))
    plan = plan_requests([(1, f[0], 10 * L, 12 * L), (1, f[1], 11 * L, 13 * L),
                          (2, f[2], 10 * L, 10 * L), (1, f[3], 300 * L, 301 * L)], 120 * L)
    assert plan == [service_mod.DeviceRequest(1, 10 * L, 13 * L, tuple(sorted({f[0], f[1],
                                                                                over}))),
                    service_mod.DeviceRequest(1, 300 * L, 301 * L, tuple(sorted({f[3], over}))),
                    service_mod.DeviceRequest(2, 10 * L, 10 * L, tuple(sorted({f[2], over})))]
    # at most max_flows flows a request, the overflow flow among them
    plan = plan_requests([(1, x, 10 * L, 10 * L) for x in f], 120 * L, max_flows=3)
    assert [len(r.flows) for r in plan] == [3, 3, 2]
    assert all(over in r.flows for r in plan)
    assert sorted(x for r in plan for x in r.flows if x != over) == sorted(f)
    # an SLA the round did not plan asks on its own
    rr = RoundReads(None, plan)
    assert rr.request_for(1, f[0], 10 * L, 10 * L) is plan[0]
    assert rr.request_for(1, f[0], 10 * L, 11 * L) is None
    assert rr.request_for(2, f[0], 10 * L, 10 * L) is None
