"""The governance service (beatctl serve) against lying routers: the adversary's tests (each
finding has an id S-<n>, named by its test's xfail reason while the service does not meet it).

Every router's owner may lie: in the records and receipts it signs and anchors (a router whose
fast path saw other frames than it says: its store written from the frames it claims), in what it
answers the monitor (its interrogation server's answer rewritten before it is signed), by anchoring
a second receipt for an epoch, by withholding, by answering slowly. A real BEAT domain on loopback
(tests/governance/loopback_domain.py: real stores, a real local ledger, real Interrogation servers
over mutual TLS) and the real service (governance/service), in-process.

What is asserted is what the service promises (docs/governance-service.md, "Against whom"): an
honest device is never named at fault (the verdict is the Interrogation Protocol's), a lone liar
does not hide a violation from the service (the monitor or its sampled interrogation), receipts
that do not match their anchors are never counted, withholding is visible, an epoch is evaluated
once, a dispute is never opened twice. A finding the service does not meet yet is an
``xfail(strict=True)`` naming its id.
"""
import dataclasses
import json
import os
import socket
import threading
import time
import urllib.request

import pytest

import fastpath
from beat_rpc.evidence import AnchorRef, Receipt
from ledger_client import merkle
from ledger_client.types import SLA, Anchor
from loopback_domain import (DST_IP, HOP_NS, SRC_IP, V4, Domain, mac,  # noqa: F401
                             stop_after)
from test_service_loopback import epochs_of, results, run_rounds, service

from governance.service.monitor import EGRESS

H = "sha3-256"
L = 10**9
LINKS = [(1, 2), (2, 3)]
SRC, DST = V4 + SRC_IP, V4 + DST_IP


# -- a domain where one router lies -------------------------------------------------------------

def _index(frame):
    """The packet number of a loopback frame (loopback_domain.packet: its payload's first field)."""
    return int.from_bytes(frame[14 + 28:14 + 36], "big")


def lying_domain(tmp, rewrite, healthy=2000, attack=3000, after=1500):
    """``healthy`` packets, ``attack`` packets over which ``rewrite(d, lo, hi)`` changes what the
    routers saw or claim (frames with ``lo <= t <= hi``), ``after`` packets: the frames each
    router's fast path turns into its records and receipts, anchored (each router signs what its
    frames say: a liar's lie is in its anchored records, not added later)."""
    d = Domain(tmp, LINKS)
    d.t = ((d.t0 // L) + 1) * L
    d.healthy = d.send((1, 2, 3), healthy, tag=1)
    d.attack = d.send((1, 2, 3), attack, tag=2)
    d.after = d.send((1, 2, 3), after, tag=3) if after else None
    rewrite(d, d.attack[0], d.attack[1] + 4 * HOP_NS)
    return d.start()


def remove(d, node, lo, hi, which=lambda f: True):
    """``node`` has no frame ``which`` between lo and hi (it never saw them / says it did not)."""
    d.frames[node] = [(t, f) for t, f in d.frames[node] if not (lo <= t <= hi and which(f))]


def to(node):
    return lambda f: f[:6] == mac(node)            # a frame sent to ``node``


def verdict(svc, led):
    """The one dispute on the ledger, and this service's entry of it."""
    disputes = led.disputes()
    assert len(disputes) == 1, disputes
    entries = [e for e in svc.state.snapshot()["disputes"].values()]
    assert len(entries) == 1, entries
    return disputes[0], entries[0]


def filed(svc):
    return lambda: any(e["state"] in ("filed", "not_judgeable")
                       for e in svc.state.snapshot()["disputes"].values())


def sample_at(svc, sla_id, lo, hi):
    """A sampled interrogation (governance/service/delay.py) of [lo, hi]: the service's clock is
    set so that its window is exactly that one."""
    lag = int(svc.svc.delay_sample_lag_s * 1e9)
    window = int(svc.svc.delay_sample_window_s * 1e9)
    assert hi - lo + 1 == window
    svc.clock = lambda: hi + lag
    try:
        return svc._sample(svc.watcher.view.slas[sla_id])
    finally:
        svc.clock = time.time_ns




# -- framing: a liar makes the monitor dispute an honest neighbour ------------------------------

def test_middle_liar_claiming_it_forwarded_frames_nobody_honest(tmp_path, stop_after):
    """r2 drops the attack's packets and records them forwarded to r3 (anchored); r3 (honest, the
    egress) never got them. The monitor sees the loss and opens a dispute; the verdict must not
    name r3 (it is framed) nor r1."""
    d = lying_domain(tmp_path, lambda d, lo, hi: remove(d, 3, lo, hi))
    stop_after(d)
    svc, led = service(d, tmp_path)
    try:
        run_rounds(svc, filed(svc), timeout=90)
        for e in epochs_of(*d.attack):
            assert results(svc)[e]["result"] == "violation", results(svc)[e]
        dispute, entry = verdict(svc, led)
        assert 3 not in entry["named_at_fault"] and 1 not in entry["named_at_fault"], entry
        assert 3 not in dispute.faulty and 1 not in dispute.faulty
        # only r2 and r3 witness the hop r2 -> r3: "r2 lies" and "r3 lies" both explain the
        # evidence with one liar, so neither is named (the Interrogation Protocol's rule); the
        # liar is not cleared either: its hop is ambiguous
        assert set(dispute.faulty) <= {2}, entry["verdicts"]
        assert entry["verdicts"]["2"] != "CONSISTENT", entry["verdicts"]
    finally:
        svc.close()
        led.close()


def test_first_hop_fabricating_traffic_frames_nobody_downstream(tmp_path, stop_after):
    """r1 (the ingress) anchors records and receipts of packets that never existed, forwarded to
    r2 by its records; r2 and r3 saw none. The monitor sees ingress without egress and disputes;
    the verdict must name neither r2 nor r3."""
    def fabricate(d, lo, hi):
        remove(d, 2, lo, hi)
        remove(d, 3, lo, hi)
    d = lying_domain(tmp_path, fabricate)
    stop_after(d)
    svc, led = service(d, tmp_path)
    try:
        run_rounds(svc, filed(svc), timeout=90)
        for e in epochs_of(*d.attack):
            r = results(svc)[e]
            assert r["result"] == "violation" and r["ingress"] == 1000 and r["egress"] == 0, r
        dispute, entry = verdict(svc, led)
        assert not {2, 3} & set(entry["named_at_fault"]), entry
        assert not {2, 3} & set(dispute.faulty)
        # only r1 and r2 witness the hop r1 -> r2: ambiguous, nobody named, the liar not cleared
        assert set(dispute.faulty) <= {1}, entry["verdicts"]
        assert entry["verdicts"]["1"] != "CONSISTENT", entry["verdicts"]
    finally:
        svc.close()
        led.close()


# -- an end of the route hides a loss -----------------------------------------------------------

def test_last_hop_covering_a_middle_drop_is_caught_by_the_sampled_interrogation(tmp_path,
                                                                                 stop_after):
    """r2 drops the attack's packets (its records say so: received from r1, never forwarded); r3,
    the egress, anchors records and receipts of them as if r2 had delivered them. The receipts of
    the two ends agree: the per-epoch monitor cannot see this loss (a design fact: it reads the
    route's ends only). The sampled interrogation of the window follows every packet: it names r2
    (its own records) and the service disputes that window; r1 (honest) is never named."""
    d = lying_domain(tmp_path, lambda d, lo, hi: remove(d, 2, lo, hi, to(3)))
    stop_after(d)
    svc, led = service(d, tmp_path, delay_sample_window_s=1, consecutive=2)
    try:
        last = epochs_of(*d.attack)[-1]
        run_rounds(svc, lambda: last in results(svc))
        for e in epochs_of(*d.attack):
            assert results(svc)[e]["result"] == "ok", results(svc)[e]   # hidden from the monitor
        assert led.disputes() == []
        lo = epochs_of(*d.attack)[1]
        s = sample_at(svc, 1, lo, lo + L - 1)
        assert 2 in s.faulty and 1 not in s.faulty, s.verdicts
        run_rounds(svc, filed(svc), timeout=90)
        dispute, entry = verdict(svc, led)
        assert (dispute.from_ns, dispute.to_ns) == (lo, lo + L - 1)
        assert 2 in dispute.faulty and 1 not in dispute.faulty, entry["verdicts"]
    finally:
        svc.close()
        led.close()


def test_first_hop_undercounting_its_ingress_is_caught_by_the_sampled_interrogation(tmp_path,
                                                                                    stop_after):
    """r2 drops every other packet of the attack (its records say so); r1, the ingress, records
    (and counts in its receipts) only the packets r2 delivered: the ends agree, the monitor sees
    no loss. The sampled interrogation does: r2 received packets from r1 that r1 says it never
    had, and dropped them."""
    def hide(d, lo, hi):
        odd = lambda f: _index(f) % 2 == 1            # noqa: E731
        remove(d, 2, lo, hi, lambda f: to(3)(f) and odd(f))
        remove(d, 3, lo, hi, odd)
        remove(d, 1, lo, hi, odd)
    d = lying_domain(tmp_path, hide)
    stop_after(d)
    svc, led = service(d, tmp_path, delay_sample_window_s=1)
    try:
        last = epochs_of(*d.attack)[-1]
        run_rounds(svc, lambda: last in results(svc))
        for e in epochs_of(*d.attack):
            r = results(svc)[e]
            assert r["result"] == "ok" and r["ingress"] == 500, r            # hidden
        lo = epochs_of(*d.attack)[1]
        s = sample_at(svc, 1, lo, lo + L - 1)
        assert 3 not in s.faulty, s.verdicts
        assert s.faulty, ("a lone liar (r1) hides r2's drop from every check of the service",
                          s.verdicts)
    finally:
        svc.close()
        led.close()


# -- a device answers the monitor what it wants ------------------------------------------------

def lie_in_answers(domain, node, receipts):
    """``node``'s interrogation server answers GetReceipts with ``receipts(honest, lo, hi, src,
    dst)`` (the device's own software changed: still signed with its key, over mutual TLS)."""
    ev = domain.servers[node].servicer.evidence
    honest = ev.receipts
    ev.receipts = lambda lo, hi, src, dst: receipts(honest, lo, hi, src, dst)
    return honest


def test_egress_withholding_its_receipts_names_no_honest_device(tmp_path, stop_after):
    """r2 drops the attack's packets; r3 (the egress) answers every receipts request without its
    receipts while anchoring: read as 0 packets (a violation, also in the healthy epochs). Every
    dispute this opens is decided by the interrogation: r1 is never named."""
    d = lying_domain(tmp_path, lambda d, lo, hi: remove(d, 3, lo, hi) or remove(d, 2, lo, hi,
                                                                                to(3)))
    stop_after(d)
    lie_in_answers(d, 3, lambda honest, lo, hi, src, dst: [])
    svc, led = service(d, tmp_path)
    try:
        run_rounds(svc, filed(svc), timeout=90)
        assert results(svc)[epochs_of(*d.healthy)[0]]["result"] == "violation"
        dispute, entry = verdict(svc, led)
        assert 1 not in dispute.faulty and 1 not in entry["named_at_fault"], entry
    finally:
        svc.close()
        led.close()


def test_ingress_withholding_every_other_epoch_does_not_hide_a_total_drop(tmp_path, stop_after):
    """S-3. r2 drops everything of the attack (3 epochs; its records say so). r1 (the ingress)
    answers the monitor without its receipt of every other epoch: read as 0 ingress, 0 egress,
    i.e. idle, which ends a streak -- violation, idle, violation: with consecutive = 2 no dispute,
    and nothing unknown to show the withholding. An honest tenant's violation hidden from the
    monitor by one liar (the sampled interrogation would still find r2, when sampling is on)."""
    d = lying_domain(tmp_path, lambda d, lo, hi: remove(d, 3, lo, hi) or remove(d, 2, lo, hi,
                                                                                to(3)))
    stop_after(d)
    attack = epochs_of(*d.attack)
    hidden = {attack[1]}

    def withhold(honest, lo, hi, src, dst):
        return [rc for rc in honest(lo, hi, src, dst) if rc.epoch_ns not in hidden]
    lie_in_answers(d, 1, withhold)
    svc, led = service(d, tmp_path)
    try:
        last = epochs_of(*d.after)[-1]
        run_rounds(svc, lambda: last in results(svc))
        res = results(svc)
        assert [res[e]["result"] for e in attack] == ["violation", "idle", "violation"], \
            [res[e] for e in attack]
        assert len(led.disputes()) == 1, "S-3: the violation is not disputed"
    finally:
        svc.close()
        led.close()


def test_withholding_forever_is_visible_in_metrics_api_and_logs(tmp_path, stop_after, caplog):
    """r3 (the egress) never answers (its server down) over 12 epochs: every epoch unknown, never
    a violation nor a dispute, and the run of unknown epochs is visible: the metric
    beat_gov_sla_unknown_run, the API's unknown_run and the log at 10 in a row."""
    import logging
    d = lying_domain(tmp_path, lambda d, lo, hi: None, healthy=6000, attack=6000, after=0)
    stop_after(d)
    d.servers[3].stop(0)
    svc, led = service(d, tmp_path)
    caplog.set_level(logging.INFO, logger="beatd.governance.service")
    try:
        last = epochs_of(*d.attack)[-1]
        run_rounds(svc, lambda: last in results(svc))
        st = svc.state.snapshot()["slas"]["1"]
        assert st["violations"] == 0 and led.disputes() == []
        assert st["unknown_run"] >= 12, st["unknown_run"]
        svc.start()
        base = f"http://127.0.0.1:{svc.http.port}"
        metrics = urllib.request.urlopen(base + "/metrics").read().decode()
        assert f'beat_gov_sla_unknown_run{{sla="1"}} {float(st["unknown_run"])}' in metrics
        sla = json.load(urllib.request.urlopen(base + "/api/v1/slas/1"))
        assert sla["monitor"]["unknown_run"] == st["unknown_run"]
        assert any("unknown in a row" in r.getMessage() for r in caplog.records)
    finally:
        svc.close()
        led.close()


# -- equivocation: a second anchored receipt ---------------------------------------------------

def anchor_receipt(d, node, epoch_ns, role, packets, nbytes, led=None):
    """``node`` anchors (with its own key, as its next batch) one more receipt of the SLA's flow
    for ``epoch_ns``: a single-leaf tree ``0x01 || R``. Returns the Receipt with its proof.
    ``led``: the ledger already open in this process (LMDB: one handle per process)."""
    import contextlib
    R = fastpath.receipt_value(H, node, role, SRC, DST, epoch_ns, packets, nbytes)
    leaf = b"\x01" + R
    with (contextlib.nullcontext(led) if led is not None else d.ledger()) as led:
        seq = led.next_batch_seq(node)
        prev = led.get_anchor(node, seq - 1)
        led.anchor(Anchor(node, seq, 1, merkle.root(H, [leaf]), epoch_ns,
                          max(prev.last_t_ns, epoch_ns + L - 1)), signer=d.keys[node])
    ref = AnchorRef(seq, 0, 1, tuple(merkle.inclusion_proof(H, [leaf], 0)))
    return Receipt(epoch_ns, role, SRC, DST, packets, nbytes, R, ref)


def _twice_domain(tmp, stop_after):
    """r2 drops every other packet of the attack; r3 (500 packets in each of its epochs) anchors
    a second egress receipt for the first attack epoch that counts every packet (hiding the loss
    in it)."""
    def half(d, lo, hi):
        odd = lambda f: _index(f) % 2 == 1            # noqa: E731
        remove(d, 3, lo, hi, odd)
        remove(d, 2, lo, hi, lambda f: to(3)(f) and odd(f))
    d = lying_domain(tmp, half)
    stop_after(d)
    e = epochs_of(*d.attack)[0]
    fake = anchor_receipt(d, 3, e, EGRESS, 1000, 1000 * 70)
    return d, e, fake


def test_two_anchored_receipts_for_one_epoch_in_one_answer_are_refused(tmp_path, stop_after):
    d, e, fake = _twice_domain(tmp_path, stop_after)
    real = lie_in_answers(d, 3, lambda honest, lo, hi, src, dst: sorted(
        honest(lo, hi, src, dst) + ([fake] if lo <= fake.epoch_ns <= hi and src == SRC else []),
        key=lambda rc: (rc.epoch_ns, rc.role)))
    assert [rc.packets for rc in real(e, e, SRC, DST) if rc.role == EGRESS] == [500]
    svc, led = service(d, tmp_path, consecutive=50, late_after_s=3600)
    try:
        run_rounds(svc, lambda: e in results(svc))
        r = results(svc)[e]
        assert r["result"] == "unknown" and r["egress"] is None, r
        # refused (two receipts of one key: "two receipts", or out of order: malformed)
        assert "egress refused" in " ".join(r["reasons"]), r
        assert svc.state.snapshot()["slas"]["1"]["refused_receipts"] >= 1
    finally:
        svc.close()
        led.close()


def test_another_anchored_receipt_to_the_monitor_than_to_the_interrogation(tmp_path,
                                                                           stop_after):
    """r3 answers the monitor with its second (inflated) receipt of epoch e and the interrogation
    with its first: the monitor counts the inflated one (it cannot know the other exists), the
    interrogation's receipts differ from those counted: an equivocation, reported."""
    d, e, fake = _twice_domain(tmp_path, stop_after)
    asked = []

    def two_faced(honest, lo, hi, src, dst):
        asked.append((lo, hi))
        got = honest(lo, hi, src, dst)
        if hi - lo < 10 * L:                 # the interrogation (a short window)
            return got
        return sorted([rc for rc in got if not (rc.epoch_ns == e and rc.role == EGRESS)]
                      + ([fake] if lo <= e <= hi and src == SRC else []),
                      key=lambda rc: (rc.epoch_ns, rc.role))
    lie_in_answers(d, 3, two_faced)
    svc, led = service(d, tmp_path, consecutive=50, late_after_s=3600, delay_sample_window_s=1)
    try:
        run_rounds(svc, lambda: epochs_of(*d.attack)[-1] in results(svc))
        assert results(svc)[e]["result"] == "ok" and results(svc)[e]["egress"] == 1000
        asked.clear()
        s = sample_at(svc, 1, e, e + L - 1)
        assert asked, "the sample asked r3 for its receipts"
        assert svc.state.snapshot()["slas"]["1"]["equivocations"] >= 1
        assert 1 not in s.faulty
    finally:
        svc.close()
        led.close()


def test_honest_devices_are_not_reported_as_equivocating(tmp_path, stop_after):
    """The omission check (S-4) against honest devices: every receipt the monitor counted is in
    what they give a sampled interrogation of two whole epochs: no equivocation reported."""
    d = lying_domain(tmp_path, lambda d, lo, hi: None)
    stop_after(d)
    svc, led = service(d, tmp_path, consecutive=50)
    try:
        run_rounds(svc, lambda: epochs_of(*d.attack)[-1] in results(svc))
        e = epochs_of(*d.attack)[0]
        assert results(svc)[e]["egress"] == 1000
        s = sample_at(svc, 1, e, e + 2 * L - 1)
        assert not s.faulty and not s.unreachable, s.verdicts
        assert svc.state.snapshot()["slas"]["1"]["equivocations"] == 0
    finally:
        svc.close()
        led.close()


def test_receipt_counted_by_the_monitor_withheld_from_the_interrogation(tmp_path, stop_after):
    """S-4. r3 answers the monitor with its inflated second receipt of epoch e and the
    interrogation with no receipt of e at all: the receipt the monitor counted is missing from
    what the device gives the interrogation -- an equivocation by omission, which the check
    (comparing only the receipts present in both) does not report."""
    d, e, fake = _twice_domain(tmp_path, stop_after)

    def two_faced(honest, lo, hi, src, dst):
        got = [rc for rc in honest(lo, hi, src, dst) if not (rc.epoch_ns == e and rc.role ==
                                                              EGRESS)]
        if hi - lo >= 10 * L and lo <= e <= hi and src == SRC:     # the monitor (long window)
            got.append(fake)
        return sorted(got, key=lambda rc: (rc.epoch_ns, rc.role))
    lie_in_answers(d, 3, two_faced)
    svc, led = service(d, tmp_path, consecutive=50, late_after_s=3600, delay_sample_window_s=1)
    try:
        run_rounds(svc, lambda: epochs_of(*d.attack)[-1] in results(svc))
        assert results(svc)[e]["egress"] == 1000
        sample_at(svc, 1, e, e + L - 1)
        assert svc.state.snapshot()["slas"]["1"]["equivocations"] >= 1, \
            "S-4: a counted receipt withheld from the interrogation is not reported"
    finally:
        svc.close()
        led.close()


# -- back-dating, late answers -----------------------------------------------------------------

def test_receipt_anchored_long_after_its_epoch_is_refused(tmp_path, stop_after):
    """r3 anchors, while the service watches, a receipt of an epoch ~25 s old (late_after_s 5):
    back-dated, refused, never counted."""
    d = lying_domain(tmp_path, lambda d, lo, hi: remove(d, 3, lo, hi) or remove(d, 2, lo, hi,
                                                                                to(3)))
    stop_after(d)
    e = epochs_of(*d.attack)[0]
    svc, led = service(d, tmp_path, consecutive=50, late_after_s=5)   # the watcher has polled
    try:
        fake = anchor_receipt(d, 3, e, EGRESS, 1000, 1000 * 70, led=led)
        lie_in_answers(d, 3, lambda honest, lo, hi, src, dst: sorted(
            honest(lo, hi, src, dst) + ([fake] if lo <= e <= hi and src == SRC else []),
            key=lambda rc: (rc.epoch_ns, rc.role)))
        run_rounds(svc, lambda: e in results(svc))
        r = results(svc)[e]
        assert r["result"] == "unknown" and r["egress"] is None, r
        assert "back-dated" in " ".join(r["reasons"]), r
    finally:
        svc.close()
        led.close()


def test_back_dated_receipt_anchored_while_the_service_was_down(tmp_path, stop_after):
    """S-5. The same back-dated anchor, written while the service was stopped: after its restart
    the batch has no first-seen time (kept in memory only) and the receipt is counted, although
    the ledger itself says when it took the anchor (Anchor.ledger_t_ns)."""
    d = lying_domain(tmp_path, lambda d, lo, hi: remove(d, 3, lo, hi) or remove(d, 2, lo, hi,
                                                                                to(3)))
    stop_after(d)
    e = epochs_of(*d.attack)[0]
    svc, led = service(d, tmp_path, consecutive=50, late_after_s=5)
    svc.close()
    led.close()
    fake = anchor_receipt(d, 3, e, EGRESS, 1000, 1000 * 70)       # the service is down
    lie_in_answers(d, 3, lambda honest, lo, hi, src, dst: sorted(
        honest(lo, hi, src, dst) + ([fake] if lo <= e <= hi and src == SRC else []),
        key=lambda rc: (rc.epoch_ns, rc.role)))
    svc, led = service(d, tmp_path, consecutive=50, late_after_s=5)   # restarted
    try:
        run_rounds(svc, lambda: e in results(svc))
        r = results(svc)[e]
        assert r["egress"] != 1000, ("S-5: a back-dated receipt anchored while the service was "
                                     "down is counted", r)
        assert "back-dated" in " ".join(r["reasons"]), r
    finally:
        svc.close()
        led.close()


def test_answers_after_an_epoch_was_evaluated_do_not_reopen_it(tmp_path, stop_after):
    """r3 unreachable while the attack's epochs are evaluated (unknown); it answers again
    afterwards (its receipts would show the loss): the epochs stay unknown, evaluated once, no
    dispute opened for them."""
    d = lying_domain(tmp_path, lambda d, lo, hi: remove(d, 3, lo, hi) or remove(d, 2, lo, hi,
                                                                                to(3)))
    stop_after(d)
    port = d.servers[3].port
    d.servers[3].stop(0)
    svc, led = service(d, tmp_path)
    try:
        last = epochs_of(*d.after)[-1]
        run_rounds(svc, lambda: last in results(svc))
        before = svc.state.snapshot(series=True)["slas"]["1"]
        from beatd.interrogation import InterrogationServer
        d.servers[3] = InterrogationServer(
            d.stores[3], d.keys[3], ca=d.pki / "ca.crt", cert=d.pki / "device-3.crt",
            private_key=d.pki / "device-3.key", listen=f"127.0.0.1:{port}",
            threshold_ns=3600 * 10**9).start()
        for _ in range(5):
            svc.watcher.poll_once()
            svc.round()
            for f in list(svc._jobs.values()):
                f.result(timeout=60)
        after = svc.state.snapshot(series=True)["slas"]["1"]
        assert after["series"][:len(before["series"])] == before["series"]
        assert after["epochs_evaluated"] >= before["epochs_evaluated"]
        assert all(r["result"] == "unknown" for r in before["series"]
                   if r["epoch_ns"] in epochs_of(*d.attack))
        assert led.disputes() == []
    finally:
        svc.close()
        led.close()


# -- flooding ----------------------------------------------------------------------------------

class Blackhole:
    """A TCP port that accepts connections and never answers (a device whose gRPC server hangs)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self):
        self._stop = True
        self.sock.close()
        for c in self.conns:
            c.close()


def test_a_device_that_hangs_does_not_hold_up_the_other_slas(tmp_path, stop_after):
    """S-6. SLA 1's egress r3 accepts connections and never answers; SLA 2 (route r1 -> r2,
    devices that answer) must be evaluated meanwhile: its epochs within a few seconds, not after
    r3's timeouts (10 s per request, two requests per round, every round)."""
    d = lying_domain(tmp_path, lambda d, lo, hi: None)
    stop_after(d)
    with d.ledger() as led:
        led.register_sla(SLA(2, "tenant-2", SRC, V4 + bytes([10, 2, 0, 9]), (1, 2)),
                         signer=d.gov)
    hole = Blackhole()
    cfg = d.config.read_text()
    d.config.write_text(cfg.replace(f'127.0.0.1:{d.servers[3].port}', f'127.0.0.1:{hole.port}'))
    svc, led = service(d, tmp_path, consecutive=1000)
    with svc.state.lock:
        svc.state.sla(2)["next_epoch"] = svc.state.sla(1)["next_epoch"]
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            svc.watcher.poll_once()
            svc.round()
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        last = epochs_of(*d.after)[-1]
        start = time.monotonic()

        def sla2_done():
            s = svc.state.snapshot(series=True)["slas"].get("2")
            return s is not None and any(r["epoch_ns"] == last for r in s["series"])
        while time.monotonic() - start < 6 and not sla2_done():
            time.sleep(0.1)
        assert sla2_done(), (f"S-6: SLA 2 not evaluated {time.monotonic() - start:.1f} s after "
                             "the start: one device hanging holds up every SLA")
    finally:
        stop.set()
        hole.close()
        t.join(timeout=30)
        svc.close()
        led.close()


def test_idle_http_connections_are_bounded(tmp_path, stop_after):
    """S-7. 200 connections to the metrics/API port that never send a request: the service must
    still answer, and hold a bounded number of threads and sockets for them (the 16-request cap
    applies only to requests whose headers have arrived)."""
    d = lying_domain(tmp_path, lambda d, lo, hi: None, healthy=1000, attack=1000, after=0)
    stop_after(d)
    svc, led = service(d, tmp_path)
    socks = []
    try:
        svc.start()
        before = threading.active_count()
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", svc.http.port))
            s.sendall(b"GET /metrics HTTP/1.1\r\n")        # never finished
            socks.append(s)
        time.sleep(1)
        h = json.load(urllib.request.urlopen(f"http://127.0.0.1:{svc.http.port}/api/v1/health",
                                             timeout=5))
        assert "ledger_up" in h
        grown = threading.active_count() - before
        assert grown <= 64, (f"S-7: {grown} threads held by {len(socks)} idle connections "
                             "(no read timeout, no connection cap)")
    finally:
        for s in socks:
            s.close()
        svc.close()
        led.close()


# -- the state file ----------------------------------------------------------------------------

@pytest.mark.parametrize("content", ["", '{"format": "beat-governance-service-state-v1", "sl',
                                     "[]", "null", "42"])
def test_state_file_damaged_is_a_clear_error(tmp_path, stop_after, content):
    """A truncated or damaged state.json: beatctl serve refuses to start (exit 2) with a message
    naming the file; nothing is opened on the ledger."""
    d = lying_domain(tmp_path, lambda d, lo, hi: None, healthy=1000, attack=1000, after=0)
    stop_after(d)
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text(content)
    cfg = tmp_path / "gov.toml"
    cfg.write_text(d.config.read_text() + f'\n[service]\nstate_dir = "{state}"\n'
                   'listen = "127.0.0.1:0"\n')
    code, out, err = d.beatctl("serve", "--config", cfg)
    assert code == 2, (code, err)
    assert str(state / "state.json") in err, err
    with d.ledger() as led:
        assert led.disputes() == []


def test_state_lost_then_restarted_does_not_open_the_dispute_again(tmp_path, stop_after):
    """A service files a dispute; its state is lost (moved away, as the error message says to
    start afresh) and it evaluates the same epochs again: the dispute of that window is found on
    the ledger and adopted, not opened a second time."""
    d = lying_domain(tmp_path, lambda d, lo, hi: remove(d, 3, lo, hi) or remove(d, 2, lo, hi,
                                                                                to(3)))
    stop_after(d)
    svc, led = service(d, tmp_path)
    try:
        run_rounds(svc, filed(svc), timeout=90)
    finally:
        svc.close()
        led.close()
    os.rename(tmp_path / "state", tmp_path / "state.lost")
    svc, led = service(d, tmp_path)
    try:
        last = epochs_of(*d.after)[-1]
        run_rounds(svc, lambda: last in results(svc) and filed(svc)(), timeout=90)
        assert len(led.disputes()) == 1, led.disputes()
    finally:
        svc.close()
        led.close()


# -- a decoy dispute -----------------------------------------------------------------------------

def test_decoy_dispute_does_not_hide_the_violation_that_follows(tmp_path, stop_after):
    """r1 and r2 collude (neighbours). r1 fabricates traffic for two epochs (records of packets
    forwarded to r2 that never existed): the monitor disputes that window, the interrogation finds
    the hop r1 -> r2 ambiguous and names nobody (the decoy costs them nothing). One epoch later
    r2 drops everything for two epochs (its records honest): that violation must be disputed."""
    d = Domain(tmp_path, LINKS)
    d.t = ((d.t0 // L) + 1) * L
    d.healthy = d.send((1, 2, 3), 2000, tag=1)
    decoy = d.send((1, 2, 3), 2000, tag=2)
    remove(d, 2, decoy[0], decoy[1] + 4 * HOP_NS)
    remove(d, 3, decoy[0], decoy[1] + 4 * HOP_NS)
    d.send((1, 2, 3), 1000, tag=3)
    drop = d.send((1, 2, 3), 2000, tag=4, drop_at=2)
    d.after = d.send((1, 2, 3), 1500, tag=5)
    d.start()
    stop_after(d)
    # the window that follows is queued for min_dispute_gap_s (3 s here) and then disputed
    svc, led = service(d, tmp_path, min_dispute_gap_s=3)
    try:
        last = epochs_of(*d.after)[-1]
        run_rounds(svc, lambda: last in results(svc) and filed(svc)()
                   and not svc.state.snapshot()["slas"]["1"].get("queued")
                   and all(e["state"] in ("filed", "not_judgeable")
                           for e in svc.state.snapshot()["disputes"].values()), timeout=90)
        for e in epochs_of(*drop):
            assert results(svc)[e]["result"] == "violation", results(svc)[e]
        first = led.disputes()[0]
        assert (first.from_ns, first.to_ns) == (epochs_of(*decoy)[0], epochs_of(*decoy)[-1] + L - 1)
        assert list(first.faulty) == []                     # the decoy: nobody named
        covered = [x for x in led.disputes() if x.from_ns <= epochs_of(*drop)[0] <= x.to_ns]
        assert covered, ("S-8: r2's drop is not disputed",
                         svc.state.snapshot()["slas"]["1"].get("suppressed"))
    finally:
        svc.close()
        led.close()


def test_dispute_kept_undecided_does_not_hide_the_later_violations(tmp_path, stop_after):
    """r2 drops the attack's 3 epochs and never answers the interrogation (its server down; the
    monitor asks only r1 and r3): the first dispute stays undecided; the next violating windows
    (consecutive = 1, min_dispute_gap_s = 0) must still be disputed, now or once it is decided."""
    d = lying_domain(tmp_path, lambda d, lo, hi: remove(d, 3, lo, hi) or remove(d, 2, lo, hi,
                                                                                to(3)))
    stop_after(d)
    d.servers[2].stop(0)
    # stuck_after_s: an undecided dispute stops holding up the next ones after that long
    svc, led = service(d, tmp_path, consecutive=1, min_dispute_gap_s=0, stuck_after_s=1)
    try:
        last = epochs_of(*d.after)[-1]
        run_rounds(svc, lambda: last in results(svc) and svc.state.snapshot()["disputes"]
                   and not svc.state.snapshot()["slas"]["1"].get("queued")
                   and all(e["state"] == "undecided"
                           for e in svc.state.snapshot()["disputes"].values()))
        attack = epochs_of(*d.attack)
        assert [results(svc)[e]["result"] for e in attack] == ["violation"] * 3
        covered = [e for e in attack if any(x.from_ns <= e <= x.to_ns for x in led.disputes())]
        assert covered == attack, ("S-9: violating epochs never disputed",
                                   sorted(set(attack) - set(covered)))
    finally:
        svc.close()
        led.close()


def test_an_answer_beyond_the_cap_is_refused_and_the_service_goes_on(tmp_path, stop_after):
    """r3 answers the monitor's receipts request with 50,000 receipts of the flow (a flood of
    chunks, ~12 chunks of 4,096): refused at max_receipts_bytes (64 KiB here) before it is all
    read; the epochs are unknown (never counted), and once r3 answers normally again the next
    epochs are evaluated from its real receipts."""
    d = lying_domain(tmp_path, lambda d, lo, hi: None)
    stop_after(d)
    flooding = [True]

    def flood(honest, lo, hi, src, dst):
        got = honest(lo, hi, src, dst)
        if not flooding[0] or not got:
            return got
        rc = got[0]
        return [dataclasses.replace(rc, epoch_ns=rc.epoch_ns + i) for i in range(50_000)]
    lie_in_answers(d, 3, flood)
    svc, led = service(d, tmp_path, max_receipts_bytes=64 << 10, consecutive=50)
    try:
        first = epochs_of(*d.healthy)[0]
        t = time.monotonic()
        run_rounds(svc, lambda: first in results(svc))
        took = time.monotonic() - t
        r = results(svc)[first]
        assert r["result"] == "unknown" and r["egress"] is None, r
        assert "max_answer_bytes" in " ".join(r["reasons"]), r
        assert took < 30, took
        assert svc.counters.fetch_errors[(1, 3)] >= 1
    finally:
        svc.close()
        led.close()


# -- two services (one per committee member, as the docs advise) --------------------------------

def test_two_services_racing_open_one_dispute_per_window(tmp_path, stop_after):
    """Two services (own state each) evaluate the same violating epochs at the same moment: each
    looks the window up on the ledger (none yet), then opens it. The interleaving two processes
    on two hosts meet is forced here (each waits for the other between the two steps)."""
    from governance.interrogate import load_config
    from governance.service.service import Service
    from governance.service.state import State
    from test_service_loopback import svc_config

    d = lying_domain(tmp_path, lambda d, lo, hi: remove(d, 3, lo, hi) or remove(d, 2, lo, hi,
                                                                                to(3)))
    stop_after(d)
    a, led = service(d, tmp_path / "a")
    cfg = svc_config(tmp_path / "b")
    b = Service(led, d.gov, cfg, load_config(str(d.config)), State(cfg.state_dir))
    with b.state.lock:
        b.state.sla(1)["next_epoch"] = a.state.sla(1)["next_epoch"]
    both = threading.Barrier(2)
    for svc in (a, b):
        find = svc.desk._find_on_ledger

        def looked_up(e, find=find):
            found = find(e)
            try:
                both.wait(timeout=10)
            except threading.BrokenBarrierError:
                pass
            return found
        svc.desk._find_on_ledger = looked_up
    try:
        last = epochs_of(*d.after)[-1]
        done = []
        threads = [threading.Thread(target=lambda s=s: (run_rounds(
            s, lambda: last in results(s) and filed(s)(), timeout=90), done.append(s)))
            for s in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert len(done) == 2
        # the ledger has no atomic look-up-and-open (nor a withdrawal): a duplicate opened in
        # the race may stay on it; exactly one dispute per window is pursued (the lowest id)
        by_window = {}
        for x in led.disputes():
            by_window.setdefault((x.sla_id, x.from_ns, x.to_ns), []).append(x)
        for w, ds in by_window.items():
            pursued = [x for x in ds if x.state != "opened"]
            assert len(pursued) == 1, ("S-10: one window pursued twice", w, ds)
            assert pursued[0].dispute_id == min(x.dispute_id for x in ds), ds
        for svc in (a, b):
            ids = {e["dispute_id"] for e in svc.state.snapshot()["disputes"].values()}
            assert ids <= {min(x.dispute_id for x in ds) for ds in by_window.values()}, ids
    finally:
        a.close()
        b.close()
        led.close()


def committee_of_two(tmp_path, stop_after, monkeypatch):
    """r2 drops the attack's packets; the committee is two members (d.gov and ``m2``), k = 2,
    both approving the registrations. Returns ``(domain, m2)``."""
    from ledger_client.keys import DeviceKey
    from ledger_client.local import LocalLedger
    from ledger_client.types import Committee, Member

    m2 = DeviceKey.generate()

    def rewrite(d, lo, hi):
        remove(d, 3, lo, hi)
        remove(d, 2, lo, hi, to(3))
        LocalLedger(d.ledger_path, hash_name=H, committee=Committee(
            (Member(d.gov.public), Member(m2.public)), 2)).close()
        for act in ("register_node", "register_link", "register_sla"):
            one = getattr(LocalLedger, act)

            def both(self, *args, one=one, signer, **kw):
                one(self, *args, signer=signer, **kw)
                return one(self, *args, signer=m2, **kw)        # member 2 approves
            monkeypatch.setattr(LocalLedger, act, both)
    d = lying_domain(tmp_path, rewrite)
    monkeypatch.undo()
    stop_after(d)
    return d, m2

def member_two_reading_member_one(d, m2, tmp_path, led, a, **kw):
    """Member 2's service, reading member 1's evidence archives (docs: peer_evidence, e.g. a
    read-only mount), starting at member 1's next epoch. ``kw``: more of its configuration."""
    from governance.interrogate import load_config
    from governance.service.service import Service
    from governance.service.state import State
    from test_service_loopback import svc_config
    cfg = svc_config(tmp_path / "m2", peer_evidence=(str(tmp_path / "m1" / "state" / "evidence"),),
                     **kw)
    b = Service(led, m2, cfg, load_config(str(d.config)), State(cfg.state_dir))
    with b.state.lock:
        b.state.sla(1)["next_epoch"] = a.state.sla(1)["next_epoch"]
    return b



def test_two_members_services_decide_a_dispute_together(tmp_path, stop_after, monkeypatch):
    """A committee of two members, k = 2, each running its own service (docs: one per member).
    Member 1's service disputes r2's drop; member 2's service finds that dispute on the ledger
    (same window: adopted), interrogates it and files its approval: the dispute must be decided
    (both name r2 on the same evidence), without anyone running beatctl decide by hand."""
    d, m2 = committee_of_two(tmp_path, stop_after, monkeypatch)
    a, led = service(d, tmp_path / "m1", min_dispute_gap_s=0)
    b = member_two_reading_member_one(d, m2, tmp_path, led, a)
    try:
        last = epochs_of(*d.after)[-1]
        run_rounds(a, lambda: last in results(a) and filed(a)(), timeout=90)
        run_rounds(b, lambda: last in results(b) and filed(b)(), timeout=90)
        disputes = led.disputes()
        assert len(disputes) == 1, disputes
        assert disputes[0].state in ("decided", "settled"), (
            "S-11: two members' services, one dispute, not decided",
            [(str(v.member)[:8], bytes(v.evidence_digest).hex()[:8], v.dissent)
             for v in led.dispute_votes(disputes[0].dispute_id)])
        assert list(disputes[0].faulty) == [2]
    finally:
        a.close()
        b.close()
        led.close()


@pytest.mark.parametrize("lie", ["verdict", "faulty"])
def test_a_member_lying_about_its_archive_does_not_get_its_content_approved(
        tmp_path, stop_after, monkeypatch, lie):
    """S-11's safety: member 1's service files, for its genuine archive, an approval that names
    the honest r1 (``faulty``: the archive's verdict digest, faulty [1]; ``verdict``: another
    verdict digest too). Member 2's service reads that archive (peer_evidence), judges it again
    and never approves member 1's content: r1 is never named, the dispute stays undecided with
    two different contents (member 2's names r2, from its own judgement)."""
    import hashlib

    d, m2 = committee_of_two(tmp_path, stop_after, monkeypatch)
    a, led = service(d, tmp_path / "m1", min_dispute_gap_s=0)
    honest_file = a.desk._file

    def lying_file(e):
        e["faulty"] = [1]
        if lie == "verdict":
            e["verdict_digest"] = hashlib.sha3_256(b"another verdict").hexdigest()
        return honest_file(e)
    a.desk._file = lying_file
    # member 1's archive is there before member 2 starts (member 1 filed): member 2 waits
    # peer_wait_s for an archive it can approve, 2 s here instead of the default 30 s
    b = member_two_reading_member_one(d, m2, tmp_path, led, a, peer_wait_s=2)
    try:
        last = epochs_of(*d.after)[-1]
        run_rounds(a, lambda: last in results(a) and filed(a)(), timeout=90)
        run_rounds(b, lambda: last in results(b) and filed(b)(), timeout=90)
        disputes = led.disputes()
        assert len(disputes) == 1, disputes
        assert disputes[0].state == "opened", disputes[0]
        assert 1 not in (disputes[0].faulty or ())
        (entry,) = b.state.snapshot()["disputes"].values()
        assert entry["faulty"] == [2] and 1 not in entry["named_at_fault"], entry
        assert len(led.dispute_votes(disputes[0].dispute_id)) == 2     # two contents: opened
        if lie == "verdict":      # the verdict does not match the archive: its own interrogation
            assert entry.get("evidence_source") is None, entry
        else:                     # the same archive and verdict, its own faulty devices
            assert entry.get("evidence_source"), entry
    finally:
        a.close()
        b.close()
        led.close()
