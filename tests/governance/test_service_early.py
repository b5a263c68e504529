"""When the service asks the two ends of an SLA for an epoch that has not settled yet
(``Service._due``): once both ends' newest anchors reach the epoch, and again only when one of
them anchors anew. An epoch whose receipts both ends hold is counted as soon as they land; one
that an end has no receipt of waits for the epoch to settle (its anchors ``settle_ms`` past the
epoch's end) before it counts as 0 packets there."""
from types import SimpleNamespace

from governance.service.config import ServiceConfig
from governance.service.monitor import COUNTED, PENDING, Reading
from governance.service.service import Service
from governance.service.state import State

L = 10**9
E = 1_000 * L                       # the epoch under test
NOW = E + L + L // 2                # E has ended (E + 1 s), E + 1 has not
SETTLE = 200_000_000                # settle_ms' default


def _sla():
    return SimpleNamespace(sla_id=1, route=[1, 2, 3], src=bytes(16), dst=bytes(15) + b"\1",
                           valid_from_ns=0, valid_to_ns=2 ** 62, max_loss_ppm=10_000,
                           max_delay_us=0)


def _view(first, last):
    """Node 1's and node 3's newest anchors: ``(batch_seq, last_t_ns)``."""
    return SimpleNamespace(slas={1: _sla()}, nodes={}, anchors={
        1: SimpleNamespace(batch_seq=first[0], last_t_ns=first[1]),
        3: SimpleNamespace(batch_seq=last[0], last_t_ns=last[1])})


class Ends:
    """What the two ends answer (``readings[node]``: a Reading for every epoch asked), and who
    was asked for which epochs."""

    def __init__(self):
        self.readings = {}
        self.asked = []

    def __call__(self, sla, node_id, role, epochs, view, shared=None):
        self.asked.append((node_id, tuple(epochs)))
        return {e: self.readings[node_id] for e in epochs}


def _service(tmp_path, backfill_s=5):
    cfg = ServiceConfig(state_dir=str(tmp_path / "s"), consecutive=1, backfill_s=backfill_s,
                        delay_sample_every_s=0, final_after_s=30)
    svc = Service(SimpleNamespace(hash_name="sha256"), None, cfg,
                  SimpleNamespace(endpoints={}, timeout_s=5), State(cfg.state_dir),
                  clock=lambda: NOW)
    svc.state.sla(1)["next_epoch"] = E
    ends = svc.read_end = Ends()
    return svc, ends


def test_an_epoch_whose_receipts_both_ends_hold_is_counted_before_it_settles(tmp_path):
    svc, ends = _service(tmp_path)
    ends.readings = {1: Reading(COUNTED, 100, R="aa" * 32), 3: Reading(COUNTED, 100, R="bb" * 32)}
    # both ends' anchors hold E's receipts (their span reaches E) but not E + L + settle_ms
    view = _view((5, E + 800_000_000), (9, E + 800_000_000))
    got = svc.evaluate_sla(_sla(), view, NOW)
    assert [(r.epoch_ns, r.result, r.ingress, r.egress) for r in got] == [(E, "ok", 100, 100)]
    assert ends.asked == [(1, (E,)), (3, (E,))]
    assert svc.state.sla(1)["next_epoch"] == E + L


def test_an_end_without_a_receipt_is_asked_once_per_new_anchor_until_the_epoch_settles(tmp_path):
    svc, ends = _service(tmp_path)
    ends.readings = {1: Reading(COUNTED, 100, R="aa" * 32),
                     3: Reading(PENDING, reason="the device has not anchored past the epoch")}
    view = _view((5, E + 800_000_000), (9, E + 800_000_000))
    assert svc.evaluate_sla(_sla(), view, NOW) == []
    assert len(ends.asked) == 2
    # the same anchors: not asked again, round after round
    for _ in range(3):
        assert svc.evaluate_sla(_sla(), view, NOW) == []
    assert len(ends.asked) == 2
    # the egress anchors anew, still short of settling: asked once more
    view = _view((5, E + 800_000_000), (10, E + L + SETTLE - 1))
    assert svc.evaluate_sla(_sla(), view, NOW) == [] and len(ends.asked) == 4
    assert svc.evaluate_sla(_sla(), view, NOW) == [] and len(ends.asked) == 4
    # so does the ingress: asked once more
    view = _view((6, E + L + 100), (10, E + L + SETTLE - 1))
    assert svc.evaluate_sla(_sla(), view, NOW) == [] and len(ends.asked) == 6
    # both settled: the egress has no receipt of E, 0 packets (monitor.read_end's rule)
    ends.readings[3] = Reading(COUNTED, 0)
    view = _view((7, E + L + SETTLE), (11, E + L + SETTLE))
    got = svc.evaluate_sla(_sla(), view, NOW)
    assert [(r.epoch_ns, r.result, r.ingress, r.egress) for r in got] == \
        [(E, "violation", 100, 0)]


def test_an_end_whose_anchors_do_not_reach_the_epoch_is_not_asked(tmp_path):
    svc, ends = _service(tmp_path)
    ends.readings = {1: Reading(COUNTED, 100, R="aa" * 32), 3: Reading(COUNTED, 100, R="bb" * 32)}
    # the egress's newest anchor ends before E: it cannot hold a receipt of E
    assert svc.evaluate_sla(_sla(), _view((5, E + 800_000_000), (9, E - 1)), NOW) == []
    assert ends.asked == []


def test_after_final_after_s_every_round_asks(tmp_path):
    """Past ``final_after_s`` the epoch is asked every round whatever the anchors (an end that
    answers nothing acceptable makes it unknown then, as before)."""
    svc, ends = _service(tmp_path)
    ends.readings = {1: Reading(COUNTED, 100, R="aa" * 32),
                     3: Reading(PENDING, reason="its receipt is not anchored yet")}
    late = E + L + 30 * L
    view = _view((5, E - 1), (9, E - 1))
    got = svc.evaluate_sla(_sla(), view, late)
    assert [(r.epoch_ns, r.result) for r in got][0] == (E, "unknown")


def test_a_round_evaluates_only_the_slas_with_something_to_do(tmp_path):
    """A round runs no evaluation for an SLA with nothing due (a round after every read of a
    busy ledger must cost little: 1,000 SLAs took ~22 ms a round before, ~2 ms now); an SLA at
    its first round is evaluated (its next_epoch set)."""
    svc, ends = _service(tmp_path, backfill_s=0)     # SLA 2 starts now: nothing due yet
    two = SimpleNamespace(**dict(vars(_sla()), sla_id=2))
    view = _view((5, E - 1), (9, E - 1))                  # nothing reaches E: nothing due
    view.slas[2] = two
    svc.watcher.view = view
    called = []
    real = svc.evaluate_sla
    svc.evaluate_sla = lambda sla, *a, **kw: called.append(sla.sla_id) or real(sla, *a, **kw)
    svc.desk.resume = svc.desk.adopt = lambda *a: None
    svc.round()
    assert called == [2] and svc.state.sla(2)["next_epoch"] is not None
    called.clear()
    svc.round()
    assert called == [] and ends.asked == []
    svc.watcher.view = _view((5, E + 800_000_000), (9, E + 800_000_000))
    ends.readings = {1: Reading(COUNTED, 100, R="aa" * 32), 3: Reading(COUNTED, 100, R="bb" * 32)}
    svc.round()
    assert called == [1] and svc.state.sla(1)["next_epoch"] == E + L
    svc.close()
