#!/usr/bin/env python3
"""The BEAT governance image's entrypoint: the management links, the chain, the contract, the
routers and the SLA registered; ``dispute``: the Interrogation Protocol from this node.

    entrypoint.py                     set up and run (the container's main process)
    entrypoint.py dispute [--last S | --from T --to T] [--no-record] [--sla ID]

Setup: wait for ``eth0`` ... (one per router, GNS3 moves them in late), address each management
link and the chain's address (a /32 on ``lo``), write the governance's files in ``/etc/beat``
(``ca.crt``, ``governance.crt``/``.key``, ``governance.eth``, ``governance.toml`` with every
router's Interrogation endpoint), start a development chain (ganache, ``ledger_client.devnode``)
with its database on the volume ``/var/lib/beat``, and on a fresh chain deploy the Beat contract
(the governance account's first transaction: its address is ``BEAT_CONTRACT``, which the routers
were given in advance), register every router (its Ed25519 key and its account), register the
SLA and send each router's account some ether for its anchors. A restart finds the contract and
only checks it. Then it waits for the chain (SIGTERM stops it).

Environment (``beat-lab gns3 project`` writes it):

| variable | what |
|---|---|
| ``BEAT_MGMT_IFACES`` | ``eth0=10.199.1.1/24@MAC,...``: one management link per router |
| ``BEAT_CHAIN_ADDRESS``, ``BEAT_CHAIN_PORT`` | where the chain listens (a /32 on ``lo``; 8545) |
| ``BEAT_CONTRACT`` | the contract's address (checked after the deploy) |
| ``BEAT_NODES`` | ``r1,1,10.199.1.2:9478,PUBKEY,ACCOUNT r2,...``: name, node id, endpoint, Ed25519 public key (hex), account |
| ``BEAT_OWNERS`` | ``1=operator-r1 2=operator-r2 ...``: each router's owner (default ``operator-NAME``) |
| ``BEAT_LINKS`` | ``1-2 2-3 ...``: the router-router links, registered on the ledger (the topology the judgement trusts) |
| ``BEAT_SLA`` | ``id=1 tenant=T src=IP dst=IP route=1-2-3 max_loss_ppm=.. max_delay_us=.. loss_budget_ppm=.. penalty=..`` |
| ``BEAT_GOVERNANCE_CA``, ``BEAT_GOV_CERT``, ``BEAT_GOV_KEY`` | PEM in base64: the CA, the governance's client certificate and key |
| ``BEAT_GOV_ETH_KEY`` | the governance's Ethereum account key (hex) |

Test hooks as the router's entrypoint (``BEAT_SYSFS_NET``, ``BEAT_PROC_SYS``, ``BEAT_IP``), and
``BEAT_GOV_ETC`` (``/etc/beat``), ``BEAT_GOV_STATE`` (``/var/lib/beat``).
"""
import argparse
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ETH = 10 ** 18


def _router_entrypoint():
    spec = importlib.util.spec_from_file_location(
        "beat_router_entrypoint", os.path.join(HERE, "..", "router", "entrypoint.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


rt = _router_entrypoint()
ConfigError, RuntimeFailure, log, env = rt.ConfigError, rt.RuntimeFailure, rt.log, rt.env


def parse():
    ifaces = [rt.parse_iface(x, "BEAT_MGMT_IFACES") for x in rt._items("BEAT_MGMT_IFACES")]
    if not ifaces:
        raise ConfigError("BEAT_MGMT_IFACES: missing")
    nodes = []
    for rec in (env("BEAT_NODES", "") or "").split():
        f = rec.split(",")
        if len(f) != 5 or not f[1].isdigit() or len(f[3]) != 64:
            raise ConfigError(f"BEAT_NODES: {rec!r} is not NAME,NODE_ID,HOST:PORT,PUBKEY,ACCOUNT")
        nodes.append({"name": f[0], "node_id": int(f[1]), "address": f[2], "pubkey": f[3],
                      "account": f[4]})
    if not nodes:
        raise ConfigError("BEAT_NODES: missing")
    ids = {n["node_id"] for n in nodes}
    owners = {n["node_id"]: f"operator-{n['name']}" for n in nodes}
    for rec in (env("BEAT_OWNERS", "") or "").split():
        k, sep, v = rec.partition("=")
        if not sep or not k.isdigit() or int(k) not in ids or not v:
            raise ConfigError(f"BEAT_OWNERS: {rec!r} is not NODE_ID=OWNER of a node of BEAT_NODES")
        owners[int(k)] = v
    links = []
    for rec in (env("BEAT_LINKS", "") or "").split():
        a, sep, b = rec.partition("-")
        if not sep or not a.isdigit() or not b.isdigit() or int(a) not in ids or \
                int(b) not in ids or a == b:
            raise ConfigError(f"BEAT_LINKS: {rec!r} is not A-B, two node ids of BEAT_NODES")
        links.append((int(a), int(b)))
    sla = {}
    for kv in (env("BEAT_SLA", "") or "").split():
        k, sep, v = kv.partition("=")
        if not sep:
            raise ConfigError(f"BEAT_SLA: {kv!r} is not KEY=VALUE")
        sla[k] = v
    for k in ("id", "src", "dst", "route"):
        if k not in sla:
            raise ConfigError(f"BEAT_SLA: {k}= missing")
    key = env("BEAT_GOV_ETH_KEY")
    if not key:
        raise ConfigError("BEAT_GOV_ETH_KEY: missing")
    contract = env("BEAT_CONTRACT")
    if not contract:
        raise ConfigError("BEAT_CONTRACT: missing")
    chain = env("BEAT_CHAIN_ADDRESS")
    if not chain:
        raise ConfigError("BEAT_CHAIN_ADDRESS: missing")
    return {"ifaces": ifaces, "nodes": nodes, "owners": owners, "links": links, "sla": sla,
            "eth_key": key, "contract": contract,
            "chain": chain, "port": int(env("BEAT_CHAIN_PORT", "8545")),
            "hash": env("BEAT_HASH", "sha3-256"), "ca": rt._pem("BEAT_GOVERNANCE_CA", True),
            "cert": rt._pem("BEAT_GOV_CERT", True), "key": rt._pem("BEAT_GOV_KEY", True),
            "count": int(env("BEAT_ETH_COUNT", str(len(ifaces)))),
            "wait_s": float(env("BEAT_WAIT_S", "120"))}


def write_files(cfg, etc):
    os.makedirs(etc, mode=0o700, exist_ok=True)
    paths = {"ca": os.path.join(etc, "ca.crt"), "cert": os.path.join(etc, "governance.crt"),
             "key": os.path.join(etc, "governance.key"), "eth": os.path.join(etc, "governance.eth"),
             "toml": os.path.join(etc, "governance.toml"), "state": os.path.join(etc, "gns3.json")}
    rt._write(paths["ca"], cfg["ca"], 0o644)
    rt._write(paths["cert"], cfg["cert"], 0o644)
    rt._write(paths["key"], cfg["key"], 0o600)
    k = cfg["eth_key"] if cfg["eth_key"].startswith("0x") else "0x" + cfg["eth_key"]
    rt._write(paths["eth"], k + "\n", 0o600)
    lines = ["# written by the BEAT governance image's entrypoint", "[interrogation]",
             f"ca = {rt._toml(paths['ca'])}", f"cert = {rt._toml(paths['cert'])}",
             f"key = {rt._toml(paths['key'])}"]
    for n in cfg["nodes"]:
        lines += ["", "[[endpoints]]", f"node_id = {n['node_id']}",
                  f"address = {rt._toml(n['address'])}", f"name = {rt._toml(n['name'])}"]
    rt._write(paths["toml"], "\n".join(lines) + "\n", 0o644)
    url = f"http://{cfg['chain']}:{cfg['port']}"
    rt._write(paths["state"], json.dumps({"url": url, "contract": cfg["contract"],
                                          "sla_id": int(cfg["sla"]["id"]),
                                          "ledger": f"ethereum:{url}#{cfg['contract']}",
                                          "key": paths["eth"], "config": paths["toml"]},
                                         indent=1) + "\n", 0o644)
    return paths


def _sla(cfg):
    import ipaddress

    from ledger_client.types import SLA

    s = cfg["sla"]

    def a16(ip):
        return ipaddress.IPv6Address(f"::ffff:{ip}").packed

    return SLA(int(s["id"]), s.get("tenant", "lab-tenant"), a16(s["src"]), a16(s["dst"]),
               tuple(int(x) for x in s["route"].split("-")),
               max_loss_ppm=int(s.get("max_loss_ppm", 10000)),
               max_delay_us=int(s.get("max_delay_us", 20000)),
               loss_budget_ppm=int(s.get("loss_budget_ppm", 10000)),
               penalty_per_violation=int(s.get("penalty", 100)))


def setup_ledger(cfg, url, gov):
    """Deploy, register, fund on a fresh chain; check on a restarted one."""
    from web3 import Web3

    from ledger_client.ethereum import EthereumLedger
    from ledger_client.types import Node

    w3 = Web3(Web3.HTTPProvider(url))
    want = Web3.to_checksum_address(cfg["contract"])
    if w3.eth.get_code(want):
        log(f"the Beat contract is at {want} already (a restarted chain)")
        return EthereumLedger(url, want, cfg["hash"])
    led = EthereumLedger.deploy(url, gov, cfg["hash"])
    if led.address.lower() != cfg["contract"].lower():
        raise RuntimeFailure(f"the contract was deployed at {led.address}, not at BEAT_CONTRACT "
                             f"{cfg['contract']} (the routers anchor there): was this account "
                             "used on this chain before?")
    for n in cfg["nodes"]:
        owner = cfg.get("owners", {}).get(n["node_id"], f"operator-{n['name']}")
        led.register_node(Node(n["node_id"], owner, bytes.fromhex(n["pubkey"]),
                               bytes.fromhex(n["account"][2:])), signer=gov)
        log(f"registered {n['name']} (node {n['node_id']}, owner {owner})")
    for a, b in cfg.get("links", ()):
        led.register_link(a, b, signer=gov)
    if cfg.get("links"):
        log(f"registered {len(cfg['links'])} links: the topology the judgement trusts")
    led.register_sla(_sla(cfg), signer=gov)
    nonce = w3.eth.get_transaction_count(gov.address, "pending")
    for n in cfg["nodes"]:
        tx = gov.sign_transaction({"to": Web3.to_checksum_address(n["account"]),
                                   "value": 10 * ETH, "gas": 21000,
                                   "gasPrice": w3.eth.gas_price, "nonce": nonce,
                                   "chainId": w3.eth.chain_id})
        raw = getattr(tx, "raw_transaction", None) or tx.rawTransaction
        w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(raw), timeout=60)
        nonce += 1
    log(f"deployed the Beat contract at {led.address}; {len(cfg['nodes'])} routers and SLA "
        f"{cfg['sla']['id']} registered, their accounts funded")
    return led


def serve(argv):
    sysfs = os.environ.get("BEAT_SYSFS_NET", "/sys/class/net")
    proc_sys = os.environ.get("BEAT_PROC_SYS", "/proc/sys")
    etc = os.environ.get("BEAT_GOV_ETC", "/etc/beat")
    state = os.environ.get("BEAT_GOV_STATE", "/var/lib/beat")
    ip = shlex.split(os.environ.get("BEAT_IP", "ip"))
    try:
        cfg = parse()
        rt.wait_for_interfaces(sysfs, cfg["count"], cfg["wait_s"])
        rt.sysctls(proc_sys, False)
        rt.configure_interfaces({"ifaces": cfg["ifaces"], "mgmt": None}, sysfs, ip)
        if cfg["chain"] not in ("127.0.0.1", "0.0.0.0"):
            rt.run(ip + ["addr", "replace", f"{cfg['chain']}/32", "dev", "lo"])
            rt.run(ip + ["link", "set", "dev", "lo", "up"])
        paths = write_files(cfg, etc)
        from ledger_client.devnode import DevNode, DevNodeError
        from ledger_client.ethereum import Account

        gov = Account(cfg["eth_key"])
        os.makedirs(state, exist_ok=True)
        node = DevNode(os.path.join(state, "chain"), host=cfg["chain"], port=cfg["port"],
                       accounts=[(gov.private_key_hex(), 10 ** 6 * ETH)],
                       log_path=os.path.join(state, "chain.log"))
        try:
            url = node.start(timeout=120)
        except DevNodeError as exc:
            raise RuntimeFailure(f"the chain did not start: {exc}") from None
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        signal.signal(signal.SIGINT, lambda *_: stop.append(1))
        try:
            setup_ledger(cfg, url, gov)
            log(f"ready: chain {url}, contract {cfg['contract']}; governance config "
                f"{paths['toml']}. From the auxiliary console: beat-dispute --last 60")
            while not stop and node.running:
                time.sleep(0.5)
        finally:
            node.stop(timeout=10)
        return 0 if stop else 1
    except ConfigError as exc:
        log(str(exc))
        return rt.EXIT_CONFIG
    except RuntimeFailure as exc:
        log(str(exc))
        return rt.EXIT_RUNTIME


def dispute(argv):
    p = argparse.ArgumentParser(prog="beat-dispute", description="The governance interrogates "
                                "the routers about the lab's SLA (beatctl interrogate).")
    p.add_argument("--last", type=float, default=60.0, metavar="S",
                   help="the window: the last S seconds (default 60)")
    p.add_argument("--from", dest="from_", metavar="T", help="window start (beatctl's forms)")
    p.add_argument("--to", metavar="T", help="window end")
    p.add_argument("--sla", type=int, default=None, help="SLA id (default: the lab's)")
    p.add_argument("--no-record", action="store_true", help="do not record the verdict")
    a = p.parse_args(argv)
    etc = os.environ.get("BEAT_GOV_ETC", "/etc/beat")
    state_dir = os.environ.get("BEAT_GOV_STATE", "/var/lib/beat")
    with open(os.path.join(etc, "gns3.json")) as f:
        st = json.load(f)
    frm = a.from_ or f"now-{a.last:g}s"
    to = a.to or "now"
    report = os.path.join(state_dir, f"dispute-{time.strftime('%Y%m%d-%H%M%S')}")
    argv = [sys.executable, "-m", "governance.cli", "--ledger", st["ledger"]]
    if not a.no_record:
        argv += ["--key", st["key"]]
    argv += ["interrogate", "--sla", str(a.sla or st["sla_id"]), "--from", frm, "--to", to,
             "--config", st["config"], "--json", report + ".json", "--svg", report + ".svg"]
    if a.no_record:
        argv.append("--no-record")
    print("+ " + " ".join(argv), file=sys.stderr)
    return subprocess.call(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["dispute"]:
        return dispute(argv[1:])
    return serve(argv)


if __name__ == "__main__":
    sys.exit(main())
