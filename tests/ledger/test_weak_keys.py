"""Weak Ed25519 public keys are refused at registration (issue 12, item 8).

Why: with a small-order public key one signature verifies for every message (shown below against
the common verifiers; BEAT's refuses it), so a device registered with one could deny all its evidence. The check
(ledger_client.keys.check_public) is compared here with a reference that derives the curve's
8 torsion points from scratch (affine Edwards arithmetic, no library), on every encoding of them
(canonical, sign bit flipped, y + p) and on random keys; then each place that registers a key
refuses them: the local backend, beatctl, the ethereum client (before any transaction).
"""
import os
import random

import pytest

from governance.cli import main as beatctl
from ledger_client.errors import Unavailable
from ledger_client.keys import (P, DeviceKey, WeakKeyError, check_public, parse_public,
                                verify)
from ledger_client.local import LocalLedger
from ledger_client.types import SLA, Node

from edwards import IDENTITY, L, add, decode, encode, mul   # tests/ledger/edwards.py


def order(pt):
    n, q = 1, pt
    while q != IDENTITY:
        q, n = add(q, pt), n + 1
        assert n <= 8, "not a small-order point"
    return n


def torsion_points():
    """The points of order dividing 8, found as [L]Q for random curve points Q (the torsion part
    of Q; random points cover all 8 of them), never from a list."""
    rng = random.Random(12)
    found = {}
    while len(found) < 8:
        q = decode(rng.randbytes(32))
        if q is not None:
            t = mul(L, q)
            assert mul(8, t) == IDENTITY
            found[t] = order(t)
    return found


TORSION = torsion_points()


def weak_encodings():
    """Every 32-byte encoding of a small-order point (canonical, with the other sign bit, with
    y + p where that still fits in 255 bits) and every encoding with y >= p: (bytes, why)."""
    out = {}
    for pt, n in TORSION.items():
        x, y = pt
        for yy in (y, y + P):
            if yy >= 1 << 255:
                continue
            for sign in (0, 1):
                b = (yy | (sign << 255)).to_bytes(32, "little")
                out[b] = "not canonical" if yy >= P else f"order {n}"
    for yy in range(P, 1 << 255):
        for sign in (0, 1):
            b = (yy | (sign << 255)).to_bytes(32, "little")
            out.setdefault(b, "not canonical")
    return out


WEAK = weak_encodings()


def test_the_reference_finds_the_eight_small_order_points():
    assert len(TORSION) == 8
    assert sorted(TORSION.values()) == [1, 2, 4, 4, 8, 8, 8, 8]
    assert encode(IDENTITY) == b"\x01" + bytes(31) and TORSION[IDENTITY] == 1
    for pt in TORSION:
        assert decode(encode(pt)) == pt
    # 8 canonical encodings; the 5 y coordinates with either sign bit give 2 more (x = 0 with
    # the sign bit set: the identity's and the order-2 point's); y >= p with either sign: 38
    assert len({encode(pt) for pt in TORSION}) == 8
    assert len({y for _, y in TORSION}) == 5
    assert len(WEAK) == 10 + 38


@pytest.mark.parametrize("enc", sorted(WEAK), ids=lambda b: b.hex())
def test_every_weak_encoding_is_refused_and_named(enc):
    with pytest.raises(WeakKeyError) as e:
        check_public(enc)
    msg = str(e.value)
    assert enc.hex() in msg
    assert ("not canonical" in msg) if WEAK[enc] == "not canonical" else ("small order" in msg)


def test_random_keys_pass_and_agree_with_the_reference():
    for _ in range(200):
        pub = DeviceKey.generate().public
        assert check_public(pub) == pub
        pt = decode(pub)
        assert pt is not None and mul(8, pt) != IDENTITY
    # random bytes: refused exactly when the reference says small order or y >= p
    rng = random.Random(8)
    for _ in range(2000):
        b = rng.randbytes(32)
        y = int.from_bytes(b, "little") & ((1 << 255) - 1)
        pt = decode(b)
        weak = y >= P or (pt is not None and mul(8, pt) == IDENTITY)
        try:
            check_public(b)
            refused = False
        except WeakKeyError:
            refused = True
        assert refused == weak, b.hex()
    # near misses: one bit away from the identity, y = p - 2 (canonical, not small order)
    assert check_public(b"\x03" + bytes(31))
    assert check_public((P - 2).to_bytes(32, "little"))


def _cofactored(pub, msg, sig):
    """pycryptodome's verifier (cofactored: what BEAT ran before OpenSSL)."""
    from Crypto.Signature import eddsa
    try:
        eddsa.new(eddsa.import_public_key(pub), "rfc8032").verify(msg, sig)
        return True
    except (ValueError, TypeError):
        return False


def _openssl(pub, msg, sig):
    """OpenSSL's verifier alone (cofactorless), without BEAT's key check."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, msg)
        return True
    except (InvalidSignature, ValueError):
        return False


def test_the_attack_one_signature_for_every_message():
    """Why the check exists: the common verifiers accept R = identity, S = 0 as a signature of
    ANY message by the identity key (pycryptodome, cofactored: also by every order-8 key; OpenSSL
    alone: by the identity key). BEAT's verify refuses every signature under a weak key (also one
    that reached a ledger unchecked)."""
    forged = encode(IDENTITY) + bytes(32)
    accepting = [enc for enc in WEAK if _cofactored(enc, b"I forwarded packet 1", forged)]
    assert encode(IDENTITY) in accepting
    assert {TORSION[decode(e)] for e in accepting if decode(e)} >= {1, 8}
    for msg in (b"", b"I forwarded packet 1", b"I never saw packet 1", os.urandom(100)):
        assert _cofactored(encode(IDENTITY), msg, forged), msg
        assert _openssl(encode(IDENTITY), msg, forged), msg
        assert not any(verify(enc, msg, forged) for enc in WEAK), msg
    # a real key: the same "signature" verifies nothing
    assert not verify(DeviceKey.generate().public, b"I forwarded packet 1", forged)


GOV = DeviceKey.from_seed(b"\x01" * 32)
IDENT = encode(IDENTITY)
ORDER8 = next(encode(pt) for pt, n in TORSION.items() if n == 8)
NONCANON = (P + 1).to_bytes(32, "little")            # the identity again, y = p + 1


@pytest.mark.parametrize("pub", [IDENT, ORDER8, NONCANON], ids=["identity", "order8", "y=p+1"])
def test_local_register_node_refuses(tmp_path, pub):
    with LocalLedger(str(tmp_path / "l.mdb"), governance_pubkey=GOV) as led:
        with pytest.raises(WeakKeyError, match=f"register_node 5: public key {pub.hex()}"):
            led.register_node(Node(5, "op", pub), signer=GOV)
        assert led.nodes() == [] and led.entry_count() == 0
        v4 = bytes(10) + b"\xff\xff"
        s = SLA(1, "t", v4 + bytes(4), v4 + bytes(4), (5,))
        with pytest.raises(WeakKeyError, match=f"tenant_pubkey: public key {pub.hex()}"):
            led.register_sla(s, signer=GOV, tenant_pubkey=pub)
        assert led.entry_count() == 0
        good = DeviceKey.generate().public
        led.register_node(Node(5, "op", good), signer=GOV)
        assert led.get_node(5).pubkey == good


@pytest.mark.parametrize("pub", [IDENT, ORDER8, NONCANON], ids=["identity", "order8", "y=p+1"])
def test_beatctl_register_node_refuses(tmp_path, capsys, pub):
    gov = tmp_path / "gov.ed25519"
    GOV.save(gov)
    ledger = tmp_path / "l.mdb"
    rc = beatctl(["--ledger", f"local:{ledger}", "--key", str(gov), "register-node",
                  "--node-id", "5", "--owner", "op", "--pubkey", pub.hex()])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and "--pubkey" in err and pub.hex() in err
    assert not ledger.exists()
    with pytest.raises(WeakKeyError, match=pub.hex()):
        parse_public(pub.hex())
    sla = tmp_path / "sla.toml"
    sla.write_text(f'sla_id = 1\ntenant = "t"\nsrc = "10.0.0.1"\ndst = "10.0.0.2"\n'
                   f'route = [5]\ntenant_pubkey = "{pub.hex()}"\n')
    assert beatctl(["--ledger", f"local:{ledger}", "--key", str(gov), "register-sla",
                    "--file", str(sla)]) == 2
    assert pub.hex() in capsys.readouterr().err and not ledger.exists()


def test_ethereum_client_refuses_before_any_transaction():
    """The contract does not look into keys: the client refuses before it talks to the node at
    all (the URL here is never reachable: a good key gets as far as Unavailable)."""
    from ledger_client.ethereum import Account, EthereumLedger

    led = EthereumLedger("http://127.0.0.1:9", "0x" + "11" * 20, "sha3-256", timeout=2)
    gov = Account.generate()
    for pub in (IDENT, ORDER8, NONCANON):
        with pytest.raises(WeakKeyError, match=f"register_node\\(5\\): public key {pub.hex()}"):
            led.register_node(Node(5, "op", pub, b"\x05" * 20), signer=gov)
    with pytest.raises(Unavailable):
        led.register_node(Node(5, "op", DeviceKey.generate().public, b"\x05" * 20), signer=gov)
