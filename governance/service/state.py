"""The service's own state on disk: ``<state_dir>/state.json``, written whole and atomically
(a temporary file, fsync, rename, fsync of the directory), so a SIGKILL at any moment leaves the
last complete state.

What it holds, so that a restart repeats no work and misses none:

- per SLA: ``next_epoch`` (the first epoch not evaluated yet: an epoch is evaluated once),
  the current ``streak`` of violating epochs, the recent ``series`` (for the API) and the totals
  (epochs evaluated, violations, unknown, refused receipts, disputes opened);
- ``disputes``: every dispute this service opened, by ``"<sla>:<from_ns>:<to_ns>"``; an entry is
  written BEFORE the ledger is asked to open it (``state "opening"``, no id yet): after a crash the
  service finds that dispute on the ledger by its SLA and window instead of opening a second one;
- ``counted``: the receipts (``R``) counted per SLA, node and epoch, for the recent epochs: the
  receipts a device hands the interrogation later are compared with them (equivocation).
"""
import copy
import json
import os
import threading

__all__ = ["State", "dispute_key"]

FORMAT = "beat-governance-service-state-v1"


def dispute_key(sla_id, from_ns, to_ns):
    return f"{sla_id}:{from_ns}:{to_ns}"


def _empty():
    return {"format": FORMAT, "slas": {}, "disputes": {}, "counted": {}, "started": 0}


class State:
    """The state (a JSON-able dict, ``data``) and its file. Threads change it under ``lock``
    (``with state.lock:``) and ``save()`` it; readers take ``snapshot()``."""

    def __init__(self, state_dir):
        self.dir = state_dir
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        self.path = os.path.join(state_dir, "state.json")
        self.lock = threading.RLock()
        self.data = _empty()
        if os.path.exists(self.path):
            with open(self.path) as f:
                try:
                    data = json.load(f)
                except ValueError as exc:
                    raise ValueError(f"{self.path}: not the service's state ({exc}); move it "
                                     "away to start afresh") from None
            if not isinstance(data, dict):
                raise ValueError(f"{self.path}: not the service's state (a JSON "
                                 f"{type(data).__name__}, not an object); move it away to "
                                 "start afresh")
            if data.get("format") != FORMAT:
                raise ValueError(f"{self.path}: format {data.get('format')!r}, expected "
                                 f"{FORMAT!r}")
            self.data = data
        self.data["started"] = self.data.get("started", 0) + 1

    def sla(self, sla_id):
        """The state of ``sla_id`` (created empty)."""
        with self.lock:
            return self.data["slas"].setdefault(str(sla_id), {
                "next_epoch": None, "streak": [], "series": [], "epochs_evaluated": 0,
                "violations": 0, "unknown": 0, "unknown_run": 0, "refused_receipts": 0,
                "disputes_opened": 0, "equivocations": 0, "last_delay": None,
                "next_sample_ns": 0, "samples": 0, "blocked_until_ns": 0, "by_result": {}})

    def save(self):
        with self.lock:
            text = json.dumps(self.data, sort_keys=True, separators=(",", ":"))
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def snapshot(self):
        with self.lock:
            return copy.deepcopy(self.data)
