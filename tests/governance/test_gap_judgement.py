"""Declared capture gaps, judged (governance/gaps.py, docs/gap-records.md) on loopback domains
(tests/governance/loopback_domain.py: real stores, anchors on a real local ledger, real
Interrogation servers over mutual TLS, ``beatctl interrogate``).

Route r1 -> r2 -> r3; r2 records 40 packets arriving and none leaving (its records say it
dropped them; loss budget 0). What changes between the cases is only what r2 declares:

- a kernel-drops gap covering them, anchored with its records: honoured; r2 is not named, the
  report says it was blind then (not "lost packets"), naming the gap; the gap record is served
  with its inclusion proof;
- the same gap with the governance's gap_tolerance_s (T) shorter than the time between the
  gap's end and the last packets r2 recorded and anchored before it (in its outbox before the
  gap record): back-dated, not honoured, r2 DROPPED and the report says why;
- the same gap written after r2 anchored (never anchored): pending while its anchor period may
  not have passed (like records not anchored yet: it excuses no drop of r2's own records), then
  unanchored; DROPPED either way;
- a gap record changed in the store after its leaf was anchored (a widened gap served): forged,
  DROPPED;
- a gap that ends in the future (declared ahead): premature, DROPPED;
- "capture stopped" over a time where r2 holds records of its own (more than T after its
  start): contradicted, DROPPED;
- no gap at all: DROPPED (the lone liar is caught).
r1 and r3, honest, are never named.
"""
import json

import pytest

from beat_common.gap_record import GAP_CAPTURE_STOPPED, GAP_KERNEL_DROPS, pack_gap_record
from beatd.store import layout
from loopback_domain import Domain

LINKS = [(1, 2), (2, 3)]
PAD = 5_000_000          # the gap reaches a little beyond the packets on each side


def _run(tmp_path, gaps=None, late_gaps=None, delay_s=None, tamper=None, future=False,
         tolerance_s=None):
    d = Domain(tmp_path, LINKS)
    d.send((1, 2, 3), 20, tag=1)
    lo, hi = d.send((1, 2, 3), 40, tag=1, drop_at=2)
    d.send((1, 2, 3), 20, tag=1)
    g_to = hi + PAD
    if future:
        g_to = hi + 3600 * 10**9
    gap = (lo - PAD, g_to, 80, GAP_KERNEL_DROPS, "eth1")
    kw = {}
    if gaps == "drops":
        kw["gaps"] = {2: [gap]}
    elif gaps == "stopped":
        kw["gaps"] = {2: [(lo - 30 * 10**6, hi + PAD, 0, GAP_CAPTURE_STOPPED, "")]}
    if late_gaps:
        kw["late_gaps"] = {2: [gap]}
    d.start(**kw)
    try:
        if tamper:
            st = d.stores[2]
            (seq, rec), = st.gap_records()
            widened = pack_gap_record(lo - 2 * 10**9, g_to, 80, GAP_KERNEL_DROPS, "eth1")
            with st.env.begin(write=True) as txn:
                txn.put(layout.p64(seq), widened, db=st.gap_db())
        judgement = "".join(f"{k} = {v}\n" for k, v in (("gap_anchor_delay_s", delay_s),
                                                        ("gap_tolerance_s", tolerance_s))
                            if v is not None)
        if judgement:
            with open(d.config, "a") as f:
                f.write(f"[judgement]\n{judgement}")
        out = tmp_path / "report.json"
        code, stdout, stderr = d.interrogate(lo, hi, "--json", out)
        assert code in (0, 3), stderr
        return json.loads(out.read_text()), stdout
    finally:
        d.stop()


def _devices(report):
    return {x["node_id"]: x for x in report["devices"]}


def test_an_anchored_timely_gap_is_blindness_not_a_drop(tmp_path):
    report, text = _run(tmp_path, gaps="drops")
    dev = _devices(report)
    assert {n: x["verdict"] for n, x in dev.items()} == {1: "CONSISTENT", 2: "CONSISTENT",
                                                         3: "CONSISTENT"}, text
    r2 = dev[2]
    # the 40 packets r2 did not pass on, but the last, whose r2 record is after the window
    assert r2["counts"]["blind"] >= 39 and r2["counts"]["own_drops"] == 0
    (g,) = r2["gaps"]
    assert g["status"] == "honoured" and g["interface"] == "eth1" and g["frames_dropped"] == 80
    assert g["ledger_t_ns"] and g["batch_seq"] is not None
    assert any(r.startswith("blind: 1 declared capture gap(s) anchored in time") for r in
               r2["reasons"]), r2["reasons"]
    assert "node 2 declared it was blind from" in text and "on eth1: 80 frames dropped by the " \
        "kernel" in text and "its records cannot show these packets" in text
    assert report["faulty"] == []
    assert dev[1]["gaps"] == [] and dev[3]["gaps"] == []


def test_no_gap_the_lone_liar_is_caught(tmp_path):
    report, text = _run(tmp_path)
    dev = _devices(report)
    assert dev[2]["verdict"] == "DROPPED" and dev[2]["gaps"] == [] and report["faulty"] == [2]
    assert dev[1]["verdict"] == "CONSISTENT" and dev[3]["verdict"] == "CONSISTENT"


@pytest.mark.parametrize("case, status, says", [
    ({"gaps": "drops", "tolerance_s": 0.001}, "back-dated",
     "an honest gap record precedes what its device recorded later"),
    ({"late_gaps": True, "delay_s": 5}, "unanchored", "not anchored, "),
    ({"gaps": "drops", "tamper": True}, "forged", "not what it anchored"),
    ({"gaps": "drops", "future": True}, "premature", "blindness cannot be declared ahead"),
    ({"gaps": "stopped", "tolerance_s": 0.001}, "contradicted", "it holds a record of its own"),
], ids=["back-dated", "unanchored", "forged", "premature", "contradicted"])
def test_a_gap_not_honoured_excuses_nothing_and_is_named(tmp_path, case, status, says):
    report, text = _run(tmp_path, **case)
    dev = _devices(report)
    r2 = dev[2]
    assert r2["verdict"] == "DROPPED", (r2["reasons"], text)
    assert report["faulty"] == [2]
    assert dev[1]["verdict"] == "CONSISTENT" and dev[3]["verdict"] == "CONSISTENT"
    (g,) = r2["gaps"]
    assert g["status"] == status and says in g["why"], g
    assert any(r.startswith(f"gaps: 1 declared capture gap(s) NOT honoured ({status})")
               for r in r2["reasons"]), r2["reasons"]
    assert f"NOT honoured ({status})" in text
    assert r2["counts"]["blind"] == 0


def test_a_gap_not_anchored_yet_is_like_records_not_anchored_yet(tmp_path):
    """Written after r2's last anchor, asked within the anchor delay: pending. Like its records
    not anchored yet, signed and not proven: it excuses no drop of r2's own records."""
    report, text = _run(tmp_path, late_gaps=True)
    r2 = _devices(report)[2]
    (g,) = r2["gaps"]
    assert g["status"] == "pending" and "signed, not proven" in g["why"]
    assert r2["verdict"] == "DROPPED" and report["faulty"] == [2]
    assert any("not anchored yet (signed, not proven)" in r for r in r2["reasons"])


def test_a_gap_anchored_after_the_delay_with_nothing_newer_before_it_is_honoured(tmp_path):
    """The same gap, taken by the ledger more than gap_anchor_delay_s after it ended (the
    routers anchored 30 s late, as after a ledger outage), but nothing r2 recorded after the gap
    + T is anchored before it: honoured (findings G6), r2 blind, not named."""
    report, text = _run(tmp_path, gaps="drops", delay_s=5)
    r2 = _devices(report)[2]
    (g,) = r2["gaps"]
    assert g["status"] == "honoured", g
    assert g["ledger_t_ns"] - g["to_ns"] > 5 * 10**9
    assert r2["verdict"] == "CONSISTENT" and report["faulty"] == [], (r2["reasons"], text)
