"""The governance service's QM-SLA evaluator (governance/service/monitor.py): one epoch from the
two ends' readings and the terms, the streak of consecutive violations, one end's receipts read
(refused when they do not match, two for one epoch, back-dated), and the configuration."""
import dataclasses

import pytest

from governance.service import monitor as m
from governance.service.monitor import (COUNTED, IDLE, OK, PENDING, REFUSED, UNKNOWN,
                                        UNREACHABLE, VIOLATION, Reading, Streak, evaluate_epoch)

L = 1_000_000_000


def counted(n):
    return Reading(COUNTED, n, 64 * n)


def ev(i, o, loss=10_000, delay=20_000, delay_us=None):
    return evaluate_epoch(5 * L, i, o, max_loss_ppm=loss, max_delay_us=delay, epoch_len_ns=L,
                          delay_us=delay_us)


def test_healthy_epoch_is_ok_and_a_packet_in_flight_is_no_loss():
    assert ev(counted(1000), counted(1000)).result == OK
    # one packet still on its way at the epoch's end: within the in-flight allowance
    r = ev(counted(1000), counted(999))
    assert r.result == OK and r.loss_ppm == 1000 and r.excess_ppm == 0 and r.allowance == 20


def test_loss_at_the_term_is_within_it_and_one_packet_more_violates():
    # 10,000 packets, allowance ceil(10,000 * 20 ms / 1 s) = 200; the term 1 % = 100 packets
    r = ev(counted(10_000), counted(10_000 - 200 - 100))
    assert r.allowance == 200 and r.excess_ppm == 10_000 and r.result == OK
    r = ev(counted(10_000), counted(10_000 - 200 - 101))
    assert r.result == VIOLATION and "above max_loss_ppm 10000" in r.reasons[0]


def test_zero_loss_term_allows_only_what_is_in_flight():
    assert ev(counted(100), counted(98), loss=0).result == OK           # allowance 2
    assert ev(counted(100), counted(97), loss=0).result == VIOLATION


def test_no_delay_term_uses_ten_ms_in_flight():
    assert m.inflight_allowance(1000, L, 0) == 10
    assert m.inflight_allowance(0, L, 20_000) == 0
    assert m.inflight_allowance(3, L, 5_000_000) == 3                   # at most the epoch


def test_delay_at_the_term_is_within_it():
    assert ev(counted(10), counted(10), delay_us=20_000).result == OK
    r = ev(counted(10), counted(10), delay_us=20_001)
    assert r.result == VIOLATION and "delay 20001 us" in r.reasons[0]
    # no delay term (0): any delay is within it
    assert ev(counted(10), counted(10), delay=0, delay_us=10**9).result == OK


def test_an_end_not_heard_is_unknown_never_a_violation():
    for bad in (Reading(UNREACHABLE, reason="UNAVAILABLE"), Reading(REFUSED, reason="tampered"),
                Reading(PENDING)):
        assert ev(counted(1000), bad).result == UNKNOWN
        assert ev(bad, counted(0)).result == UNKNOWN
        r = ev(bad, bad)
        assert r.result == UNKNOWN and r.ingress is None and r.egress is None
    # ... unless the sampled delay itself (signed, anchored) breaks the terms
    assert ev(counted(1000), Reading(UNREACHABLE), delay_us=30_000).result == VIOLATION


def test_no_ingress_is_idle_and_egress_without_ingress_is_unknown():
    assert ev(counted(0), counted(0)).result == IDLE
    assert ev(counted(0), Reading(UNREACHABLE)).result == IDLE      # nothing entered: no loss
    assert ev(counted(0), counted(1)).result == IDLE                # in flight from before
    r = ev(counted(0), counted(500))
    assert r.result == UNKNOWN and "contradict" in r.reasons[0]


def res(result, e):
    return m.EpochResult(e * L, result)


def test_streak_opens_after_n_consecutive_and_starts_again():
    s = Streak(3, L)
    assert [s.feed(res(VIOLATION, e)) for e in (1, 2)] == [None, None]
    assert s.feed(res(VIOLATION, 3)) == (1 * L, 4 * L - 1)
    assert s.epochs == []
    assert s.feed(res(VIOLATION, 4)) is None and s.epochs == [4 * L]


def test_a_good_epoch_breaks_the_streak():
    s = Streak(2, L)
    s.feed(res(VIOLATION, 1))
    s.feed(res(OK, 2))
    assert s.feed(res(VIOLATION, 3)) is None
    assert s.feed(res(VIOLATION, 4)) == (3 * L, 5 * L - 1)


def test_idle_is_skipped_like_unknown_and_breaks_when_configured():
    """S-3: an ingress that withholds its receipt reads 0 entered (idle): idle must not end a
    streak, or a lone liar at the ingress hides a total drop by withholding every other epoch."""
    s = Streak(2, L)
    s.feed(res(VIOLATION, 1))
    assert s.feed(res(IDLE, 2)) is None and s.epochs == [1 * L]
    assert s.feed(res(VIOLATION, 3)) == (1 * L, 4 * L - 1)
    s = Streak(2, L, unknown_breaks=True)
    s.feed(res(VIOLATION, 1))
    s.feed(res(IDLE, 2))
    assert s.feed(res(VIOLATION, 3)) is None and s.epochs == [3 * L]


def test_unknown_is_skipped_by_default_and_breaks_when_configured():
    s = Streak(3, L)
    for e, r in ((1, VIOLATION), (2, UNKNOWN), (3, VIOLATION), (4, UNKNOWN)):
        assert s.feed(res(r, e)) is None
    # a device withholding every other epoch cannot keep the streak from completing
    assert s.feed(res(VIOLATION, 5)) == (1 * L, 6 * L - 1)
    s = Streak(2, L, unknown_breaks=True)
    s.feed(res(VIOLATION, 1))
    s.feed(res(UNKNOWN, 2))
    assert s.feed(res(VIOLATION, 3)) is None and s.epochs == [3 * L]


def test_streak_resumes_from_saved_epochs():
    s = Streak(2, L, epochs=[7 * L])
    assert s.feed(res(VIOLATION, 8)) == (7 * L, 9 * L - 1)
    with pytest.raises(ValueError):
        Streak(0, L)


# -- one end's receipts -----------------------------------------------------------------------

@dataclasses.dataclass
class Anchor:
    batch_seq: int = 0


@dataclasses.dataclass
class Rc:
    epoch_ns: int
    role: int
    packets: int
    R: bytes
    bytes: int = 0
    anchor: Anchor = dataclasses.field(default_factory=Anchor)


@dataclasses.dataclass
class Check:
    receipts: list = dataclasses.field(default_factory=list)
    unproven: list = dataclasses.field(default_factory=list)
    problems: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Problem:
    kind: str
    item: str
    reason: str


def read(check, over=None, anchored=100 * L, late=lambda rc: None, epochs=(1, 2, 3, 4)):
    problems = []
    out = m.read_end(check, over or Check(), m.EGRESS, [e * L for e in epochs], L, anchored, late,
                     problems)
    return {e // L: r for e, r in out.items()}, problems


def test_read_end_counts_anchored_receipts_and_zero_when_anchored_past():
    got, problems = read(Check([Rc(1 * L, 2, 10, b"a"), Rc(1 * L, 1, 99, b"x")],
                               unproven=[Rc(3 * L, 2, 5, b"c")]), anchored=4 * L)
    assert got[1].status == COUNTED and got[1].packets == 10 and got[1].R == b"a".hex()
    assert got[2] == Reading(COUNTED, 0, 0)                  # anchored past, no receipt: 0
    assert got[3].status == PENDING                           # its receipt not anchored yet
    assert got[4].status == PENDING                           # not anchored past epoch 4
    assert problems == []


def test_read_end_refuses_tampered_doubled_and_back_dated_receipts():
    check = Check([Rc(1 * L, 2, 10, b"a"), Rc(1 * L, 2, 12, b"b"), Rc(3 * L, 2, 7, b"d")],
                  problems=[Problem("tampered", f"receipt epoch_ns={2 * L} role=2",
                                    "R over its fields is ...")])
    got, problems = read(check, late=lambda rc: "back-dated" if rc.epoch_ns == 3 * L else None)
    assert got[1].status == REFUSED and "two receipts" in got[1].reason
    assert got[2].status == REFUSED and "tampered" in got[2].reason
    assert got[3].status == REFUSED and got[3].reason == "back-dated"
    assert got[4] == Reading(COUNTED, 0, 0)
    assert sorted(e // L for e, _ in problems) == [1, 2, 3]


def test_read_end_overflow_receipt_makes_a_missing_flow_unknown():
    got, _ = read(Check(), over=Check([Rc(2 * L, 2, 50, b"o")]))
    assert got[2].status == UNREACHABLE and "overflow" in got[2].reason
    assert got[1] == Reading(COUNTED, 0, 0)


def test_read_end_device_errors():
    from governance.client import BadSignature, NodeUnreachable
    got, problems = read(NodeUnreachable("node 3: UNAVAILABLE"))
    assert {r.status for r in got.values()} == {UNREACHABLE} and problems == []
    got, problems = read(BadSignature("node 3: bad signature"))
    assert {r.status for r in got.values()} == {REFUSED} and len(problems) == 4


# -- configuration ----------------------------------------------------------------------------

def _conf(tmp_path, service):
    for f in ("ca.crt", "gov.crt", "gov.key"):
        (tmp_path / f).write_text("x")
    p = tmp_path / "gov.toml"
    p.write_text(f'[interrogation]\nca = "{tmp_path}/ca.crt"\ncert = "{tmp_path}/gov.crt"\n'
                 f'key = "{tmp_path}/gov.key"\n[[endpoints]]\nnode_id = 1\naddress = "h:1"\n'
                 + service)
    return p


def test_config(tmp_path):
    from governance.service.config import ConfigError, load
    svc, gov = load(_conf(tmp_path, f'[service]\nstate_dir = "{tmp_path}/s"\nconsecutive = 2\n'
                                     'listen = "127.0.0.1:0"\n'))
    assert svc.consecutive == 2 and svc.epoch_ns == L and gov.endpoints == {1: "h:1"}
    for bad, msg in (('listen = "0.0.0.0:9480"', "not a loopback address"),
                     ("consecutive = 0", "service.consecutive: 0 is not an integer >= 1"),
                     ("unknown_breaks = 1", "service.unknown_breaks"),
                     ("nope = 1", "service.nope: unknown key")):
        with pytest.raises(ConfigError, match=msg):
            load(_conf(tmp_path, f'[service]\nstate_dir = "{tmp_path}/s"\n{bad}\n'))
    with pytest.raises(ConfigError, match="service: missing"):
        load(_conf(tmp_path, ""))


def test_a_receipt_other_than_the_one_counted_is_an_equivocation(tmp_path):
    """A device that gave the monitor one receipt and the interrogation another for the same
    epoch and role (both signed): reported and counted, whatever the interrogation decides."""
    from types import SimpleNamespace

    from governance.service.service import Counters
    from governance.service.state import State

    st = State(str(tmp_path / "s"))
    st.sla(1)
    st.record(1, {"epoch_ns": 5 * L, "result": "ok"}, [(3, 2, 5 * L, "aa" * 32)])
    st.record(1, {"epoch_ns": 6 * L, "result": "ok"}, [(3, 2, 6 * L, "bb" * 32)])
    st.save()
    c = Counters(st)
    same = Rc(5 * L, 2, 10, bytes.fromhex("aa" * 32))
    other = Rc(6 * L, 2, 10, bytes.fromhex("cc" * 32))
    unseen = Rc(7 * L, 2, 10, bytes.fromhex("dd" * 32))
    it = SimpleNamespace(evidence={3: SimpleNamespace(receipts=(same, other, unseen))})
    assert c.equivocations(1, it) == 1
    assert State(str(tmp_path / "s")).sla(1)["equivocations"] == 1      # saved


def test_state_survives_a_reopen_and_refuses_another_format(tmp_path):
    from governance.service.state import State

    st = State(str(tmp_path / "s"))
    st.sla(4)["next_epoch"] = 9 * L
    st.save()
    again = State(str(tmp_path / "s"))
    assert again.sla(4)["next_epoch"] == 9 * L and again.data["started"] == 2
    (tmp_path / "s" / "state.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="format 'other'"):
        State(str(tmp_path / "s"))


def test_watcher_survives_a_ledger_outage_and_keeps_its_last_view():
    import threading
    import time as _time

    from governance.service.watcher import Watcher
    from ledger_client.errors import Unavailable

    class Ledger:
        down = False

        def __getattr__(self, name):
            if self.down:
                raise Unavailable("ledger node unreachable")
            return {"slas": lambda: [], "nodes": lambda: [], "disputes": lambda: [],
                    "pending": lambda: [], "committee": lambda: None}[name]

    led = Ledger()
    w = Watcher(led, 0.02)
    w.poll_once()
    first = w.view
    led.down = True
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    end = _time.monotonic() + 10
    while w.errors < 3 and _time.monotonic() < end:
        _time.sleep(0.01)
    assert w.errors >= 3 and not w.up and w.view is first        # the last good view kept
    led.down = False
    while not w.up and _time.monotonic() < end:
        _time.sleep(0.01)
    w.stop()
    assert w.up and w.view is not first


def test_the_first_epoch_is_never_before_the_sla_is_valid():
    """backfill_s reaches back in time, never before the SLA's valid_from_ns: an epoch that
    begins before it (even by 1 ns) is not evaluated, so never disputed."""
    from governance.service.service import first_epoch

    now = 100 * L + 300
    assert first_epoch(now, 0, L, 0) == 100 * L                     # from now on
    assert first_epoch(now, 30, L, 0) == 70 * L                     # 30 s back
    assert first_epoch(now, 30, L, 90 * L) == 90 * L                # not before it is valid
    assert first_epoch(now, 30, L, 90 * L + 1) == 91 * L            # epoch 90 is partly outside
    assert first_epoch(now, 0, L, 99 * L) == 100 * L                # valid long before: now


def test_an_epoch_settles_once_the_anchors_reach_settle_past_its_end():
    """No receipt of epoch 2: pending while the device's anchors end before 2L + L + settle,
    0 packets from there (the receipts of an epoch are stored with the records released as its
    end plus the join window passes: docs/governance-service.md); the service's own settle_ms."""
    settle = m.DEFAULT_SETTLE_NS
    for anchored, status in ((3 * L + settle - 1, PENDING), (3 * L + settle, COUNTED)):
        got, _ = read(Check(), anchored=anchored, epochs=(2,))
        assert got[2].status == status, (anchored, got)
    problems = []
    out = m.read_end(Check(), Check(), m.EGRESS, [2 * L], L, 3 * L + 10, lambda rc: None,
                     problems, settle_ns=10)
    assert out[2 * L] == Reading(COUNTED, 0, 0)


def test_settle_ms_is_read_and_checked(tmp_path):
    from governance.service.config import ConfigError, load
    svc, _ = load(_conf(tmp_path, f'[service]\nstate_dir = "{tmp_path}/s"\n'))
    assert (svc.settle_ms, svc.settle_ns) == (200.0, 200_000_000)
    svc, _ = load(_conf(tmp_path, f'[service]\nstate_dir = "{tmp_path}/s"\nsettle_ms = 60\n'))
    assert svc.settle_ns == 60_000_000
    with pytest.raises(ConfigError, match="service.settle_ms: -1 is not a number >= 0"):
        load(_conf(tmp_path, f'[service]\nstate_dir = "{tmp_path}/s"\nsettle_ms = -1\n'))
