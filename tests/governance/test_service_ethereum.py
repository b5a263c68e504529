"""The governance service (beatctl serve) on the production backend: the same loopback domain as
test_service_loopback.py (real stores, real Interrogation servers over mutual TLS), anchored on a
real JSON-RPC chain (ganache) through the Solidity contract, each device from its own account.

The service reads the ledger through ``EthereumLedger`` (SLAs by id, nodes, anchors with their
block times, disputes, the committee), evaluates every epoch from the anchored receipts, opens one
dispute on the drop and files the interrogation's decision as the governance's approval: the
contract records node 2 faulty. Then the same view read from the chain and from a local ledger
holding the same acts must agree field by field (the service must not see a different world on
the backend an operator deploys).
"""
import time

import pytest

from conftest import require_ganache
from loopback_domain import Domain
from test_service_loopback import L, epochs_of, results, run_rounds, svc_config

from governance.interrogate import load_config
from governance.service.service import Service
from governance.service.state import State
from governance.service.watcher import read_view

LINKS = [(1, 2), (2, 3)]


@pytest.fixture(scope="module")
def chain_domain(tmp_path_factory):
    require_ganache()
    tmp_path = tmp_path_factory.mktemp("svc-chain")
    from ledger_client.devnode import DevNode
    from ledger_client.ethereum import Account, EthereumLedger
    gov = Account.generate()
    devices = {n: Account.generate() for n in (1, 2, 3)}
    node = DevNode(str(tmp_path / "chain"),
                   accounts=[(a, 10**21) for a in [gov, *devices.values()]])
    node.start()
    d = None
    try:                           # a set-up that fails stops the node too
        led = EthereumLedger.deploy(node.url, gov, "sha3-256", timeout=30)
        (tmp_path / "domain").mkdir()
        d = Domain(tmp_path / "domain", LINKS)
        d.t = ((d.t0 // L) + 1) * L
        d.healthy = d.send((1, 2, 3), 2000, tag=1)
        d.dropped = d.send((1, 2, 3), 3000, tag=2, drop_at=2)
        d.after = d.send((1, 2, 3), 1500, tag=3)
        d.start(chain=(led, gov, devices))
        d.chain_gov = gov
        yield d, led
    finally:
        if d is not None:
            d.stop()
        node.stop()


def test_the_service_on_a_chain_disputes_the_drop_and_the_contract_records_node_2(
        chain_domain, tmp_path):
    d, led = chain_domain
    cfg = svc_config(tmp_path)
    svc = Service(led, d.chain_gov, cfg, load_config(str(d.config)), State(cfg.state_dir))
    try:
        with svc.state.lock:
            svc.state.sla(1)["next_epoch"] = (d.healthy[0] // L) * L
        svc.watcher.poll_once()
        view = svc.watcher.view
        assert sorted(view.slas) == [1] and view.slas[1].route == (1, 2, 3)
        assert sorted(view.nodes) == [1, 2, 3]
        for n in (1, 2, 3):        # every device's last anchor, with the chain's block time
            a = view.anchors[n]
            assert a is not None and a.node_id == n
            assert abs(a.ledger_t_ns - time.time_ns()) < 120 * 10**9
        run_rounds(svc, lambda: any(e["state"] == "filed" for e in
                                    svc.state.snapshot()["disputes"].values()), timeout=120)
        res = results(svc)
        for e in epochs_of(*d.healthy):
            assert res[e]["result"] == "ok", res[e]
            assert res[e]["ingress"] == res[e]["egress"] == 1000
        bad = epochs_of(*d.dropped)
        for e in bad:
            assert res[e]["result"] == "violation" and res[e]["egress"] == 0, res[e]
        disputes = led.disputes()
        assert len(disputes) == 1
        dispute = disputes[0]
        assert (dispute.from_ns, dispute.to_ns) == (bad[0], bad[1] + L - 1)
        assert dispute.state == "decided" and list(dispute.faulty) == [2]
        entry = next(iter(svc.state.snapshot()["disputes"].values()))
        assert entry["verdicts"] == {"1": "CONSISTENT", "2": "DROPPED", "3": "CONSISTENT"}
        # the archive judged again against the chain gives the digest the contract holds
        from governance import archive, interrogate as itg
        arch = archive.read(entry["evidence_dir"])
        j, _ = itg.replay(arch, led)
        assert arch.digest == dispute.evidence_digest
        assert itg.verdict_digest(j, arch.digest) == dispute.verdict_digest
    finally:
        svc.close()


def test_the_chain_and_a_local_ledger_give_the_service_the_same_view(chain_domain, tmp_path):
    """The acts of the fixture (nodes, links, the SLA, every device's anchors) replayed onto a local
    ledger: the service's view (SLAs, nodes, each device's last anchor) is the same on both, but
    for what is the backend's own (accounts, transaction references, write times)."""
    from ledger_client.keys import DeviceKey
    from ledger_client.local import LocalLedger
    d, led = chain_domain
    gov = DeviceKey.generate()
    local = LocalLedger(str(tmp_path / "local.mdb"), hash_name="sha3-256",
                        governance_pubkey=gov.public)
    try:
        import dataclasses
        for n in led.nodes():
            local.register_node(dataclasses.replace(n, account=None), signer=gov)
        for a, b in led.links():
            local.register_link(a, b, signer=gov)
        local.register_sla(led.get_sla(1), signer=gov)
        for n in (1, 2, 3):
            for a in led.anchors(n):
                local.anchor(a, signer=d.keys[n])
        # an SLA id far from the others (ids need not be consecutive): the service must see it
        from ledger_client.types import SLA
        sparse = SLA(7777, "tenant-b", led.get_sla(1).src, led.get_sla(1).dst, (3, 2, 1))
        led.register_sla(sparse, signer=d.chain_gov)
        local.register_sla(sparse, signer=gov)
        v_chain, v_local = read_view(led), read_view(local)
        assert sorted(v_chain.slas) == [1, 7777]
        assert v_chain.slas == v_local.slas
        assert ({k: dataclasses.replace(v, account=None) for k, v in v_chain.nodes.items()}
                == v_local.nodes)

        def content(a):
            return None if a is None else a.content()
        assert ({n: content(a) for n, a in v_chain.anchors.items()}
                == {n: content(a) for n, a in v_local.anchors.items()})
    finally:
        local.close()
