"""Adversary of ``ledger_client.keys.verify`` (OpenSSL's strict Ed25519 and its key cache):
an honest device's signature is never refused, whatever made it (pycryptodome, as beatd signs,
or OpenSSL); a key that binds nothing (small order, non-canonical) verifies nothing even if it
reached a ledger unchecked; the cache cannot be confused by mutable keys, by thousands of keys
(cleared while others verify) or by threads."""
import os
import threading

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ledger_client import keys
from ledger_client.keys import DeviceKey, verify

from edwards import D, P   # tests/ledger/edwards.py


def _x_of(y, sign):
    xx = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(xx, (P + 3) // 8, P)
    if (x * x - xx) % P:
        x = x * pow(2, (P - 1) // 4, P) % P
    if (x * x - xx) % P:
        return None
    return P - x if (x & 1) != sign else x


def _enc(a, y_add=0):
    return ((a[1] + y_add) | ((a[0] & 1) << 255)).to_bytes(32, "little")


_Y8 = keys._Y8
SMALL = [p for y in (1, P - 1, 0, _Y8, P - _Y8) for s in (0, 1)
         if (x := _x_of(y, s)) is not None for p in [(x, y)]]


def test_honest_signatures_of_every_signer_verify():
    """pycryptodome's (DeviceKey, what beatd signs with) and OpenSSL's signatures of random keys
    and messages (empty, short, long, all-zero, all-ones) all verify, also given as bytearray
    and memoryview; one bit flipped anywhere is refused."""
    rnd = os.urandom
    for i in range(150):
        msg = [b"", rnd(1), rnd(64), rnd(3000), bytes(100), b"\xff" * 33][i % 6]
        k = DeviceKey.generate() if i % 3 == 0 else DeviceKey.from_seed(rnd(32))
        sig = k.sign(msg)
        assert verify(k.public, msg, sig), (k.public.hex(), msg.hex(), sig.hex())
        assert verify(bytearray(k.public), memoryview(msg), bytearray(sig))
        o = Ed25519PrivateKey.generate()
        opub = o.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        assert verify(opub, msg, o.sign(msg))
        bad = bytearray(sig)
        bad[i % 64] ^= 1 << (i % 8)
        assert not verify(k.public, msg, bytes(bad))


def test_a_key_that_binds_nothing_verifies_nothing():
    """A small-order key (any of the 8 points, both sign bits, also encoded non-canonically with
    y + p) is refused at registration, but could still reach a ledger unchecked (a ledger written
    before the check, another client, the contract, which does not check): then R and S chosen
    for it verify for any message (identity key, R = identity, S = 0: every message). verify
    refuses every signature under such a key."""
    msgs = [b"receipt %d" % i for i in range(24)]
    pubs = [_enc(A) for A in SMALL] + [_enc(A, y_add=P) for A in SMALL if A[1] < 19]
    assert len(pubs) == 14
    for pub in pubs:
        for msg in msgs:
            for R in SMALL:
                r_enc = _enc(R)
                assert not verify(pub, msg, r_enc + bytes(32)), (pub.hex(), msg, r_enc.hex())


def test_the_key_cache_is_not_confused_by_mutable_keys_threads_or_clears(monkeypatch):
    """A bytearray key changed after a check, 600 different keys (the cache made 50 keys: cleared
    a dozen times while other threads verify), the same keys from 4 threads: every answer
    right."""
    monkeypatch.setattr(keys, "_PUBLIC_KEYS_MAX", 50)
    keys._PUBLIC_KEYS.clear()
    signers = [Ed25519PrivateKey.generate() for _ in range(600)]
    pubs = [s.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) for s in signers]
    msg = b"the same message"
    sigs = [s.sign(msg) for s in signers]
    buf = bytearray(pubs[0])
    assert verify(buf, msg, sigs[0])
    buf[:] = pubs[1]
    assert verify(buf, msg, sigs[1]) and not verify(buf, msg, sigs[0])
    wrong = []

    def run(t):
        for i in range(t, len(pubs), 2):
            j = (i + 1) % len(pubs)
            if not verify(pubs[i], msg, sigs[i]) or verify(pubs[i], msg, sigs[j]):
                wrong.append(i)
    threads = [threading.Thread(target=run, args=(t % 2,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert wrong == [] and len(keys._PUBLIC_KEYS) <= keys._PUBLIC_KEYS_MAX + len(threads)
