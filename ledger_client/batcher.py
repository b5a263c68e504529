"""The batcher: every anchor period, the waiting outbox leaves become one Merkle tree, one anchor.

docs/ledger.md, "Outbox and batcher". ``Batcher.tick()`` (call it every second or so; ``run()``
does) does two things:

1. **Build** at most one new batch, when ``anchor_period_s`` has passed since the previous one was
   built (or since the batcher started, for the very first) or ``max_leaves`` leaves are waiting:
   the leaves after the last batched one (at most ``max_leaves``, in leaf_seq order) become a
   Merkle tree (``fastpath.merkle_levels``: its levels, hashed in SIMD lanes without the GIL); the
   pending anchor ``(node_id, batch_seq, tree_size, root, first_t_ns, last_t_ns)`` and the tree's
   levels (one value, ~64 B per leaf; a leaf's proof is computed from them on request) are written
   in ONE LMDB transaction (``outbox.Outbox.write_batch``). No leaf waiting, no batch (no empty anchors).
   ``first_t_ns``/``last_t_ns``: the span of the batch's leaves' own times -- min/max over the
   segment commitments' ``first_t_ns``/``last_t_ns`` and the receipts' ``epoch_ns`` (see
   ``outbox``), not the wall-clock time the batch was built over.
2. **Submit** the pending anchors in batch_seq order with ``backend.anchor(a, signer=...)``.
   ``"anchored"`` or ``"exists"``: done (marked anchored in the store). ``Unavailable`` (or any
   exception that is not a ``LedgerError``: a transport problem): stop for now, retry after an
   exponential backoff with jitter (``base_backoff_s * 2**(failures-1)``, capped at
   ``max_backoff_s`` = 30 s, then a uniform draw in [delay/2, delay]); nothing is lost, batches keep
   being built meanwhile and wait in order. ``ConflictError``, ``OrderError``, ``PermissionDenied``
   or any other ``LedgerError``: a real problem -- logged, kept as ``last_error``, and submission
   stops (``halted``) until ``resume()`` or a restart; building goes on. ``retry_now()``: the next
   ``submit()`` tries at once, whatever the backoff (a halt stays): one last attempt at shutdown.

On a chain that can reorganise (the backend's ``confirmations`` > 0, e.g. a Clique network), an
anchor the backend took is **sent**, not done: it stays pending in the store, and each ``submit()``
asks the backend where it stands (``backend.anchor_state(a)``): ``"confirmed"`` (``confirmations``
blocks deep) marks it anchored; ``"sent"`` waits (the next batches are sent meanwhile, in order);
``"missing"`` (reorganised away, or its transaction dropped) sends it again (``resent`` counts
them; the contract keeps one anchor per (node_id, batch_seq), "exists" counts as sent). With 0
confirmations (ganache, QBFT, ``local``) an anchor is confirmed as soon as the backend takes it,
as before, once the contract's state shows it (a backend with ``anchor_state``: the receipt of
the node alone does not count). The sent state is kept in memory: after a restart the pending
anchors are submitted again, come back "exists" and wait for their depth again.

Restart-safe: all state is in the store (``anchors``, ``leaf_proofs``: the batches' levels); a new Batcher on the same
store continues with the next batch_seq and the next leaf, and resubmits the pending anchors (an
anchor that reached the ledger before the crash comes back ``"exists"``).
"""
import logging
import random
import threading
import time as _time

import fastpath

from . import merkle
from .errors import LedgerError, Unavailable
from .outbox import BatchRecord, as_outbox

log = logging.getLogger("beat.ledger.batcher")

DEFAULT_MAX_LEAVES = 1 << 16


class Batcher:
    """Builds and submits the anchors of one device (see the module doc)."""

    def __init__(self, store, backend, node_id, hash_name, signer, anchor_period_s,
                 max_leaves=DEFAULT_MAX_LEAVES, clock=_time, base_backoff_s=1.0,
                 max_backoff_s=30.0, rng=None):
        merkle.hasher(hash_name)
        if anchor_period_s <= 0:
            raise ValueError(f"anchor_period_s: {anchor_period_s} must be more than 0")
        if not isinstance(max_leaves, int) or max_leaves < 1:
            raise ValueError(f"max_leaves: {max_leaves!r} must be a positive integer")
        if getattr(store, "node_id", node_id) != node_id:
            raise ValueError(f"the store belongs to node_id {store.node_id}, not {node_id}")
        if getattr(store, "hash_name", hash_name) != hash_name:
            raise ValueError(f"the store uses hash {store.hash_name}, not {hash_name}")
        backend_hash = getattr(backend, "hash_name", None)
        if backend_hash is not None and backend_hash != hash_name:
            raise ValueError(f"the ledger's domain hash is {backend_hash}, not {hash_name}")
        self.store = store
        self.backend = backend
        self.node_id = node_id
        self.hash_name = hash_name
        self.signer = signer
        self.anchor_period_s = anchor_period_s
        self.max_leaves = max_leaves
        self.clock = clock
        self.base_backoff_s = base_backoff_s
        self.max_backoff_s = max_backoff_s
        self._rng = rng or random.Random()
        self.outbox = as_outbox(store)
        last = self.outbox.last_batch()
        # the first period starts now when nothing was built before
        self._last_built = last.built_at if last is not None else clock.time()
        self._first_pending = self.outbox.first_pending()
        self.retries = 0              # failed submission attempts (Unavailable or transport)
        self._failures = 0            # consecutive ones, for the backoff
        self._next_try = 0.0
        self.last_error = None
        self.halted = None            # the error that stopped submission, or None
        self.batches_built = 0
        self.anchors_submitted = 0
        # anchors the backend took but not yet confirmed deep enough: {batch_seq: time sent}
        try:        # (an awaited ledger answers every attribute with Unavailable: 0 then)
            self.confirmations = int(getattr(backend, "confirmations", 0) or 0)
        except Exception:      # noqa: BLE001
            self.confirmations = 0
        self._sent = {}
        self.resent = 0               # anchors sent again (reorganised away or dropped)
        self.anchors_confirmed = 0

    # -- the periodic work ----------------------------------------------------------------------

    def tick(self):
        """Build at most one batch if one is due, then submit what is pending (if not backing
        off). Returns ``{"built": batch_seq or None, "submitted": [batch_seq, ...]}``."""
        built = None
        now = self.clock.time()
        if now - self._last_built >= self.anchor_period_s or self._waiting() >= self.max_leaves:
            rec = self.build()
            built = rec.batch_seq if rec is not None else None
        return {"built": built, "submitted": self.submit()}

    def _waiting(self):
        last = self.outbox.last_batch()
        done = last.end_leaf_seq if last is not None else 0
        return max(0, self.outbox.next_leaf_seq() - done)

    def build(self, max_leaves=None):
        """Build one batch now from the waiting leaves (at most ``max_leaves``, by default the
        batcher's); the new ``BatchRecord``, or ``None`` when no leaf is waiting."""
        if max_leaves is None:
            max_leaves = self.max_leaves
        elif not isinstance(max_leaves, int) or max_leaves < 1:
            raise ValueError(f"max_leaves: {max_leaves!r} must be a positive integer")
        last = self.outbox.last_batch()
        if last is None:
            batch_seq, first_leaf, seg_before = 0, 0, 0
        else:
            batch_seq, first_leaf, seg_before = (last.batch_seq + 1, last.end_leaf_seq,
                                                 last.seg_leaves_end)
        now = self.clock.time()
        leaves = self.outbox.leaves(first_leaf, max_leaves)
        self._last_built = now
        if not leaves:
            return None
        data = b"".join(leaf for _, leaf in leaves)
        if len(data) == 33 * len(leaves):
            levels = fastpath.merkle_levels(self.hash_name, data)
        else:                             # not SPEC leaf data (it should not happen): the slow way
            levels = merkle.Tree(self.hash_name, [leaf for _, leaf in leaves]).level_bytes
        tree = merkle.Tree.from_levels(self.hash_name, levels, len(leaves))
        first_t, last_t, seg_end = self.outbox.span(leaves, seg_before)
        rec = BatchRecord(batch_seq, len(leaves), tree.root, first_t, last_t, first_leaf, seg_end,
                          float(now))
        self.outbox.write_batch(rec, levels)
        self.batches_built += 1
        log.info("node %d: batch %d built: %d leaves (%d..%d), root %s", self.node_id, batch_seq,
                 len(leaves), first_leaf, first_leaf + len(leaves) - 1, tree.root.hex())
        return rec

    def submit(self):
        """Submit the pending anchors in batch_seq order, unless halted or backing off.
        Returns the batch_seqs that are now on the ledger (confirmed)."""
        done = []
        if self.halted is not None or self.clock.time() < self._next_try:
            return done
        waiting = False                   # an earlier batch is sent, not confirmed yet
        for rec in self.outbox.batches(self._first_pending):
            if rec.status != 0:           # anchored (first_pending lagged): skip
                self._first_pending = rec.batch_seq + 1
                continue
            a = rec.anchor(self.node_id)
            try:
                if rec.batch_seq in self._sent:
                    state = self.backend.anchor_state(a)
                    if state == "confirmed" and waiting:
                        state = "sent"    # anchored batches stay a prefix: its turn comes next
                    if state == "confirmed":
                        self._confirmed(rec, "confirmed")
                        done.append(rec.batch_seq)
                        continue
                    if state == "sent":
                        waiting = True
                        continue          # not deep enough yet; later batches go on
                    log.warning("node %d: anchor %d is no longer on the ledger (reorganised "
                                "away or dropped): sending it again", self.node_id, rec.batch_seq)
                    del self._sent[rec.batch_seq]
                    self.resent += 1
                result = self.backend.anchor(a, signer=self.signer)
            except Unavailable as exc:
                self._backoff(rec, exc)
                break
            except LedgerError as exc:
                self._halt(rec, f"{type(exc).__name__}: {exc}")
                break
            except Exception as exc:      # a transport problem the backend did not wrap
                log.exception("node %d: anchor %d: unexpected error", self.node_id, rec.batch_seq)
                self._backoff(rec, exc)
                break
            if result not in ("anchored", "exists"):
                self._halt(rec, f"the backend answered {result!r}")
                break
            self.anchors_submitted += 1
            if self.confirmations == 0 and hasattr(self.backend, "anchor_state"):
                # the node said "anchored"/"exists": done only when the contract's state shows
                # it (a node that claims a receipt for a transaction it withheld is not believed)
                try:
                    state = self.backend.anchor_state(a)
                except Unavailable as exc:
                    self._backoff(rec, exc)
                    break
                except LedgerError as exc:
                    self._halt(rec, f"{type(exc).__name__}: {exc}")
                    break
                if state != "confirmed":
                    self._backoff(rec, Unavailable(
                        f"the ledger's node answered {result!r} but the contract does not hold "
                        f"the anchor ({state}): sending it again later"))
                    break
            self._failures = 0
            self._next_try = 0.0
            if self.confirmations > 0:
                waiting = True
                self._sent[rec.batch_seq] = self.clock.time()
                log.info("node %d: batch %d %s, sent (confirmed at %d blocks deep)",
                         self.node_id, rec.batch_seq, result, self.confirmations)
                continue
            self._confirmed(rec, result)
            done.append(rec.batch_seq)
        return done

    def _confirmed(self, rec, result):
        self.outbox.mark_anchored(rec.batch_seq, self._ref(rec.batch_seq))
        self._sent.pop(rec.batch_seq, None)
        self._first_pending = rec.batch_seq + 1
        self.anchors_confirmed += 1
        log.info("node %d: batch %d %s", self.node_id, rec.batch_seq, result)

    def _ref(self, batch_seq):
        """Where the anchor landed (the backend's ``ref``), if the backend says so now."""
        try:
            got = self.backend.get_anchor(self.node_id, batch_seq)
        except Exception:                 # only a label: never let it block the outbox
            return None
        return getattr(got, "ref", None)

    def _halt(self, rec, why):
        """Submission stops (a refusal retrying cannot change): said in status and the log."""
        self.last_error = self.halted = f"anchor {self.node_id}/{rec.batch_seq}: {why}"
        log.error("node %d: submission stopped: %s", self.node_id, self.last_error)

    def _backoff(self, rec, exc):
        self.retries += 1
        self._failures += 1
        delay = min(self.max_backoff_s, self.base_backoff_s * 2 ** min(self._failures - 1, 30))
        delay = self._rng.uniform(delay / 2, delay)
        self._next_try = self.clock.time() + delay
        self.last_error = f"anchor {self.node_id}/{rec.batch_seq}: {type(exc).__name__}: {exc}"
        log.warning("node %d: %s; retry in %.1f s", self.node_id, self.last_error, delay)

    def retry_now(self):
        """The next ``submit()`` tries at once, whatever the backoff (a halt stays halted; the
        backoff grows on from where it is if that attempt fails too)."""
        self._next_try = 0.0

    def failed(self, where, exc):
        """A failure around the batcher (``where``: "tick", "submit", ...) kept as ``last_error``
        (stats, status); returns the text."""
        self.last_error = f"{where}: {type(exc).__name__}: {exc}"
        return self.last_error

    def resume(self):
        """Clear a halt (once the operator fixed the cause) and the backoff: submit next tick."""
        self.halted = None
        self._failures = 0
        self._next_try = 0.0

    def run(self, stop_event=None, poll_s=1.0):
        """``tick()`` every ``poll_s`` until ``stop_event`` (a ``threading.Event``) is set.
        Errors of one tick (e.g. the store full) are logged; the loop goes on."""
        stop_event = stop_event or threading.Event()
        while not stop_event.is_set():
            try:
                self.tick()
            except Exception as exc:
                self.failed("tick", exc)
                log.exception("node %d: batcher tick failed", self.node_id)
            stop_event.wait(poll_s)

    # -- for the governance and the metrics -----------------------------------------------------

    def proof(self, leaf_seq):
        """``(anchor, index, proof)`` for a batched leaf (``anchor`` a ``types.Anchor``; its
        ``ref`` is None while pending), or ``None`` if the leaf is not batched yet."""
        p = self.outbox.proof(leaf_seq)
        if p is None:
            return None
        batch_seq, index, proof = p
        rec = self.outbox.batch(batch_seq)
        return rec.anchor(self.node_id), index, proof

    def stats(self):
        """Leaves waiting, pending anchors, last anchored batch_seq, retries, last error, ..."""
        last = self.outbox.last_batch()
        next_seq = last.batch_seq + 1 if last is not None else 0
        self._first_pending = self.outbox.first_pending()
        now = self.clock.time()
        return {
            "leaves_waiting": self._waiting(),
            "pending_anchors": next_seq - self._first_pending,
            # of the pending ones, those on the ledger but not yet ``confirmations`` deep
            "sent_anchors": len(self._sent),
            "confirmations": self.confirmations,
            "anchors_confirmed": self.anchors_confirmed,
            "resent": self.resent,
            "last_anchored_batch_seq": self._first_pending - 1 if self._first_pending else None,
            "last_confirmed_batch_seq": self._first_pending - 1 if self._first_pending else None,
            "next_batch_seq": next_seq,
            "batches_built": self.batches_built,
            "anchors_submitted": self.anchors_submitted,
            "retries": self.retries,
            "last_error": self.last_error,
            "halted": self.halted is not None,
            "failures": self._failures,     # consecutive failed attempts (the backoff's)
            "next_retry_in_s": max(0.0, self._next_try - now) if self._next_try else 0.0,
        }
