"""The MACs that are no configured neighbour's, as the daemon logs and shows them.

The pipeline records a frame whose neighbour MAC (the source MAC coming in, the destination MAC
going out) is in no ``[[neighbours]]`` entry as from (or to) outside, node 0, and lists them in a
small table (``Pipeline.take_unknown_macs``) that the committer reads at each commit. Here they
are added up by MAC, interface and direction, in a bounded table (``TABLE_MAX``; when full, the
half with the fewest frames goes), logged at INFO at most once per ``LOG_INTERVAL_S`` for each (the
frames in between go into the next line), at most ``LOG_BUDGET`` lines per interval in all (a
flood of made-up MACs cannot flood the log: what is held back is said in one line), and the most
frequent shown in ``beatd status``.

At an edge router the hosts beyond the edge are legitimately unknown: the line says what happens
to their frames ("recorded as from outside"), so that an operator tells a host from a neighbour
missing in the configuration.
"""
import logging
import time

from .config import format_mac
from .logs import event

__all__ = ["UnknownMacs", "LOG_INTERVAL_S", "LOG_BUDGET", "TABLE_MAX", "TOP"]

LOG_INTERVAL_S = 60.0       # at most one line per (MAC, interface, direction) in this time
LOG_BUDGET = 20             # lines per LOG_INTERVAL_S in all
TABLE_MAX = 1024            # (MAC, interface, direction) kept
TOP = 10                    # MACs shown in beatd status
CHECK_S = 1.0               # the table is looked at for lines due at most this often

_MSG = {1: "frames from a MAC that is no configured neighbour: recorded as from outside "
           "(prev_id 0); normal for a host beyond this router's edge, else a neighbour missing "
           "from [[neighbours]]",
        2: "frames to a MAC that is no configured neighbour: recorded as to outside (next_id 0); "
           "normal for a host beyond this router's edge, else a neighbour missing from "
           "[[neighbours]]"}


class _Seen:
    __slots__ = ("frames", "pending", "first", "last", "logged")

    def __init__(self, now):
        self.frames = self.pending = 0
        self.first = self.last = now
        self.logged = None          # monotonic time of the last line, None: never


class UnknownMacs:
    """``add()`` what the pipeline listed, ``log_due()`` the lines due, ``status()`` the top."""

    def __init__(self, log, clock=time.monotonic, wall=time.time):
        self._log = log
        self._clock = clock
        self._wall = wall
        self._seen = {}             # (mac, ifname, dir) -> _Seen
        self.frames = 0             # frames listed since start
        self.unlisted = 0           # frames of MACs the pipeline's table had no room for
        self.evicted = 0            # (mac, ifname, dir) dropped from a full table
        self._budget_start = None
        self._budget_used = 0
        self._held_back = set()     # keys with a line held back by the budget, this interval
        self._checked = None

    def add(self, listed, unlisted, names):
        """``listed``, ``unlisted``: ``Pipeline.take_unknown_macs()``; ``names``: ``{slot:
        ifname}`` of the capture (slot 0, or one not there: ``"slot N"``)."""
        self.unlisted += unlisted
        if not listed:
            return
        now = self._wall()
        for mac, slot, d, frames in listed:
            key = (mac, names.get(slot, "unknown interface" if slot == 0 else f"slot {slot}"), d)
            s = self._seen.get(key)
            if s is None:
                if len(self._seen) >= TABLE_MAX:
                    self._shrink()
                s = self._seen[key] = _Seen(now)
            s.frames += frames
            s.pending += frames
            s.last = now
            self.frames += frames

    def _shrink(self):
        """The half of the table with the fewest frames (the oldest first among equals) goes."""
        keep = sorted(self._seen.items(), key=lambda kv: (kv[1].frames, kv[1].last),
                      reverse=True)[:TABLE_MAX // 2]
        self.evicted += len(self._seen) - len(keep)
        self._seen = dict(keep)

    def log_due(self, force=False):
        """The lines due now (``force``: every count not logged yet, at stop; the budget holds
        then too)."""
        now = self._clock()
        if not force and self._checked is not None and now - self._checked < CHECK_S:
            return
        self._checked = now
        if self._budget_start is None or now - self._budget_start >= LOG_INTERVAL_S:
            if self._held_back:
                event(self._log, logging.WARNING, "frames with MACs that are no configured "
                      "neighbour's: more distinct MACs than are logged (a flood of made-up "
                      "MACs?); their frames are counted, the busiest in beatd status",
                      macs_not_logged=len(self._held_back), lines_per_interval=LOG_BUDGET,
                      interval_s=LOG_INTERVAL_S)
            self._budget_start, self._budget_used = now, 0
            self._held_back = set()
        for key, s in self._seen.items():
            if not s.pending:
                continue
            if not force and s.logged is not None and now - s.logged < LOG_INTERVAL_S:
                continue
            if self._budget_used >= LOG_BUDGET:
                self._held_back.add(key)
                continue
            mac, ifname, d = key
            event(self._log, logging.INFO, _MSG[d], mac=format_mac(mac), interface=ifname,
                  direction="ingress" if d == 1 else "egress", frames=s.pending,
                  since_s=None if s.logged is None else round(now - s.logged, 3))
            self._budget_used += 1
            s.logged, s.pending = now, 0
        if force and self._held_back:
            event(self._log, logging.WARNING, "frames with MACs that are no configured "
                  "neighbour's: not every MAC was logged (more than the log allows); their "
                  "frames are counted", macs_not_logged=len(self._held_back))
            self._held_back = set()

    def distinct(self):
        """The distinct MACs in the table."""
        return len({k[0] for k in self._seen})

    def status(self, top=TOP):
        """``{"distinct", "frames", "unlisted", "top": [{mac, frames, ingress, egress,
        interfaces: {ifname: frames}, first_seen, last_seen}]}``, the ``top`` busiest MACs."""
        by_mac = {}
        for (mac, ifname, d), s in self._seen.items():
            m = by_mac.setdefault(mac, {"mac": format_mac(mac), "frames": 0, "ingress": 0,
                                        "egress": 0, "interfaces": {}, "first_seen": s.first,
                                        "last_seen": s.last})
            m["frames"] += s.frames
            m["ingress" if d == 1 else "egress"] += s.frames
            m["interfaces"][ifname] = m["interfaces"].get(ifname, 0) + s.frames
            m["first_seen"] = min(m["first_seen"], s.first)
            m["last_seen"] = max(m["last_seen"], s.last)
        ranked = sorted(by_mac.values(), key=lambda m: (-m["frames"], m["mac"]))[:top]
        for m in ranked:
            m["first_seen"], m["last_seen"] = round(m["first_seen"], 3), round(m["last_seen"], 3)
        return {"distinct": len(by_mac), "frames": self.frames, "unlisted": self.unlisted,
                "evicted": self.evicted, "top": ranked}
