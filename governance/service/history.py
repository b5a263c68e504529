"""The service's history: ``<state_dir>/history.mdb`` (LMDB), the per-epoch records that grow
with time, kept apart from ``state.json`` so that a round writes what it added, not everything.

- ``series``: each SLA's evaluated epochs (``EpochResult.to_dict()``), the last ``keep_epochs``;
- ``counted``: the receipts (``R``) the monitor counted, per SLA, node, role and epoch, as long
  (the interrogation's receipts are compared with them: equivocation).

Keys (big-endian, so that a cursor walks an SLA's epochs in order):
``b"s" sla(8) epoch_ns(8)`` -> the result as JSON; ``b"c" sla(8) node(8) role(1) epoch_ns(8)``
-> R (its 32 bytes). One write transaction per ``write`` (LMDB's: all of it or none of it, on
disk when ``write`` returns); records older than ``keep_epochs`` epochs before the newest of
their SLA are deleted in the same transaction.

Measured: ``state.json`` holding 600 epochs of 1,000 SLAs with their receipts was 195 MB, 3.2 s to
write and 3.9 s to copy for the API; here a round of 1,000 SLA-epochs is one transaction of
~3,000 puts.
"""
import json
import os
import struct
import threading

import lmdb

__all__ = ["History"]

_SLA = struct.Struct(">Q")
_SERIES = struct.Struct(">cQQ")
_COUNTED = struct.Struct(">cQQBQ")
MAP_SIZE = 1 << 32                      # address space only (a sparse file); grown when full
# LMDB refuses a second open of one file in a process (and its locks would break): the Histories
# of one file in a process share its environment (realpath -> [env, users])
_OPEN = {}
_LOCK = threading.Lock()


class History:
    def __init__(self, path, keep_epochs=600, epoch_ns=10**9, map_size=MAP_SIZE):
        self.path = path
        self.keep_epochs = keep_epochs
        self.epoch_ns = epoch_ns
        self._key = os.path.realpath(path)
        with _LOCK:
            shared = _OPEN.get(self._key)
            if shared is None:
                try:
                    env = lmdb.open(path, subdir=False, map_size=map_size, max_dbs=0,
                                    metasync=True, sync=True, readahead=False)
                except lmdb.Error as exc:
                    raise ValueError(f"{path}: the service's history cannot be opened ({exc}); "
                                     "move it away to start afresh (the series and counted "
                                     "receipts are lost, the state is not)") from None
                shared = _OPEN[self._key] = [env, 0]
            shared[1] += 1
        self.env = shared[0]
        self._closed = False

    # -- writing -------------------------------------------------------------------------------
    def write(self, results, counted, keep=None):
        """``results``: ``[(sla_id, result_dict)]``; ``counted``: ``[(sla_id, node, role,
        epoch_ns, R hex)]``. One transaction; the old records of their SLAs pruned, except the
        counted receipts of the windows in ``keep`` (``{sla_id: [(from_ns, to_ns)]}``: those
        still to be interrogated, whose receipts the interrogation's are compared with)."""
        if not results and not counted:
            return
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    self._write(txn, results, counted, keep or {})
                return
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def _write(self, txn, results, counted, keep):
        newest = {}
        for sla, d in results:
            e = int(d["epoch_ns"])
            txn.put(_SERIES.pack(b"s", sla, e),
                    json.dumps(d, separators=(",", ":")).encode())
            newest[sla] = max(newest.get(sla, e), e)
        nodes = {}
        for sla, node, role, e, R in counted:
            txn.put(_COUNTED.pack(b"c", sla, node, role, e), bytes.fromhex(R))
            nodes.setdefault(sla, set()).add(node)
            newest[sla] = max(newest.get(sla, e), e)
        span = self.keep_epochs * self.epoch_ns
        cur = txn.cursor()
        for sla, e in newest.items():
            floor = e - span
            if floor <= 0:
                continue
            self._prune(cur, b"s" + _SLA.pack(sla), floor)
            # an epoch meets a window [from, to] when from - epoch_ns < epoch <= to
            spared = [(f - self.epoch_ns, t) for f, t in keep.get(sla, ())]
            for node in nodes.get(sla, ()):
                for role in (1, 2):
                    self._prune(cur, b"c" + _SLA.pack(sla) + _SLA.pack(node) + bytes([role]),
                                floor, spared)

    @staticmethod
    def _prune(cur, prefix, floor, spared=()):
        """Deletes the keys ``prefix + epoch`` with epoch <= ``floor``, but those with an epoch
        in one of the ``spared`` intervals ``(lo, hi]``."""
        if not cur.set_range(prefix):
            return
        n = len(prefix)
        while True:
            k = cur.key()
            if k[:n] != prefix or len(k) != n + 8:
                return
            e = int.from_bytes(k[n:], "big")
            if e > floor:
                return
            if any(lo < e <= hi for lo, hi in spared):
                if not cur.next():
                    return
            elif not cur.delete():
                return

    # -- reading -------------------------------------------------------------------------------
    def series(self, sla_id, limit=None):
        """The SLA's recorded epochs, oldest first (the last ``limit`` when given)."""
        prefix = b"s" + _SLA.pack(int(sla_id))
        out = []
        with self.env.begin() as txn:
            cur = txn.cursor()
            if limit is None:
                if cur.set_range(prefix):
                    for k, v in cur:
                        if not k.startswith(prefix):
                            break
                        out.append(json.loads(v))
                return out
            # from the newest backwards
            if cur.set_range(b"s" + _SLA.pack(int(sla_id) + 1)):
                ok = cur.prev()
            else:
                ok = cur.last()
            while ok and len(out) < limit:
                k = cur.key()
                if not k.startswith(prefix):
                    break
                out.append(json.loads(cur.value()))
                ok = cur.prev()
            out.reverse()
            return out

    def counted(self, sla_id):
        """``{node (str): {"role:epoch_ns": R hex}}`` of the SLA."""
        prefix = b"c" + _SLA.pack(int(sla_id))
        out = {}
        with self.env.begin() as txn:
            cur = txn.cursor()
            if cur.set_range(prefix):
                for k, v in cur:
                    if not k.startswith(prefix):
                        break
                    _, _, node, role, e = _COUNTED.unpack(k)
                    out.setdefault(str(node), {})[f"{role}:{e}"] = bytes(v).hex()
        return out

    def close(self):
        with _LOCK:
            if self._closed:
                return
            self._closed = True
            shared = _OPEN.get(self._key)
            if shared is not None:
                shared[1] -= 1
                if shared[1] <= 0:
                    del _OPEN[self._key]
                    shared[0].close()


def path_in(state_dir):
    return os.path.join(state_dir, "history.mdb")
