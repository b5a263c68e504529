"""The `local` ledger backend (docs/ledger.md, docs/ledger-local.md): permissions both ways,
idempotency, conflicts, gaps, the dispute life cycle, verify_chain, and several processes."""
import os
import subprocess
import sys
import textwrap

import pytest

from ledger_client.errors import (ConflictError, LedgerError, NotFound, OrderError,
                                  PermissionDenied)
from ledger_client.keys import DeviceKey
from ledger_client.local import LedgerMismatch, LocalLedger
from ledger_client.types import SLA, Anchor, Node

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
V4 = bytes(10) + b"\xff\xff"


def key(i):
    return DeviceKey.from_seed(bytes([i]) * 32)


GOV, N1, N2, TENANT, STRANGER = key(1), key(2), key(3), key(4), key(5)


def anchor(node_id, seq, root=None, size=10):
    return Anchor(node_id, seq, size, root or bytes([seq % 256]) * 32, 1000 * seq, 1000 * seq + 999)


def sla(sla_id=7, ppv=5):
    return SLA(sla_id, "acme", V4 + bytes([10, 0, 0, 1]), V4 + bytes([10, 0, 0, 2]), (1, 2),
               max_loss_ppm=100, penalty_per_violation=ppv, qm_terms={"b": 2, "a": 1})


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "ledger.mdb")


@pytest.fixture
def led(path):
    lg = LocalLedger(path, governance_pubkey=GOV.public)
    lg.register_node(Node(1, "isp-a", N1.public), signer=GOV)
    lg.register_node(Node(2, "isp-b", N2.public), signer=GOV)
    yield lg
    lg.close()


# -- creation and reopening ---------------------------------------------------------------------

def test_create_needs_governance_and_cleans_up(path):
    with pytest.raises(LedgerError, match="governance"):
        LocalLedger(path)
    assert not os.path.exists(path)


def test_reopen_same_or_none_accepted_other_refused(led, path):
    led.close()
    with LocalLedger(path) as lg:
        assert lg.governance_pubkey == GOV.public and lg.hash_name == "sha3-256"
        assert [n.node_id for n in lg.nodes()] == [1, 2]
    with LocalLedger(path, governance_pubkey=GOV) as lg:
        assert lg.get_node(2).owner == "isp-b"
    with pytest.raises(LedgerMismatch, match=GOV.public.hex()):
        LocalLedger(path, governance_pubkey=STRANGER.public)
    with pytest.raises(LedgerMismatch, match="blake2b-256"):
        LocalLedger(path, hash_name="blake2b-256")


def test_blake2b_ledger(tmp_path):
    with LocalLedger(str(tmp_path / "b"), "blake2b-256", GOV.public) as lg:
        lg.register_node(Node(1, "x", N1.public), signer=GOV)
        assert lg.anchor(anchor(1, 0), signer=N1) == "anchored"
        assert lg.verify_chain() == []
    with LocalLedger(str(tmp_path / "b"), None) as lg:
        assert lg.hash_name == "blake2b-256"


# -- registration -------------------------------------------------------------------------------

def test_register_node_governance_only(led):
    for signer in (N1, STRANGER):
        with pytest.raises(PermissionDenied, match="not the governance"):
            led.register_node(Node(3, "evil", STRANGER.public), signer=signer)
    assert led.get_node(3) is None
    led.register_node(Node(3, "isp-c", key(9).public, account=b"\x01" * 20), signer=GOV)
    assert led.get_node(3) == Node(3, "isp-c", key(9).public, b"\x01" * 20)


def test_register_node_identical_again_is_a_noop(led):
    n = led.entry_count()
    led.register_node(Node(1, "isp-a", N1.public), signer=GOV)          # no error
    assert led.entry_count() == n                                      # nothing written
    assert led.nodes() == [Node(1, "isp-a", N1.public), Node(2, "isp-b", N2.public)]
    # still the governance's to do, even as a no-op
    with pytest.raises(PermissionDenied):
        led.register_node(Node(1, "isp-a", N1.public), signer=N1)
    assert led.verify_chain() == []


def test_register_node_other_data_or_same_key_conflicts(led):
    for other in (Node(1, "isp-z", N1.public), Node(1, "isp-a", key(9).public),
                  Node(1, "isp-a", N1.public, account=b"\x01" * 20)):
        with pytest.raises(ConflictError, match="register_node 1"):
            led.register_node(other, signer=GOV)
    with pytest.raises(ConflictError, match="already node 1"):
        led.register_node(Node(9, "isp-z", N1.public), signer=GOV)
    assert led.get_node(1) == Node(1, "isp-a", N1.public) and led.get_node(9) is None


def test_register_sla_governance_only(led):
    for signer in (N1, TENANT):
        with pytest.raises(PermissionDenied):
            led.register_sla(sla(), signer=signer, tenant_pubkey=TENANT.public)
    assert led.get_sla(7) is None
    led.register_sla(sla(), signer=GOV, tenant_pubkey=TENANT.public)
    assert led.get_sla(7) == sla() and led.get_sla(7).qm_terms == {"a": 1, "b": 2}
    assert led.tenant_pubkey(7) == TENANT.public
    assert led.slas() == [sla()]
    n = led.entry_count()
    led.register_sla(sla(), signer=GOV, tenant_pubkey=TENANT.public)      # identical: a no-op
    assert led.entry_count() == n and led.slas() == [sla()]
    with pytest.raises(PermissionDenied):
        led.register_sla(sla(), signer=TENANT, tenant_pubkey=TENANT.public)
    # other terms, or the same terms with another (or no) tenant key: a conflict
    for terms, tpk in ((sla(ppv=6), TENANT.public), (sla(), None), (sla(), STRANGER.public)):
        with pytest.raises(ConflictError, match="register_sla 7"):
            led.register_sla(terms, signer=GOV, tenant_pubkey=tpk)
    assert led.entry_count() == n and led.tenant_pubkey(7) == TENANT.public
    assert led.verify_chain() == []


# -- the registered topology -------------------------------------------------------------------

def test_links_governance_only_undirected_idempotent(led):
    led.register_node(Node(3, "isp-c", key(9).public), signer=GOV)
    assert led.links() == [] and led.neighbours(1) == []
    for signer in (N1, TENANT, STRANGER):
        with pytest.raises(PermissionDenied, match="register_link 1-2: .* not the governance"):
            led.register_link(2, 1, signer=signer)
    assert led.links() == []
    n = led.entry_count()
    led.register_link(2, 1, signer=GOV)                  # stored as (1, 2)
    led.register_link(3, 2, signer=GOV)
    assert led.entry_count() == n + 2
    e = led.entries()[-2]
    assert (e["op"], e["kind"], e["body"], e["signer"]) == ("register_link", 9,
                                                            {"a": 1, "b": 2}, GOV.public)
    # the same link again, either way round: nothing written; still the governance's to do
    led.register_link(1, 2, signer=GOV)
    led.register_link(2, 1, signer=GOV)
    assert led.entry_count() == n + 2
    with pytest.raises(PermissionDenied):
        led.register_link(1, 2, signer=N1)
    assert led.links() == [(1, 2), (2, 3)]
    assert led.neighbours(2) == [1, 3] and led.neighbours(1) == [2] and led.neighbours(3) == [2]
    assert led.neighbours(99) == []
    assert led.verify_chain() == []


def test_links_refused_for_unknown_nodes_and_loops(led):
    n = led.entry_count()
    for a, b, missing in ((1, 99, 99), (99, 1, 99), (98, 99, 98)):
        with pytest.raises(NotFound, match=f"register_link {min(a, b)}-{max(a, b)}: node "
                                           f"{missing} is not registered"):
            led.register_link(a, b, signer=GOV)
    with pytest.raises(LedgerError, match="register_link 2-2: .*itself") as info:
        led.register_link(2, 2, signer=GOV)
    assert type(info.value) is LedgerError                    # as the contract's InvalidLink
    with pytest.raises(ValueError, match="must be an integer"):
        led.register_link(1, -2, signer=GOV)
    assert led.entry_count() == n and led.links() == []


def test_retire_link(led):
    led.register_node(Node(3, "isp-c", key(9).public), signer=GOV)
    led.register_link(1, 2, signer=GOV)
    led.register_link(1, 3, signer=GOV)
    with pytest.raises(PermissionDenied, match="retire_link 1-2"):
        led.retire_link(1, 2, signer=N1)
    with pytest.raises(NotFound, match="retire_link 2-3: no such link"):
        led.retire_link(3, 2, signer=GOV)
    with pytest.raises(LedgerError, match="itself"):
        led.retire_link(1, 1, signer=GOV)
    n = led.entry_count()
    led.retire_link(2, 1, signer=GOV)
    assert led.entries()[-1]["op"] == "retire_link" and led.entries()[-1]["kind"] == 10
    led.retire_link(1, 2, signer=GOV)                                  # retired: a no-op
    assert led.entry_count() == n + 1
    assert led.links() == [(1, 3)] and led.neighbours(2) == [] and led.neighbours(1) == [3]
    led.register_link(1, 2, signer=GOV)                                # a link built again
    assert led.links() == [(1, 2), (1, 3)] and led.entry_count() == n + 2
    assert led.verify_chain() == []


def test_links_survive_reopening_and_verify_chain_checks_them(led, path):
    led.register_link(1, 2, signer=GOV)
    led.close()
    with LocalLedger(path) as lg:
        assert lg.links() == [(1, 2)] and lg.verify_chain() == []
        with lg.env.begin(write=True) as txn:      # a link written behind the chain's back
            txn.put((1).to_bytes(8, "big") + (9).to_bytes(8, "big"),
                    b'{"a":1,"b":9,"entries":[2],"state":"active"}', db=lg.dbs["links"])
        assert (1, 9) in lg.links()
        assert any(p.startswith("index links") for p in lg.verify_chain())


# -- anchors ------------------------------------------------------------------------------------

def test_anchor_only_registered_nodes_for_themselves(led):
    with pytest.raises(PermissionDenied, match="not a registered node"):
        led.anchor(anchor(1, 0), signer=STRANGER)
    with pytest.raises(PermissionDenied, match="not a registered node"):
        led.anchor(anchor(1, 0), signer=GOV)
    with pytest.raises(PermissionDenied, match="only for itself"):
        led.anchor(anchor(2, 0), signer=N1)
    assert led.anchors() == [] and led.next_batch_seq(1) == 0
    assert led.anchor(anchor(1, 0), signer=N1) == "anchored"
    assert led.anchor(anchor(2, 0), signer=N2) == "anchored"
    # another node cannot even replay a node's existing anchor
    with pytest.raises(PermissionDenied):
        led.anchor(anchor(1, 0), signer=N2)


def test_anchor_idempotent_conflict_gap(led):
    for s in range(3):
        assert led.anchor(anchor(1, s), signer=N1) == "anchored"
    n = led.entry_count()
    assert led.anchor(anchor(1, 1), signer=N1) == "exists"
    assert led.entry_count() == n                      # "exists" writes nothing
    with pytest.raises(ConflictError, match="node 1 batch 1"):
        led.anchor(anchor(1, 1, root=b"\xee" * 32), signer=N1)
    with pytest.raises(ConflictError):
        led.anchor(anchor(1, 1, size=11), signer=N1)
    with pytest.raises(OrderError, match="next batch_seq of node 1 is 3"):
        led.anchor(anchor(1, 5), signer=N1)
    with pytest.raises(OrderError):
        led.anchor(anchor(2, 1), signer=N2)
    assert led.next_batch_seq(1) == 3 and led.next_batch_seq(2) == 0
    assert led.next_batch_seq(99) == 0
    a = led.get_anchor(1, 2)
    assert a.content() == anchor(1, 2).content() and a.ref == str(n - 1)
    assert led.get_anchor(1, 3) is None
    assert [x.batch_seq for x in led.anchors(1, from_seq=1)] == [1, 2]
    assert led.anchors(2) == []
    led.anchor(anchor(2, 0), signer=N2)
    assert [(x.node_id, x.batch_seq) for x in led.anchors()] == [(1, 0), (1, 1), (1, 2), (2, 0)]
    assert [(x.node_id, x.batch_seq) for x in led.anchors(from_seq=1)] == [(1, 1), (1, 2)]


def test_anchor_bad_input(led):
    with pytest.raises(ValueError, match="root"):
        led.anchor(Anchor(1, 0, 1, b"short", 0, 0), signer=N1)
    with pytest.raises(ValueError, match="tree_size"):
        led.anchor(Anchor(1, 0, -1, bytes(32), 0, 0), signer=N1)


class BadSigner:
    """Claims N1's public key but signs with another key."""
    public = N1.public

    def sign(self, msg):
        return STRANGER.sign(msg)


def test_write_checks_the_signature(led):
    with pytest.raises(PermissionDenied, match="does not verify"):
        led.anchor(anchor(1, 0), signer=BadSigner())
    assert led.anchors() == []


# -- disputes -----------------------------------------------------------------------------------

D1, D2 = b"\x11" * 32, b"\x22" * 32


def test_dispute_life_cycle_and_penalty(led):
    led.register_sla(sla(ppv=5), signer=GOV, tenant_pubkey=TENANT.public)
    did = led.open_dispute(7, 100, 200, signer=TENANT)
    assert did == 1
    d = led.get_dispute(did)
    assert (d.sla_id, d.from_ns, d.to_ns, d.state, d.penalty) == (7, 100, 200, "opened", 0)
    led.record_evidence(did, D1, signer=GOV)
    assert led.get_dispute(did).state == "evidence"
    assert led.get_dispute(did).evidence_digest == D1
    led.decide(did, D2, [1, 2], signer=GOV)
    d = led.get_dispute(did)
    assert (d.state, d.verdict_digest, d.faulty, d.penalty) == ("decided", D2, (1, 2), 10)
    led.settle(did, signer=GOV)
    assert led.get_dispute(did).state == "settled"
    assert led.open_dispute(7, 0, 1, signer=GOV) == 2          # the governance opens too
    assert led.get_dispute(3) is None
    ops = [e["op"] for e in led.entries()]
    assert ops[-5:] == ["open_dispute", "record_evidence", "decide", "settle", "open_dispute"]
    assert led.verify_chain() == []


def test_dispute_penalty_zero_faulty_and_duplicates(led):
    led.register_sla(sla(ppv=7), signer=GOV)
    did = led.open_dispute(7, 0, 1, signer=GOV)
    led.record_evidence(did, D1, signer=GOV)
    with pytest.raises(LedgerError, match="twice") as info:
        led.decide(did, D2, [1, 1], signer=GOV)
    assert type(info.value) is LedgerError          # as the contract's FaultyDuplicate
    led.decide(did, D2, [], signer=GOV)
    assert led.get_dispute(did).penalty == 0


def test_decide_faulty_must_be_on_the_route(led):
    led.register_node(Node(3, "isp-c", key(9).public), signer=GOV)     # registered, off the route
    led.register_sla(sla(ppv=7), signer=GOV)                          # route (1, 2)
    did = led.open_dispute(7, 0, 1, signer=GOV)
    led.record_evidence(did, D1, signer=GOV)
    n = led.entry_count()
    for faulty in ([3], [1, 3], [99], [2, 1, 99]):
        with pytest.raises(LedgerError, match="not on the route") as info:
            led.decide(did, D2, faulty, signer=GOV)
        assert type(info.value) is LedgerError      # as the contract's FaultyNotOnRoute
    # the contract's order: [1, 1, 3] is a duplicate (1) before 3 is reached
    with pytest.raises(LedgerError, match="node 1 twice"):
        led.decide(did, D2, [1, 1, 3], signer=GOV)
    assert led.entry_count() == n and led.get_dispute(did).state == "evidence"
    led.decide(did, D2, [2, 1], signer=GOV)
    d = led.get_dispute(did)
    assert (d.state, d.faulty, d.penalty) == ("decided", (2, 1), 14)
    assert led.verify_chain() == []


def test_a_chain_written_before_the_route_rule_still_verifies(led):
    """Decide entries of kind 6 (written before the route rule) keep their meaning: an off-route
    faulty node there is accepted by the replay; new writes are kind 8, which checks the route."""
    from ledger_client import local
    led.register_sla(sla(ppv=7), signer=GOV)
    did = led.open_dispute(7, 0, 1, signer=GOV)
    led.record_evidence(did, D1, signer=GOV)
    old_body = {"dispute_id": did, "verdict_digest": D2.hex(), "faulty": [1, 99], "penalty": 14}
    led._write(local.K_DECIDE, lambda st, pub: old_body, GOV)        # as the old code wrote it
    assert led.entries()[-1]["kind"] == 6 and led.entries()[-1]["op"] == "decide"
    assert led.get_dispute(did).faulty == (1, 99)
    led.settle(did, signer=GOV)
    assert led.verify_chain() == []
    # kind 6 still refuses a duplicate (it always did); kind 8 also refuses an off-route node
    did = led.open_dispute(7, 0, 1, signer=GOV)
    led.record_evidence(did, D1, signer=GOV)
    with pytest.raises(LedgerError, match="twice"):
        led._write(local.K_DECIDE, lambda st, pub: dict(old_body, dispute_id=did,
                                                        faulty=[1, 1]), GOV)
    with pytest.raises(LedgerError, match="not on the route"):
        led._write(local.K_DECIDE_ROUTE, lambda st, pub: dict(old_body, dispute_id=did), GOV)
    led.decide(did, D2, [1], signer=GOV)
    assert led.entries()[-1]["kind"] == local.K_DECIDE_ROUTE
    assert led.verify_chain() == []


def test_dispute_out_of_order(led):
    led.register_sla(sla(), signer=GOV, tenant_pubkey=TENANT.public)
    did = led.open_dispute(7, 0, 10, signer=TENANT)
    with pytest.raises(OrderError, match="'opened'"):
        led.decide(did, D2, [1], signer=GOV)
    with pytest.raises(OrderError):
        led.settle(did, signer=GOV)
    led.record_evidence(did, D1, signer=GOV)
    with pytest.raises(OrderError, match="'evidence'"):
        led.record_evidence(did, D2, signer=GOV)          # other content after the step
    with pytest.raises(OrderError):
        led.settle(did, signer=GOV)
    led.decide(did, D2, [2], signer=GOV)
    for other in ((D1, [2]), (D2, [1]), (D2, [1, 2]), (D2, [])):
        with pytest.raises(OrderError, match="'decided'"):
            led.decide(did, other[0], other[1], signer=GOV)
    led.settle(did, signer=GOV)
    for step in (lambda: led.record_evidence(did, D2, signer=GOV),
                 lambda: led.decide(did, D1, [2], signer=GOV)):
        with pytest.raises(OrderError, match="'settled'"):
            step()
    assert led.get_dispute(did).state == "settled"
    with pytest.raises(NotFound):
        led.record_evidence(42, D1, signer=GOV)
    with pytest.raises(NotFound):
        led.settle(42, signer=GOV)


def test_dispute_steps_repeated_with_the_same_content_are_noops(led):
    led.register_sla(sla(), signer=GOV, tenant_pubkey=TENANT.public)
    did = led.open_dispute(7, 0, 10, signer=TENANT)
    led.record_evidence(did, D1, signer=GOV)
    n = led.entry_count()
    led.record_evidence(did, D1, signer=GOV)
    assert led.entry_count() == n and led.get_dispute(did).state == "evidence"
    led.decide(did, D2, [2, 1], signer=GOV)
    n = led.entry_count()
    led.decide(did, D2, [2, 1], signer=GOV)
    led.record_evidence(did, D1, signer=GOV)
    assert led.entry_count() == n and led.get_dispute(did).state == "decided"
    led.settle(did, signer=GOV)
    n = led.entry_count()
    for _ in range(2):
        led.settle(did, signer=GOV)
        led.decide(did, D2, [2, 1], signer=GOV)
        led.record_evidence(did, D1, signer=GOV)
    assert led.entry_count() == n
    d = led.get_dispute(did)
    assert (d.state, d.evidence_digest, d.verdict_digest, d.faulty, d.penalty) == (
        "settled", D1, D2, (2, 1), 10)
    # a no-op is still the governance's: anyone else is refused, as the first time
    for step in (lambda s: led.record_evidence(did, D1, signer=s),
                 lambda s: led.decide(did, D2, [2, 1], signer=s),
                 lambda s: led.settle(did, signer=s)):
        for s in (TENANT, N1):
            with pytest.raises(PermissionDenied):
                step(s)
    assert led.entry_count() == n
    assert led.verify_chain() == []


def test_dispute_permissions(led):
    led.register_sla(sla(), signer=GOV, tenant_pubkey=TENANT.public)
    led.register_sla(sla(8), signer=GOV)                       # no tenant key: governance only
    for signer in (N1, STRANGER):
        with pytest.raises(PermissionDenied, match="neither the governance nor the SLA's tenant"):
            led.open_dispute(7, 0, 1, signer=signer)
    with pytest.raises(PermissionDenied):
        led.open_dispute(8, 0, 1, signer=TENANT)
    with pytest.raises(NotFound, match="sla 99"):
        led.open_dispute(99, 0, 1, signer=GOV)
    for signer in (GOV, TENANT):
        with pytest.raises(LedgerError, match="from_ns 5 after to_ns 1") as info:
            led.open_dispute(7, 5, 1, signer=signer)
        assert type(info.value) is LedgerError          # as the contract's InvalidRange
    assert led.get_dispute(1) is None
    did = led.open_dispute(7, 0, 1, signer=TENANT)
    for signer in (TENANT, N1):          # the tenant opens; only the governance moves it on
        with pytest.raises(PermissionDenied):
            led.record_evidence(did, D1, signer=signer)
    led.record_evidence(did, D1, signer=GOV)
    with pytest.raises(PermissionDenied):
        led.decide(did, D2, [1], signer=TENANT)
    led.decide(did, D2, [1], signer=GOV)
    with pytest.raises(PermissionDenied):
        led.settle(did, signer=N2)
    led.settle(did, signer=GOV)
    assert led.verify_chain() == []


# -- the chain ----------------------------------------------------------------------------------

def test_entries_are_chained_and_signed(led):
    led.anchor(anchor(1, 0), signer=N1)
    es = led.entries()
    assert [e["n"] for e in es] == [0, 1, 2]
    h = led._h
    for a, b in zip(es, es[1:]):
        assert b["raw"][:32] == h(a["raw"])
    assert es[2]["signer"] == N1.public and es[0]["signer"] == GOV.public
    assert DeviceKey.verify(N1.public, es[2]["raw"][:-64], es[2]["raw"][-64:])


def test_verify_chain_names_a_changed_entry(led, path):
    for s in range(4):
        led.anchor(anchor(1, s, root=bytes([0xa0 + s]) * 32), signer=N1)
    assert led.verify_chain() == []
    target = led.entries()[4]                              # node 1's batch 2
    assert target["body"]["batch_seq"] == 2
    raw = target["raw"]
    led.close()
    with open(path, "rb") as f:
        data = bytearray(f.read())
    i = data.find(raw)
    assert i >= 0
    hits = 0
    while i >= 0:                     # every copy (LMDB is copy-on-write; stale pages may hold one)
        pos = i + raw.index(b"a2a2a2") + 1                 # a hex digit of the root
        data[pos] ^= 0x01                                  # "2" -> "3": still valid JSON and hex
        hits += 1
        i = data.find(raw, i + 1)
    with open(path, "r+b") as f:
        f.write(data)
    with LocalLedger(path) as lg:
        problems = lg.verify_chain()
    assert problems
    assert any(p.startswith("entry 4: bad signature") for p in problems), problems
    assert any(p.startswith("entry 5: prev_hash") for p in problems), problems
    assert not any(p.startswith(("entry 3", "entry 2")) for p in problems), problems


def test_verify_chain_finds_a_forged_index(led, path):
    led.anchor(anchor(1, 0), signer=N1)
    with led.env.begin(write=True) as txn:          # an index written behind the chain's back
        txn.put((2).to_bytes(8, "big"), (5).to_bytes(8, "big"), db=led.dbs["next_seq"])
    assert any(p.startswith("index next_seq") for p in led.verify_chain())


WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    from ledger_client.keys import DeviceKey
    from ledger_client.local import LocalLedger
    from ledger_client.types import Anchor
    node_id, count = int(sys.argv[1]), int(sys.argv[2])
    k = DeviceKey.from_seed(bytes([node_id + 1]) * 32)
    lg = LocalLedger({path!r})
    for s in range(count):
        r = lg.anchor(Anchor(node_id, s, 3, bytes([s % 256]) * 32, s, s + 1), signer=k)
        assert r == "anchored", r
    lg.close()
""")


def test_two_processes_write_concurrently(led, path):
    led.close()
    count = 150
    script = WRITER.format(repo=REPO, path=path)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(n), str(count)],
                              stderr=subprocess.PIPE, text=True) for n in (1, 2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with LocalLedger(path) as lg:
        assert lg.entry_count() == 2 + 2 * count
        for n in (1, 2):
            assert [a.batch_seq for a in lg.anchors(n)] == list(range(count))
            assert lg.next_batch_seq(n) == count
        signers = [e["signer"] for e in lg.entries()[2:]]
        assert signers.count(N1.public) == signers.count(N2.public) == count
        assert lg.verify_chain() == []


# -- local and the contract agree (the ethereum backend on the in-process EVM, eth-tester) ------

def _RevertDataProvider():
    """eth-tester's provider, reporting a revert as a real node does (ContractCustomError with
    the revert data) so that the backend maps the contract's error as it does in production."""
    import ast

    from eth_tester.exceptions import TransactionFailed
    from web3 import EthereumTesterProvider
    from web3.exceptions import ContractCustomError

    class Provider(EthereumTesterProvider):
        def make_request(self, method, params):
            try:
                return super().make_request(method, params)
            except TransactionFailed as exc:
                msg = str(exc)
                if ": b'" not in msg and ': b"' not in msg:
                    raise
                data = ast.literal_eval(msg[msg.index(": b") + 2:])
                raise ContractCustomError(msg, data="0x" + data.hex()) from exc

    return Provider()


class EvmLedger:
    """The ethereum backend (its client-side no-ops included) on eth-tester running the committed
    Beat.json, as tests/ledger/test_contract_evm.py does, with funded keys for its raw
    transactions."""

    def __init__(self):
        import warnings

        from web3 import Web3

        from ledger_client.ethereum import Account, EthereumLedger, artifact
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w3 = Web3(_RevertDataProvider())
        self.keys = {r: Account.generate() for r in ("gov", "n1", "n2", "tenant", "stranger")}
        for acct in self.keys.values():
            w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": acct.address,
                                     "value": 10 ** 20})
        gov, art = self.keys["gov"], artifact()
        tx = w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"]).constructor(
            "sha3-256", [gov.address], [bytes(32)], 1, 7 * 86400, 14 * 86400).build_transaction({"from": gov.address, "nonce": 0,
                                           "chainId": w3.eth.chain_id,
                                           "gasPrice": w3.eth.gas_price})
        h = w3.eth.send_raw_transaction(gov.sign_transaction(tx).raw_transaction)
        address = w3.eth.wait_for_transaction_receipt(h)["contractAddress"]
        self.led = EthereumLedger("http://127.0.0.1:9", address, "sha3-256")  # never dialled
        self.led.w3 = w3
        self.led.contract = w3.eth.contract(address=address, abi=art["abi"])


def _outcome(fn):
    try:
        r = fn()
    except LedgerError as exc:
        return type(exc).__name__
    return "ok" if r is None else r


EV, VD = b"\xee" * 32, b"\xdd" * 32
ACCT = {1: b"\x01" * 20, 2: b"\x02" * 20, 3: b"\x03" * 20}
PUBS = {1: N1.public, 2: N2.public, 3: key(9).public}

# (what, operation(ledger, signer(role), tenant kwargs) -> result, expected on both backends)
AGREE = [
    ("register node 3", lambda L, s, t: L.register_node(Node(3, "c", PUBS[3], ACCT[3]),
                                                        signer=s("gov")), "ok"),
    ("identical node again", lambda L, s, t: L.register_node(Node(3, "c", PUBS[3], ACCT[3]),
                                                             signer=s("gov")), "ok"),
    ("identical node, not the governance",
     lambda L, s, t: L.register_node(Node(3, "c", PUBS[3], ACCT[3]), signer=s("stranger")),
     "PermissionDenied"),
    ("other node under id 3", lambda L, s, t: L.register_node(Node(3, "z", PUBS[3], ACCT[3]),
                                                              signer=s("gov")), "ConflictError"),
    ("register sla 7", lambda L, s, t: L.register_sla(sla(ppv=5), signer=s("gov"), **t), "ok"),
    ("identical sla again", lambda L, s, t: L.register_sla(sla(ppv=5), signer=s("gov"), **t),
     "ok"),
    ("other terms under sla 7", lambda L, s, t: L.register_sla(sla(ppv=6), signer=s("gov"), **t),
     "ConflictError"),
    ("link 2-1", lambda L, s, t: L.register_link(2, 1, signer=s("gov")), "ok"),
    ("link 1-2 again", lambda L, s, t: L.register_link(1, 2, signer=s("gov")), "ok"),
    ("link 1-2, not the governance", lambda L, s, t: L.register_link(1, 2, signer=s("n1")),
     "PermissionDenied"),
    ("link to an unknown node", lambda L, s, t: L.register_link(1, 99, signer=s("gov")),
     "NotFound"),
    ("link a node to itself", lambda L, s, t: L.register_link(3, 3, signer=s("gov")),
     "LedgerError"),
    ("link 3-2", lambda L, s, t: L.register_link(3, 2, signer=s("gov")), "ok"),
    ("links", lambda L, s, t: L.links(), [(1, 2), (2, 3)]),
    ("neighbours of 2", lambda L, s, t: L.neighbours(2), [1, 3]),
    ("retire 1-3, never registered", lambda L, s, t: L.retire_link(1, 3, signer=s("gov")),
     "NotFound"),
    ("retire 2-3, not the governance", lambda L, s, t: L.retire_link(2, 3, signer=s("n2")),
     "PermissionDenied"),
    ("retire 3-2", lambda L, s, t: L.retire_link(3, 2, signer=s("gov")), "ok"),
    ("retire 2-3 again", lambda L, s, t: L.retire_link(2, 3, signer=s("gov")), "ok"),
    ("links after retiring", lambda L, s, t: L.links(), [(1, 2)]),
    ("neighbours of 3", lambda L, s, t: L.neighbours(3), []),
    ("link 2-3 again", lambda L, s, t: L.register_link(2, 3, signer=s("gov")), "ok"),
    ("links at the end", lambda L, s, t: L.links(), [(1, 2), (2, 3)]),
    ("open from > to", lambda L, s, t: L.open_dispute(7, 5, 1, signer=s("tenant")),
     "LedgerError"),
    ("open", lambda L, s, t: L.open_dispute(7, 0, 10, signer=s("tenant")), 1),
    ("decide before evidence", lambda L, s, t: L.decide(1, VD, [1], signer=s("gov")),
     "OrderError"),
    ("evidence", lambda L, s, t: L.record_evidence(1, EV, signer=s("gov")), "ok"),
    ("same evidence again", lambda L, s, t: L.record_evidence(1, EV, signer=s("gov")), "ok"),
    ("other evidence", lambda L, s, t: L.record_evidence(1, VD, signer=s("gov")), "OrderError"),
    ("decide: faulty off the route", lambda L, s, t: L.decide(1, VD, [1, 3], signer=s("gov")),
     "LedgerError"),
    ("decide: faulty unknown", lambda L, s, t: L.decide(1, VD, [99], signer=s("gov")),
     "LedgerError"),
    ("decide: faulty twice", lambda L, s, t: L.decide(1, VD, [2, 2], signer=s("gov")),
     "LedgerError"),
    ("decide", lambda L, s, t: L.decide(1, VD, [2, 1], signer=s("gov")), "ok"),
    ("same decide again", lambda L, s, t: L.decide(1, VD, [2, 1], signer=s("gov")), "ok"),
    ("decide, other faulty", lambda L, s, t: L.decide(1, VD, [1], signer=s("gov")),
     "OrderError"),
    ("decide, other verdict", lambda L, s, t: L.decide(1, EV, [2, 1], signer=s("gov")),
     "OrderError"),
    ("same evidence after decide", lambda L, s, t: L.record_evidence(1, EV, signer=s("gov")),
     "ok"),
    ("settle, not the governance", lambda L, s, t: L.settle(1, signer=s("tenant")),
     "PermissionDenied"),
    ("settle", lambda L, s, t: L.settle(1, signer=s("gov")), "ok"),
    ("settle again", lambda L, s, t: L.settle(1, signer=s("gov")), "ok"),
    ("settle again, not the governance", lambda L, s, t: L.settle(1, signer=s("n1")),
     "PermissionDenied"),
    ("same decide after settle", lambda L, s, t: L.decide(1, VD, [2, 1], signer=s("gov")), "ok"),
    ("other evidence after settle", lambda L, s, t: L.record_evidence(1, VD, signer=s("gov")),
     "OrderError"),
    ("settle unknown", lambda L, s, t: L.settle(42, signer=s("gov")), "NotFound"),
]


def test_local_and_the_contract_agree(led):
    pytest.importorskip("eth_tester")
    evm = EvmLedger()
    for i in (1, 2):
        evm.led.register_node(Node(i, "x", PUBS[i], ACCT[i]), signer=evm.keys["gov"])
    local_keys = {"gov": GOV, "n1": N1, "n2": N2, "tenant": TENANT, "stranger": STRANGER}
    got = {"local": [], "ethereum": []}
    for what, op, expected in AGREE:
        lo = _outcome(lambda: op(led, local_keys.get, {"tenant_pubkey": TENANT.public}))
        et = _outcome(lambda: op(evm.led, evm.keys.get,
                                 {"tenant_account": evm.keys["tenant"]}))
        got["local"].append((what, lo))
        got["ethereum"].append((what, et))
    assert got["local"] == got["ethereum"]
    assert got["local"] == [(what, expected) for what, _, expected in AGREE]
    d_local, d_evm = led.get_dispute(1), evm.led.get_dispute(1)
    assert d_local == d_evm and d_local.state == "settled" and d_local.penalty == 10
    assert [n.node_id for n in led.nodes()] == [n.node_id for n in evm.led.nodes()] == [1, 2, 3]
    assert led.get_sla(7) == evm.led.get_sla(7) == sla(ppv=5)
    assert led.verify_chain() == []


# -- open_backend: the one place that picks a backend -------------------------------------------

def test_open_backend_local_missing_error_create_await(tmp_path):
    from ledger_client.backend import BackendSpec, open_backend
    from ledger_client.local import AwaitedLocalLedger
    H = "sha3-256"
    p = str(tmp_path / "ledger.lmdb")
    with pytest.raises(NotFound, match=r"ledger\.lmdb: no such ledger"):
        open_backend(f"local:{p}")
    awaited = open_backend(BackendSpec("local", path=p), hash_name=H, missing="await")
    assert isinstance(awaited, AwaitedLocalLedger)
    awaited.close()
    with pytest.raises(ValueError, match="needs the domain's hash"):
        open_backend(f"local:{p}", missing="await")
    gov = key(0)
    with open_backend(f"local:{p}", hash_name=H, missing="create", governance_pubkey=gov.public) \
            as led:
        assert isinstance(led, LocalLedger)
        led.register_node(Node(1, "op", key(1).public), signer=gov)
    with open_backend(f"local:{p}") as led:                   # the file's own hash
        assert led.hash_name == H and [n.node_id for n in led.nodes()] == [1]


def test_backend_spec_parses_and_names_what_is_wrong():
    from ledger_client.backend import BackendSpec
    assert BackendSpec.parse("local:/x/y") == BackendSpec("local", path="/x/y")
    e = BackendSpec.parse("ethereum:http://h:8545#0x" + "ab" * 20)
    assert (e.url, e.contract) == ("http://h:8545", "0x" + "ab" * 20)
    assert str(e) == "ethereum:http://h:8545#0x" + "ab" * 20
    for bad in ("", "local:", "ftp:x", "ethereum:"):
        with pytest.raises(ValueError, match="not local:PATH nor ethereum"):
            BackendSpec.parse(bad)
    with pytest.raises(ValueError, match="'chain' is not one of local, ethereum"):
        BackendSpec("chain", path="x")


def test_open_backend_imports_web3_only_for_ethereum():
    """Without web3 (beat[ethereum] not installed) the local backend opens, and the ethereum one
    says what to install; ledger_client.backend never imports web3 itself."""
    code = textwrap.dedent("""
        import sys
        sys.modules["web3"] = None                  # as if not installed
        from ledger_client.backend import BackendUnavailable, open_backend
        assert "web3" not in [m for m in sys.modules if sys.modules[m] is not None]
        try:
            open_backend("ethereum:http://127.0.0.1:1#0x" + "00" * 20)
        except BackendUnavailable as exc:
            print(exc)
        """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert r.returncode == 0, r.stderr
    assert 'ledger backend "ethereum" needs web3' in r.stdout
    assert "pip install 'beat[ethereum]'" in r.stdout
