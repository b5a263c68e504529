"""The C hash code (fastpath/src/beat_hash.c) against hashlib: SHA3-256 and BLAKE2b-256.

The driver tests/c/hash_check.c is compiled with gcc together with beat_hash.c into a temp dir,
twice: the normal build (run-time SIMD / BMI dispatch) and a -DBEAT_HASH_PORTABLE build (plain C,
as on non-x86 machines). beat_hash_many is checked at every SIMD level the CPU has.
"""
import hashlib
import os
import random
import shutil
import subprocess

import pytest
from conftest import IN_CI

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SRC = os.path.join(ROOT, "fastpath", "src", "beat_hash.c")
INC = os.path.join(ROOT, "fastpath", "include")
DRIVER = os.path.join(ROOT, "tests", "c", "hash_check.c")

ALGS = {
    "sha3": lambda m: hashlib.sha3_256(m).hexdigest(),
    "blake2b": lambda m: hashlib.blake2b(m, digest_size=32).hexdigest(),
}
SINGLE_BLOCK_MAX = {"sha3": 135, "blake2b": 128}
LEVELS = {"scalar": (0, None), "avx2": (2, "avx2"), "avx512": (3, "avx512f")}
LEVEL_NAMES = {0: "scalar", 2: "avx2x4", 3: "avx512x8"}


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _compile(tmpdir, name, extra=()):
    cc = shutil.which("gcc")
    if cc is None:
        if IN_CI:
            pytest.fail("gcc not found, and CI builds the fast path with it")
        pytest.skip("gcc not found")
    exe = os.path.join(tmpdir, name)
    cmd = [cc, "-O2", "-std=gnu11", "-fno-strict-aliasing", "-Wall", "-Werror", *extra,
           "-I", INC, DRIVER, SRC, "-o", exe]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"compile failed: {' '.join(cmd)}\n{r.stderr}"
    return exe


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("beat_hash"))
    return {"native": _compile(d, "hash_check"),
            "portable": _compile(d, "hash_check_portable", ["-DBEAT_HASH_PORTABLE"])}


def _run(exe, commands, env_extra=None):
    env = dict(os.environ)
    env.pop("BEAT_SIMD", None)
    env.update(env_extra or {})
    r = subprocess.run([exe], input="\n".join(commands) + "\n", capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout.split("\n")
    assert len(out) == len(commands) + 1 and out[-1] == "", r.stdout[-500:]
    return out[:-1]


def _hex(m):
    return m.hex() if m else "-"


def _messages(rng):
    msgs = [bytes(rng.getrandbits(8) for _ in range(n)) for n in range(301)]
    msgs.append(rng.randbytes(100 * 1024))
    return msgs


@pytest.mark.parametrize("build", ["native", "portable"])
def test_oneshot_and_incremental(builds, build):
    rng = random.Random(1)
    msgs = _messages(rng)
    cmds, expect = [], []
    for alg, ref in ALGS.items():
        for m in msgs:
            cmds.append(f"h {alg} {_hex(m)}")
            expect.append(ref(m))
            # incremental: random split points (some empty pieces, some around block sizes)
            for _ in range(2 if len(m) < 1000 else 4):
                k = rng.randint(0, 6)
                cuts = sorted(rng.randint(0, len(m)) for _ in range(k))
                if len(m) > 300 and rng.random() < 0.5:
                    cuts = sorted(set(cuts + [128, 135, 136, 256, 272]))
                cmds.append(f"inc {alg} {_hex(m)} {','.join(map(str, cuts)) or '-'}")
                expect.append(ref(m))
    got = _run(builds[build], cmds)
    bad = [(c[:40], g, e) for c, g, e in zip(cmds, got, expect) if g != e]
    assert not bad, f"{len(bad)} mismatches, first: {bad[:3]}"


def _many_cases(rng, alg):
    top = SINGLE_BLOCK_MAX[alg]
    cases = []
    for n in range(41):
        msgs = [rng.randbytes(rng.randint(0, top)) for _ in range(n)]
        cases.append(msgs)
    # edges: all empty, all maximal, and a few multi-block messages mixed in (scalar fallback)
    cases.append([b""] * 9)
    cases.append([rng.randbytes(top) for _ in range(17)])
    mixed = [rng.randbytes(rng.randint(0, top)) for _ in range(23)]
    for i in (0, 5, 8, 13, 22):
        mixed[i] = rng.randbytes(rng.choice([136, 137, 300, 1000]))
    cases.append(mixed)
    return cases


@pytest.mark.parametrize("level", list(LEVELS))
def test_many(builds, level):
    num, flag = LEVELS[level]
    flags = _cpu_flags()
    asked = num
    if flag is not None and flag not in flags:
        # This CPU lacks the level: the request must fall back to the best level it has, with
        # every digest still right (the lanes themselves are tested where the CPU has them).
        num = 2 if "avx2" in flags else 0
        print(f"CPU lacks {flag}: level {level} must fall back to {LEVEL_NAMES[num]}")
    rng = random.Random(2 + num)
    cmds, expect = [f"level {asked}"], [f"{num} {LEVEL_NAMES[num]}"]
    for alg, ref in ALGS.items():
        for msgs in _many_cases(rng, alg):
            longest = max([len(m) for m in msgs] + [0])
            stride = longest + rng.randint(0, 9)
            ostride = 32 + rng.randint(0, 8)
            cmds.append(f"many {alg} {stride} {ostride} " + " ".join(_hex(m) for m in msgs))
            expect.append(" ".join(ref(m) for m in msgs))
    got = _run(builds["native"], cmds)
    print(f"beat_hash_many tested at level {got[0]}")
    assert got[0] == expect[0], f"asked for level {level}, got {got[0]}"
    bad = [(c[:40], g[:80], e[:80]) for c, g, e in zip(cmds, got, expect) if g != e]
    assert not bad, f"{len(bad)} mismatches, first: {bad[:3]}"


def test_many_portable(builds):
    rng = random.Random(7)
    cmds, expect = ["simd"], ["0 scalar 0"]
    for alg, ref in ALGS.items():
        for msgs in _many_cases(rng, alg)[::4]:
            stride = max([len(m) for m in msgs] + [0]) + 3
            cmds.append(f"many {alg} {stride} 32 " + " ".join(_hex(m) for m in msgs))
            expect.append(" ".join(ref(m) for m in msgs))
    assert _run(builds["portable"], cmds) == expect


def test_simd_selection(builds):
    flags = _cpu_flags()
    best = 3 if "avx512f" in flags else 2 if "avx2" in flags else 0
    exe = builds["native"]
    assert _run(exe, ["simd"]) == [f"{best} {LEVEL_NAMES[best]} {best}"]
    print(f"default SIMD level here: {LEVEL_NAMES[best]}")
    for env, lvl in (("scalar", 0), ("avx2", 2), ("avx512", 3)):
        want = min(lvl, best)
        assert _run(exe, ["simd"], {"BEAT_SIMD": env}) == [f"{want} {LEVEL_NAMES[want]} {best}"]
    # set_simd clamps to the CPU and rounds an unknown level down
    got = _run(exe, ["level 9", "level 1", "level 0"])
    assert got == [f"{best} {LEVEL_NAMES[best]}", "0 scalar", "0 scalar"]


@pytest.mark.parametrize("level", list(LEVELS))
def test_many_padded(builds, level):
    """beat_hash_many_padded (the pipeline's PD messages, padded in their buffers): n = 0..40
    messages of 0..95 bytes, tails of 1 to 3 (dummy lanes), 95-byte messages (the padding in the
    last byte), and messages too long for the padding mixed in (the generic path), at each level
    (or its fallback) and in the portable build, against hashlib."""
    num, flag = LEVELS[level]
    asked = num
    if flag is not None and flag not in _cpu_flags():
        num = 2 if "avx2" in _cpu_flags() else 0     # the fallback (as test_many)
    rng = random.Random(23 + num)
    for exe in (builds["native"], builds["portable"]):
        cmds, expect = [f"level {asked}"], []
        for alg, ref in ALGS.items():
            cases = [[rng.randbytes(rng.randint(0, 95)) for _ in range(n)] for n in range(41)]
            cases += [[b""] * 7, [rng.randbytes(95) for _ in range(9)]]
            mixed = [rng.randbytes(rng.randint(0, 95)) for _ in range(14)]
            for i in (0, 3, 4, 13):
                mixed[i] = rng.randbytes(rng.choice([96, 127, 136, 300]))
            cases.append(mixed)
            for msgs in cases:
                ostride = 32 + rng.randint(0, 8)
                cmds.append(f"padded {alg} {ostride} " + " ".join(_hex(m) for m in msgs))
                expect.append(" ".join(ref(m) for m in msgs))
        got = _run(exe, cmds)
        if exe == builds["native"]:   # the level asked is in force: its self-test passed
            assert got[0] == f"{num} {LEVEL_NAMES[num]}", got[0]
        bad = [(c[:30], g[:70], e[:70]) for c, g, e in zip(cmds[1:], got[1:], expect) if g != e]
        assert not bad, f"{len(bad)} mismatches at level {got[0]}, first: {bad[:2]}"


@pytest.mark.parametrize("level", list(LEVELS))
def test_many_equal_lengths(builds, level):
    """beat_hash_many_equal (proof segments): n messages of one length, around every block edge of
    both algorithms, through the lanes at each level (or its fallback) and the portable build."""
    num, _ = LEVELS[level]
    rng = random.Random(11 + num)
    lengths = sorted({0, 1, 33, 34, 82, 127, 128, 129, 135, 136, 137, 255, 256, 257, 271, 272,
                      273, 384, 408, 1000, 4096 + 34})
    for exe in (builds["native"], builds["portable"]):
        cmds, expect = [f"level {num}"], []
        for alg, ref in ALGS.items():
            for length in lengths:
                for n in (1, 2, 3, 4, 5, 8, 9):
                    msgs = [rng.randbytes(length) for _ in range(n)]
                    cmds.append(f"equal {alg} " + " ".join(_hex(m) for m in msgs))
                    expect.append(" ".join(ref(m) for m in msgs))
        got = _run(exe, cmds)
        bad = [(c[:30], g[:70], e[:70]) for c, g, e in zip(cmds[1:], got[1:], expect) if g != e]
        assert not bad, f"{len(bad)} mismatches at level {got[0]}, first: {bad[:2]}"
