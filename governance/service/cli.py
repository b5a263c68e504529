"""``beatctl serve --config gov.toml``: the arguments and the process (the work: service.py).

Runs until SIGTERM or SIGINT (exit 0). Exit 2: bad configuration, key or state; 1: the ledger
refused. ``--key`` is this committee member's key (it opens disputes and files its decisions).
"""
import logging
import signal
import sys

__all__ = ["add_parser", "run"]


def add_parser(sub):
    s = sub.add_parser("serve", help="the governance service: watch every SLA's receipts, "
                       "open disputes for violations, interrogate, file this member's decision",
                       description="Evaluate every active SLA per receipt epoch from the "
                       "anchored receipts of the route's first and last devices and sampled "
                       "interrogations; n violating epochs in a row open a dispute, which the "
                       "Interrogation Protocol decides; this member's decision is filed on the "
                       "ledger. Metrics and a read-only JSON API on [service] listen "
                       "(docs/governance-service.md).")
    s.add_argument("--config", required=True, metavar="F",
                   help="the governance configuration with a [service] table")
    return s


def run(args, open_ledger, gov_key, UsageError):
    from beatd import logs

    from .config import ConfigError, load
    from .service import Service
    from .state import State

    stopping = []

    def stop(signum, _frame):
        stopping.append(signum)
        if service is not None:
            logs.event(log, logging.INFO, "stopping", signal=signal.Signals(signum).name)
            service.stop()
    service = log = None
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        svc_cfg, gov_cfg = load(args.config)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    signer = gov_key(args)
    log = logs.setup(svc_cfg.log_format)
    log.setLevel(logging.INFO)
    try:
        state = State(svc_cfg.state_dir)
    except (OSError, ValueError) as exc:
        raise UsageError(f"service.state_dir: {exc}") from None
    with open_ledger(args) as led:
        try:
            service = Service(led, signer, svc_cfg, gov_cfg, state)
            service.start()
        except OSError as exc:
            raise UsageError(f"service.listen {svc_cfg.listen}: {exc.strerror or exc}") from None
        if stopping:
            service.stop()
        print(f"beatctl serve: listening on {svc_cfg.host_port[0]}:{service.http.port}",
              file=sys.stderr, flush=True)
        try:
            service.loop()
        finally:
            service.close()
            state.close()
    return 0
