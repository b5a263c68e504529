"""The governance service's speed (issue 16, "Speed"): one service watching 1,000 SLAs over 100
routers, each receipt epoch evaluated within one second of its anchors landing.

    python -m benchmarks.service [--slas 1000 --routers 100 --epochs 30]

The domain (benchmarks/service_domain.py) is simulated on loopback but real where the service
looks: ``--device-procs`` processes serve the routers, each router with its own LMDB store written
by the native fast path, its own Ed25519 key, its anchors (real Merkle roots) on one local ledger
and a real Interrogation server (gRPC over mutual TLS). Every SLA has its own flow over a route of
``--route-len`` adjacent routers, ``--packets`` packets per epoch. After each 1 s epoch every
router anchors what it saw of it (anchor period 1 s, as the lab's).

The service is the real ``governance.service.Service`` in its own process (the ``[service]`` table
of a real configuration file, its HTTP port, watcher and evaluator threads), its ``evaluate_sla``
observed: when each SLA's epoch was evaluated, with what result, and the process's CPU time then.

Printed and written (benchmarks/results/service-latest.json), over the ``--epochs`` epochs after
``--warmup``: per epoch, the latency from the last anchor of that epoch landing on the ledger (the
anchors holding its receipts) to every SLA's epoch evaluated (median, p99, max); the service's
CPU time per SLA per epoch (its process, every thread, between the first and the last measured
epoch's completion); the epochs left unevaluated or unknown (0 when every device is healthy).
Target: every epoch within 1 s.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from benchmarks.results_file import cpu_model, write_results
from benchmarks import service_domain as dom

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
L = dom.L
TARGET_S = 1.0


# -- the service's process -------------------------------------------------------------------------

def service_process(workdir):
    """Runs the service until SIGTERM, then writes ``service-evals.json``."""
    from governance.service.config import load
    from governance.service.service import Service
    from governance.service.state import State
    from ledger_client.keys import DeviceKey
    from ledger_client.local import LocalLedger
    from beatd import logs

    svc_cfg, gov_cfg = load(os.path.join(workdir, "governance.toml"))
    log = logs.setup(svc_cfg.log_format)
    log.setLevel("INFO")
    signer = DeviceKey.load(os.path.join(workdir, "governance.key"))
    led = LocalLedger(os.path.join(workdir, "ledger.mdb"), hash_name=dom.H)
    svc = Service(led, signer, svc_cfg, gov_cfg, State(svc_cfg.state_dir))
    evals = []                            # [t_ns, cpu_s, sla, [[epoch, result, in, out, ppm]]]
    real = svc.evaluate_sla

    def observed(sla, view, *args, **kw):
        out = real(sla, view, *args, **kw)
        if out:
            evals.append([time.time_ns(), time.process_time(), sla.sla_id,
                          [[r.epoch_ns, r.result, r.ingress, r.egress, r.loss_ppm] for r in out]])
        return out
    svc.evaluate_sla = observed
    held = [0]                            # the rounds' device requests (one answer each)
    real_hold = svc._hold

    def counted_hold(*args, **kw):
        held[0] += 1
        return real_hold(*args, **kw)
    svc._hold = counted_hold
    prof = _profile(svc, os.environ.get("BEAT_SERVICE_PROFILE"))
    signal.signal(signal.SIGTERM, lambda *_: svc.stop())
    cpu0 = time.process_time()
    svc.start()
    try:
        svc.loop()
    finally:
        svc.close()
        snap = svc.state.snapshot()
        tmp = os.path.join(workdir, "service-evals.json.tmp")
        with open(tmp, "w") as f:
            json.dump({"evals": evals, "cpu_start_s": cpu0, "cpu_end_s": time.process_time(),
                       "rounds": svc.rounds, "device_requests": held[0], "refused": sum(svc.counters.refused.values()),
                       "fetch_errors": sum(svc.counters.fetch_errors.values()),
                       "disputes": len(snap["disputes"])}, f)
        os.replace(tmp, os.path.join(workdir, "service-evals.json"))
        if prof is not None:
            prof()
        led.close()


def _profile(svc, path):
    """``BEAT_SERVICE_PROFILE=FILE``: the service's CPU profiled in every thread (one cProfile
    per thread, on during its rounds, evaluations, device requests and ledger polls; merged into
    FILE as pstats at the end). Returns the function that writes it, or None."""
    if not path:
        return None
    import cProfile
    import pstats
    import threading
    lock = threading.Lock()
    profilers = []
    mine = threading.local()          # one profiler per thread, enabled around the outer call

    def wrap(obj, name):
        real = getattr(obj, name)

        def profiled(*a, **kw):
            p = getattr(mine, "p", None)
            if p is None:
                p = mine.p = cProfile.Profile(time.thread_time)    # this thread's CPU
                mine.depth = 0
                with lock:
                    profilers.append(p)
            mine.depth += 1
            if mine.depth == 1:
                p.enable()
            try:
                return real(*a, **kw)
            finally:
                mine.depth -= 1
                if mine.depth == 0:
                    p.disable()
        setattr(obj, name, profiled)
    for name in ("round", "_evaluate", "_hold"):
        wrap(svc, name)
    wrap(svc.watcher, "poll_once")

    def write():
        with lock:
            if profilers:
                st = pstats.Stats(profilers[0])
                for p in profilers[1:]:
                    st.add(p)
                st.dump_stats(path)
    return write


# -- the harness -------------------------------------------------------------------------------------

def _spawn(argv, log_path, cpus=None):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    pre = ["taskset", "-c", cpus] if cpus else []
    with open(log_path, "ab") as log:
        return subprocess.Popen(pre + [sys.executable] + argv, cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)


def _stop(proc, timeout=30):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _cpu_of(pid):
    """utime + stime of a live process (s)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return None
    return xs[min(len(xs) - 1, max(0, int(round(q * len(xs) + 0.5)) - 1))]


def prefill(state_dir, p, epochs, before_ns):
    """The service's history as after ``epochs`` epochs of every SLA (its steady state: the
    series and counted receipts ``series_epochs`` deep), the newest ending before ``before_ns``;
    the state file holds no SLA yet (the service's first start)."""
    from governance.service.state import State
    from governance.service.monitor import EpochResult
    st = State(state_dir)
    st.keep(epochs, L)
    first = (before_ns // L) * L - epochs * L
    R = bytes(range(32)).hex()
    try:
        for i in range(epochs):
            e = first + i * L
            for sla in range(1, p["slas"] + 1):
                route = p["routes"][str(sla)]
                st.record(sla, EpochResult(e, "ok", p["packets"], p["packets"], 0, 0, 1).to_dict(),
                          [(route[0], 1, e, R), (route[-1], 2, e, R)])
            st.save()
    finally:
        st.close()


def run(slas=1000, routers=100, route_len=4, packets=10, epochs=30, warmup=5, device_procs=2,
        poll_s=0.5, drops=None, consecutive=3, workdir=None, keep=False, service_cpus=None,
        device_cpus=None, settle_s=6.0, history_epochs=0, log=print):
    """Builds the domain, runs devices and service, returns the measurements (a dict)."""
    own = workdir is None
    if own:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        workdir = tempfile.mkdtemp(prefix="beat-svc-bench-", dir=base)
    os.makedirs(os.path.join(workdir, "stores"), exist_ok=True)
    procs = []
    try:
        t0 = time.monotonic()
        p = dom.plan(slas, routers, route_len, packets, drops)
        dom.build(workdir, p)
        log(f"domain built in {time.monotonic() - t0:.1f} s: {slas} SLAs over {routers} routers "
            f"(routes of {route_len}), {packets} packets per SLA per epoch, in {workdir}")
        if history_epochs:
            t0 = time.monotonic()
            prefill(os.path.join(workdir, "state"), p, history_epochs, time.time_ns() - 60 * L)
            log(f"history prefilled in {time.monotonic() - t0:.1f} s: {history_epochs} epochs "
                f"of every SLA (the service's steady state)")
        devs = [_spawn(["-m", "benchmarks.service_domain", workdir, str(i), str(device_procs)],
                       os.path.join(workdir, f"devices-{i}.log"), device_cpus)
                for i in range(device_procs)]
        procs += devs
        ports = {}
        end = time.monotonic() + 120
        while len(ports) < len(p["nodes"]):
            if time.monotonic() > end or any(d.poll() is not None for d in devs):
                raise RuntimeError(f"the device processes did not start (see {workdir}/devices-*.log)")
            ports = {}
            for i in range(device_procs):
                try:
                    with open(os.path.join(workdir, f"ports-{i}.json")) as f:
                        ports.update({int(k): v for k, v in json.load(f).items()})
                except FileNotFoundError:
                    pass
            time.sleep(0.2)
        dom.governance_config(workdir, ports, {
            "state_dir": os.path.join(workdir, "state"), "listen": "127.0.0.1:0",
            "poll_s": poll_s, "consecutive": consecutive, "delay_sample_every_s": 0,
            "log_format": "json", "series_epochs": max(history_epochs, 1) if history_epochs
            else 600})
        svc = _spawn(["-m", "benchmarks.service", "--service-process", workdir],
                     os.path.join(workdir, "service.log"), service_cpus)
        procs.append(svc)
        started = time.time_ns()
        run_s = warmup + epochs + 2 + settle_s
        log(f"devices up ({device_procs} processes); the service runs for {run_s} s ...")
        deadline = time.monotonic() + run_s
        while time.monotonic() < deadline:
            if svc.poll() is not None:
                raise RuntimeError(f"the service stopped (see {workdir}/service.log)")
            time.sleep(0.5)
        dev_cpu = sum(_cpu_of(d.pid) or 0 for d in devs)
        _stop(svc)
        for d in devs:
            _stop(d)
        with open(os.path.join(workdir, "service-evals.json")) as f:
            ev = json.load(f)
        anchors = []
        for i in range(device_procs):
            with open(os.path.join(workdir, f"anchors-{i}.jsonl")) as f:
                anchors += [json.loads(line) for line in f if line.strip()]
        out = analyse(p, ev, anchors, started, warmup, epochs, dev_cpu, workdir, settle_s)
        return out
    finally:
        for pr in procs:
            _stop(pr)
        if own and not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def analyse(p, ev, anchors, started, warmup, epochs, dev_cpu, workdir, settle_s):
    landed = {}                                  # epoch -> last landing (ns)
    for a in anchors:
        landed[a["epoch_ns"]] = max(landed.get(a["epoch_ns"], 0), a["landed_ns"])
    done, cpu_at, results = {}, {}, {}           # epoch -> last completion; cpu then; per sla
    for t, cpu, sla, rs in ev["evals"]:
        for e, result, n_in, n_out, ppm in rs:
            results.setdefault(e, {})[sla] = dict(result=result, ingress=n_in, egress=n_out,
                                                  loss_ppm=ppm, t_ns=t)
            if t >= done.get(e, 0):
                done[e], cpu_at[e] = t, cpu
    first_service_epoch = ((started // L) + 1) * L       # the first whole epoch it watched
    measured = [first_service_epoch + (warmup + i) * L for i in range(epochs)]
    rows, unevaluated, unknown = [], 0, 0
    for e in measured:
        got = results.get(e, {})
        missing = p["slas"] - len(got)
        unk = sum(1 for r in got.values() if r["result"] == "unknown")
        unevaluated += missing
        unknown += unk
        lat = (done[e] - landed[e]) / 1e9 if (e in done and e in landed and not missing) else None
        rows.append(dict(epoch_ns=e, anchors_landed_ns=landed.get(e), evaluated_ns=done.get(e),
                         latency_s=lat, unevaluated=missing, unknown=unk))
    lats = [r["latency_s"] for r in rows if r["latency_s"] is not None]
    have = [e for e in measured if e in cpu_at and results.get(e) and
            len(results[e]) == p["slas"]]
    # every SLA-epoch evaluated (also when it cannot keep up): the CPU between the first and the
    # last evaluation, over the evaluations in between
    evs = sorted(ev["evals"])
    n_eval = sum(len(x[3]) for x in evs[1:])
    cpu_us_evaluated = ((evs[-1][1] - evs[0][1]) / n_eval * 1e6) if n_eval else None
    cpu_us = None
    if len(have) >= 2:
        n_epochs = (have[-1] - have[0]) // L
        cpu_us = (cpu_at[have[-1]] - cpu_at[have[0]]) / (p["slas"] * n_epochs) * 1e6
    return dict(
        slas=p["slas"], routers=p["routers"], route_len=p["route_len"],
        packets_per_epoch=p["packets"], epochs=len(measured), rows=rows,
        latency_s=dict(median=_pct(lats, 0.5), p99=_pct(lats, 0.99), max=max(lats) if lats else None),
        within_target=sum(1 for x in lats if x <= TARGET_S), target_s=TARGET_S,
        cpu_us_per_sla_epoch=cpu_us, cpu_us_per_evaluation=cpu_us_evaluated,
        sla_epochs_evaluated=sum(len(x[3]) for x in evs), service_cpu_s=ev["cpu_end_s"] - ev["cpu_start_s"],
        devices_cpu_s=dev_cpu, unevaluated=unevaluated, unknown=unknown,
        refused=ev["refused"], fetch_errors=ev["fetch_errors"], disputes=ev["disputes"],
        rounds=ev["rounds"], device_requests=ev.get("device_requests"), results={e: results.get(e, {}) for e in measured}, workdir=workdir)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slas", type=int, default=1000)
    ap.add_argument("--routers", type=int, default=100)
    ap.add_argument("--route-len", type=int, default=4, help="routers per SLA route")
    ap.add_argument("--packets", type=int, default=10, help="packets per SLA per epoch")
    ap.add_argument("--epochs", type=int, default=30, help="epochs measured (after --warmup)")
    ap.add_argument("--warmup", type=int, default=5, help="epochs not measured at the start")
    ap.add_argument("--device-procs", type=int, default=2, help="processes serving the routers")
    ap.add_argument("--poll-s", type=float, default=0.5, help="the service's [service] poll_s")
    ap.add_argument("--history-epochs", type=int, default=600,
                    help="epochs of history every SLA has before the run (the service's "
                         "series_epochs: its steady state; 0 for a new service)")
    ap.add_argument("--service-cpus", default=None, help="taskset CPU list for the service")
    ap.add_argument("--device-cpus", default=None, help="taskset CPU list for the devices")
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--service-process", metavar="WORKDIR", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.service_process:
        return service_process(args.service_process)
    r = run(args.slas, args.routers, args.route_len, args.packets, args.epochs, args.warmup,
            args.device_procs, args.poll_s, workdir=args.dir, keep=args.keep,
            service_cpus=args.service_cpus, device_cpus=args.device_cpus,
            history_epochs=args.history_epochs)
    print(f"{'epoch':>20} {'anchors landed':>15} {'evaluated':>10} {'latency s':>10} "
          f"{'uneval':>6} {'unknown':>7}")
    for row in r["rows"]:
        t0 = row["anchors_landed_ns"]
        rel = lambda t: "-" if t is None else f"{(t - row['epoch_ns']) / 1e9:.3f}"  # noqa: E731
        lat = "-" if row["latency_s"] is None else f"{row['latency_s']:.3f}"
        print(f"{row['epoch_ns']:>20} {rel(t0):>15} {rel(row['evaluated_ns']):>10} {lat:>10} "
              f"{row['unevaluated']:>6} {row['unknown']:>7}")
    lat = r["latency_s"]
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    print(f"latency from an epoch's last anchor landing to all {r['slas']} SLAs evaluated: "
          f"median {fmt(lat['median'])} s, p99 {fmt(lat['p99'])} s, max {fmt(lat['max'])} s; "
          f"{r['within_target']}/{r['epochs']} epochs within {TARGET_S:g} s")
    cpu = r["cpu_us_per_sla_epoch"]
    cpe = r["cpu_us_per_evaluation"]
    print(f"service CPU per SLA per epoch: {'-' if cpu is None else f'{cpu:.0f}'} us "
          f"(its process, every thread, over the measured epochs); per SLA-epoch evaluated "
          f"({r['sla_epochs_evaluated']} in all): {'-' if cpe is None else f'{cpe:.0f}'} us; "
          f"devices' CPU {r['devices_cpu_s']:.1f} s in all")
    print(f"rounds {r['rounds']}, device requests {r['device_requests']} (in the whole run)")
    print(f"epochs unevaluated {r['unevaluated']}, unknown {r['unknown']} (SLA-epochs); "
          f"receipts refused {r['refused']}, device errors {r['fetch_errors']}")
    result = dict(benchmark="service", when=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                  machine=dict(platform=platform.platform(), cpu=cpu_model(),
                               python=platform.python_version(), cores=os.cpu_count()),
                  args=vars(args), target={"latency_s": TARGET_S},
                  **{k: v for k, v in r.items() if k not in ("results", "workdir")})
    write_results(args.out, "service", result)
    ok = r["unevaluated"] == 0 and r["unknown"] == 0 and lat["max"] is not None and \
        lat["max"] <= TARGET_S
    print("target met" if ok else "TARGET NOT MET")
    return 0


if __name__ == "__main__":
    sys.exit(main())
