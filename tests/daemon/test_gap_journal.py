"""beatd/gap_journal.py: the workers' kernel-drop pieces become one gap record per interface and
second (several workers' pieces of one interface joined, frames added), a capture stop is written
at once, drops are logged at most once per interface per interval with the frames since the
previous line, what the store could not take is written later, and the summary at stop adds up
each interface's drops, records and blind time."""
import logging

from beat_common.gap_record import GAP_CAPTURE_STOPPED, GAP_KERNEL_DROPS
from beatd.gap_journal import GapJournal

S = 10**9


def _text(r):
    """A record as the daemon's log line says it: the message and its fields."""
    return r.getMessage() + " " + " ".join(f"{k}={v}" for k, v in r.fields.items())


class Clock:
    t = 100.0

    def __call__(self):
        return self.t


def test_pieces_become_one_record_per_interface_and_second(caplog):
    clock = Clock()
    log = logging.getLogger("test.gapjournal")
    j = GapJournal(log, record_interval_s=1.0, log_interval_s=10.0, clock=clock)
    t = 1000 * S
    # two workers' snapshots of "any", 0.25 s apart, and one of eth2; a capture stop
    j.add([(t, t + S // 4, 5, GAP_KERNEL_DROPS, "any"),
           (t + S // 8, t + S // 4, 3, GAP_KERNEL_DROPS, "any"),
           (t, t + S // 4, 1, GAP_KERNEL_DROPS, "eth2"),
           (0, t, 0, GAP_CAPTURE_STOPPED, "")])
    assert j.due() == [(0, t, 0, GAP_CAPTURE_STOPPED, "")]      # the stop at once, drops wait
    clock.t += 0.5
    j.add([(t + S // 4, t + S // 2, 2, GAP_KERNEL_DROPS, "any")])
    assert j.due() == []
    clock.t += 0.6
    due = j.due()
    assert sorted(due) == [(t, t + S // 4, 1, GAP_KERNEL_DROPS, "eth2"),
                           (t, t + S // 2, 10, GAP_KERNEL_DROPS, "any")]
    # the store was full: nothing lost, written with the next call
    j.requeue(due)
    assert sorted(j.due()) == sorted(due)
    with caplog.at_level(logging.WARNING, logger="test.gapjournal"):
        j.written(due)
        lines = [_text(r) for r in caplog.records]
        assert len(lines) == 2 and all("capture gap: kernel drops" in m for m in lines)
        assert any("interface=any" in m and "frames=10" in m for m in lines), lines
        caplog.clear()
        # more drops within the log interval: counted, not logged
        for k in range(5):
            clock.t += 1.1
            j.add([(t + (k + 1) * S, t + (k + 1) * S + S // 4, 4, GAP_KERNEL_DROPS, "any")])
            j.written(j.due())
        assert caplog.records == []
        clock.t += 10
        j.add([(t + 20 * S, t + 20 * S + S // 4, 1, GAP_KERNEL_DROPS, "any")])
        clock.t += 1.1
        j.written(j.due())
        (rec,) = caplog.records
        assert "frames=21" in _text(rec) and "gap_records=6" in _text(rec)
        caplog.clear()
        j.log_summary()
        msgs = [_text(r) for r in caplog.records]
    assert j.summary() == {"any": {"frames_dropped": 31, "gaps": 7, "blind_s": 2.0},
                           "eth2": {"frames_dropped": 1, "gaps": 1, "blind_s": 0.25}}
    assert sum("capture gaps this run: kernel drops" in m for m in msgs) == 2, msgs


def test_a_piece_far_from_the_open_one_closes_it():
    clock = Clock()
    j = GapJournal(logging.getLogger("test.gapjournal"), clock=clock)
    t = 1000 * S
    j.add([(t, t + S // 4, 1, GAP_KERNEL_DROPS, "any")])
    j.add([(t + 5 * S, t + 5 * S + S // 4, 2, GAP_KERNEL_DROPS, "any")])
    assert j.due() == [(t, t + S // 4, 1, GAP_KERNEL_DROPS, "any")]
    assert j.due(force=True) == [(t + 5 * S, t + 5 * S + S // 4, 2, GAP_KERNEL_DROPS, "any")]
    assert j.pending() == 0
