"""``beatd lab up|demo|dump NODE|down [--topology F]``: the namespace lab (needs root).

``beatd/cli.py`` adds the ``lab`` subcommand with ``add_arguments(parser)`` and calls ``main(args)``.
"""
import argparse
import json
import os
import sys
import tempfile

__all__ = ["add_arguments", "main"]


def add_arguments(parser):
    parser.add_argument("--topology", metavar="F", default=None,
                        help="lab topology TOML (default: topologies/paper.toml)")
    parser.add_argument("--prefix", default="beat-",
                        help="namespace name prefix (default beat-: beat-r1, ...)")
    parser.add_argument("--state-dir", metavar="DIR", default=None,
                        help="where configs, stores and logs go (default /run/beat-lab, or "
                             "$BEAT_LAB_STATE)")
    sub = parser.add_subparsers(dest="lab_command", required=True, metavar="ACTION")
    up = sub.add_parser("up", help="build the namespaces, start a beatd in each router")
    up.add_argument("--no-daemons", action="store_true", help="network only")
    ledger_help = ("the routers' ledger: local (default: a local ledger in the state dir, every "
                   "router registered), none, or ethereum (a ganache chain the lab starts in "
                   "a ledger namespace, on a management link to every router; the contract "
                   "deployed, every router registered)")
    up.add_argument("--ledger", choices=("local", "none", "ethereum"), default="local",
                    help=ledger_help)
    d = sub.add_parser("demo", help="up (if needed), send known packets and load h1 -> h2, move "
                                    "the route onto the detour, stop the daemons, print what "
                                    "each router recorded")
    d.add_argument("--known", type=int, default=20, help="known packets per phase (default 20)")
    d.add_argument("--flows", type=int, default=1000, help="load flows (default 1000)")
    d.add_argument("--load", type=int, default=20000, help="load packets (default 20000)")
    d.add_argument("--rate", type=float, default=20000.0, help="load packets/s (default 20000)")
    d.add_argument("--down", action="store_true", help="remove the lab at the end")
    d.add_argument("--json", action="store_true", help="print the report as JSON too")
    d.add_argument("--ledger", choices=("local", "none", "ethereum"), default="local",
                   help=ledger_help)
    dp = sub.add_parser("dump", help="a router's stored records (beatd dump --json)")
    dp.add_argument("node", metavar="NODE")
    sub.add_parser("down", help="stop the daemons, delete the namespaces and the state")
    return parser


def main(args):
    from .lab import Lab, LabError
    from .netns import NetError
    from .topology import TopologyError

    if os.geteuid() != 0:
        print("beatd lab: needs root (network namespaces)", file=sys.stderr)
        return 2
    try:
        lab = Lab(args.topology, prefix=args.prefix, state_root=args.state_dir,
                  ledger=getattr(args, "ledger", "local"))
        cmd = args.lab_command
        if cmd == "up":
            lab.up(daemons=not args.no_daemons)
            print(f"lab {lab.topo.name} up: namespaces {' '.join(lab.net.namespaces())}; "
                  f"state in {lab.state_dir}")
            if lab.ledger == "local":
                print(f"ledger: local:{lab.ledger_path} (governance key "
                      f"{lab.governance_key_path}); every router registered with its owner, "
                      "every router-router link registered")
            elif lab.ledger == "ethereum":
                print(f"ledger: {lab.ledger_spec} in netns {lab.net.ledger_ns} (governance key "
                      f"{lab.governance_eth_path}, chain log {lab.chain_log}); every router "
                      "registered with its owner, every router-router link registered\n"
                      f"  ip netns exec {lab.net.ledger_ns} "
                      f"{' '.join(lab.beatctl_argv('anchors')[4:])}")
        elif cmd == "demo":
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
            if args.node not in lab.topo.nodes or lab.topo.node(args.node).kind != "router":
                print(f"beatd lab dump: {args.node!r} is not a router of {lab.topo.name} "
                      f"({', '.join(r.name for r in lab.topo.routers)})", file=sys.stderr)
                return 2
            d = lab.dump(args.node)
            try:
                for obj in d["records"] + d["other"]:
                    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
                sys.stdout.flush()
            except BrokenPipeError:     # `beatd lab dump r1 | head`
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        elif cmd == "down":
            lab.down()
            print(f"lab {lab.topo.name} down")
        return 0
    except (LabError, NetError, TopologyError) as exc:
        print(f"beatd lab: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # python -m beatd.lab.cli ... (until beatd/cli.py dispatches to it)
    p = argparse.ArgumentParser(prog="beatd lab")
    add_arguments(p)
    sys.exit(main(p.parse_args()))
