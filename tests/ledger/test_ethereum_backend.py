"""The `ethereum` backend's transport against a real JSON-RPC node: ganache 7 (npm, pinned in
ledger_client/contracts/package.json; `npm ci` there), started on 127.0.0.1 on a free port.

Deploy, register, anchor, read back; an unreachable or silent URL -> Unavailable, quickly; keys
the contract does not authorise -> PermissionDenied with its reason; an outage in the middle of a
run of anchors (the node stopped, then restarted on the same chain database): every anchor lands
exactly once.
"""
import os
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests

from conftest import free_port, require_ganache
from ledger_client.errors import (ConflictError, LedgerError, NotFound, OrderError,
                                  PermissionDenied, Unavailable)
from ledger_client.devnode import GANACHE_CLI as GANACHE
from ledger_client.ethereum import Account, EthereumLedger
from ledger_client.types import SLA, Anchor, Node

ETH = 10 ** 18
# JSON-RPC timeouts: generous for the set-up and the checks (a loaded CI VM can make one ganache
# call take several seconds); short only where a test needs a client that fails fast.
CHECK_TIMEOUT_S = 30


class Ganache:
    """A ganache process on its own port and chain database (kept across stop/start)."""

    def __init__(self, db_path, accounts, port=None):
        self.db_path = db_path
        self.accounts = accounts
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout=90):
        cmd = ["node", GANACHE, "--server.host", "127.0.0.1", "--server.port", str(self.port),
               "--database.dbPath", self.db_path, "--chain.chainId", "1337",
               "--miner.instamine", "eager", "--logging.quiet"]
        for a in self.accounts:
            cmd += ["--wallet.accounts", f"{a.private_key_hex()},{1000 * ETH}"]
        self.log = open(os.path.join(os.path.dirname(self.db_path), f"ganache-{time.time()}.log"),
                        "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.close()
                with open(self.log.name) as f:
                    raise RuntimeError(f"ganache exited ({self.proc.returncode}): {f.read()}")
            try:
                r = requests.post(self.url, json={"jsonrpc": "2.0", "id": 1,
                                                  "method": "eth_blockNumber", "params": []},
                                  timeout=1)
                if r.ok and "result" in r.json():
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"ganache did not answer on {self.url} within {timeout}s")

    def stop(self, sig=signal.SIGTERM):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)     # SIGTERM: ganache closes its database cleanly
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()


class Keys:
    def __init__(self):
        self.gov, self.n1, self.n2, self.tenant, self.stranger = (Account.generate()
                                                                   for _ in range(5))
        self.all = [self.gov, self.n1, self.n2, self.tenant, self.stranger]


@pytest.fixture(scope="module")
def keys():
    return Keys()


@pytest.fixture(scope="module")
def node(tmp_path_factory, keys):
    require_ganache()
    g = Ganache(str(tmp_path_factory.mktemp("ganache") / "db"), keys.all)
    g.start()
    yield g
    g.stop()


@pytest.fixture(scope="module")
def ledger(node, keys):
    led = EthereumLedger.deploy(node.url, keys.gov, "sha3-256", timeout=CHECK_TIMEOUT_S)
    led.register_node(Node(1, "op-1", b"\x01" * 32, keys.n1.address_bytes), signer=keys.gov)
    led.register_node(Node(2, "op-2", b"\x02" * 32, keys.n2.address_bytes), signer=keys.gov)
    return led


def anchor_of(node_id, seq, root=None):
    return Anchor(node_id, seq, 8, root or bytes([seq % 256]) * 32, 1000 * seq, 1000 * seq + 999)


def test_deploy_register_anchor_read_back(node, ledger, keys):
    led = ledger
    assert led.governance == keys.gov.address
    n1 = Node(1, "op-1", b"\x01" * 32, keys.n1.address_bytes)
    assert led.get_node(1) == n1 and led.get_node(3) is None
    assert [n.node_id for n in led.nodes()] == [1, 2]
    led.register_node(n1, signer=keys.gov)                 # identical again: a no-op
    with pytest.raises(ConflictError, match="node 1"):
        led.register_node(Node(1, "other", b"\x01" * 32, keys.n1.address_bytes),
                          signer=keys.gov)

    sla = SLA(7, "tenant-a", b"\x0a" * 16, b"\x0b" * 16, (1, 2), max_loss_ppm=100,
              max_delay_us=5000, loss_budget_ppm=200, penalty_per_violation=3,
              valid_from_ns=10, valid_to_ns=10 ** 18, qm_terms={"z": 1, "a": 2})
    led.register_sla(sla, signer=keys.gov, tenant_account=keys.tenant)
    assert led.get_sla(7) == sla and led.get_sla(8) is None
    assert led.sla_tenant_account(7) == keys.tenant.address
    led.register_sla(sla, signer=keys.gov)                 # identical again: a no-op

    assert led.next_batch_seq(1) == 0
    for seq in range(3):
        assert led.anchor(anchor_of(1, seq), signer=keys.n1) == "anchored"
    assert led.anchor(anchor_of(2, 0), signer=keys.n2) == "anchored"
    assert led.anchor(anchor_of(1, 1), signer=keys.n1) == "exists"
    assert led.next_batch_seq(1) == 3 and led.next_batch_seq(2) == 1
    got = led.get_anchor(1, 1)
    assert got.content() == anchor_of(1, 1).content()
    tx, block = got.ref.split("@")
    receipt = led.w3.eth.get_transaction_receipt(tx)
    assert receipt["blockNumber"] == int(block) and receipt["status"] == 1
    assert led.get_anchor(1, 3) is None
    assert [(a.node_id, a.batch_seq) for a in led.anchors()] == [(1, 0), (1, 1), (1, 2), (2, 0)]
    assert [a.batch_seq for a in led.anchors(1, from_seq=1)] == [1, 2]
    assert all(a.ref for a in led.anchors())

    with pytest.raises(ConflictError, match="AnchorConflict"):
        led.anchor(anchor_of(1, 1, root=b"\xff" * 32), signer=keys.n1)
    with pytest.raises(OrderError, match="BatchSeqGap"):
        led.anchor(anchor_of(1, 5), signer=keys.n1)

    # disputes, through the backend
    d = led.open_dispute(7, 100, 200, signer=keys.tenant)
    assert led.get_dispute(d).state == "opened"
    with pytest.raises(OrderError):
        led.settle(d, signer=keys.gov)
    led.record_evidence(d, b"\xee" * 32, signer=keys.gov)
    led.record_evidence(d, b"\xee" * 32, signer=keys.gov)   # a retry: a no-op
    led.decide(d, b"\xdd" * 32, [1, 2], signer=keys.gov)
    led.settle(d, signer=keys.gov)
    got = led.get_dispute(d)
    assert (got.state, got.evidence_digest, got.verdict_digest, got.faulty, got.penalty) == (
        "settled", b"\xee" * 32, b"\xdd" * 32, (1, 2), 6)
    assert led.get_dispute(999) is None
    with pytest.raises(NotFound, match="UnknownSLA"):
        led.open_dispute(99, 0, 1, signer=keys.gov)

    # a second client on the same contract reads the same ledger
    other = EthereumLedger(node.url, led.address, "sha3-256", timeout=CHECK_TIMEOUT_S)
    assert other.anchors() == led.anchors() and other.get_sla(7) == sla
    with pytest.raises(LedgerError, match="sha3-256"):
        EthereumLedger(node.url, led.address, "blake2b-256",
                       timeout=CHECK_TIMEOUT_S).next_batch_seq(1)


def test_settled_time_covers_what_is_confirmed(node, ledger, keys):
    """``settled_ns``: every anchor with ``ledger_t_ns`` (its block's timestamp, whole seconds) at
    or before it is readable at the client's confirmations depth (what a judgement waits for,
    docs/interrogation.md, "When an anchor counts")."""
    from governance import verify

    seq = ledger.next_batch_seq(2)
    ledger.anchor(anchor_of(2, seq), signer=keys.n2)
    t = ledger.get_anchor(2, seq).ledger_t_ns
    assert t % 10**9 == 0 and t <= time.time_ns()
    assert ledger.settled_ns() <= time.time_ns() - 2 * 10**9
    assert verify.wait_settled(ledger, t, timeout_s=10) >= t
    deep = EthereumLedger(node.url, ledger.address, "sha3-256", timeout=CHECK_TIMEOUT_S,
                          confirmations=1)
    assert deep.get_anchor(2, seq) is None and deep.settled_ns() < t    # its block is the head
    with pytest.raises(verify.NotSettled, match="not yet past"):
        verify.wait_settled(deep, t, timeout_s=0.5)
    time.sleep(1.1)                          # a later second, then two blocks on top of it
    for _ in range(2):
        ledger.w3.provider.make_request("evm_mine", [])
    assert verify.wait_settled(deep, t, timeout_s=10) >= t
    assert deep.get_anchor(2, seq).ledger_t_ns == t


def test_unauthorised_keys_are_permission_denied(ledger, keys):
    led = ledger
    with pytest.raises(PermissionDenied, match="NotGovernance") as info:
        led.register_node(Node(9, "x", b"\x09" * 32, keys.stranger.address_bytes),
                          signer=keys.stranger)
    assert keys.stranger.address in str(info.value) and "register_node(9)" in str(info.value)
    with pytest.raises(PermissionDenied, match="NotNodeAccount"):    # a node for another
        led.anchor(anchor_of(1, led.next_batch_seq(1)), signer=keys.n2)
    with pytest.raises(PermissionDenied, match="NotNodeAccount"):    # an unregistered key
        led.anchor(anchor_of(1, led.next_batch_seq(1)), signer=keys.stranger)
    with pytest.raises(PermissionDenied, match="NotNodeAccount"):    # an unregistered node
        led.anchor(anchor_of(42, 0), signer=keys.stranger)
    unfunded = Account.generate()                                    # a key with no ether at all
    with pytest.raises(PermissionDenied, match="NotNodeAccount"):
        led.anchor(anchor_of(1, led.next_batch_seq(1)), signer=unfunded)
    sla = SLA(11, "t", b"\x00" * 16, b"\x01" * 16, (1,))
    with pytest.raises(PermissionDenied, match="NotGovernance"):
        led.register_sla(sla, signer=keys.tenant)
    led.register_sla(sla, signer=keys.gov, tenant_account=keys.tenant)
    with pytest.raises(PermissionDenied, match="NotTenantOrGovernance"):
        led.open_dispute(11, 0, 1, signer=keys.stranger)
    d = led.open_dispute(11, 0, 1, signer=keys.tenant)
    with pytest.raises(PermissionDenied, match="NotGovernance"):
        led.record_evidence(d, b"\x01" * 32, signer=keys.tenant)


def test_links_and_weak_keys_on_a_real_node(ledger, keys):
    """The registered topology through JSON-RPC: errors mapped as on local, repeats spare the
    transaction; a weak Ed25519 key is refused before anything is sent."""
    led = ledger
    led.register_node(Node(3, "op-3", bytes([3]) * 32, Account.generate().address_bytes),
                      signer=keys.gov)
    with pytest.raises(PermissionDenied, match="NotGovernance") as info:
        led.register_link(1, 2, signer=keys.n1)
    assert "register_link(1, 2)" in str(info.value) and keys.n1.address in str(info.value)
    with pytest.raises(NotFound, match=r"register_link\(1, 99\).*UnknownNode\(nodeId=99\)"):
        led.register_link(1, 99, signer=keys.gov)
    with pytest.raises(LedgerError, match="InvalidLink") as info:
        led.register_link(2, 2, signer=keys.gov)
    assert type(info.value) is LedgerError
    led.register_link(2, 1, signer=keys.gov)
    led.register_link(3, 2, signer=keys.gov)
    block = led.w3.eth.block_number
    led.register_link(1, 2, signer=keys.gov)               # a retry: no transaction at all
    assert led.w3.eth.block_number == block
    assert led.links() == [(1, 2), (2, 3)]
    assert led.neighbours(2) == [1, 3] and led.neighbours(1) == [2] and led.neighbours(7) == []
    with pytest.raises(NotFound, match="UnknownLink"):
        led.retire_link(1, 3, signer=keys.gov)
    led.retire_link(3, 2, signer=keys.gov)
    block = led.w3.eth.block_number
    led.retire_link(2, 3, signer=keys.gov)
    assert led.w3.eth.block_number == block and led.links() == [(1, 2)]
    logs = led.contract.events.LinkRegistered.get_logs(from_block=led._deployed_at)
    assert [(x["args"]["a"], x["args"]["b"]) for x in logs] == [(1, 2), (2, 3)]

    from ledger_client.keys import WeakKeyError
    nonce = led.w3.eth.get_transaction_count(keys.gov.address)
    identity = b"\x01" + bytes(31)
    with pytest.raises(WeakKeyError, match=identity.hex()):
        led.register_node(Node(4, "op-4", identity, Account.generate().address_bytes),
                          signer=keys.gov)
    assert led.w3.eth.get_transaction_count(keys.gov.address) == nonce
    assert led.get_node(4) is None


def test_stale_nonce_is_refreshed(ledger, keys, monkeypatch):
    """A node refusing the nonce (another process used the key): refresh from the chain, re-sign.
    (ganache does not refuse stale nonces itself, so the refusal is geth's, injected.)"""
    from web3.exceptions import Web3RPCError
    led = ledger
    seq = led.next_batch_seq(2)
    real = led.w3.eth.send_raw_transaction
    sent = []

    def send(raw):
        sent.append(raw)
        if len(sent) == 1:
            raise Web3RPCError("{'code': -32000, 'message': 'nonce too low: next nonce 7, tx 3'}")
        return real(raw)

    monkeypatch.setattr(led.w3.eth, "send_raw_transaction", send)
    led._nonces[keys.n2.address] = 10 ** 6       # stale
    assert led.anchor(anchor_of(2, seq), signer=keys.n2) == "anchored"
    assert len(sent) == 2 and led.next_batch_seq(2) == seq + 1
    assert led._nonces[keys.n2.address] == led.w3.eth.get_transaction_count(keys.n2.address)


def test_unreachable_url_is_unavailable_quickly(keys):
    port = free_port()                          # nobody listens there
    url = f"http://127.0.0.1:{port}"
    led = EthereumLedger(url, "0x" + "11" * 20, "sha3-256", timeout=2)
    t0 = time.monotonic()
    with pytest.raises(Unavailable, match=f"127.0.0.1:{port}"):
        led.anchor(anchor_of(1, 0), signer=keys.n1)
    with pytest.raises(Unavailable, match=f"127.0.0.1:{port}"):
        led.get_anchor(1, 0)
    with pytest.raises(Unavailable, match=f"127.0.0.1:{port}"):
        EthereumLedger.deploy(url, keys.gov, "sha3-256", timeout=2)
    assert time.monotonic() - t0 < 3


def test_silent_node_is_unavailable_after_the_timeout(keys):
    with socket.socket() as s:                  # accepts connections, never answers
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        led = EthereumLedger(url, "0x" + "11" * 20, "sha3-256", timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(Unavailable, match=url.split("//")[1]):
            led.next_batch_seq(1)
        assert time.monotonic() - t0 < 3


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["stop", "kill"])
def test_outage_every_anchor_lands_exactly_once(tmp_path, keys, sig):
    """Stop (or kill) the node in the middle of a run of anchors; the submitter keeps trying
    (Unavailable), the node comes back on the same chain database (ganache --database.dbPath),
    and every anchor lands exactly once."""
    require_ganache()
    g = Ganache(str(tmp_path / "db"), keys.all)
    g.start()
    quit_ = threading.Event()          # the test is over (or failed): the submitter gives up
    try:
        led = EthereumLedger.deploy(g.url, keys.gov, "sha3-256", timeout=CHECK_TIMEOUT_S)
        led.register_node(Node(1, "op-1", b"\x01" * 32, keys.n1.address_bytes),
                          signer=keys.gov)
        # the submitter's own client on the same contract: short timeouts, quick retries
        # (`led`, generous, is for the set-up and the checks)
        sub = EthereumLedger(g.url, led.address, "sha3-256", timeout=2)
        total = 16
        outcomes, unavailable, done = {}, [], threading.Event()

        def submitter():
            """The batcher's loop, in short: pending anchors in order, retried on Unavailable."""
            seq = 0
            deadline = time.monotonic() + 600          # a hang; quit_ ends it sooner
            while seq < total and time.monotonic() < deadline and not quit_.is_set():
                try:
                    outcomes[seq] = sub.anchor(anchor_of(1, seq), signer=keys.n1)
                    seq += 1
                    time.sleep(0.02)
                except Unavailable as exc:
                    unavailable.append((seq, str(exc)))
                    time.sleep(0.1)
            done.set()

        th = threading.Thread(target=submitter, daemon=True)
        th.start()
        deadline = time.monotonic() + 120
        while len(outcomes) < 5 and not done.is_set():
            assert time.monotonic() < deadline, f"5 anchors did not land: {outcomes}"
            time.sleep(0.01)
        g.stop(sig)                                # the outage, mid-run
        # The node is gone now, but the submitter may still be finishing a call the node answered
        # before it went: wait until it has failed against the dead node (an Unavailable recorded
        # after the stop; the submitter is then in its retry loop) before counting what landed.
        n = len(unavailable)
        deadline = time.monotonic() + 30
        while len(unavailable) <= n and not done.is_set():
            assert time.monotonic() < deadline, "no Unavailable while the node was down"
            time.sleep(0.01)
        landed_before = len(outcomes)
        time.sleep(1.0)
        assert unavailable, "no Unavailable during the outage"
        assert len(unavailable) > n, "no Unavailable during the outage"
        assert landed_before < total and len(outcomes) == landed_before
        assert all(g.url.split("//")[1] in msg for _, msg in unavailable)
        g.start()                                  # back, on the same chain state
        assert done.wait(180), f"the submitter did not finish: {outcomes}"
        th.join(30)
        assert not th.is_alive()

        assert sorted(outcomes) == list(range(total))
        assert set(outcomes.values()) <= {"anchored", "exists"}
        got = led.anchors(1)
        assert [a.batch_seq for a in got] == list(range(total))      # each exactly once
        assert [a.content() for a in got] == [anchor_of(1, s).content() for s in range(total)]
        assert led.next_batch_seq(1) == total
        txs = {a.ref.split("@")[0] for a in got}
        assert len(txs) == total                                     # one event per anchor
        # resubmitting them all changes nothing
        assert {led.anchor(anchor_of(1, s), signer=keys.n1) for s in range(total)} == {"exists"}
        assert len(led.anchors(1)) == total
    finally:
        quit_.set()
        g.stop()
