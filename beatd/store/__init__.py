"""The device's LMDB environment, with one owner: this package.

- ``layout``: every database, meta key and encoding (the only place that spells them);
- ``store``: ``Store``, the commit path (one transaction per fast-path batch), the readers, pruning;
- ``gaps``: the capture gaps; ``verify``: the store's invariants checked;
- ``outbox``: the ledger outbox (``Store.ledger_outbox()``; what ``ledger_client``'s batcher uses
  through the interface ``ledger_client.outbox.Outbox``);
- ``evidence``: the evidence the Interrogation Protocol's answers read (``EvidenceStore``);
- ``errors``: ``StoreError`` and its kinds;
- ``lock``: one process at a time per store (``StoreLock``, ``lock_holder``);
- ``space``: the disk under the store (``start_check``, ``usage``).

docs/store.md describes the layout and the rules.
"""
from .errors import (StoreCorruptError, StoreDiskError, StoreDiskFullError, StoreError,
                     StoreFullError, StoreMismatchError, no_room)
from .gaps import GAP_CAPTURE_STOPPED, GAP_KERNEL_DROPS, MAX_CAPTURE_GAPS
from .lock import StoreLock, StoreLockedError, lock_holder
from .layout import (DB_NAMES, FORMAT_VERSION, LEAF_RECEIPT, LEAF_SEGMENT, PRUNE_META,
                     RECEIPT_KEY_SIZE, SEG_HEAD, SYNC_MODES)
from .outbox import Outbox
from .store import PRUNE_LEAVES, Store

__all__ = ["Store", "StoreError", "StoreFullError", "StoreDiskError", "StoreDiskFullError",
           "StoreMismatchError", "StoreCorruptError", "FORMAT_VERSION", "SYNC_MODES",
           "PRUNE_LEAVES", "no_room", "Outbox", "GAP_KERNEL_DROPS", "GAP_CAPTURE_STOPPED",
           "MAX_CAPTURE_GAPS", "DB_NAMES", "LEAF_RECEIPT", "LEAF_SEGMENT", "PRUNE_META",
           "RECEIPT_KEY_SIZE", "SEG_HEAD", "StoreLock", "StoreLockedError", "lock_holder"]
