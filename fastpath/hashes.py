"""The domain hash H by name, in Python (SPEC: "sha3-256", the default, or "blake2b-256"): one table
and one check for every Python user (the pure twin, the Merkle code, the local ledger)."""
import hashlib
from functools import partial

from .output import HASH_NAMES

CONSTRUCTORS = {
    "sha3-256": hashlib.sha3_256,
    "blake2b-256": partial(hashlib.blake2b, digest_size=32),
}


def constructor(hash_name):
    """The hashlib-style constructor of H (``constructor(name)(data).digest()``); ValueError for an
    unknown name."""
    h = CONSTRUCTORS.get(hash_name) if isinstance(hash_name, str) else None
    if h is None:
        raise ValueError(f"hash_name must be one of {', '.join(map(repr, HASH_NAMES))}, "
                         f"got {hash_name!r}")
    return h


def digest_function(hash_name):
    """H as a function ``data -> 32 bytes`` (``H()`` is the hash of nothing)."""
    new = constructor(hash_name)
    return lambda data=b"": new(data).digest()
