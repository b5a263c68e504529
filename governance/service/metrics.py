"""The service's Prometheus metrics (docs/governance-service.md, "Metrics"), read from its state
and counters at scrape time (nothing is counted twice)."""
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["ServiceCollector", "METRICS"]

METRICS = ("beat_gov_sla_loss_ppm", "beat_gov_sla_delay_us", "beat_gov_sla_hop_delay_us",
           "beat_gov_sla_epochs_total", "beat_gov_sla_violations_total",
           "beat_gov_sla_unknown_run", "beat_gov_sla_disputes_opened_total",
           "beat_gov_sla_streak", "beat_gov_receipts_refused_total",
           "beat_gov_equivocations_total", "beat_gov_samples_total", "beat_gov_ledger_up",
           "beat_gov_ledger_errors_total", "beat_gov_device_errors_total",
           "beat_gov_api_refused_total", "beat_gov_disputes")


def _counter(name, doc, labels):
    return CounterMetricFamily(name[:-len("_total")], doc, labels=labels)


class ServiceCollector:
    def __init__(self, service):
        self.service = service

    def collect(self):
        svc = self.service
        snap = svc.state.snapshot()
        loss = GaugeMetricFamily("beat_gov_sla_loss_ppm", "end-to-end loss of the SLA's flow "
                                 "in its last evaluated epoch with both ends known (ppm)",
                                 labels=["sla"])
        delay = GaugeMetricFamily("beat_gov_sla_delay_us", "end-to-end delay of the last "
                                  "sampled interrogation (microseconds)",
                                  labels=["sla", "quantile"])
        hop = GaugeMetricFamily("beat_gov_sla_hop_delay_us", "per-hop delay of the last "
                                "sampled interrogation (microseconds)",
                                labels=["sla", "hop", "quantile"])
        epochs = _counter("beat_gov_sla_epochs_total", "receipt epochs evaluated, by result",
                          ["sla", "result"])
        viol = _counter("beat_gov_sla_violations_total", "epochs violating the QM-SLA terms",
                        ["sla"])
        unk = GaugeMetricFamily("beat_gov_sla_unknown_run", "epochs unknown in a row (a device "
                                "withholding its receipts shows here)", labels=["sla"])
        streak = GaugeMetricFamily("beat_gov_sla_streak", "violating epochs in a row now",
                                   labels=["sla"])
        opened = _counter("beat_gov_sla_disputes_opened_total", "disputes this service opened",
                          ["sla"])
        equiv = _counter("beat_gov_equivocations_total", "receipts a device gave the "
                         "interrogation that differ from those it gave the monitor", ["sla"])
        for sid, st in sorted(snap["slas"].items()):
            if st.get("last_loss_ppm") is not None:
                loss.add_metric([sid], st["last_loss_ppm"])
            s = st.get("last_delay")
            if s:
                for q in ("p50", "p99", "max"):
                    if s["e2e"].get(f"{q}_us") is not None:
                        delay.add_metric([sid, q], s["e2e"][f"{q}_us"])
                for h in s["hops"]:
                    for q in ("p50", "p99", "max"):
                        if h.get(f"{q}_us") is not None:
                            hop.add_metric([sid, f"{h['prev_id']}-{h['next_id']}", q],
                                           h[f"{q}_us"])
            # the totals by result over the life of the state (the series is only the recent part)
            by = st.get("by_result") or {}
            for res in ("ok", "violation", "unknown", "idle"):
                epochs.add_metric([sid, res], by.get(res, 0))
            viol.add_metric([sid], st["violations"])
            unk.add_metric([sid], st["unknown_run"])
            streak.add_metric([sid], len(st["streak"]))
            opened.add_metric([sid], st["disputes_opened"])
            equiv.add_metric([sid], st.get("equivocations", 0))
        yield from (loss, delay, hop, epochs, viol, unk, streak, opened, equiv)
        c = svc.counters
        with c.lock:
            refused, samples = dict(c.refused), dict(c.samples)
            errors, api = dict(c.fetch_errors), c.api_refused
        m = _counter("beat_gov_receipts_refused_total", "receipts refused (not matching their "
                     "anchor, two for one epoch, back-dated, unacceptable answers): never "
                     "counted", ["sla", "node"])
        for (sid, node), n in sorted(refused.items()):
            m.add_metric([str(sid), str(node)], n)
        yield m
        m = _counter("beat_gov_device_errors_total", "receipt requests a device did not answer "
                     "acceptably", ["sla", "node"])
        for (sid, node), n in sorted(errors.items()):
            m.add_metric([str(sid), str(node)], n)
        yield m
        m = _counter("beat_gov_samples_total", "sampled interrogations, by result",
                     ["sla", "result"])
        for (sid, res), n in sorted(samples.items()):
            m.add_metric([str(sid), res], n)
        yield m
        g = GaugeMetricFamily("beat_gov_ledger_up", "1 when the last read of the ledger worked")
        g.add_metric([], 1 if svc.watcher.up else 0)
        yield g
        m = _counter("beat_gov_ledger_errors_total", "failed reads of the ledger", [])
        m.add_metric([], svc.watcher.errors)
        yield m
        m = _counter("beat_gov_api_refused_total", "HTTP requests refused (too many at once, "
                     "not GET, unknown path)", [])
        m.add_metric([], api)
        yield m
        g = GaugeMetricFamily("beat_gov_disputes", "this service's disputes by state",
                              labels=["state"])
        states = {}
        for d in snap["disputes"].values():
            states[d["state"]] = states.get(d["state"], 0) + 1
        for s, n in sorted(states.items()):
            g.add_metric([s], n)
        yield g
