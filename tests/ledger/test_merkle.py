"""ledger_client.merkle against RFC 9162 section 2.1, checked from first principles.

The reference below is written here from the RFC's text (MTH, PATH, SUBPROOF), with hashlib
directly, and shares no code with the module. Exhaustive sweeps:
- ``root`` == the reference MTH for n = 0..300, both hashes;
- every tree size 1..2048 and every leaf: ``verify_inclusion`` accepts ``Tree.proof`` against the
  reference root (blake2b-256: a full sha3-256 sweep is ~21M SHA-3 calls, too slow for CI, and the
  tree's shape does not depend on the hash); sha3-256 every size to 2048 with sampled leaves;
  ``Tree.proof`` == the reference PATH for every size and leaf up to 600 (both hashes) and the
  sampled leaves up to 2048 (beyond, a proof that verifies against the right root and is not PATH
  would be a hash collision);
  ``inclusion_proof`` (the O(n) module function) == ``Tree.proof`` for every leaf up to n = 120
  and for sampled sizes/leaves up to 5,000;
- consistency proofs for every (m, n), n <= 300, and sampled larger ones;
- tampering: a changed byte in the leaf, a proof element or the root, a missing/extra element,
  another index or another tree size makes verification fail (except where RFC 9162 itself cannot
  tell: another size whose audit path has the same shape -- checked to be exactly those).
"""
import functools
import hashlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_client import merkle
from ledger_client.merkle import (Tree, consistency_proof, inclusion_proof, root,
                                  verify_consistency, verify_inclusion)

HASHES = ("sha3-256", "blake2b-256")


# -- the reference, from the RFC text ---------------------------------------------------------

def H(hash_name, data):
    if hash_name == "sha3-256":
        return hashlib.sha3_256(data).digest()
    return hashlib.blake2b(data, digest_size=32).digest()


def k_of(n):
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(h, D):
    """MTH(D[n]) as RFC 9162 2.1.1 writes it."""
    n = len(D)
    if n == 0:
        return H(h, b"")
    if n == 1:
        return H(h, b"\x00" + D[0])
    k = k_of(n)
    return H(h, b"\x01" + mth(h, D[:k]) + mth(h, D[k:]))


class Ref:
    """PATH and SUBPROOF over prefixes of one leaf list, with MTH memoised by (lo, hi): every tree
    of the sweep is a prefix of the same leaves, so a subtree's hash is computed once."""

    def __init__(self, h, leaves):
        self.h, self.D = h, leaves

        @functools.lru_cache(maxsize=None)
        def m(lo, hi):
            if hi - lo == 1:
                return H(h, b"\x00" + self.D[lo])
            k = k_of(hi - lo)
            return H(h, b"\x01" + m(lo, lo + k) + m(lo + k, hi))
        self.mth = m

    def path(self, m, lo, hi):
        """PATH(m, D[lo:hi]) (2.1.3.1)."""
        if hi - lo == 1:
            return []
        k = k_of(hi - lo)
        if m < k:
            return self.path(m, lo, lo + k) + [self.mth(lo + k, hi)]
        return self.path(m - k, lo + k, hi) + [self.mth(lo, lo + k)]

    def subproof(self, m, lo, hi, b):
        """SUBPROOF(m, D[lo:hi], b) (2.1.4.1)."""
        if m == hi - lo:
            return [] if b else [self.mth(lo, hi)]
        k = k_of(hi - lo)
        if m <= k:
            return self.subproof(m, lo, lo + k, b) + [self.mth(lo + k, hi)]
        return self.subproof(m - k, lo + k, hi, False) + [self.mth(lo, lo + k)]


def shape(m, n):
    """Where PATH(m, D[n])'s hashes go, bottom-up: True = the sibling is on the left."""
    if n == 1:
        return ()
    k = k_of(n)
    if m < k:
        return shape(m, k) + (False,)
    return shape(m - k, n - k) + (True,)


def cshape(m, n, b=True):
    """The branches SUBPROOF(m, D[n], b) takes, bottom-up."""
    if m == n:
        return (b,)
    k = k_of(n)
    if m <= k:
        return cshape(m, k, b) + ("r",)
    return cshape(m - k, n - k, False) + ("l",)


def leaves_for(n, seed=0):
    rng = random.Random(seed)
    return [bytes([rng.choice((1, 2))]) + rng.randbytes(32) for _ in range(n)]


def flip(b, i, bit=1):
    b = bytearray(b)
    b[i] ^= bit
    return bytes(b)


# -- root ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("h", HASHES)
def test_root_is_rfc_mth_for_every_size_up_to_300(h):
    D = leaves_for(300, seed=1)
    for n in range(0, 301):
        expected = mth(h, D[:n])
        assert root(h, D[:n]) == expected, n
        assert Tree(h, D[:n]).root == expected, n


@pytest.mark.parametrize("h", HASHES)
def test_known_small_trees_by_hand(h):
    a, b, c = b"\x01" + b"a" * 32, b"\x02" + b"b" * 32, b"\x01" + b"c" * 32
    la, lb, lc = (H(h, b"\x00" + x) for x in (a, b, c))
    assert root(h, []) == H(h, b"")
    assert root(h, [a]) == la
    assert root(h, [a, b]) == H(h, b"\x01" + la + lb)
    # n = 3: k = 2, the third leaf is the right subtree on its own
    assert root(h, [a, b, c]) == H(h, b"\x01" + H(h, b"\x01" + la + lb) + lc)
    assert inclusion_proof(h, [a, b, c], 2) == [H(h, b"\x01" + la + lb)]
    assert inclusion_proof(h, [a, b, c], 0) == [lb, lc]
    assert consistency_proof(h, [a, b, c], 2) == [lc]
    assert consistency_proof(h, [a, b, c], 1) == [lb, lc]


def test_the_two_hashes_differ_and_names_are_checked():
    D = leaves_for(5)
    assert root("sha3-256", D) != root("blake2b-256", D)
    for bad in ("sha256", None, "SHA3-256"):
        with pytest.raises(ValueError):
            root(bad, D)
        with pytest.raises(ValueError):
            Tree(bad, D)


# -- inclusion: the exhaustive sweep ------------------------------------------------------------

def _sweep(h, max_n, leaves_per_tree=None, ref_up_to=0, min_n=1):
    """Trees of 1..max_n leaves, built incrementally (each once); every (or the chosen) leaf's
    Tree.proof verifies against the reference MTH; up to ``ref_up_to`` it is also compared with
    the reference PATH. (Beyond, equality is implied: a proof that verifies against the right
    root and differs from PATH would be a hash collision.)"""
    D = leaves_for(max_n, seed=2)
    ref = Ref(h, D)
    tree = Tree(h)
    checked = 0
    for n in range(1, max_n + 1):
        tree.append(D[n - 1])
        if n < min_n:
            continue
        r = tree.root
        assert r == ref.mth(0, n), n
        for i in range(n) if leaves_per_tree is None else leaves_per_tree(n):
            p = tree.proof(i)
            if n <= ref_up_to:
                assert p == ref.path(i, 0, n), (n, i)
            assert verify_inclusion(h, D[i], i, n, p, r), (n, i)
            checked += 1
    return checked


@pytest.mark.parametrize("lo,hi", [(1, 1448), (1449, 2048)], ids=["1-1448", "1449-2048"])
def test_every_size_to_2048_every_leaf_tree_proof_verifies(lo, hi):
    """In two halves of equal work (~14 s each)."""
    assert _sweep("blake2b-256", hi, min_n=lo) == (hi * (hi + 1) - lo * (lo - 1)) // 2


@pytest.mark.parametrize("h", HASHES)
def test_every_size_to_600_every_leaf_tree_proof_is_rfc_path(h):
    assert _sweep(h, 600, ref_up_to=600) == 600 * 601 // 2


def test_every_size_to_2048_sampled_leaves_sha3():
    def some(n):
        return sorted({0, n - 1, n // 2, (n - 1) & ~1, random.Random(n).randrange(n)})
    _sweep("sha3-256", 2048, some, ref_up_to=2048)


@pytest.mark.parametrize("h", HASHES)
def test_inclusion_proof_function_equals_tree_every_leaf_up_to_120(h):
    D = leaves_for(120, seed=3)
    for n in range(1, 121):
        tree = Tree(h, D[:n])
        for i in range(n):
            assert inclusion_proof(h, D[:n], i) == tree.proof(i), (n, i)


@pytest.mark.parametrize("h", HASHES)
def test_sampled_sizes_up_to_5000(h):
    rng = random.Random(4)
    D = leaves_for(5000, seed=4)
    sizes = [1024, 1025, 2047, 2049, 3000, 4095, 4096, 4097, 5000]
    sizes += rng.sample(range(2049, 5000), 6)
    for n in sizes:
        tree = Tree(h, D[:n])
        r = tree.root
        assert r == mth(h, D[:n])
        for i in range(n):                       # every leaf verifies
            assert verify_inclusion(h, D[i], i, n, tree.proof(i), r), (n, i)
        for i in {0, n - 1, n // 2, rng.randrange(n)}:   # a few against the O(n) function
            assert inclusion_proof(h, D[:n], i) == tree.proof(i), (n, i)


@pytest.mark.parametrize("h", HASHES)
def test_tree_append_equals_tree_built_at_once(h):
    D = leaves_for(300, seed=5)
    t = Tree(h)
    for n in range(300):
        t.append(D[n])
        if n % 37 == 0 or n > 250:
            assert t.levels == Tree(h, D[:n + 1]).levels


# -- inclusion: tampering -----------------------------------------------------------------------

@pytest.mark.parametrize("h", HASHES)
def test_any_changed_byte_fails_inclusion(h):
    for n in (1, 2, 3, 5, 8, 13, 64, 100):
        D = leaves_for(n, seed=n)
        tree = Tree(h, D)
        r = tree.root
        for i in range(n):
            p = tree.proof(i)
            assert verify_inclusion(h, D[i], i, n, p, r)
            for b in range(len(D[i])):                            # the leaf
                assert not verify_inclusion(h, flip(D[i], b), i, n, p, r)
            assert not verify_inclusion(h, D[i] + b"\x00", i, n, p, r)
            assert not verify_inclusion(h, D[i][:-1], i, n, p, r)
            for b in range(32):                                   # the root
                assert not verify_inclusion(h, D[i], i, n, p, flip(r, b, 0x80))
            for j in range(len(p)):                               # each proof element
                for b in range(32):
                    q = list(p)
                    q[j] = flip(q[j], b)
                    assert not verify_inclusion(h, D[i], i, n, q, r), (n, i, j, b)
                assert not verify_inclusion(h, D[i], i, n, p[:j] + p[j + 1:], r)
            assert not verify_inclusion(h, D[i], i, n, p + [r], r)
            assert not verify_inclusion(h, D[i], i, n, [r] + p, r)
            for j in range(n + 3):                                # another index
                if j != i:
                    assert shape(j, n) != shape(i, n) if j < n else True
                    assert not verify_inclusion(h, D[i], j, n, p, r), (n, i, j)
            for m in range(0, 2 * n + 4):                         # another size
                if m == n:
                    continue
                same = 0 <= i < m and shape(i, m) == shape(i, n)
                assert verify_inclusion(h, D[i], i, m, p, r) == same, (n, i, m)


def test_size_is_bound_only_through_the_path_shape():
    """RFC 9162 does not hash the tree size: leaf 0's path in a tree of 5 is that of a tree of 6,
    7 or 8 too. (The anchor carries tree_size on the ledger; nothing to fix here, pinned.)"""
    h = "sha3-256"
    D = leaves_for(5)
    t = Tree(h, D)
    ok = [m for m in range(1, 20) if verify_inclusion(h, D[0], 0, m, t.proof(0), t.root)]
    assert ok == [5, 6, 7, 8]


@pytest.mark.parametrize("h", HASHES)
def test_malformed_inputs_fail_without_raising(h):
    D = leaves_for(4)
    t = Tree(h, D)
    p, r = t.proof(1), t.root
    assert verify_inclusion(h, D[1], 1, 4, p, r)
    assert verify_inclusion(h, bytearray(D[1]), 1, 4, [bytearray(x) for x in p], memoryview(r))
    for args in ((D[1], -1, 4, p, r), (D[1], 1, -4, p, r), (D[1], 4, 4, p, r), (D[1], 1, 0, p, r),
                 (D[1], 1, 4, p, r[:31]), (D[1], 1, 4, [x[:31] for x in p], r),
                 (D[1], 1, 4, p + [b""], r), (D[1], 1.0, 4, p, r), (D[1], True, 4, p, r),
                 (None, 1, 4, p, r), (D[1], 1, 4, None, r), (D[1], 1, 4, [None, None], r),
                 (D[1], 1, 4, p, None), (D[1], 1, 4, [], r)):
        assert verify_inclusion(h, *args) is False, args
    with pytest.raises(ValueError):
        verify_inclusion("md5", D[1], 1, 4, p, r)
    for bad in (-1, 4, 10, "1"):
        with pytest.raises(ValueError):
            t.proof(bad)
        with pytest.raises(ValueError):
            inclusion_proof(h, D, bad)
    with pytest.raises(ValueError):
        inclusion_proof(h, [], 0)
    # a single leaf: the empty proof, root = leaf hash
    t1 = Tree(h, D[:1])
    assert t1.proof(0) == [] and verify_inclusion(h, D[0], 0, 1, [], t1.root)
    assert Tree(h).root == H(h, b"") and len(Tree(h)) == 0


# -- consistency --------------------------------------------------------------------------------

@pytest.mark.parametrize("h", HASHES)
def test_consistency_every_pair_up_to_300(h):
    D = leaves_for(300, seed=6)
    ref = Ref(h, D)
    tree = Tree(h)
    roots = [H(h, b"")]
    for n in range(1, 301):
        tree.append(D[n - 1])
        roots.append(tree.root)
    tree = Tree(h)
    for n in range(1, 301):
        tree.append(D[n - 1])
        for m in range(0, n + 1):
            c = tree.consistency(m)
            expected = ref.subproof(m, 0, n, True) if 0 < m < n else []
            assert c == expected, (m, n)
            assert verify_consistency(h, m, n, roots[m], roots[n], c), (m, n)
            if n <= 40:
                assert consistency_proof(h, D[:n], m) == c, (m, n)
            if 0 < m < n:
                assert not verify_consistency(h, m, n, roots[m], roots[n], []), (m, n)
                if m != n - 1:
                    assert not verify_consistency(h, m, n, roots[m + 1], roots[n], c), (m, n)
                assert not verify_consistency(h, m, n, roots[m], roots[n - 1], c), (m, n)


@pytest.mark.parametrize("h", HASHES)
def test_consistency_sampled_large(h):
    rng = random.Random(7)
    D = leaves_for(5000, seed=7)
    big = Tree(h, D)
    pairs = [(1, 5000), (4096, 5000), (4095, 4096), (2048, 4097), (1023, 1025), (3, 4999)]
    pairs += [tuple(sorted(rng.sample(range(1, 5001), 2))) for _ in range(10)]
    for m, n in pairs:
        t = Tree(h, D[:n])
        c = t.consistency(m)
        old = mth(h, D[:m])
        assert verify_consistency(h, m, n, old, t.root, c), (m, n)
        assert c == consistency_proof(h, D[:n], m), (m, n)
        # against the full tree: another new size fails
        assert not verify_consistency(h, m, 5000, old, big.root, c) or n == 5000


@pytest.mark.parametrize("h", HASHES)
def test_consistency_tampering(h):
    D = leaves_for(40, seed=8)
    roots = [root(h, D[:k]) for k in range(41)]
    for m, n in ((1, 2), (2, 3), (3, 7), (4, 8), (5, 40), (16, 33), (31, 32), (39, 40)):
        t = Tree(h, D[:n])
        c = t.consistency(m)
        assert verify_consistency(h, m, n, roots[m], roots[n], c)
        for j in range(len(c)):
            for b in range(32):
                q = list(c)
                q[j] = flip(q[j], b)
                assert not verify_consistency(h, m, n, roots[m], roots[n], q), (m, n, j, b)
            assert not verify_consistency(h, m, n, roots[m], roots[n], c[:j] + c[j + 1:])
        assert not verify_consistency(h, m, n, roots[m], roots[n], c + [roots[n]])
        for b in range(32):
            assert not verify_consistency(h, m, n, flip(roots[m], b), roots[n], c)
            assert not verify_consistency(h, m, n, roots[m], flip(roots[n], b), c)
        for m2 in range(0, n + 3):
            if m2 != m:
                assert not verify_consistency(h, m2, n, roots[m], roots[n], c), (m, n, m2)
        for n2 in range(m + 1, 2 * n + 2):     # another new size: only one of the same shape
            if n2 != n:
                same = cshape(m, n2) == cshape(m, n)
                assert verify_consistency(h, m, n2, roots[m], roots[n], c) == same, (m, n, n2)


@pytest.mark.parametrize("h", HASHES)
def test_consistency_trivial_cases(h):
    D = leaves_for(6)
    r6, r0 = root(h, D), H(h, b"")
    assert consistency_proof(h, D, 6) == [] and consistency_proof(h, D, 0) == []
    assert verify_consistency(h, 6, 6, r6, r6, [])
    assert not verify_consistency(h, 6, 6, r6, flip(r6, 0), [])
    assert not verify_consistency(h, 6, 6, r6, r6, [r6])
    assert verify_consistency(h, 0, 6, r0, r6, [])
    assert not verify_consistency(h, 0, 6, r6, r6, [])
    assert not verify_consistency(h, 0, 6, r0, r6, [r6])
    assert not verify_consistency(h, 6, 3, r6, root(h, D[:3]), [])
    assert not verify_consistency(h, -1, 6, r0, r6, [])
    assert not verify_consistency(h, 2, 6, r0[:5], r6, [r6])
    assert not verify_consistency(h, 2, 6, root(h, D[:2]), r6, None)
    for bad in (-1, 7):
        with pytest.raises(ValueError):
            consistency_proof(h, D, bad)
        with pytest.raises(ValueError):
            Tree(h, D).consistency(bad)


# -- hypothesis: random leaves ------------------------------------------------------------------

leaf_lists = st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=70)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.sampled_from(HASHES), D=leaf_lists, data=st.data())
def test_random_leaves_inclusion(h, D, data):
    n = len(D)
    i = data.draw(st.integers(0, n - 1))
    t = Tree(h, D)
    assert t.root == root(h, D) == mth(h, D)
    p = t.proof(i)
    assert p == inclusion_proof(h, D, i)
    assert verify_inclusion(h, D[i], i, n, p, t.root)
    if p:
        j = data.draw(st.integers(0, len(p) - 1))
        b = data.draw(st.integers(0, 31))
        q = list(p)
        q[j] = flip(q[j], b, data.draw(st.integers(1, 255)))
        assert not verify_inclusion(h, D[i], i, n, q, t.root)
    bad_leaf = D[i] + b"x" if data.draw(st.booleans()) else flip(D[i] + b"\x00", 0)
    assert not verify_inclusion(h, bad_leaf, i, n, p, t.root)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.sampled_from(HASHES), D=leaf_lists, data=st.data())
def test_random_leaves_consistency(h, D, data):
    n = len(D)
    m = data.draw(st.integers(0, n))
    t = Tree(h, D)
    c = t.consistency(m)
    assert c == consistency_proof(h, D, m)
    old = root(h, D[:m])
    assert verify_consistency(h, m, n, old, t.root, c)
    if c:
        j = data.draw(st.integers(0, len(c) - 1))
        q = list(c)
        q[j] = flip(q[j], data.draw(st.integers(0, 31)))
        assert not verify_consistency(h, m, n, old, t.root, q)


def test_module_api_names():
    for name in ("root", "inclusion_proof", "verify_inclusion", "consistency_proof",
                 "verify_consistency", "Tree"):
        assert hasattr(merkle, name)


# -- fastpath.merkle_levels (both twins) and Tree.from_levels -----------------------------------

def _twins():
    import fastpath.pure as pure
    out = [("py", pure)]
    try:
        from fastpath import _native
        out.append(("c", _native))
    except ImportError:                     # not built: the pure twin alone
        pass
    return out


def _check_levels(h, D, twins):
    n = len(D)
    data = b"".join(D)
    got = {name: mod.merkle_levels(h, data) for name, mod in twins}
    first = next(iter(got.values()))
    for name, levels in got.items():
        assert levels == first, (name, n)
    levels = first
    assert all(type(x) is bytes for x in levels)
    assert [len(x) for x in levels] == [32 * w for w in merkle.level_sizes(n)]
    assert levels[-1] == root(h, D), n
    if n:
        assert levels[0] == b"".join(H(h, b"\x00" + d) for d in D)
        assert Tree(h, D).level_bytes == levels
    t = Tree.from_levels(h, levels, n)
    assert t.root == root(h, D) and t.size == n
    return t


@pytest.mark.parametrize("h", HASHES)
def test_merkle_levels_twins_equal_rfc_up_to_300(h):
    D = leaves_for(300, seed=11)
    twins = _twins()
    for n in range(0, 301):
        t = _check_levels(h, D[:n], twins)
        for i in range(n) if n <= 40 else {0, n - 1, n // 2}:
            assert t.proof(i) == inclusion_proof(h, D[:n], i), (n, i)
            assert merkle.levels_proof(b"".join(t.level_bytes), n, i) == t.proof(i)
    assert Tree.from_levels(h, [H(h, b"")], 0).root == H(h, b"")


@pytest.mark.parametrize("h", HASHES)
def test_merkle_levels_twins_sampled_sizes_to_100k(h):
    rng = random.Random(12)
    D = leaves_for(100_000, seed=12)
    twins = _twins()
    for n in (511, 512, 513, 1025, 4097, 65535, 65536, 65537, 99_999, 100_000):
        t = _check_levels(h, D[:n], twins)
        for i in {0, n - 1, rng.randrange(n)}:
            p = t.proof(i)
            assert verify_inclusion(h, D[i], i, n, p, t.root), (n, i)
            assert merkle.levels_proof(b"".join(t.level_bytes), n, i) == p
        if n <= 5000:
            i = rng.randrange(n)
            assert t.proof(i) == inclusion_proof(h, D[:n], i)


def test_merkle_levels_rejects_bad_input():
    for _, mod in _twins():
        with pytest.raises(ValueError):
            mod.merkle_levels("sha3-256", b"\x01" * 34)
        with pytest.raises(ValueError):
            mod.merkle_levels("md5", b"\x01" * 33)
    with pytest.raises(ValueError):
        Tree.from_levels("sha3-256", [b"\x00" * 32, b"\x00" * 32], 3)
    with pytest.raises(ValueError):
        merkle.levels_proof(b"\x00" * 64, 2, 0)
