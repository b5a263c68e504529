"""The anchoring path end to end against a real JSON-RPC chain (ledger_client.devnode.DevNode:
ganache from ledger_client/contracts/node_modules; `npm ci` there).

Edge traffic (raw IPv4 frames built here) -> fastpath.Pipeline -> beatd.store.Store (receipts and
segment commitments in its outbox) -> ledger_client.batcher.Batcher -> EthereumLedger (the Beat
contract, deployed with EthereumLedger.deploy, the node registered with its account).

- The outage: while receipts keep coming, the chain is KILLED (SIGKILL) for a few seconds and
  restarted on its database; at the end every outbox leaf is anchored exactly once (batch_seqs
  0..k on the chain, no gap, one `Anchored` event per batch_seq) and every leaf's stored inclusion
  proof verifies against the root and tree_size read ON THE CHAIN.
- The permission rules through the batcher: a batcher whose account the contract does not
  authorise halts with PermissionDenied and loses nothing (the right key then anchors it all).
"""
import random
import struct
import threading
import time

import pytest

import fastpath
from beatd.store import Store
from conftest import require_ganache, wait_for
from ledger_client import merkle
from ledger_client.batcher import Batcher
from ledger_client.devnode import DevNode, DevNodeError
from ledger_client.ethereum import Account, EthereumLedger
from ledger_client.types import Node

H = "sha3-256"
NODE = 5
ETH = 10 ** 18
PERIOD_S = 0.3                 # the anchor period: short
EPOCH_NS = 100_000_000         # receipt epoch: receipts every round
# JSON-RPC timeouts: generous for the set-up and the checks (a loaded CI VM can make one ganache
# call take several seconds), short only for the batcher that rides out the outage.
CHECK_TIMEOUT_S = 30
BATCHER_TIMEOUT_S = 2


class Edge:
    """An edge router's traffic: IPv4/UDP frames from a few sources, fed to a Pipeline whose
    outputs are committed to the store (as beatd does)."""

    def __init__(self, store, node_id, seed=1):
        self.store = store
        self.rng = random.Random(seed)
        self.p = fastpath.Pipeline(node_id, H, segment_records=16, receipt_epoch_ns=EPOCH_NS,
                                   anchor_period_ns=1_000_000_000)
        self.p.resume(**store.resume_state())
        self.t = 1_700_000_000_000_000_000
        self.frames = 0

    def round(self, n=120):
        """n frames over one receipt epoch, committed."""
        buf, desc = bytearray(), bytearray()
        step = EPOCH_NS // n
        for _ in range(n):
            src, dst = bytes([10, 0, 0, self.rng.randrange(1, 6)]), bytes([10, 0, 1, 1])
            payload = self.rng.randbytes(8)
            hdr = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload),
                              self.rng.randrange(1 << 16), 0, 64, 17, 0, src, dst)
            frame = hdr + payload
            desc += fastpath.pack_desc(self.t, len(buf), len(frame), len(frame), 101)
            buf += frame
            self.t += self.rng.randrange(1, 2 * step)
        self.p.feed(bytes(buf), bytes(desc))
        self.store.commit(self.p.take())
        self.frames += n

    def flush(self):
        self.p.flush()
        self.store.commit(self.p.take())


class BatcherThread:
    """The batcher ticking in its own thread, as beatd's anchor loop does."""

    def __init__(self, batcher, poll_s=0.05):
        self.b = batcher
        self.stop_event = threading.Event()
        self.th = threading.Thread(target=batcher.run, args=(self.stop_event, poll_s),
                                   daemon=True)

    def __enter__(self):
        self.th.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.th.join(120)                # a tick may be in the middle of a (slow) submission
        assert not self.th.is_alive(), "the batcher thread did not stop"


def traffic(edge, min_s, until=None, max_s=60, what="the traffic"):
    """Edge traffic (a round every ~50 ms) for at least `min_s` seconds, then on until `until()`
    holds (at most `max_s` seconds in all: a hang). `what`: a string, or a callable giving it."""
    t0 = time.monotonic()
    while True:
        edge.round()
        time.sleep(0.05)
        elapsed = time.monotonic() - t0
        if elapsed >= min_s and (until is None or until()):
            return
        if elapsed >= max_s:
            what = what() if callable(what) else what
            raise AssertionError(f"timed out after {max_s}s of traffic waiting for {what}")


def check_all_anchored_on_chain(store, led, batcher, node_id):
    """Every outbox leaf anchored exactly once; every stored proof verifies against the anchor
    read from the chain (root and tree_size from the contract, never from the device)."""
    leaves = store.outbox()
    assert leaves, "no leaves at all"
    assert {k for _, k, _ in leaves} == {1, 2}, "want both receipts and segment commitments"
    events = led.anchors(node_id)       # one entry per Anchored event
    seqs = [a.batch_seq for a in events]
    assert seqs == list(range(len(events))), f"a gap or a duplicate Anchored event: {seqs}"
    assert led.next_batch_seq(node_id) == len(events)
    assert sum(a.tree_size for a in events) == len(leaves)
    on_chain = {a.batch_seq: led.get_anchor(node_id, a.batch_seq) for a in events}
    for a in events:
        assert on_chain[a.batch_seq].content() == a.content()
    seen = set()
    start = 0
    for a in events:                     # each root is the tree of exactly its leaves, in order
        mine = [bytes([k]) + v for _, k, v in leaves[start:start + a.tree_size]]
        assert merkle.root(H, mine) == a.root
        start += a.tree_size
    for leaf_seq, kind, value in leaves:
        got = batcher.proof(leaf_seq)
        assert got is not None, f"leaf {leaf_seq} not batched"
        local, index, proof = got
        chain = on_chain[local.batch_seq]
        assert local.content() == chain.content()
        assert (local.batch_seq, index) not in seen
        seen.add((local.batch_seq, index))
        leaf = bytes([kind]) + value
        assert merkle.verify_inclusion(H, leaf, index, chain.tree_size, proof, chain.root), \
            f"leaf {leaf_seq}: proof does not verify against anchor {local.batch_seq} on chain"
    assert len(seen) == len(leaves)
    st = batcher.stats()
    assert st["leaves_waiting"] == 0 and st["pending_anchors"] == 0
    assert st["last_anchored_batch_seq"] == len(events) - 1
    return events


@pytest.fixture
def keys():
    gov, n1, stranger = (Account.generate() for _ in range(3))
    return {"gov": gov, "n1": n1, "stranger": stranger}


@pytest.fixture
def chain(tmp_path, keys):
    require_ganache()
    node = DevNode(tmp_path / "chain", accounts=[(k, 1000 * ETH) for k in keys.values()],
                   log_path=tmp_path / "ganache.log")
    node.start()
    try:
        led = EthereumLedger.deploy(node.url, keys["gov"], H, timeout=CHECK_TIMEOUT_S)
        led.register_node(Node(NODE, "op-5", b"\x05" * 32, keys["n1"].address_bytes),
                          signer=keys["gov"])
        yield node, led
    finally:
        node.stop()


def test_chain_killed_mid_run_every_leaf_anchored_exactly_once(tmp_path, keys, chain):
    node, led = chain
    old_pid = node.pid
    with Store(tmp_path / "store", NODE, H, 1 << 22) as store:
        edge = Edge(store, NODE)
        # the batcher's own client on the same contract: short timeouts, quick retries
        # (`led`, generous, is for the checks)
        b_led = EthereumLedger(node.url, led.address, H, timeout=BATCHER_TIMEOUT_S)
        b = Batcher(store, b_led, NODE, H, keys["n1"], PERIOD_S, base_backoff_s=0.2,
                    max_backoff_s=1.0, rng=random.Random(3))
        with BatcherThread(b):
            # normal running: a few anchors land (at least 2 s of traffic, then on until the
            # first two are on the chain: a cold ganache can take seconds for the first)
            def two_anchored():
                last = b.stats()["last_anchored_batch_seq"]
                return last is not None and last >= 1
            traffic(edge, 2.0, two_anchored, 60, lambda: f"two anchors landed ({b.stats()})")
            before = led.next_batch_seq(NODE)
            assert before >= 2

            # the outage: SIGKILL, while receipts keep coming (at least 3 s, and on until the
            # batcher has tried and failed against the dead chain)
            retries_before = b.stats()["retries"]
            node.kill()
            assert not node.running

            def failed_on_dead_chain():
                s = b.stats()
                return s["retries"] > retries_before and s["pending_anchors"] >= 1
            traffic(edge, 3.0, failed_on_dead_chain, 60,
                    lambda: f"a failed retry on the dead chain ({b.stats()})")
            st = b.stats()
            assert st["retries"] >= 1 and st["pending_anchors"] >= 1, st
            assert "unreachable" in (st["last_error"] or ""), st
            assert not st["halted"], st

            # back on the same chain database (and the same URL); traffic goes on meanwhile
            restarted = []
            th = threading.Thread(target=lambda: restarted.append(node.start(timeout=90)))
            th.start()
            while th.is_alive():
                edge.round()
                time.sleep(0.05)
            th.join()
            assert restarted == [led.url] and node.pid != old_pid
            assert led.next_batch_seq(NODE) >= before        # the chain was kept
            traffic(edge, 1.5)
            edge.flush()

            def drained():
                s = b.stats()
                return (s["leaves_waiting"] == 0 and s["pending_anchors"] == 0
                        and s["batches_built"] > 0)
            wait_for(drained, 120, lambda: f"every leaf anchored ({b.stats()})")
        assert b.halted is None, b.halted
        assert store.verify() == []
        events = check_all_anchored_on_chain(store, led, b, NODE)
        assert len(events) > before
        assert b.stats()["retries"] >= 1
        assert store.stats().get("receipts", 0) > 0 or any(k == 1 for _, k, _ in store.outbox())

        # resubmitting every anchor changes nothing (idempotent per (node_id, batch_seq))
        assert {led.anchor(a, signer=keys["n1"]) for a in events} == {"exists"}
        assert len(led.anchors(NODE)) == len(events)

        # a new batcher on the same store (a restart of beatd) has nothing left to do
        b2 = Batcher(store, led, NODE, H, keys["n1"], PERIOD_S)
        assert b2.submit() == [] and b2.stats()["pending_anchors"] == 0


@pytest.mark.parametrize("case", ["another-nodes-account", "unregistered-node"])
def test_unauthorised_batcher_halts_and_loses_nothing(tmp_path, keys, chain, case):
    node, led = chain
    node_id = NODE if case == "another-nodes-account" else 9
    with Store(tmp_path / "store", node_id, H, 1 << 22) as store:
        edge = Edge(store, node_id, seed=2)
        for _ in range(5):
            edge.round()
        edge.flush()
        leaves = store.outbox()
        b = Batcher(store, led, node_id, H, keys["stranger"], PERIOD_S)
        b.build()
        r = b.tick()
        assert r["submitted"] == []
        assert b.halted is not None and "PermissionDenied" in b.halted, b.halted
        assert "NotNodeAccount" in b.halted
        st = b.stats()
        assert st["halted"] and st["pending_anchors"] == 1 and st["retries"] == 0
        for _ in range(3):                       # halted: no more attempts
            edge.round()
            time.sleep(PERIOD_S)
            b.tick()
        assert b.stats()["pending_anchors"] >= 2
        assert led.anchors(node_id) == [] and led.next_batch_seq(node_id) == 0
        # nothing lost: the leaves, their proofs and the pending anchors are all in the store
        assert store.outbox()[:len(leaves)] == leaves
        assert all(b.proof(seq) is not None for seq, _, _ in leaves)

        # fixed by the operator: the node registered with the right key, the batcher resumed
        if case == "unregistered-node":
            led.register_node(Node(node_id, "op-9", b"\x09" * 32, keys["n1"].address_bytes),
                              signer=keys["gov"])
        b.signer = keys["n1"]
        b.resume()
        edge.flush()
        b.build()
        b.submit()
        assert b.halted is None
        check_all_anchored_on_chain(store, led, b, node_id)


def test_devnode_errors_and_restart(tmp_path, keys):
    require_ganache()
    n = DevNode(tmp_path / "a", accounts=[(keys["gov"].private_key_hex(), ETH)])
    assert n.url is None and not n.running and n.pid is None
    with n:
        assert n.running and n.pid and n.url.startswith("http://127.0.0.1:")
        # the same port again: a clear error
        other = DevNode(tmp_path / "b", port=n.port)
        with pytest.raises(DevNodeError, match=f"port {n.port} .*in use"):
            other.start(timeout=10)
        led = EthereumLedger.deploy(n.url, keys["gov"], H, timeout=CHECK_TIMEOUT_S)
        n.kill()
        assert not n.running
        n.start()

        def governance_read_now():          # a new client: EthereumLedger caches governance
            return EthereumLedger(n.url, led.address, H, timeout=CHECK_TIMEOUT_S).governance

        assert governance_read_now() == keys["gov"].address   # the same chain, the same URL
        n.stop()
        n.start()
        assert governance_read_now() == keys["gov"].address
    assert not n.running
    with pytest.raises(ValueError):
        DevNode(tmp_path / "c", block_time=0)


def test_devnode_missing_ganache(tmp_path, monkeypatch):
    import ledger_client.devnode as devnode
    monkeypatch.setattr(devnode, "GANACHE_CLI", str(tmp_path / "nope" / "cli.js"))
    with pytest.raises(DevNodeError, match="ganache not found at .*run npm ci in"):
        DevNode(tmp_path / "db").start()
