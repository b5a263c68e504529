"""Ledger errors: one family, messages that name the operation, the ids and the signer."""


class LedgerError(Exception):
    """Anything the ledger refused or could not do."""


class PermissionDenied(LedgerError):
    """The signer may not do this (not the governance, an unregistered key, a node for another)."""


class ConflictError(LedgerError):
    """The same (node_id, batch_seq) with different content, or an id registered twice."""


class OrderError(LedgerError):
    """Out of order: a gap in batch_seq, or a dispute step before the one it needs."""


class NotFound(LedgerError):
    """No such node, SLA, anchor or dispute."""


class Unavailable(LedgerError):
    """The ledger cannot be reached now; the caller retries later (the outbox keeps everything)."""
