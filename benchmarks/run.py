"""`make bench`: the fast-path benchmarks of one run, printed as a table and written as JSON.

Same frames for every row: >= 1 M minimum-size frames over 1,000 flows, and an IMIX mix (7:4:1 of
60/576/1500-byte frames). Native with each hash and each SIMD level, and the pure twin, on the same
frames. The run also measures this machine's reference rates (hashlib SHA3-256 in a loop; our
hashes one at a time and in lanes), because the targets were set on another machine: compare
ratios, not absolute numbers. Results: benchmarks/results/pipeline-latest.json (and a dated copy).
"""
import argparse
import datetime
import os
import platform
import sys

from benchmarks.pipeline import IMIX, build_frames, pin_one_core, run_once
from benchmarks.results_file import cpu_model, write_results

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=1_048_576, help="frames per mix (default 2^20)")
    ap.add_argument("--pure-frames", type=int, default=0,
                    help="frames for the pure twin (default: all of them)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per row; the best is kept")
    ap.add_argument("--batch", type=int, default=8192, help="frames per batch (and transaction)")
    ap.add_argument("--big-batch", type=int, default=32768,
                    help="also run native sha3-256 at this batch size (0: don't)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)

    import fastpath.pure as pure
    try:
        import fastpath._native as native
    except ImportError as exc:
        sys.exit(f"bench: the native fast path is not built ({exc}); run `make build`")
    pin_one_core()

    mixes = {"64B": (60,), "IMIX": IMIX}
    rows = []
    max_level = native.set_simd(3)
    levels = [lvl for lvl in (3, 2, 0) if lvl <= max_level]
    for mix, sizes in mixes.items():
        buf, desc = build_frames(args.frames, flows=1000, sizes=sizes, desc_pack=native.pack_desc)
        n_pure = min(args.pure_frames or len(desc) // 24, len(desc) // 24)
        pure_desc = desc[:n_pure * 24]
        for hash_name in ("sha3-256", "blake2b-256"):
            pure_best = None
            for _ in range(2):
                sec, frames, recs = run_once(pure, buf, pure_desc, hash_name, args.batch)
                pure_best = max(pure_best or 0, frames / sec)
            rows.append(dict(mix=mix, impl="py", hash=hash_name, simd="-", batch=args.batch,
                             frames=frames, records=recs, pps=pure_best, ratio=1.0))
            runs = [(lvl, args.batch) for lvl in (levels if hash_name == "sha3-256" else levels[:1])]
            if hash_name == "sha3-256" and args.big_batch:
                runs.append((levels[0], args.big_batch))
            for level, batch in runs:
                native.set_simd(level)
                best = 0
                for _ in range(args.repeat):
                    sec, frames, recs = run_once(native, buf, desc, hash_name, batch)
                    best = max(best, frames / sec)
                rows.append(dict(mix=mix, impl="c", hash=hash_name, simd=native.simd(),
                                 batch=batch, frames=frames, records=recs, pps=best,
                                 ratio=best / pure_best))
            native.set_simd(max_level)

    refs = references(native)
    print("reference rates here (M hashes/s, one core): " +
          ", ".join(f"{k} {v / 1e6:.2f}" for k, v in refs.items()))
    print(f"{'mix':5} {'impl':4} {'hash':12} {'simd':9} {'batch':>6} {'frames':>9} {'records':>9} "
          f"{'Mframes/s':>10} {'x pure':>7}")
    for r in rows:
        print(f"{r['mix']:5} {r['impl']:4} {r['hash']:12} {r['simd']:9} {r['batch']:>6} "
              f"{r['frames']:>9} {r['records']:>9} {r['pps'] / 1e6:>10.3f} {r['ratio']:>7.1f}")
    result = dict(
        benchmark="pipeline", when=datetime.datetime.now(datetime.timezone.utc).isoformat(),
        machine=dict(platform=platform.platform(), cpu=cpu_model(), python=platform.python_version()),
        note="one core; feed + take + LMDB commit per batch (one transaction per batch); "
             "frames/s = packets captured per second (each packet is seen in and out); the "
             "pure twin's rate is the denominator of 'x pure' for its mix and hash",
        targets={"native sha3-256 frames/s": 2_000_000, "native / pure": 20,
                 "stretch frames/s": 5_000_000},
        references_hashes_per_s=refs,
        limits_md={"hashlib sha3-256 loop": 1_900_000, "OpenSSL sha3-256": 3_100_000,
                   "8-lane AVX-512 Keccak": 22_700_000},
        rows=rows)
    write_results(args.out, "pipeline", result)


def references(native, n=200_000):
    """This machine's hash rates, to read the results against the reference machine's (README,
    "Speed")."""
    import hashlib
    import time
    msg = bytes(48)
    t0 = time.perf_counter()
    for _ in range(n):
        hashlib.sha3_256(msg).digest()
    out = {"hashlib sha3-256 loop": n / (time.perf_counter() - t0)}
    records = bytes(48 * n)
    level = native.set_simd(3)
    for lvl in sorted({0, level}):
        native.set_simd(lvl)
        best = 0
        for _ in range(3):
            t0 = time.perf_counter()
            native.fp_many(records, 1)
            best = max(best, n / (time.perf_counter() - t0))
        out[f"ours sha3-256 {native.simd()}"] = best
    native.set_simd(level)
    return out


if __name__ == "__main__":
    main()
