"""The table of MACs that are no neighbour's (``take_unknown_macs``), in both twins: by (MAC, slot,
dir) in first-seen order, at most UNKNOWN_MAC_MAX distinct per take (the frames of the others
counted as unlisted), neighbours' MACs (on their interface or another) never in it; the records
are the same with or without it (the twins and the golden vectors check the bytes)."""
import random
import struct

from fastpath.output import UNKNOWN_MAC_MAX

OWN = bytes.fromhex("020000000001")
NB_A = bytes.fromhex("0a000000000a")       # neighbour 11, on slot 1 only
NB_B = bytes.fromhex("0b000000000b")       # neighbour 22, every interface


def frame(src, dst, i):
    payload = struct.pack(">I", i) + b"unknown-mac"
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), i & 0xFFFF, 0, 64, 17, 0,
                     bytes([10, 1, i >> 8 & 255, i & 255]), bytes([10, 2, 0, 1]))
    return dst + src + b"\x08\x00" + ip + struct.pack(">HHHH", 1000, 53, 8 + len(payload), 0) \
        + payload


def feed(impl, p, frames):
    """frames: (src, dst, dir, slot)."""
    buf, desc = bytearray(), bytearray()
    for i, (src, dst, d, slot) in enumerate(frames):
        f = frame(src, dst, i)
        desc += impl.pack_desc(1_000_000_000 + i * 1000, len(buf), len(f), len(f), 1, d, 0, slot)
        buf += f
    p.feed(bytes(buf), bytes(desc))


def pipe(impl):
    return impl.Pipeline(7, "sha3-256", own_macs=(OWN,),
                         neighbours={NB_A: (11, (1,)), NB_B: 22})


def test_unknown_macs_listed_by_mac_interface_and_direction(impl):
    h1, h2 = bytes.fromhex("aa0000000001"), bytes.fromhex("aa0000000002")
    p = pipe(impl)
    feed(impl, p, [(h1, OWN, 1, 1), (h1, OWN, 1, 1), (h2, OWN, 1, 2), (h1, OWN, 1, 2),
                   (OWN, h1, 2, 1),                       # to h1: egress
                   (NB_A, OWN, 1, 1), (NB_B, OWN, 1, 2),  # neighbours: not listed
                   (NB_A, OWN, 1, 2),                     # NB_A elsewhere: wrong interface
                   (OWN, NB_B, 2, 1), (h1, OWN, 1, 1)])
    listed, unlisted = p.take_unknown_macs()
    assert listed == [(h1, 1, 1, 3), (h2, 2, 1, 1), (h1, 2, 1, 1), (h1, 1, 2, 1)]
    assert unlisted == 0
    assert p.take().stats["unknown_mac"] == 6 == p.totals()["unknown_mac"]
    assert p.totals()["neighbour_wrong_interface"] == 1
    assert [x for x in p.take_wrong_interface()] == [(NB_A, 2, 1, 11, 1)]
    # taken: forgotten
    assert p.take_unknown_macs() == ([], 0)


def test_the_table_is_bounded_and_counts_what_it_cannot_list(impl):
    rng = random.Random(5)
    macs = [bytes([0x02]) + rng.randbytes(5) for _ in range(UNKNOWN_MAC_MAX + 40)]
    p = pipe(impl)
    frames = [(m, OWN, 1, 1) for m in macs] + [(macs[0], OWN, 1, 1)] * 3 + \
        [(macs[-1], OWN, 1, 1)] * 2
    feed(impl, p, frames)
    listed, unlisted = p.take_unknown_macs()
    assert [x[0] for x in listed] == macs[:UNKNOWN_MAC_MAX]
    assert listed[0][3] == 4 and all(x[3] == 1 for x in listed[1:])
    assert unlisted == 40 + 2
    assert sum(x[3] for x in listed) + unlisted == p.totals()["unknown_mac"] == len(frames)
    # the next take starts empty again
    feed(impl, p, [(macs[-1], OWN, 1, 1)])
    assert p.take_unknown_macs() == ([(macs[-1], 1, 1, 1)], 0)


def test_the_twins_agree_on_random_traffic(pure, native):
    rng = random.Random(11)
    hosts = [bytes([0x02]) + rng.randbytes(5) for _ in range(150)]
    pipes = [pipe(pure), pipe(native)]
    for _ in range(30):
        frames = []
        for _ in range(rng.randrange(1, 200)):
            a = rng.choice(hosts + [NB_A, NB_B])
            d = rng.choice((1, 2))
            frames.append((a, OWN, 1, rng.randrange(0, 4)) if d == 1 else
                          (OWN, a, 2, rng.randrange(0, 4)))
        for impl, p in zip((pure, native), pipes):
            feed(impl, p, frames)
        got = [p.take_unknown_macs() for p in pipes]
        assert got[0] == got[1]
        outs = [p.take() for p in pipes]
        assert outs[0].records == outs[1].records
    assert pipes[0].totals() == pipes[1].totals()
