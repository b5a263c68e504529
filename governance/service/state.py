"""The service's own state on disk: ``<state_dir>/state.json``, written whole and atomically
(a temporary file, fsync, rename, fsync of the directory), so a SIGKILL at any moment leaves the
last complete state; and what grows with time, per epoch, in ``<state_dir>/history.mdb``
(history.py: the series and the counted receipts), written first by the same ``save``.

What it holds, so that a restart repeats no work and misses none:

- per SLA: ``next_epoch`` (the first epoch not evaluated yet: an epoch is evaluated once),
  the current ``streak`` of violating epochs, the last loss measured and the totals (epochs
  evaluated, violations, unknown, refused receipts, disputes opened); its recent ``series``
  (for the API) is in the history;
- ``disputes``: every dispute this service opened, by ``"<sla>:<from_ns>:<to_ns>"``; an entry is
  written BEFORE the ledger is asked to open it (``state "opening"``, no id yet): after a crash the
  service finds that dispute on the ledger by its SLA and window instead of opening a second one;
- ``counted`` (in the history): the receipts (``R``) counted per SLA, node and epoch, for the
  recent epochs: the receipts a device hands the interrogation later are compared with them
  (equivocation).

A crash between the history's write and the file's leaves epochs in the history that the file
has not counted: they are evaluated again after the restart and written again under the same
keys (an epoch is recorded once). A state written before the history existed (its ``series`` and
``counted`` in the file) is moved into the history at the first save.
"""
import copy
import json
import os
import threading

from .history import History, path_in

__all__ = ["State", "dispute_key", "read"]

FORMAT = "beat-governance-service-state-v1"
FINISHED = ("filed", "not_judgeable")          # a dispute entry's states with nothing to come


def dispute_key(sla_id, from_ns, to_ns):
    return f"{sla_id}:{from_ns}:{to_ns}"


def _empty():
    return {"format": FORMAT, "slas": {}, "disputes": {}, "started": 0}


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
        self.history = History(path_in(state_dir))
        self._results, self._counted = [], []        # recorded, written by the next save
        for sid, st in self.data["slas"].items():    # a state from before the history
            series = st.pop("series", ())
            self._results += [(int(sid), d) for d in series]
            known = [d["loss_ppm"] for d in series if d.get("loss_ppm") is not None]
            if known and st.get("last_loss_ppm") is None:
                st["last_loss_ppm"] = known[-1]         # the metrics' last loss
        for sid, nodes in self.data.pop("counted", {}).items():
            for node, rs in nodes.items():
                for key, R in rs.items():
                    role, e = key.split(":")
                    self._counted.append((int(sid), int(node), int(role), int(e), R))

    def keep(self, epochs, epoch_ns):
        """How much history to keep: ``epochs`` epochs of ``epoch_ns`` per SLA."""
        self.history.keep_epochs, self.history.epoch_ns = epochs, epoch_ns

    def record(self, sla_id, result, counted=()):
        """An evaluated epoch of ``sla_id`` (``result``: its dict) and the receipts counted for
        it (``(node, role, epoch_ns, R hex)``), written by the next ``save``."""
        with self.lock:
            self._results.append((int(sla_id), result))
            self._counted += [(int(sla_id),) + tuple(c) for c in counted]

    def series(self, sla_id, limit=None):
        """The SLA's recent evaluated epochs, oldest first (those not saved yet included)."""
        with self.lock:
            mine = [d for s, d in self._results if s == int(sla_id)]
        out = self.history.series(sla_id, limit)
        if mine:
            by = {d["epoch_ns"]: d for d in out}
            by.update((d["epoch_ns"], d) for d in mine)
            out = [by[e] for e in sorted(by)]
            if limit is not None:
                out = out[-limit:] if limit > 0 else []
        return out

    def counted(self, sla_id):
        """``{node (str): {"role:epoch_ns": R hex}}``: the receipts counted for the SLA."""
        with self.lock:
            mine = [c for c in self._counted if c[0] == int(sla_id)]
        out = self.history.counted(sla_id)
        for _, node, role, e, R in mine:
            out.setdefault(str(node), {})[f"{role}:{e}"] = R
        return out

    def sla(self, sla_id):
        """The state of ``sla_id`` (created empty)."""
        with self.lock:
            return self.data["slas"].setdefault(str(sla_id), {
                "next_epoch": None, "streak": [], "epochs_evaluated": 0,
                "violations": 0, "unknown": 0, "unknown_run": 0, "refused_receipts": 0,
                "disputes_opened": 0, "equivocations": 0, "last_delay": None,
                "next_sample_ns": 0, "samples": 0, "blocked_until_ns": 0, "by_result": {}})

    def save(self):
        with self.lock:
            if self._results or self._counted:
                # first: see the module doc
                self.history.write(self._results, self._counted, self.unfinished_windows())
                self._results, self._counted = [], []
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

    def unfinished_windows(self):
        """``{sla_id: [(from_ns, to_ns)]}``: the windows still to be interrogated (disputes not
        filed, queued and undisputed windows), whose counted receipts the history keeps past
        ``series_epochs``: an interrogation held up (a device of the route unreachable) still
        finds a device's other receipt an equivocation."""
        out = {}
        with self.lock:
            for d in self.data["disputes"].values():
                if d.get("state") not in FINISHED:
                    out.setdefault(int(d["sla_id"]), []).append((d["from_ns"], d["to_ns"]))
            for sid, st in self.data["slas"].items():
                for w in st.get("undisputed", ()):
                    out.setdefault(int(sid), []).append((w[0], w[1]))
                q = st.get("queued")
                if q:
                    out.setdefault(int(sid), []).append((q["from_ns"], q["to_ns"]))
        return out

    def snapshot(self, series=False):
        """A copy of the state; with ``series``, each SLA's ``series`` and the ``counted``
        receipts from the history too (a read of every SLA's records: not for every request)."""
        with self.lock:
            out = copy.deepcopy(self.data)
        return _with_history(out, self.series, self.counted) if series else out

    def close(self):
        self.history.close()


def read(state_dir):
    """The state a service saved in ``state_dir`` (also while it runs, from another process),
    each SLA with its ``series`` and the ``counted`` receipts from the history, as
    ``State.snapshot(series=True)``; None when there is no complete state file yet."""
    try:
        with open(os.path.join(state_dir, "state.json")) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not os.path.exists(path_in(state_dir)):
        return _with_history(data, lambda sid: [], lambda sid: {})
    h = History(path_in(state_dir))
    try:
        return _with_history(data, h.series, h.counted)
    finally:
        h.close()


def _with_history(data, series_of, counted_of):
    """``data`` (a state dict) with each SLA's ``series`` and the ``counted`` receipts."""
    data["counted"] = {}
    for sid, st in data.get("slas", {}).items():
        st["series"] = series_of(sid)
        c = counted_of(sid)
        if c:
            data["counted"][sid] = c
    return data
