"""The capture gaps in the store (``capture_gaps`` database): what capture missed, when and why
(docs/interrogation.md, coverage gaps). Functions on a write transaction; ``Store.record_capture``
calls them."""
from .layout import GAP_CAPTURE_STOPPED, GAP_KEY, GAP_KERNEL_DROPS, GAP_VAL, U64, p64

MAX_CAPTURE_GAPS = 10_000   # beyond it the oldest two merge (a wider, coarser gap)
MERGE_LOOKBACK = 64         # recent gaps looked at for one to extend


def gap_key(from_ns, reason, interface):
    name = interface.encode("ascii") if isinstance(interface, str) else bytes(interface)
    return GAP_KEY.pack(from_ns, reason, name[:16])

def add(txn, db, from_ns, to_ns, frames, reason, interface):
    if reason not in (GAP_KERNEL_DROPS, GAP_CAPTURE_STOPPED) or from_ns > to_ns:
        raise ValueError(f"capture gap [{from_ns}, {to_ns}] reason {reason}: not a gap")
    key = gap_key(from_ns, reason, interface)
    cur = txn.cursor(db=db)
    # a recent gap of the same reason and interface that this one touches: extend it
    if to_ns < (1 << 64) - 1 and cur.set_range(p64(to_ns + 1)):
        found = cur.prev()               # the newest gap starting at or before to_ns
    else:
        found = cur.last()
    looked = 0
    while found and looked < MERGE_LOOKBACK:
        k, v = bytes(cur.key()), bytes(cur.value())
        g_from, g_reason, g_if = GAP_KEY.unpack(k)
        g_to, g_frames = GAP_VAL.unpack(v)
        if g_reason == reason and g_if == key[9:] and g_to >= from_ns and g_from <= to_ns:
            cur.delete()
            from_ns, to_ns = min(from_ns, g_from), max(to_ns, g_to)
            frames += g_frames
            key = gap_key(from_ns, reason, interface)
            break
        looked += 1
        found = cur.prev()
    old = txn.get(key, db=db)
    if old is not None:                  # the same start: one gap, the longer end
        o_to, o_frames = GAP_VAL.unpack(old)
        to_ns, frames = max(to_ns, o_to), frames + o_frames
    txn.put(key, GAP_VAL.pack(to_ns, frames), db=db)

def prune(txn, db, cutoff):
    cur = txn.cursor(db=db)
    ok = cur.first()
    while ok:
        g_from = U64.unpack(bytes(cur.key()[:8]))[0]
        if g_from >= cutoff:
            break
        if GAP_VAL.unpack(bytes(cur.value()))[0] < cutoff:
            ok = cur.delete() and bool(cur.key())       # on the next gap, if any
        else:
            ok = cur.next()

def merge_oldest(txn, db):
    cur = txn.cursor(db=db)
    if not cur.first():
        return
    a_from, a_reason, a_if = GAP_KEY.unpack(bytes(cur.key()))
    a_to, a_frames = GAP_VAL.unpack(bytes(cur.value()))
    cur.delete()
    if not cur.first():
        return
    b_from, b_reason, b_if = GAP_KEY.unpack(bytes(cur.key()))
    b_to, b_frames = GAP_VAL.unpack(bytes(cur.value()))
    cur.delete()
    reason = GAP_CAPTURE_STOPPED if GAP_CAPTURE_STOPPED in (a_reason, b_reason) else a_reason
    iface = a_if if a_if == b_if else bytes(16)
    key = GAP_KEY.pack(min(a_from, b_from), reason, iface)
    old = txn.get(key, db=db)
    to_ns, frames = max(a_to, b_to), a_frames + b_frames
    if old is not None:
        o_to, o_frames = GAP_VAL.unpack(old)
        to_ns, frames = max(to_ns, o_to), frames + o_frames
    txn.put(key, GAP_VAL.pack(to_ns, frames), db=db)
