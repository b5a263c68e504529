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
    ``errors`` failed polls, ``seen`` {(node, batch_seq): first seen ns}."""

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
        self._stop = threading.Event()
        self._thread = None
        self.changed = threading.Event()

    def poll_once(self):
        with self.lock:
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
            self._stop.wait(delay)

    def start(self):
        self._thread = threading.Thread(target=self.run, name="ledger-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
