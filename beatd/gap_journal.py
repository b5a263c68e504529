"""The daemon's side of capture gaps (docs/gap-records.md): the kernel-drop pieces the capture
workers note become gap records of at most ``RECORD_INTERVAL_S`` each, drops are logged at most
once per interface every ``LOG_INTERVAL_S`` (the frames since the previous line), and a summary
per interface is logged at stop (frames dropped, gap records, total blind time).

Each record the store writes is an immutable, anchored statement; coalescing the workers'
snapshots (every ``RING_STATS_INTERVAL_S``, per worker) into one record per interface and
second bounds how many statements a flood makes (one per interface and second at most), while a
record still says when the device was blind to within a second.

Not thread-safe: the committer owns it (the workers hand their pieces over through the
daemon's locked list).
"""
import logging
import time

from beat_common.gap_record import GAP_KERNEL_DROPS, GAP_REASONS

from .logs import event

RECORD_INTERVAL_S = 1.0      # a kernel-drops gap record spans about this much at most
LOG_INTERVAL_S = 10.0        # one "kernel drops" line per interface at most this often
TOUCH_NS = 500_000_000       # pieces this close are one episode (snapshots are 0.25 s apart)


class GapJournal:
    """``add(pieces)`` the workers' pieces ``(from_ns, to_ns, frames, reason, interface)``;
    ``due(force)`` the gaps to write now; ``written(gaps)`` after the store took them (or
    ``requeue(gaps)`` when it could not); ``summary()`` per interface."""

    def __init__(self, log, record_interval_s=RECORD_INTERVAL_S, log_interval_s=LOG_INTERVAL_S,
                 clock=time.monotonic):
        self.log = log
        self.record_interval_s = record_interval_s
        self.log_interval_s = log_interval_s
        self.clock = clock
        self._open = {}          # interface -> [from_ns, to_ns, frames, opened (monotonic)]
        self._ready = []         # gaps to write, in order
        self._since_log = {}     # interface -> [frames, gaps, from_ns] since its last line
        self._logged = {}        # interface -> monotonic time of its last line
        self.totals = {}         # interface -> {"frames_dropped", "gaps", "blind_ns"}

    def add(self, pieces):
        now = self.clock()
        for g in pieces:
            from_ns, to_ns, frames, reason, iface = g
            if reason != GAP_KERNEL_DROPS:
                self._ready.append(tuple(g))
                continue
            cur = self._open.get(iface)
            if cur is not None and from_ns <= cur[1] + TOUCH_NS and to_ns + TOUCH_NS >= cur[0]:
                cur[0], cur[1] = min(cur[0], from_ns), max(cur[1], to_ns)
                cur[2] += frames
                continue
            if cur is not None:
                self._close(iface)
            self._open[iface] = [from_ns, to_ns, frames, now]

    def _close(self, iface):
        f, t, n, _ = self._open.pop(iface)
        self._ready.append((f, t, n, GAP_KERNEL_DROPS, iface))

    def due(self, force=False):
        """The gaps to write now: every capture-stopped gap, and each interface's kernel-drops
        gap once it has been open ``record_interval_s`` (every one with ``force``)."""
        now = self.clock()
        for iface in [i for i, cur in self._open.items()
                      if force or now - cur[3] >= self.record_interval_s]:
            self._close(iface)
        out, self._ready = self._ready, []
        return out

    def requeue(self, gaps):
        """The store could not take ``gaps``: written with the next call of ``due``."""
        self._ready[:0] = gaps

    def pending(self):
        return len(self._ready) + len(self._open)

    def written(self, gaps, force_log=False):
        """Count what the store took; log the drops, rate-limited per interface."""
        now = self.clock()
        for from_ns, to_ns, frames, reason, iface in gaps:
            if reason != GAP_KERNEL_DROPS:      # a capture stop is logged when it is found
                continue
            t = self.totals.setdefault(iface, {"frames_dropped": 0, "gaps": 0, "blind_ns": 0})
            t["frames_dropped"] += frames
            t["gaps"] += 1
            t["blind_ns"] += to_ns - from_ns
            s = self._since_log.setdefault(iface, [0, 0, from_ns])
            s[0] += frames
            s[1] += 1
        for iface, s in list(self._since_log.items()):
            last = self._logged.get(iface)
            if s[1] and (force_log or last is None or now - last >= self.log_interval_s):
                event(self.log, logging.WARNING, "capture gap: kernel drops", interface=iface,
                      frames=s[0], gap_records=s[1], since_ns=s[2],
                      seconds=None if last is None else round(now - last, 1))
                self._logged[iface] = now
                del self._since_log[iface]

    def summary(self):
        """Per interface, this run's kernel drops: frames dropped, gap records written, blind
        time in seconds (the records' spans added up)."""
        return {iface: {
                    "frames_dropped": t["frames_dropped"], "gaps": t["gaps"],
                    "blind_s": round(t["blind_ns"] / 1e9, 3)}
                for iface, t in sorted(self.totals.items())}

    def log_summary(self):
        """At stop: a line of what is still unlogged, then one line per interface."""
        self.written((), force_log=True)
        for iface, s in self.summary().items():
            event(self.log, logging.WARNING, "capture gaps this run: kernel drops",
                  interface=iface, **s)


__all__ = ["GapJournal", "RECORD_INTERVAL_S", "LOG_INTERVAL_S", "GAP_REASONS"]
