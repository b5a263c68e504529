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

    The committee (docs/ledger.md, "The committee"): --key is a member's key.
    beatctl --ledger local:PATH --key MEMBER create --member PUB[@ACCOUNT] ... --threshold K
            [--ttl S]                                  a new local ledger governed by a committee
    beatctl --ledger L --key MEMBER propose register-node|register-sla|register-link|
            retire-link|retire-node|add-member|remove-member|set-threshold ...
            (register-* above are the same: executed at once when k = 1, else a proposal:
            "proposal P: 1 of k approvals")
    beatctl --ledger L --key MEMBER approve P           approve proposal P
    beatctl --ledger L pending|committee [--json]       open proposals; the members and k
    beatctl --ledger L --key MEMBER decide DISPUTE --evidence DIR [--json]
            re-judge the archived evidence (as verify-decision) and approve that decision
    beatctl --ledger L dissent DISPUTE [--json]         members who approved another decision
    beatctl --ledger L --key TENANT open-dispute --sla N (--from-ns NS --to-ns NS | --last S)
            the SLA's tenant (or a committee member) opens a dispute on that window
    beatctl --ledger L [--key TENANT] disputes [--tenant] [--json]
            the disputes (with --tenant: those of the --key's SLAs), state and evidence digest

    The money (docs/ledger.md, "Settlement"): --key is the node's operator's key.
    beatctl --ledger L --key OPERATOR deposit --node-id N --amount A    lock A for node N
    beatctl --ledger L --key OPERATOR withdraw --node-id N [--request]  ask, then (after the
            notice) take the node's deposit back
    beatctl --ledger L deposits|debts [--json]          every node's deposit / unpaid debts
    beatctl --ledger L balances [--account ADDR ...] [--json]
            local: every key's balance; ethereum: these accounts' wei and pull credits

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
integers, ``price`` an integer: what the tenant pays, recorded) and optionally ``tenant_pubkey``
(64 hex digits: the key the tenant opens disputes with, on a ``local`` ledger) or
``tenant_account`` (an Ethereum address, on an ``ethereum`` ledger).

Errors print one line on stderr naming the thing: exit 2 for bad input (arguments, files, keys),
1 when the ledger refused (permission, conflict, order, not found).
"""
import argparse
import contextlib
import ipaddress
import json
import os
import sys
import time

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
              "qm_terms", "price")
SLA_INTS = ("sla_id", "max_loss_ppm", "max_delay_us", "loss_budget_ppm", "penalty_per_violation",
            "valid_from_ns", "valid_to_ns", "price")


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

    _act_parsers(sub)
    _parser_rest(sub)
    pr = sub.add_parser("propose", help="propose a governance act (a committee member): "
                                        "executes at the k-th approval")
    _act_parsers(pr.add_subparsers(dest="act", required=True, metavar="ACT"), committee=True)
    c = sub.add_parser("create", help="create a local ledger governed by a committee")
    c.add_argument("--member", action="append", required=True, metavar="PUB[@ACCOUNT]",
                   help="a member: its Ed25519 public key (hex), optionally @ its Ethereum "
                        "address; repeat per member")
    c.add_argument("--threshold", type=int, required=True, metavar="K")
    c.add_argument("--ttl", type=int, default=None, metavar="S",
                   help="a proposal's lifetime in seconds (default 7 days)")
    c.add_argument("--notice", type=int, default=None, metavar="S",
                   help="a deposit's withdrawal notice in seconds (>= --ttl; default 14 days)")
    c.add_argument("--balance", action="append", default=[], metavar="PUB=AMOUNT",
                   help="a key's starting balance (the local stand-in for money); repeat")
    mo = sub.add_parser("deposit", help="lock an amount for a node (its operator)")
    mo.add_argument("--node-id", type=int, required=True, metavar="N")
    mo.add_argument("--amount", type=int, required=True, metavar="A",
                    help="wei on ethereum, balance units on local")
    mo.add_argument("--json", action="store_true")
    wi = sub.add_parser("withdraw", help="take a node's deposit back (its operator): --request "
                                         "first, then after the notice")
    wi.add_argument("--node-id", type=int, required=True, metavar="N")
    wi.add_argument("--request", action="store_true", help="ask (the notice starts now)")
    wi.add_argument("--json", action="store_true")
    for name, helptext in (("deposits", "every node's deposit, pending withdrawal, debt, "
                                        "freezing dispute"),
                           ("debts", "the nodes' unpaid debts")):
        x = sub.add_parser(name, help=helptext)
        x.add_argument("--json", action="store_true")
    ba = sub.add_parser("balances", help="balances (local: every key's; ethereum: --account's)")
    ba.add_argument("--account", action="append", default=[], metavar="ADDR")
    ba.add_argument("--json", action="store_true")
    ap = sub.add_parser("approve", help="approve a proposal (a committee member)")
    ap.add_argument("proposal", type=int, metavar="P")
    ap.add_argument("--json", action="store_true")
    for name, helptext in (("pending", "the open proposals and their approvals"),
                           ("committee", "the committee: members, k, epoch, ttl")):
        x = sub.add_parser(name, help=helptext)
        x.add_argument("--json", action="store_true")
    ds = sub.add_parser("dissent", help="the members who approved another decision")
    ds.add_argument("dispute", type=int, metavar="DISPUTE")
    ds.add_argument("--json", action="store_true")
    de = sub.add_parser("decide", help="re-judge a dispute's archived evidence and approve that "
                                       "decision (a committee member)")
    de.add_argument("dispute", type=int, metavar="DISPUTE")
    de.add_argument("--evidence", required=True, metavar="DIR")
    de.add_argument("--json", action="store_true")
    od = sub.add_parser("open-dispute", help="open a dispute on an SLA (its tenant, or a "
                                             "committee member): the window to judge")
    od.add_argument("--sla", type=int, required=True, metavar="N")
    od.add_argument("--from-ns", type=int, default=None, metavar="NS",
                    help="the window's start (ns since the epoch)")
    od.add_argument("--to-ns", type=int, default=None, metavar="NS", help="the window's end")
    od.add_argument("--last", type=float, default=None, metavar="S",
                    help="instead of --from-ns/--to-ns: the last S seconds, ending now")
    od.add_argument("--json", action="store_true")
    dl = sub.add_parser("disputes", help="the disputes: state, evidence digest, faulty")
    dl.add_argument("--tenant", action="store_true",
                    help="only the disputes of the SLAs whose tenant is --key")
    dl.add_argument("--json", action="store_true")
    dp.add_argument("--member", action="append", metavar="ACCOUNT[@PUB]",
                    help="a committee member: its address, optionally @ its Ed25519 key (hex); "
                         "repeat; default: the --key account alone")
    dp.add_argument("--threshold", type=int, default=None, metavar="K")
    dp.add_argument("--ttl", type=int, default=None, metavar="S",
                    help="a proposal's lifetime in seconds (default 7 days)")
    dp.add_argument("--notice", type=int, default=None, metavar="S",
                    help="a deposit's withdrawal notice in seconds (>= the ttl)")
    from . import interrogate_cli
    interrogate_cli.add_parser(sub)
    interrogate_cli.add_verify_parser(sub)
    from .service import cli as serve_cli
    serve_cli.add_parser(sub)
    a = sub.add_parser("anchors", help="list the anchors")
    a.add_argument("--node-id", type=int, metavar="N", help="only this node's")
    a.add_argument("--from-seq", type=int, default=0, metavar="S", help="from this batch_seq")
    a.add_argument("--json", action="store_true", help="one JSON object per anchor")
    return p


def _act_parsers(sub, committee=False):
    r = sub.add_parser("register-node", help="register a device (governance)")
    r.add_argument("--node-id", type=int, required=True, metavar="N")
    r.add_argument("--owner", required=True, metavar="O")
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--pubkey", metavar="HEX", help="the device's Ed25519 public key, 64 hex digits")
    g.add_argument("--pubkey-file", metavar="F",
                   help="a file holding it (hex, as beatd keygen's device.ed25519.pub, or PEM)")
    r.add_argument("--account", metavar="HEX", help="the device's 20-byte Ethereum address "
                   "(required on ethereum)")
    r.add_argument("--operator", metavar="HEX", help="the operator who locks the node's deposit: "
                   "an Ethereum address on ethereum, an Ed25519 public key on local")

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
    if not committee:
        return
    x = sub.add_parser("retire-node", help="the node anchors no more")
    x.add_argument("--node-id", type=int, required=True, metavar="N")
    for name in ("add-member", "remove-member"):
        x = sub.add_parser(name, help=f"{name.replace('-', ' ')} (a membership change: a new "
                                      "epoch voids the open proposals)")
        x.add_argument("--pubkey", metavar="HEX", help="the member's Ed25519 public key")
        x.add_argument("--account", metavar="ADDR", help="the member's Ethereum address")
    x = sub.add_parser("set-threshold", help="change k (1 <= k <= n)")
    x.add_argument("--k", type=int, required=True, metavar="K")


def _parser_rest(sub):
    for name, helptext in (("nodes", "list the registered nodes"), ("slas", "list the SLAs"),
                           ("links", "list the registered links (a < b, sorted)"),
                           ("verify", "re-check the ledger's hash chain and signatures")):
        x = sub.add_parser(name, help=helptext)
        x.add_argument("--json", action="store_true", help="JSON output")


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
    operator = None
    if getattr(args, "operator", None) is not None:
        try:
            operator = bytes.fromhex(args.operator.removeprefix("0x"))
        except ValueError:
            raise UsageError(f"--operator {args.operator}: not hex") from None
    try:
        node = Node(args.node_id, args.owner, pub, account, operator)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if _ledger_spec(args)[0] == "ethereum" and account is None:
        raise UsageError("register-node: an ethereum ledger needs --account (the device's "
                         "address: beatd keygen --ethereum prints it)")
    gov = _gov_key(args)
    with _open(args, create_with=gov) as led:
        r = led.register_node(node, signer=gov)
    return _done(r, f"registered node {node.node_id} ({node.owner}) with key {pub.hex()}")


def _done(result, done_line):
    """What a governance act printed: done at once (k = 1, or already there), or the proposal it
    made or approved ("proposal P: n of k approvals", and "executed" at the k-th)."""
    if result is None:
        print(done_line)
    else:
        print(result.line() + (f": executed: {done_line}" if result.state == "executed" else ""))
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
            r = led.register_sla(sla, signer=gov, tenant_account=tenant_account)
        else:
            r = led.register_sla(sla, signer=gov, tenant_pubkey=tenant_pubkey)
    return _done(r, f"registered sla {sla.sla_id} ({sla.tenant}), route "
                    f"{' '.join(map(str, sla.route))}")


def _link(args):
    for side in ("a", "b"):
        v = getattr(args, side)
        if not is_node_id(v):
            raise UsageError(f"--{side} {v}: not a node id (1..2^64-2)")
    if args.a == args.b:
        raise UsageError(f"--a {args.a} --b {args.b}: a link joins two different nodes")
    gov = _gov_key(args)
    with _open(args) as led:
        if _what(args) == "register-link":
            r = led.register_link(args.a, args.b, signer=gov)
        else:
            r = led.retire_link(args.a, args.b, signer=gov)
    a, b = sorted((args.a, args.b))
    return _done(r, f"{'registered' if _what(args) == 'register-link' else 'retired'} link "
                    f"{a}-{b}")


def _what(args):
    return args.act if args.command == "propose" else args.command


# -- the committee ------------------------------------------------------------------------------

def _proposal_json(p):
    return {"proposal": p.proposal_id, "act": p.act, "args": p.args, "epoch": p.epoch,
            "created_ns": p.created_ns, "expires_ns": p.expires_ns,
            "approvals": list(p.approvals), "k": p.k, "state": p.state}


def _member_arg(args, what):
    from ledger_client.types import Member
    pub = acct = None
    try:
        if args.pubkey:
            pub = parse_public(args.pubkey)
        if args.account:
            if not _is_address(args.account):
                raise ValueError(f"--account {args.account}: not an Ethereum address")
            acct = bytes.fromhex(args.account.removeprefix("0x"))
        return Member(pub, acct)
    except ValueError as exc:
        raise UsageError(f"{what}: {exc}") from None


def _parse_members(values, account_first):
    from ledger_client.types import Member
    out = []
    for v in values:
        first, _, second = v.partition("@")
        acct, pub = (first, second) if account_first else (second, first)
        try:
            if acct and not _is_address(acct):
                raise ValueError(f"{acct!r} is not an Ethereum address")
            out.append(Member(parse_public(pub) if pub else None,
                              bytes.fromhex(acct.removeprefix("0x")) if acct else None))
        except ValueError as exc:
            raise UsageError(f"--member {v}: {exc}") from None
    return out


def _committee_of(args, members):
    from ledger_client.types import DEFAULT_TTL_S, Committee
    try:
        return Committee(tuple(members), args.threshold if args.threshold is not None else 1,
                         ttl_s=args.ttl if args.ttl is not None else DEFAULT_TTL_S)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _create(args):
    path = _ledger_path(args)
    if os.path.exists(path):
        raise UsageError(f"{path}: exists; a committee is fixed when the ledger is created")
    members = _parse_members(args.member, account_first=False)
    committee = _committee_of(args, members)
    from ledger_client.local import LocalLedger
    balances = {}
    for b in args.balance:
        pub, _, amount = b.partition("=")
        try:
            balances[parse_public(pub)] = int(amount)
        except ValueError as exc:
            raise UsageError(f"--balance {b}: PUB=AMOUNT ({exc})") from None
    try:
        with LocalLedger(path, hash_name=args.hash or "sha3-256", committee=committee,
                         balances=balances, notice_s=args.notice):
            pass
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"created {path}: a committee of {len(members)}, k = {committee.k}, proposals "
          f"expire after {committee.ttl_s} s")
    return 0


def _propose(args):
    act = args.act
    if act == "register-node":
        return _register_node(args)
    if act == "register-sla":
        return _register_sla(args)
    if act in ("register-link", "retire-link"):
        return _link(args)
    gov = _gov_key(args)
    with _open(args) as led:
        if act == "retire-node":
            r = led.retire_node(args.node_id, signer=gov)
            line = f"retired node {args.node_id}"
        elif act == "add-member":
            r = led.add_member(_member_arg(args, act), signer=gov)
            line = "member added"
        elif act == "remove-member":
            r = led.remove_member(_member_arg(args, act), signer=gov)
            line = "member removed"
        else:
            r = led.set_threshold(args.k, signer=gov)
            line = f"k = {args.k}"
    return _done(r, line)


def _approve(args):
    gov = _gov_key(args)
    with _open(args) as led:
        p = led.approve(args.proposal, signer=gov)
    if args.json:
        print(json.dumps(_proposal_json(p)))
    else:
        print(p.line() + f" ({p.act}): {p.state}")
    return 0


def _pending(args):
    with _open(args) as led:
        rows = led.pending()
    if args.json:
        print(json.dumps([_proposal_json(p) for p in rows]))
    else:
        for p in rows:
            print(f"{p.proposal_id}\t{p.act}\t{json.dumps(p.args, sort_keys=True)}\t"
                  f"{len(p.approvals)} of {p.k}\t{', '.join(p.approvals)}")
    return 0


def _committee(args):
    with _open(args) as led:
        c = led.committee()
    members = [{"pubkey": m.pubkey.hex() if m.pubkey else None,
                "account": "0x" + m.account.hex() if m.account else None} for m in c.members]
    if args.json:
        print(json.dumps({"members": members, "k": c.k, "epoch": c.epoch, "ttl_s": c.ttl_s}))
    else:
        for m in members:
            print(f"{m['pubkey'] or '-'}\t{m['account'] or '-'}")
        print(f"k = {c.k} of n = {len(members)}, epoch {c.epoch}, proposals expire after "
              f"{c.ttl_s} s")
    return 0


def _dissent(args):
    with _open(args) as led:
        if led.get_dispute(args.dispute) is None:
            raise UsageError(f"dispute {args.dispute}: not on the ledger")
        rows = led.dispute_dissent(args.dispute)
    if args.json:
        print(json.dumps([{"member": v.member, "verdict_digest": v.verdict_digest.hex(),
                           "evidence_digest": v.evidence_digest.hex()} for v in rows]))
    else:
        for v in rows:
            print(f"{v.member}\tverdict {v.verdict_digest.hex()}")
        print(f"dispute {args.dispute}: {len(rows)} dissenting member(s)")
    return 0


def _dispute_json(d):
    return {"dispute": d.dispute_id, "sla": d.sla_id, "from_ns": d.from_ns, "to_ns": d.to_ns,
            "state": d.state,
            "evidence_digest": d.evidence_digest.hex() if d.evidence_digest else None,
            "verdict_digest": d.verdict_digest.hex() if d.verdict_digest else None,
            "faulty": list(d.faulty), "penalty": d.penalty}


def _dispute_window(args):
    """(from_ns, to_ns) of open-dispute: --last S, or both --from-ns and --to-ns."""
    if args.last is not None:
        if args.from_ns is not None or args.to_ns is not None:
            raise UsageError("--last: give either --last or --from-ns/--to-ns, not both")
        if not 0 < args.last <= 366 * 86400:
            raise UsageError(f"--last {args.last:g}: must be more than 0 and at most a year "
                             f"(seconds)")
        to_ns = time.time_ns()
        return to_ns - int(args.last * 1e9), to_ns
    if args.from_ns is None or args.to_ns is None:
        raise UsageError("open-dispute: give --from-ns and --to-ns (ns), or --last S")
    for name, v in (("--from-ns", args.from_ns), ("--to-ns", args.to_ns)):
        if not 0 <= v < 1 << 64:
            raise UsageError(f"{name} {v}: must be in 0..2^64-1 (ns since the epoch)")
    if args.from_ns >= args.to_ns:
        raise UsageError(f"--from-ns {args.from_ns} is not before --to-ns {args.to_ns}")
    return args.from_ns, args.to_ns


def _open_dispute(args):
    from_ns, to_ns = _dispute_window(args)
    key = _gov_key(args)
    with _open(args) as led:
        did = led.open_dispute(args.sla, from_ns, to_ns, signer=key)
        d = next((x for x in led.disputes() if x.dispute_id == did), None)
    if args.json:
        print(json.dumps(_dispute_json(d) if d else {"dispute": did, "sla": args.sla,
                                                     "from_ns": from_ns, "to_ns": to_ns}))
    else:
        print(f"dispute {did} opened on SLA {args.sla}: window [{from_ns}, {to_ns}] ns")
    return 0


def _disputes(args):
    me = None
    if args.tenant:
        key = _gov_key(args)
        me = key.address.lower() if hasattr(key, "address") else key.public
    with _open(args) as led:
        rows = led.disputes()
        if me is not None:
            mine = {}
            for d in rows:
                if d.sla_id not in mine:
                    t = led.tenant_of(d.sla_id)
                    mine[d.sla_id] = t is not None and (t.lower() if isinstance(t, str)
                                                        else t) == me
            rows = [d for d in rows if mine[d.sla_id]]
    if args.json:
        print(json.dumps([_dispute_json(d) for d in rows]))
    else:
        for d in rows:
            j = _dispute_json(d)
            print(f"{d.dispute_id}\tsla {d.sla_id}\t{d.state}\tevidence "
                  f"{j['evidence_digest'] or '-'}\tfaulty {j['faulty'] or 'none'}\tpenalty "
                  f"{d.penalty}")
    return 0


# -- the money ----------------------------------------------------------------------------------

def _deposit_json(d):
    return {"node_id": d.node_id, "amount": d.amount, "withdrawal_due_ns": d.due_ns,
            "withdrawal_lapses_ns": d.lapses_ns, "debt": d.debt, "frozen_by": d.frozen_by}


def _deposit_line(d):
    due = f"withdrawal due {d.due_ns}" if d.due_ns else "no withdrawal asked"
    if d.due_ns and d.lapses_ns:
        due += f" (lapses {d.lapses_ns})"
    frozen = f", frozen by dispute {d.frozen_by}" if d.frozen_by else ""
    return f"node {d.node_id}: deposit {d.amount}, debt {d.debt}, {due}{frozen}"


def _deposit(args):
    if args.amount <= 0:
        raise UsageError(f"--amount {args.amount}: must be more than 0")
    key = _gov_key(args)
    with _open(args) as led:
        d = led.deposit(args.node_id, args.amount, signer=key)
    print(json.dumps(_deposit_json(d)) if args.json else _deposit_line(d))
    return 0


def _withdraw(args):
    key = _gov_key(args)
    with _open(args) as led:
        if args.request:
            d = led.request_withdrawal(args.node_id, signer=key)
            out = _deposit_json(d)
            line = _deposit_line(d)
        else:
            amount = led.withdraw(args.node_id, signer=key)
            out = {"node_id": args.node_id, "withdrawn": amount}
            line = f"node {args.node_id}: withdrew {amount}"
    print(json.dumps(out) if args.json else line)
    return 0


def _deposits(args):
    with _open(args) as led:
        rows = [led.deposit_of(n.node_id) for n in led.nodes()]
    if args.json:
        print(json.dumps([_deposit_json(d) for d in rows]))
    else:
        for d in rows:
            print(_deposit_line(d))
    return 0


def _who(t):
    return t if isinstance(t, str) else t.hex()


def _debts(args):
    with _open(args) as led:
        rows = led.debts()
    if args.json:
        print(json.dumps([{"node_id": x.node_id, "tenant": _who(x.tenant), "amount": x.amount,
                           "dispute": x.dispute_id} for x in rows]))
    else:
        for x in rows:
            print(f"node {x.node_id} owes {x.amount} to {_who(x.tenant)} (dispute "
                  f"{x.dispute_id})")
    return 0


def _balances(args):
    ethereum = _ledger_spec(args)[0] == "ethereum"
    with _open(args) as led:
        if ethereum:
            if not args.account:
                raise UsageError("balances: an ethereum ledger needs --account ADDR (repeat)")
            for a in args.account:
                if not _is_address(a):
                    raise UsageError(f"--account {a}: not an Ethereum address")
            rows = {a: {"balance": led.balance(a), "credit": led.credit_of(a)}
                    for a in args.account}
            rows[led.address] = {"balance": led.balance(led.address), "credit": 0}
        else:
            rows = {k.hex(): {"balance": v} for k, v in led.balances().items()}
    if args.json:
        print(json.dumps(rows, sort_keys=True))
    else:
        for who, v in rows.items():
            print(f"{who}\t{v['balance']}" + (f"\tcredit {v['credit']}" if v.get("credit")
                                              else ""))
    return 0


def _decide(args):
    from . import interrogate_cli
    return interrogate_cli.decide(args, _open, _gov_key, UsageError)


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
    committee = None
    if args.member:
        committee = _committee_of(args, _parse_members(args.member, account_first=True))
        if any(m.account is None for m in committee.members):
            raise UsageError("--member: every member needs its Ethereum address")
    elif args.threshold not in (None, 1):
        raise UsageError(f"--threshold {args.threshold}: a committee of one (no --member) has "
                         "k = 1")
    try:
        led = EthereumLedger.deploy(where[0], gov, hash_name, committee=committee,
                                    notice_s=args.notice)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
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


def _serve(args):
    from .service import cli as serve_cli
    return serve_cli.run(args, _open, _gov_key, UsageError)


COMMANDS = {"interrogate": _interrogate, "verify-decision": _verify_decision, "keygen": _keygen,
            "deploy": _deploy, "register-node": _register_node, "register-sla": _register_sla,
            "register-link": _link, "retire-link": _link, "links": _links,
            "nodes": _nodes, "slas": _slas, "anchors": _anchors, "verify": _verify,
            "create": _create, "propose": _propose, "approve": _approve, "pending": _pending,
            "committee": _committee, "dissent": _dissent, "disputes": _disputes,
            "open-dispute": _open_dispute,
            "decide": _decide, "deposit": _deposit, "withdraw": _withdraw,
            "deposits": _deposits, "debts": _debts, "balances": _balances, "serve": _serve}


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
