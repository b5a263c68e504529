"""Watches the ledger (polling): SLAs, nodes, each node's newest anchor, disputes (with their
votes), pending proposals and the committee. ``poll()`` reads everything once into a
``LedgerView``; a failure (the ledger unreachable, a local file being rewritten) is counted,
logged and retried with backoff by the caller (``Watcher.run``) -- the last good view stays.

Anchors: the watcher remembers when it first saw each ``(node_id, batch_seq)`` (``seen_ns``), for
batches that appeared while it was watching (those on the ledger at its start have none): a
receipt anchored long after its epoch (back-dated) is refused by the monitor on that basis.
"""
import dataclasses
import logging
import threading
import time

__all__ = ["LedgerView", "Watcher", "read_view"]

log = logging.getLogger("beatd.governance.watcher")
MAX_SEEN = 100_000                 # (node, batch) first-seen times kept (the oldest go first)
TICK_S = 0.05                      # a ledger with a change marker: looked at this often ...
MIN_POLL_S = 0.2                   # ... and read whole at most this often when it moved


@dataclasses.dataclass
class LedgerView:
    t_ns: int
    slas: dict                      # sla_id -> SLA
    nodes: dict                     # node_id -> Node
    anchors: dict                   # node_id -> newest Anchor (or None)
    disputes: dict                  # dispute_id -> Dispute
    votes: dict                     # dispute_id -> [Vote]
    pending: list                   # Proposal
    committee: object = None
    tenants: dict = dataclasses.field(default_factory=dict)


def _slas(ledger):
    get = getattr(ledger, "slas", None)
    if get is not None:
        return list(get())
    out, i, misses = [], 1, 0
    while misses < 3 and i < 10_000:         # a backend without a list: ids from 1
        s = ledger.get_sla(i)
        if s is None:
            misses += 1
        else:
            misses = 0
            out.append(s)
        i += 1
    return out


def read_view(ledger, now_ns=None):
    """Everything the service reads from the ledger, once."""
    now = time.time_ns() if now_ns is None else now_ns
    slas = {s.sla_id: s for s in _slas(ledger)}
    nodes = {n.node_id: n for n in ledger.nodes()}
    anchors = {}
    for n in nodes:
        nxt = ledger.next_batch_seq(n)
        anchors[n] = ledger.get_anchor(n, nxt - 1) if nxt > 0 else None
    disputes, votes = {}, {}
    get_disputes = getattr(ledger, "disputes", None)
    for d in (get_disputes() if get_disputes is not None else ()):
        disputes[d.dispute_id] = d
        get_votes = getattr(ledger, "dispute_votes", None)
        if get_votes is not None and d.state != "settled":
            votes[d.dispute_id] = list(get_votes(d.dispute_id))
    pending = list(ledger.pending()) if hasattr(ledger, "pending") else []
    committee = ledger.committee() if hasattr(ledger, "committee") else None
    return LedgerView(now, slas, nodes, anchors, disputes, votes, pending, committee)


class Watcher:
    """Polls the ledger every ``poll_s`` in its own thread (``start``/``stop``); ``view`` is the
    newest good ``LedgerView`` (None before the first), ``up`` whether the last poll worked,
    ``errors`` failed polls, ``seen`` {(node, batch_seq): first seen ns}. A ledger with a
    ``change_marker()`` (the local ledger: LMDB's last transaction id) is also read as soon as
    it moved (looked at every ``TICK_S``, read at most every ``MIN_POLL_S``): an anchor is seen
    ~0.1 s after it lands instead of up to ``poll_s``."""

    def __init__(self, ledger, poll_s, lock=None, clock=time.time_ns):
        self.ledger = ledger
        self.poll_s = poll_s
        self.lock = lock or threading.RLock()      # the ledger object is shared: one user at a time
        self.clock = clock
        self.view = None
        self.up = False
        self.errors = 0
        self.polls = 0
        self.seen = {}
        self._known_seq = {}                        # node -> next batch_seq at the last poll
        try:
            self._marker_of = getattr(ledger, "change_marker", None)
        except Exception:  # noqa: BLE001 (a backend that answers attributes oddly: no marker)
            self._marker_of = None
        self._marker = None                         # the marker when the last poll began
        self._stop = threading.Event()
        self._thread = None
        self.changed = threading.Event()

    def poll_once(self):
        with self.lock:
            self._marker = self._read_marker()
            view = read_view(self.ledger, self.clock())
        for n, a in view.anchors.items():
            nxt = a.batch_seq + 1 if a is not None else 0
            before = self._known_seq.get(n)
            if before is not None:
                for b in range(before, nxt):
                    self.seen.setdefault((n, b), view.t_ns)
            self._known_seq[n] = nxt
        if len(self.seen) > MAX_SEEN:
            for key in sorted(self.seen, key=self.seen.get)[:len(self.seen) - MAX_SEEN]:
                del self.seen[key]
        self.view = view
        self.up = True
        self.polls += 1
        self.changed.set()
        return view

    def run(self):
        delay = self.poll_s
        while not self._stop.is_set():
            try:
                self.poll_once()
                if delay != self.poll_s:
                    log.info("ledger readable again", extra={"fields": {"errors": self.errors}})
                delay = self.poll_s
            except Exception as exc:  # noqa: BLE001 (any ledger failure: retried, the view kept)
                self.errors += 1
                if self.up or delay == self.poll_s:
                    log.warning("the ledger cannot be read; retrying",
                                extra={"fields": {"error": f"{type(exc).__name__}: {exc}",
                                                  "retry_s": round(delay, 2)}})
                self.up = False
                delay = min(max(delay * 2, self.poll_s), 30.0)
            self._wait(delay)

    def _read_marker(self):
        if self._marker_of is None:
            return None
        try:
            return self._marker_of()
        except Exception:  # noqa: BLE001 (no marker now: the poll interval alone)
            return None

    def _wait(self, delay):
        """``delay``, or less: until the ledger's change marker moved, ``MIN_POLL_S`` at least
        after the last poll began."""
        if self._marker is None or delay != self.poll_s:
            self._stop.wait(delay)                  # no marker, or backing off after errors
            return
        end = time.monotonic() + delay
        if self._stop.wait(min(MIN_POLL_S, delay)):
            return
        while time.monotonic() < end:
            with self.lock:
                moved = self._read_marker() != self._marker
            if moved:
                return
            if self._stop.wait(min(TICK_S, max(0.0, end - time.monotonic()))):
                return

    def start(self):
        self._thread = threading.Thread(target=self.run, name="ledger-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
