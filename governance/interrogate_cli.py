"""``beatctl interrogate``: the arguments and the output (the work: governance/interrogate.py).

Exit codes: 0 no device at fault (the decision recorded); 3 a device at fault (printed and
recorded); 4 nothing decided: a device stayed unreachable (the report is printed, the dispute
left open: interrogate again) or the window is not judgeable (older than the threshold time, no
topology); 2 bad input (arguments, files, keys, an SLA that is not on the ledger); 1 the ledger
refused.
"""
import json
import os
import sys

EXIT_FAULT = 3
EXIT_UNDECIDED = 4


def add_parser(sub):
    i = sub.add_parser("interrogate", help="run the Interrogation Protocol for an SLA and a "
                       "time window; record the verdict on the ledger",
                       description="Ask every router of the SLA's agreed route and every "
                       "registered neighbour of one for signed evidence, check it against the "
                       "anchors, follow every packet and name a device at fault only if it is at "
                       "fault in every explanation of the evidence with at most F lying owners "
                       "(docs/threat-model.md). Exit 0: nobody at fault; 3: a device at fault; "
                       "4: nothing decided (a device unreachable, or the window not judgeable).")
    i.add_argument("--sla", type=int, required=True, metavar="ID")
    i.add_argument("--from", dest="from_", required=True, metavar="T",
                   help="window start: ns since the epoch, ISO 8601, now or now-60s")
    i.add_argument("--to", required=True, metavar="T", help="window end (inclusive), as --from")
    i.add_argument("--config", required=True, metavar="F",
                   help="the governance's TOML: [interrogation] ca/cert/key, [[endpoints]]")
    i.add_argument("--json", metavar="F", help="write the report (evidence behind every "
                   "verdict) as JSON to F ('-': stdout, instead of the table)")
    i.add_argument("--svg", metavar="F", help="write the picture (agreed vs observed route)")
    i.add_argument("--dispute", type=int, metavar="ID",
                   help="decide this dispute (already opened, e.g. by the tenant); default: open "
                        "one")
    i.add_argument("--no-record", action="store_true",
                   help="judge only: record nothing on the ledger (no --key needed)")
    i.add_argument("--max-hop-delay-ms", type=float, default=1000.0, metavar="MS",
                   help="the most one hop may take (default 1000)")
    i.add_argument("--receipt-epoch-ms", type=int, default=1000, metavar="MS",
                   help="the domain's receipt epoch (governance.receipt_epoch_ms, default 1000)")
    i.add_argument("--skew-ms", type=float, default=50.0, metavar="MS",
                   help="the clock difference tolerated between neighbours (default 50)")
    i.add_argument("--f", type=int, default=None, metavar="F",
                   help="how many owners may lie together (default: the configuration's "
                        "[judgement] f, else 1)")
    i.add_argument("--evidence", metavar="DIR",
                   help="keep every signed chunk the devices answered in DIR (a new directory): "
                        "the evidence digest on the ledger commits to them, and beatctl "
                        "verify-decision re-checks the decision from them")
    return i


def add_verify_parser(sub):
    v = sub.add_parser("verify-decision", help="re-check a recorded decision from its evidence "
                       "archive (exit 0 identical, 3 different)",
                       description="Read the evidence archive of an interrogation (beatctl "
                       "interrogate --evidence DIR), check every chunk's signature with the key "
                       "registered on the ledger and every answer against the anchors, judge "
                       "again with the recorded parameters, and compare the evidence digest, "
                       "the verdict digest and the faulty devices with the dispute's decision "
                       "on the ledger. Exit 0: identical; 3: different; 2: bad input.")
    v.add_argument("dispute", type=int, metavar="DISPUTE")
    v.add_argument("--evidence", required=True, metavar="DIR", help="the evidence archive")
    v.add_argument("--json", action="store_true", help="JSON output")
    return v


def run(args, open_ledger, gov_key, UsageError):
    from . import interrogate as itg
    from . import report

    try:
        cfg = itg.load_config(args.config)
    except itg.ConfigError as exc:
        raise UsageError(str(exc)) from None
    try:
        from_ns = itg.parse_time(args.from_, what="--from")
        to_ns = itg.parse_time(args.to, what="--to")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if to_ns < from_ns:
        raise UsageError(f"--to {args.to} ({to_ns}) is before --from {args.from_} ({from_ns})")
    if args.f is not None and args.f < 0:
        raise UsageError(f"--f {args.f}: must be 0 or more")
    if args.skew_ms < 0 or args.max_hop_delay_ms < 0:
        raise UsageError("--skew-ms and --max-hop-delay-ms must be 0 or more")
    signer = None if args.no_record else gov_key(args)
    with open_ledger(args) as led:
        if args.evidence and os.path.isdir(args.evidence) and os.listdir(args.evidence):
            raise UsageError(f"--evidence {args.evidence}: exists and is not empty; give a new "
                             "directory")
        try:
            it = itg.interrogate(
                led, args.sla, from_ns, to_ns, cfg,
                receipt_epoch_ns=args.receipt_epoch_ms * 1_000_000,
                max_hop_delay_ns=int(args.max_hop_delay_ms * 1e6),
                skew_ns=int(args.skew_ms * 1e6), f=args.f)
        except LookupError as exc:
            raise UsageError(str(exc)) from None
        except itg.NotJudgeable as exc:
            print(f"beatctl: interrogate: not judgeable: {exc}", file=sys.stderr)
            return EXIT_UNDECIDED
        j, evidence, info = it.judgement, it.evidence, it.info
        data = report.to_dict(j)
        digest = it.evidence_digest
        if args.evidence:
            try:
                it.write_evidence(args.evidence)
            except itg.archive.ArchiveError as exc:
                raise UsageError(str(exc)) from None
        decision = None
        unreachable = sorted(n for n, ev in evidence.items() if ev.status == "unreachable")
        if signer is not None and not unreachable:
            decision = itg.record_decision(led, j, digest, signer, args.dispute)
    names = cfg.names or None
    data["interrogation"] = {str(n): v for n, v in info.items()}
    data["evidence_digest"] = digest.hex()
    data["judgement_digest"] = report.evidence_digest(j).hex()
    if decision is not None:
        data["decision"] = decision
    if args.svg:
        _write(args.svg, report.svg(j, names), UsageError)
    if args.json == "-":
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        if args.json:
            _write(args.json, json.dumps(data, indent=2, sort_keys=True) + "\n", UsageError)
        print(report.text_table(j, names, digest))
        for n, ev in sorted(evidence.items()):
            if not ev.answered:
                print(f"node {n}: no evidence: {ev.error}")
        if decision is not None:
            print(f"ledger: dispute {decision['dispute_id']} {decision['state']}: faulty "
                  f"{decision['faulty'] or 'none'}, verdict digest "
                  f"{decision['verdict_digest'][:16]}..., penalty {decision['penalty']}")
    if not args.evidence:
        print("beatctl: interrogate: the signed chunks are not kept (--evidence DIR keeps them "
              "for beatctl verify-decision)", file=sys.stderr)
    if unreachable:
        print(f"beatctl: interrogate: node(s) {', '.join(map(str, unreachable))} unreachable "
              f"after the retries: nothing decided{' or recorded' if signer else ''}; "
              "interrogate again", file=sys.stderr)
        return EXIT_UNDECIDED
    return 0 if not j.faulty else EXIT_FAULT


def _write(path, text, UsageError):
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    if os.environ.get("BEAT_VERBOSE"):
        print(f"wrote {path}", file=sys.stderr)


def _rejudge(args, led, UsageError):
    """The archive at ``--evidence`` judged again against the ledger (deterministic): the dispute
    on the ledger, the judgement, its verdict digest and the faulty devices of the agreed route
    (ascending). Shared by ``decide`` and ``verify-decision``."""
    from . import archive
    from . import interrogate as itg

    try:
        arch = archive.read(args.evidence)
    except archive.ArchiveError as exc:
        raise UsageError(str(exc)) from None
    d = led.get_dispute(args.dispute)
    if d is None:
        raise UsageError(f"dispute {args.dispute}: not on the ledger")
    try:
        j, _ = itg.replay(arch, led)
    except (LookupError, ValueError, archive.ArchiveError) as exc:
        raise UsageError(f"{args.evidence}: {exc}") from None
    vd = itg.verdict_digest(j, arch.digest)
    route = set(j.sla.route)
    return arch, d, j, vd, sorted(n for n in j.faulty if n in route)


def _undecidable(j):
    """The devices the judgement could not judge (no answer, or none that is evidence): as
    ``interrogate`` leaves the dispute open then, no decision may rest on such an archive."""
    return sorted(n for n, x in j.devices.items() if x.verdict == "UNREACHABLE")


def decide(args, open_ledger, gov_key, UsageError):
    """``beatctl decide DISPUTE --evidence DIR``: judge the archived evidence again (as
    verify-decision: deterministic) and approve that decision as this committee member."""
    signer = gov_key(args)
    with open_ledger(args) as led:
        arch, d, j, vd, faulty = _rejudge(args, led, UsageError)
        if arch.manifest["sla_id"] != d.sla_id:
            raise UsageError(f"{args.evidence}: evidence of sla {arch.manifest['sla_id']}, "
                             f"dispute {args.dispute} is on sla {d.sla_id}")
        unjudged = _undecidable(j)
        if unjudged:
            print(f"beatctl: decide: dispute {args.dispute}: nodes {unjudged} are not judged in "
                  f"{args.evidence} (no answer that is evidence): nothing approved, the dispute "
                  "stays open; interrogate again", file=sys.stderr)
            return EXIT_UNDECIDED
        d = led.approve_decision(args.dispute, arch.digest, vd, faulty, signer=signer)
        votes = led.dispute_votes(args.dispute)
        k = led.committee().k
    out = {"dispute": args.dispute, "evidence_digest": arch.digest.hex(),
           "verdict_digest": vd.hex(), "faulty": faulty, "state": d.state,
           "approvals": sum(1 for v in votes if v.verdict_digest == vd
                            and v.evidence_digest == arch.digest), "k": k,
           "penalty": d.penalty}
    if args.json:
        print(json.dumps(out, sort_keys=True))
    else:
        print(f"dispute {args.dispute}: approved verdict {vd.hex()[:16]}..., faulty "
              f"{faulty or 'none'}: {out['approvals']} of {k} approvals, {d.state}")
    return 0


def verify_decision(args, open_ledger, UsageError):
    """``beatctl verify-decision DISPUTE --evidence DIR`` (see ``add_verify_parser``)."""
    with open_ledger(args) as led:
        arch, d, j, vd, faulty = _rejudge(args, led, UsageError)
    checks = {
        "sla": (arch.manifest["sla_id"], d.sla_id),
        "window": ([j.from_ns, j.to_ns], [d.from_ns, d.to_ns]),
        "evidence_digest": (arch.digest.hex(), (d.evidence_digest or b"").hex()),
        "verdict_digest": (vd.hex(), (d.verdict_digest or b"").hex()),
        "faulty": (sorted(faulty), sorted(d.faulty or ())),
        # a decision needs every device judged (as interrogate): none left unjudged
        "unjudged": (_undecidable(j), []),
    }
    differ = [k for k, (mine, ledger) in checks.items() if mine != ledger]
    if args.json:
        print(json.dumps({"dispute": args.dispute, "identical": not differ, "differ": differ,
                          "recomputed": {k: v[0] for k, v in checks.items()},
                          "ledger": {k: v[1] for k, v in checks.items()},
                          "verdicts": {str(n): x.verdict for n, x in j.devices.items()}},
                         indent=2, sort_keys=True))
    else:
        for k, (mine, ledger) in checks.items():
            print(f"{k:16} {'same' if mine == ledger else 'DIFFERENT'}: recomputed {mine}, "
                  f"ledger {ledger}")
        print("verdicts: " + ", ".join(f"node {n} {x.verdict}" for n, x in j.devices.items()))
        print(f"dispute {args.dispute}: " + ("the decision is what the archived evidence gives"
                                             if not differ else
                                             f"DIFFERENT ({', '.join(differ)})"))
    return 0 if not differ else EXIT_FAULT
