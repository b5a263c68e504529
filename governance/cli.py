"""``beatctl``: the governance's command line over the ledger.

    beatctl keygen --out F [--force]                   the governance key (Ed25519, PEM, 0600)
    beatctl --ledger local:PATH --key GOV_KEY register-node --node-id N --owner O
            (--pubkey HEX | --pubkey-file F) [--account HEX]
    beatctl --ledger local:PATH --key GOV_KEY register-sla --file sla.toml
    beatctl --ledger local:PATH --key GOV_KEY register-link|retire-link --a N --b M
            the registered topology: an undirected link between two registered nodes
    beatctl --ledger local:PATH nodes|slas|links [--json]
    beatctl --ledger local:PATH anchors [--node-id N] [--from-seq S] [--json]
    beatctl --ledger local:PATH verify [--json]
    beatctl --ledger L [--key GOV_KEY] interrogate --sla ID --from T --to T --config gov.toml
            [--json F|-] [--svg F] [--dispute ID | --no-record] [--evidence DIR] [--f F]
            the Interrogation Protocol (governance/interrogate.py); exit 0 when no device is
            at fault, 3 when one is, 4 when nothing is decided (a device unreachable)
    beatctl --ledger L verify-decision DISPUTE --evidence DIR [--json]
            re-check a decision from its evidence archive: exit 0 identical, 3 different

    beatctl keygen --ethereum --out GOV.eth [--force]  an Ethereum account key (hex, 0600)
    beatctl --ledger ethereum:URL --key GOV.eth deploy [--hash H]   deploys the Beat contract
            (GOV.eth's account is its governance) and prints its address
    beatctl --ledger ethereum:URL#CONTRACT ...         every command above but keygen, deploy
            and verify, on the contract at CONTRACT on the JSON-RPC node at URL: --key is the
            governance's Ethereum account key file (as keygen --ethereum or beatd keygen
            --ethereum's device.eth), register-node needs --account (the device's address,
            beatd keygen --ethereum prints it), register-sla takes the tenant's address (the one
            allowed to open disputes) from --tenant-account or the SLA file's tenant_account

A ``local`` ledger that does not exist yet is created by the first register-* with the governance
key given by ``--key``. The SLA file is TOML with the fields of ``ledger_client.types.SLA`` (``src``
and ``dst`` as IP addresses or 32 hex digits, ``route`` a list of node ids, ``qm_terms`` a table of
integers) and optionally ``tenant_pubkey`` (64 hex digits: the key the tenant opens disputes with,
on a ``local`` ledger) or ``tenant_account`` (an Ethereum address, on an ``ethereum`` ledger).

Errors print one line on stderr naming the thing: exit 2 for bad input (arguments, files, keys),
1 when the ledger refused (permission, conflict, order, not found).
"""
import argparse
import contextlib
import ipaddress
import json
import os
import sys

from beat_common.spec import is_node_id
from beat_common.tomlfile import read_toml

from ledger_client.backend import BackendSpec, open_backend
from ledger_client.errors import LedgerError, NotFound
from ledger_client.keys import DeviceKey, KeyFileError, parse_public
from ledger_client.types import SLA, Node

EXIT_REFUSED = 1
EXIT_USAGE = 2
SLA_FIELDS = ("sla_id", "tenant", "src", "dst", "route", "max_loss_ppm", "max_delay_us",
              "loss_budget_ppm", "penalty_per_violation", "valid_from_ns", "valid_to_ns",
              "qm_terms")
SLA_INTS = ("sla_id", "max_loss_ppm", "max_delay_us", "loss_budget_ppm", "penalty_per_violation",
            "valid_from_ns", "valid_to_ns")


class UsageError(Exception):
    """Bad input: exit 2."""


def _parser():
    p = argparse.ArgumentParser(prog="beatctl", description="BEAT governance: the ledger's "
                                "nodes, SLAs and anchors")
    p.add_argument("--ledger", metavar="local:PATH|ethereum:URL#CONTRACT",
                   help="the ledger: local:PATH (an LMDB file) or ethereum:URL#CONTRACT (the Beat "
                        "contract's address on the JSON-RPC node at URL; deploy: ethereum:URL)")
    p.add_argument("--hash", choices=("sha3-256", "blake2b-256"),
                   help="the hash of a new ledger (default sha3-256; an existing one keeps "
                        "its own)")
    p.add_argument("--key", metavar="GOV_KEY", help="the governance's key file: Ed25519 (PEM, 0600) "
                   "on local, an Ethereum account key (hex, 0600) on ethereum")
    p.add_argument("--confirmations", type=int, default=0, metavar="N",
                   help="ethereum: a decision (or registration) counts once N blocks deep, and "
                        "only anchors N blocks deep are read (0, the default: the chain's blocks "
                        "are final, as a dev chain or QBFT; a Clique network: e.g. 3)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    k = sub.add_parser("keygen", help="generate the governance key")
    k.add_argument("--out", metavar="F", required=True, help="key file to write (mode 0600)")
    k.add_argument("--force", action="store_true", help="replace an existing key file")
    k.add_argument("--ethereum", action="store_true",
                   help="an Ethereum account key (hex) instead; prints its address")

    dp = sub.add_parser("deploy", help="deploy the Beat contract (ethereum:URL); the --key "
                                       "account becomes the governance; prints the address")
    dp.add_argument("--json", action="store_true", help="JSON output")

    r = sub.add_parser("register-node", help="register a device (governance)")
    r.add_argument("--node-id", type=int, required=True, metavar="N")
    r.add_argument("--owner", required=True, metavar="O")
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--pubkey", metavar="HEX", help="the device's Ed25519 public key, 64 hex digits")
    g.add_argument("--pubkey-file", metavar="F",
                   help="a file holding it (hex, as beatd keygen's device.ed25519.pub, or PEM)")
    r.add_argument("--account", metavar="HEX", help="the device's 20-byte Ethereum address "
                   "(required on ethereum)")

    s = sub.add_parser("register-sla", help="register an SLA from a TOML file (governance)")
    s.add_argument("--file", required=True, metavar="sla.toml")
    s.add_argument("--tenant-account", metavar="ADDR",
                   help="ethereum: the tenant's address, allowed to open disputes (default: the "
                        "file's tenant_account, else the governance only)")

    for name, helptext in (("register-link", "register the link between two registered nodes "
                                             "(governance; idempotent)"),
                           ("retire-link", "retire a registered link (governance; idempotent)")):
        x = sub.add_parser(name, help=helptext)
        x.add_argument("--a", type=int, required=True, metavar="N", help="one end's node id")
        x.add_argument("--b", type=int, required=True, metavar="M", help="the other end's")

    for name, helptext in (("nodes", "list the registered nodes"), ("slas", "list the SLAs"),
                           ("links", "list the registered links (a < b, sorted)"),
                           ("verify", "re-check the ledger's hash chain and signatures")):
        x = sub.add_parser(name, help=helptext)
        x.add_argument("--json", action="store_true", help="JSON output")
    from . import interrogate_cli
    interrogate_cli.add_parser(sub)
    interrogate_cli.add_verify_parser(sub)
    a = sub.add_parser("anchors", help="list the anchors")
    a.add_argument("--node-id", type=int, metavar="N", help="only this node's")
    a.add_argument("--from-seq", type=int, default=0, metavar="S", help="from this batch_seq")
    a.add_argument("--json", action="store_true", help="one JSON object per anchor")
    return p


# -- inputs -------------------------------------------------------------------------------------

def _ledger_spec(args, contract=True):
    """("local", PATH) or ("ethereum", (URL, CONTRACT or None))."""
    if not args.ledger:
        raise UsageError("--ledger local:PATH or ethereum:URL#CONTRACT is required for this "
                         "command")
    scheme, _, rest = args.ledger.partition(":")
    if scheme == "local" and rest:
        return "local", rest
    if scheme == "ethereum" and rest:
        url, _, addr = rest.partition("#")
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--ledger {args.ledger}: the URL must be http:// or https://")
        if contract:
            if not addr:
                raise UsageError(f"--ledger {args.ledger}: ethereum:URL#CONTRACT needs the "
                                 "contract's address after '#' (beatctl deploy prints it); or "
                                 "local:PATH")
            if not _is_address(addr):
                raise UsageError(f"--ledger {args.ledger}: {addr!r} is not a contract address "
                                 "(0x and 40 hex digits)")
        elif addr:
            raise UsageError(f"--ledger {args.ledger}: deploy takes ethereum:URL (no #CONTRACT)")
        return "ethereum", (url, addr or None)
    raise UsageError(f"--ledger {args.ledger}: not local:PATH nor ethereum:URL#CONTRACT")


def _is_address(v):
    v = v.removeprefix("0x")
    return len(v) == 40 and all(c in "0123456789abcdefABCDEF" for c in v)


def _ledger_path(args):
    kind, where = _ledger_spec(args)
    if kind != "local":
        raise UsageError(f"--ledger {args.ledger}: this command needs a local:PATH ledger")
    return where


def _gov_key(args):
    if not args.key:
        raise UsageError("--key GOV_KEY is required for this command")
    if _ledger_spec(args, contract=args.command != "deploy")[0] == "ethereum":
        return _eth_key(args.key)
    try:
        return DeviceKey.load(args.key)
    except KeyFileError as exc:
        raise UsageError(str(exc)) from None


def _eth_key(path):
    """An Ethereum account key file (hex), refused when group/others may read it."""
    from ledger_client.ethereum import Account
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    if st.st_mode & 0o077:
        raise UsageError(f"{path}: mode {st.st_mode & 0o777:04o} lets group/others read the key; "
                         f"refusing it (chmod 600 {path})")
    try:
        return Account.from_file(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not an Ethereum account key (64 hex digits): {exc}") from None


def _open(args, create_with=None):
    """The ledger of ``--ledger`` (``ledger_client.backend.open_backend``), as a context manager;
    with ``create_with`` (the governance's key) a local ledger that does not exist is created."""
    kind, where = _ledger_spec(args)
    spec = (BackendSpec("local", path=where) if kind == "local" else
            BackendSpec("ethereum", url=where[0], contract=where[1]))
    create = create_with is not None and kind == "local"
    made = create and not os.path.exists(where)
    try:
        options = {}
        if kind == "ethereum" and getattr(args, "confirmations", 0):
            if args.confirmations < 0:
                raise UsageError(f"--confirmations: {args.confirmations} is not a number of blocks "
                                 ">= 0")
            options["confirmations"] = args.confirmations
        led = open_backend(spec, hash_name=args.hash, missing="create" if create else "error",
                           governance_pubkey=create_with.public if create else None, **options)
    except NotFound as exc:
        raise UsageError(str(exc)) from None
    if made:
        _give_to_directory_owner(where)
    return led if hasattr(led, "__enter__") else contextlib.nullcontext(led)


def _give_to_directory_owner(path):
    """A local ledger just made by root in a directory another user owns (the device's store,
    /var/lib/beatd, owned by user beatd): its files (PATH, PATH-lock) go to that directory's owner
    and group, so that the daemon, which opens the ledger read-write as that user, can. Said on
    stderr; any other case is left as it is (docs/operations.md says what to chown)."""
    if os.geteuid() != 0:
        return
    st = os.stat(os.path.dirname(os.path.abspath(path)))
    if st.st_uid == 0:
        return
    for f in (path, path + "-lock"):
        if os.path.exists(f):
            os.chown(f, st.st_uid, st.st_gid)
    print(f"beatctl: {path}: made, and given to uid {st.st_uid} gid {st.st_gid} (the owner of its "
          "directory), who opens it read-write", file=sys.stderr)


def _address(name, v):
    if isinstance(v, str):
        try:
            ip = ipaddress.ip_address(v)
        except ValueError:
            ip = None
        if ip is not None:
            if ip.version == 4:
                return bytes(10) + b"\xff\xff" + ip.packed
            return ip.packed
        try:
            raw = bytes.fromhex(v)
        except ValueError:
            raw = b""
        if len(raw) == 16:
            return raw
    raise UsageError(f"{name} = {v!r}: not an IP address nor 32 hex digits")


def load_sla(path, with_account=False):
    """The SLA (and the tenant's public key or None; with ``with_account``, also the tenant's
    Ethereum address or None) of a TOML file."""
    raw = read_toml(path, UsageError, "SLA file")
    raw = dict(raw.get("sla", raw)) if isinstance(raw.get("sla"), dict) else dict(raw)
    tenant_pubkey = raw.pop("tenant_pubkey", None)
    tenant_account = raw.pop("tenant_account", None)
    if tenant_account is not None and (not isinstance(tenant_account, str)
                                       or not _is_address(tenant_account)):
        raise UsageError(f"{path}: tenant_account must be an Ethereum address (0x and 40 hex "
                         "digits)")
    unknown = sorted(set(raw) - set(SLA_FIELDS))
    if unknown:
        raise UsageError(f"{path}: unknown SLA field(s) {', '.join(unknown)}")
    for name in ("sla_id", "tenant", "src", "dst", "route"):
        if name not in raw:
            raise UsageError(f"{path}: the SLA field {name} is missing")
    for name in SLA_INTS:
        if name in raw and (not isinstance(raw[name], int) or isinstance(raw[name], bool)):
            raise UsageError(f"{path}: {name} must be an integer")
    if not isinstance(raw["tenant"], str):
        raise UsageError(f"{path}: tenant must be a string")
    if not isinstance(raw["route"], list) or not all(isinstance(n, int) for n in raw["route"]):
        raise UsageError(f"{path}: route must be a list of node ids")
    qm = raw.get("qm_terms", {})
    if not isinstance(qm, dict) or not all(isinstance(v, int) and not isinstance(v, bool)
                                           for v in qm.values()):
        raise UsageError(f"{path}: qm_terms must be a table of integers")
    try:
        raw["src"] = _address(f"{path}: src", raw["src"])
        raw["dst"] = _address(f"{path}: dst", raw["dst"])
        if tenant_pubkey is not None:
            tenant_pubkey = parse_public(tenant_pubkey)
        sla = SLA(**raw)
    except ValueError as exc:
        raise UsageError(f"{path}: {exc}") from None
    if with_account:
        return sla, tenant_pubkey, tenant_account
    return sla, tenant_pubkey


def _node_pubkey(args):
    if args.pubkey is not None:
        try:
            return parse_public(args.pubkey)
        except ValueError as exc:
            raise UsageError(f"--pubkey: {exc}") from None
    try:
        with open(args.pubkey_file, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise UsageError(f"{args.pubkey_file}: {exc.strerror or exc}") from None
    try:
        return parse_public(text)
    except ValueError as exc:
        raise UsageError(f"{args.pubkey_file}: {exc}") from None


# -- output -------------------------------------------------------------------------------------

def _node_json(n):
    return {"node_id": n.node_id, "owner": n.owner, "pubkey": n.pubkey.hex(),
            "account": n.account.hex() if n.account else None}


def _sla_json(s, tenant_pubkey=None):
    ip = {}
    for name in ("src", "dst"):
        b = getattr(s, name)
        ip[name] = str(ipaddress.ip_address(b[12:] if b[:12] == bytes(10) + b"\xff\xff" else b))
    d = {f: getattr(s, f) for f in SLA_FIELDS}
    d.update(ip, route=list(s.route), tenant_pubkey=tenant_pubkey.hex() if tenant_pubkey else None)
    return d


def _anchor_json(a):
    return {"node_id": a.node_id, "batch_seq": a.batch_seq, "tree_size": a.tree_size,
            "root": a.root.hex(), "first_t_ns": a.first_t_ns, "last_t_ns": a.last_t_ns,
            "ref": a.ref}


# -- commands -----------------------------------------------------------------------------------

def _keygen(args):
    if args.ethereum:
        from ledger_client.ethereum import Account
        if os.path.lexists(args.out) and not args.force:
            raise UsageError(f"{args.out}: exists; use --force to replace it")
        acct = Account.generate()
        try:
            acct.save(args.out)
            os.chmod(args.out, 0o600)
        except OSError as exc:
            raise UsageError(f"{args.out}: {exc.strerror or exc}") from None
        print(acct.address)
        return 0
    k = DeviceKey.generate()
    try:
        k.save(args.out, overwrite=args.force)
    except FileExistsError:
        raise UsageError(f"{args.out}: exists; use --force to replace it") from None
    except OSError as exc:
        raise UsageError(f"{args.out}: {exc.strerror or exc}") from None
    print(k.public_hex)
    return 0


def _register_node(args):
    pub = _node_pubkey(args)
    account = None
    if args.account is not None:
        try:
            account = bytes.fromhex(args.account.removeprefix("0x"))
        except ValueError:
            raise UsageError(f"--account {args.account}: not hex") from None
    try:
        node = Node(args.node_id, args.owner, pub, account)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if _ledger_spec(args)[0] == "ethereum" and account is None:
        raise UsageError("register-node: an ethereum ledger needs --account (the device's "
                         "address: beatd keygen --ethereum prints it)")
    gov = _gov_key(args)
    with _open(args, create_with=gov) as led:
        led.register_node(node, signer=gov)
    print(f"registered node {node.node_id} ({node.owner}) with key {pub.hex()}")
    return 0


def _register_sla(args):
    sla, tenant_pubkey, tenant_account = load_sla(args.file, with_account=True)
    if args.tenant_account is not None:
        if not _is_address(args.tenant_account):
            raise UsageError(f"--tenant-account {args.tenant_account}: not an Ethereum address "
                             "(0x and 40 hex digits)")
        tenant_account = args.tenant_account
    ethereum = _ledger_spec(args)[0] == "ethereum"
    if ethereum and tenant_pubkey is not None:
        raise UsageError(f"{args.file}: tenant_pubkey is for local ledgers; an ethereum ledger "
                         "takes the tenant's address (tenant_account or --tenant-account)")
    if not ethereum and tenant_account is not None:
        raise UsageError(f"{args.file}: the tenant's address is for ethereum ledgers; a local "
                         "ledger takes tenant_pubkey")
    gov = _gov_key(args)
    with _open(args, create_with=gov) as led:
        if ethereum:
            led.register_sla(sla, signer=gov, tenant_account=tenant_account)
        else:
            led.register_sla(sla, signer=gov, tenant_pubkey=tenant_pubkey)
    print(f"registered sla {sla.sla_id} ({sla.tenant}), route {' '.join(map(str, sla.route))}")
    return 0


def _link(args):
    for side in ("a", "b"):
        v = getattr(args, side)
        if not is_node_id(v):
            raise UsageError(f"--{side} {v}: not a node id (1..2^64-2)")
    if args.a == args.b:
        raise UsageError(f"--a {args.a} --b {args.b}: a link joins two different nodes")
    gov = _gov_key(args)
    with _open(args) as led:
        if args.command == "register-link":
            led.register_link(args.a, args.b, signer=gov)
        else:
            led.retire_link(args.a, args.b, signer=gov)
    a, b = sorted((args.a, args.b))
    print(f"{'registered' if args.command == 'register-link' else 'retired'} link {a}-{b}")
    return 0


def _links(args):
    with _open(args) as led:
        rows = led.links()
    if args.json:
        print(json.dumps([{"a": a, "b": b} for a, b in rows]))
    else:
        for a, b in rows:
            print(f"{a}\t{b}")
    return 0


def _nodes(args):
    with _open(args) as led:
        rows = led.nodes()
    if args.json:
        print(json.dumps([_node_json(n) for n in rows]))
    else:
        for n in rows:
            print(f"{n.node_id}\t{n.owner}\t{n.pubkey.hex()}"
                  + (f"\t{n.account.hex()}" if n.account else ""))
    return 0


def _slas(args):
    if _ledger_spec(args)[0] == "ethereum":
        with _open(args) as led:
            ids = led._call("slas()", led.contract.functions.slaIds())
            rows = [(led.get_sla(i), led.sla_tenant_account(i)) for i in ids]
        if args.json:
            print(json.dumps([dict(_sla_json(s), tenant_account=t) for s, t in rows]))
            return 0
    else:
        with _open(args) as led:
            rows = [(s, led.tenant_pubkey(s.sla_id)) for s in led.slas()]
    if args.json:
        print(json.dumps([_sla_json(s, t) for s, t in rows]))
    else:
        for s, _ in rows:
            j = _sla_json(s)
            print(f"{s.sla_id}\t{s.tenant}\t{j['src']} -> {j['dst']}\troute "
                  f"{' '.join(map(str, s.route))}\tpenalty {s.penalty_per_violation}")
    return 0


def _anchors(args):
    with _open(args) as led:
        rows = led.anchors(args.node_id, args.from_seq)
    for a in rows:
        if args.json:
            print(json.dumps(_anchor_json(a)))
        else:
            where = f"entry {a.ref}" if _ledger_spec(args)[0] == "local" else f"tx {a.ref}"
            print(f"{a.node_id}\t{a.batch_seq}\t{a.tree_size}\t{a.root.hex()}\t"
                  f"{a.first_t_ns}..{a.last_t_ns}\t{where}")
    return 0


def _deploy(args):
    from ledger_client.ethereum import EthereumLedger
    kind, where = _ledger_spec(args, contract=False)
    if kind != "ethereum":
        raise UsageError(f"--ledger {args.ledger}: deploy needs ethereum:URL (a local ledger is "
                         "created by its first register-*)")
    gov = _gov_key(args)
    hash_name = args.hash or "sha3-256"
    led = EthereumLedger.deploy(where[0], gov, hash_name)
    if args.json:
        print(json.dumps({"contract": led.address, "governance": gov.address, "hash": hash_name,
                          "ledger": f"ethereum:{where[0]}#{led.address}"}))
    else:
        print(led.address)
    return 0


def _verify(args):
    if _ledger_spec(args)[0] == "ethereum":
        raise UsageError("verify: local ledgers only (an ethereum ledger is the chain's to "
                         "verify)")
    with _open(args) as led:
        problems = led.verify_chain()
        n = led.entry_count()
    if args.json:
        print(json.dumps({"entries": n, "problems": problems}))
    else:
        for p in problems:
            print(p)
        print(f"{n} entries, {len(problems)} problem(s)")
    return EXIT_REFUSED if problems else 0


def _interrogate(args):
    from . import interrogate_cli
    return interrogate_cli.run(args, _open, _gov_key, UsageError)


def _verify_decision(args):
    from . import interrogate_cli
    return interrogate_cli.verify_decision(args, _open, UsageError)


COMMANDS = {"interrogate": _interrogate, "verify-decision": _verify_decision, "keygen": _keygen,
            "deploy": _deploy, "register-node": _register_node, "register-sla": _register_sla,
            "register-link": _link, "retire-link": _link, "links": _links,
            "nodes": _nodes, "slas": _slas, "anchors": _anchors, "verify": _verify}


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"beatctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LedgerError as exc:
        print(f"beatctl: {args.command}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except BrokenPipeError:
        # `beatctl anchors | head`: the reader left; not an error worth a traceback
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
