"""The device's store: one LMDB environment, its commit path, its readers and its pruning.

One LMDB environment (one directory) per device, with one named database per kind of data
(``layout``), so that a single write transaction per fast-path batch (``Store.commit(output)``)
covers all of it: after a crash or a SIGKILL the store holds exactly the state after some committed
batch, never half of one, and ``resume_state()`` hands the pipeline what it needs to continue from
there. The layout is in docs/store.md and ``beatd.store.layout``.

``prune(now_ns, threshold_ns)`` drops, a bounded number of leaves per call, what the ledger already
holds and the governance can no longer ask for: whole anchored batches older than the threshold
whose segments have left the proof ring (their outbox leaves, receipts, segment commitments and
tree levels). Nothing that is not anchored is ever pruned.
"""
import contextlib
import logging
import os
import time

import lmdb

import fastpath
from beat_common.spec import is_node_id
from fastpath.output import COUNTER_SIZE, HASH_NAMES, RECEIPT_SIZE, STAT_NAMES
from ledger_client.outbox import ANCHORED

from beat_common.gap_record import gap_value, pack_gap_record

from . import gaps as gap_ops
from .errors import (StoreCorruptError, StoreDiskError, StoreError, StoreMismatchError, translated,
                     where)
from .gaps import GAP_CAPTURE_STOPPED, GAP_KERNEL_DROPS, MAX_CAPTURE_GAPS
from .lock import take_lock
from .layout import (CAPTURE_GAPS, GAP_RECORDS, LEAF_GAP, COMMIT, COMMITMENTS, COUNTER,
                     COUNTER_KEY, COUNTERS,
                     FORMAT_VERSION, GAP_KEY, GAP_VAL, LEAF_PROOFS, LEAF_RECEIPT, LEAF_SEGMENT,
                     ANCHORS, M_CAPTURE_ALIVE_T_NS, M_CLOSED_BEFORE, M_FORMAT_VERSION, M_HASH,
                     M_NEXT_LEAF_SEQ, M_NEXT_SEG_SEQ, M_NODE_ID, M_OPEN_RECEIPTS, M_OPEN_RECORDS,
                     M_PROOF_RING_BYTES, M_PROOF_RING_OLDEST_SEQ, M_PROOF_RING_OLDEST_T_NS,
                     M_PROOF_RING_SEGMENTS, M_PROOF_RING_WRAPS, M_PRUNE_BATCH, M_STATS, MAX_DBS,
                     META, OUTBOX, OUTBOX_DBS, PROOFS, PRUNE_META, RECEIPT_HEAD, RECEIPT_KEY_SIZE,
                     RECEIPT_VAL, RECEIPTS, RECORD_SIZE, SEG_HEAD, STORE_DBS, SYNC_MODES, db_name,
                     decode_meta, decode_stats, encode_stats, initial_meta, levels_key, p64, pack_leaf,
                     u64, unpack_batch)

log = logging.getLogger("beatd.store")

# Outbox leaves pruned per call at most (each: the leaf, and its receipt or segment commitment):
# a few milliseconds, and twenty calls a second prune ~40,000 leaves/s, far more than the cap
# lets the store make (2 x 1,025 receipts per epoch and the segments)
PRUNE_LEAVES = 2048


def _allocate(path):
    """Give LMDB's lock file (mapped; made sparse) its blocks now: a page of it first touched
    through the mapping on a full disk would be a SIGBUS, not an error. A full disk now: left
    as it is (a store that ran before has touched what it uses)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError:
        pass
    finally:
        os.close(fd)


class Store:
    """A device's LMDB store. ``commit(output)`` per batch; readers for tools, tests and gRPC.

    ``sync``: ``"always"`` makes every commit durable before it returns (fsync); ``"periodic"`` (the
    default) opens the environment without sync and flushes at most every ``sync_interval_s`` from
    ``commit`` and at close: a process crash (even SIGKILL) loses nothing, a power cut at most the last
    interval, always back to a consistent committed batch; ``"never"`` leaves it to the OS.
    """

    def __init__(self, path, node_id, hash_name, ring_size, map_size=None, sync="periodic",
                 sync_interval_s=1.0, lock=True, readonly=False):
        self.path = os.fspath(path)
        self.readonly = bool(readonly)
        self._lock = None
        self._pinned = None
        if hash_name not in HASH_NAMES:
            raise ValueError(f"hash_name: {hash_name!r} is not one of {', '.join(HASH_NAMES)}")
        if sync not in SYNC_MODES:
            raise ValueError(f"sync: {sync!r} is not one of {', '.join(SYNC_MODES)}")
        if not is_node_id(node_id):
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
        self.sync_error = None
        self.env = None
        self.db_anchors = self.db_leaf_proofs = None
        self.db_gap_records = None
        self._outbox = None
        if self.readonly:
            self._open_readonly()
            return
        # one process at a time (beatd.store.lock): before anything is made or written
        self._lock = take_lock(self.path, lock)
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self):
        sync = self.sync_mode
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise StoreDiskError(f"store.path ({self.path}): cannot create the store directory: "
                                 f"{exc.strerror or exc}") from None
        with self._errors("opening"):
            self.env = lmdb.open(self.path, map_size=self.map_size, max_dbs=MAX_DBS,
                                 subdir=True, sync=(sync == "always"), metasync=(sync == "always"),
                                 readahead=False)
            _allocate(os.path.join(self.path, "lock.mdb"))
            self.db = {}
            with self.env.begin(write=True) as txn:
                for name in STORE_DBS:
                    self.db[name] = self.env.open_db(db_name(name), txn=txn, create=True)
                self._check_or_init(txn)
        self._open_ledger_dbs()
        self.gap_db()

    def _open_readonly(self):
        """A reader beside the store's one writer: LMDB read-only (nothing is created or written;
        LMDB's readers see committed transactions only), no store lock. The store must exist and
        be this node's."""
        if not os.path.isfile(os.path.join(self.path, "data.mdb")):
            raise StoreError(f"{where(self.path)}: no store there")
        with self._errors("opening read-only"):
            self.env = lmdb.open(self.path, map_size=self.map_size, max_dbs=MAX_DBS, subdir=True,
                                 readonly=True, lock=True, readahead=False)
            self.db = {}
            try:
                for name in STORE_DBS:
                    self.db[name] = self.env.open_db(db_name(name), create=False)
            except lmdb.NotFoundError:
                self.close()
                raise StoreCorruptError(f"{where(self.path)}: not a beatd store (its database "
                                        f"{name} is missing)") from None
            with self.env.begin() as txn:
                self._check_or_init(txn)
        self._open_ledger_dbs()
        self.gap_db()

    # -- errors ---------------------------------------------------------------------------------

    def _errors(self, doing):
        return translated(self.path, doing, self.map_size)

    def _open_ledger_dbs(self, create=False):
        """The ledger outbox's databases (``anchors``, ``leaf_proofs``), which the outbox writes
        and ``prune()`` reads and trims; opened once they exist, created only with ``create``
        (by the outbox: a full store must still open). A handle is opened in a write transaction
        (one opened in a read transaction closes with it), which writes nothing for a database
        that exists. They join ``self.db`` once open."""
        if self.db_anchors is not None:
            return True
        with self._errors("opening the outbox databases"):
            if not create:
                with self.env.begin() as txn:     # named databases are keys of the main one
                    if any(txn.get(db_name(name)) is None for name in OUTBOX_DBS):
                        return False
            if self.readonly:
                opened = {name: self.env.open_db(db_name(name), create=False)
                          for name in OUTBOX_DBS}
            else:
                with self.env.begin(write=True) as txn:
                    opened = {name: self.env.open_db(db_name(name), txn=txn, create=create)
                              for name in OUTBOX_DBS}
        self.db.update(opened)
        self.db_anchors, self.db_leaf_proofs = opened[ANCHORS], opened[LEAF_PROOFS]
        return True

    def gap_db(self, create=False):
        """The ``gap_records`` database's handle, or None while no gap record was ever written
        (made with the first one, ``create``; it then joins ``self.db``)."""
        if self.db_gap_records is not None:
            return self.db_gap_records
        name = db_name(GAP_RECORDS)
        with self._errors("opening the gap records"):
            if not create:
                with self.env.begin() as txn:
                    if txn.get(name) is None:
                        return None
            if self.readonly:
                handle = self.env.open_db(name, create=False)
            else:
                with self.env.begin(write=True) as txn:
                    handle = self.env.open_db(name, txn=txn, create=create)
        self.db[GAP_RECORDS] = self.db_gap_records = handle
        return handle

    def ledger_outbox(self):
        """The ledger outbox in this store (``beatd.store.outbox.Outbox``, the batcher's
        ``ledger_client.outbox.Outbox``): made at the first call, with its databases."""
        if self._outbox is None:
            from .outbox import Outbox
            self._outbox = Outbox(self)
        return self._outbox

    def _check_or_init(self, txn):
        meta = self.db[META]
        version = txn.get(M_FORMAT_VERSION, db=meta)
        if version is None:
            if self.readonly:
                raise StoreCorruptError(f"{where(self.path)}: not a beatd store (no format "
                                        "version)")
            for key, value in initial_meta(self.node_id, self.hash_name, STAT_NAMES):
                txn.put(key, value, db=meta)
            return
        if u64(version) != FORMAT_VERSION:
            raise StoreMismatchError(f"{where(self.path)}: a store of format version "
                                     f"{u64(version)}; this beatd reads version "
                                     f"{FORMAT_VERSION}: use the beatd that wrote it, or another "
                                     "store.path")
        stored_node = u64(txn.get(M_NODE_ID, db=meta))
        if stored_node != self.node_id:
            raise StoreMismatchError(f"{where(self.path)}: this store belongs to node_id "
                                     f"{stored_node}, not {self.node_id}: use another store.path")
        stored_hash = bytes(txn.get(M_HASH, db=meta)).decode()
        if stored_hash != self.hash_name:
            raise StoreMismatchError(f"{where(self.path)}: this store was written with hash "
                                     f"{stored_hash}, not {self.hash_name}: use another store.path")

    # -- life cycle -----------------------------------------------------------------------------

    def close(self):
        """Sync (``periodic``), close the environment, then release the store's lock."""
        if self.env is not None:
            if self.sync_mode == "periodic" and not self.readonly:
                with contextlib.suppress(lmdb.Error, OSError):
                    self.env.sync(True)
            self.env.close()
            self.env = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @contextlib.contextmanager
    def snapshot(self):
        """Every reader inside reads one read transaction: one consistent state of the store
        (``beatd dump --live`` reads a store a daemon writes). One thread at a time."""
        with self._errors("reading"):
            with self.env.begin() as txn:
                self._pinned = txn
                try:
                    yield self
                finally:
                    self._pinned = None

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
        """Write one ``fastpath.Output`` in one transaction (all of it, or nothing). A
        ``StoreError`` means nothing of it was written: a periodic sync that fails after the
        transaction committed does not raise (the batch is in the store; a crash of the process
        loses nothing of it): it is logged, kept in ``sync_error`` and tried again at the next
        interval."""
        with self._errors("committing a batch"):
            with self.env.begin(write=True) as txn:
                self._commit(txn, output)
        if self.sync_mode == "periodic":
            now = time.monotonic()
            if now - self._last_sync >= self.sync_interval_s:
                try:
                    self.sync()
                    self.sync_error = None
                except StoreError as exc:
                    self._last_sync = now
                    if self.sync_error is None:
                        log.warning("%s (committed, but not flushed to the disk yet: a power cut "
                                    "could lose it; tried again every %s s)", exc,
                                    self.sync_interval_s)
                    self.sync_error = str(exc)

    def _commit(self, txn, out):
        db = self.db
        meta = db[META]

        def mget(key):
            return u64(txn.get(key, db=meta))

        next_seg = mget(M_NEXT_SEG_SEQ)
        leaf = mget(M_NEXT_LEAF_SEQ)
        ring_bytes = mget(M_PROOF_RING_BYTES)
        ring_segments = mget(M_PROOF_RING_SEGMENTS)
        wraps = mget(M_PROOF_RING_WRAPS)
        oldest = mget(M_PROOF_RING_OLDEST_SEQ)

        # segments: proof ring, commitment, outbox leaf
        for seg_seq, count, value, records in out.segments:
            if seg_seq != next_seg:
                raise StoreCorruptError(
                    f"{where(self.path)}: the store moved on without this process (segment "
                    f"{seg_seq} does not follow the stored ones: {next_seg} expected): another "
                    f"program wrote the store meanwhile; nothing of this batch was written: "
                    f"restart beatd (it resumes from the store)")
            if len(records) != count * RECORD_SIZE or len(value) != 32:
                raise StoreCorruptError(f"{where(self.path)}: a batch to commit is malformed "
                                        f"(segment {seg_seq}: count {count} for {len(records)} "
                                        "bytes of records): nothing of it was written")
            first_t, last_t = fastpath.t_range(records)
            key = p64(seg_seq)
            # count(8) S(32) records: a view of the pipeline's own segment bytes when it can be
            txn.put(key, fastpath.proofs_value(count, value, records), db=db[PROOFS], append=True)
            txn.put(key, COMMIT.pack(value, count, first_t, last_t), db=db[COMMITMENTS],
                    append=True)
            txn.put(p64(leaf), pack_leaf(LEAF_SEGMENT, value), db=db[OUTBOX], append=True)
            leaf += 1
            ring_bytes += 8 + SEG_HEAD + len(records)
            ring_segments += 1
            next_seg += 1
        if out.open_seg_seq != next_seg:
            raise StoreCorruptError(
                f"{where(self.path)}: the store moved on without this process (the open segment "
                f"is {out.open_seg_seq}, the store expects {next_seg}): another program wrote the "
                f"store meanwhile; nothing of this batch was written: restart beatd (it resumes "
                f"from the store)")

        # the ring wraps: drop the oldest segments while it holds more than ring_size bytes
        if ring_bytes > self.ring_size:
            cur = txn.cursor(db=db[PROOFS])
            while ring_bytes > self.ring_size and cur.first():
                ring_bytes -= 8 + len(cur.value())
                ring_segments -= 1
                wraps += 1
                cur.delete()
            oldest = u64(cur.key()) if ring_segments and cur.first() else next_seg
        if ring_segments == 0:
            oldest = next_seg
        oldest_t = 0
        if ring_segments:
            oldest_t = COMMIT.unpack(txn.get(p64(oldest), db=db[COMMITMENTS]))[2]

        # counters: add the deltas
        cdb = db[COUNTERS]
        counters = out.counters
        for off in range(0, len(counters), COUNTER_SIZE):
            key = counters[off:off + 16]
            pk, nb, first, last = COUNTER.unpack_from(counters, off + 16)
            old = txn.get(key, db=cdb)
            if old is not None:
                opk, onb, ofirst, olast = COUNTER.unpack(old)
                pk, nb, first, last = opk + pk, onb + nb, min(first, ofirst), max(last, olast)
            txn.put(key, COUNTER.pack(pk, nb, first, last), db=cdb)

        # receipts, each with its outbox leaf; a key seen before keeps its first receipt
        rdb = db[RECEIPTS]
        receipts = out.receipts
        closed_before = max(out.closed_before, mget(M_CLOSED_BEFORE))
        duplicates = 0
        for off in range(0, len(receipts), RECEIPT_SIZE):
            key = receipts[off:off + RECEIPT_KEY_SIZE]
            r = receipts[off + RECEIPT_KEY_SIZE + 16:off + RECEIPT_SIZE]
            if not txn.put(key, receipts[off + RECEIPT_KEY_SIZE:off + RECEIPT_SIZE], db=rdb,
                           overwrite=False):
                duplicates += 1
                continue
            txn.put(p64(leaf), pack_leaf(LEAF_RECEIPT, r), db=db[OUTBOX], append=True)
            leaf += 1
            # a finalised epoch stays closed after a restart, even one flush() closed early
            closed_before = max(closed_before, u64(key[:8]) + 1)

        stats = decode_stats(txn.get(M_STATS, db=meta))
        for name, n in out.stats.items():
            stats[name] = stats.get(name, 0) + n
        if duplicates:
            stats["receipt_duplicate"] = stats.get("receipt_duplicate", 0) + duplicates

        for k, v in ((M_NEXT_SEG_SEQ, p64(next_seg)), (M_NEXT_LEAF_SEQ, p64(leaf)),
                     (M_OPEN_RECORDS, bytes(out.open_records)),
                     (M_OPEN_RECEIPTS, bytes(out.open_receipts)),
                     (M_CLOSED_BEFORE, p64(closed_before)),
                     (M_STATS, encode_stats(stats)),
                     (M_PROOF_RING_WRAPS, p64(wraps)), (M_PROOF_RING_OLDEST_SEQ, p64(oldest)),
                     (M_PROOF_RING_OLDEST_T_NS, p64(oldest_t)), (M_PROOF_RING_BYTES, p64(ring_bytes)),
                     (M_PROOF_RING_SEGMENTS, p64(ring_segments))):
            txn.put(k, v, db=meta)

    # -- capture gaps ---------------------------------------------------------------------------

    def record_capture(self, gaps=(), alive_t_ns=None, threshold_ns=None,
                       max_gaps=MAX_CAPTURE_GAPS, records=True):
        """Record capture gaps and that capture ran until ``alive_t_ns``, in one transaction.

        ``gaps``: ``(from_ns, to_ns, frames_dropped, reason, interface)`` each, reason
        ``GAP_KERNEL_DROPS`` or ``GAP_CAPTURE_STOPPED``, interface a name (``""``: every one). A
        gap that touches or overlaps a recent one of the same reason and interface extends it
        (frames added). ``alive_t_ns`` goes to meta ``capture_alive_t_ns`` (the next start's
        "capture stopped" gap begins there). With ``threshold_ns``, gaps that ended before both
        ``alive_t_ns - threshold_ns`` and the ring's oldest record are pruned; beyond ``max_gaps``
        the oldest gap is merged into the next one (the result covers both: a coarser statement,
        never a missing one).

        Each gap is also written as it is given, once and for ever, as a gap record
        (docs/gap-records.md) in ``gap_records`` under the leaf_seq of its ledger leaf
        ``3 || G``, appended to the outbox in the same transaction: the merged view is for
        status, the records are the evidence (anchored, served, never changed; pruned with
        their anchored batch like receipts). ``records=False``: the merged view only (what a
        store written before gap records holds; for comparisons with it)."""
        for from_ns, to_ns, _, reason, _ in gaps:             # ValueError before any write
            if reason not in (GAP_KERNEL_DROPS, GAP_CAPTURE_STOPPED) or from_ns > to_ns:
                raise ValueError(f"capture gap [{from_ns}, {to_ns}] reason {reason}: not a gap")
        records = [pack_gap_record(*gap) for gap in gaps] if records else []
        if records:
            self.gap_db(create=True)
        with self._errors("recording capture gaps"):
            with self.env.begin(write=True) as txn:
                db = self.db[CAPTURE_GAPS]
                for gap in gaps:
                    gap_ops.add(txn, db, *gap)
                meta = self.db[META]
                if records:
                    leaf = u64(txn.get(M_NEXT_LEAF_SEQ, db=meta))
                    for rec in records:
                        G = gap_value(self.hash_name, self.node_id, rec)
                        txn.put(p64(leaf), rec, db=self.db[GAP_RECORDS], append=True)
                        txn.put(p64(leaf), pack_leaf(LEAF_GAP, G), db=self.db[OUTBOX],
                                append=True)
                        leaf += 1
                    txn.put(M_NEXT_LEAF_SEQ, p64(leaf), db=meta)
                if alive_t_ns is not None:
                    txn.put(M_CAPTURE_ALIVE_T_NS, p64(alive_t_ns), db=meta)
                if threshold_ns is not None and alive_t_ns is not None:
                    cutoff = max(0, alive_t_ns - threshold_ns)
                    if u64(txn.get(M_PROOF_RING_SEGMENTS, db=meta)):
                        cutoff = min(cutoff, u64(txn.get(M_PROOF_RING_OLDEST_T_NS, db=meta)))
                    gap_ops.prune(txn, db, cutoff)
                n = txn.stat(db)["entries"]
                while n > max(1, max_gaps):
                    gap_ops.merge_oldest(txn, db)
                    n -= 1

    def capture_gaps(self, from_ns=0, to_ns=(1 << 64) - 1):
        """The capture gaps overlapping [from_ns, to_ns]: ``(from_ns, to_ns, frames_dropped,
        reason, interface)`` each, sorted by (from_ns, to_ns, reason, interface)."""
        out = []
        with self._read() as txn:
            for k, v in txn.cursor(db=self.db[CAPTURE_GAPS]):
                g_from, reason, iface = GAP_KEY.unpack(bytes(k))
                if g_from > to_ns:
                    break
                g_to, frames = GAP_VAL.unpack(bytes(v))
                if g_to >= from_ns:
                    out.append((g_from, g_to, frames, reason,
                                iface.rstrip(b"\x00").decode("ascii", "replace")))
        out.sort(key=lambda g: (g[0], g[1], g[3], g[4]))
        return out

    def gap_records(self, from_ns=0, to_ns=(1 << 64) - 1):
        """The gap records overlapping [from_ns, to_ns], in the order written: ``(leaf_seq,
        record)`` each (the 41-byte record; ``beat_common.gap_record.unpack_gap_record``)."""
        out = []
        db = self.gap_db()
        if db is None:
            return out
        with self._read() as txn:
            for k, v in txn.cursor(db=db):
                g_from, g_to = GAP_VAL.unpack_from(v, 0)     # from_ns(8) to_ns(8) lead the record
                if g_from <= to_ns and g_to >= from_ns:
                    out.append((u64(k), bytes(v)))
        return out

    def capture_gap_status(self):
        """``{"count", "last"}``: how many capture gaps are stored and the one that ended last
        (``{"from_ns", "to_ns", "frames_dropped", "reason", "interface"}``, or None)."""
        with self._read() as txn:
            db = self.db[CAPTURE_GAPS]
            n = txn.stat(db)["entries"]
            last = None
            # the gap that ended last is among the newest starts (bounded look-back)
            cur = txn.cursor(db=db)
            ok, looked = cur.last(), 0
            while ok and looked < gap_ops.MERGE_LOOKBACK:
                g_from, reason, iface = GAP_KEY.unpack(bytes(cur.key()))
                g_to, frames = GAP_VAL.unpack(bytes(cur.value()))
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
            v = txn.get(M_CAPTURE_ALIVE_T_NS, db=self.db[META])
        return None if v is None else u64(v)

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
        self.gap_db()                   # the handle opened before the write transaction
        with self._errors("pruning"):
            with self.env.begin(write=True) as txn:
                self._prune(txn, cutoff, max_leaves, done)
        return done

    def _prunable(self, txn, cutoff, b=None):
        """The BatchRecord of the batch to prune next (``b``, else the store's ``prune_batch``),
        or None when it may not go (yet)."""
        meta = self.db[META]
        if b is None:
            b = u64(txn.get(M_PRUNE_BATCH, db=meta))
        v = txn.get(p64(b), db=self.db_anchors)
        if v is None:
            return None
        rec = unpack_batch(b, v)
        ring_oldest = u64(txn.get(M_PROOF_RING_OLDEST_SEQ, db=meta))
        if not u64(txn.get(M_PROOF_RING_SEGMENTS, db=meta)):
            ring_oldest = u64(txn.get(M_NEXT_SEG_SEQ, db=meta))
        if rec.status != ANCHORED or rec.last_t_ns >= cutoff or rec.seg_leaves_end > ring_oldest:
            return None
        return rec

    def _prune(self, txn, cutoff, budget, done):
        db = self.db
        meta = db[META]
        state = {name: u64(txn.get(name.encode(), db=meta)) for name in PRUNE_META}
        while budget > 0:
            rec = self._prunable(txn, cutoff, state["prune_batch"])
            if rec is None:
                break
            base = max(state["outbox_base"], rec.first_leaf_seq)
            end = min(rec.end_leaf_seq, base + budget)
            receipts = set()
            seg = state["pruned_segments"]
            cur = txn.cursor(db=db[OUTBOX])
            ok = cur.set_range(p64(base))
            while ok and u64(cur.key()) < end:
                leaf = cur.value()
                if leaf[0] == LEAF_SEGMENT:
                    c = txn.get(p64(seg), db=db[COMMITMENTS])
                    if c is None or bytes(c[:32]) != bytes(leaf[1:]):
                        raise StoreCorruptError(
                            f"{where(self.path)}: not pruning: the ledger outbox and the "
                            f"segment commitments disagree (outbox leaf {u64(cur.key())} is "
                            f"segment {seg}'s, whose S is not held): the store is damaged; "
                            "restore it from a backup")
                    state["pruned_records"] += COMMIT.unpack(c)[1]
                    txn.delete(p64(seg), db=db[COMMITMENTS])
                    seg += 1
                    done["segments"] += 1
                elif leaf[0] == LEAF_RECEIPT:
                    receipts.add(bytes(leaf[1:]))
                elif leaf[0] == LEAF_GAP:
                    txn.delete(bytes(cur.key()), db=db[GAP_RECORDS])
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
            txn.delete(levels_key(rec.batch_seq), db=self.db_leaf_proofs)
            cur = txn.cursor(db=self.db_leaf_proofs)
            ok = cur.set_range(p64(rec.first_leaf_seq))
            while ok and len(cur.key()) == 8 and u64(cur.key()) < rec.end_leaf_seq:
                ok = cur.delete() and bool(cur.key())
            state["prune_batch"] = rec.batch_seq + 1
            done["batches"] += 1
        for name, value in state.items():
            txn.put(name.encode(), p64(value), db=meta)

    def _prune_receipts(self, txn, values, rec):
        """Delete the receipts whose R is in ``values`` (of batch ``rec``): the receipts are keyed
        by epoch first and made in leaf order, so they are the oldest ones held; the scan stops
        past the batch's time. Returns how many were deleted."""
        cur = txn.cursor(db=self.db[RECEIPTS])
        ok = cur.first()
        n = 0
        while ok and values:
            k = cur.key()
            if u64(k[:8]) > rec.last_t_ns:
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
        if self._pinned is not None:
            yield self._pinned
            return
        with self._errors("reading"):
            with self.env.begin() as txn:
                yield txn

    def _meta(self, txn):
        """The meta, decoded, keyed by its keys (layout.M_*)."""
        return {bytes(k): decode_meta(k, v)[1] for k, v in txn.cursor(db=self.db[META])}

    def meta(self):
        """Everything in ``meta``, decoded (ints, the hash name, stats dict, the open blobs), by
        name."""
        with self._read() as txn:
            return {k.decode(): v for k, v in self._meta(txn).items()}

    def resume_state(self):
        """Keyword arguments for ``Pipeline.resume(...)`` after a restart."""
        with self._read() as txn:
            m = self._meta(txn)
        return {"next_seg_seq": m[M_NEXT_SEG_SEQ], "open_records": m[M_OPEN_RECORDS],
                "open_receipts": m[M_OPEN_RECEIPTS], "closed_before": m[M_CLOSED_BEFORE]}

    def stats(self):
        """The pipeline's statistics, accumulated over every committed batch."""
        with self._read() as txn:
            return decode_stats(txn.get(M_STATS, db=self.db[META]))

    def segments(self):
        """The segments in the ring, oldest first: ``(seg_seq, count, S, records)``."""
        with self._read() as txn:
            return [(u64(k), u64(v[:8]), bytes(v[8:SEG_HEAD]), bytes(v[SEG_HEAD:]))
                    for k, v in txn.cursor(db=self.db[PROOFS])]

    def commitments(self):
        """The segment commitments held (every one made, but the pruned ones):
        ``(seg_seq, S, count, first_t_ns, last_t_ns)``."""
        with self._read() as txn:
            return [(u64(k),) + COMMIT.unpack(v) for k, v in txn.cursor(db=self.db[COMMITMENTS])]

    def iter_records(self):
        """The 48-byte records: the ring's segments, oldest first, then the open segment."""
        segs = self.segments()
        with self._read() as txn:
            open_records = bytes(txn.get(M_OPEN_RECORDS, db=self.db[META]))
        for _, _, _, records in segs:
            for off in range(0, len(records), RECORD_SIZE):
                yield records[off:off + RECORD_SIZE]
        for off in range(0, len(open_records), RECORD_SIZE):
            yield open_records[off:off + RECORD_SIZE]

    def counters(self):
        """``{(prev_id, next_id): (packets, bytes, first_t_ns, last_t_ns)}``."""
        with self._read() as txn:
            return {COUNTER_KEY.unpack(k): COUNTER.unpack(v)
                    for k, v in txn.cursor(db=self.db[COUNTERS])}

    def receipts(self):
        """Finalised receipts: ``(epoch_ns, role, src, dst, packets, bytes, R)``, by key."""
        out = []
        with self._read() as txn:
            for k, v in txn.cursor(db=self.db[RECEIPTS]):
                epoch, role = RECEIPT_HEAD.unpack_from(k)
                out.append((epoch, role, bytes(k[9:25]), bytes(k[25:41])) + RECEIPT_VAL.unpack(v))
        return out

    def outbox(self):
        """The ledger leaves in the order produced: ``(leaf_seq, type, value)``."""
        with self._read() as txn:
            return [(u64(k), v[0], bytes(v[1:])) for k, v in txn.cursor(db=self.db[OUTBOX])]

    def prune_status(self):
        """What pruning removed so far: ``{"batches", "segments", "receipts", "records",
        "outbox_base"}`` (cumulative, from the meta)."""
        with self._read() as txn:
            meta = self.db[META]
            v = {name: u64(txn.get(name.encode(), db=meta)) for name in PRUNE_META}
        return {"batches": v["prune_batch"], "segments": v["pruned_segments"],
                "receipts": v["pruned_receipts"], "records": v["pruned_records"],
                "outbox_base": v["outbox_base"]}

    def proof_ring_status(self, now_ns, threshold_ns):
        """How much time the proof ring covers, and whether it is ``short`` of the threshold (the
        keys are those of ``beatd status``'s ``store.ring``: an external interface)."""
        with self._read() as txn:
            m = self._meta(txn)
            newest_t = 0
            if m[M_PROOF_RING_SEGMENTS]:
                with txn.cursor(db=self.db[COMMITMENTS]) as cur:
                    if cur.last():
                        newest_t = COMMIT.unpack(cur.value())[3]
        oldest_t = m[M_PROOF_RING_OLDEST_T_NS] if m[M_PROOF_RING_SEGMENTS] else None
        open_lo = None
        if m[M_OPEN_RECORDS]:
            open_lo, open_hi = fastpath.t_range(m[M_OPEN_RECORDS])
            newest_t = max(newest_t, open_hi)
            if oldest_t is None:
                oldest_t = open_lo
        wrapped = m[M_PROOF_RING_WRAPS] > 0
        return {
            "oldest_seg_seq": m[M_PROOF_RING_OLDEST_SEQ],
            "oldest_t_ns": oldest_t,
            "newest_t_ns": newest_t or None,
            "segments": m[M_PROOF_RING_SEGMENTS],
            "bytes": m[M_PROOF_RING_BYTES],
            "ring_size": self.ring_size,
            "wraps": m[M_PROOF_RING_WRAPS],
            "short": wrapped and (oldest_t is None or now_ns - oldest_t < threshold_ns),
            # the records of the segment still open (not committed to S, not in the outbox yet)
            "open_records": len(m[M_OPEN_RECORDS]) // RECORD_SIZE,
            "open_oldest_t_ns": open_lo,
        }


    # -- checking -------------------------------------------------------------------------------

    def verify(self):
        """Recompute every stored S and check the store's invariants; a list of problems."""
        from .verify import verify
        return verify(self)
