"""Equivocation between the two ways a device is asked for its receipts: the monitor's batched
request (kind 7, every flow of the device's SLAs at once) and the interrogation's per-flow
request (kind 3). A device with two anchored receipts of one (flow, epoch, role) gives the
monitor one and the interrogation the other (or none): the monitor cannot know (it counts what
is anchored), the sampled interrogation of the window must report it (the service's omission and
R checks, S-4) and must not name the honest device.
"""
import contextlib

import fastpath
from beat_rpc.evidence import AnchorRef, Receipt
from ledger_client import merkle
from ledger_client.types import Anchor
from adv_batch_domain import (H, L, Liar, addr, batch_domain, epochs_of, results,
                                   run_rounds, service, stop_after)  # noqa: F401
from test_adv_batch_answers import ev_key
from test_service_attacks import sample_at


def anchor_receipt(d, node, src, dst, epoch_ns, role, packets, nbytes):
    """Router ``node`` anchors (its next batch, its own key) one more receipt of (src, dst) for
    ``epoch_ns``; returns it with its proof."""
    R = fastpath.receipt_value(H, node, role, src, dst, epoch_ns, packets, nbytes)
    leaf = b"\x01" + R
    with contextlib.closing(d.ledger()) as led:
        seq = led.next_batch_seq(node)
        prev = led.get_anchor(node, seq - 1)
        led.anchor(Anchor(node, seq, 1, merkle.root(H, [leaf]), epoch_ns,
                          max(prev.last_t_ns, epoch_ns + L - 1)), signer=d.keys[node])
    return Receipt(epoch_ns, role, src, dst, packets, nbytes, R,
                   AnchorRef(seq, 0, 1, tuple(merkle.inclusion_proof(H, [leaf], 0))))


def test_a_receipt_given_to_the_batch_only_is_reported_by_the_sampled_interrogation(tmp_path,
                                                                                   stop_after):
    """Router 2 drops flow B (its records say so). Router 3 anchors a second egress receipt of
    flow B for the first dropped epoch counting every packet, and slips it into its batched
    answers only: the monitor counts it (SLA 2 reads ok in that epoch, hidden). The sampled
    interrogation of that epoch asks router 3 per flow and gets no receipt of it: the omission is
    reported as an equivocation, the interrogation names router 2 (the drop), not router 1."""
    d = batch_domain(tmp_path)
    stop_after(d)
    e = epochs_of(*d.dropped)[0]
    b_src, b_dst = addr("B")
    fake = anchor_receipt(d, 3, b_src, b_dst, e, 2, 1000, 1000 * 72)
    lr = Liar(d, 3)

    def items(batched, Q, got):
        if not batched or not any((rc.src, rc.dst) == (b_src, b_dst) for rc in got):
            return got
        return sorted(got + [fake], key=ev_key)
    lr.items = items
    svc, led = service(d, tmp_path, consecutive=50, late_after_s=3600, delay_sample_window_s=1)
    try:
        run_rounds(svc, lambda: e in results(svc, 2), timeout=90)
        assert any(batched for batched, _, _ in lr.asked), "the monitor asked router 3 per flow"
        r = results(svc, 2)[e]
        assert r["result"] == "ok" and r["egress"] == 1000, r          # the monitor fooled
        s = sample_at(svc, 2, e, e + L - 1)
        assert svc.state.snapshot()["slas"]["2"]["equivocations"] >= 1
        assert 2 in s.faulty and 1 not in s.faulty, s.verdicts
        assert svc.state.snapshot()["slas"]["1"]["equivocations"] == 0
    finally:
        lr.restore()
        svc.close()
        led.close()
