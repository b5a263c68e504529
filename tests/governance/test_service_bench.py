"""The service benchmark's harness (benchmarks/service.py), not timed: at a tiny size it must
measure a service that really evaluates every epoch of every SLA, with the loss the simulated
devices were built to show -- so the benchmark cannot silently time a service doing nothing.

20 SLAs over 10 routers (device processes serving real stores, anchors on a local ledger and
Interrogation servers over mutual TLS); SLA 1's middle router drops 5 % of its packets (5 of
100 per epoch): its every measured epoch is a violation with exactly that loss; the others carry
all their packets (ok, 0 loss).
"""
import pytest

from benchmarks import service as bench

PACKETS = 100


@pytest.mark.slow
def test_benchmark_harness_sees_every_epoch_and_the_loss_built_in(tmp_path):
    r = bench.run(slas=20, routers=10, route_len=4, packets=PACKETS, epochs=3, warmup=2,
                  device_procs=1, drops={1: 0.05}, consecutive=1000, workdir=str(tmp_path),
                  settle_s=10.0, log=lambda *_: None)
    assert r["epochs"] == 3 and r["unevaluated"] == 0 and r["unknown"] == 0, r["rows"]
    assert r["refused"] == 0 and r["disputes"] == 0
    for e, by_sla in r["results"].items():
        assert sorted(by_sla) == list(range(1, 21)), e
        lossy = by_sla[1]
        assert lossy["result"] == "violation", lossy
        assert (lossy["ingress"], lossy["egress"]) == (PACKETS, PACKETS - 5)
        assert lossy["loss_ppm"] == 50_000
        for sla in range(2, 21):
            got = by_sla[sla]
            assert got["result"] == "ok", (sla, got)
            assert got["ingress"] == got["egress"] == PACKETS and got["loss_ppm"] == 0
    # what the benchmark prints was measured: a latency per epoch, the service's CPU
    assert all(row["latency_s"] is not None for row in r["rows"])
    # (per SLA-epoch it may read 0 here: on a loaded machine one round can finish the 3 epochs)
    assert r["service_cpu_s"] > 0 and r["cpu_us_per_sla_epoch"] is not None
    assert r["cpu_us_per_evaluation"] is not None and r["cpu_us_per_evaluation"] > 0
