"""The ``beatd`` command line: ``beatd replay FILE --node-id N [...]`` (more subcommands later).

Errors a user can fix (a missing or bad capture, a bad configuration, a store that belongs to another
node or is full) print one line on stderr naming the thing and exit with code 2, no traceback.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

from fastpath.output import HASH_NAMES

from . import __version__
from .capfile import CaptureError
from .config import Config, ConfigError, load

EXIT_USAGE = 2
ENV_BATCH = "BEAT_REPLAY_BATCH"


def _parser():
    p = argparse.ArgumentParser(prog="beatd", description="BEAT router daemon")
    p.add_argument("--version", action="version", version=f"beatd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser("replay", help="run a pcap/pcapng file through the fast path into a store",
                       description="Replay a capture file through the fast path and the store, "
                                   "as the live daemon would, and print a summary.")
    r.add_argument("file", metavar="FILE", help="pcap or pcapng capture")
    r.add_argument("--node-id", type=int, help="this device's node_id (overrides the config)")
    r.add_argument("--config", metavar="F", help="beatd TOML configuration")
    r.add_argument("--store", metavar="DIR",
                   help="store directory (default: a temporary one, removed at exit); an existing "
                        "store of the same node is resumed")
    r.add_argument("--json", action="store_true",
                   help="one JSON object per proof record, then one {\"summary\": ...} line")
    r.add_argument("--hash", choices=HASH_NAMES, help="hash (overrides the config)")
    r.add_argument("--batch-frames", type=int, default=None, metavar="N",
                   help=f"frames per batch and store transaction (default 4096, or ${ENV_BATCH})")
    return p


def _fail(msg):
    print(f"beatd: {msg}", file=sys.stderr)
    return EXIT_USAGE


def _replay(args):
    from .replay import format_summary, json_records, replay
    from .store import Store, StoreError

    try:
        cfg = load(args.config) if args.config else Config()
        changes = {}
        if args.node_id is not None:
            changes["node_id"] = args.node_id
        if args.hash:
            changes["hash"] = args.hash
        cfg = cfg.replace(**changes)
        if cfg.node_id is None:
            return _fail("replay: node_id: not set (give --node-id or node_id in --config)")
        batch = args.batch_frames or int(os.environ.get(ENV_BATCH) or 4096)
        if batch < 1:
            return _fail(f"replay: --batch-frames: {batch} must be at least 1")
    except ConfigError as exc:
        return _fail(str(exc))
    except ValueError as exc:
        return _fail(f"{ENV_BATCH}: {exc}")
    if not os.path.exists(args.file):
        return _fail(f"{args.file}: no such file")

    tmp = None
    store_dir = args.store
    if store_dir is None:
        tmp = store_dir = tempfile.mkdtemp(prefix="beatd-replay-")
    out = sys.stdout
    try:
        store = Store(store_dir, **{k: v for k, v in cfg.store_kwargs().items() if k != "path"})
        try:
            emit = None
            if args.json:
                def emit(output):
                    rows = json_records(output, cfg.node_id, cfg.hash)
                    if rows:
                        out.write("".join(json.dumps(r, separators=(",", ":")) + "\n"
                                          for r in rows))
            summary = replay(args.file, cfg, store, batch_frames=batch, emit=emit)
        finally:
            store.close()
        if tmp is not None:
            summary["store"] = None
        if args.json:
            out.write(json.dumps({"summary": summary}, separators=(",", ":")) + "\n")
        else:
            out.write(format_summary(summary) + "\n")
        out.flush()
    except (CaptureError, ConfigError, StoreError) as exc:
        return _fail(str(exc))
    except BrokenPipeError:
        # `beatd replay --json | head`: not an error; keep Python's exit-time flush quiet too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def main(argv=None):
    """Entry point of the ``beatd`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "replay":
        return _replay(args)
    return _fail(f"unknown command {args.command}")  # pragma: no cover (argparse rejects it)


if __name__ == "__main__":
    sys.exit(main())
