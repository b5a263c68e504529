"""The ledger outbox as the batcher sees it: an interface, and the batch record it passes.

The outbox lives in the device's store (``beatd.store.outbox.Outbox``, in the device's LMDB
environment: docs/store.md, docs/ledger.md "Outbox and batcher"); the ledger client works against
this interface only and never imports the device's code. An outbox holds the leaves in order
(``leaf_seq`` from 0; a leaf is ``type(1) || value(32)``, ``beat_common.spec.LEAF_*``), the batches
built over them (``BatchRecord``: pending until marked anchored; anchored batches are always a
prefix of the batch_seqs) and each batch's Merkle tree levels, from which a leaf's inclusion proof
is computed on request.

A batch's time span (``first_t_ns``/``last_t_ns``) is the min/max over its leaves of the segment
commitments' ``first_t_ns``/``last_t_ns``, the receipts' ``epoch_ns`` and the gap records'
``to_ns`` (``Outbox.span``; a leaf's type is the outbox's business, the batcher hashes any); its
``seg_leaves_end`` counts the segment leaves up to its end, which maps the next segment leaf to its
``seg_seq``.
"""
import dataclasses
from typing import Optional, Protocol, runtime_checkable

from .types import Anchor

__all__ = ["PENDING", "ANCHORED", "BatchRecord", "Outbox", "as_outbox"]

PENDING, ANCHORED = 0, 1


@dataclasses.dataclass(frozen=True)
class BatchRecord:
    """One batch as the outbox keeps it."""
    batch_seq: int
    tree_size: int
    root: bytes
    first_t_ns: int
    last_t_ns: int
    first_leaf_seq: int
    seg_leaves_end: int
    built_at: float
    status: int = PENDING
    ref: Optional[str] = None

    @property
    def end_leaf_seq(self):
        """The first leaf_seq after this batch."""
        return self.first_leaf_seq + self.tree_size

    def anchor(self, node_id):
        return Anchor(node_id, self.batch_seq, self.tree_size, self.root, self.first_t_ns,
                      self.last_t_ns, self.ref)


@runtime_checkable
class Outbox(Protocol):
    """What the batcher needs from a device's outbox. Only one batcher writes an outbox."""
    path: str                   # where it lives, for messages
    node_id: int
    hash_name: str

    def next_leaf_seq(self) -> int:
        """The leaf_seq the device will write next (= number of leaves ever produced)."""

    def last_batch(self) -> Optional[BatchRecord]: ...
    def batch(self, batch_seq: int) -> Optional[BatchRecord]: ...

    def batches(self, from_seq: int = 0) -> list:
        """Every batch from ``from_seq`` on, in batch_seq order."""

    def first_pending(self) -> int:
        """The batch_seq of the oldest pending batch, or the next one."""

    def leaves(self, from_seq: int, limit: int) -> list:
        """Up to ``limit`` leaves ``(leaf_seq, leaf_bytes)`` from ``from_seq``, contiguous."""

    def span(self, leaves, seg_leaves_before: int) -> tuple:
        """``(first_t_ns, last_t_ns, seg_leaves_end)`` of these leaves."""

    def proof(self, leaf_seq: int) -> Optional[tuple]:
        """``(batch_seq, index, proof)`` of a batched leaf, or None."""

    def levels(self, batch_seq: int) -> Optional[bytes]: ...

    def write_batch(self, rec: BatchRecord, levels) -> None:
        """Store a new pending batch and its tree's levels at once; refused (RuntimeError) unless
        it follows the stored ones exactly, ValueError when the levels do not fit its size."""

    def mark_anchored(self, batch_seq: int, ref: Optional[str] = None) -> BatchRecord: ...


def as_outbox(source):
    """The outbox of ``source``: an ``Outbox`` as it is, or the one a device store holds (an
    object with ``ledger_outbox()``, as ``beatd.store.Store``)."""
    get = getattr(source, "ledger_outbox", None)
    if get is not None:
        return get()
    if isinstance(source, Outbox):
        return source
    raise TypeError(f"{type(source).__name__} is not a ledger outbox (no next_leaf_seq, leaves, "
                    "write_batch, ...) and holds none (no ledger_outbox())")
