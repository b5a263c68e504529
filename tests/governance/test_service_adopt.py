"""Disputes the service did not open (a tenant's, another member's, one opened by hand with
``beatctl open-dispute``) are interrogated and filed by the service like its own: on the loopback
domain of test_service_loopback.py (node 2 drops the middle part), with the service's own
detection off (``consecutive`` out of reach), two disputes opened on the ledger by hand -- the
drop's window and a healthy window -- are both decided by the service: node 2 DROPPED in the
first, nobody in the second; the second only after the first was filed (one interrogation per
SLA at a time: a party opening many disputes costs one at a time). A dispute whose window is
still running is left alone. A restart adopts nothing twice.
"""
import time

import pytest

from test_service_loopback import L, epochs_of, make_domain, run_rounds, service


@pytest.fixture
def domain(tmp_path_factory):
    d = make_domain(tmp_path_factory.mktemp("svc-adopt"))
    yield d
    d.stop()


def test_disputes_opened_by_others_are_interrogated_and_filed_one_at_a_time(domain, tmp_path):
    bad = epochs_of(*domain.dropped)
    good = epochs_of(*domain.healthy)
    svc, led = service(domain, tmp_path, consecutive=1000)
    try:
        d_bad = led.open_dispute(1, bad[0], bad[1] + L - 1, signer=domain.gov)
        d_good = led.open_dispute(1, good[0], good[0] + L - 1, signer=domain.gov)
        # a window still running (the ledger takes it): left alone until it is over and settled
        now = time.time_ns()
        d_future = led.open_dispute(1, now - L, now + 3600 * L, signer=domain.gov)

        def decided():
            return all(led.get_dispute(i).state == "decided" for i in (d_bad, d_good))
        run_rounds(svc, decided, timeout=120)
        assert list(led.get_dispute(d_bad).faulty) == [2]
        assert list(led.get_dispute(d_good).faulty) == []
        entries = {e["dispute_id"]: e for e in svc.state.snapshot()["disputes"].values()}
        assert sorted(entries) == [d_bad, d_good]             # not d_future
        assert led.get_dispute(d_future).state == "opened"
        assert all(e["external"] and e["state"] == "filed" for e in entries.values())
        assert entries[d_bad]["verdicts"] == {"1": "CONSISTENT", "2": "DROPPED",
                                              "3": "CONSISTENT"}
        # one at a time per SLA: the second adopted only once the first was filed
        assert entries[d_good]["requested_ns"] > entries[d_bad]["filed_ns"]
        st = svc.state.snapshot()["slas"]["1"]
        assert st["disputes_opened"] == 0          # the service opened none of them
        assert len(led.disputes()) == 3
        before = {i: led.get_dispute(i) for i in (d_bad, d_good)}
    finally:
        svc.close()
        led.close()
    # a restart: nothing adopted again, nothing filed twice
    svc2, led2 = service(domain, tmp_path, consecutive=1000)
    try:
        for _ in range(3):
            svc2.watcher.poll_once()
            svc2.round()
            for f in list(svc2._jobs.values()):
                f.result(timeout=60)
        again = {e["dispute_id"]: e for e in svc2.state.snapshot()["disputes"].values()}
        assert {i: e["filed_ns"] for i, e in again.items()} == \
            {i: e["filed_ns"] for i, e in entries.items()}
        assert {i: led2.get_dispute(i) for i in (d_bad, d_good)} == before
    finally:
        svc2.close()
        led2.close()
