"""Delay by sampled interrogation: once per ``delay_sample_every_s`` per SLA, the Interrogation
Protocol itself (``governance.interrogate.interrogate``, nothing recorded) over a short window
that every device has anchored by then. Its judgement gives the per-hop delays (the
interrogation's own computation: confirmed pairs of adjacent devices' records, ``Hop.delay_*``);
the end-to-end delay is the same computation over the route's two ends: for every packet the
first device received from outside and the last device received too (same ``PD``), the last
device's ``t_ns`` minus the first's, percentiles by ``verdicts._percentile`` (nearest rank).

Only proven records count (segments whose S and anchor check out; the interrogation drops the
rest). The sample is a whole interrogation: when its judgement names a device of the agreed
route at fault (DEVIATED, DROPPED, ...), the service disputes that window with it
(governance/service/disputes.py) -- the verdict is the interrogation's, the sample only chose
the window.
"""
import dataclasses

from fastpath.output import RECORD_SIZE

from ..verdicts import _percentile

__all__ = ["Sample", "end_to_end", "summarise"]


@dataclasses.dataclass
class Sample:
    sla_id: int
    from_ns: int
    to_ns: int
    e2e: dict                  # {"count", "p50_us", "p99_us", "max_us", "pct_us", "percentile"}
    hops: list                 # [{"prev_id", "next_id", "confirmed", "p50_us", "p99_us", "max_us"}]
    unreachable: list          # node ids that gave no evidence (the sample says nothing of them)
    faulty: list               # devices the judgement names at fault
    verdicts: dict             # node_id -> verdict
    interrogation: object = None   # the governance.interrogate.Interrogation (not persisted)

    def to_dict(self):
        d = dataclasses.asdict(self)
        d.pop("interrogation")
        d["verdicts"] = {str(k): v for k, v in self.verdicts.items()}
        return d


def _by_pd(records, ft, keep):
    """{PD: smallest t_ns} of the records of ``ft`` that ``keep(prev_id, next_id)``."""
    out = {}
    mv = memoryview(records)
    for off in range(0, len(records), RECORD_SIZE):
        if bytes(mv[off + 40:off + 48]) != ft:
            continue
        prev = int.from_bytes(mv[off + 8:off + 16], "big")
        nxt = int.from_bytes(mv[off + 16:off + 24], "big")
        if not keep(prev, nxt):
            continue
        pd = bytes(mv[off + 24:off + 40])
        t = int.from_bytes(mv[off:off + 8], "big")
        if pd not in out or t < out[pd]:
            out[pd] = t
    return out


def end_to_end(first_records, last_records, ft, percentile=99.0):
    """End-to-end delays (ns, sorted) of the packets the first device received from outside
    (``prev_id = 0``) and the last device received too, and their summary in microseconds."""
    entered = _by_pd(first_records, ft, lambda prev, nxt: prev == 0)
    arrived = _by_pd(last_records, ft, lambda prev, nxt: True)
    ds = sorted(arrived[pd] - t for pd, t in entered.items() if pd in arrived
                and arrived[pd] >= t)
    out = {"count": len(ds), "percentile": percentile}
    if ds:
        out.update(p50_us=_percentile(ds, 0.5) / 1000, p99_us=_percentile(ds, 0.99) / 1000,
                   max_us=ds[-1] / 1000, pct_us=_percentile(ds, percentile / 100) / 1000)
    return out


def summarise(sla, it, percentile=99.0):
    """A ``Sample`` from an ``Interrogation`` of the SLA's window."""
    j = it.judgement
    first, last = sla.route[0], sla.route[-1]
    ev = it.evidence
    e2e = {"count": 0, "percentile": percentile}
    if first in ev and last in ev and ev[first].answered and ev[last].answered:
        e2e = end_to_end(ev[first].records, ev[last].records, j.ft, percentile)
    hops = [{"prev_id": h.prev_id, "next_id": h.next_id, "confirmed": h.confirmed,
             "p50_us": None if h.delay_p50_ns is None else h.delay_p50_ns / 1000,
             "p99_us": None if h.delay_p99_ns is None else h.delay_p99_ns / 1000,
             "max_us": None if h.delay_max_ns is None else h.delay_max_ns / 1000}
            for h in j.hops]
    unreachable = sorted(n for n, e in ev.items() if e.status == "unreachable")
    return Sample(sla.sla_id, j.from_ns, j.to_ns, e2e, hops, unreachable, sorted(j.faulty),
                  {n: d.verdict for n, d in j.devices.items()}, it)
