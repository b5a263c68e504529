"""TEST ONLY: a beatd that lies in its own proof records (``beatd run --testing-lie SPEC``).

The lab's attack scenarios (tests/lab/test_lab_attacks.py) need routers that lie the way a dishonest
operator would: in the records it keeps and anchors, not after the fact. This module rewrites what
the pipeline produced (``fastpath.Output``) before the daemon commits it to the store, and
recomputes the segment commitment ``S`` of every segment it changed
(``fastpath.segment_value``): the device anchors its lie, so the governance finds segments that
match their anchors, and only the content (or the device's other signed statements) can give it
away. Counters and receipts are left honest (a liar that keeps its receipts honest is what the
receipts are for).

It is hidden (``argparse.SUPPRESS``), off by default, command-line only: the configuration file
refuses any ``testing*`` key (``beatd.config``), so no production configuration can turn it on, and
the daemon logs a warning at start and reports the lies in ``beatd status`` (``testing``).

SPEC (repeatable; applied in the order given, to each record):

- ``next=OLD:NEW``: records with ``next_id`` OLD are written with NEW (lying about the next hop);
- ``prev=OLD:NEW``: the same for ``prev_id``;
- ``self``: records of forwarded packets (``next_id`` not NONE) are written with ``next_id`` = the
  device's own node id (self-reference);
- ``withhold=FT_HEX``: the records of that flow tag (16 hex digits) are never written (omission).

Node ids are decimal integers in 0..2^64-1, or ``NONE`` (2^64-1).
"""
import struct

import fastpath
from fastpath.output import NONE, RECORD_SIZE

__all__ = ["Lie", "Lies", "parse_lie"]

_REC = struct.Struct(">QQQ16s8s")      # t_ns prev_id next_id PD FT
_FT_OFFSET = 40


class Lie:
    """One parsed SPEC: ``kind`` in next, prev, self, withhold."""

    __slots__ = ("spec", "kind", "old", "new", "ft")

    def __init__(self, spec, kind, old=None, new=None, ft=None):
        self.spec, self.kind, self.old, self.new, self.ft = spec, kind, old, new, ft

    def __repr__(self):
        return f"Lie({self.spec!r})"


def _node(text, spec, what):
    t = text.strip()
    if t.upper() == "NONE":
        return NONE
    try:
        n = int(t, 10)
    except ValueError:
        n = -1
    if not 0 <= n <= NONE:
        raise ValueError(f"--testing-lie {spec!r}: {what} {text!r} is not a node id (a decimal "
                         f"integer in 0..2^64-1, or NONE)")
    return n


def parse_lie(spec):
    """A ``Lie`` from SPEC; ValueError naming the spec and what is wrong with it."""
    if not isinstance(spec, str):
        raise ValueError(f"--testing-lie {spec!r}: not a string")
    s = spec.strip()
    if s == "self":
        return Lie(spec, "self")
    kind, eq, arg = s.partition("=")
    if not eq:
        raise ValueError(f"--testing-lie {spec!r}: not one of next=OLD:NEW, prev=OLD:NEW, self, "
                         f"withhold=FT_HEX")
    if kind in ("next", "prev"):
        old, colon, new = arg.partition(":")
        if not colon:
            raise ValueError(f"--testing-lie {spec!r}: {kind}= takes OLD:NEW (two node ids)")
        old, new = _node(old, spec, "OLD"), _node(new, spec, "NEW")
        if old == new:
            raise ValueError(f"--testing-lie {spec!r}: OLD and NEW are the same node id {old}: "
                             f"no lie")
        return Lie(spec, kind, old=old, new=new)
    if kind == "withhold":
        try:
            ft = bytes.fromhex(arg.strip())
        except ValueError:
            ft = b""
        if len(ft) != 8:
            raise ValueError(f"--testing-lie {spec!r}: FT_HEX {arg!r} is not a flow tag (16 hex "
                             f"digits)")
        return Lie(spec, "withhold", ft=ft)
    raise ValueError(f"--testing-lie {spec!r}: {kind!r} is not one of next, prev, self, withhold")


class Lies:
    """The lies of one device (``node_id``, ``hash_name``: those of its segment commitments)."""

    def __init__(self, specs, node_id, hash_name):
        self.lies = tuple(parse_lie(s) for s in specs)
        if not self.lies:
            raise ValueError("--testing-lie: no SPEC given")
        if isinstance(node_id, bool) or not isinstance(node_id, int) or \
                not 1 <= node_id <= NONE - 1:
            raise ValueError(f"--testing-lie: node_id {node_id!r} is not a node id (the lies "
                             f"need the device's own: set node_id)")
        self.node_id = node_id
        self.hash_name = hash_name
        fastpath.segment_value(hash_name, node_id, 0, b"")     # validates the hash, names it
        self.rewritten = 0          # records of closed segments written other than recorded
        self.withheld = 0           # records of closed segments not written at all
        self.segments = 0           # segments whose S was recomputed

    @property
    def specs(self):
        return [lie.spec for lie in self.lies]

    def records(self, records, count=False):
        """The records as this device writes them: (new bytes, changed?). ``count``: add them to
        ``rewritten``/``withheld`` (the closed segments' records only: each is counted once)."""
        records = bytes(records)
        if len(records) % RECORD_SIZE:
            raise ValueError(f"records: {len(records)} bytes is not a multiple of {RECORD_SIZE}")
        out = []
        changed = False
        for t, prev, nxt, pd, ft in _REC.iter_unpack(records):
            keep = True
            p, n = prev, nxt
            for lie in self.lies:
                if lie.kind == "withhold":
                    if ft == lie.ft:
                        keep = False
                        break
                elif lie.kind == "next":
                    if n == lie.old:
                        n = lie.new
                elif lie.kind == "prev":
                    if p == lie.old:
                        p = lie.new
                elif lie.kind == "self":
                    if n != NONE:
                        n = self.node_id
            if not keep:
                self.withheld += count
                changed = True
                continue
            if (p, n) != (prev, nxt):
                self.rewritten += count
                changed = True
            out.append(_REC.pack(t, p, n, pd, ft))
        return (b"".join(out), True) if changed else (records, False)

    def apply(self, out):
        """Rewrite a ``fastpath.Output`` in place before it is committed: the released records,
        every closed segment (its count and S recomputed when it changed) and the open segment;
        the released records' count in ``stats`` less the withheld ones. Returns ``out``."""
        released = len(out.records) // RECORD_SIZE
        out.records = self.records(out.records)[0]
        if released != len(out.records) // RECORD_SIZE and "records" in out.stats:
            # the store's own count of the records made follows the lie (Store.verify holds)
            out.stats = dict(out.stats)
            out.stats["records"] -= released - len(out.records) // RECORD_SIZE
        segments = []
        for seg_seq, count, S, records in out.segments:
            new, changed = self.records(records, count=True)
            if changed:
                count = len(new) // RECORD_SIZE
                S = fastpath.segment_value(self.hash_name, self.node_id, seg_seq, new)
                self.segments += 1
                records = new
            segments.append((seg_seq, count, S, records))
        out.segments = segments
        out.open_records = self.records(out.open_records)[0]
        return out

    def status(self):
        return {"lies": self.specs, "records_rewritten": self.rewritten,
                "records_withheld": self.withheld, "segments_recommitted": self.segments}
