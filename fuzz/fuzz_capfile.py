"""Atheris target: arbitrary bytes as a capture file through the C reader and the Python reference.

The first byte chooses a start (a pcap file header of either byte order and resolution, a pcapng
section header of either byte order with an interface, or nothing: the bytes as they are); the rest
is the file. ``fastpath._native.CaptureFile`` and ``beatd.capfile.ReferenceCaptureReader`` must
give the same frames (time, bytes, wirelen, linktype, dir), the same count and the same error, or
both refuse the file with the same message.

    python fuzz/fuzz_capfile.py -runs=20000          # short run (tests/fastpath/test_fuzz_capfile.py)
    python fuzz/fuzz_capfile.py -max_total_time=3600 fuzz/corpus-capfile   # long run (make fuzz)
"""
import os
import struct
import sys
import tempfile

import atheris

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE)]

# the reference reader is instrumented (coverage guidance over the format's branches); C just runs
with atheris.instrument_imports(include=["beatd.capfile"]):
    from beatd.capfile import CaptureError, ReferenceCaptureReader
import fastpath._native as native  # noqa: E402
from fastpath.output import DESC_FORMAT  # noqa: E402


def _block(bo, btype, body):
    body += b"\0" * (-len(body) % 4)
    return struct.pack(bo + "II", btype, len(body) + 12) + body + struct.pack(bo + "I", len(body) + 12)


def _starts():
    out = [b""]
    for bo in "<>":
        for magic in (0xa1b2c3d4, 0xa1b23c4d):
            out.append(struct.pack(bo + "IHHiIII", magic, 2, 4, 0, 0, 65535, 1))
        shb = _block(bo, 0x0A0D0D0A, struct.pack(bo + "IHHq", 0x1A2B3C4D, 1, 0, -1))
        idb = _block(bo, 1, struct.pack(bo + "HHI", 1, 0, 0) + struct.pack(bo + "HH", 9, 1)
                     + b"\x09\0\0\0" + b"\0" * 4)
        out += [shb, shb + idb]
    return out


STARTS = _starts()
# the input file's directory: BEAT_FUZZ_TMP (the test's own), else a new one (libFuzzer ends
# the process with exit(): no Python clean-up runs, so a long run leaves it behind)
TMP = os.environ.get("BEAT_FUZZ_TMP") or tempfile.mkdtemp(
    prefix="fuzz-capfile-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
PATH = os.path.join(TMP, "input.cap")


def frames_of(batches):
    out = []
    for buf, desc in batches:
        for t, off, cap, wire, lt, d, fl in struct.iter_unpack(DESC_FORMAT, desc):
            out.append((t, bytes(buf[off:off + cap]), wire, lt, d, fl))
    return out


def TestOneInput(data):
    if not data:
        return
    start = STARTS[data[0] % len(STARTS)]
    batch = 1 + (data[0] >> 4)
    body = start + data[1:]
    with open(PATH, "wb") as f:
        f.write(body)
    try:
        r = ReferenceCaptureReader(PATH, batch, chunk_size=64 + 64 * (data[0] & 3))
        ref = (r.format, frames_of(r), r.frames, r.capture_truncated,
               [e.split(": ", 1)[1].rsplit(" (after ", 1)[0] for e in r.errors])
    except CaptureError as exc:
        ref = str(exc).split(": ", 1)[1]
    try:
        c = native.CaptureFile(body)
        batches = []
        while (b := c.read(batch)) is not None:
            batches.append(b)
        got = (c.format, frames_of(batches), c.frames, int(c.damaged), [c.error] if c.error else [])
    except ValueError as exc:
        got = str(exc)
    if got != ref:
        raise AssertionError(f"C reader and reference differ on {body.hex()}:\n"
                             f"reference {ref!r:.1200}\nC         {got!r:.1200}")


def main():
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
