"""The device's durable state: proof ring, commitments, counters, receipts, ledger outbox, in LMDB.

One LMDB environment (one directory) per device, with one named database per kind of data, so that a
single write transaction per fast-path batch (``Store.commit(output)``) covers all of it: after a
crash or a SIGKILL the store holds exactly the state after some committed batch, never half of one,
and ``resume_state()`` hands the pipeline what it needs to continue from there. The layout is in
docs/store.md; every key is big-endian so that LMDB's byte order is numeric order.

``prune(now_ns, threshold_ns)`` drops, a bounded number of leaves per call, what the ledger already
holds and the governance can no longer ask for: whole anchored batches older than the threshold
whose segments have left the proof ring (their outbox leaves, receipts, segment commitments and tree
levels). Nothing that is not anchored is ever pruned.
"""
import contextlib
import errno
import json
import logging
import os
import struct
import time

import lmdb

import fastpath
from fastpath.output import (COUNTER_SIZE, HASH_NAMES, OPEN_RECEIPT_SIZE, RECEIPT_SIZE,
                             RECORD_SIZE, STAT_NAMES)
from ledger_client.outbox import ANCHORED, ANCHORS_DB, LEAF_PROOFS_DB, BatchRecord

log = logging.getLogger("beatd.store")

__all__ = ["Store", "StoreError", "StoreFullError", "StoreDiskError", "StoreDiskFullError",
           "StoreMismatchError", "StoreCorruptError", "FORMAT_VERSION", "SYNC_MODES",
           "PRUNE_LEAVES", "no_room"]

FORMAT_VERSION = 1
SYNC_MODES = ("periodic", "always", "never")
DB_NAMES = ("proofs", "commitments", "counters", "receipts", "outbox", "meta", "capture_gaps")
LEAF_RECEIPT, LEAF_SEGMENT = 1, 2
RECEIPT_KEY_SIZE = 41            # epoch_ns(8) role(1) src(16) dst(16)
SEG_HEAD = 40                    # a proofs value: count(8) S(32) records
_U64 = struct.Struct(">Q")
_COMMIT = struct.Struct(">32sQQQ")       # S count first_t_ns last_t_ns
_COUNTER = struct.Struct(">QQQQ")        # packets bytes first_t_ns last_t_ns
_RECEIPT_VAL = struct.Struct(">QQ32s")   # packets bytes R
_T_NS = struct.Struct(">Q40x")           # t_ns of a 48-byte record
_GAP_KEY = struct.Struct(">QB16s")       # capture_gaps key: from_ns reason interface
_GAP_VAL = struct.Struct(">QQ")          # capture_gaps value: to_ns frames_dropped
GAP_KERNEL_DROPS, GAP_CAPTURE_STOPPED = 1, 2      # docs/interrogation.md, coverage gaps
MAX_CAPTURE_GAPS = 10_000                # beyond it the oldest two merge (a wider, coarser gap)
_GAP_MERGE_LOOKBACK = 64                 # recent gaps looked at for one to extend
_LEVELS_KEY = b"L"                       # leaf_proofs: b"L" || batch_seq -> the batch's tree levels
# Outbox leaves pruned per call at most (each: the leaf, and its receipt or segment commitment):
# a few milliseconds, and twenty calls a second prune ~40,000 leaves/s, far more than the cap
# lets the store make (2 x 1,025 receipts per epoch and the segments)
PRUNE_LEAVES = 2048
# meta keys of the pruning (absent in a store that never pruned: 0)
PRUNE_META = ("prune_batch", "outbox_base", "pruned_segments", "pruned_records", "pruned_receipts")


class StoreError(Exception):
    """The store cannot do what was asked; the message names the path and what to change."""


class StoreFullError(StoreError):
    """The LMDB map is full (raise map_size)."""


class StoreDiskError(StoreError):
    """The disk failed or is full."""


class StoreDiskFullError(StoreFullError, StoreDiskError):
    """The disk holding the store is full (ENOSPC): a StoreFullError too, the store has no room."""


class StoreMismatchError(StoreError):
    """The store belongs to another node, hash or format version."""


class StoreCorruptError(StoreError):
    """The files are not a (valid) LMDB environment, or its content breaks the store's rules."""


# A write that failed with an I/O error while the store's filesystem has less than this free is
# taken for a full disk: LMDB reports a short write (the disk filled during the commit) as EIO.
DISK_FULL_FREE_BYTES = 1 << 20


def _disk_nearly_full(path):
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < DISK_FULL_FREE_BYTES


def no_room(exc, path=None):
    """Whether ``exc`` says the store has no room: ``StoreFullError``, or the raw py-lmdb (or OS)
    error of a full map or disk, from code that writes the environment directly (the ledger
    outbox): ENOSPC, or with ``path`` (the store's directory) an I/O error while its filesystem
    is (nearly) full."""
    if isinstance(exc, (StoreFullError, lmdb.MapFullError)):
        return True
    if isinstance(exc, OSError):
        code = exc.errno
    elif isinstance(exc, lmdb.Error):
        text = str(exc)
        code = (errno.ENOSPC if os.strerror(errno.ENOSPC) in text else
                errno.EIO if os.strerror(errno.EIO) in text else None)
    else:
        return False
    return code == errno.ENOSPC or (code == errno.EIO and path is not None and
                                    _disk_nearly_full(path))


# py-lmdb exceptions -> (our exception, what to do about it). Checked in order (subclasses first).
_ERROR_TABLE = (
    (lmdb.MapFullError, StoreFullError,
     "the LMDB map is full ({map_size} bytes): raise store.map_size"),
    (lmdb.MapResizedError, StoreFullError,
     "another process grew the LMDB map: reopen the store"),
    (lmdb.DiskError, StoreDiskError, "disk error: check the disk and free space"),
    (lmdb.CorruptedError, StoreCorruptError, "the LMDB files are corrupted: restore or remove them"),
    (lmdb.InvalidError, StoreCorruptError, "not an LMDB environment: remove it or choose another path"),
    (lmdb.VersionMismatchError, StoreCorruptError, "written by another LMDB version"),
    (lmdb.ReadersFullError, StoreError, "too many readers of the store"),
    (lmdb.DbsFullError, StoreCorruptError, "too many named databases: not a beatd store"),
    (lmdb.Error, StoreError, "LMDB error"),
)


def _u64(b, default=0):
    return default if b is None else _U64.unpack(b)[0]


def _p64(n):
    return _U64.pack(n)


class Store:
    """A device's LMDB store. ``commit(output)`` per batch; readers for tools, tests and gRPC.

    ``sync``: ``"always"`` makes every commit durable before it returns (fsync); ``"periodic"`` (the
    default) opens the environment without sync and flushes at most every ``sync_interval_s`` from
    ``commit`` and at close: a process crash (even SIGKILL) loses nothing, a power cut at most the last
    interval, always back to a consistent committed batch; ``"never"`` leaves it to the OS.
    """

    def __init__(self, path, node_id, hash_name, ring_size, map_size=None, sync="periodic",
                 sync_interval_s=1.0):
        self.path = os.fspath(path)
        if hash_name not in HASH_NAMES:
            raise ValueError(f"hash_name: {hash_name!r} is not one of {', '.join(HASH_NAMES)}")
        if sync not in SYNC_MODES:
            raise ValueError(f"sync: {sync!r} is not one of {', '.join(SYNC_MODES)}")
        if not 1 <= node_id <= (1 << 64) - 2:
            raise ValueError(f"node_id: {node_id} is not in 1..2^64-2")
        if ring_size <= 0:
            raise ValueError(f"ring_size: {ring_size} must be more than 0")
        self.node_id = node_id
        self.hash_name = hash_name
        self.ring_size = ring_size
        self.map_size = map_size if map_size else 4 * ring_size + (1 << 30)
        self.sync_mode = sync
        self.sync_interval_s = sync_interval_s
        self._last_sync = time.monotonic()
        self.env = None
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise StoreDiskError(f"{self.path}: cannot create the store directory: "
                                 f"{exc.strerror or exc}") from None
        with self._errors("opening"):
            self.env = lmdb.open(self.path, map_size=self.map_size, max_dbs=len(DB_NAMES) + 2,
                                 subdir=True, sync=(sync == "always"), metasync=(sync == "always"),
                                 readahead=False)
            self.db = {}
            with self.env.begin(write=True) as txn:
                for name in DB_NAMES:
                    self.db[name] = self.env.open_db(name.encode(), txn=txn, create=True)
                self._check_or_init(txn)
        self.db_anchors = self.db_leaf_proofs = None
        self._open_ledger_dbs()

    # -- errors ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, doing):
        try:
            yield
        except StoreError:
            raise
        except lmdb.Error as exc:
            if not isinstance(exc, lmdb.MapFullError) and no_room(exc, self.path):
                raise StoreDiskFullError(f"{self.path}: {doing}: the disk is full: free space "
                                         f"({exc})") from None
            for lmdb_cls, cls, advice in _ERROR_TABLE:
                if isinstance(exc, lmdb_cls):
                    raise cls(f"{self.path}: {doing}: "
                              f"{advice.format(map_size=self.map_size)} ({exc})") from None
            raise  # pragma: no cover (lmdb.Error is the last row)
        except OSError as exc:
            if no_room(exc, self.path):
                raise StoreDiskFullError(f"{self.path}: {doing}: the disk is full: free space "
                                         f"({exc})") from None
            raise StoreDiskError(f"{self.path}: {doing}: disk error ({exc})") from None

    def _open_ledger_dbs(self):
        """The ledger outbox's databases (``anchors``, ``leaf_proofs``: ledger_client.outbox makes
        them), which ``prune()`` reads and trims; opened once they exist, never created here (a
        full store must still open). A handle is opened in a write transaction (one opened in a
        read transaction closes with it), which writes nothing for a database that exists."""
        if self.db_anchors is not None:
            return True
        with self._errors("opening the outbox databases"):
            with self.env.begin() as txn:     # named databases are keys of the main one
                if txn.get(ANCHORS_DB) is None or txn.get(LEAF_PROOFS_DB) is None:
                    return False
            with self.env.begin(write=True) as txn:
                anchors = self.env.open_db(ANCHORS_DB, txn=txn)
                proofs = self.env.open_db(LEAF_PROOFS_DB, txn=txn)
        self.db_anchors, self.db_leaf_proofs = anchors, proofs
        return True

    def _check_or_init(self, txn):
        meta = self.db["meta"]
        version = txn.get(b"format_version", db=meta)
        if version is None:
            for key, value in ((b"format_version", _p64(FORMAT_VERSION)),
                               (b"node_id", _p64(self.node_id)),
                               (b"hash", self.hash_name.encode()),
                               (b"next_seg_seq", _p64(0)), (b"open_records", b""),
                               (b"open_receipts", b""), (b"closed_before", _p64(0)),
                               (b"next_leaf_seq", _p64(0)),
                               (b"stats", json.dumps(dict.fromkeys(STAT_NAMES, 0)).encode()),
                               (b"ring_wraps", _p64(0)), (b"ring_oldest_seq", _p64(0)),
                               (b"ring_oldest_t_ns", _p64(0)), (b"ring_bytes", _p64(0)),
                               (b"ring_segments", _p64(0))) + tuple(
                                   (name.encode(), _p64(0)) for name in PRUNE_META):
                txn.put(key, value, db=meta)
            return
        if _u64(version) != FORMAT_VERSION:
            raise StoreMismatchError(f"{self.path}: store format version {_u64(version)}, this beatd "
                                     f"reads version {FORMAT_VERSION}")
        stored_node = _u64(txn.get(b"node_id", db=meta))
        if stored_node != self.node_id:
            raise StoreMismatchError(f"{self.path}: this store belongs to node_id {stored_node}, not "
                                     f"{self.node_id}; use another store path")
        stored_hash = bytes(txn.get(b"hash", db=meta)).decode()
        if stored_hash != self.hash_name:
            raise StoreMismatchError(f"{self.path}: this store was written with hash {stored_hash}, "
                                     f"not {self.hash_name}; use another store path")

    # -- life cycle -----------------------------------------------------------------------------

    def close(self):
        if self.env is not None:
            if self.sync_mode == "periodic":
                with contextlib.suppress(lmdb.Error, OSError):
                    self.env.sync(True)
            self.env.close()
            self.env = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def sync(self):
        """Flush committed transactions to disk now."""
        with self._errors("syncing"):
            self.env.sync(True)
        self._last_sync = time.monotonic()

    # -- writing --------------------------------------------------------------------------------

    def commit(self, output):
        """Write one ``fastpath.Output`` in one transaction (all of it, or nothing)."""
        with self._errors("committing a batch"):
            with self.env.begin(write=True) as txn:
                self._commit(txn, output)
        if self.sync_mode == "periodic":
            now = time.monotonic()
            if now - self._last_sync >= self.sync_interval_s:
                self.sync()

    def _commit(self, txn, out):
        db = self.db
        meta = db["meta"]

        def mget(key):
            return _u64(txn.get(key, db=meta))

        next_seg = mget(b"next_seg_seq")
        leaf = mget(b"next_leaf_seq")
        ring_bytes = mget(b"ring_bytes")
        ring_segments = mget(b"ring_segments")
        wraps = mget(b"ring_wraps")
        oldest = mget(b"ring_oldest_seq")

        # segments: proof ring, commitment, outbox leaf
        for seg_seq, count, value, records in out.segments:
            if seg_seq != next_seg:
                raise StoreCorruptError(
                    f"{self.path}: segment {seg_seq} does not follow the stored ones (expected "
                    f"{next_seg}): was the pipeline resumed from Store.resume_state()?")
            if len(records) != count * RECORD_SIZE or len(value) != 32:
                raise StoreCorruptError(f"{self.path}: segment {seg_seq}: count {count} does not "
                                        f"match {len(records)} bytes of records")
            first_t, last_t = fastpath.t_range(records)
            key = _p64(seg_seq)
            txn.put(key, _p64(count) + value + records, db=db["proofs"], append=True)
            txn.put(key, _COMMIT.pack(value, count, first_t, last_t), db=db["commitments"],
                    append=True)
            txn.put(_p64(leaf), bytes((LEAF_SEGMENT,)) + value, db=db["outbox"], append=True)
            leaf += 1
            ring_bytes += 8 + SEG_HEAD + len(records)
            ring_segments += 1
            next_seg += 1
        if out.open_seg_seq != next_seg:
            raise StoreCorruptError(
                f"{self.path}: the open segment is {out.open_seg_seq} but the store expects "
                f"{next_seg}: was the pipeline resumed from Store.resume_state()?")

        # the ring wraps: drop the oldest segments while it holds more than ring_size bytes
        if ring_bytes > self.ring_size:
            cur = txn.cursor(db=db["proofs"])
            while ring_bytes > self.ring_size and cur.first():
                ring_bytes -= 8 + len(cur.value())
                ring_segments -= 1
                wraps += 1
                cur.delete()
            oldest = _u64(cur.key()) if ring_segments and cur.first() else next_seg
        if ring_segments == 0:
            oldest = next_seg
        oldest_t = 0
        if ring_segments:
            oldest_t = _COMMIT.unpack(txn.get(_p64(oldest), db=db["commitments"]))[2]

        # counters: add the deltas
        cdb = db["counters"]
        counters = out.counters
        for off in range(0, len(counters), COUNTER_SIZE):
            key = counters[off:off + 16]
            pk, nb, first, last = _COUNTER.unpack_from(counters, off + 16)
            old = txn.get(key, db=cdb)
            if old is not None:
                opk, onb, ofirst, olast = _COUNTER.unpack(old)
                pk, nb, first, last = opk + pk, onb + nb, min(first, ofirst), max(last, olast)
            txn.put(key, _COUNTER.pack(pk, nb, first, last), db=cdb)

        # receipts, each with its outbox leaf; a key seen before keeps its first receipt
        rdb = db["receipts"]
        receipts = out.receipts
        closed_before = max(out.closed_before, mget(b"closed_before"))
        duplicates = 0
        for off in range(0, len(receipts), RECEIPT_SIZE):
            key = receipts[off:off + RECEIPT_KEY_SIZE]
            r = receipts[off + RECEIPT_KEY_SIZE + 16:off + RECEIPT_SIZE]
            if not txn.put(key, receipts[off + RECEIPT_KEY_SIZE:off + RECEIPT_SIZE], db=rdb,
                           overwrite=False):
                duplicates += 1
                continue
            txn.put(_p64(leaf), bytes((LEAF_RECEIPT,)) + r, db=db["outbox"], append=True)
            leaf += 1
            # a finalised epoch stays closed after a restart, even one flush() closed early
            closed_before = max(closed_before, _u64(key[:8]) + 1)

        stats = json.loads(bytes(txn.get(b"stats", db=meta)))
        for name, n in out.stats.items():
            stats[name] = stats.get(name, 0) + n
        if duplicates:
            stats["receipt_duplicate"] = stats.get("receipt_duplicate", 0) + duplicates

        for k, v in ((b"next_seg_seq", _p64(next_seg)), (b"next_leaf_seq", _p64(leaf)),
                     (b"open_records", bytes(out.open_records)),
                     (b"open_receipts", bytes(out.open_receipts)),
                     (b"closed_before", _p64(closed_before)),
                     (b"stats", json.dumps(stats, separators=(",", ":")).encode()),
                     (b"ring_wraps", _p64(wraps)), (b"ring_oldest_seq", _p64(oldest)),
                     (b"ring_oldest_t_ns", _p64(oldest_t)), (b"ring_bytes", _p64(ring_bytes)),
                     (b"ring_segments", _p64(ring_segments))):
            txn.put(k, v, db=meta)

    # -- capture gaps ---------------------------------------------------------------------------

    def record_capture(self, gaps=(), alive_t_ns=None, threshold_ns=None,
                       max_gaps=MAX_CAPTURE_GAPS):
        """Record capture gaps and that capture ran until ``alive_t_ns``, in one transaction.

        ``gaps``: ``(from_ns, to_ns, frames_dropped, reason, interface)`` each, reason
        ``GAP_KERNEL_DROPS`` or ``GAP_CAPTURE_STOPPED``, interface a name (``""``: every one). A
        gap that touches or overlaps a recent one of the same reason and interface extends it
        (frames added). ``alive_t_ns`` goes to meta ``capture_alive_t_ns`` (the next start's
        "capture stopped" gap begins there). With ``threshold_ns``, gaps that ended before both
        ``alive_t_ns - threshold_ns`` and the ring's oldest record are pruned; beyond ``max_gaps``
        the oldest gap is merged into the next one (the result covers both: a coarser statement,
        never a missing one)."""
        with self._errors("recording capture gaps"):
            with self.env.begin(write=True) as txn:
                db = self.db["capture_gaps"]
                for gap in gaps:
                    self._add_gap(txn, db, *gap)
                meta = self.db["meta"]
                if alive_t_ns is not None:
                    txn.put(b"capture_alive_t_ns", _p64(alive_t_ns), db=meta)
                if threshold_ns is not None and alive_t_ns is not None:
                    cutoff = max(0, alive_t_ns - threshold_ns)
                    if _u64(txn.get(b"ring_segments", db=meta)):
                        cutoff = min(cutoff, _u64(txn.get(b"ring_oldest_t_ns", db=meta)))
                    self._prune_gaps(txn, db, cutoff)
                n = txn.stat(db)["entries"]
                while n > max(1, max_gaps):
                    self._merge_oldest_gaps(txn, db)
                    n -= 1

    @staticmethod
    def _gap_key(from_ns, reason, interface):
        name = interface.encode("ascii") if isinstance(interface, str) else bytes(interface)
        return _GAP_KEY.pack(from_ns, reason, name[:16])

    def _add_gap(self, txn, db, from_ns, to_ns, frames, reason, interface):
        if reason not in (GAP_KERNEL_DROPS, GAP_CAPTURE_STOPPED) or from_ns > to_ns:
            raise ValueError(f"capture gap [{from_ns}, {to_ns}] reason {reason}: not a gap")
        key = self._gap_key(from_ns, reason, interface)
        cur = txn.cursor(db=db)
        # a recent gap of the same reason and interface that this one touches: extend it
        if to_ns < (1 << 64) - 1 and cur.set_range(_p64(to_ns + 1)):
            found = cur.prev()               # the newest gap starting at or before to_ns
        else:
            found = cur.last()
        looked = 0
        while found and looked < _GAP_MERGE_LOOKBACK:
            k, v = bytes(cur.key()), bytes(cur.value())
            g_from, g_reason, g_if = _GAP_KEY.unpack(k)
            g_to, g_frames = _GAP_VAL.unpack(v)
            if g_reason == reason and g_if == key[9:] and g_to >= from_ns and g_from <= to_ns:
                cur.delete()
                from_ns, to_ns = min(from_ns, g_from), max(to_ns, g_to)
                frames += g_frames
                key = self._gap_key(from_ns, reason, interface)
                break
            looked += 1
            found = cur.prev()
        old = txn.get(key, db=db)
        if old is not None:                  # the same start: one gap, the longer end
            o_to, o_frames = _GAP_VAL.unpack(old)
            to_ns, frames = max(to_ns, o_to), frames + o_frames
        txn.put(key, _GAP_VAL.pack(to_ns, frames), db=db)

    @staticmethod
    def _prune_gaps(txn, db, cutoff):
        cur = txn.cursor(db=db)
        ok = cur.first()
        while ok:
            g_from = _U64.unpack(bytes(cur.key()[:8]))[0]
            if g_from >= cutoff:
                break
            if _GAP_VAL.unpack(bytes(cur.value()))[0] < cutoff:
                ok = cur.delete() and bool(cur.key())       # on the next gap, if any
            else:
                ok = cur.next()

    def _merge_oldest_gaps(self, txn, db):
        cur = txn.cursor(db=db)
        if not cur.first():
            return
        a_from, a_reason, a_if = _GAP_KEY.unpack(bytes(cur.key()))
        a_to, a_frames = _GAP_VAL.unpack(bytes(cur.value()))
        cur.delete()
        if not cur.first():
            return
        b_from, b_reason, b_if = _GAP_KEY.unpack(bytes(cur.key()))
        b_to, b_frames = _GAP_VAL.unpack(bytes(cur.value()))
        cur.delete()
        reason = GAP_CAPTURE_STOPPED if GAP_CAPTURE_STOPPED in (a_reason, b_reason) else a_reason
        iface = a_if if a_if == b_if else bytes(16)
        key = _GAP_KEY.pack(min(a_from, b_from), reason, iface)
        old = txn.get(key, db=db)
        to_ns, frames = max(a_to, b_to), a_frames + b_frames
        if old is not None:
            o_to, o_frames = _GAP_VAL.unpack(old)
            to_ns, frames = max(to_ns, o_to), frames + o_frames
        txn.put(key, _GAP_VAL.pack(to_ns, frames), db=db)

    def capture_gaps(self, from_ns=0, to_ns=(1 << 64) - 1):
        """The capture gaps overlapping [from_ns, to_ns]: ``(from_ns, to_ns, frames_dropped,
        reason, interface)`` each, sorted by (from_ns, to_ns, reason, interface)."""
        out = []
        with self._read() as txn:
            for k, v in txn.cursor(db=self.db["capture_gaps"]):
                g_from, reason, iface = _GAP_KEY.unpack(bytes(k))
                if g_from > to_ns:
                    break
                g_to, frames = _GAP_VAL.unpack(bytes(v))
                if g_to >= from_ns:
                    out.append((g_from, g_to, frames, reason,
                                iface.rstrip(b"\x00").decode("ascii", "replace")))
        out.sort(key=lambda g: (g[0], g[1], g[3], g[4]))
        return out

    def capture_gap_status(self):
        """``{"count", "last"}``: how many capture gaps are stored and the one that ended last
        (``{"from_ns", "to_ns", "frames_dropped", "reason", "interface"}``, or None)."""
        with self._read() as txn:
            db = self.db["capture_gaps"]
            n = txn.stat(db)["entries"]
            last = None
            # the gap that ended last is among the newest starts (bounded look-back)
            cur = txn.cursor(db=db)
            ok, looked = cur.last(), 0
            while ok and looked < _GAP_MERGE_LOOKBACK:
                g_from, reason, iface = _GAP_KEY.unpack(bytes(cur.key()))
                g_to, frames = _GAP_VAL.unpack(bytes(cur.value()))
                if last is None or g_to > last["to_ns"]:
                    last = {"from_ns": g_from, "to_ns": g_to, "frames_dropped": frames,
                            "reason": "kernel drops" if reason == GAP_KERNEL_DROPS
                            else "capture stopped",
                            "interface": iface.rstrip(b"\x00").decode("ascii", "replace")}
                ok, looked = cur.prev(), looked + 1
        return {"count": n, "last": last}

    def capture_alive_t_ns(self):
        """When capture last ran (meta ``capture_alive_t_ns``), or None (never recorded)."""
        with self._read() as txn:
            v = txn.get(b"capture_alive_t_ns", db=self.db["meta"])
        return None if v is None else _u64(v)

    # -- pruning --------------------------------------------------------------------------------

    def prune(self, now_ns, threshold_ns, max_leaves=PRUNE_LEAVES):
        """Prune at most ``max_leaves`` outbox leaves of what may go (docs/store.md, "Pruning"):
        the batches, oldest first, that are anchored, whose newest leaf time (``last_t_ns``) is
        older than ``now_ns - threshold_ns`` and whose segments all left the proof ring; with each
        leaf its receipt or segment commitment, with each batch its tree levels. A batch larger
        than ``max_leaves`` is pruned over several calls. Never a leaf of a batch not anchored.

        One write transaction, only when there is something to prune (a read first). Returns
        ``{"leaves", "receipts", "segments", "batches"}`` pruned by this call."""
        done = {"leaves": 0, "receipts": 0, "segments": 0, "batches": 0}
        if max_leaves < 1 or not self._open_ledger_dbs():
            return done
        cutoff = now_ns - threshold_ns
        with self._read() as txn:
            if self._prunable(txn, cutoff) is None:
                return done
        with self._errors("pruning"):
            with self.env.begin(write=True) as txn:
                self._prune(txn, cutoff, max_leaves, done)
        return done

    def _prunable(self, txn, cutoff, b=None):
        """The BatchRecord of the batch to prune next (``b``, else the store's ``prune_batch``),
        or None when it may not go (yet)."""
        meta = self.db["meta"]
        if b is None:
            b = _u64(txn.get(b"prune_batch", db=meta))
        v = txn.get(_p64(b), db=self.db_anchors)
        if v is None:
            return None
        rec = BatchRecord.unpack(b, v)
        ring_oldest = _u64(txn.get(b"ring_oldest_seq", db=meta))
        if not _u64(txn.get(b"ring_segments", db=meta)):
            ring_oldest = _u64(txn.get(b"next_seg_seq", db=meta))
        if rec.status != ANCHORED or rec.last_t_ns >= cutoff or rec.seg_leaves_end > ring_oldest:
            return None
        return rec

    def _prune(self, txn, cutoff, budget, done):
        db = self.db
        meta = db["meta"]
        state = {name: _u64(txn.get(name.encode(), db=meta)) for name in PRUNE_META}
        while budget > 0:
            rec = self._prunable(txn, cutoff, state["prune_batch"])
            if rec is None:
                break
            base = max(state["outbox_base"], rec.first_leaf_seq)
            end = min(rec.end_leaf_seq, base + budget)
            receipts = set()
            seg = state["pruned_segments"]
            cur = txn.cursor(db=db["outbox"])
            ok = cur.set_range(_p64(base))
            while ok and _u64(cur.key()) < end:
                leaf = cur.value()
                if leaf[0] == LEAF_SEGMENT:
                    c = txn.get(_p64(seg), db=db["commitments"])
                    if c is None or bytes(c[:32]) != bytes(leaf[1:]):
                        raise StoreCorruptError(
                            f"{self.path}: outbox leaf {_u64(cur.key())} is segment {seg}'s, but "
                            "commitments do not hold that S: not pruning (check with verify())")
                    state["pruned_records"] += _COMMIT.unpack(c)[1]
                    txn.delete(_p64(seg), db=db["commitments"])
                    seg += 1
                    done["segments"] += 1
                elif leaf[0] == LEAF_RECEIPT:
                    receipts.add(bytes(leaf[1:]))
                done["leaves"] += 1
                ok = cur.delete() and bool(cur.key())
            state["pruned_segments"] = seg
            if receipts:
                n = self._prune_receipts(txn, receipts, rec)
                state["pruned_receipts"] += n
                done["receipts"] += n
            budget -= end - base
            state["outbox_base"] = end
            if end < rec.end_leaf_seq:
                break
            # the whole batch is gone: its tree levels (and proofs of the former per-leaf format)
            txn.delete(_LEVELS_KEY + _p64(rec.batch_seq), db=self.db_leaf_proofs)
            cur = txn.cursor(db=self.db_leaf_proofs)
            ok = cur.set_range(_p64(rec.first_leaf_seq))
            while ok and len(cur.key()) == 8 and _u64(cur.key()) < rec.end_leaf_seq:
                ok = cur.delete() and bool(cur.key())
            state["prune_batch"] = rec.batch_seq + 1
            done["batches"] += 1
        for name, value in state.items():
            txn.put(name.encode(), _p64(value), db=meta)

    def _prune_receipts(self, txn, values, rec):
        """Delete the receipts whose R is in ``values`` (of batch ``rec``): the receipts are keyed
        by epoch first and made in leaf order, so they are the oldest ones held; the scan stops
        past the batch's time. Returns how many were deleted."""
        cur = txn.cursor(db=self.db["receipts"])
        ok = cur.first()
        n = 0
        while ok and values:
            k = cur.key()
            if _u64(k[:8]) > rec.last_t_ns:
                break
            r = bytes(cur.value()[16:48])
            if r in values:
                values.discard(r)
                n += 1
                ok = cur.delete() and bool(cur.key())
            else:
                ok = cur.next()
        if values:
            log.warning("%s: batch %d: %d receipt leaves pruned without their receipt (not "
                        "found up to the batch's last_t_ns %d)", self.path, rec.batch_seq,
                        len(values), rec.last_t_ns)
        return n

    # -- reading --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _read(self):
        with self._errors("reading"):
            with self.env.begin() as txn:
                yield txn

    def _meta(self, txn):
        meta = self.db["meta"]
        out = {}
        for k, v in txn.cursor(db=meta):
            name = bytes(k).decode()
            if name in ("hash",):
                out[name] = bytes(v).decode()
            elif name == "stats":
                out[name] = json.loads(bytes(v))
            elif name in ("open_records", "open_receipts"):
                out[name] = bytes(v)
            else:
                out[name] = _u64(v)
        return out

    def meta(self):
        """Everything in ``meta``, decoded (ints, the hash name, stats dict, the open blobs)."""
        with self._read() as txn:
            return self._meta(txn)

    def resume_state(self):
        """Keyword arguments for ``Pipeline.resume(...)`` after a restart."""
        m = self.meta()
        return {"next_seg_seq": m["next_seg_seq"], "open_records": m["open_records"],
                "open_receipts": m["open_receipts"], "closed_before": m["closed_before"]}

    def stats(self):
        """The pipeline's statistics, accumulated over every committed batch."""
        return self.meta()["stats"]

    def segments(self):
        """The segments in the ring, oldest first: ``(seg_seq, count, S, records)``."""
        with self._read() as txn:
            return [(_u64(k), _u64(v[:8]), bytes(v[8:SEG_HEAD]), bytes(v[SEG_HEAD:]))
                    for k, v in txn.cursor(db=self.db["proofs"])]

    def commitments(self):
        """The segment commitments held (every one made, but the pruned ones):
        ``(seg_seq, S, count, first_t_ns, last_t_ns)``."""
        with self._read() as txn:
            return [(_u64(k),) + _COMMIT.unpack(v) for k, v in txn.cursor(db=self.db["commitments"])]

    def iter_records(self):
        """The 48-byte records: the ring's segments, oldest first, then the open segment."""
        segs = self.segments()
        open_records = self.meta()["open_records"]
        for _, _, _, records in segs:
            for off in range(0, len(records), RECORD_SIZE):
                yield records[off:off + RECORD_SIZE]
        for off in range(0, len(open_records), RECORD_SIZE):
            yield open_records[off:off + RECORD_SIZE]

    def counters(self):
        """``{(prev_id, next_id): (packets, bytes, first_t_ns, last_t_ns)}``."""
        with self._read() as txn:
            return {struct.unpack(">QQ", k): _COUNTER.unpack(v)
                    for k, v in txn.cursor(db=self.db["counters"])}

    def receipts(self):
        """Finalised receipts: ``(epoch_ns, role, src, dst, packets, bytes, R)``, by key."""
        out = []
        with self._read() as txn:
            for k, v in txn.cursor(db=self.db["receipts"]):
                epoch, role = struct.unpack_from(">QB", k)
                out.append((epoch, role, bytes(k[9:25]), bytes(k[25:41])) + _RECEIPT_VAL.unpack(v))
        return out

    def outbox(self):
        """The ledger leaves in the order produced: ``(leaf_seq, type, value)``."""
        with self._read() as txn:
            return [(_u64(k), v[0], bytes(v[1:])) for k, v in txn.cursor(db=self.db["outbox"])]

    def prune_status(self):
        """What pruning removed so far: ``{"batches", "segments", "receipts", "records",
        "outbox_base"}`` (cumulative, from the meta)."""
        with self._read() as txn:
            meta = self.db["meta"]
            v = {name: _u64(txn.get(name.encode(), db=meta)) for name in PRUNE_META}
        return {"batches": v["prune_batch"], "segments": v["pruned_segments"],
                "receipts": v["pruned_receipts"], "records": v["pruned_records"],
                "outbox_base": v["outbox_base"]}

    def ring_status(self, now_ns, threshold_ns):
        """How much time the proof ring covers, and whether it is ``short`` of the threshold."""
        with self._read() as txn:
            m = self._meta(txn)
            newest_t = 0
            if m["ring_segments"]:
                with txn.cursor(db=self.db["commitments"]) as cur:
                    if cur.last():
                        newest_t = _COMMIT.unpack(cur.value())[3]
        oldest_t = m["ring_oldest_t_ns"] if m["ring_segments"] else None
        open_lo = None
        if m["open_records"]:
            open_lo, open_hi = fastpath.t_range(m["open_records"])
            newest_t = max(newest_t, open_hi)
            if oldest_t is None:
                oldest_t = open_lo
        wrapped = m["ring_wraps"] > 0
        return {
            "oldest_seg_seq": m["ring_oldest_seq"],
            "oldest_t_ns": oldest_t,
            "newest_t_ns": newest_t or None,
            "segments": m["ring_segments"],
            "bytes": m["ring_bytes"],
            "ring_size": self.ring_size,
            "wraps": m["ring_wraps"],
            "short": wrapped and (oldest_t is None or now_ns - oldest_t < threshold_ns),
            # the records of the segment still open (not committed to S, not in the outbox yet)
            "open_records": len(m["open_records"]) // fastpath.RECORD_SIZE,
            "open_oldest_t_ns": open_lo,
        }

    # -- checking -------------------------------------------------------------------------------

    def verify(self):
        """Recompute every stored S and check the store's invariants; a list of problems."""
        problems = []
        self._open_ledger_dbs()
        with self._read() as txn:
            m = self._meta(txn)
            segs = [(_u64(k), bytes(v)) for k, v in txn.cursor(db=self.db["proofs"])]
            commits = {_u64(k): _COMMIT.unpack(v)
                       for k, v in txn.cursor(db=self.db["commitments"])}
            leaves = [(_u64(k), bytes(v)) for k, v in txn.cursor(db=self.db["outbox"])]
            receipts = [(bytes(k), _RECEIPT_VAL.unpack(v))
                        for k, v in txn.cursor(db=self.db["receipts"])]
            counter_packets = sum(_COUNTER.unpack(v)[0]
                                  for v in txn.cursor(db=self.db["counters"]).iternext(values=True,
                                                                                      keys=False))
            batches = []
            if self.db_anchors is not None:
                batches = [BatchRecord.unpack(_u64(k), v)
                           for k, v in txn.cursor(db=self.db_anchors)]
        nxt = m["next_seg_seq"]
        pruned = {name: m.get(name, 0) for name in PRUNE_META}
        base, pseg = pruned["outbox_base"], pruned["pruned_segments"]
        # proof ring
        ring_bytes = 0
        for i, (seq, v) in enumerate(segs):
            if i and seq != segs[i - 1][0] + 1:
                problems.append(f"proofs: segment {segs[i - 1][0]} is followed by {seq}")
            count, value, records = _u64(v[:8]), v[8:SEG_HEAD], v[SEG_HEAD:]
            ring_bytes += 8 + len(v)
            if len(records) != count * RECORD_SIZE:
                problems.append(f"proofs[{seq}]: count {count} but {len(records)} bytes of records")
            s = fastpath.segment_value(self.hash_name, self.node_id, seq, records)
            if bytes(s) != value:
                problems.append(f"proofs[{seq}]: S does not recompute from its records")
            c = commits.get(seq)
            if c is None:
                problems.append(f"proofs[{seq}]: no commitment")
            else:
                ts = [t for (t,) in _T_NS.iter_unpack(records)]
                if c != (value, count, min(ts, default=0), max(ts, default=0)):
                    problems.append(f"commitments[{seq}] does not match proofs[{seq}]")
        if segs:
            if segs[-1][0] != nxt - 1:
                problems.append(f"proofs: newest segment {segs[-1][0]}, next_seg_seq {nxt}")
            if segs[0][0] != m["ring_oldest_seq"]:
                problems.append(f"meta: ring_oldest_seq {m['ring_oldest_seq']}, oldest stored "
                                f"{segs[0][0]}")
            if commits.get(segs[0][0], (0, 0, None))[2] != m["ring_oldest_t_ns"]:
                problems.append("meta: ring_oldest_t_ns is not the oldest segment's first t_ns")
        if ring_bytes != m["ring_bytes"] or len(segs) != m["ring_segments"]:
            problems.append(f"meta: ring holds {len(segs)} segments, {ring_bytes} bytes; meta says "
                            f"{m['ring_segments']}, {m['ring_bytes']}")
        if ring_bytes > self.ring_size:
            problems.append(f"proofs: {ring_bytes} bytes, more than ring_size {self.ring_size}")
        if m["ring_wraps"] + len(segs) != nxt:
            problems.append(f"meta: {m['ring_wraps']} segments dropped + {len(segs)} held != "
                            f"{nxt} made")
        # commitments: every segment made since the pruned ones, pruned_segments..next-1
        if sorted(commits) != list(range(pseg, nxt)):
            problems.append(f"commitments: {len(commits)} held for segments {pseg}..{nxt - 1}")
        # outbox: contiguous leaves from the pruned base, one per commitment and per receipt
        if [seq for seq, _ in leaves] != list(range(base, m["next_leaf_seq"])):
            problems.append(f"outbox: leaves are not {base}..{m['next_leaf_seq'] - 1} without a "
                            "gap")
        seg_leaves, rc_leaves = {}, {}
        for seq, v in leaves:
            target = {LEAF_SEGMENT: seg_leaves, LEAF_RECEIPT: rc_leaves}.get(v[0])
            if target is None or len(v) != 33:
                problems.append(f"outbox[{seq}]: bad leaf type {v[0]} or length {len(v)}")
                continue
            target[v[1:]] = target.get(v[1:], 0) + 1
        for seq, c in commits.items():
            if seg_leaves.pop(c[0], 0) != 1:
                problems.append(f"commitments[{seq}]: not exactly one outbox leaf")
        if seg_leaves:
            problems.append(f"outbox: {len(seg_leaves)} segment leaves with no commitment")
        for key, (_, _, r) in receipts:
            if rc_leaves.pop(r, 0) != 1:
                problems.append(f"receipts[{key.hex()}]: not exactly one outbox leaf")
        if rc_leaves:
            problems.append(f"outbox: {len(rc_leaves)} receipt leaves with no receipt")
        # pruning: only leaves of anchored batches, a prefix of them, with the segments they held
        for rec in batches:
            if rec.first_leaf_seq >= base:
                break
            if rec.status != ANCHORED:
                problems.append(f"outbox: leaves {rec.first_leaf_seq}..{base - 1} pruned, but "
                                f"batch {rec.batch_seq} holding some is not anchored")
            if rec.end_leaf_seq <= base and rec.batch_seq >= pruned["prune_batch"]:
                problems.append(f"meta: prune_batch {pruned['prune_batch']}, but batch "
                                f"{rec.batch_seq} is pruned whole")
        if base and (not batches or batches[-1].end_leaf_seq < base):
            problems.append(f"meta: outbox_base {base} is past the last batch")
        if segs and segs[0][0] < pseg:
            problems.append(f"proofs: segment {segs[0][0]} held, but segments below {pseg} were "
                            "pruned")
        # counts
        stats = m["stats"]
        records_made = (pruned["pruned_records"] + sum(c[1] for c in commits.values())
                        + len(m["open_records"]) // RECORD_SIZE)
        if stats.get("records", 0) != records_made:
            problems.append(f"stats: {stats.get('records')} records released, segments hold "
                            f"{records_made} (pruned ones included)")
        if counter_packets != stats.get("records", 0):
            problems.append(f"counters: {counter_packets} packets, {stats.get('records')} records")
        if stats.get("segments", 0) != nxt:
            problems.append(f"stats: {stats.get('segments')} segments, {nxt} made")
        if stats.get("receipts", 0) != (len(receipts) + stats.get("receipt_duplicate", 0)
                                        + pruned["pruned_receipts"]):
            problems.append(f"stats: {stats.get('receipts')} receipts, {len(receipts)} stored, "
                            f"{pruned['pruned_receipts']} pruned")
        if len(m["open_records"]) % RECORD_SIZE or len(m["open_receipts"]) % OPEN_RECEIPT_SIZE:
            problems.append("meta: open segment or open receipts of a bad length")
        return problems
