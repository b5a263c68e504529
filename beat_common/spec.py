"""The SPEC's constants that more than one role needs (docs/formats.md, BEAT record formats v1), each
defined here once: the fast path, the store, the Interrogation Protocol, the ledger client, the
governance and the testbed import them from here.

The test reference modules (tests/fastpath/spec_ref.py, tests/governance/judge_reference.py) keep
their own copies on purpose: they check this code against the SPEC, not against itself.
"""

NONE = (1 << 64) - 1            # prev_id/next_id of a packet without that side (u64 all ones)
RECORD_SIZE = 48                # a proof record: t_ns(8) prev_id(8) next_id(8) PD(16) FT(8)

# node ids: 1..2^64-2 (0 is no node, 2^64-1 is NONE)
NODE_ID_MIN = 1
NODE_ID_MAX = (1 << 64) - 2

# a ledger leaf (the outbox's value, what the Merkle tree hashes): type(1) || value(32)
LEAF_RECEIPT = 1                # value: a receipt's R
LEAF_SEGMENT = 2                # value: a segment commitment's S
LEAF_GAP = 3                    # value: a gap record's G (docs/gap-records.md; not in SPEC v1:
#                                 a verifier of v1 anchors needs no type-3 leaf)
LEAF_SIZE = 33


def is_node_id(value):
    """Whether ``value`` is a node id: an int (not a bool) in NODE_ID_MIN..NODE_ID_MAX."""
    return (isinstance(value, int) and not isinstance(value, bool)
            and NODE_ID_MIN <= value <= NODE_ID_MAX)
