"""Merkle trees of RFC 9162 section 2.1 with the domain's hash (docs/formats.md "Anchors", docs/ledger.md).

- leaf hash ``H(0x00 || leaf)``, node hash ``H(0x01 || left || right)``, split at the largest power
  of two smaller than ``n``, empty tree ``H()``;
- ``H`` by name: ``"sha3-256"`` (``hashlib.sha3_256``) or ``"blake2b-256"``
  (``hashlib.blake2b(digest_size=32)``).

Two implementations that the tests hold against each other:

- the module functions ``root``, ``inclusion_proof`` and ``consistency_proof`` follow the RFC's
  recursive definitions (MTH, PATH, SUBPROOF) literally: O(n) hashes per call;
- ``Tree`` hashes the leaves once and keeps every level (an odd last node is carried up unchanged,
  which gives exactly the RFC's left-balanced tree): ``.root`` in O(1), ``.proof(i)`` and
  ``.consistency(m)`` in O(log n), ``.append(leaf)`` in O(log n). This is what the batcher uses.

``verify_inclusion`` and ``verify_consistency`` are the algorithms of 2.1.3.2 and 2.1.4.2, step by
step. They return ``False`` (never raise) for anything that is not a valid proof: wrong types or
lengths, an index outside the tree, sizes out of order.
"""

from fastpath.hashes import CONSTRUCTORS, digest_function
from fastpath.output import HASH_NAMES

__all__ = ["HASH_NAMES", "root", "inclusion_proof", "verify_inclusion", "consistency_proof",
           "verify_consistency", "Tree", "leaf_hash", "hasher", "level_sizes", "levels_proof"]

_LEAF, _NODE = b"\x00", b"\x01"


# the hashlib constructors, for the hot loops: new(data).digest() saves a Python call per hash
_NEW = CONSTRUCTORS


def hasher(hash_name):
    """``H`` for a hash name: a function bytes -> 32 bytes. Unknown names raise ``ValueError``."""
    return digest_function(hash_name)


def leaf_hash(hash_name, leaf):
    """``H(0x00 || leaf)``."""
    return hasher(hash_name)(_LEAF + bytes(leaf))


def _split(n):
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _leaf_hashes(H, leaves):
    return [H(_LEAF + bytes(d)) for d in leaves]


def _mth(H, hashes, lo, hi):
    """MTH(D[lo:hi]) over precomputed leaf hashes (RFC 9162 2.1.1), hi - lo >= 1."""
    n = hi - lo
    if n == 1:
        return hashes[lo]
    k = _split(n)
    return H(_NODE + _mth(H, hashes, lo, lo + k) + _mth(H, hashes, lo + k, hi))


def root(hash_name, leaves):
    """MTH(D[n]) of the leaf data (RFC 9162 2.1.1); the empty tree's is ``H()``."""
    H = hasher(hash_name)
    leaves = list(leaves)
    if not leaves:
        return H(b"")
    return _mth(H, _leaf_hashes(H, leaves), 0, len(leaves))


def inclusion_proof(hash_name, leaves, index):
    """PATH(index, D[n]) (RFC 9162 2.1.3.1): the audit path, bottom-up, as a list of 32-byte hashes.

    ``ValueError`` unless ``0 <= index < n``.
    """
    H = hasher(hash_name)
    leaves = list(leaves)
    n = len(leaves)
    if not isinstance(index, int) or not 0 <= index < n:
        raise ValueError(f"inclusion_proof: index {index!r} is not in 0..{n - 1} "
                         f"(tree of {n} leaves)")
    hashes = _leaf_hashes(H, leaves)

    def path(m, lo, hi):
        if hi - lo == 1:
            return []
        k = _split(hi - lo)
        if m < k:
            return path(m, lo, lo + k) + [_mth(H, hashes, lo + k, hi)]
        return path(m - k, lo + k, hi) + [_mth(H, hashes, lo, lo + k)]

    return path(index, 0, n)


def consistency_proof(hash_name, leaves, old_size):
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true) (RFC 9162 2.1.4.1), m = ``old_size``.

    The RFC defines it for ``0 < m < n``; ``m == 0`` and ``m == n`` give the empty list (nothing to
    prove, see ``verify_consistency``). ``ValueError`` unless ``0 <= m <= n``.
    """
    H = hasher(hash_name)
    leaves = list(leaves)
    n = len(leaves)
    if not isinstance(old_size, int) or not 0 <= old_size <= n:
        raise ValueError(f"consistency_proof: old_size {old_size!r} is not in 0..{n}")
    if old_size in (0, n):
        return []
    hashes = _leaf_hashes(H, leaves)

    def subproof(m, lo, hi, b):
        if m == hi - lo:
            return [] if b else [_mth(H, hashes, lo, hi)]
        k = _split(hi - lo)
        if m <= k:
            return subproof(m, lo, lo + k, b) + [_mth(H, hashes, lo + k, hi)]
        return subproof(m - k, lo + k, hi, False) + [_mth(H, hashes, lo, lo + k)]

    return subproof(old_size, 0, n, True)


def _is_hash(x):
    return isinstance(x, (bytes, bytearray, memoryview)) and len(x) == 32


def _is_size(x):
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def verify_inclusion(hash_name, leaf, index, tree_size, proof, root):
    """RFC 9162 2.1.3.2: does ``proof`` show ``leaf`` (leaf data) at ``index`` in the tree of
    ``tree_size`` leaves whose root is ``root``?"""
    H = hasher(hash_name)
    if not (_is_size(index) and _is_size(tree_size) and _is_hash(root)
            and isinstance(leaf, (bytes, bytearray, memoryview))):
        return False
    try:
        proof = [p if type(p) is bytes else bytes(p) if _is_hash(p) else None for p in proof]
    except TypeError:
        return False
    # 1. leaf_index >= tree_size: fail
    if index >= tree_size or None in proof:
        return False
    for p in proof:
        if len(p) != 32:
            return False
    # 2. fn = leaf_index, sn = tree_size - 1
    fn, sn = index, tree_size - 1
    new = _NEW[hash_name]
    # 3. r = hash of the leaf
    r = H(_LEAF + bytes(leaf))
    # 4. for each value p in the inclusion_path array
    for p in proof:
        # a. if sn is 0, stop and fail
        if sn == 0:
            return False
        # b. LSB(fn) set, or fn == sn
        if fn & 1 or fn == sn:
            r = new(_NODE + p + r).digest()
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            r = new(_NODE + r + p).digest()
        # c. right-shift both once
        fn >>= 1
        sn >>= 1
    # 5. sn is 0 and r equals root
    return sn == 0 and r == bytes(root)


def verify_consistency(hash_name, old_size, new_size, old_root, new_root, proof):
    """RFC 9162 2.1.4.2: is the tree (``new_size``, ``new_root``) an append-only extension of
    (``old_size``, ``old_root``), as shown by ``proof``?

    The RFC's algorithm covers ``0 < old_size < new_size``. The two trivial cases: equal sizes are
    consistent iff the proof is empty and the roots are equal; an empty old tree is consistent with
    every tree iff the proof is empty and ``old_root == H()``.
    """
    H = hasher(hash_name)
    if not (_is_size(old_size) and _is_size(new_size) and _is_hash(old_root)
            and _is_hash(new_root)):
        return False
    try:
        path = [bytes(p) if _is_hash(p) else None for p in proof]
    except TypeError:
        return False
    if None in path or old_size > new_size:
        return False
    old_root, new_root = bytes(old_root), bytes(new_root)
    if old_size == new_size:
        return not path and old_root == new_root
    if old_size == 0:
        return not path and old_root == H(b"")
    # 1. an empty consistency_path fails
    if not path:
        return False
    # 2. first an exact power of 2: prepend first_hash
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    # 3. fn = first - 1, sn = second - 1
    fn, sn = old_size - 1, new_size - 1
    # 4. while LSB(fn) is set, right-shift both
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. fr = sr = the first value
    fr = sr = path[0]
    # 6. each subsequent value c
    for c in path[1:]:
        # a. sn is 0: fail
        if sn == 0:
            return False
        # b.
        if fn & 1 or fn == sn:
            fr = H(_NODE + c + fr)
            sr = H(_NODE + c + sr)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            sr = H(_NODE + sr + c)
        # c. right-shift both once
        fn >>= 1
        sn >>= 1
    # 7. fr == first_hash, sr == second_hash, sn == 0
    return fr == old_root and sr == new_root and sn == 0


def level_sizes(n):
    """The number of nodes on each level of a tree of ``n`` leaves, level 0 first (``[1]`` for the
    empty tree: its one level is ``H()``)."""
    sizes = [n]
    while n > 1:
        n = (n + 1) >> 1
        sizes.append(n)
    return sizes if sizes[0] else [1]


def levels_proof(levels, size, index):
    """The inclusion proof of leaf ``index`` from a tree's levels (``fastpath.merkle_levels``):
    ``levels`` one bytes-like object per level or all of them concatenated, ``size`` the number of
    leaves. Reads only the ``log2(size)`` siblings (memoryviews stay views until the last copy).
    ``ValueError`` unless ``0 <= index < size`` and the levels have the sizes of such a tree."""
    if not isinstance(index, int) or not 0 <= index < size:
        raise ValueError(f"levels_proof: index {index!r} is not in 0..{size - 1} "
                         f"(tree of {size} leaves)")
    sizes = level_sizes(size)
    if isinstance(levels, (list, tuple)):
        if [len(x) for x in levels] != [32 * w for w in sizes]:
            raise ValueError(f"levels_proof: levels of {[len(x) for x in levels]} bytes do not "
                             f"make a tree of {size} leaves")
        blobs = levels
        offsets = [0] * len(sizes)
    else:
        if len(levels) != 32 * sum(sizes):
            raise ValueError(f"levels_proof: {len(levels)} bytes of levels do not make a tree of "
                             f"{size} leaves ({32 * sum(sizes)} bytes)")
        blobs, offsets, off = [levels] * len(sizes), [], 0
        for w in sizes:
            offsets.append(off)
            off += 32 * w
    out = []
    for h in range(len(sizes) - 1):
        sib = index ^ 1
        if sib < sizes[h]:
            o = offsets[h] + 32 * sib
            out.append(bytes(blobs[h][o:o + 32]))
        index >>= 1
    return out


class Tree:
    """An RFC 9162 tree built once from the leaf data, every level kept.

    ``levels[0]`` are the leaf hashes; ``levels[h + 1][j]`` is the node over ``levels[h][2j]`` and
    ``levels[h][2j + 1]``, or ``levels[h][2j]`` itself when it is the last, unpaired node. The node
    ``levels[h][j]`` is then MTH(D[j*2^h : min((j+1)*2^h, n)]), which is every subtree the RFC's
    recursion visits. ``root`` O(1); ``proof(i)``, ``consistency(m)``, ``append(leaf)`` O(log n).

    Built by ``fastpath.merkle_levels`` (SIMD lanes, no GIL, in the native twin) when every leaf is
    SPEC leaf data (33 bytes); the levels are then kept as one bytes object per level
    (``level_bytes``) and turned into lists of 32-byte hashes only when ``levels`` is read or the
    tree is appended to.
    """

    __slots__ = ("hash_name", "_H", "_levels", "_blobs", "_size")

    def __init__(self, hash_name, leaves=()):
        self.hash_name = hash_name
        self._H = hasher(hash_name)
        self._levels = self._blobs = None
        leaves = [bytes(d) for d in leaves]
        if leaves and all(len(d) == 33 for d in leaves):
            import fastpath
            self._blobs = fastpath.merkle_levels(hash_name, b"".join(leaves))
            self._size = len(leaves)
            return
        new = _NEW[hash_name]
        level = [new(_LEAF + d).digest() for d in leaves]
        self._levels = [level]
        while len(level) > 1:
            nxt = [new(_NODE + level[j] + level[j + 1]).digest()
                   for j in range(0, len(level) - 1, 2)]
            if len(level) & 1:
                nxt.append(level[-1])
            self._levels.append(nxt)
            level = nxt

    @classmethod
    def from_levels(cls, hash_name, levels, size=None):
        """A tree from its levels as ``fastpath.merkle_levels`` returns them (one bytes object per
        level, 32 bytes per node). ``size`` (the number of leaves) defaults to level 0's node
        count; give ``size=0`` for the empty tree's ``[H()]``. ``ValueError`` when the levels do
        not have the sizes of a tree of ``size`` leaves."""
        t = cls.__new__(cls)
        t.hash_name = hash_name
        t._H = hasher(hash_name)
        t._levels = None
        levels = [bytes(x) for x in levels]
        if size is None:
            size = len(levels[0]) // 32 if levels else 0
        want = [32 * w for w in level_sizes(size)]
        if [len(x) for x in levels] != want:
            raise ValueError(f"Tree.from_levels: levels of {[len(x) for x in levels]} bytes do "
                             f"not make a tree of {size} leaves ({want})")
        if size == 0:
            if levels[0] != t._H(b""):
                raise ValueError("Tree.from_levels: the empty tree's level is not H()")
            t._blobs, t._levels = None, [[]]
            return t
        t._blobs, t._size = levels, size
        return t

    @property
    def levels(self):
        """Every level as a list of 32-byte hashes (``levels[0]`` the leaf hashes)."""
        if self._levels is None:
            self._levels = [[b[o:o + 32] for o in range(0, len(b), 32)] for b in self._blobs]
            self._blobs = None
        return self._levels

    @property
    def level_bytes(self):
        """Every level as one bytes object (32 bytes per node), as ``fastpath.merkle_levels``
        returns them (``[H()]`` for the empty tree)."""
        if self._blobs is not None:
            return list(self._blobs)
        if not self._levels[0]:
            return [self._H(b"")]
        return [b"".join(level) for level in self._levels]

    def __len__(self):
        return self.size

    @property
    def size(self):
        return self._size if self._blobs is not None else len(self._levels[0])

    @property
    def root(self):
        """MTH of the leaves (``H()`` for no leaf)."""
        if self._blobs is not None:
            return self._blobs[-1]
        top = self._levels[-1]
        return top[0] if top else self._H(b"")

    def leaf_hash(self, index):
        if self._blobs is not None:
            if not 0 <= index < self._size:
                raise IndexError(f"Tree.leaf_hash: index {index} out of range")
            return self._blobs[0][32 * index:32 * index + 32]
        return self.levels[0][index]

    def append(self, leaf):
        """Add one leaf at the end, recomputing the right edge (O(log n))."""
        H, levels = self._H, self.levels
        levels[0].append(H(_LEAF + bytes(leaf)))
        h = 0
        while len(levels[h]) > 1:
            level = levels[h]
            j = (len(level) - 1) >> 1
            node = (H(_NODE + level[2 * j] + level[2 * j + 1]) if 2 * j + 1 < len(level)
                    else level[2 * j])
            if h + 1 == len(levels):
                levels.append([])
            up = levels[h + 1]
            if j < len(up):
                up[j] = node
            else:
                up.append(node)
            h += 1

    def extend(self, leaves):
        for leaf in leaves:
            self.append(leaf)

    def _node(self, lo, hi):
        """MTH(D[lo:hi]) for a subtree of the RFC's recursion (hi - lo >= 1)."""
        h = (hi - lo - 1).bit_length()
        if self._blobs is not None:
            o = 32 * (lo >> h)
            return self._blobs[h][o:o + 32]
        return self.levels[h][lo >> h]

    def proof(self, index):
        """The inclusion proof (RFC 9162 PATH) of the leaf at ``index``: sibling hashes,
        bottom-up."""
        n = self.size
        if not isinstance(index, int) or not 0 <= index < n:
            raise ValueError(f"Tree.proof: index {index!r} is not in 0..{n - 1} "
                             f"(tree of {n} leaves)")
        if self._blobs is not None:
            return levels_proof(self._blobs, n, index)
        out = []
        for level in self.levels[:-1]:
            sib = index ^ 1
            if sib < len(level):
                out.append(level[sib])
            index >>= 1
        return out

    def consistency(self, old_size):
        """PROOF(old_size, D[n]) (RFC 9162 2.1.4.1); [] for ``old_size`` 0 or n."""
        n = self.size
        if not isinstance(old_size, int) or not 0 <= old_size <= n:
            raise ValueError(f"Tree.consistency: old_size {old_size!r} is not in 0..{n}")
        if old_size in (0, n):
            return []
        # SUBPROOF(m, D[lo:hi], b), unrolled: the hashes are collected top-down, returned bottom-up
        out = []
        m, lo, hi, b = old_size, 0, n, True
        while m != hi - lo:
            k = _split(hi - lo)
            if m <= k:
                out.append(self._node(lo + k, hi))
                hi = lo + k
            else:
                out.append(self._node(lo, lo + k))
                m, lo, b = m - k, lo + k, False
        if not b:
            out.append(self._node(lo, hi))
        out.reverse()
        return out
