"""Ed25519 keys of devices and of the governance (docs/formats.md, "Signatures"; docs/ledger.md).

A ``DeviceKey`` holds an Ed25519 private key (pycryptodome, RFC 8032 "pure" Ed25519).

Key file format: PKCS#8 PEM (``-----BEGIN PRIVATE KEY-----``), the format of
``openssl genpkey -algorithm ed25519``, so ``openssl pkey -in device.ed25519 -pubout`` reads it.
The file is created with mode 0600 (``os.open(..., 0o600)``, never wider, even for a moment) and
``load`` refuses a file that the group or others may access (any of the bits 0o077), naming the path
and the mode. Public keys travel as 32 raw bytes (``.public``), or as 64 hex digits in files and on
command lines.

Registration refuses weak public keys (``check_public``): small-order points and non-canonical
encodings (below, "Keys that bind nothing").
"""
import os
import stat

from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

PUBLIC_SIZE = 32
SIGNATURE_SIZE = 64

# -- Keys that bind nothing ---------------------------------------------------------------------
# An Ed25519 public key encodes a point A: y (255 bits, little-endian) and the sign of x (the top
# bit). A signature (R, S) of M verifies when [8][S]B == [8]R + [8][k]A, k = H(R || A || M)
# (the cofactored check; BEAT verifies cofactorless, below: nothing here changes). When A has
# small order (one of the 8 points of order dividing 8), [8][k]A is the identity whatever k is:
# R = identity and S = 0 verify for *every* message, and the same goes for any verifier up to the
# choice of R.
# A device registered with such a key signs nothing that binds it: any record "signed" by it
# could have come from anybody, so it could deny all its evidence. The 8 points have only 5
# y coordinates: 1 (the identity), p-1 (order 2), 0 (two points of order 4), and +-Y8 (four of
# order 8); a key is refused by its y alone, whatever its sign bit. Non-canonical encodings
# (y >= p, which verifiers read differently: RFC 8032 rejects them, others reduce y mod p) are
# refused as well. (Keys that decode to no point at all verify nothing; they hurt only the device
# itself, and are not refused here.)
P = 2 ** 255 - 19
_Y8 = 2707385501144840649318225287225658788936804267575313519463743609750303402022
SMALL_ORDER_Y = {1: 1, P - 1: 2, 0: 4, _Y8: 8, P - _Y8: 8}   # y -> the order of its points


class WeakKeyError(ValueError):
    """A public key that must not be registered: small order, or not canonically encoded."""


def check_public(pub):
    """``pub`` (32 bytes) when it may be registered; else ``WeakKeyError`` naming the key."""
    pub = bytes(pub)
    if len(pub) != PUBLIC_SIZE:
        raise WeakKeyError(f"an Ed25519 public key is 32 bytes, got {len(pub)} bytes")
    y = int.from_bytes(pub, "little") & ((1 << 255) - 1)
    if y >= P:
        raise WeakKeyError(f"public key {pub.hex()} is not canonical: its y coordinate is "
                           f"2^255-19+{y - P}, not below 2^255-19; refused")
    order = SMALL_ORDER_Y.get(y)
    if order is not None:
        what = "the identity point" if order == 1 else f"a point of order {order}"
        raise WeakKeyError(f"public key {pub.hex()} is {what} (small order): one signature "
                           "would verify for every message, so the device could deny its "
                           "evidence; refused")
    return pub


def write_new_file(path, data, mode=0o600, overwrite=False):
    """Write ``data`` to a file created with ``mode`` (never a mode widened later, never through
    a symlink). An existing file is FileExistsError unless ``overwrite``; then the data goes to a
    new file beside it, which replaces it atomically."""
    path = os.fspath(path)
    target = f"{path}.tmp.{os.getpid()}" if overwrite else path
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(target)
        raise
    os.close(fd)
    if overwrite:
        os.replace(target, path)


class KeyFileError(Exception):
    """A key file that cannot be used: missing, unreadable, too open, or not an Ed25519 key."""


class DeviceKey:
    """An Ed25519 private key: ``.public`` (32 bytes), ``.sign(msg)`` (64 bytes)."""

    def __init__(self, key):
        if not isinstance(key, ECC.EccKey) or not key.has_private() or key.curve != "Ed25519":
            raise ValueError("DeviceKey needs an Ed25519 private key")
        self._key = key
        self._signer = eddsa.new(key, "rfc8032")
        self.public = key.public_key().export_key(format="raw")

    # -- making and storing ---------------------------------------------------------------------

    @classmethod
    def generate(cls):
        return cls(ECC.generate(curve="Ed25519"))

    @classmethod
    def from_seed(cls, seed):
        """The key of a 32-byte RFC 8032 seed (deterministic keys for tests)."""
        if len(seed) != 32:
            raise ValueError(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
        return cls(eddsa.import_private_key(bytes(seed)))

    @classmethod
    def load(cls, path):
        path = os.fspath(path)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot open the key file: {exc.strerror or exc}") from None
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode & 0o077:
                raise KeyFileError(f"{path}: key file mode is {mode:04o}, readable or writable by "
                                   f"group/others; refusing it (chmod 600 {path})")
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read()
        finally:
            os.close(fd)
        try:
            key = ECC.import_key(data)
        except (ValueError, IndexError, TypeError) as exc:
            raise KeyFileError(f"{path}: not an Ed25519 private key in PEM ({exc})") from None
        if key.curve != "Ed25519" or not key.has_private():
            raise KeyFileError(f"{path}: not an Ed25519 private key (curve {key.curve})")
        return cls(key)

    def to_pem(self):
        return self._key.export_key(format="PEM").encode() + b"\n"

    def save(self, path, overwrite=False):
        """Write the key as PKCS#8 PEM, mode 0600 (``write_new_file``)."""
        write_new_file(path, self.to_pem(), 0o600, overwrite)

    # -- using ----------------------------------------------------------------------------------

    @property
    def public_hex(self):
        return self.public.hex()

    def sign(self, msg):
        return self._signer.sign(bytes(msg))

    @staticmethod
    def verify(pub, msg, sig):
        return verify(pub, msg, sig)

    def __repr__(self):
        return f"DeviceKey(public={self.public_hex})"


# -- Verifying ----------------------------------------------------------------------------------
# Every signature BEAT checks (receipts, chunks, ledger acts, decisions) goes through ``verify``:
# OpenSSL's Ed25519 (``cryptography``), RFC 8032 section 5.1.7 with its strict choices: S < L,
# the cofactorless equation [S]B == R + [k]A, R compared by its encoding. pycryptodome checks the
# cofactored equation ([8][S]B == [8]R + [8][k]A) and so also accepts a signature whose R carries a
# small-order component: a device that knows its key can make such signatures, which OpenSSL, Go's
# crypto/ed25519 and libsodium refuse. One rule for every verifier BEAT runs (a governance member
# and a tenant must never disagree on whether a device signed something), the strictest of the
# common ones: an honest signer's signatures (R = [r]B) pass both. OpenSSL is also ~25x faster
# here (0.26 ms against 6.3 ms a signature, measured by the service benchmark).
_PUBLIC_KEYS = {}          # 32 bytes -> Ed25519PublicKey: loading costs as much as a check
_PUBLIC_KEYS_MAX = 4096


def _public_key(pub):
    key = _PUBLIC_KEYS.get(pub)
    if key is None:
        key = Ed25519PublicKey.from_public_bytes(pub)
        if len(_PUBLIC_KEYS) >= _PUBLIC_KEYS_MAX:
            _PUBLIC_KEYS.clear()
        _PUBLIC_KEYS[pub] = key
    return key


def verify(pub, msg, sig):
    """True when ``sig`` is a valid Ed25519 signature of ``msg`` by the 32-byte public key ``pub``
    (the strict rules above); False for a bad signature or a malformed key or signature (never
    raises on bad input)."""
    try:
        if len(pub) != PUBLIC_SIZE or len(sig) != SIGNATURE_SIZE:
            return False
        _public_key(bytes(pub)).verify(bytes(sig), bytes(msg))
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def parse_public(text):
    """A public key from 64 hex digits (whitespace around ignored) or a PEM public key, refused
    (``WeakKeyError``, a ValueError) when weak (``check_public``)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = ECC.import_key(text)
        except (ValueError, IndexError, TypeError) as exc:
            raise ValueError(f"not a PEM key ({exc})") from None
        if key.curve != "Ed25519":
            raise ValueError(f"not an Ed25519 key (curve {key.curve})")
        return check_public(key.public_key().export_key(format="raw"))
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ValueError("not hex") from None
    if len(raw) != PUBLIC_SIZE:
        raise ValueError(f"an Ed25519 public key is 32 bytes (64 hex digits), got {len(raw)} bytes")
    return check_public(raw)
