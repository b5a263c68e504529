"""The device and governance tools on an ``ethereum`` ledger, against a real JSON-RPC node (a
ganache DevNode on loopback): ``beatd keygen --ethereum``, ``beatctl deploy``, ``register-node``,
``register-sla``, ``nodes``, ``slas``, ``anchors``; and a daemon whose ``[ledger] backend =
"ethereum"`` anchors on that chain (its account key ``device.eth``, its Ed25519 identity
``device_key`` separate)."""
import json
import os
import stat
import subprocess
import sys

import pytest

from conftest import REPO
from ledger_client.devnode import DevNode
from ledger_client.ethereum import Account, EthereumLedger
from ledger_client.keys import DeviceKey

ETH = 10 ** 18


def beatctl(*argv, check=True):
    p = subprocess.run([sys.executable, "-m", "governance.cli", *argv], capture_output=True,
                       text=True, cwd=REPO, timeout=120)
    if check:
        assert p.returncode == 0, f"beatctl {' '.join(argv)}: {p.returncode}: {p.stderr}"
    return p


def keygen(out, *extra):
    p = subprocess.run([sys.executable, "-m", "beatd", "keygen", "--out", str(out), *extra],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    return p


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A DevNode with the governance account (gov.eth, written by beatctl keygen --ethereum) and
    a device (beatd keygen --ethereum) funded at genesis."""
    d = tmp_path_factory.mktemp("chain")
    gov_path = d / "gov.eth"
    p = beatctl("keygen", "--ethereum", "--out", str(gov_path))
    gov = Account.from_file(gov_path)
    assert p.stdout.strip() == gov.address
    assert stat.S_IMODE(os.stat(gov_path).st_mode) == 0o600
    p = keygen(d / "dev", "--ethereum")
    assert p.returncode == 0, p.stderr
    dev = Account.from_file(d / "dev" / "device.eth")
    node = DevNode(str(d / "db"), accounts=[(gov.private_key_hex(), 100 * ETH),
                                             (dev.private_key_hex(), 100 * ETH)])
    node.start()
    try:
        yield {"dir": d, "url": node.url, "gov": str(gov_path), "gov_acct": gov,
               "dev_dir": d / "dev", "dev": dev, "node": node}
    finally:
        node.stop()


def test_keygen_ethereum(tmp_path):
    p = keygen(tmp_path / "k", "--ethereum")
    assert p.returncode == 0, p.stderr
    pub_hex, address = p.stdout.split()
    eth = tmp_path / "k" / "device.eth"
    assert stat.S_IMODE(os.stat(eth).st_mode) == 0o600
    assert Account.from_file(eth).address == address
    assert (tmp_path / "k" / "device.eth.addr").read_text().strip() == address
    assert DeviceKey.load(tmp_path / "k" / "device.ed25519").public_hex == pub_hex
    # kept unless --force
    p = keygen(tmp_path / "k", "--ethereum")
    assert p.returncode == 2 and "device.eth" in p.stderr and "--force" in p.stderr
    assert Account.from_file(eth).address == address
    p = keygen(tmp_path / "k", "--ethereum", "--force")
    assert p.returncode == 0 and p.stdout.split()[1] != address
    # without --ethereum: no device.eth
    p = keygen(tmp_path / "plain")
    assert p.returncode == 0 and len(p.stdout.split()) == 1
    assert not (tmp_path / "plain" / "device.eth").exists()


def test_beatctl_deploy_register_anchors(chain):
    url, gov = chain["url"], chain["gov"]
    p = beatctl("--ledger", f"ethereum:{url}", "--key", gov, "deploy", "--json")
    info = json.loads(p.stdout)
    addr = info["contract"]
    assert info["governance"] == chain["gov_acct"].address and info["hash"] == "sha3-256"
    ledger = f"ethereum:{url}#{addr}"
    assert info["ledger"] == ledger

    # register-node: --account is required on ethereum
    pubfile = str(chain["dev_dir"] / "device.ed25519.pub")
    p = beatctl("--ledger", ledger, "--key", gov, "register-node", "--node-id", "7", "--owner",
                "isp-a", "--pubkey-file", pubfile, check=False)
    assert p.returncode == 2 and "--account" in p.stderr
    dev = chain["dev"]
    beatctl("--ledger", ledger, "--key", gov, "register-node", "--node-id", "7", "--owner",
            "isp-a", "--pubkey-file", pubfile, "--account", dev.address)
    # again, identical: a no-op on the contract
    beatctl("--ledger", ledger, "--key", gov, "register-node", "--node-id", "7", "--owner",
            "isp-a", "--pubkey-file", pubfile, "--account", dev.address)
    # a key that is not the governance's: refused by the contract (exit 1)
    p = beatctl("--ledger", ledger, "--key", str(chain["dev_dir"] / "device.eth"),
                "register-node", "--node-id", "8", "--owner", "x", "--pubkey", "11" * 32,
                "--account", dev.address, check=False)
    assert p.returncode == 1 and "NotGovernance" in p.stderr, p.stderr
    nodes = json.loads(beatctl("--ledger", ledger, "nodes", "--json").stdout)
    pub = DeviceKey.load(chain["dev_dir"] / "device.ed25519").public_hex
    assert nodes == [{"node_id": 7, "owner": "isp-a", "pubkey": pub,
                      "account": dev.address_bytes.hex()}]

    # the registered topology: register-link (governance), links
    beatctl("--ledger", ledger, "--key", gov, "register-node", "--node-id", "8", "--owner",
            "isp-b", "--pubkey", "11" * 32, "--account", Account.generate().address)
    p = beatctl("--ledger", ledger, "--key", gov, "register-link", "--a", "8", "--b", "7")
    assert p.stdout == "registered link 7-8\n"
    beatctl("--ledger", ledger, "--key", gov, "register-link", "--a", "7", "--b", "8")
    assert json.loads(beatctl("--ledger", ledger, "links", "--json").stdout) == [
        {"a": 7, "b": 8}]
    p = beatctl("--ledger", ledger, "--key", str(chain["dev_dir"] / "device.eth"),
                "register-link", "--a", "7", "--b", "8", check=False)
    assert p.returncode == 1 and "NotGovernance" in p.stderr, p.stderr
    p = beatctl("--ledger", ledger, "--key", gov, "register-link", "--a", "7", "--b", "9",
                check=False)
    assert p.returncode == 1 and "UnknownNode(nodeId=9)" in p.stderr, p.stderr

    tenant = Account.generate()
    sla = chain["dir"] / "sla.toml"
    sla.write_text('sla_id = 1\ntenant = "t1"\nsrc = "10.0.1.1"\ndst = "10.0.2.1"\n'
                   'route = [7]\npenalty_per_violation = 5\n'
                   f'tenant_account = "{tenant.address}"\n[qm_terms]\nwindow_s = 10\n')
    beatctl("--ledger", ledger, "--key", gov, "register-sla", "--file", str(sla))
    slas = json.loads(beatctl("--ledger", ledger, "slas", "--json").stdout)
    assert len(slas) == 1 and slas[0]["sla_id"] == 1 and slas[0]["route"] == [7]
    assert slas[0]["src"] == "10.0.1.1" and slas[0]["qm_terms"] == {"window_s": 10}
    assert slas[0]["tenant_account"] == tenant.address
    # tenant_pubkey belongs to local ledgers
    bad = chain["dir"] / "bad.toml"
    bad.write_text('sla_id = 2\ntenant = "t"\nsrc = "10.0.1.1"\ndst = "10.0.2.1"\nroute = [7]\n'
                   f'tenant_pubkey = "{"22" * 32}"\n')
    p = beatctl("--ledger", ledger, "--key", gov, "register-sla", "--file", str(bad), check=False)
    assert p.returncode == 2 and "tenant_account" in p.stderr

    # the device anchors with its account; beatctl lists it
    from ledger_client.types import Anchor
    led = EthereumLedger(url, addr, "sha3-256")
    assert led.anchor(Anchor(7, 0, 3, b"\x01" * 32, 10, 20), signer=dev) == "anchored"
    assert led.anchor(Anchor(7, 1, 1, b"\x02" * 32, 21, 30), signer=dev) == "anchored"
    rows = [json.loads(x) for x in beatctl("--ledger", ledger, "anchors", "--json")
            .stdout.splitlines()]
    assert [(r["node_id"], r["batch_seq"], r["tree_size"], r["root"]) for r in rows] == [
        (7, 0, 3, "01" * 32), (7, 1, 1, "02" * 32)]
    assert all(r["ref"].startswith("0x") and "@" in r["ref"] for r in rows)
    rows = beatctl("--ledger", ledger, "anchors", "--from-seq", "1").stdout.splitlines()
    assert len(rows) == 1 and rows[0].startswith("7\t1\t1\t")

    # usage errors name what is wrong
    p = beatctl("--ledger", f"ethereum:{url}", "nodes", check=False)
    assert p.returncode == 2 and "#CONTRACT" in p.stderr
    p = beatctl("--ledger", ledger, "verify", check=False)
    assert p.returncode == 2 and "local ledgers only" in p.stderr
    p = beatctl("--ledger", f"ethereum:{url}#0x" + "00" * 20, "nodes", check=False)
    assert p.returncode == 1 and "no contract" in p.stderr
    p = beatctl("--ledger", "ethereum:http://127.0.0.1:1#" + addr, "nodes", check=False)
    assert p.returncode == 1 and "unreachable" in p.stderr
    os.chmod(gov, 0o644)
    try:
        p = beatctl("--ledger", ledger, "--key", gov, "register-node", "--node-id", "9",
                    "--owner", "x", "--pubkey", "11" * 32, "--account", dev.address, check=False)
        assert p.returncode == 2 and "0644" in p.stderr
    finally:
        os.chmod(gov, 0o600)


def test_daemon_anchors_on_ethereum(chain, tmp_path, caplog, monkeypatch):
    """``[ledger] backend = "ethereum"``: the device's account (device.eth) signs its anchors on
    the chain; its Ed25519 key is ``device_key``; every leaf of the store ends up anchored and
    its stored proof verifies against the root on the chain."""
    import logging

    from beatd.control import request
    from ledger_client import merkle
    from beatd.store import Outbox
    from ledger_client.types import Node
    from beatd.store import Store
    from test_daemon_ledger import (HASH, LEDGER_WAIT_S, NODE, _cfg, _push_rounds, _run, _stop,
                                    patient_final_anchor)
    from conftest import wait_for
    from test_daemon import SLOW_S

    # every leaf is checked anchored after the shutdown: its final submission (one JSON-RPC
    # transaction, which can take seconds on a loaded machine) gets time to finish
    patient_final_anchor(monkeypatch)

    gov = chain["gov_acct"]
    led = EthereumLedger.deploy(chain["url"], gov, HASH)
    kdir = chain["dev_dir"]
    dev, ed = chain["dev"], DeviceKey.load(kdir / "device.ed25519")
    cfg_path, cfg = _cfg(tmp_path, f'backend = "ethereum"\nurl = "{chain["url"]}"\n'
                                   f'contract = "{led.address}"\nkey = "{kdir / "device.eth"}"\n'
                                   f'device_key = "{kdir / "device.ed25519"}"\n'
                                   "anchor_period_s = 0.3\n", metrics="")
    assert cfg.ledger_device_key == str(kdir / "device.ed25519")
    sock = str(tmp_path / "control.sock")

    # not registered yet: refused (PermissionDenied), kept in the store
    caplog.set_level(logging.INFO)
    sources = []
    d, main = _run(cfg, cfg_path, sources)
    try:
        _push_rounds(d, sources[0], 2)
        wait_for(lambda: (request(sock)["anchor"] or {}).get("halted"), timeout=LEDGER_WAIT_S,
                 what="submission halted")
        assert "PermissionDenied" in request(sock, timeout=SLOW_S)["anchor"]["last_error"]
    finally:
        _stop(d, main)
    logged = "\n".join(r.getMessage() + " " + json.dumps(getattr(r, "fields", {}), default=str)
                       for r in caplog.records)
    assert "not registered" in logged and dev.address in logged

    led.register_node(Node(NODE, "test", ed.public, dev.address_bytes), signer=gov)
    sources = []
    d, main = _run(cfg, cfg_path, sources)
    try:
        wait_for(lambda: (request(sock)["anchor"] or {}).get("pending_anchors") == 0,
                 timeout=LEDGER_WAIT_S, what="the pending anchors submitted")
        _push_rounds(d, sources[0], 3, start=1000)
        wait_for(lambda: (request(sock)["anchor"] or {}).get("last_anchored_batch_seq")
                 is not None, timeout=LEDGER_WAIT_S, what="an anchor")
        a = request(sock, timeout=SLOW_S)["anchor"]
        assert a["backend"] == "ethereum" and a["ledger"] == chain["url"]
        assert a["last_error"] is None
    finally:
        _stop(d, main)
    anchors = led.anchors(NODE)
    assert anchors and [x.batch_seq for x in anchors] == list(range(len(anchors)))
    by_seq = {x.batch_seq: x for x in anchors}
    with Store(tmp_path / "store", node_id=NODE, hash_name=HASH, ring_size=16 << 20,
               map_size=256 << 20) as st:
        leaves = st.outbox()
        ob = Outbox(st)
        assert all(b.status == 1 for b in ob.batches()), "a batch is still pending"
        assert sum(x.tree_size for x in anchors) == len(leaves)
        for seq, kind, value in leaves:
            batch_seq, index, proof = ob.proof(seq)
            x = by_seq[batch_seq]
            assert merkle.verify_inclusion(HASH, bytes([kind]) + value, index, x.tree_size,
                                           proof, x.root)
    rows = beatctl("--ledger", f"ethereum:{chain['url']}#{led.address}", "anchors", "--node-id",
                   str(NODE), "--json").stdout.splitlines()
    assert len(rows) == len(anchors)
