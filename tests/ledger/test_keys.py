"""ledger_client.keys: Ed25519 device keys, their files (0600, refused when too open), signatures;
and `beatd keygen`."""
import argparse
import os
import stat
import subprocess

import pytest

from beatd import keygen
from ledger_client.keys import DeviceKey, KeyFileError, parse_public, verify

from edwards import L, P, add, base, encode, mul   # tests/ledger/edwards.py


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_sign_verify():
    k = DeviceKey.generate()
    assert len(k.public) == 32
    sig = k.sign(b"hello")
    assert len(sig) == 64
    assert verify(k.public, b"hello", sig) and DeviceKey.verify(k.public, b"hello", sig)
    assert not verify(k.public, b"hellO", sig)
    assert not verify(DeviceKey.generate().public, b"hello", sig)
    bad = bytearray(sig)
    bad[0] ^= 1
    assert not verify(k.public, b"hello", bytes(bad))
    assert not verify(k.public[:31], b"hello", sig)
    assert not verify(k.public, b"hello", sig[:63])
    assert not verify(b"\xff" * 32, b"hello", sig)


def test_rfc8032_vector():
    # RFC 8032 section 7.1, TEST 1 (empty message)
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    k = DeviceKey.from_seed(seed)
    assert k.public.hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert k.sign(b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")


def _sign_with_r(seed, msg, r_point_of):
    """An Ed25519 signature of msg by the key of seed, with R = r_point_of(r, B)."""
    import hashlib
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little") & ((1 << 254) - 8) | (1 << 254)
    b = base()
    pub = encode(mul(a, b))
    r = int.from_bytes(hashlib.sha512(h[32:] + msg).digest(), "little") % L
    r_enc = encode(r_point_of(r, b))
    k = int.from_bytes(hashlib.sha512(r_enc + pub + msg).digest(), "little") % L
    return pub, r_enc, (r + k * a) % L


def test_a_signature_with_a_small_order_component_is_refused():
    """A device that knows its key can add a point of order 2 to R: the cofactored check (what
    pycryptodome runs) accepts it, OpenSSL, Go and libsodium do not. BEAT refuses it (one rule for
    every verifier: docs/formats.md, "Signatures"); the same key's honest signature passes, and S
    not reduced mod L (S + L) is refused."""
    from Crypto.Signature import eddsa
    seed = bytes(range(32))
    key = DeviceKey.from_seed(seed)
    msg = b"BEAT receipt"
    order_2 = (0, P - 1)
    pub, r_enc, s = _sign_with_r(seed, msg, lambda r, b: add(mul(r, b), order_2))
    assert pub == key.public
    forged = r_enc + s.to_bytes(32, "little")
    eddsa.new(eddsa.import_public_key(pub), "rfc8032").verify(msg, forged)   # cofactored: passes
    assert not verify(pub, msg, forged)
    _, r_enc, s = _sign_with_r(seed, msg, mul)
    honest = r_enc + s.to_bytes(32, "little")
    assert honest == key.sign(msg) and verify(pub, msg, honest)
    assert not verify(pub, msg, r_enc + (s + L).to_bytes(32, "little"))


def test_save_load_mode_0600(tmp_path):
    p = tmp_path / "k.pem"
    k = DeviceKey.generate()
    old = os.umask(0)                              # even with no umask the file is 0600
    try:
        k.save(p)
    finally:
        os.umask(old)
    assert mode(p) == 0o600
    assert open(p).read().startswith("-----BEGIN PRIVATE KEY-----")
    k2 = DeviceKey.load(p)
    assert k2.public == k.public
    assert verify(k.public, b"m", k2.sign(b"m"))
    with pytest.raises(FileExistsError):
        k.save(p)
    k3 = DeviceKey.generate()
    k3.save(p, overwrite=True)
    assert mode(p) == 0o600 and DeviceKey.load(p).public == k3.public
    assert [f.name for f in tmp_path.iterdir()] == ["k.pem"]


def test_openssl_reads_it(tmp_path):
    p = tmp_path / "k.pem"
    k = DeviceKey.generate()
    k.save(p)
    try:
        r = subprocess.run(["openssl", "pkey", "-in", str(p), "-pubout", "-outform", "DER"],
                           capture_output=True)
    except FileNotFoundError:
        pytest.skip("openssl not installed")
    assert r.returncode == 0, r.stderr
    assert r.stdout[-32:] == k.public


@pytest.mark.parametrize("bad_mode", [0o640, 0o604, 0o644, 0o620])
def test_load_refuses_open_files(tmp_path, bad_mode):
    p = tmp_path / "k.pem"
    DeviceKey.generate().save(p)
    os.chmod(p, bad_mode)
    with pytest.raises(KeyFileError) as e:
        DeviceKey.load(p)
    assert str(p) in str(e.value) and f"{bad_mode:04o}" in str(e.value)


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(KeyFileError, match="missing.pem"):
        DeviceKey.load(tmp_path / "missing.pem")
    p = tmp_path / "junk.pem"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not a key")
    os.close(fd)
    with pytest.raises(KeyFileError, match="junk.pem"):
        DeviceKey.load(p)


def test_parse_public():
    k = DeviceKey.generate()
    assert parse_public(k.public_hex) == k.public
    assert parse_public(f"  {k.public_hex}\n".encode()) == k.public
    pem = k._key.public_key().export_key(format="PEM")
    assert parse_public(pem) == k.public
    for bad in ("zz", "00" * 31):
        with pytest.raises(ValueError):
            parse_public(bad)


def _keygen(out, force=False):
    p = argparse.ArgumentParser()
    keygen.add_arguments(p)
    return keygen.main(p.parse_args(["--out", str(out)] + (["--force"] if force else [])))


def test_beatd_keygen(tmp_path, capsys):
    out = tmp_path / "keys"
    assert _keygen(out) == 0
    pub = capsys.readouterr().out.strip()
    key = out / "device.ed25519"
    assert mode(key) == 0o600
    assert DeviceKey.load(key).public_hex == pub
    assert (out / "device.ed25519.pub").read_text() == pub + "\n"
    assert _keygen(out) == 2                                   # kept without --force
    err = capsys.readouterr().err
    assert "device.ed25519" in err and "--force" in err
    assert DeviceKey.load(key).public_hex == pub
    assert _keygen(out, force=True) == 0
    new = capsys.readouterr().out.strip()
    assert new != pub and DeviceKey.load(key).public_hex == new and mode(key) == 0o600
    assert (out / "device.ed25519.pub").read_text() == new + "\n"


def test_beatd_keygen_bad_dir(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert _keygen(f) == 2
    assert "file" in capsys.readouterr().err
