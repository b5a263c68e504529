"""`python -m benchmarks.anchoring`: anchoring throughput and latency against one local chain.

One DevNode (ganache, ledger_client.devnode) with ``--block-time`` seconds per block (default 1 s:
a PoA-like chain), the Beat contract deployed on it, every row in the same run:

1. **one tx per anchor period** (BEAT): N receipts (real receipt values, committed to a real
   beatd.store.Store outbox) -> ``Batcher.build()`` (Merkle tree, every leaf's proof, one LMDB
   transaction) -> ``Batcher.submit()`` (ONE ``anchor`` transaction, until its receipt is back).
   Rate = N / (build + submit): the batcher does both in one thread, in series.
2. **one tx per receipt** (the paper's way: a tree of one leaf per receipt, one ``anchor`` call
   each): (a) as a client that waits for each receipt (``EthereumLedger.anchor``, a few calls);
   (b) best case, a few hundred transactions sent back to back (consecutive nonces) and all their
   receipts awaited; rate = n / elapsed, plus the chain's ceiling from the gas of one anchor and
   the block gas limit.
3. **latency**: live edge traffic (packets timestamped with the wall clock) -> fastpath.Pipeline
   -> Store -> Batcher (anchor period ``--period``, in its own thread as beatd runs it) ->
   EthereumLedger. For each packet: from its record's t_ns to (a) the anchor's tx receipt coming
   back to the batcher, (b) the anchor's block timestamp (whole seconds on ganache), with the
   stages (packet -> its receipt committed; committed -> batched; batched -> anchored).

Targets: >= 100,000 receipts/s anchored with one tx per period; latency <= anchor period + 2
blocks. Prints a table; writes benchmarks/results/anchoring-latest.json (and a dated copy).
"""
import argparse
import datetime
import os
import platform
import random
import statistics
import struct
import sys
import tempfile
import threading
import time

from benchmarks.results_file import write_results

HERE = os.path.dirname(os.path.abspath(__file__))
H = "sha3-256"
ETH = 10 ** 18


def pct(values, q):
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def receipts_output(node_id, n, epoch_ns, rng):
    """An Output with n receipts (distinct flows), as the pipeline would hand it over."""
    import fastpath
    from fastpath.output import STAT_NAMES, Output
    entries = []
    for i in range(n):
        src = b"\x00" * 10 + b"\xff\xff" + struct.pack(">I", 0x0A000000 + i)
        dst = b"\x00" * 10 + b"\xff\xff" + bytes([10, 1, 0, 1])
        pk, by = rng.randrange(1, 100), rng.randrange(60, 150_000)
        r = fastpath.receipt_value(H, node_id, 1, src, dst, epoch_ns, pk, by)
        entries.append(struct.pack(">QB16s16sQQ", epoch_ns, 1, src, dst, pk, by) + r)
    stats = dict.fromkeys(STAT_NAMES, 0)
    stats.update(receipts=n)
    return Output(b"", [], b"".join(sorted(entries)), b"", stats, 0, b"", b"", 0)


class Chain:
    def __init__(self, workdir, block_time, n_nodes):
        from ledger_client.devnode import DevNode
        from ledger_client.ethereum import Account, EthereumLedger
        from ledger_client.types import Node
        self.gov = Account.generate()
        self.keys = {i: Account.generate() for i in range(1, n_nodes + 1)}
        accounts = [(self.gov, 10 ** 6 * ETH)] + [(k, 10 ** 6 * ETH) for k in self.keys.values()]
        self.node = DevNode(os.path.join(workdir, "chain"), accounts=accounts,
                            block_time=block_time, log_path=os.path.join(workdir, "ganache.log"))
        self.node.start()
        t0 = time.monotonic()
        self.led = EthereumLedger.deploy(self.node.url, self.gov, H, timeout=10)
        for i, k in self.keys.items():
            self.led.register_node(Node(i, f"op-{i}", bytes([i]) * 32, k.address_bytes),
                                   signer=self.gov)
        self.setup_s = time.monotonic() - t0

    def block_gas_limit(self):
        return self.led.w3.eth.get_block("latest")["gasLimit"]

    def close(self):
        self.node.stop()


def bench_tx_per_period(chain, node_id, n, workdir):
    from beatd.store import Store
    from ledger_client import merkle
    from ledger_client.batcher import Batcher
    rng = random.Random(n)
    out = receipts_output(node_id, n, 1_700_000_000_000_000_000, rng)
    with Store(os.path.join(workdir, f"store-{node_id}"), node_id, H, 1 << 22,
               map_size=(1 << 30) + 2048 * n) as store:
        store.commit(out)
        assert len(store.outbox()) == n
        b = Batcher(store, chain.led, node_id, H, chain.keys[node_id], 1.0, max_leaves=1 << 24)
        leaves = [bytes([k]) + v for _, k, v in store.outbox()]
        t0 = time.perf_counter()
        tree = merkle.Tree(H, leaves)
        _ = [tree.proof(i) for i in range(n)]
        tree_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        rec = b.build()
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        done = b.submit()
        submit_s = time.perf_counter() - t0
        assert done == [rec.batch_seq], (done, b.last_error)
        on_chain = chain.led.get_anchor(node_id, rec.batch_seq)
        tx = on_chain.ref.split("@")[0]
        gas = chain.led.w3.eth.get_transaction_receipt(tx)["gasUsed"]
        # one leaf's proof verifies against the chain's anchor
        _, index, proof = b.proof(n // 2)
        assert merkle.verify_inclusion(H, leaves[n // 2], index, on_chain.tree_size, proof,
                                       on_chain.root)
    return dict(mode="tx-per-period", receipts=n, txs=1, tree_and_proofs_s=tree_s,
                build_s=build_s, submit_s=submit_s, gas_per_tx=gas,
                rate=n / (build_s + submit_s), rate_build_only=n / build_s)


def bench_tx_per_receipt_sequential(chain, node_id, n):
    from ledger_client import merkle
    from ledger_client.types import Anchor
    led, key = chain.led, chain.keys[node_id]
    t0 = time.perf_counter()
    for seq in range(n):
        leaf = b"\x01" + os.urandom(32)
        assert led.anchor(Anchor(node_id, seq, 1, merkle.root(H, [leaf]), seq, seq),
                          signer=key) == "anchored"
    el = time.perf_counter() - t0
    return dict(mode="tx-per-receipt (wait each)", receipts=n, txs=n, elapsed_s=el,
                rate=n / el)


def bench_tx_per_receipt_pipelined(chain, node_id, n):
    """n anchor transactions (tree of one leaf each) sent back to back; all receipts awaited."""
    from ledger_client import merkle
    led, key = chain.led, chain.keys[node_id]
    w3, fn = led.w3, led.contract.functions
    start_seq = led.next_batch_seq(node_id)
    gas = fn.anchor(node_id, start_seq, 1, b"\x11" * 32, 0, 0).estimate_gas(
        {"from": key.address})
    nonce = w3.eth.get_transaction_count(key.address)
    chain_id, gas_price = w3.eth.chain_id, w3.eth.gas_price
    raws = []
    for i in range(n):
        leaf = b"\x01" + os.urandom(32)
        tx = fn.anchor(node_id, start_seq + i, 1, merkle.root(H, [leaf]), i, i).build_transaction(
            {"from": key.address, "nonce": nonce + i, "chainId": chain_id,
             "gas": int(gas * 1.3) + 10_000, "gasPrice": gas_price})
        raws.append(key.sign_transaction(tx).raw_transaction)
    t0 = time.perf_counter()
    hashes = [w3.eth.send_raw_transaction(r) for r in raws]
    send_s = time.perf_counter() - t0
    receipts = [w3.eth.wait_for_transaction_receipt(h, timeout=300, poll_latency=0.05)
                for h in hashes]
    el = time.perf_counter() - t0
    ok = sum(r["status"] == 1 for r in receipts)
    assert ok == n, f"{n - ok} of {n} anchors reverted"
    assert led.next_batch_seq(node_id) == start_seq + n
    blocks = {r["blockNumber"] for r in receipts}
    gas_used = statistics.mean(r["gasUsed"] for r in receipts)
    return dict(mode="tx-per-receipt (pipelined)", receipts=n, txs=n, elapsed_s=el,
                send_s=send_s, blocks=len(blocks), gas_per_tx=gas_used, rate=n / el)


def bench_latency(chain, node_id, workdir, seconds, period, epoch_ns, pps):
    """Live traffic through the pipeline and the store; the batcher anchors every `period`."""
    import fastpath
    from beatd.store import Store
    from ledger_client.batcher import Batcher
    led, key = chain.led, chain.keys[node_id]
    returned = {}                     # batch_seq -> time.time_ns() when anchor() came back

    class Timed:
        hash_name = led.hash_name

        def anchor(self, a, *, signer):
            r = led.anchor(a, signer=signer)
            returned.setdefault(a.batch_seq, time.time_ns())
            return r

        def get_anchor(self, node_id, batch_seq):
            return led.get_anchor(node_id, batch_seq)

    built = {}                        # batch_seq -> time.time_ns() when built
    committed = []                    # (time.time_ns() at commit, [receipt keys])
    packets = []                      # (t_ns, src16, dst16)
    rng = random.Random(7)
    with Store(os.path.join(workdir, f"store-{node_id}"), node_id, H, 1 << 24) as store:
        p = fastpath.Pipeline(node_id, H, segment_records=1024, receipt_epoch_ns=epoch_ns,
                              anchor_period_ns=int(period * 1e9))
        p.resume(**store.resume_state())
        b = Batcher(store, Timed(), node_id, H, key, period, base_backoff_s=0.2,
                    max_backoff_s=1.0)
        real_build = b.build

        def build():
            rec = real_build()
            if rec is not None:
                built[rec.batch_seq] = time.time_ns()
            return rec
        b.build = build
        stop = threading.Event()
        th = threading.Thread(target=b.run, args=(stop, 0.02), daemon=True)
        th.start()
        tick_s = 0.01
        per_tick = max(1, int(pps * tick_s))
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            buf, desc = bytearray(), bytearray()
            now = time.time_ns()
            for j in range(per_tick):
                src, dst = bytes([10, 0, 0, rng.randrange(1, 50)]), bytes([10, 0, 1, 1])
                payload = rng.randbytes(8)
                hdr = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload),
                                  rng.randrange(1 << 16), 0, 64, 17, 0, src, dst)
                frame = hdr + payload
                t = now + j
                desc += fastpath.pack_desc(t, len(buf), len(frame), len(frame), 101)
                buf += frame
                packets.append((t, src, dst))
            p.feed(bytes(buf), bytes(desc))
            out = p.take()
            store.commit(out)
            if out.receipts:
                committed.append(time.time_ns())
                keys = []
                for o in range(0, len(out.receipts), 89):
                    e = out.receipts[o:o + 89]
                    keys.append(e[57:89])
                committed[-1] = (committed[-1], keys)
            time.sleep(max(0.0, tick_s - (time.time_ns() - now) / 1e9))
        # the traffic stops: flush, let the last receipts be anchored
        p.flush()
        store.commit(p.take())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            st = b.stats()
            if st["leaves_waiting"] == 0 and st["pending_anchors"] == 0:
                break
            time.sleep(0.05)
        stop.set()
        th.join(30)
        # map every packet to its receipt's leaf, batch, anchor
        value_commit = {}
        for t_commit, keys in committed:
            for v in keys:
                value_commit.setdefault(v, t_commit)
        leaf_of = {v: seq for seq, k, v in store.outbox() if k == 1}
        by_flow = {}
        for ep, role, src, dst, _pk, _by, r in store.receipts():
            by_flow[(ep, src[12:], dst[12:])] = r
        anchors = {a.batch_seq: a for a in led.anchors(node_id)}
        block_ts = {}
        lat_back, lat_block, st_receipt, st_batch, st_anchor = [], [], [], [], []
        cut = time.time_ns()
        for t, src, dst in packets:
            ep = t - t % epoch_ns
            r = by_flow.get((ep, src, dst))
            if r is None or r not in leaf_of:
                continue
            got = b.outbox.proof(leaf_of[r])
            if got is None:
                continue
            seq = got[0]
            if seq not in returned or seq not in anchors:
                continue
            tc = value_commit.get(r)
            if tc is None or tc > cut:
                continue
            if tc > packets[-1][0]:     # receipts of the final flush: not steady state
                continue
            blk = int(anchors[seq].ref.split("@")[1])
            if blk not in block_ts:
                block_ts[blk] = led.w3.eth.get_block(blk)["timestamp"]
            lat_back.append((returned[seq] - t) / 1e9)
            lat_block.append(block_ts[blk] - t / 1e9)
            st_receipt.append((tc - t) / 1e9)
            st_batch.append((built[seq] - tc) / 1e9)
            st_anchor.append((returned[seq] - built[seq]) / 1e9)
        halted = b.halted
    summary = dict(mode="latency", seconds=seconds, period_s=period,
                   receipt_epoch_s=epoch_ns / 1e9, packets=len(packets), packets_measured=len(lat_back),
                   anchors=len(anchors), halted=halted, retries=b.retries)
    for name, vals in (("to_tx_receipt", lat_back), ("to_block_timestamp", lat_block),
                       ("stage_packet_to_receipt_committed", st_receipt),
                       ("stage_committed_to_batched", st_batch),
                       ("stage_batched_to_anchored", st_anchor)):
        summary[name] = dict(p50=pct(vals, 50), p99=pct(vals, 99), max=max(vals) if vals else None,
                             mean=statistics.mean(vals) if vals else None)
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--block-time", type=float, default=1.0, help="seconds per block (1)")
    ap.add_argument("--period", type=float, default=1.0, help="anchor period, s (1)")
    ap.add_argument("--sizes", default="1000,10000,100000",
                    help="receipts per anchor period to measure (comma-separated)")
    ap.add_argument("--per-receipt", type=int, default=300,
                    help="anchor txs sent back to back in the one-tx-per-receipt row (300)")
    ap.add_argument("--sequential", type=int, default=5,
                    help="anchor calls waited for one by one (5)")
    ap.add_argument("--latency-seconds", type=float, default=15.0)
    ap.add_argument("--receipt-epoch-ms", type=float, default=100.0,
                    help="the pipeline's receipt epoch in the latency run (100 ms)")
    ap.add_argument("--pps", type=int, default=2000, help="packets/s in the latency run")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x]

    from ledger_client.devnode import DevNodeError
    workdir = tempfile.mkdtemp(prefix="beat-bench-anchoring-")
    n_nodes = len(sizes) + 3
    try:
        chain = Chain(workdir, args.block_time, n_nodes)
    except DevNodeError as exc:
        sys.exit(f"bench: {exc}")
    rows = []
    try:
        gas_limit = chain.block_gas_limit()
        node = 1
        for n in sizes:
            print(f"... one tx per period, {n} receipts", flush=True)
            rows.append(bench_tx_per_period(chain, node, n, workdir))
            node += 1
        print(f"... one tx per receipt, {args.sequential} waited for one by one", flush=True)
        rows.append(bench_tx_per_receipt_sequential(chain, node, args.sequential))
        node += 1
        print(f"... one tx per receipt, {args.per_receipt} back to back", flush=True)
        r = bench_tx_per_receipt_pipelined(chain, node, args.per_receipt)
        r["chain_ceiling_rate"] = (gas_limit // int(r["gas_per_tx"])) / args.block_time
        rows.append(r)
        node += 1
        print(f"... latency, {args.latency_seconds:g} s of live traffic", flush=True)
        lat = bench_latency(chain, node, workdir, args.latency_seconds, args.period,
                            int(args.receipt_epoch_ms * 1e6), args.pps)
    finally:
        chain.close()

    best_period = max((r for r in rows if r["mode"] == "tx-per-period"), key=lambda r: r["rate"])
    pipelined = [r for r in rows if r["mode"] == "tx-per-receipt (pipelined)"][0]
    lat_target = args.period + 2 * args.block_time
    print()
    print(f"anchoring: ganache {args.block_time:g} s blocks, block gas limit {gas_limit:,}, "
          f"anchor period {args.period:g} s")
    print(f"{'mode':<28} {'receipts':>9} {'txs':>5} {'build s':>8} {'submit/elapsed s':>17} "
          f"{'gas/tx':>8} {'receipts/s':>12}")
    for r in rows:
        sub = r.get("submit_s", r.get("elapsed_s"))
        print(f"{r['mode']:<28} {r['receipts']:>9,} {r['txs']:>5} "
              f"{r.get('build_s', 0):>8.3f} {sub:>17.3f} "
              f"{format(int(r['gas_per_tx']), ',') if r.get('gas_per_tx') else '-':>8} "
              f"{r['rate']:>12,.0f}")
    print(f"  one tx per receipt, the chain's ceiling (gas limit / gas per anchor / block time): "
          f"{pipelined['chain_ceiling_rate']:,.0f} receipts/s")
    print(f"  one tx per period, build only (tree + proofs + store, no tx): "
          f"{best_period['rate_build_only']:,.0f} receipts/s at {best_period['receipts']:,}")
    ok_rate = best_period["rate"] >= 100_000
    print(f"target >= 100,000 receipts/s with one tx per period: "
          f"{best_period['rate']:,.0f} -> {'MET' if ok_rate else 'NOT MET'}")
    print(f"latency, packet t_ns -> anchored ({lat['packets_measured']:,} of {lat['packets']:,} "
          f"packets, receipt epoch {lat['receipt_epoch_s'] * 1000:g} ms):")
    for name in ("to_tx_receipt", "to_block_timestamp", "stage_packet_to_receipt_committed",
                 "stage_committed_to_batched", "stage_batched_to_anchored"):
        s = lat[name]
        if s["p50"] is None:
            print(f"  {name:<36} (none)")
            continue
        print(f"  {name:<36} p50 {s['p50']:7.3f} s  p99 {s['p99']:7.3f} s  max {s['max']:7.3f} s")
    p99 = lat["to_tx_receipt"]["p99"]
    ok_lat = p99 is not None and p99 <= lat_target
    print(f"target latency <= period + 2 blocks = {lat_target:g} s (p99, to the tx receipt): "
          f"{p99 if p99 is None else round(p99, 3)} -> {'MET' if ok_lat else 'NOT MET'}")

    result = dict(
        benchmark="anchoring",
        when=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        host=dict(platform=platform.platform(), python=platform.python_version(),
                  cpus=os.cpu_count()),
        chain=dict(kind="ganache (ledger_client.devnode)", block_time_s=args.block_time,
                   block_gas_limit=gas_limit),
        anchor_period_s=args.period, hash=H, throughput=rows, latency=lat,
        targets=dict(rate_tx_per_period=100_000, rate_measured=best_period["rate"],
                     rate_met=ok_rate, latency_s=lat_target, latency_p99_s=p99,
                     latency_met=ok_lat),
        command="python -m benchmarks.anchoring " + " ".join(argv if argv is not None
                                                              else sys.argv[1:]))
    write_results(args.out, "anchoring", result)
    return result


if __name__ == "__main__":
    main()
