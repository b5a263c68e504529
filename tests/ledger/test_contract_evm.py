"""The Beat contract's rules, in process: eth-tester on py-evm running the committed Beat.json.

Every permission both ways, anchor idempotency / conflict / gap, the dispute life cycle and its
penalty, and the events each step emits. (tests/ledger/test_ethereum_backend.py covers the transport
against a real JSON-RPC node.)
"""
import ast
import warnings

import pytest
from web3 import EthereumTesterProvider, Web3

from ledger_client import errors
from ledger_client.ethereum import ERROR_CLASSES, artifact, decode_revert

ZERO = "0x" + "00" * 20
R1, R2 = b"\x11" * 32, b"\x22" * 32
U64MAX = (1 << 64) - 1


class Chain:
    def __init__(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.w3 = Web3(EthereumTesterProvider())
        acc = self.w3.eth.accounts
        self.gov, self.n1, self.n2, self.tenant, self.stranger = acc[:5]
        art = artifact()
        factory = self.w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
        # a committee of one, k = 1: the deployer, the single governance of before
        r = self.receipt(factory.constructor("sha3-256", [self.gov], [bytes(32)], 1,
                                             7 * 86400, 14 * 86400).transact({"from": self.gov}))
        self.c = self.w3.eth.contract(address=r["contractAddress"], abi=art["abi"])
        self.deploy_block = r["blockNumber"]

    def receipt(self, tx_hash):
        r = self.w3.eth.wait_for_transaction_receipt(tx_hash)
        assert r["status"] == 1
        return r

    def send(self, fn, sender):
        return self.receipt(fn.transact({"from": sender}))

    def events(self, name, receipt):
        return [e["args"] for e in getattr(self.c.events, name)().process_receipt(receipt)]

    def reverts(self, name, fn, sender):
        """fn from sender must revert with the contract's custom error `name`; returns its args.
        Both the call and the transaction are refused, and nothing is mined."""
        block = self.w3.eth.block_number
        for how in ("call", "transact"):
            with pytest.raises(Exception) as info:
                getattr(fn, how)({"from": sender})
            decoded = _decode(info.value)
            assert decoded is not None, f"undecodable revert: {info.value!r}"
            assert decoded[0] == name, f"expected {name}, got {decoded}"
        assert self.w3.eth.block_number == block
        return decoded[1]

    def node(self, node_id, account, owner="op"):
        return self.send(self.c.functions.registerNode(node_id, owner, bytes([node_id]) * 32,
                                                       account, ZERO), self.gov)

    def sla(self, sla_id=7, tenant_account=None, route=(1, 2, 3), ppv=7, valid=(0, U64MAX)):
        terms = (sla_id, "tenant-a", tenant_account or ZERO, b"\x0a" * 16, b"\x0b" * 16,
                 list(route), 1000, 5000, 2000, ppv, valid[0], valid[1], '{"k":1}', 0)
        return terms


def _decode(exc):
    data = getattr(exc, "data", None)
    if data is not None:
        return decode_revert(data)
    msg = str(exc.args[0]) if exc.args else ""
    if "b'" in msg or 'b"' in msg:       # eth-tester: "execution reverted: b'...'"
        lit = msg[msg.index("b"):] if msg.startswith("b") else msg[msg.index(": b") + 2:]
        return decode_revert(ast.literal_eval(lit))
    if msg.startswith("0x"):
        return decode_revert(msg)
    return None


@pytest.fixture
def ch():
    return Chain()


def test_deployer_is_the_governance(ch):
    f = ch.c.functions
    assert f.governance().call() == ch.gov
    assert f.hashName().call() == "sha3-256"
    assert f.deployedAt().call() == ch.deploy_block
    assert f.nodeIds().call() == [] and f.disputeCount().call() == 0


def test_every_contract_error_is_mapped():
    names = {e["name"] for e in artifact()["abi"] if e["type"] == "error"}
    assert names == set(ERROR_CLASSES)
    assert ERROR_CLASSES["NotNodeAccount"] is errors.PermissionDenied
    assert ERROR_CLASSES["AnchorConflict"] is errors.ConflictError
    assert ERROR_CLASSES["BatchSeqGap"] is errors.OrderError


def test_register_node_governance_only(ch):
    f = ch.c.functions
    for who in (ch.stranger, ch.n1, ch.tenant):
        args = ch.reverts("NotGovernance", f.registerNode(1, "op", R1, ch.n1, ZERO), who)
        assert args["caller"] == who
    r = ch.send(f.registerNode(1, "op-a", R1, ch.n1, ZERO), ch.gov)
    assert ch.events("NodeRegistered", r) == [
        {"nodeId": 1, "owner": "op-a", "pubkey": R1, "account": ch.n1}]
    assert f.getNode(1).call() == [True, "op-a", R1, ch.n1, 0, ZERO, False]
    assert f.getNode(2).call()[0] is False
    assert f.nodeIds().call() == [1]
    assert ch.reverts("NodeExists", f.registerNode(1, "op-a", R1, ch.n1, ZERO),
                      ch.gov) == {"nodeId": 1}
    ch.reverts("InvalidNode", f.registerNode(2, "op", R1, ZERO, ZERO), ch.gov)
    ch.reverts("InvalidNode", f.registerNode(0, "op", R1, ch.n2, ZERO), ch.gov)
    ch.reverts("InvalidNode", f.registerNode(U64MAX, "op", R1, ch.n2, ZERO), ch.gov)


def test_links_governance_only_undirected_idempotent(ch):
    f = ch.c.functions
    ch.node(1, ch.n1)
    ch.node(2, ch.n2)
    ch.node(3, ch.stranger)
    for who in (ch.stranger, ch.n1, ch.tenant):
        assert ch.reverts("NotGovernance", f.registerLink(2, 1), who) == {"caller": who}
    # unknown nodes (the lower id first), a node to itself
    assert ch.reverts("UnknownNode", f.registerLink(9, 1), ch.gov) == {"nodeId": 9}
    assert ch.reverts("UnknownNode", f.registerLink(1, 9), ch.gov) == {"nodeId": 9}
    assert ch.reverts("UnknownNode", f.registerLink(8, 9), ch.gov) == {"nodeId": 8}
    args = ch.reverts("InvalidLink", f.registerLink(2, 2), ch.gov)
    assert (args["a"], args["b"]) == (2, 2)
    # stored and announced as (a, b) with a < b
    r = ch.send(f.registerLink(2, 1), ch.gov)
    assert ch.events("LinkRegistered", r) == [{"a": 1, "b": 2}]
    assert f.linkState(1, 2).call() == f.linkState(2, 1).call() == 1
    assert f.linkState(1, 3).call() == 0
    # again, either way round: a no-op, no event
    for a, b in ((1, 2), (2, 1)):
        again = ch.send(f.registerLink(a, b), ch.gov)
        assert ch.events("LinkRegistered", again) == [] and again["logs"] == []
    ch.send(f.registerLink(3, 2), ch.gov)
    assert f.linkList().call() == [[1, 2], [2, 3]]


def test_retire_link(ch):
    f = ch.c.functions
    ch.node(1, ch.n1)
    ch.node(2, ch.n2)
    ch.node(3, ch.stranger)
    ch.send(f.registerLink(1, 2), ch.gov)
    ch.send(f.registerLink(1, 3), ch.gov)
    ch.reverts("NotGovernance", f.retireLink(1, 2), ch.n1)
    assert ch.reverts("UnknownLink", f.retireLink(3, 2), ch.gov) == {"a": 2, "b": 3}
    ch.reverts("InvalidLink", f.retireLink(1, 1), ch.gov)
    r = ch.send(f.retireLink(2, 1), ch.gov)
    assert ch.events("LinkRetired", r) == [{"a": 1, "b": 2}]
    assert f.linkState(1, 2).call() == 2
    again = ch.send(f.retireLink(1, 2), ch.gov)
    assert again["logs"] == []
    assert f.linkList().call() == [[1], [3]]
    # built again: active, listed once
    r = ch.send(f.registerLink(1, 2), ch.gov)
    assert ch.events("LinkRegistered", r) == [{"a": 1, "b": 2}]
    assert f.linkList().call() == [[1, 1], [2, 3]]


def test_register_sla_governance_only(ch):
    f = ch.c.functions
    terms = ch.sla(tenant_account=ch.tenant)
    for who in (ch.stranger, ch.tenant, ch.n1):
        ch.reverts("NotGovernance", f.registerSLA(terms), who)
    r = ch.send(f.registerSLA(terms), ch.gov)
    assert ch.events("SLARegistered", r) == [
        {"slaId": 7, "tenant": "tenant-a", "tenantAccount": ch.tenant}]
    exists, got = f.getSLA(7).call()
    assert exists and tuple(got) == (7, "tenant-a", ch.tenant, b"\x0a" * 16, b"\x0b" * 16,
                                     [1, 2, 3], 1000, 5000, 2000, 7, 0, U64MAX, '{"k":1}', 0)
    assert f.getSLA(8).call()[0] is False
    assert f.slaIds().call() == [7]
    ch.reverts("SLAExists", f.registerSLA(terms), ch.gov)
    ch.reverts("InvalidSLA", f.registerSLA(ch.sla(sla_id=8, route=())), ch.gov)
    ch.reverts("InvalidSLA", f.registerSLA(ch.sla(sla_id=9, valid=(10, 5))), ch.gov)


def test_anchor_permissions(ch):
    f = ch.c.functions
    anchor = f.anchor(1, 0, 4, R1, 100, 200)
    # an unregistered node id: refused, whoever signs
    args = ch.reverts("NotNodeAccount", anchor, ch.n1)
    assert args["registered"] == ZERO and args["nodeId"] == 1
    ch.node(1, ch.n1)
    ch.node(2, ch.n2)
    # another node's key, the governance's, a stranger's: refused
    for who in (ch.n2, ch.gov, ch.stranger):
        args = ch.reverts("NotNodeAccount", anchor, who)
        assert args["caller"] == who and args["registered"] == ch.n1
    # the node's own account: accepted
    r = ch.send(anchor, ch.n1)
    assert ch.events("Anchored", r) == [{"nodeId": 1, "batchSeq": 0, "treeSize": 4, "root": R1,
                                         "firstTNs": 100, "lastTNs": 200}]
    # node 2 anchors for itself, independently of node 1's sequence
    ch.send(f.anchor(2, 0, 1, R2, 1, 2), ch.n2)
    assert f.nextBatchSeq(1).call() == 1 and f.nextBatchSeq(2).call() == 1


def test_anchor_idempotency_conflict_and_gap(ch):
    f = ch.c.functions
    ch.node(1, ch.n1)
    assert f.nextBatchSeq(1).call() == 0
    r0 = ch.send(f.anchor(1, 0, 4, R1, 100, 200), ch.n1)
    assert len(ch.events("Anchored", r0)) == 1
    assert f.getAnchor(1, 0).call() == [True, 4, R1, 100, 200, r0["blockNumber"]]
    # the identical anchor again: a no-op, no second event, the sequence unchanged
    assert f.anchor(1, 0, 4, R1, 100, 200).call({"from": ch.n1}) is False
    again = ch.send(f.anchor(1, 0, 4, R1, 100, 200), ch.n1)
    assert ch.events("Anchored", again) == [] and again["logs"] == []
    assert f.nextBatchSeq(1).call() == 1
    # a different content for batch 0: conflict, naming both roots
    args = ch.reverts("AnchorConflict", f.anchor(1, 0, 4, R2, 100, 200), ch.n1)
    assert args == {"nodeId": 1, "batchSeq": 0, "existingRoot": R1, "root": R2}
    ch.reverts("AnchorConflict", f.anchor(1, 0, 5, R1, 100, 200), ch.n1)
    ch.reverts("AnchorConflict", f.anchor(1, 0, 4, R1, 100, 201), ch.n1)
    # a gap: batch 2 before batch 1
    args = ch.reverts("BatchSeqGap", f.anchor(1, 2, 4, R2, 300, 400), ch.n1)
    assert args == {"nodeId": 1, "expected": 1, "got": 2}
    assert f.anchor(1, 1, 4, R2, 300, 400).call({"from": ch.n1}) is True
    ch.send(f.anchor(1, 1, 4, R2, 300, 400), ch.n1)
    assert f.nextBatchSeq(1).call() == 2
    assert f.getAnchor(1, 1).call()[:5] == [True, 4, R2, 300, 400]
    assert f.getAnchor(1, 2).call()[0] is False
    assert f.getNode(1).call()[4] == 2


def test_dispute_open_permissions(ch):
    f = ch.c.functions
    ch.node(1, ch.n1)
    ch.send(f.registerSLA(ch.sla(7, tenant_account=ch.tenant)), ch.gov)
    ch.send(f.registerSLA(ch.sla(8, tenant_account=None)), ch.gov)
    # SLA 7: its tenant and the governance may open; nobody else
    for who in (ch.stranger, ch.n1):
        args = ch.reverts("NotTenantOrGovernance", f.openDispute(7, 0, 10), who)
        assert args == {"slaId": 7, "caller": who}
    r = ch.send(f.openDispute(7, 0, 10), ch.tenant)
    assert ch.events("DisputeOpened", r) == [
        {"disputeId": 1, "slaId": 7, "fromNs": 0, "toNs": 10, "opener": ch.tenant}]
    r = ch.send(f.openDispute(7, 5, 5), ch.gov)
    assert ch.events("DisputeOpened", r)[0]["disputeId"] == 2
    # SLA 8 has no tenant account: the governance only
    ch.reverts("NotTenantOrGovernance", f.openDispute(8, 0, 10), ch.tenant)
    ch.send(f.openDispute(8, 0, 10), ch.gov)
    ch.reverts("UnknownSLA", f.openDispute(99, 0, 10), ch.gov)
    ch.reverts("InvalidRange", f.openDispute(7, 11, 10), ch.tenant)
    assert f.disputeCount().call() == 3


def test_dispute_life_cycle_and_penalty(ch):
    f = ch.c.functions
    for i, acct in ((1, ch.n1), (2, ch.n2), (3, ch.stranger)):
        ch.node(i, acct)
    ch.send(f.registerSLA(ch.sla(7, tenant_account=ch.tenant, route=(1, 2, 3), ppv=7)), ch.gov)
    ch.send(f.openDispute(7, 100, 200), ch.tenant)
    E, V = b"\xee" * 32, b"\xdd" * 32
    # out of order: decide / settle before evidence
    assert ch.reverts("WrongDisputeState", f.decide(1, V, [1]), ch.gov) == {
        "disputeId": 1, "state": 1, "required": 2}
    ch.reverts("WrongDisputeState", f.settle(1), ch.gov)
    # evidence: the governance only (not the tenant who opened it)
    for who in (ch.tenant, ch.n1, ch.stranger):
        ch.reverts("NotGovernance", f.recordEvidence(1, E), who)
    r = ch.send(f.recordEvidence(1, E), ch.gov)
    assert ch.events("EvidenceRecorded", r) == [{"disputeId": 1, "evidenceDigest": E}]
    ch.reverts("WrongDisputeState", f.recordEvidence(1, E), ch.gov)
    ch.reverts("WrongDisputeState", f.settle(1), ch.gov)
    # decide: governance only; faulty nodes on the route, each once
    for who in (ch.tenant, ch.n1):
        ch.reverts("NotGovernance", f.decide(1, V, [1]), who)
    assert ch.reverts("FaultyNotOnRoute", f.decide(1, V, [1, 9]), ch.gov) == {
        "disputeId": 1, "nodeId": 9}
    ch.reverts("FaultyDuplicate", f.decide(1, V, [3, 1, 3]), ch.gov)
    r = ch.send(f.decide(1, V, [1, 3]), ch.gov)
    assert ch.events("Decided", r) == [
        {"disputeId": 1, "verdictDigest": V, "faulty": [1, 3], "penalty": 14}]
    ch.reverts("WrongDisputeState", f.decide(1, V, [1]), ch.gov)
    exists, d = f.getDispute(1).call()
    assert exists and tuple(d) == (1, 7, 100, 200, 3, E, V, [1, 3], 14, ch.tenant)
    # settle: governance only, once
    ch.reverts("NotGovernance", f.settle(1), ch.tenant)
    r = ch.send(f.settle(1), ch.gov)
    assert ch.events("Settled", r) == [{"disputeId": 1, "slaId": 7, "penalty": 14}]
    assert ch.reverts("WrongDisputeState", f.settle(1), ch.gov)["state"] == 4
    assert f.getDispute(1).call()[1][4] == 4
    # unknown dispute ids
    for fn in (f.recordEvidence(99, E), f.decide(99, V, []), f.settle(99)):
        assert ch.reverts("UnknownDispute", fn, ch.gov) == {"disputeId": 99}
    assert f.getDispute(99).call()[0] is False
    # no faulty node: no penalty
    ch.send(f.openDispute(7, 0, 1), ch.gov)
    ch.send(f.recordEvidence(2, E), ch.gov)
    r = ch.send(f.decide(2, V, []), ch.gov)
    assert ch.events("Decided", r)[0]["penalty"] == 0
