"""The BEAT governance image's entrypoint (gns3/governance/entrypoint.py), outside Docker: a fake
sysfs and ``ip``, the environment ``beat-lab gns3 project`` writes (the chain moved to 127.0.0.1 and
a free port), and a real development chain (ganache from the project's npm packages): the contract
lands at the address the routers were given, every router and the SLA are registered, the
routers' accounts funded; a restart on the same chain only checks; SIGTERM stops the chain."""
import os
import signal
import socket
import subprocess
import sys
import time

from beat_lab import gns3
from conftest import free_port, require_ganache
from test_gns3_entrypoint import Box

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENTRYPOINT = os.path.join(REPO, "gns3", "governance", "entrypoint.py")


def _start(box, env):
    p = subprocess.Popen([sys.executable, ENTRYPOINT], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = p.stderr.readline()
        if not line:
            if p.poll() is not None:
                break
            continue
        lines.append(line)
        if "ready:" in line:
            return p, "".join(lines)
    p.kill()
    raise AssertionError("the governance entrypoint did not get ready:\n" + "".join(lines) +
                         (p.stderr.read() if p.poll() is not None else ""))


def _stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        return p.wait(30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)


def test_governance_sets_up_the_ledger(tmp_path):
    require_ganache()
    from ledger_client.ethereum import EthereumLedger

    plan = gns3.plan()
    box = Box(tmp_path)
    for i in range(4):
        box.add_iface(f"eth{i}", f"02:be:00:06:00:{i:02x}")
    port = free_port()
    etc, state = str(tmp_path / "etc-beat"), str(tmp_path / "var-lib-beat")
    env = box.env(plan.node("gov").env, BEAT_CHAIN_ADDRESS="127.0.0.1",
                  BEAT_CHAIN_PORT=str(port), BEAT_GOV_ETC=etc, BEAT_GOV_STATE=state)
    p, out = _start(box, env)
    try:
        calls = box.calls()
        assert "ip addr replace 10.199.1.1/24 dev eth0" in calls
        assert "ip addr replace 10.199.4.1/24 dev eth3" in calls
        assert "deployed the Beat contract at" in out
        url = f"http://127.0.0.1:{port}"
        led = EthereumLedger(url, plan.contract, "sha3-256")
        nodes = {x.split(",")[1]: x.split(",") for x in plan.node("gov").env["BEAT_NODES"].split()}
        for nid, (name, _, endpoint, pub, acct) in nodes.items():
            n = led.get_node(int(nid))
            assert n.pubkey.hex() == pub and "0x" + n.account.hex() == acct
            assert n.owner == f"operator-{name}"          # every router its own owner
        # the topology the judgement trusts: the paper's router links, on the chain
        assert led.links() == [(1, 2), (1, 4), (2, 3), (3, 4)]
        assert "registered 4 links" in out
        sla = led.get_sla(1)
        assert sla.route == (1, 2, 3)
        from web3 import Web3
        w3 = Web3(Web3.HTTPProvider(url))
        for _, (_, _, _, _, acct) in nodes.items():
            assert w3.eth.get_balance(Web3.to_checksum_address(acct)) == 10 * 10 ** 18
        toml = open(os.path.join(etc, "governance.toml")).read()
        assert 'address = "10.199.1.2:9478"' in toml and 'name = "r4"' in toml
        assert oct(os.stat(os.path.join(etc, "governance.eth")).st_mode & 0o777) == "0o600"
    finally:
        assert _stop(p) == 0
    with socket.socket() as s:                     # the chain stopped with it
        assert s.connect_ex(("127.0.0.1", port)) != 0
    # a restart continues the same chain: the contract is found, not deployed again
    p, out = _start(box, env)
    try:
        assert "already (a restarted chain)" in out
        assert EthereumLedger(f"http://127.0.0.1:{port}", plan.contract,
                              "sha3-256").get_sla(1) is not None
    finally:
        assert _stop(p) == 0


def test_governance_bad_environment(tmp_path):
    plan = gns3.plan()
    box = Box(tmp_path)
    env = box.env(dict(plan.node("gov").env, BEAT_NODES="r1,1,x"))
    p = subprocess.run([sys.executable, ENTRYPOINT], env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2
    assert "BEAT_NODES: 'r1,1,x' is not NAME,NODE_ID,HOST:PORT,PUBKEY,ACCOUNT" in p.stderr
    for var, value, message in (
            ("BEAT_LINKS", "1-9", "BEAT_LINKS: '1-9' is not A-B, two node ids of BEAT_NODES"),
            ("BEAT_LINKS", "2-2", "BEAT_LINKS: '2-2' is not A-B"),
            ("BEAT_OWNERS", "7=x", "BEAT_OWNERS: '7=x' is not NODE_ID=OWNER")):
        env = box.env(dict(plan.node("gov").env, **{var: value}))
        p = subprocess.run([sys.executable, ENTRYPOINT], env=env, capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 2 and message in p.stderr, (var, p.stderr)
