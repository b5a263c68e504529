"""Atheris target: arbitrary bytes through both fast-path twins; any difference or exception crashes.

The first bytes choose the hash, the frames (linktype, dir, capture interface slot, time step, a
valid seed frame to start from or raw bytes) and how the frames are split into batches. Each frame goes through `pd_ft` of both
twins, and the whole input through a native and a pure `Pipeline` (small windows, epochs and
segments), whose take() Outputs must be equal field by field, before and after flush().

    python fuzz/fuzz_parser.py -runs=20000              # short run (tests/fastpath/...)
    python fuzz/fuzz_parser.py -max_total_time=3600 fuzz/corpus   # long run (make fuzz)
"""
import os
import sys

import atheris

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), os.path.join(os.path.dirname(HERE), "tests", "fastpath")]

# The pure twin is instrumented (coverage guidance for the parser logic); the native module is C
# and just runs.
with atheris.instrument_imports(include=["fastpath.pure"]):
    import fastpath.pure as pure
import fastpath._native as native  # noqa: E402

LINKTYPES = (1, 113, 276, 101, 12, 14, 228, 229, 0, 108, 104, 9, 50, 2, 147)
HASHES = ("sha3-256", "blake2b-256")
OWN = bytes.fromhex("020000000002")
# one neighbour on every interface, one bound to the interface of slot 1
NEIGH = {bytes.fromhex("020000000001"): 5, bytes.fromhex("020000000003"): (6, (1,))}
FIELDS = ("records", "segments", "receipts", "counters", "stats", "open_seg_seq", "open_records",
          "open_receipts", "closed_before")


def _seeds():
    import spec_ref
    v4 = bytes.fromhex("4500002c00014000401100000a0000010a000002003500350018000068656c6c6f20776f726c6421")
    v6 = (bytes.fromhex("6000000000103a40") + bytes.fromhex("20010db8" + "00" * 11 + "01")
          + bytes.fromhex("20010db8" + "00" * 11 + "02") + b"\x80\x00" + b"\x00" * 14)
    out = []
    for ip in (v4, v6):
        out += [(f, lt) for _, f, lt in spec_ref.all_links(ip)]
        out.append((spec_ref.link_ether(ip, src=OWN, dst=bytes.fromhex("020000000003"))[0], 1))
        out.append((spec_ref.link_sll(ip, pkttype=4)[0], 113))
    return out


SEEDS = _seeds()


def norm(x):
    if isinstance(x, (bytearray, memoryview)):
        return bytes(x)
    if isinstance(x, list):
        return [norm(v) for v in x]
    if isinstance(x, tuple):
        return tuple(norm(v) for v in x)
    return x


# A known, reported difference can be set aside while hunting for others, e.g.
# BEAT_FUZZ_IGNORE=flush:closed_before (never in the test or in `make fuzz`).
IGNORE = {tuple(x.split(":", 1)) for x in os.environ.get("BEAT_FUZZ_IGNORE", "").split(",") if x}


def compare(a, b, where):
    for name in FIELDS:
        if (where, name) in IGNORE:
            continue
        x, y = norm(getattr(a, name)), norm(getattr(b, name))
        if x != y:
            raise AssertionError(f"{where}: {name} differ: pure {x!r:.400} native {y!r:.400}")


def TestOneInput(data):
    fdp = atheris.FuzzedDataProvider(data)
    h = HASHES[fdp.ConsumeIntInRange(0, 1)]
    n = fdp.ConsumeIntInRange(1, 12)
    frames, t = [], fdp.ConsumeIntInRange(0, 1 << 40)
    for _ in range(n):
        mode = fdp.ConsumeIntInRange(0, 3)
        lt_pick = fdp.ConsumeIntInRange(0, len(LINKTYPES))
        d = fdp.ConsumeIntInRange(0, 2)
        slot = fdp.ConsumeIntInRange(0, 2)
        t = max(0, t + fdp.ConsumeIntInRange(-3000, 20000))
        if mode == 0:                                     # raw bytes
            lt = LINKTYPES[lt_pick] if lt_pick < len(LINKTYPES) else fdp.ConsumeIntInRange(0, 65535)
            frame = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 120))
        else:                                             # a valid seed, patched and cut
            frame, lt = SEEDS[fdp.ConsumeIntInRange(0, len(SEEDS) - 1)]
            frame = bytearray(frame)
            for _ in range(fdp.ConsumeIntInRange(0, 3) if mode < 3 else 0):
                if frame:
                    frame[fdp.ConsumeIntInRange(0, len(frame) - 1)] = fdp.ConsumeIntInRange(0, 255)
            if fdp.ConsumeBool():
                del frame[fdp.ConsumeIntInRange(0, len(frame)):]
            frame = bytes(frame)
            if mode == 2 and lt_pick < len(LINKTYPES):
                lt = LINKTYPES[lt_pick]
        frames.append((t, frame, lt, d, slot))

    for _, frame, lt, _, _ in frames:
        a, b = pure.pd_ft(frame, lt, h), native.pd_ft(frame, lt, h)
        if norm(tuple(a)) != norm(tuple(b)):
            raise AssertionError(f"pd_ft differ on {frame.hex()} linktype {lt}: {a} vs {b}")

    params = dict(hash_name=h, own_macs=(OWN,), neighbours=NEIGH, join_window_ns=5000,
                  receipt_epoch_ns=8000, segment_records=3, anchor_period_ns=30000, max_pending=16)
    pipes = [pure.Pipeline(7, **params), native.Pipeline(7, **params)]
    i = 0
    while i < len(frames):
        k = fdp.ConsumeIntInRange(1, len(frames))
        buf, desc = b"", b""
        for t, frame, lt, d, slot in frames[i:i + k]:
            desc += pure.pack_desc(t, len(buf), len(frame), len(frame), lt, d, 0, slot)
            buf += frame
        i += k
        for p in pipes:
            p.feed(buf, desc)
        compare(pipes[0].take(), pipes[1].take(), "take")
        if pipes[0].take_wrong_interface() != pipes[1].take_wrong_interface():
            raise AssertionError("take_wrong_interface differ")
    for p in pipes:
        p.flush()
    compare(pipes[0].take(), pipes[1].take(), "flush")
    if pipes[0].totals() != pipes[1].totals():
        raise AssertionError("totals differ")


def main():
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
