"""BEAT fast path: frames in, proof records, counters, receipts and segments out.

Two twins with one API (docs/fastpath.md): the native module ``fastpath._native`` (Cython/C, the
per-packet loop without the GIL) and the pure-Python reference ``fastpath.pure``. The native one is
used unless ``BEAT_PURE_PYTHON=1`` is set or it was not built.
"""
import os

from .output import (COUNTER_SIZE, DEFAULT_MAX_RECEIPTS_PER_EPOCH, DESC_FORMAT, DESC_SIZE,
                     HASH_NAMES, NONE, OPEN_RECEIPT_SIZE, OVERFLOW_ADDR, REASON_CLASS, RECEIPT_SIZE,
                     RECORD_SIZE, STAT_NAMES, Output)

_force_pure = os.environ.get("BEAT_PURE_PYTHON", "") not in ("", "0")
NATIVE_ERROR = None
if _force_pure:
    from . import pure as _impl
    IMPL = "py"
else:
    try:
        from . import _native as _impl
        IMPL = "c"
    except ImportError as exc:  # not built: fall back, and say why where it is asked
        NATIVE_ERROR = exc
        from . import pure as _impl
        IMPL = "py"

Pipeline = _impl.Pipeline
pd_ft = _impl.pd_ft
fp_many = _impl.fp_many
segment_value = _impl.segment_value
receipt_value = _impl.receipt_value
pack_desc = _impl.pack_desc
t_range = _impl.t_range
proofs_value = _impl.proofs_value
merkle_levels = _impl.merkle_levels

__all__ = ["Pipeline", "pd_ft", "fp_many", "segment_value", "receipt_value", "pack_desc", "t_range",
           "proofs_value",
           "merkle_levels", "IMPL",
           "NONE", "DESC_FORMAT", "DESC_SIZE", "RECORD_SIZE", "RECEIPT_SIZE", "OPEN_RECEIPT_SIZE",
           "COUNTER_SIZE", "HASH_NAMES", "STAT_NAMES", "REASON_CLASS", "Output",
           "DEFAULT_MAX_RECEIPTS_PER_EPOCH", "OVERFLOW_ADDR"]
