"""A transaction of ours already pending with the nonce we send next, at a higher fee than
today's (sent before the base fee fell, then held by a node that could not pass it on): the node
refuses ours ("replacement gas too low", the EthereumJS client). The sender replaces it: the same
nonce, the fee raised past the pool's rule (10 % over the pending one's fee and tip, or what the
node's error names), bounded by a ceiling (``max_fee_per_gas_wei``, beatd ``[ledger]
max_fee_gwei``) that an error names when reached. Before, the sender asked again with the same fee
for as long as the transaction stayed pending (docs/ledger.md, the network tests' failure).

Real nodes: a sealer and a follower (ledger_client.poa_network) on 127.0.0.1; the ledger talks to
the follower. The pending transaction is made real by freezing the sealer (SIGSTOP: nothing is
sealed while the transaction waits in the follower's pool), as a node cut from its sealers holds
it; the sealer is thawed (SIGCONT) once the sender has acted.
"""
import os
import signal
import threading

import pytest

from conftest import require_ganache, wait_for
from ledger_client.errors import Unavailable
from ledger_client.ethereum import Account, EthereumLedger
from ledger_client.keys import DeviceKey
from ledger_client.poa_network import EJS_CLI, NodeSpec, PoaNetwork
from ledger_client.types import Anchor, Node

H = "sha3-256"
ETH = 10 ** 18


class Chain:
    def __init__(self, base):
        require_ganache()            # node + the project's npm packages (fails under CI=true)
        assert os.path.exists(EJS_CLI), f"{EJS_CLI} missing: run npm ci in ledger_client/contracts"
        self.gov, self.dev = Account.generate(), Account.generate()
        self.net = PoaNetwork(base, [NodeSpec("seal", sealer=Account.generate(), peers=("f",)),
                                     NodeSpec("f", peers=("seal",))],
                              funded=[(self.gov, 1000 * ETH), (self.dev, 100 * ETH)], period=1)
        # block 4 before deploying: the follower knows the chain's height by then (at block 1 it
        # refused calls: "not aware of the current chain height yet"); also, right after
        # "sealing starts" the sealer once sealed a block 3 with the deploy, then a sibling block
        # 3 without it that became the chain's (the launcher now puts the first one's
        # transactions back into the pool: docs/ledger.md)
        try:
            self.net.start(timeout=120, min_height=4)
            self.f = self.net.node("f")
            self.sealer = self.net.node("seal")
            led = EthereumLedger.deploy(self.f.url, self.gov, H, timeout=20)
            led.register_node(Node(1, "operator-1", DeviceKey.generate().public,
                                   self.dev.address_bytes), signer=self.gov)
        except BaseException:
            self.net.kill()          # no fixture teardown after a failed set-up: no node left
            raise
        self.contract = led.address

    def ledger(self, **kw):
        kw.setdefault("timeout", 10)
        kw.setdefault("receipt_timeout", 60)
        return EthereumLedger(self.f.url, self.contract, H, **kw)

    def freeze(self):
        os.kill(self.sealer.pid, signal.SIGSTOP)

    def thaw(self):
        os.kill(self.sealer.pid, signal.SIGCONT)

    def pending_of(self, account):
        """{nonce: (hash, maxFeePerGas)} of ``account``'s transactions in the follower's pool."""
        content = self.f.rpc("txpool_content") or {}
        out = {}
        for addr, txs in (content.get("pending") or {}).items():
            if addr.lower() == account.address.lower():
                for nonce, tx in txs.items():
                    out[int(nonce)] = (tx["hash"], int(tx["maxFeePerGas"], 16))
        return out

    def send_stuck(self, account, fee_factor):
        """A plain transfer with ``account``'s next nonce at ``fee_factor`` x the base fee,
        straight to the follower: (hash, nonce, max fee)."""
        led = self.ledger()
        w3 = led.w3
        base = w3.eth.get_block("latest")["baseFeePerGas"]
        nonce = w3.eth.get_transaction_count(account.address)
        tx = {"to": self.gov.address if account is not self.gov else self.dev.address,
              "value": 1, "gas": 21_000, "nonce": nonce, "chainId": w3.eth.chain_id, "type": 2,
              "maxFeePerGas": fee_factor * base, "maxPriorityFeePerGas": 0}
        h = w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
        return "0x" + bytes(h).hex(), nonce, fee_factor * base

    def close(self):
        try:
            self.thaw()
        except (OSError, TypeError):
            pass
        self.net.kill()


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    c = Chain(tmp_path_factory.mktemp("replacement") / "chain")
    yield c
    c.close()


def test_a_pending_transaction_at_a_higher_fee_is_replaced(chain):
    led = chain.ledger()
    a = Anchor(1, 0, 4, bytes(range(32)), 1_000, 2_000)
    chain.freeze()
    results = []
    try:
        stuck, nonce, stuck_fee = chain.send_stuck(chain.dev, 8)
        assert chain.pending_of(chain.dev) == {nonce: (stuck, stuck_fee)}
        # the stuck case: the same nonce at today's fee is refused, as often as it is asked
        base = led.w3.eth.get_block("latest")["baseFeePerGas"]
        for _ in range(2):
            tx = {"to": chain.gov.address, "value": 2, "gas": 21_000, "nonce": nonce,
                  "chainId": led.w3.eth.chain_id, "type": 2, "maxFeePerGas": 2 * base,
                  "maxPriorityFeePerGas": 0}
            with pytest.raises(Exception, match="replacement gas too low"):
                led.w3.eth.send_raw_transaction(chain.dev.sign_transaction(tx).raw_transaction)

        def anchor():
            try:
                results.append(led.anchor(a, signer=chain.dev))
            except Exception as exc:  # noqa: BLE001 - reported by the test
                results.append(exc)
        t = threading.Thread(target=anchor, daemon=True)
        t.start()
        # the anchor replaced it in the pool: the same nonce, another hash, the fee raised
        wait_for(lambda: results or chain.pending_of(chain.dev).get(nonce, (stuck,))[0] != stuck,
                 timeout=30,
                 what=lambda: f"a replacement in the pool: {chain.pending_of(chain.dev)}")
        assert not results, results          # not given up: it waits for its receipt
        new_hash, new_fee = chain.pending_of(chain.dev)[nonce]
        assert new_hash != stuck and new_fee >= stuck_fee * 110 // 100, (new_fee, stuck_fee)
    finally:
        chain.thaw()
    t.join(90)
    assert results == ["anchored"], results
    got = led.get_anchor(1, 0)
    assert got is not None and got.content() == a.content()
    # the stuck transfer never ran: its nonce went to the anchor
    assert led.w3.eth.get_transaction_count(chain.dev.address) == nonce + 1
    assert chain.f.rpc("eth_getTransactionReceipt", [stuck]) is None
    assert chain.f.rpc("eth_getTransactionReceipt", [new_hash])["status"] == "0x1"


def test_the_fee_ceiling_bounds_a_replacement_and_is_named(chain):
    """A node asking for a replacement fee above the ceiling (a pending transaction that dear,
    or a node lying about what it needs) gets nothing sent: ``Unavailable`` naming the ceiling;
    the pending transaction stays as it was."""
    led0 = chain.ledger()
    base = led0.w3.eth.get_block("latest")["baseFeePerGas"]
    # today's fee (2 x base) passes the ceiling; a replacement of one at 8 x base does not
    ceiling = 4 * base
    led = chain.ledger(max_fee_per_gas_wei=ceiling, receipt_timeout=5)
    chain.freeze()
    try:
        stuck, nonce, stuck_fee = chain.send_stuck(chain.gov, 8)
        with pytest.raises(Unavailable) as info:
            led.register_node(Node(2, "operator-2", DeviceKey.generate().public,
                                   Account.generate().address_bytes), signer=chain.gov)
        msg = str(info.value)
        assert f"ceiling of {ceiling} wei/gas" in msg and "max_fee_gwei" in msg, msg
        assert f"nonce {nonce}" in msg, msg
        assert chain.pending_of(chain.gov) == {nonce: (stuck, stuck_fee)}
    finally:
        chain.thaw()
    wait_for(lambda: chain.f.rpc("eth_getTransactionReceipt", [stuck]) is not None, timeout=30,
             what="the pending transfer lands once the sealer runs")
    with pytest.raises(ValueError, match="max_fee_per_gas_wei"):
        chain.ledger(max_fee_per_gas_wei=0)
