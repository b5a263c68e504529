"""The batched receipts request up to the verdict: a device that withholds one flow's receipts
from its batched answer, and the two ends of an SLA colluding against its honest middle device
(adv_batch_domain.py; a domain of their own each: the disputes land on its ledger). What is
asserted: the monitor reads the withholding as it reads withholding (0 packets, the flow's own
SLA only), and the dispute it opens never names an honest device.
"""
from adv_batch_domain import (Liar, addr, batch_domain, epochs_of, evaluated, of_flow,
                                   remove, results, run_rounds, service, stop_after)  # noqa: F401


def decided(svc, led):
    return lambda: led.disputes() and all(
        e["state"] in ("filed", "not_judgeable")
        for e in svc.state.snapshot()["disputes"].values())


def test_withholding_one_flow_from_the_batch_names_no_honest_device(tmp_path, stop_after):
    """Nobody drops anything. Router 3 (the last device of SLAs 1 and 2) answers without its
    receipts of flow B (a lone liar, honest neighbours): SLA 2 reads 0 packets at the egress (a
    violation, as withholding reads), SLA 1 (flow A, the same answer) and SLA 3 the truth; the
    dispute of SLA 2 names neither router 1 nor router 2."""
    d = batch_domain(tmp_path, healthy=4000, dropped=0, after=1500)
    stop_after(d)
    b = addr("B")
    lr = Liar(d, 3)
    lr.items = lambda batched, Q, got: [rc for rc in got if (rc.src, rc.dst) != b]
    svc, led = service(d, tmp_path, consecutive=2)
    try:
        run_rounds(svc, lambda: evaluated(svc, epochs_of(*d.after)[-1])() and
                   decided(svc, led)(), timeout=120)
        for e in epochs_of(*d.healthy):
            r2 = results(svc, 2)[e]
            assert r2["result"] == "violation" and (r2["ingress"], r2["egress"]) == (1000, 0), \
                r2["reasons"]
            for s in (1, 3):
                r = results(svc, s)[e]
                assert r["result"] == "ok" and r["ingress"] == r["egress"] == 1000, (s, r)
        disputes = led.disputes()
        assert disputes and {x.sla_id for x in disputes} == {2}, disputes
        for x in disputes:
            assert not {1, 2} & set(x.faulty), x
        for entry in svc.state.snapshot()["disputes"].values():
            assert not {1, 2} & set(entry.get("named_at_fault") or ()), entry
    finally:
        svc.close()
        led.close()


def _fabricate(d, node, name, lo, hi, offset=10**6):
    """Router ``node`` records a second, invented packet of flow ``name`` beside every real one
    it saw between lo and hi (in and out, as it records the real one)."""
    flow = of_flow(name)
    extra = []
    for t, f in d.frames[node]:
        if lo <= t <= hi and flow(f):
            i = int.from_bytes(f[14 + 28:14 + 36], "big") + offset
            g = bytearray(f)
            g[14 + 28:14 + 36] = i.to_bytes(8, "big")
            extra.append((t + 1000, bytes(g)))
    d.frames[node] += extra


def test_colluding_ends_do_not_frame_the_honest_middle(tmp_path, stop_after):
    """SLA 2's ends, both of one operator (one adversary: f = 1 counts owners; two owners
    colluding are beyond f = 1, docs/threat-model.md), collude against router 2 (honest, another
    operator's, forwards every packet): router 1 records and
    counts an invented flow-B packet beside every real one (all sent to router 2, by its records),
    router 3 records none of flow B as arrived (its receipts: 0). The monitor sees the loss
    (ingress 2000, egress 0) and disputes; the verdict never names router 2."""
    def collude(d):
        lo, hi = d.dropped[0], d.dropped[1] + 4 * 200_000
        _fabricate(d, 1, "B", lo, hi)
        remove(d, 3, lo, hi, of_flow("B"))
    d = batch_domain(tmp_path, healthy=1000, dropped=3000, after=1500, drop=(),
                     rewrite=collude, owners={1: "operator-X", 2: "operator-Y", 3: "operator-X"})
    stop_after(d)
    svc, led = service(d, tmp_path, consecutive=2)
    try:
        run_rounds(svc, lambda: evaluated(svc, epochs_of(*d.after)[-1])() and
                   decided(svc, led)(), timeout=150)
        for e in epochs_of(*d.dropped):
            r = results(svc, 2)[e]
            assert r["result"] == "violation" and (r["ingress"], r["egress"]) == (2000, 0), r
        disputes = led.disputes()
        assert disputes and {x.sla_id for x in disputes} == {2}, disputes
        for x in disputes:
            assert 2 not in x.faulty, x
        for entry in svc.state.snapshot()["disputes"].values():
            assert 2 not in (entry.get("named_at_fault") or ()), entry
    finally:
        svc.close()
        led.close()


def test_honest_batch_domain_reads_every_sla_and_disputes_the_drop_only(tmp_path, stop_after):
    """The set-up itself, every device honest: SLAs 1 and 3 ok in every epoch, SLA 2 violated
    in the dropped epochs (router 2's drop), one dispute, of SLA 2, naming router 2 only."""
    d = batch_domain(tmp_path)
    stop_after(d)
    svc, led = service(d, tmp_path)
    try:
        last = epochs_of(*d.after)[-1]
        run_rounds(svc, lambda: evaluated(svc, last)() and led.disputes() and all(
            e["state"] in ("filed", "not_judgeable")
            for e in svc.state.snapshot()["disputes"].values()), timeout=120)
        for e in epochs_of(d.healthy[0], d.after[1]):
            for s in (1, 3):
                r = results(svc, s)[e]
                assert r["result"] == "ok" and r["ingress"] == r["egress"] == 1000, (s, r)
        for e in epochs_of(*d.dropped):
            r = results(svc, 2)[e]
            assert r["result"] == "violation" and r["ingress"] == 1000 and r["egress"] == 0, r
        disputes = led.disputes()
        assert len(disputes) == 1 and disputes[0].sla_id == 2, disputes
        assert list(disputes[0].faulty) == [2], disputes
    finally:
        svc.close()
        led.close()
