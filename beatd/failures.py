"""What can go wrong in a running daemon, as values (status, metrics and logs share them).

A ``Failure`` is one problem: its ``Kind`` (what failed, and so whether the daemon stops), where
(a capture worker, the store, the ledger) and the error text. ``str(failure)`` is the
``"<where>: <error>"`` line ``beatd status`` has always shown as ``failure``.

Kinds (docs/operations.md, "Failures"):

- ``capture``: a capture worker failed; the daemon stops (exit code 1, systemd restarts it);
- ``store``: the store failed (not for lack of room); the daemon stops likewise;
- ``store_full``: the store has no room (the LMDB map, or the disk): the batches that do not fit
  are dropped and counted, everything else goes on;
- ``ledger_down``: the ledger is unreachable (``Unavailable`` or a transport error): anchors are
  retried with backoff, nothing is lost;
- ``ledger_refused``: the ledger refused an anchor (not registered, a conflict...): submission
  halts until SIGHUP or a restart, batches are still built;
- ``anchor``: an anchor tick failed otherwise (retried at the next tick).
"""
import dataclasses
import enum
import time

__all__ = ["Kind", "Failure"]


class Kind(str, enum.Enum):
    CAPTURE = "capture"
    STORE = "store"
    STORE_FULL = "store_full"
    LEDGER_DOWN = "ledger_down"
    LEDGER_REFUSED = "ledger_refused"
    ANCHOR = "anchor"

    @property
    def fatal(self):
        """The daemon stops on it."""
        return self in (Kind.CAPTURE, Kind.STORE)


@dataclasses.dataclass(frozen=True)
class Failure:
    kind: Kind
    where: str                  # "capture worker 0", "store", "ledger", "anchor 1/7" ...
    error: str                  # the error's own text
    exc_type: str | None = None
    since: float | None = None  # when it began (time.time()), when known

    @classmethod
    def of(cls, kind, where, exc):
        """From an exception, now: its text and its type's name."""
        return cls(Kind(kind), where, str(exc), type(exc).__name__, time.time())

    @property
    def fatal(self):
        return self.kind.fatal

    def __str__(self):
        return f"{self.where}: {self.error}" if self.where else self.error

    def as_dict(self):
        """JSON-able (``beatd status``)."""
        return {"kind": self.kind.value, "where": self.where, "error": self.error,
                "exc_type": self.exc_type, "since": self.since}
