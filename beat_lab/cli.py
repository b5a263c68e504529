"""``beat-lab``: the BEAT testbed's command line.

    beat-lab [--topology F] [--prefix P] [--state-dir DIR] up|demo|dump NODE|down   (root)
    beat-lab demo --offline          router r2's bundled capture through beatd's pipeline (no root)
    beat-lab gns3 project|appliances the lab topology as a GNS3 project; the appliance files
    beat-lab certs ca|device|governance   the lab CA and the mutual-TLS certificates

The namespace lab needs root and scapy (``pip install 'beat[lab]'``); ``gns3``, ``certs`` and
``demo --offline`` need neither. Nothing heavy is imported before the action runs.
"""
import argparse
import json
import os
import sys
import tempfile

__all__ = ["parser", "main", "format_dump"]

EXIT_USAGE = 2
LEDGERS = ("local", "none", "ethereum")
NEEDS_ROOT = ("up", "demo", "dump", "down")


def parser():
    p = argparse.ArgumentParser(
        prog="beat-lab",
        description="The BEAT testbed: the paper's testbed in network namespaces (root), the "
                    "offline demo, the GNS3 project writer and the lab CA.")
    from beatd import __version__
    p.add_argument("--version", action="version", version=f"beat-lab {__version__}")
    p.add_argument("--topology", metavar="F", default=None,
                   help="lab topology TOML, or a bundled one by name: paper (the default, the "
                        "paper's testbed), line4")
    p.add_argument("--prefix", default="beat-",
                   help="namespace name prefix (default beat-: beat-r1, ...)")
    p.add_argument("--state-dir", metavar="DIR", default=None,
                   help="where configs, stores and logs go (default /run/beat-lab, or "
                        "$BEAT_LAB_STATE)")
    sub = p.add_subparsers(dest="lab_command", required=True, metavar="ACTION")
    up = sub.add_parser("up", help="build the namespaces, start a beatd in each router (root)")
    up.add_argument("--no-daemons", action="store_true", help="network only")
    ledger_help = ("the routers' ledger: local (default: a local ledger in the state dir, every "
                   "router registered), none, or ethereum (a proof-of-authority network the lab "
                   "starts: a ledger node per router and per committee member, over the "
                   "management links; the contract deployed, every router registered)")
    up.add_argument("--ledger", choices=LEDGERS, default="local", help=ledger_help)
    up.add_argument("--sealers", choices=("one", "operators"), default="one",
                    help="--ledger ethereum: who seals the blocks: the governance's node alone "
                         "(default), or every operator's node (docs/ledger.md, \"The lab's "
                         "network\")")
    d = sub.add_parser("demo", help="up (if needed), send known packets and load h1 -> h2, move "
                                    "the route onto the detour, stop the daemons, print what "
                                    "each router recorded (root); --offline: replay router "
                                    "r2's bundled capture instead (no root)")
    d.add_argument("--offline", action="store_true",
                   help="no namespaces: router r2's bundled capture through beatd's pipeline "
                        "into a temporary store (what `make demo` shows without root)")
    d.add_argument("--known", type=int, default=20, help="known packets per phase (default 20)")
    d.add_argument("--flows", type=int, default=1000, help="load flows (default 1000)")
    d.add_argument("--load", type=int, default=20000, help="load packets (default 20000)")
    d.add_argument("--rate", type=float, default=20000.0, help="load packets/s (default 20000)")
    d.add_argument("--down", action="store_true", help="remove the lab at the end")
    d.add_argument("--json", action="store_true", help="print the report as JSON too")
    d.add_argument("--ledger", choices=LEDGERS, default="local", help=ledger_help)
    dp = sub.add_parser("dump", help="a router's stored records (root)",
                        description="The proof records in a router's store, then its counters "
                                    "(a table; --json: beatd dump's JSON lines).")
    dp.add_argument("node", metavar="NODE", help="a router of the topology (r1, ...)")
    dp.add_argument("--json", action="store_true",
                    help="one JSON object per proof record (t_ns, prev_id, next_id, pd, ft, fp), "
                         "then one {\"summary\": ...} line, as `beatd dump --json`")
    sub.add_parser("down", help="stop the daemons, delete the namespaces and the state (root)")

    from . import ca, gns3
    g = sub.add_parser("gns3", help="the lab topology as a GNS3 project; the appliances",
                       description="GNS3: the BEAT images' appliances and a lab topology as a "
                                   "GNS3 project (gns3/README.md).")
    gns3.add_arguments(g)
    c = sub.add_parser("certs", help="the lab CA and the mutual-TLS certificates",
                       description="The lab CA and the certificates of the Interrogation "
                                   "service (ECDSA P-256; keys 0600).")
    ca.add_arguments(c)
    return p


def _fail(msg):
    print(f"beat-lab: {msg}", file=sys.stderr)
    return EXIT_USAGE


def _short(n):
    from fastpath import NONE
    return "NONE" if n == NONE else str(n)


def format_dump(router, node_id, dumped):
    """The human form of ``beat-lab dump NODE``: one line per proof record (t_ns, prev -> next,
    PD, FT, FP), then the store's counters per (prev_id, next_id) and a closing line."""
    lines = [f"# {router} (node {node_id}): t_ns prev_id -> next_id pd ft fp"]
    for r in dumped["records"]:
        lines.append(f"{r['t_ns']} {_short(r['prev_id']):>4} -> {_short(r['next_id']):<4} "
                     f"{r['pd']} {r['ft']} {r['fp']}")
    summary = next((o["summary"] for o in dumped["other"]
                    if isinstance(o, dict) and "summary" in o), {})
    counters = summary.get("counters") or []
    if counters:
        lines.append(f"# counters of {router}: prev_id -> next_id packets bytes")
        for c in counters:
            lines.append(f"#   {_short(c['prev_id']):>4} -> {_short(c['next_id']):<4} "
                         f"{c['packets']:8} {c['bytes']:10}")
    lines.append(f"# {len(dumped['records'])} records in {summary.get('store', '?')} "
                 f"({router}, node {node_id})")
    return "\n".join(lines) + "\n"


def _committee_lines(lab):
    """What ``beat-lab up`` says about the committee and the money."""
    money = lab.money
    keys = os.path.dirname(lab.member_key_path(1))
    return (f"committee: {lab.committee_n} member organisations, k = {lab.committee_k} (keys in "
            f"{keys}: m1..m{lab.committee_n}, .ed25519 and .eth); every router (with its "
            f"operator), every router-router link and SLA {lab.sla().sla_id} (price "
            f"{money.fmt(money.price)}, penalty {money.fmt(money.penalty)} per faulty device) "
            f"proposed by member 1, approved by member 2; each operator deposited "
            f"{money.fmt(money.deposit)} per router (operator keys in "
            f"{os.path.dirname(lab.operator_key_path(lab.topo.routers[0].name))}, the tenant's "
            f"{lab.tenant_key_path})")


def _write(text):
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:     # `beat-lab dump r1 | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _lab(args):
    from .data import DataError
    from .lab import Lab, LabError
    from .netns import NetError
    from .topology import TopologyError

    if os.geteuid() != 0:
        hint = " (without root: beat-lab demo --offline)" if args.lab_command == "demo" else ""
        return _fail(f"{args.lab_command}: needs root (network namespaces){hint}")
    try:
        lab = Lab(args.topology, prefix=args.prefix, state_root=args.state_dir,
                  ledger=getattr(args, "ledger", "local"),
                  chain_sealers=getattr(args, "sealers", None) or "one")
        cmd = args.lab_command
        if cmd == "up":
            lab.up(daemons=not args.no_daemons)
            print(f"lab {lab.topo.name} up: namespaces {' '.join(lab.net.namespaces())}; "
                  f"state in {lab.state_dir}")
            if lab.ledger == "local":
                print(f"ledger: local:{lab.ledger_path}")
            elif lab.ledger == "ethereum":
                print(f"ledger: {lab.ledger_spec} in netns {lab.net.ledger_ns} (chain log "
                      f"{lab.chain_log})\n"
                      f"  ip netns exec {lab.net.ledger_ns} "
                      f"{' '.join(lab.beatctl_argv('anchors')[4:])}")
            if lab.ledger in ("local", "ethereum"):
                print(_committee_lines(lab))
        elif cmd == "demo":
            from .traffic import require_scapy
            require_scapy()         # before anything is built: the extra it needs is named
            try:
                # with --down the state dir goes: the dispute's report and picture stay here
                report_dir = tempfile.mkdtemp(prefix="beat-dispute-") if args.down else None
                report = lab.demo(known=args.known, flows=args.flows, load_packets=args.load,
                                  rate=args.rate, report_dir=report_dir)
                if args.json:
                    print(json.dumps(report, default=str))
            finally:
                if args.down:
                    lab.down()
        elif cmd == "dump":
            routers = [r.name for r in lab.topo.routers]
            if args.node not in routers:
                return _fail(f"dump: {args.node!r} is not a router of {lab.topo.name} "
                             f"({', '.join(routers)})")
            d = lab.dump(args.node)
            if args.json:
                _write("".join(json.dumps(o, separators=(",", ":")) + "\n"
                               for o in d["records"] + d["other"]))
            else:
                _write(format_dump(args.node, lab.topo.node(args.node).node_id, d))
        elif cmd == "down":
            lab.down()
            print(f"lab {lab.topo.name} down")
        return 0
    except (DataError, LabError, NetError, TopologyError) as exc:
        return _fail(str(exc))
    except ImportError as exc:      # an extra not installed (scapy: beat[lab]); the message says
        return _fail(f"{args.lab_command}: {exc}")


def main(argv=None):
    """Entry point of the ``beat-lab`` console script; returns the exit code."""
    args = parser().parse_args(argv)
    cmd = args.lab_command
    if cmd == "gns3":
        from . import gns3
        return gns3.main(args)
    if cmd == "certs":
        from . import ca
        return ca.main(args)
    if cmd == "demo" and args.offline:
        from . import demo
        return demo.main()
    return _lab(args)


if __name__ == "__main__":
    sys.exit(main())
