"""Adversary of the service's round batching (governance/service/service.py: ``RoundReads``,
``_Batch``): a window of violating epochs must be disputed once, even when the service stops or
dies between the round's save of its epochs and the dispute's own entry in the state; a device's
shared overflow answer serves every SLA it is an end of alike.

The devices are replaced by their readings (``read_end``) and the dispute desk by a recorder:
what is asserted is the service's bookkeeping between them (the state file, real, on disk; a
real process killed by SIGKILL)."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from types import SimpleNamespace

import pytest

from governance.service.config import ServiceConfig
from governance.service.monitor import COUNTED, Reading
from governance.service.service import RoundReads, Service
from governance.service.state import State

L = 1_000_000_000
NOW = 1_000 * L + L // 2          # epochs up to 998 closed (999 is the last closed: 1000 is open)


def _sla(sla_id, route=(1, 2, 3)):
    return SimpleNamespace(sla_id=sla_id, route=list(route), src=bytes(16), dst=bytes(15) + b"\1",
                           valid_from_ns=0, valid_to_ns=2 ** 62, max_loss_ppm=10_000,
                           max_delay_us=0)


def _view(slas):
    anchors = {n: SimpleNamespace(last_t_ns=NOW) for n in (1, 2, 3, 4)}
    return SimpleNamespace(slas={s.sla_id: s for s in slas}, nodes={}, anchors=anchors)


def _service(state_dir, slas, clock=lambda: NOW):
    cfg = ServiceConfig(state_dir=str(state_dir), consecutive=3, backfill_s=5,
                        delay_sample_every_s=0, final_after_s=10)
    gov = SimpleNamespace(endpoints={}, timeout_s=5)
    svc = Service(SimpleNamespace(hash_name="sha256"), None, cfg, gov, State(str(state_dir)),
                  clock=clock)
    svc.watcher.view = _view(slas)

    def read_end(sla, node_id, role, epochs, view, shared=None):
        # the ingress counted 1000, the egress nothing: every epoch violates
        return {e: Reading(COUNTED, 1000 if node_id == sla.route[0] else 0, 0,
                           R=f"{node_id:02x}" * 32) for e in epochs}
    svc.read_end = read_end
    asked = []
    svc.desk.request = lambda sla_id, f, t, reason, sample=None: asked.append((sla_id, f, t))
    svc.desk.resume = lambda: None
    svc.desk.adopt = lambda view: None
    return svc, asked


def _wait(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def test_a_window_saved_by_a_round_is_disputed_after_a_stop_that_cancelled_its_dispute(tmp_path):
    """The round saves its epochs (the streak reset, the window taken), then hands the dispute to
    the job pool; when the pool is busy (samples, other disputes: interrogations take seconds)
    and the service is stopped (SIGTERM: ``close`` cancels queued jobs), the window must still be
    disputed after the restart, and only once."""
    sla = _sla(7)
    svc, asked = _service(tmp_path / "s", [sla])
    gate = threading.Event()
    busy = [svc.pool.submit(gate.wait, 30) for _ in range(2)]       # both workers held
    svc.round()
    st = State(str(tmp_path / "s")).sla(7)                           # what is on disk
    assert st["next_epoch"] == 1000 * L and st["violations"] == 5    # 995..999 evaluated
    assert asked == []                                               # its job still queued
    svc.close()                                                      # the stop: job cancelled
    gate.set()
    for f in busy:
        f.result(5)
    assert asked == []

    again, asked2 = _service(tmp_path / "s", [sla])
    try:
        for _ in range(3):
            again.round()
        assert _wait(lambda: len(asked2) >= 1), "the window saved before the stop was never disputed"
        time.sleep(0.2)
        assert asked2 == [(7, 995 * L, 998 * L - 1)]
        # once disputed it is not asked again by later rounds or another restart
        third, asked3 = _service(tmp_path / "s", [sla])
        third.round()
        time.sleep(0.2)
        assert asked3 == []
        third.close()
    finally:
        again.close()


CHILD = textwrap.dedent("""
    import sys, threading, time
    sys.path.insert(0, {tests!r})
    from test_adv_verify_service import _sla, _service
    svc, asked = _service({state!r}, [_sla(7)])
    gate = threading.Event()
    for _ in range(2):
        svc.pool.submit(gate.wait, 60)
    svc.round()
    print("saved", flush=True)
    time.sleep(60)
""")


def test_a_window_saved_by_a_round_survives_a_sigkill_before_its_dispute(tmp_path):
    """The same with a real process killed (SIGKILL) after the round's save, its dispute job
    still queued: the restarted service disputes the window."""
    state = str(tmp_path / "s")
    code = CHILD.format(tests=os.path.dirname(__file__), state=state)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    try:
        assert p.stdout.readline().strip() == "saved"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    with open(os.path.join(state, "state.json")) as f:
        assert json.load(f)["slas"]["7"]["next_epoch"] == 1000 * L
    again, asked = _service(state, [_sla(7)])
    try:
        again.round()
        assert _wait(lambda: asked), "the window saved before the SIGKILL was never disputed"
        assert asked == [(7, 995 * L, 998 * L - 1)]
    finally:
        again.close()


def test_one_overflow_answer_serves_every_sla_of_the_device_alike():
    """The device's overflow receipts of a window are asked once per round, whatever SLA asks
    first, and every SLA of the device gets the same answer (a device cannot answer one SLA's
    request one way and another's the other way); an error of that request reaches every SLA
    (each classifies it), and the next round asks again."""
    rr = RoundReads(SimpleNamespace(hash_name="sha256"))
    calls = []
    gate = threading.Event()

    def fetch():
        calls.append(1)
        gate.wait(5)
        return object()
    got = []
    threads = [threading.Thread(target=lambda: got.append(rr.overflow(3, 5 * L, 9 * L, fetch)))
               for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    gate.set()
    for t in threads:
        t.join(5)
    assert len(calls) == 1 and len(got) == 4 and len({id(g) for g in got}) == 1
    # another window of the same device is another request
    rr.overflow(3, 6 * L, 9 * L, lambda: calls.append(2))
    assert calls == [1, 2]

    def boom():
        raise RuntimeError("node 3: stream reset")
    for _ in range(2):
        with pytest.raises(RuntimeError, match="node 3"):
            rr.overflow(4, 5 * L, 9 * L, boom)
    assert RoundReads(None).overflow(4, 5 * L, 9 * L, lambda: "answered") == "answered"


def test_a_ledger_outage_while_checking_a_devices_answer_is_not_the_devices_fault(tmp_path,
                                                                                   monkeypatch):
    """The device answered (flow and overflow receipts, both shared by its SLAs); checking them
    needs the ledger's anchors, and the ledger is down (Unavailable). Nothing the device did:
    its receipts are not "refused" (no refused receipt counted against it, no epoch settled
    as unknown for good), every SLA of the device waits for the next round."""
    from governance import verify
    from governance.service import service as service_mod
    from governance.service.monitor import PENDING, REFUSED
    from ledger_client.errors import Unavailable

    svc, _ = _service(tmp_path / "s", [_sla(7), _sla(8, route=(1, 4))])
    del svc.read_end                                     # the real one
    svc.watcher.view.nodes = {n: SimpleNamespace(pubkey=bytes(32)) for n in (1, 2, 3, 4)}

    class Device:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def receipts(self, lo, hi, src, dst):
            return SimpleNamespace(receipts=(), answered=True)
    monkeypatch.setattr(svc, "_client", lambda node_id, view: Device())

    def ledger_down(*args, **kw):
        raise Unavailable("get_anchor(1, 17): the ledger cannot be reached (connection refused)")
    monkeypatch.setattr(verify, "verify_receipts", ledger_down)
    assert service_mod.verify.verify_receipts is ledger_down
    shared = RoundReads(svc.ledger)
    epochs = [995 * L, 996 * L]
    for sla in svc.watcher.view.slas.values():
        got = svc.read_end(sla, 1, 1, epochs, svc.watcher.view, shared)
        assert {r.status for r in got.values()} == {PENDING}, got
        assert REFUSED not in {r.status for r in got.values()}
        assert svc.state.sla(sla.sla_id)["refused_receipts"] == 0
    svc.close()
