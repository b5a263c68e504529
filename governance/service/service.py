"""``beatctl serve``: the governance service of one committee member (docs/governance-service.md).

Threads: the ledger watcher (watcher.py), the evaluators (this module: every round, for every
active SLA, the receipt epochs that have settled, monitor.py; ``EVALUATORS`` SLAs at once, so a
device that hangs holds up only its own SLAs), workers for the slow jobs (the
delay samples and the disputes: interrogations take seconds) and the HTTP server (api.py:
metrics and the read-only JSON API). State on disk: state.py.
"""
import concurrent.futures
import dataclasses
import logging
import threading
import time

from ledger_client.errors import LedgerError

from .. import verify
from ..client import InterrogationClient
from . import monitor
from .delay import summarise
from .disputes import DisputeDesk
from .monitor import EGRESS, INGRESS, OVERFLOW, PENDING, UNKNOWN, UNREACHABLE, Reading, Streak
from .watcher import Watcher

__all__ = ["Service"]

log = logging.getLogger("beatd.governance.service")
MAX_EPOCHS_PER_ROUND = 120
MAX_FLOWS_PER_REQUEST = 256    # flows one receipts request names (a device's max_flows, 256)
EVALUATORS = 4                 # SLAs evaluated at once (a hanging device holds up only its SLAs)
ROUND_WAIT_S = 2.0             # a round waits this long at most for its SLAs' evaluations


def _event(level, msg, **fields):
    log.log(level, msg, extra={"fields": fields})


class Counters:
    """What the service counts beyond its state: refused receipts by (sla, node, reason class),
    equivocations, ledger errors (the watcher's), samples, API requests refused."""

    def __init__(self, state):
        self.state = state
        self.lock = threading.Lock()
        self.refused = {}             # (sla, node) -> n
        self.samples = {}             # (sla, result) -> n
        self.api_refused = 0
        self.fetch_errors = {}        # (sla, node) -> n

    def add(self, table, key, n=1):
        with self.lock:
            table[key] = table.get(key, 0) + n

    def equivocations(self, sla_id, it):
        """The receipts a device gave the interrogation against those it gave the monitor (R
        per node, role and epoch, kept in the state): another R is reported, never counted; so is
        a receipt the monitor counted of an epoch wholly inside the interrogation's window
        (``it.manifest``) that the device, answering, left out of its answer (omission)."""
        counted = self.state.counted(sla_id)
        window = (getattr(it, "manifest", None) or {}).get("window")
        L = getattr(self, "epoch_ns", None)
        found = 0
        for n, ev in it.evidence.items():
            mine = counted.get(str(n), {})
            given = set()
            for rc in ev.receipts:
                given.add(f"{rc.role}:{rc.epoch_ns}")
                got = mine.get(f"{rc.role}:{rc.epoch_ns}")
                if got is not None and got != bytes(rc.R).hex():
                    found += 1
                    _event(logging.ERROR, "a device gave the interrogation another receipt than "
                           "the monitor", sla=sla_id, node=n, epoch_ns=rc.epoch_ns,
                           role=rc.role, monitor_R=got, interrogation_R=bytes(rc.R).hex())
            if window is None or L is None or not ev.answered:
                continue
            for key, R in sorted(mine.items()):
                role, epoch = (int(x) for x in key.split(":"))
                if window["from_ns"] <= epoch and epoch + L - 1 <= window["to_ns"] and \
                        key not in given:
                    found += 1
                    _event(logging.ERROR, "a device left out of its answer to the interrogation "
                           "a receipt the monitor counted", sla=sla_id, node=n, epoch_ns=epoch,
                           role=role, monitor_R=R)
        if found:
            with self.state.lock:
                st = self.state.sla(sla_id)
                st["equivocations"] = st.get("equivocations", 0) + found
                self.state.save()
        return found


def first_epoch(now_ns, backfill_s, epoch_ns, valid_from_ns):
    """The first epoch a service evaluates of an SLA it has not evaluated before: the epoch of
    ``now_ns`` less ``backfill_s``, but never one that begins before the SLA is valid (an epoch
    the contract covers only in part is not judged by it)."""
    start = ((now_ns - int(backfill_s * 1e9)) // epoch_ns) * epoch_ns
    valid = -(-valid_from_ns // epoch_ns) * epoch_ns       # the first epoch wholly valid
    return max(start, valid)


@dataclasses.dataclass(frozen=True)
class DeviceRequest:
    """One device's receipts request of a round: every flow of the SLAs it is the first or the
    last device of (and the overflow flow), over the union of their windows [lo, hi]."""
    node_id: int
    lo: int
    hi: int
    flows: tuple                   # ((src, dst), ...), sorted, the overflow flow included


def plan_requests(ends, span_ns, max_flows=MAX_FLOWS_PER_REQUEST):
    """``ends``: ``[(node_id, (src, dst), lo, hi)]``, the SLA ends a round reads. Returns the
    ``DeviceRequest``s: per device, ends grouped by window (a group spans at most ``span_ns``,
    so that an SLA far behind does not make every other SLA's answer long) and at most
    ``max_flows`` flows (the overflow flow among them)."""
    by_node = {}
    for node, flow, lo, hi in ends:
        by_node.setdefault(node, []).append((lo, hi, flow))
    out = []
    for node, items in sorted(by_node.items()):
        items.sort()
        group, glo, ghi = set(), None, None
        for lo, hi, flow in items:
            if group and (max(ghi, hi) - glo > span_ns or
                          (flow not in group and len(group) + 2 > max_flows)):
                out.append(DeviceRequest(node, glo, ghi, tuple(sorted(group | {_OVER}))))
                group, glo, ghi = set(), None, None
            group.add(flow)
            glo = lo if glo is None else glo
            ghi = hi if ghi is None else max(ghi, hi)
        if group:
            out.append(DeviceRequest(node, glo, ghi, tuple(sorted(group | {_OVER}))))
    return out


_OVER = (OVERFLOW, OVERFLOW)
RECEIPT_MAX_BYTES = 114 + 32 * 32   # a receipt with its anchor ref, a tree of up to 2^32 leaves


def held_answer_cap(max_receipts_bytes, n_flows, lo, hi, epoch_ns):
    """The bytes a device may answer the round's request of ``n_flows`` flows over [lo, hi]:
    ``max_receipts_bytes`` (headers, slack) plus two receipts (the roles) a flow and epoch of the
    window at their largest; never more than ``max_receipts_bytes`` a flow. Not the cap times the
    flows alone: a device that is an end of 255 SLAs would make the service hold 1 GiB of its
    answer (~3.2 GiB decoded) for the round, whatever an honest one can send."""
    epochs = (hi - lo) // epoch_ns + 1
    return min(max_receipts_bytes * n_flows,
               max_receipts_bytes + n_flows * 2 * epochs * RECEIPT_MAX_BYTES)


class RoundReads:
    """What the evaluations of one round share: the anchors read from the ledger (an
    ``AnchorCache``: each anchor read once per round), each device's checked overflow receipts
    of a window (asked once per round for every SLA it is an end of, not once per SLA) and, with
    ``requests`` (``DeviceRequest``s: ``plan_requests``), each device's one receipts request of
    the round, whose answer every SLA of the device reads its flow from (``device``).
    Thread-safe: a second evaluation wanting the same answer waits for the first's."""

    def __init__(self, ledger, requests=()):
        self.anchors = verify.AnchorCache(ledger)
        self._lock = threading.Lock()
        self._over = {}                # (node, lo, hi) -> Future
        self._held = {}                # DeviceRequest -> Future
        self._requests = {}            # (node, flow) -> [DeviceRequest]
        for r in requests:
            for f in r.flows:
                self._requests.setdefault((r.node_id, f), []).append(r)

    def request_for(self, node_id, flow, lo, hi):
        """The round's request of ``node_id`` naming ``flow`` over a window holding [lo, hi], or
        None (an SLA the round did not plan: it asks on its own)."""
        for r in self._requests.get((node_id, flow), ()):
            if r.lo <= lo and hi <= r.hi:
                return r
        return None

    def _once(self, table, key, fetch):
        with self._lock:
            fut = table.get(key)
            mine = fut is None
            if mine:
                fut = table[key] = concurrent.futures.Future()
        if mine:
            try:
                fut.set_result(fetch())
            except BaseException as exc:  # noqa: BLE001 (handed to every waiter)
                fut.set_exception(exc)
        return fut.result()

    def overflow(self, node_id, lo, hi, fetch):
        return self._once(self._over, (node_id, lo, hi), fetch)

    def device(self, request, fetch):
        """``fetch()`` once for ``request`` (the client holding the device's answer), whatever
        SLA asks first; its exception, if it raised, to every SLA."""
        return self._once(self._held, request, fetch)


class _Batch:
    """The evaluations of one round: their dispute windows are collected, the state saved once,
    then the windows submitted (``close``). An evaluation that ends after its round closed (it
    outlived ``ROUND_WAIT_S``) saves and submits its own."""

    def __init__(self):
        self.lock = threading.Lock()
        self.windows = []
        self.changed = False          # an evaluation changed the state
        self.closed = False

    def add(self, windows):
        """The windows of an evaluation that changed the state; False once closed."""
        with self.lock:
            if self.closed:
                return False
            self.windows.extend(windows)
            self.changed = True
            return True

    def close(self):
        with self.lock:
            self.closed = True
            return self.changed, self.windows


class Service:
    def __init__(self, ledger, signer, svc_cfg, gov_cfg, state, clock=time.time_ns):
        self.ledger = ledger
        self.signer = signer
        self.svc = svc_cfg
        self.gov = gov_cfg
        self.state = state
        self.clock = clock
        self.ledger_lock = threading.RLock()
        self.watcher = Watcher(ledger, svc_cfg.poll_s, lock=self.ledger_lock)
        self.counters = Counters(state)
        self.counters.epoch_ns = svc_cfg.epoch_ns      # the omission check's epochs
        state.keep(svc_cfg.series_epochs, svc_cfg.epoch_ns)
        self.desk = DisputeDesk(ledger, self.ledger_lock, state, gov_cfg, svc_cfg, signer,
                                self.counters)
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=2,
                                                          thread_name_prefix="gov-job")
        # SLA evaluations: one at a time per SLA, EVALUATORS at once, apart from the slow jobs
        self.evaluators = concurrent.futures.ThreadPoolExecutor(
            max_workers=EVALUATORS, thread_name_prefix="gov-eval")
        self._jobs = {}               # (kind, sla) -> Future
        self._jobs_lock = threading.Lock()
        self._stop = threading.Event()
        self._unsaved = threading.Event()       # evaluations that ended after their round
        self._asked = {}              # sla -> (start, batch_seq first, last): its last ask (_due)
        self.rounds = 0
        self.http = None

    # -- receipts of one end ---------------------------------------------------------------------
    def _client(self, node_id, view):
        """A client of the device for one request, on a channel of its own. (A channel kept per
        device saves a TLS handshake a request, but a request on it to a device that went dark
        waits out its timeout and is answered once the device is back: the outage never shows
        as "unreachable", the epochs in it are counted late instead of unknown. Measured and
        withdrawn: tests/lab/test_lab_monitor.py, part 4.)"""
        node = view.nodes.get(node_id)
        addr = self.gov.endpoints.get(node_id)
        if node is None:
            raise LookupError(f"node {node_id} is not registered on the ledger")
        if addr is None:
            raise LookupError(f"no endpoint for node {node_id} in the configuration")
        return InterrogationClient(addr, self.gov.ca, self.gov.cert, self.gov.key,
                                   self.ledger.hash_name, node_id, node.pubkey,
                                   timeout=min(self.gov.timeout_s, 10.0),
                                   max_answer_bytes=self.svc.max_receipts_bytes)

    def _late(self, node_id, epoch_len, anchors=None):
        """``late(rc)`` for monitor.read_end: when the receipt's batch reached the ledger, the
        later of the watcher's first sight of it and the ledger's own time of the write
        (``Anchor.ledger_t_ns``, from ``anchors``: kept by the ledger, so known also for batches
        anchored while the service was down)."""
        late_ns = int(self.svc.late_after_s * 1e9)

        def late(rc):
            seen = self.watcher.seen.get((node_id, rc.anchor.batch_seq))
            a = anchors.get(node_id, rc.anchor.batch_seq) if anchors is not None else None
            wrote = getattr(a, "ledger_t_ns", None)
            if wrote is not None:
                seen = wrote if seen is None else max(seen, wrote)
            if seen is not None and seen > rc.epoch_ns + epoch_len + late_ns:
                return (f"back-dated: the receipt of epoch {rc.epoch_ns} is in batch "
                        f"{rc.anchor.batch_seq}, first on the ledger {(seen - rc.epoch_ns) / 1e9:.1f}"
                        f" s after the epoch began (more than late_after_s "
                        f"{self.svc.late_after_s:g} s)")
            return None
        return late

    def read_end(self, sla, node_id, role, epochs, view, shared=None):
        """``{epoch: Reading}`` of one end (monitor.read_end). ``shared`` (a ``RoundReads``):
        the round's anchors and, when the round planned it, the device's one receipts request
        of the round (every flow of its SLAs: the SLA's flow read from its answer, epochs in the
        SLA's window); else the device asked for the flow's receipts, and its overflow receipts
        of the window asked once per round for all its SLAs."""
        L = self.svc.epoch_ns
        lo, hi = epochs[0], epochs[-1]
        if shared is None:
            shared = RoundReads(self.ledger)
        anchors = shared.anchors
        req = shared.request_for(node_id, (bytes(sla.src), bytes(sla.dst)), lo, hi)
        try:
            if req is None:
                with self._client(node_id, view) as c:
                    flow = c.receipts(lo, hi, sla.src, sla.dst)
                over = shared.overflow(node_id, lo, hi, lambda: self._overflow(node_id, lo, hi,
                                                                              view, anchors))
            else:
                c = shared.device(req, lambda: self._hold(req, view))
                flow = c.receipts(lo, hi, sla.src, sla.dst)      # from the held answer
                over = shared.overflow(node_id, req.lo, req.hi,
                                       lambda: self._overflow(node_id, req.lo, req.hi, view,
                                                              anchors, c))
            checks = (verify.verify_receipts(node_id, self.ledger.hash_name, flow, self.ledger,
                                             anchors), over)
            if isinstance(over, Exception):
                raise over
        except LookupError as exc:
            return {e: Reading(UNREACHABLE, reason=str(exc)) for e in epochs}
        except LedgerError as exc:
            # the anchors could not be read to check the answer: nothing the device did (not
            # "refused"), asked again next round (unknown after final_after_s)
            return {e: Reading(PENDING, reason=f"its receipts could not be checked: the ledger: "
                               f"{exc}") for e in epochs}
        except Exception as exc:  # noqa: BLE001 (classified by monitor.read_end)
            self.counters.add(self.counters.fetch_errors, (sla.sla_id, node_id))
            checks = (exc, exc)
        a = view.anchors.get(node_id)
        problems = []
        out = monitor.read_end(checks[0], checks[1], role, epochs, L,
                               a.last_t_ns if a is not None else 0,
                               self._late(node_id, L, anchors),
                               problems, settle_ns=self.svc.settle_ns)
        for e, why in problems:
            self.counters.add(self.counters.refused, (sla.sla_id, node_id))
            with self.state.lock:
                self.state.sla(sla.sla_id)["refused_receipts"] += 1
            _event(logging.ERROR, "receipt refused: not counted", sla=sla.sla_id, node=node_id,
                   epoch_ns=e, reason=why)
        return out

    def _overflow(self, node_id, lo, hi, view, anchors, held=None):
        """The device's overflow receipts of [lo, hi], checked (or the exception); from the
        ``held`` client's answer when given (the round's request named the overflow flow)."""
        try:
            if held is not None:
                over = held.receipts(lo, hi, OVERFLOW, OVERFLOW)
            else:
                with self._client(node_id, view) as c:
                    over = c.receipts(lo, hi, OVERFLOW, OVERFLOW)
            return verify.verify_receipts(node_id, self.ledger.hash_name, over, self.ledger,
                                          anchors)
        except Exception as exc:  # noqa: BLE001 (each SLA of the device: classified by read_end)
            return exc

    def _hold(self, req, view):
        """The round's one receipts request to a device (``DeviceRequest``): a client holding
        its checked answer (the channel closed). Its cap (``held_answer_cap``): what an honest
        device can answer for the flows and window, at most ``max_receipts_bytes`` a flow."""
        with self._client(req.node_id, view) as c:
            c.max_answer_bytes = held_answer_cap(self.svc.max_receipts_bytes, len(req.flows),
                                                 req.lo, req.hi, self.svc.epoch_ns)
            c.hold(req.lo, req.hi, req.flows)
        return c

    # -- one SLA, one round ----------------------------------------------------------------------
    def _active(self, sla, now):
        """Valid now, or no longer valid with epochs of its validity not evaluated yet (they are
        evaluated, up to ``valid_to_ns``, then the SLA is left alone)."""
        if now < sla.valid_from_ns:
            return False
        if now <= sla.valid_to_ns:
            return True
        with self.state.lock:
            st = self.state.data["slas"].get(str(sla.sla_id))
            nxt = st.get("next_epoch") if st is not None else None
        return nxt is not None and nxt <= sla.valid_to_ns

    def evaluate_sla(self, sla, view, now=None, shared=None, batch=None):
        """Evaluate every settled epoch of ``sla`` not evaluated yet, in order (at most
        ``MAX_EPOCHS_PER_ROUND``); returns the results. ``shared``: the round's ``RoundReads``;
        ``batch``: the round's ``_Batch`` (the state saved and the disputes submitted once for
        the round's evaluations), else saved and submitted here."""
        now = self.clock() if now is None else now
        L = self.svc.epoch_ns
        with self.state.lock:
            st = self.state.sla(sla.sla_id)
            if st["next_epoch"] is None:
                # the first start: from now on, or ``backfill_s`` before (saved with the round)
                st["next_epoch"] = first_epoch(now, self.svc.backfill_s, L, sla.valid_from_ns)
                if batch is None or not batch.add([]):
                    self.state.save()
            start = st["next_epoch"]
        epochs = self._due(sla, view, now, start)
        if not epochs:
            return []
        first, last = sla.route[0], sla.route[-1]
        final_ns = int(self.svc.final_after_s * 1e9)
        if shared is None:
            shared = RoundReads(self.ledger)
        self._asked[sla.sla_id] = self._asking(sla, view, start)
        ing = self.read_end(sla, first, INGRESS, epochs, view, shared)
        egr = self.read_end(sla, last, EGRESS, epochs, view, shared)
        delay = self._delay_for(sla.sla_id)
        results = []
        with self.state.lock:
            st = self.state.sla(sla.sla_id)
            streak = Streak(self.svc.consecutive, L, self.svc.unknown_breaks, st["streak"])
            windows = []
            for e in epochs:
                a, b = ing[e], egr[e]
                waiting = a.status in (PENDING, UNREACHABLE) or b.status in (PENDING,
                                                                             UNREACHABLE)
                if waiting and now < e + L + final_ns:
                    break                                   # asked again next round
                r = monitor.evaluate_epoch(e, a, b, max_loss_ppm=sla.max_loss_ppm,
                                           max_delay_us=sla.max_delay_us, epoch_len_ns=L,
                                           delay_us=delay.get(e))
                results.append(r)
                self._record(sla.sla_id, st, r, a, b, first, last)
                w = streak.feed(r)
                if w is not None:
                    windows.append(w)
                st["next_epoch"] = e + L
            st["streak"] = list(streak.epochs)
            # saved with the epochs that made them, until the desk has them: a stop or crash
            # before the dispute job ran (queued behind interrogations) must not lose them
            st.setdefault("undisputed", []).extend([list(w) for w in windows])
        windows = [(sla.sla_id, w) for w in windows]
        if batch is not None and not results:
            return results                              # nothing changed
        if batch is None or not batch.add(windows):
            if batch is not None and not windows:
                # after its round closed, with no dispute: saved by the next round (a crash
                # before that evaluates these epochs again); saving the whole state once per
                # late evaluation made a round that ran late later still
                self._unsaved.set()
                return results
            self.state.save()
            self._dispute(windows)
        return results

    def _due(self, sla, view, now, start):
        """The epochs of ``sla`` a round evaluates from ``start`` (at most
        ``MAX_EPOCHS_PER_ROUND``), or ``[]``: none closed, or nothing can settle yet (the
        devices are not asked)."""
        L = self.svc.epoch_ns
        last_closed = min((now // L) * L - L, (sla.valid_to_ns // L) * L)
        if start > last_closed:
            return []
        final_ns = int(self.svc.final_after_s * 1e9)
        until = min(a.last_t_ns if a is not None else 0 for a in self._ends(sla, view))
        if not monitor.settled(until, start, L, self.svc.settle_ns) and \
                now < start + L + final_ns:
            # not settled: asked once for every new pair of anchors at the two ends that may
            # hold ``start``'s receipts (their span reaches it). An anchored receipt is final
            # (a second one for the epoch is refused), so an epoch whose receipts both ends
            # hold is counted as soon as they land; an epoch without one stays pending until
            # it settles.
            if until < start or self._asked.get(sla.sla_id) == self._asking(sla, view, start):
                return []
        return list(range(start, min(last_closed, start + (MAX_EPOCHS_PER_ROUND - 1) * L) + 1,
                          L))

    @staticmethod
    def _ends(sla, view):
        return view.anchors.get(sla.route[0]), view.anchors.get(sla.route[-1])

    def _asking(self, sla, view, start):
        """What an unsettled ask of ``sla`` from ``start`` saw: the epoch and the newest
        batch of each end (not asked again until one of them changes)."""
        return (start,) + tuple(getattr(a, "batch_seq", -1) for a in self._ends(sla, view))

    def _plan(self, slas, view, now):
        """The round's receipts requests (``plan_requests``): for every SLA with epochs due,
        its flow at its first and its last device over its window; and the ids of the SLAs the
        round evaluates (epochs due, or its first round: ``next_epoch`` to set)."""
        L = self.svc.epoch_ns
        ends, due = [], set()
        for sla in slas:
            with self.state.lock:
                start = self.state.sla(sla.sla_id)["next_epoch"]
            if start is None:           # its first round: as evaluate_sla will start it
                due.add(sla.sla_id)
                start = first_epoch(now, self.svc.backfill_s, L, sla.valid_from_ns)
            epochs = self._due(sla, view, now, start)
            if epochs:
                due.add(sla.sla_id)
                flow = (bytes(sla.src), bytes(sla.dst))
                for node in {sla.route[0], sla.route[-1]}:
                    ends.append((node, flow, epochs[0], epochs[-1]))
        return plan_requests(ends, MAX_EPOCHS_PER_ROUND * L), due

    def _dispute(self, windows):
        for sla_id, w in windows:
            w = tuple(w)
            self._submit(("dispute", sla_id, w), self._request, sla_id, w)

    def _undisputed(self):
        """The windows saved in the state not handed to the desk yet (a stop or a crash came
        first), as ``(sla, window)``."""
        with self.state.lock:
            return [(int(k), tuple(w)) for k, st in sorted(self.state.data["slas"].items())
                    for w in st.get("undisputed", ())]

    def _request(self, sla_id, w):
        """The window handed to the desk, then taken off the SLA's ``undisputed`` (saved). A stop
        or crash in between hands it again after the restart: the desk then finds its dispute
        (``overlaps``: nothing opened twice) or queues it again (the same window)."""
        with self.state.lock:
            if list(w) not in self.state.sla(sla_id).get("undisputed", []):
                return None                     # handed over already (another job)
        out = self.desk.request(sla_id, w[0], w[1], f"{self.svc.consecutive} consecutive "
                                "epochs violate the QM-SLA terms")
        with self.state.lock:
            pending = self.state.sla(sla_id).get("undisputed", [])
            if list(w) in pending:
                pending.remove(list(w))
            self.state.save()
        return out

    def _record(self, sla_id, st, r, a, b, first, last):
        st["epochs_evaluated"] += 1
        by = st.setdefault("by_result", {})
        by[r.result] = by.get(r.result, 0) + 1
        if r.result == monitor.VIOLATION:
            st["violations"] += 1
        if r.result == UNKNOWN:
            st["unknown"] += 1
            st["unknown_run"] += 1
            if st["unknown_run"] in (10, 100, 1000) or st["unknown_run"] % 10_000 == 0:
                _event(logging.WARNING, "epochs unknown in a row: a device of the route does "
                       "not let its receipts be checked", sla=sla_id, run=st["unknown_run"],
                       reasons="; ".join(r.reasons)[:300])
        else:
            st["unknown_run"] = 0
        if r.loss_ppm is not None:
            st["last_loss_ppm"] = r.loss_ppm
        self.state.record(sla_id, r.to_dict(),
                          [(node, role, r.epoch_ns, rd.R) for node, role, rd in
                           ((first, INGRESS, a), (last, EGRESS, b)) if rd.R])
        if r.result in (monitor.VIOLATION, UNKNOWN):
            _event(logging.INFO if r.result == UNKNOWN else logging.WARNING,
                   f"epoch {r.result}", sla=sla_id, epoch_ns=r.epoch_ns, ingress=r.ingress,
                   egress=r.egress, loss_ppm=r.loss_ppm, reasons="; ".join(r.reasons)[:300])

    # -- delay samples ---------------------------------------------------------------------------
    def _delay_for(self, sla_id):
        """{epoch: delay_us} of the last sample (the epochs its window covers)."""
        with self.state.lock:
            s = self.state.sla(sla_id).get("last_delay")
        if not s or "pct_us" not in s.get("e2e", {}):
            return {}
        L = self.svc.epoch_ns
        return {e: s["e2e"]["pct_us"] for e in range((s["from_ns"] // L) * L, s["to_ns"] + 1, L)}

    def _sample(self, sla):
        from .. import interrogate as itg
        now = self.clock()
        to_ns = now - int(self.svc.delay_sample_lag_s * 1e9)
        from_ns = to_ns - int(self.svc.delay_sample_window_s * 1e9) + 1
        try:
            it = itg.interrogate(self.ledger, sla.sla_id, from_ns, to_ns, self.gov,
                                 receipt_epoch_ns=self.svc.epoch_ns)
        except itg.NotJudgeable as exc:
            self.counters.add(self.counters.samples, (sla.sla_id, "not_judgeable"))
            _event(logging.WARNING, "delay sample not judgeable", sla=sla.sla_id, error=str(exc))
            return None
        s = summarise(sla, it, self.svc.delay_percentile)
        result = "unreachable" if s.unreachable else ("fault" if s.faulty else "ok")
        self.counters.add(self.counters.samples, (sla.sla_id, result))
        with self.state.lock:
            st = self.state.sla(sla.sla_id)
            st["samples"] += 1
            if s.e2e.get("count"):
                st["last_delay"] = s.to_dict()
            self.state.save()
        self.counters.equivocations(sla.sla_id, it)
        _event(logging.INFO, "delay sample", sla=sla.sla_id, from_ns=from_ns, to_ns=to_ns,
               e2e_p50_us=s.e2e.get("p50_us"), e2e_pct_us=s.e2e.get("pct_us"),
               packets=s.e2e.get("count"), faulty=s.faulty, unreachable=s.unreachable)
        route = set(sla.route)
        if not s.unreachable and any(n in route for n in s.faulty):
            # the interrogation of this window names a device of the route at fault: dispute it
            # with this very interrogation (its verdict; the sample only chose the window)
            self.desk.request(sla.sla_id, s.from_ns, s.to_ns,
                              "a sampled interrogation names "
                              + ", ".join(f"node {n} {s.verdicts[n]}" for n in s.faulty),
                              sample=it)
        return s

    # -- the loop --------------------------------------------------------------------------------
    def _submit(self, key, fn, *args, pool=None):
        with self._jobs_lock:
            fut = self._jobs.get(key)
            if fut is not None and not fut.done():
                return None
            fut = (pool or self.pool).submit(self._guard, key, fn, *args)
            self._jobs[key] = fut
            return fut

    @staticmethod
    def _guard(key, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 (one job's failure: logged, the service goes on)
            _event(logging.ERROR, "job failed", job=str(key[:2]),
                   error=f"{type(exc).__name__}: {exc}")
            log.debug("job failed", exc_info=True)
            return None

    def _evaluate(self, sla, view, now, shared=None, batch=None):
        try:
            self.evaluate_sla(sla, view, now, shared, batch)
        except Exception as exc:  # noqa: BLE001 (the ledger, a bug: next round again)
            _event(logging.ERROR, "evaluation failed; next round again", sla=sla.sla_id,
                   error=f"{type(exc).__name__}: {exc}")
            log.debug("evaluation failed", exc_info=True)

    def round(self):
        """One round: every active SLA's evaluation scheduled (on the evaluators: an SLA whose
        evaluation of the last round still runs, e.g. waiting for a device that hangs, is
        skipped; the others go on), samples and unfinished disputes scheduled."""
        view = self.watcher.view
        if view is None:
            return
        now = self.clock()
        started = []
        active = [sla for sla in sorted(view.slas.values(), key=lambda s: s.sla_id)
                  if self._active(sla, now)]
        plan, due = self._plan(active, view, now)
        shared, batch = RoundReads(self.ledger, plan), _Batch()
        for sla in active:
            if sla.sla_id in due:       # the others would find nothing to do (_due: [])
                started.append(self._submit(("evaluate", sla.sla_id), self._evaluate, sla,
                                            view, now, shared, batch, pool=self.evaluators))
            if self.svc.delay_sample_every_s > 0 and now <= sla.valid_to_ns:
                with self.state.lock:
                    st = self.state.sla(sla.sla_id)
                    due = now >= st.get("next_sample_ns", 0)
                    if due:
                        st["next_sample_ns"] = now + int(self.svc.delay_sample_every_s * 1e9)
                if due:
                    self._submit(("sample", sla.sla_id), self._sample, sla)
        # the usual round: every evaluation done (and its disputes scheduled) when it returns
        concurrent.futures.wait([f for f in started if f is not None], timeout=ROUND_WAIT_S)
        # the round's epochs saved once, then their disputes (an evaluation still running saves
        # its own when it ends with a dispute; without one, the next round saves it)
        changed, windows = batch.close()
        self._save(changed)
        self._dispute(windows)
        self._dispute(self._undisputed())       # left by a stop or a crash before their job
        self._submit(("resume", 0), self.desk.resume)
        self._submit(("adopt", 0), self.desk.adopt, view)
        self.rounds += 1

    def start(self):
        from .api import HttpServer
        self.watcher.start()
        self.http = HttpServer(self, self.svc.host_port).start()
        _event(logging.INFO, "governance service started", listen=self.svc.listen,
               state=self.state.path, consecutive=self.svc.consecutive,
               receipt_epoch_ms=self.svc.receipt_epoch_ms, start=self.state.data["started"])
        return self

    def loop(self):
        """Rounds until ``stop()``: after each ledger read (or ``poll_s``). A round starts as soon
        as the ledger was read since the last one began (no pause after a round: an anchor that
        lands during a round is seen at the next read and evaluated by the next round)."""
        while not self._stop.is_set():
            self.watcher.changed.wait(self.svc.poll_s)
            if self._stop.is_set():
                break
            self.watcher.changed.clear()
            self.round()

    def stop(self):
        self._stop.set()

    def _save(self, changed):
        """The state saved when ``changed`` or an evaluation that ended after its round left it
        unsaved."""
        if changed or self._unsaved.is_set():
            self._unsaved.clear()
            self.state.save()

    def close(self):
        self.watcher.stop()
        self._save(False)
        if self.http is not None:
            self.http.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.evaluators.shutdown(wait=False, cancel_futures=True)
        _event(logging.INFO, "governance service stopped")
