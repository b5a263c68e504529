"""The batched receipts request against devices that lie in their answer to it (the monitor's
side: what each SLA reads). One domain for the module (adv_batch_domain.py: SLAs 1, 2, 3;
router 2 drops flow B in the middle phase), a fresh service state per test, consecutive high
enough that the monitor opens no dispute: what is asserted is each SLA's reading of each epoch.

The rules: a receipt that is not acceptable is refused (unknown, reported), never counted and
never read as absent (0 packets) -- in its own SLA; a liar's answer never changes what another
SLA reads beyond "unknown" for the liar's own SLAs; an SLA whose ends are honest reads the truth
whatever a third device answers.
"""
import dataclasses
import os

import pytest

import fastpath
from beat_rpc import evidence as ev
from adv_batch_domain import liar  # noqa: F401 (the fixture)
from adv_batch_domain import (H, Liar, addr, batch_domain, epochs_of, evaluated, results,
                                   run_rounds, service)

A_SRC, A_DST = addr("A")
B_SRC, B_DST = addr("B")


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    d = batch_domain(tmp_path_factory.mktemp("adv-batch"))
    yield d
    d.stop()



def evaluate_all(domain, tmp_path, **kw):
    """The service run until every SLA evaluated the last epoch; returns it (closed)."""
    kw.setdefault("consecutive", 50)
    svc, led = service(domain, tmp_path, **kw)
    try:
        run_rounds(svc, evaluated(svc, epochs_of(*domain.after)[-1]), timeout=90)
    finally:
        svc.close()
        led.close()
    return svc


def truth(domain, sla, e):
    """What an honest domain reads: (result, ingress, egress)."""
    if sla == 2 and e in epochs_of(*domain.dropped):
        return ("violation", 1000, 0)
    return ("ok", 1000, 1000)


def assert_truth(svc, domain, slas, epochs=None):
    epochs = epochs or epochs_of(domain.healthy[0], domain.after[1])
    for s in slas:
        res = results(svc, s)
        for e in epochs:
            r = res[e]
            assert (r["result"], r["ingress"], r["egress"]) == truth(domain, s, e), (s, e, r)


def never_violated_falsely(svc, domain, slas):
    """No epoch of these SLAs reads a violation the honest domain does not have."""
    for s in slas:
        for e, r in results(svc, s).items():
            if r["result"] == "violation":
                assert truth(domain, s, e)[0] == "violation", (s, e, r)


def refused(r, end):
    return r["result"] == "unknown" and f"{end} refused" in " ".join(r["reasons"])


# -- the honest batch, cut into chunks any way, reads as the per-flow requests ------------------

@pytest.mark.parametrize("cut", ["one-per-chunk", "empty-chunks-between", "one-chunk"])
def test_an_honest_answer_cut_oddly_reads_the_truth(domain, tmp_path, liar, cut):
    """Router 1 (the ingress of every SLA) and router 3 cut their honest answers into chunks of
    one receipt, with empty chunks between, or all in one: every SLA reads the truth (a device's
    chunking is its own business, the order across chunks is what counts)."""
    def chunks(items):
        if cut == "one-per-chunk":
            return [[rc] for rc in items] or [[]]
        if cut == "empty-chunks-between":
            return [g for rc in items for g in ([rc], [])] or [[]]
        return [items]
    for n in (1, 3):
        liar(n).chunks = chunks
    svc = evaluate_all(domain, tmp_path)
    assert_truth(svc, domain, (1, 2, 3))


# -- not acceptable: refused in its SLA, never read as absent ----------------------------------

@pytest.mark.parametrize("how", ["packets", "packets-and-R"])
def test_a_tampered_receipt_of_one_flow_is_refused_in_its_sla(domain, tmp_path, liar, how):
    """Router 3 raises the packets of its flow-A egress receipt of one healthy epoch (R left: R
    does not match; or R recomputed: not in its anchor). SLA 1 reads that epoch refused (unknown,
    reported), not 0 packets (a violation) nor the raised count; SLA 2 (flow B, the same answer)
    and SLA 3 read the truth in every epoch."""
    e = epochs_of(*domain.healthy)[0]

    def items(batched, Q, got):
        out = []
        for rc in got:
            if (rc.src, rc.dst, rc.epoch_ns, rc.role) == (A_SRC, A_DST, e, 2):
                rc = dataclasses.replace(rc, packets=rc.packets + 500)
                if how == "packets-and-R":
                    rc = dataclasses.replace(rc, R=fastpath.receipt_value(
                        H, 3, rc.role, rc.src, rc.dst, rc.epoch_ns, rc.packets, rc.bytes))
            out.append(rc)
        return out
    liar(3).items = items
    svc = evaluate_all(domain, tmp_path)
    r = results(svc, 1)[e]
    assert refused(r, "egress") and "tampered" in " ".join(r["reasons"]), r
    assert svc.state.snapshot()["slas"]["1"]["refused_receipts"] >= 1
    others = [x for x in epochs_of(domain.healthy[0], domain.after[1]) if x != e]
    assert_truth(svc, domain, (1,), others)
    assert_truth(svc, domain, (2, 3))
    assert svc.state.snapshot()["slas"]["2"]["refused_receipts"] == 0


def test_a_receipt_of_a_flow_not_asked_refuses_the_answer_never_a_violation(domain, tmp_path,
                                                                          liar):
    """Router 3 slips into its answer a receipt of a flow it was not asked for (flow A's receipt
    relabelled 10.9.9.9 -> 10.2.0.1, R recomputed): the answer is refused (the liar's SLAs 1 and
    2 unknown, never a violation nor counted); SLA 3 (ends 1 and 2) reads the truth."""
    other = bytes(10) + b"\xff\xff" + bytes([10, 9, 9, 9])

    def items(batched, Q, got):
        extra = [dataclasses.replace(rc, src=other, R=fastpath.receipt_value(
            H, 3, rc.role, other, rc.dst, rc.epoch_ns, rc.packets, rc.bytes))
            for rc in got if (rc.src, rc.dst) == (A_SRC, A_DST)]
        return sorted(got + extra, key=ev_key)
    lr = liar(3)
    lr.items = items
    svc = evaluate_all(domain, tmp_path)
    batched = any(b for b, _, _ in lr.asked)
    for s in (1, 2) if batched else (1,):          # (one flow per answer: flow B's has no A)
        for e, r in results(svc, s).items():
            assert refused(r, "egress") and r["egress"] is None, (s, e, r)
    if not batched:
        assert_truth(svc, domain, (2,))
    assert_truth(svc, domain, (3,))


def ev_key(rc):
    return (bytes(rc.src), bytes(rc.dst), rc.epoch_ns, rc.role)


@pytest.mark.parametrize("how", ["duplicate", "reversed-flows", "reversed-epochs",
                                 "second-receipt-of-a-key", "flow-again-in-a-later-chunk"])
def test_duplicates_and_disorder_refuse_the_answer(domain, tmp_path, liar, how):
    """Router 3 answers with one receipt twice (in a chunk of its own: the order check across
    chunks), its flows in reverse order, one flow's epochs in reverse, a second receipt of one
    (flow, epoch, role) with another count, or flow A's receipts split around flow B's across
    chunks (each chunk in order by itself): refused (SLAs 1 and 2 unknown in the epochs it
    touches or all, never a violation the domain does not have, never the other count)."""
    e = epochs_of(*domain.healthy)[0]

    def items(batched, Q, got):
        if how == "duplicate":
            return got
        if how == "reversed-flows":
            flows = sorted({(rc.src, rc.dst) for rc in got}, reverse=True)
            return [rc for f in flows for rc in got if (rc.src, rc.dst) == f]
        if how == "reversed-epochs":
            a = [rc for rc in got if (rc.src, rc.dst) == (A_SRC, A_DST)]
            return [rc for rc in got if rc not in a] + a[::-1] if len(a) > 1 else got
        out = []
        for rc in got:
            out.append(rc)
            if (rc.src, rc.dst, rc.epoch_ns, rc.role) == (A_SRC, A_DST, e, 2):
                out.append(dataclasses.replace(rc, packets=rc.packets + 1))
        return out

    def chunks(items):
        if how == "flow-again-in-a-later-chunk":
            # A's receipts up to e, then B's, then A's after e (each chunk in order by itself)
            a = [rc for rc in items if (rc.src, rc.dst) == (A_SRC, A_DST)]
            rest = [rc for rc in items if (rc.src, rc.dst) != (A_SRC, A_DST)]
            k = next((i for i, rc in enumerate(a) if rc.epoch_ns > e), len(a))
            return [a[:k], rest, a[k:]] if rest else [items]
        if how != "duplicate":
            return [items]
        i = next((k for k, rc in enumerate(items) if ev_key(rc)[:3] == (A_SRC, A_DST, e)), None)
        if i is None:
            return [items]
        return [items[:i + 1], items[i:]]
    lr = liar(3)
    lr.items, lr.chunks = items, chunks
    svc = evaluate_all(domain, tmp_path)
    never_violated_falsely(svc, domain, (1, 2))
    r = results(svc, 1)[e]
    if how not in ("reversed-flows", "flow-again-in-a-later-chunk") or \
            any(batched for batched, _, _ in lr.asked):
        assert refused(r, "egress"), r            # (one flow per answer: nothing to reverse)
    assert_truth(svc, domain, (3,))


def test_a_replayed_answer_is_refused(domain, tmp_path, liar):
    """Router 3 answers every request with the signed answer of another request (the Q of the
    one before: another nonce, and for the first another flow set): refused as replayed, SLAs
    1 and 2 unknown, never a violation; SLA 3 the truth."""
    seen = [ev.request_digest(H, ev.KIND_RECEIPTS, 0, 1, (), A_SRC, A_DST, os.urandom(16))]

    def replay(batched, Q):
        seen.append(Q)
        return seen[-2]
    liar(3).Q = replay
    svc = evaluate_all(domain, tmp_path)
    for s in (1, 2):
        for e, r in results(svc, s).items():
            assert refused(r, "egress"), (s, e, r)
            assert "replayed" in " ".join(r["reasons"]), r
    assert_truth(svc, domain, (3,))


def test_an_answer_beyond_the_size_cap_refuses_the_liars_slas_only(domain, tmp_path, liar):
    """Router 3 floods its answer: flow A's receipts padded with receipts of epochs between the
    epochs (any epoch_ns in the window is one), past the monitor's cap (max_receipts_bytes):
    refused, SLAs 1 and 2 unknown; router 1's and router 2's answers are their own (SLA 3 reads
    the truth)."""
    def items(batched, Q, got):
        a = [rc for rc in got if (rc.src, rc.dst) == (A_SRC, A_DST)]
        if not a:
            return got
        pad = [dataclasses.replace(a[0], epoch_ns=a[0].epoch_ns + k) for k in range(1, 12_000)]
        return sorted(got + pad, key=ev_key)
    lr = liar(3)
    lr.items = items
    svc = evaluate_all(domain, tmp_path, max_receipts_bytes=1 << 20)
    batched = any(b for b, _, _ in lr.asked)
    for s in (1, 2) if batched else (1,):          # (one flow per answer: flow B's is small)
        for e, r in results(svc, s).items():
            assert refused(r, "egress"), (s, e, r)
            assert "max_answer_bytes" in " ".join(r["reasons"]), r
    if not batched:
        assert_truth(svc, domain, (2,))
    assert_truth(svc, domain, (3,))


def test_a_flood_the_per_flow_answers_could_not_carry_is_refused_in_the_batch(domain, tmp_path,
                                                                            liar):
    """Router 3 (the last device of SLAs 1 and 2: its batch names flows A, B and the overflow
    one) pads flow A's receipts to twice the monitor's cap (max_receipts_bytes 1 MiB): under the
    cap times the flows named (3 MiB), far over anything an honest device holds for the window
    (two receipts a flow and epoch). Refused (SLAs 1 and 2 unknown, "max_answer_bytes"): what a
    device may make the service hold for one round is bounded by what an honest answer can be,
    not by the cap times its SLAs (256 flows a request at 4 MiB each: 1 GiB on the wire, ~3.2 GiB
    decoded, held for the round, from one device that is an end of 255 SLAs)."""
    cap = 1 << 20

    def items(batched, Q, got):
        a = [rc for rc in got if (rc.src, rc.dst) == (A_SRC, A_DST)]
        if not a:
            return got
        one = len(ev.encode_chunk(ev.KIND_RECEIPTS, 3, bytes(32), 0, True, 0, [a[0]])) - \
            ev.HEADER_SIZE
        pad = [dataclasses.replace(a[0], epoch_ns=a[0].epoch_ns + k)
               for k in range(1, 2 * cap // one)]
        return sorted(got + pad, key=ev_key)
    lr = liar(3)
    lr.items = items
    svc = evaluate_all(domain, tmp_path, max_receipts_bytes=cap)
    assert any(b for b, _, _ in lr.asked), "router 3 was asked per flow"
    for s in (1, 2):
        for e, r in results(svc, s).items():
            assert refused(r, "egress"), (s, e, r)
            assert "max_answer_bytes" in " ".join(r["reasons"]), r
    assert_truth(svc, domain, (3,))
