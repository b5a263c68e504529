"""The batched receipts request: the per-flow fallback, a device slow on purpose, the round's
window union, and the answer cap of an honest device asked for many flows at once
(adv_batch_domain.py; one domain for the module, a fresh service state per test, no dispute:
consecutive high).
"""
import dataclasses

import grpc
import pytest

from beat_rpc import evidence as ev
from test_adv_batch_answers import A_DST, A_SRC, assert_truth, evaluate_all, ev_key, refused
from adv_batch_domain import liar  # noqa: F401 (the fixture)
from adv_batch_domain import (L, Liar, addr, batch_domain, epochs_of, evaluated, results,
                                   run_rounds, service)

from governance.service.monitor import OVERFLOW


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    d = batch_domain(tmp_path_factory.mktemp("adv-batch-paths"))
    yield d
    d.stop()



# -- the fallback ---------------------------------------------------------------------------------

def test_a_device_refusing_the_batch_as_a_former_one_is_asked_per_flow(domain, tmp_path, liar):
    """Router 3 refuses every request naming several flows as a device of the former protocol
    would (INVALID_ARGUMENT on src): it is asked one flow at a time, every SLA reads the truth."""
    lr = liar(3)
    lr.refuse_batch = (grpc.StatusCode.INVALID_ARGUMENT, "src: b'' is not 16 bytes")
    svc = evaluate_all(domain, tmp_path)
    assert_truth(svc, domain, (1, 2, 3))
    assert lr.asked and not any(b for b, _, _ in lr.asked), lr.asked


def test_a_device_refusing_the_batch_otherwise_is_unknown_never_a_violation(domain, tmp_path,
                                                                             liar):
    """Router 3 refuses every request naming several flows with another error (PERMISSION_DENIED):
    not asked again per flow (it is not a former device), its SLAs 1 and 2 unknown (the drop of
    flow B hidden as unknown, never a violation of anyone), SLA 3 the truth."""
    lr = liar(3)
    lr.refuse_batch = (grpc.StatusCode.PERMISSION_DENIED, "no")
    svc = evaluate_all(domain, tmp_path)
    for s in (1, 2):
        for e, r in results(svc, s).items():
            assert r["result"] == "unknown", (s, e, r)
            assert "egress unreachable" in " ".join(r["reasons"]), (s, e, r)
    assert_truth(svc, domain, (3,))


def test_the_fallback_answers_are_checked_as_the_batch(domain, tmp_path, liar):
    """Router 3 refuses the batch as a former device, then tampers with flow A's receipt of one
    epoch in its per-flow answer: refused in SLA 1 (not read as 0 packets), SLA 2 the truth."""
    e = epochs_of(*domain.healthy)[0]
    lr = liar(3)
    lr.refuse_batch = (grpc.StatusCode.UNIMPLEMENTED, "GetReceipts with flows")

    def items(batched, Q, got):
        return [dataclasses.replace(rc, packets=rc.packets + 7)
                if (rc.src, rc.dst, rc.epoch_ns, rc.role) == (A_SRC, A_DST, e, 2) else rc
                for rc in got]
    lr.items = items
    svc = evaluate_all(domain, tmp_path)
    assert refused(results(svc, 1)[e], "egress"), results(svc, 1)[e]
    assert_truth(svc, domain, (2, 3))


# -- slow on purpose ------------------------------------------------------------------------------

@pytest.mark.parametrize("node,liars_slas,others", [(3, (1, 2), (3,)), (2, (3,), (1, 2))])
def test_a_slow_device_makes_its_own_slas_unknown_only(domain, tmp_path, liar, node, liars_slas,
                                                      others):
    """A device answers every receipts request after the governance's timeout: every SLA it is
    an end of reads unknown (never a violation: SLA 2's drop hidden as unknown when router 3 is
    the slow one), the SLAs it is not an end of read the truth."""
    lr = liar(node)
    lr.delay_s = 2.5
    svc, led = service(domain, tmp_path, consecutive=50)
    svc.gov = dataclasses.replace(svc.gov, timeout_s=1.0)
    try:
        run_rounds(svc, evaluated(svc, epochs_of(*domain.after)[-1]), timeout=120)
    finally:
        svc.close()
        led.close()
    for s in liars_slas:
        for e, r in results(svc, s).items():
            assert r["result"] == "unknown", (s, e, r)
            assert "unreachable" in " ".join(r["reasons"]), r
    assert_truth(svc, domain, others)


# -- the round's window ---------------------------------------------------------------------------

def test_an_sla_starting_later_reads_no_epoch_before_its_start(domain, tmp_path):
    """SLA 3 starts at the drop (its next epoch there: registered later, or backfilled less)
    while SLAs 1 and 2 start at the first healthy epoch; router 1 is the first device of all
    three (one answer for their union): SLA 3 reads no epoch before its start, every SLA the
    truth."""
    start3 = epochs_of(*domain.dropped)[0]
    svc, led = service(domain, tmp_path, consecutive=50)
    with svc.state.lock:
        svc.state.sla(3)["next_epoch"] = start3
    try:
        run_rounds(svc, evaluated(svc, epochs_of(*domain.after)[-1]), timeout=90)
    finally:
        svc.close()
        led.close()
    assert min(results(svc, 3)) == start3, sorted(results(svc, 3))[:3]
    assert_truth(svc, domain, (3,), epochs_of(start3, domain.after[1]))
    assert_truth(svc, domain, (1, 2))


# -- the answer cap and an honest device ----------------------------------------------------------

def _answer_bytes(domain, node, lo, hi, flows):
    """The bytes of router ``node``'s honest answer for ``flows`` in [lo, hi] (its chunk bodies),
    as the server would send it."""
    store = domain.servers[node].servicer.evidence
    got = []
    for src, dst in flows:
        got += store.receipts(lo, hi, src, dst)
    got.sort(key=ev_key)
    return len(ev.encode_chunk(ev.KIND_RECEIPTS, node, bytes(32), 0, True, 0, got))


def test_an_honest_device_asked_for_many_flows_is_not_refused_for_its_answers_size(domain,
                                                                                   tmp_path):
    """The monitor's cap on one answer (max_receipts_bytes) is set above every per-flow answer of
    router 1 but below their sum: router 1 (honest, the first device of every SLA) answering
    every flow asked at once must not be refused for it (its SLAs unknown, "receipt refused"
    reported against an honest device): every SLA reads the truth, nothing refused."""
    lo, hi = epochs_of(*domain.healthy)[0], epochs_of(*domain.after)[-1]
    flows = [addr(f) for f in "ABC"] + [(OVERFLOW, OVERFLOW)]
    per_flow = max(_answer_bytes(domain, 1, lo, hi, [f]) for f in flows)
    total = _answer_bytes(domain, 1, lo, hi, flows)
    assert total > per_flow + 1024, (per_flow, total)
    svc = evaluate_all(domain, tmp_path, max_receipts_bytes=per_flow + 512)
    assert_truth(svc, domain, (1, 2, 3))
    for s in (1, 2, 3):
        assert svc.state.snapshot()["slas"][str(s)]["refused_receipts"] == 0


def test_an_honest_device_with_fewer_max_flows_than_asked_is_not_made_unknown(domain, tmp_path):
    """Router 1 (honest) takes at most 2 flows a request (its interrogation.max_flows; the
    default is 256, a device may lower it) and is the first device of 3 SLAs (4 flows with the
    overflow one): it refuses the 4-flow request for what it is (INVALID_ARGUMENT on flows), and
    that must not leave every SLA of an honest device unknown: every SLA reads the truth."""
    limits = domain.servers[1].servicer.limits
    was = limits.max_flows
    limits.max_flows = 2
    try:
        svc = evaluate_all(domain, tmp_path)
    finally:
        limits.max_flows = was
    assert_truth(svc, domain, (1, 2, 3))


@pytest.mark.parametrize("n_flows,epochs", [(1, 1), (3, 7), (256, 1), (256, 120)])
def test_the_held_answer_cap_admits_every_honest_answer(n_flows, epochs):
    """``held_answer_cap``: an honest device's largest answer for ``n_flows`` flows and
    ``epochs`` epochs (two receipts a flow and epoch, each with a 32-hash inclusion path, in
    chunks of RECEIPTS_PER_CHUNK) fits; the cap stays within max_receipts_bytes a flow and, at
    256 flows, far below it (a liar's flood of 4 MiB a flow is refused)."""
    from beatd.interrogation import RECEIPTS_PER_CHUNK
    from governance.service.service import held_answer_cap
    rc = ev.Receipt(10**18, 2, bytes(16), bytes(16), 1, 1, bytes(32),
                    ev.AnchorRef(1, 0, 1 << 32, tuple(bytes(32) for _ in range(32))))
    one = len(ev.encode_chunk(ev.KIND_RECEIPTS, 1, bytes(32), 0, True, 0, [rc])) - ev.HEADER_SIZE
    n = n_flows * 2 * epochs
    honest = n * one + ev.HEADER_SIZE * (n // RECEIPTS_PER_CHUNK + 1)
    cap4 = 4 << 20
    got = held_answer_cap(cap4, n_flows, 0, (epochs - 1) * L, L)
    assert honest <= got <= cap4 * n_flows, (honest, got)
    if n_flows == 256:
        assert got < cap4 * n_flows // 2, got
