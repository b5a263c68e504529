"""The ledger as a network: EthereumJS client nodes sealing a Clique chain (ledger_client.
poa_network, contracts/poa_node.mjs), three sealers (one per operator) and a governance node that
links them (every node on 127.0.0.1, its own ports and chain database), 1 s blocks. One network,
contract and set of devices serves the file's tests (started once: ~30 s), in this order; each test
first brings every node back up and the chain together (``healthy``), and counts what it asserts
(retries, resent anchors, reorganisations, resyncs) from its own start.

Checked with real nodes and real devices' stores (beatd.store.Store, the batcher):
- the three sealers hold one chain: every node has the same block a few blocks below the head,
  and every sealer sealed blocks;
- a fault: one sealer's node killed (SIGKILL: its transaction pool is lost) and restarted while
  the devices anchor through it and the others; every anchor lands exactly once (one Anchored
  event per (node_id, batch_seq) at confirmed depth on the canonical chain), is confirmed only
  once `confirmations` blocks deep, and every leaf's proof verifies against the root on the
  ledger;
- a node whose chain database is damaged (it cannot open it) starts again from a fresh one with
  its keys, syncs from its peers and seals again (what an operator does);
- a real reorganisation: the governance node (the only link between the sealers) killed, so each
  sealer seals on its own branch while the devices anchor through them, then restarted: the
  branches meet, the nodes move to the one with the most difficulty, an anchor that was on a
  losing branch is found missing and sent again (or put back into its node's pool and mined
  again before its device looked), and still every anchor lands exactly once;
  a transfer sent to a sealer during the partition whose block lost is mined after all (the node
  put the dropped block's transactions back into its pool: nobody sends it again).
"""
import os
import random
import threading
import time

import pytest

from conftest import require_ganache, wait_for
from ledger_client import merkle
from ledger_client.batcher import Batcher
from ledger_client.ethereum import Account, EthereumLedger
from ledger_client.keys import DeviceKey
from ledger_client.poa_network import EJS_CLI, NodeSpec, PoaNetwork
from ledger_client.types import Node
from test_batcher import Feed

H = "sha3-256"
CONFIRMATIONS = 2
SEALERS = ("op1", "op2", "op3")
ETH = 10 ** 18
PARTITIONS = 4          # the reorganisation test's rounds, at most


def require_ejs():
    require_ganache()            # node + the project's npm packages (fails under CI=true)
    assert os.path.exists(EJS_CLI), f"{EJS_CLI} missing: run npm ci in ledger_client/contracts"


class Lab:
    """The network, the contract, one device per sealer (node id 1.., its own store)."""

    def __init__(self, tmp_path):
        require_ejs()
        self.tmp_path = tmp_path
        self.gov = Account.generate()
        self.sealer_accounts = {name: Account.generate() for name in SEALERS}
        self.device_accounts = {i + 1: Account.generate() for i in range(len(SEALERS))}
        # one payer per sealer and partition of the reorganisation test (a transfer each, nonce 0)
        self.payers = [{name: Account.generate() for name in SEALERS} for _ in range(PARTITIONS)]
        specs = [NodeSpec("gov", peers=SEALERS)]
        specs += [NodeSpec(name, sealer=self.sealer_accounts[name], peers=("gov",))
                  for name in SEALERS]
        funded = [(self.gov, 1000 * ETH)] + [(a, 100 * ETH) for a in
                                             self.device_accounts.values()]
        funded += [(a, ETH) for payers in self.payers for a in payers.values()]
        self.net = PoaNetwork(tmp_path / "chain", specs, funded=funded, period=1)
        try:
            self.net.start(timeout=120, min_height=2)
            gov_url = self.net.node("gov").url
            led = EthereumLedger.deploy(gov_url, self.gov, H, timeout=20,
                                        confirmations=CONFIRMATIONS)
            self.contract = led.address
            self.gov_ledger = led
            for node_id, acct in self.device_accounts.items():
                led.register_node(Node(node_id, f"operator-{node_id}",
                                       DeviceKey.generate().public, acct.address_bytes),
                                  signer=self.gov)
        except BaseException:
            self.net.kill()          # no fixture teardown after a failed set-up: no node left
            raise
        self.stores = {}
        self._devices = None

    def devices(self):
        """The three devices (made once): device i anchors through sealer i's node."""
        if self._devices is None:
            self._devices = make_devices(self, self.tmp_path, via=SEALERS)
        return self._devices

    def ledger_via(self, name, **kw):
        kw.setdefault("timeout", 10)
        kw.setdefault("receipt_timeout", 8)
        return EthereumLedger(self.net.node(name).url, self.contract, H,
                              confirmations=CONFIRMATIONS, **kw)

    def close(self):
        for s in self.stores.values():
            s.close()
        self.net.kill()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("poa-network"))
    yield lab
    lab.close()


@pytest.fixture(autouse=True)
def healthy(lab):
    """Before each test: every node runs (a test that failed half-way may have left one down) and
    they hold one chain."""
    for node in lab.net:
        if not node.running:
            lab.net.start_node(node.name, timeout=90)
    wait_for(lambda: lab.net.agree(depth=2), timeout=60,
             what=lambda: f"the nodes hold one chain: {lab.net.heads()}")
    return lab


def _store(path, node_id):
    from beatd.store import Store
    return Store(path, node_id, H, 1 << 22)


def make_devices(lab, tmp_path, via):
    """One (store, feed, batcher) per device; device i anchors through node ``via[i]``."""
    devices = {}
    for i, name in enumerate(SEALERS):
        node_id = i + 1
        store = _store(tmp_path / f"dev{node_id}", node_id)
        feed = Feed(store, H)
        led = lab.ledger_via(via[i])
        b = Batcher(store, led, node_id, H, lab.device_accounts[node_id], 2.0,
                    rng=random.Random(node_id), base_backoff_s=0.5, max_backoff_s=3.0)
        devices[node_id] = (store, feed, b)
    lab.stores = {nid: d[0] for nid, d in devices.items()}
    return devices


def run_batchers(devices, stop, errors):
    def loop(node_id, feed, b):
        try:
            while not stop.is_set():
                feed.commit(6, n_receipts=1)
                b.tick()
                stop.wait(1.0)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append((node_id, exc))
    threads = [threading.Thread(target=loop, args=(nid, feed, b), daemon=True)
               for nid, (_store_, feed, b) in devices.items()]
    for t in threads:
        t.start()
    return threads


def drain(devices, timeout=150):
    """Tick every batcher until nothing is pending (all confirmed)."""
    deadline = time.monotonic() + timeout
    for _nid, (_s, _f, b) in devices.items():
        b.build()
    while time.monotonic() < deadline:
        pending = 0
        for _nid, (_s, _f, b) in devices.items():
            b.retry_now()
            b.submit()
            pending += b.stats()["pending_anchors"]
        if pending == 0:
            return
        time.sleep(0.5)
    raise AssertionError({nid: b.stats() for nid, (_s, _f, b) in devices.items()})


def canonical_anchored(lab, led):
    """{(node_id, batch_seq): number of Anchored events} in the blocks at least CONFIRMATIONS
    deep, read from ``led``'s node, each event's block checked to be the block every running
    node holds at that height (the canonical chain, not a branch a node once held)."""
    to = led.head() - CONFIRMATIONS
    logs = led.contract.events.Anchored.get_logs(from_block=0, to_block=to)
    running = [n for n in lab.net if n.running]
    canonical, seen = {}, {}
    for log in logs:
        assert not log.get("removed", False), log
        number = log["blockNumber"]
        if number not in canonical:
            canonical[number] = {n.block_hash(number) for n in running}
        assert canonical[number] == {"0x" + bytes(log["blockHash"]).hex()}, (number, canonical)
        key = (log["args"]["nodeId"], log["args"]["batchSeq"])
        seen[key] = seen.get(key, 0) + 1
    return seen, to


def check_exactly_once_and_proofs(lab, devices):
    """One Anchored event per (node_id, batch_seq) at confirmed depth on the canonical chain,
    0..k without a gap and as many as the contract's nextBatchSeq there, every stored leaf in
    exactly one anchor, every proof verifying against the ledger's root."""
    led = lab.ledger_via("gov")
    seen, to = canonical_anchored(lab, led)
    assert seen and all(n == 1 for n in seen.values()), seen
    for node_id in devices:
        # the contract's own count at that block, and the node's filter on an indexed argument
        # (the client used to ignore it: every device's events came back)
        assert led.contract.functions.nextBatchSeq(node_id).call(block_identifier=to) == \
            len([k for k in seen if k[0] == node_id])
        only = led.contract.events.Anchored.get_logs(from_block=0, to_block=to,
                                                     argument_filters={"nodeId": node_id})
        assert {log["args"]["nodeId"] for log in only} == {node_id}
    for node_id, (store, _feed, b) in devices.items():
        st = b.stats()
        assert st["pending_anchors"] == 0 and st["sent_anchors"] == 0, st
        anchors = led.anchors(node_id)
        assert [a.batch_seq for a in anchors] == list(range(st["next_batch_seq"])), node_id
        assert sorted(k[1] for k in seen if k[0] == node_id) == [a.batch_seq for a in anchors]
        leaves = store.outbox()
        assert sum(a.tree_size for a in anchors) == len(leaves) > 0
        for leaf_seq, kind, value in leaves:
            anchor, index, proof = b.proof(leaf_seq)
            on_ledger = led.get_anchor(node_id, anchor.batch_seq)
            assert on_ledger is not None and on_ledger.content() == anchor.content()
            assert merkle.verify_inclusion(H, bytes([kind]) + value, index, on_ledger.tree_size,
                                           proof, on_ledger.root)
    return seen


def test_sealers_hold_one_chain_and_anchors_survive_a_killed_node(lab):
    net = lab.net
    # the three sealers hold one chain
    h0 = max(h[0] for h in net.heads().values())
    net.wait_height(h0 + 4, timeout=30)
    assert net.agree(depth=2), net.heads()
    # a sealer that started last (the client's start takes 5-20 s on a loaded machine) seals
    # once it has caught up
    wait_for(lambda: all(net.node(n).sealed_blocks() > 0 for n in SEALERS), timeout=90,
             what=lambda: f"every sealer seals: {({n: net.node(n).sealed_blocks() for n in SEALERS})}")

    devices = lab.devices()
    retries0 = devices[1][2].stats()["retries"]
    stop, errors = threading.Event(), []
    threads = run_batchers(devices, stop, errors)
    try:
        wait_for(lambda: all(b.stats()["anchors_confirmed"] >= 2 for _s, _f, b in
                             devices.values()), timeout=60, what="two anchors confirmed each")
        # device 1's node goes down hard (its pool with it) while everybody anchors
        victim = net.node("op1")
        victim.kill()
        time.sleep(4)
        # the two other sealers go on alone
        assert all(b.stats()["anchors_confirmed"] >= 2 for _s, _f, b in devices.values())
        n2 = net.node("op2").head()[0]
        wait_for(lambda: net.node("op2").head()[0] >= n2 + 3, timeout=20,
                 what="the chain grows with one sealer down")
        net.start_node("op1", timeout=90)
        before = devices[1][2].stats()["anchors_confirmed"]
        wait_for(lambda: devices[1][2].stats()["anchors_confirmed"] > before + 1, timeout=60,
                 what=lambda: f"device 1 anchors again after its node restarted: "
                              f"{devices[1][2].stats()}")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors
    drain(devices)
    seen = check_exactly_once_and_proofs(lab, devices)
    assert len(seen) >= 6
    st1 = devices[1][2].stats()
    assert st1["retries"] > retries0, st1      # its node was down: it had to wait and retry
    assert net.agree(depth=2)


def branch_blocks(node, above):
    """[(number, hash, [tx hashes])] of ``node``'s blocks above ``above`` up to its head."""
    out = []
    for number in range(above + 1, node.head()[0] + 1):
        blk = node.rpc("eth_getBlockByNumber", [hex(number), False])
        if blk:
            out.append((number, blk["hash"], list(blk["transactions"])))
    return out


def send_transfer(lab, name, payer):
    """A plain transfer of 1 wei from ``payer`` (nonce 0) to the governance, sent straight to
    node ``name`` only: its hash."""
    from ledger_client.ethereum import _fee_fields
    w3 = lab.ledger_via(name).w3
    tx = {"to": lab.gov.address, "value": 1, "gas": 21_000, "nonce": 0,
          "chainId": w3.eth.chain_id, **_fee_fields(w3)}
    return "0x" + bytes(w3.eth.send_raw_transaction(
        payer.sign_transaction(tx).raw_transaction)).hex()


def test_a_reorganised_anchor_is_sent_again(lab):
    net = lab.net
    devices = lab.devices()
    reorgs0 = {n: len(net.node(n).reorganisations()) for n in SEALERS}
    for _nid, (_s, feed, b) in devices.items():         # one confirmed anchor each, first
        feed.commit(6, n_receipts=1)
        b.build()
    drain(devices)
    resent0 = {nid: b.stats()["resent"] for nid, (_s, _f, b) in devices.items()}
    gov = net.node("gov")
    stop, errors = threading.Event(), []
    threads = run_batchers(devices, stop, errors)
    lost, rounds, forks = set(), 0, 0
    transfers, lost_transfers = set(), set()
    try:
        # the governance node is the sealers' only link: without it each seals on its own branch
        # (one block: Clique's signer limit); the branches meet when it is back. Partitioned
        # until an anchor's transaction was in a block of a losing branch (at most 4 rounds:
        # a sealer may seal its one block before any anchor reaches it, and a round forks only
        # when two sealers can seal on what they hold: a sealer whose head is its own block,
        # the one just before the partition reached it, cannot seal on it)
        while not (lost and lost_transfers) and rounds < PARTITIONS:
            rounds += 1
            wait_for(lambda: len({h for h in (net.node(n).head() for n in SEALERS)}) == 1,
                     timeout=30, what=lambda: f"the sealers on one head: {net.heads()}")
            gov.kill()
            base = {n: net.node(n).head()[0] for n in SEALERS}
            # a transfer to each sealer alone (no one sends it again if it is lost)
            transfers |= {send_transfer(lab, n, lab.payers[rounds - 1][n]) for n in SEALERS}
            deadline = time.monotonic() + 20
            while sum(net.node(n).head()[0] > base[n] for n in SEALERS) < 2 \
                    and time.monotonic() < deadline:
                time.sleep(0.25)
            time.sleep(3)
            branches = {n: net.node(n).head() for n in SEALERS}
            forks += len({h[1] for h in branches.values()}) >= 2      # the chain forked
            top = max(h[0] for h in branches.values())
            held = {n: branch_blocks(net.node(n), base[n]) for n in SEALERS}
            net.start_node("gov", timeout=90)
            wait_for(lambda: net.agree(depth=0), timeout=60,
                     what=lambda: f"the branches meet: {net.heads()}")
            # a transaction of a losing block that is not on the winning branch (the same one
            # may have been in blocks of two branches; one put back into a pool may be mined
            # again already, above the branches)
            def off_the_winner(tx):
                r = gov.rpc("eth_getTransactionReceipt", [tx])
                return r is None or int(r["blockNumber"], 16) > top
            dropped = {tx for blocks in held.values() for number, h, txs in blocks
                       if gov.block_hash(number) != h for tx in txs if off_the_winner(tx)}
            lost |= dropped - transfers
            lost_transfers |= dropped & transfers
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors
    reorgs = [line for n in SEALERS for line in net.node(n).reorganisations()[reorgs0[n]:]]
    assert forks >= 1, f"the chain never forked in {rounds} partitions"
    assert reorgs, "no node moved to another branch"
    assert lost, f"no anchor was on a losing branch in {rounds} partitions"
    assert lost_transfers, f"no transfer was on a losing branch in {rounds} partitions"
    # the node whose block lost put its transactions back into its pool: mined after all
    wait_for(lambda: all((gov.rpc("eth_getTransactionReceipt", [tx]) or {}).get("status") == "0x1"
                         for tx in lost_transfers), timeout=60,
             what=lambda: "the transfers of losing blocks mined: " + str(
                 {tx: gov.rpc("eth_getTransactionReceipt", [tx]) for tx in lost_transfers}))
    drain(devices)
    check_exactly_once_and_proofs(lab, devices)
    resent = {nid: b.stats()["resent"] - resent0[nid] for nid, (_s, _f, b) in devices.items()}
    # each lost anchor came back: sent again by its device (found missing), or its transaction,
    # put back into the pool by the node whose block lost, mined before the device looked
    remined = {tx for tx in lost
               if (gov.rpc("eth_getTransactionReceipt", [tx]) or {}).get("status") == "0x1"}
    assert sum(resent.values()) >= 1 or remined == lost, (resent, lost, remined, reorgs)
    assert net.agree(depth=2)


def test_a_damaged_chain_database_is_synced_again_from_the_peers(lab):
    """A sealer's node killed and its chain database damaged (LevelDB's CURRENT overwritten: the
    client cannot open it): started again, it moves the database aside, starts from the genesis
    with the same node key and sealer key, syncs from its peers and seals again."""
    net = lab.net
    victim = net.node("op2")
    enode = victim.enode
    resyncs0 = victim.resyncs
    damaged0 = [d for d in os.listdir(victim.db_path) if d.startswith("beat-poa.damaged-")]
    net.wait_height(max(h[0] for h in net.heads().values()) + 3, timeout=30)
    victim.kill()
    with open(os.path.join(victim.chain_dir, "chain", "CURRENT"), "w") as f:
        f.write("not a manifest\n")
    before = victim.sealed_blocks()
    net.start_node("op2", timeout=90)
    assert victim.resyncs == resyncs0 + 1
    assert len([d for d in os.listdir(victim.db_path) if d.startswith("beat-poa.damaged-")]) \
        == len(damaged0) + 1
    assert victim.enode == enode and victim.peer_count() >= 1
    wait_for(lambda: victim.sealed_blocks() > before, timeout=60,
             what=lambda: f"op2 seals again: {victim.sealed_blocks()} blocks, heads {net.heads()}")
    h = max(h[0] for h in net.heads().values())
    net.wait_height(h + 2, timeout=30)
    assert net.agree(depth=2), net.heads()
    # the contract deployed before the damage is on op2's new database too
    led = lab.ledger_via("op2")
    assert led.get_node(1) is not None
