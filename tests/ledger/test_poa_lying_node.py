"""A router's own operator's ledger node lies to it (docs/threat-model.md, "The ledger nodes"):
it answers ``eth_sendRawTransaction`` with a transaction hash but never passes the transaction
on (it withholds it), and it answers the receipt as if the anchor landed. The batcher must not
count such an anchor as done: it is done only when the contract's state shows it. Once the
device talks to an honest node again, the same anchor lands, exactly once.

On ganache (ledger_client.devnode, the single-node chain): what is checked is the batcher's rule,
the same whatever the chain. The lie is a real HTTP proxy in front of the real node (it forwards
every call but the lies), so the whole client path runs.
"""
import http.server
import json
import random
import threading
import urllib.request

import pytest

from conftest import require_ganache
from ledger_client.batcher import Batcher
from ledger_client.devnode import DevNode
from ledger_client.ethereum import Account, EthereumLedger
from ledger_client.keys import DeviceKey
from ledger_client.types import Node
from test_batcher import Feed

H = "sha3-256"
ETH = 10 ** 18
FAKE_BLOCK = "0x" + "ab" * 32


class LyingNode(http.server.ThreadingHTTPServer):
    """A JSON-RPC proxy to ``upstream`` that swallows the transactions it is sent (answers their
    hash) and answers their receipts as landed, with an Anchored-looking success (status 1)."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.withheld = {}            # tx hash -> raw transaction
        self.lying = True
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_POST(self):
        srv = self.server
        body = self.rfile.read(int(self.headers["Content-Length"]))
        req = json.loads(body)
        out = None
        if srv.lying and req.get("method") == "eth_sendRawTransaction":
            from eth_utils import keccak
            raw = bytes.fromhex(req["params"][0][2:])
            h = "0x" + keccak(raw).hex()
            srv.withheld[h] = raw
            out = {"jsonrpc": "2.0", "id": req["id"], "result": h}
        elif srv.lying and req.get("method") == "eth_getTransactionReceipt" and \
                req["params"][0] in srv.withheld:
            head = _forward(srv.upstream, {"jsonrpc": "2.0", "id": 1,
                                           "method": "eth_blockNumber", "params": []})["result"]
            out = {"jsonrpc": "2.0", "id": req["id"], "result": {
                "transactionHash": req["params"][0], "status": "0x1", "blockNumber": head,
                "blockHash": FAKE_BLOCK, "transactionIndex": "0x0", "logs": [],
                "gasUsed": "0x5208", "cumulativeGasUsed": "0x5208", "contractAddress": None,
                "logsBloom": "0x" + "00" * 256, "from": "0x" + "00" * 20, "to": "0x" + "00" * 20,
                "effectiveGasPrice": "0x1", "type": "0x2"}}
        else:
            out = _forward(srv.upstream, req)
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _forward(url, req):
    r = urllib.request.Request(url, data=json.dumps(req).encode(),
                               headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(r, timeout=30) as resp:
        return json.load(resp)


@pytest.fixture
def chain(tmp_path):
    require_ganache()
    gov, dev = Account.generate(), Account.generate()
    node = DevNode(tmp_path / "chain", accounts=[(gov, 100 * ETH), (dev, 100 * ETH)])
    node.start(timeout=90)
    led = EthereumLedger.deploy(node.url, gov, H, timeout=30)
    led.register_node(Node(1, "operator-1", DeviceKey.generate().public, dev.address_bytes),
                      signer=gov)
    liar = LyingNode(node.url)
    t = threading.Thread(target=liar.serve_forever, daemon=True)
    t.start()
    yield node, led, dev, liar
    liar.shutdown()
    node.stop()


def test_an_anchor_the_node_claims_but_withheld_is_not_counted(chain, tmp_path):
    from beatd.store import Store
    node, led, dev, liar = chain
    store = Store(tmp_path / "dev1", 1, H, 1 << 22)
    try:
        feed = Feed(store, H)
        via_liar = EthereumLedger(liar.url, led.address, H, timeout=10, receipt_timeout=5)
        b = Batcher(store, via_liar, 1, H, dev, 1.0, rng=random.Random(1), base_backoff_s=0.05,
                    max_backoff_s=0.1)
        feed.commit(6, n_receipts=1)
        b.build()
        for _ in range(3):
            b.retry_now()
            b.submit()
        st = b.stats()
        # the node answered a hash and a successful receipt, three times: nothing counted
        assert liar.withheld and st["pending_anchors"] == 1 and st["anchors_confirmed"] == 0, st
        assert st["halted"] is False and "does not hold the anchor" in st["last_error"], st
        assert led.get_anchor(1, 0) is None and led.next_batch_seq(1) == 0
        # an honest node (the lie stops): the same anchor lands, once
        liar.lying = False
        b.retry_now()
        assert b.submit() == [0]
        on_chain = led.get_anchor(1, 0)
        assert on_chain is not None and on_chain.root == store.ledger_outbox().batch(0).root
        assert [a.batch_seq for a in led.anchors(1)] == [0]
        assert b.stats()["pending_anchors"] == 0
    finally:
        store.close()
