"""`python -m benchmarks.interrogation`: proof records per second over the Interrogation service.

A device store of ``--records`` records (the synthetic edge traffic of benchmarks/pipeline.py
through fastpath.Pipeline + Store.commit, 1024 records per segment), every segment anchored on a
local ledger (so each segment travels with its inclusion path). The device's InterrogationServer
runs in its own process; the governance's client in this one; mutual TLS on 127.0.0.1 (ECDSA
P-256 lab certificates from beat_lab.ca). Rows, best of ``--repeat``:

1. **client, verified**: ``InterrogationClient.proof_segments`` over the whole window -- every
   chunk's Ed25519 signature checked (ledger_client.keys.verify), header, Q and sequence checked,
   segments decoded (records stay packed). The target: >= 1,000,000 records/s.
2. **transport only**: the same request on the raw stub, chunks received and dropped (TLS, gRPC,
   protobuf; the device's reading, encoding and signing included).
3. **verification alone**, **decoding alone**: the client's two costs, measured offline on the
   chunks received in row 2 (one thread).
4. **flow-tag scan**: a flow tag that no record carries: the device scans every record's FT of
   the window and answers with its signed coverage alone (records scanned per second).

Prints a table; writes benchmarks/results/interrogation-latest.json (and a dated copy).
"""
import argparse
import datetime
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time

from benchmarks.results_file import write_results

HERE = os.path.dirname(os.path.abspath(__file__))
H = "sha3-256"
NODE = 1
T0 = 1_700_000_000_000_000_000
WINDOW = (T0, T0 + 3600 * 10**9)
SEED = b"\x42" * 32
TARGET = 1_000_000


def build_store(path, records, ledger_path):
    """The device store: ``records`` records through the real pipeline, all anchored."""
    import fastpath
    from beatd.store import Store
    from benchmarks.pipeline import NEXT, OWN, build_frames
    from ledger_client.batcher import Batcher
    from ledger_client.keys import DeviceKey
    from ledger_client.local import LocalLedger
    from ledger_client.types import Node

    ring = max(256 << 20, (records + 2048) * 50)
    store = Store(path, NODE, H, ring)
    pipe = fastpath.Pipeline(NODE, hash_name=H, own_macs=[OWN], neighbours={NEXT: 2})
    pipe.resume(**store.resume_state())
    made = 0
    chunk = 500_000
    while made < records:
        n = min(chunk, records - made)
        buf, desc = build_frames(2 * n, flows=1000, desc_pack=fastpath.pack_desc)
        if made:                           # later packets: shift their times past the first ones
            import struct
            d = bytearray(desc)
            shift = made * 8_000              # build_frames spaces packets 8 µs apart
            for off in range(0, len(d), fastpath.DESC_SIZE):
                struct.pack_into("<Q", d, off, struct.unpack_from("<Q", d, off)[0] + shift)
            desc = bytes(d)
        mv = memoryview(desc)
        for i in range(0, len(desc) // fastpath.DESC_SIZE, 8192):
            pipe.feed(buf, mv[i * fastpath.DESC_SIZE:(i + 8192) * fastpath.DESC_SIZE])
            store.commit(pipe.take())
        made += n
    pipe.flush()
    store.commit(pipe.take())
    gov, dev = DeviceKey.generate(), DeviceKey.from_seed(SEED)
    with LocalLedger(ledger_path, hash_name=H, governance_pubkey=gov) as led:
        led.register_node(Node(NODE, "bench", dev.public, None), signer=gov)
        b = Batcher(store, led, NODE, H, dev, 10.0)
        while b.build() is not None:
            pass
        b.submit()
    stats = store.stats()
    segments = len(store.commitments())
    store.close()
    return stats["records"], segments


def serve(store_path, pki, limits, conn):
    """The device's process: the InterrogationServer until told to stop."""
    from beatd.interrogation import InterrogationServer, Limits
    from beatd.store import Store
    from ledger_client.keys import DeviceKey
    store = Store(store_path, NODE, H, 1 << 40)
    srv = InterrogationServer(store, DeviceKey.from_seed(SEED), ca=os.path.join(pki, "ca.crt"),
                              cert=os.path.join(pki, f"device-{NODE}.crt"),
                              private_key=os.path.join(pki, f"device-{NODE}.key"),
                              listen="127.0.0.1:0", limits=Limits(**limits)).start()
    conn.send(srv.port)
    conn.recv()
    srv.stop(0)
    store.close()


def best_of(repeat, fn):
    times = []
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), times, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=2_000_000, help="records in the store (2M)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per row; the best is kept")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--workdir", default=None, help="where the store goes (default: a temp dir)")
    args = ap.parse_args(argv)

    import grpc

    from beat_rpc import evidence as ev
    from beat_rpc import interrogation_pb2 as pb
    from beat_lab import ca as certs
    from governance.client import InterrogationClient
    from ledger_client.keys import DeviceKey

    work = tempfile.mkdtemp(prefix="beat-bench-interrogation-", dir=args.workdir)
    try:
        print(f"... building a store of {args.records:,} records (pipeline + store + anchors)",
              flush=True)
        t0 = time.perf_counter()
        records, segments = build_store(os.path.join(work, "store"), args.records,
                                        os.path.join(work, "ledger.mdb"))
        build_s = time.perf_counter() - t0
        pki = os.path.join(work, "pki")
        certs.make_ca(pki)
        certs.make_device(pki, pki, NODE, ips=["127.0.0.1"])
        certs.make_governance(pki, pki)

        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        limits = dict(max_records=records + 1, max_streams=4)
        proc = ctx.Process(target=serve, args=(os.path.join(work, "store"), pki, limits, child))
        proc.start()
        port = parent.recv()
        pub = DeviceKey.from_seed(SEED).public
        client = InterrogationClient(f"127.0.0.1:{port}", os.path.join(pki, "ca.crt"),
                                     os.path.join(pki, "governance.crt"),
                                     os.path.join(pki, "governance.key"), H, NODE, pub,
                                     timeout=600)
        rows = []
        try:
            print("... client, verified", flush=True)
            sec, times, segs = best_of(args.repeat, lambda: client.proof_segments(*WINDOW))
            got = sum(s.count for s in segs)
            assert got == records, f"{got} records answered, the store holds {records}"
            anchored = sum(1 for s in segs if s.anchor.anchored)
            rows.append(dict(row="client, verified (signatures + decode)", records=got,
                             seconds=sec, runs_s=times, rate=got / sec))
            del segs

            print("... transport only", flush=True)
            kept = {}

            def raw():
                nonce = os.urandom(16)
                call = client.stub.GetProofSegments(
                    pb.ProofSegmentsRequest(from_ns=WINDOW[0], to_ns=WINDOW[1], nonce=nonce),
                    timeout=600)
                chunks = [(c.body, c.signature) for c in call]
                kept["chunks"] = chunks
                kept["Q"] = ev.request_digest(H, 1, WINDOW[0], WINDOW[1], (), None, None, nonce)
                return chunks
            sec, times, chunks = best_of(args.repeat, raw)
            wire = sum(len(b) + len(s) for b, s in chunks)
            rows.append(dict(row="transport only (TLS + gRPC + device side)", records=records,
                             seconds=sec, runs_s=times, rate=records / sec, chunks=len(chunks),
                             bytes=wire, mib_per_s=wire / sec / 2**20))

            print("... verification and decoding alone", flush=True)
            sec_v, times_v, _ = best_of(args.repeat, lambda: [ev.verify_signature(pub, b, s)
                                                              for b, s in chunks])
            rows.append(dict(row="signature verification alone (offline)", records=records,
                             seconds=sec_v, runs_s=times_v, rate=records / sec_v,
                             per_chunk_ms=1000 * sec_v / len(chunks),
                             mib_per_s=wire / sec_v / 2**20))
            sec_d, times_d, _ = best_of(args.repeat, lambda: [ev.decode_chunk(b)
                                                              for b, _ in chunks])
            rows.append(dict(row="decoding alone (offline)", records=records, seconds=sec_d,
                             runs_s=times_d, rate=records / sec_d))

            print("... flow-tag scan (nothing found: the coverage alone)", flush=True)

            def scan():
                if client.proof_segments(*WINDOW, flow_tags=[b"\xfe\xed" * 4]):
                    raise AssertionError("a flow tag no record carries was found")
            sec, times, _ = best_of(args.repeat, scan)
            rows.append(dict(row="flow-tag scan, 1 tag, nothing found", records=records,
                             seconds=sec, runs_s=times, rate=records / sec))

            def scan3():
                if client.proof_segments(*WINDOW, flow_tags=[bytes([i]) * 8 for i in range(3)]):
                    raise AssertionError("flow tags no record carries were found")
            sec, times, _ = best_of(args.repeat, scan3)
            rows.append(dict(row="flow-tag scan, 3 tags, nothing found", records=records,
                             seconds=sec, runs_s=times, rate=records / sec))
        finally:
            client.close()
            parent.send("stop")
            proc.join(timeout=30)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    verified = rows[0]["rate"]
    met = verified >= TARGET
    print()
    print(f"interrogation: {records:,} records in {segments:,} segments ({anchored:,} anchored), "
          f"{len(chunks)} chunks of <= 1 MiB, mutual TLS on loopback, server and client in "
          f"separate processes ({os.cpu_count()} CPUs)")
    print(f"{'row':<44} {'seconds':>9} {'records/s':>14} {'extra':>22}")
    for r in rows:
        extra = ""
        if "mib_per_s" in r:
            extra = f"{r['mib_per_s']:,.0f} MiB/s"
        if "per_chunk_ms" in r:
            extra = f"{r['per_chunk_ms']:.2f} ms/chunk, " + extra
        print(f"{r['row']:<44} {r['seconds']:>9.3f} {r['rate']:>14,.0f} {extra:>22}")
    print(f"target >= {TARGET:,} proof records/s, verified by the client: {verified:,.0f} -> "
          f"{'MET' if met else 'NOT MET'}")

    result = dict(
        benchmark="interrogation",
        when=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        host=dict(platform=platform.platform(), python=platform.python_version(),
                  cpus=os.cpu_count(), grpc=grpc.__version__),
        store=dict(records=records, segments=segments, anchored_segments=anchored,
                   segment_records=1024, build_s=build_s),
        transport="gRPC, mutual TLS (ECDSA P-256), 127.0.0.1, server and client processes",
        hash=H, rows=rows,
        targets=dict(records_per_s=TARGET, measured=verified, met=met),
        command="python -m benchmarks.interrogation " + " ".join(
            argv if argv is not None else sys.argv[1:]))
    write_results(args.out, "interrogation", result)
    return result


if __name__ == "__main__":
    main()
