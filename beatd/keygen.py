"""``beatd keygen --out DIR [--force]``: the device's Ed25519 key (docs/ledger.md, "Signers").

Writes ``DIR/device.ed25519`` (PKCS#8 PEM, mode 0600, created with that mode) and
``DIR/device.ed25519.pub`` (the public key as 64 hex digits and a newline, mode 0644: what the
governance registers, ``beatctl register-node --pubkey-file``), and prints the public key's hex.
An existing key is kept (exit 2) unless ``--force``.

With ``--ethereum``, also ``DIR/device.eth``: the device's Ethereum account key
(``ledger_client.ethereum.Account``: the secp256k1 private key in hex, mode 0600), which signs its
anchor transactions on an ``ethereum`` ledger (``[ledger] key``; the Ed25519 key stays the
device's identity, ``[ledger] device_key``); its address is printed on a second line
(``beatctl register-node --account``) and written to ``DIR/device.eth.addr``.
"""
import os
import sys

KEY_NAME = "device.ed25519"
PUB_NAME = "device.ed25519.pub"
ETH_NAME = "device.eth"
ETH_ADDR_NAME = "device.eth.addr"
EXIT_USAGE = 2


def add_arguments(parser):
    parser.add_argument("--out", metavar="DIR", required=True,
                        help=f"directory for {KEY_NAME} (created, mode 0700, when missing)")
    parser.add_argument("--force", action="store_true", help="replace an existing key")
    parser.add_argument("--ethereum", action="store_true",
                        help=f"also write {ETH_NAME}, the device's Ethereum account key (0600), "
                             "and print its address")


def _fail(msg):
    print(f"beatd: keygen: {msg}", file=sys.stderr)
    return EXIT_USAGE


def main(args):
    # here, not at the top: every beatd command builds this parser, and the crypto libraries
    # cost about 45 ms to import (a third of a short `beatd replay`)
    from ledger_client.keys import DeviceKey, write_new_file

    out = os.fspath(args.out)
    try:
        os.makedirs(out, mode=0o700, exist_ok=True)
    except OSError as exc:
        return _fail(f"{out}: cannot create the directory: {exc.strerror or exc}")
    if not os.path.isdir(out):
        return _fail(f"{out}: not a directory")
    path = os.path.join(out, KEY_NAME)
    eth_path = os.path.join(out, ETH_NAME)
    if getattr(args, "ethereum", False) and not args.force and os.path.lexists(eth_path):
        return _fail(f"{eth_path}: a key is already there; use --force to replace it")
    key = DeviceKey.generate()
    try:
        key.save(path, overwrite=args.force)
    except FileExistsError:
        return _fail(f"{path}: a key is already there; use --force to replace it")
    except OSError as exc:
        return _fail(f"{path}: cannot write the key: {exc.strerror or exc}")
    pub = os.path.join(out, PUB_NAME)
    try:
        write_new_file(pub, (key.public_hex + "\n").encode(), 0o644, overwrite=True)
    except OSError as exc:
        return _fail(f"{pub}: cannot write the public key: {exc.strerror or exc}")
    print(key.public_hex)
    if getattr(args, "ethereum", False):
        from ledger_client.ethereum import Account
        acct = Account.generate()
        tmp = f"{eth_path}.tmp.{os.getpid()}"
        try:
            acct.save(tmp)              # created 0600
            os.chmod(tmp, 0o600)
            os.replace(tmp, eth_path)
            _write_public(os.path.join(out, ETH_ADDR_NAME), acct.address)
        except OSError as exc:
            return _fail(f"{eth_path}: cannot write the key: {exc.strerror or exc}")
        print(acct.address)
    return 0


def _write_public(path, text):
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)
