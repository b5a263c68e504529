"""The BEAT router image's entrypoint (gns3/router/entrypoint.py), outside Docker: a fake
/sys/class/net whose interfaces appear late, fake ``ip``/FRR/beatd commands that record their
arguments, and the environment that ``beat-lab gns3 project`` writes for the paper's routers."""
import base64
import json
import os
import stat
import subprocess
import sys
import threading
import time

import pytest

from beatd import config as beatd_config
from beat_lab import gns3

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENTRYPOINT = os.path.join(REPO, "gns3", "router", "entrypoint.py")

RECORDER = """#!/bin/sh
# records one call: its name, its arguments
printf '%s\\n' "$(basename "$0") $*" >> "{log}"
{extra}
exit 0
"""


@pytest.fixture(scope="module")
def paper():
    return gns3.plan()


def _tool(d, name, log, extra=""):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(RECORDER.format(log=log, extra=extra))
    os.chmod(path, 0o755)
    return path


class Box:
    """A fake node: sysfs, /proc/sys, /etc, the store, the recording tools."""

    def __init__(self, tmp):
        self.root = str(tmp)
        self.sysfs = os.path.join(self.root, "sys", "class", "net")
        self.proc = os.path.join(self.root, "proc", "sys")
        self.etc = os.path.join(self.root, "etc", "beatd")
        self.frr = os.path.join(self.root, "etc", "frr")
        self.store = os.path.join(self.root, "var", "lib", "beatd")
        self.log = os.path.join(self.root, "calls.log")
        bin_ = os.path.join(self.root, "bin")
        for d in (self.sysfs, self.proc, bin_, self.frr):
            os.makedirs(d, exist_ok=True)
        for key in ("net/ipv4/ip_forward", "net/ipv4/conf/all/rp_filter",
                    "net/ipv4/conf/default/rp_filter", "net/ipv4/conf/all/send_redirects",
                    "net/ipv6/conf/all/disable_ipv6", "net/ipv6/conf/default/disable_ipv6"):
            os.makedirs(os.path.dirname(os.path.join(self.proc, key)), exist_ok=True)
            open(os.path.join(self.proc, key), "w").write("9\n")
        self.ip = _tool(bin_, "ip", self.log)
        self.frr_start = _tool(bin_, "frrinit.sh", self.log)
        # the fake beatd keeps a copy of the configuration it was started with
        self.beatd = _tool(bin_, "beatd", self.log,
                           extra=f'cp "$3" "{self.root}/beatd-started-with.toml"')
        self.host_cmd = _tool(bin_, "shell", self.log)

    def add_iface(self, name, mac):
        d = os.path.join(self.sysfs, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "address"), "w") as f:
            f.write(mac + "\n")

    def env(self, node_env, **extra):
        e = {k: v for k, v in os.environ.items() if not k.startswith(("BEAT_", "GNS3_"))}
        e.update(node_env)
        e.update({"BEAT_SYSFS_NET": self.sysfs, "BEAT_PROC_SYS": self.proc, "BEAT_ETC": self.etc,
                  "BEAT_STORE": self.store, "BEAT_FRR_ETC": self.frr,
                  "BEAT_FRR_START": f"{self.frr_start} start", "BEAT_IP": self.ip,
                  "BEAT_BEATD": self.beatd, "BEAT_WAIT_S": "20",
                  "BEAT_CONTROL_SOCKET": os.path.join(self.root, "run", "control.sock"),
                  "PYTHONPATH": REPO})
        e.update(extra)
        return e

    def run(self, env, args=(), timeout=60):
        return subprocess.run([sys.executable, ENTRYPOINT, *args], env=env, capture_output=True,
                              text=True, timeout=timeout)

    def calls(self):
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return [line.rstrip("\n") for line in f]


def _late(box, ifaces, delay=0.6):
    """Create the interfaces one by one after ``delay`` (GNS3 moves them in after the start)."""
    def go():
        for name, mac in ifaces:
            time.sleep(delay / len(ifaces))
            box.add_iface(name, mac)
    t = threading.Thread(target=go, daemon=True)
    time.sleep(0)
    t.start()
    return t


def test_router_from_the_project_environment(tmp_path, paper):
    box = Box(tmp_path)
    r1 = paper.node("r1")
    # eth0 comes up with another MAC than the project's: the entrypoint must set it
    late = [("eth0", "02:42:ac:11:00:02"), ("eth1", "02:be:00:02:00:01"),
            ("eth2", "02:be:00:02:00:02"), ("eth3", "02:be:00:02:00:03")]
    t0 = time.monotonic()
    thread = _late(box, late)
    p = box.run(box.env(r1.env))
    thread.join()
    assert p.returncode == 0, p.stderr
    assert time.monotonic() - t0 >= 0.5            # it did wait for the late interfaces
    assert "waiting for eth0..eth3" in p.stderr
    calls = box.calls()
    # the MAC fixed on eth0 only; every interface addressed and up, the management one too
    assert "ip link set dev eth0 address 02:be:00:02:00:00" in calls
    assert not any("dev eth1 address" in c for c in calls)
    for name, addr in (("eth0", "10.77.1.2/24"), ("eth1", "10.77.2.1/24"),
                       ("eth2", "10.77.5.1/24"), ("eth3", "10.199.1.2/24")):
        assert f"ip addr replace {addr} dev {name}" in calls
        assert f"ip link set dev {name} up" in calls
    assert open(os.path.join(box.proc, "net/ipv4/ip_forward")).read() == "1\n"
    assert open(os.path.join(box.proc, "net/ipv4/conf/all/rp_filter")).read() == "0\n"
    # FRR: the static routes of the plan, then started; no `ip route` fallback
    conf = open(os.path.join(box.frr, "frr.conf")).read()
    assert "ip route 10.77.4.0/24 10.77.2.2" in conf      # h2's link along the agreed path
    assert "ip route 10.77.6.0/24 10.77.5.2" in conf      # r4-r3 via r4
    assert "ip route 10.199.0.1/32 10.199.1.1" in conf    # the chain, over the management link
    assert "frrinit.sh start" in calls
    assert not any(c.startswith("ip route") for c in calls)
    # beatd exec'd last, with the written configuration
    cfg_path = os.path.join(box.etc, "beatd.toml")
    assert calls[-1] == f"beatd run --config {cfg_path}"
    with open(cfg_path) as f, open(os.path.join(box.root, "beatd-started-with.toml")) as g:
        assert f.read() == g.read()
    cfg = beatd_config.load(cfg_path)
    assert cfg.node_id == 1
    assert cfg.interfaces == ("eth0", "eth1", "eth2")           # not the management eth3
    assert [beatd_config.format_mac(m) for m in cfg.own_macs] == [
        "02:be:00:02:00:00", "02:be:00:02:00:01", "02:be:00:02:00:02"]
    neigh = {n.node_id: (beatd_config.format_mac(n.mac), n.ip, n.interface)
             for n in cfg.neighbours}
    # each neighbour's MAC names it on r1's interface on their link only
    assert neigh == {2: ("02:be:00:03:00:00", "10.77.2.2", "eth1"),
                     4: ("02:be:00:05:00:00", "10.77.5.2", "eth2")}
    assert cfg.store_path == box.store
    assert cfg.ledger_backend == "ethereum"
    assert cfg.ledger_url == "http://10.199.0.1:8545"
    assert cfg.ledger_contract == paper.contract
    assert cfg.interrogation_listen == "10.199.1.2:9478"
    # the keys from the environment, private ones 0600, identical to what the project holds
    for path in (cfg.ledger_key, cfg.ledger_device_key, cfg.interrogation_key):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(cfg.interrogation_ca, "rb") as f:
        assert f.read() == base64.b64decode(r1.env["BEAT_GOVERNANCE_CA"])
    with open(cfg.ledger_key) as f:
        assert f.read().strip() == r1.env["BEAT_ETH_KEY"]
    from ledger_client.keys import DeviceKey
    nodes = {x.split(",")[0]: x.split(",") for x in paper.node("gov").env["BEAT_NODES"].split()}
    assert DeviceKey.load(cfg.ledger_device_key).public_hex == nodes["r1"][3]


def test_router_without_frr_sets_the_routes_itself(tmp_path, paper):
    box = Box(tmp_path)
    r4 = paper.node("r4")
    for i in range(r4.adapters):
        box.add_iface(f"eth{i}", f"02:be:00:05:00:{i:02x}")
    p = box.run(box.env(r4.env, BEAT_FRR_START="/nonexistent/frrinit.sh start"))
    assert p.returncode == 0, p.stderr
    calls = box.calls()
    assert "ip route replace 10.77.4.0/24 via 10.77.6.2" in calls
    assert "ip route replace 10.199.0.1/32 via 10.199.4.1" in calls
    assert not os.path.exists(os.path.join(box.frr, "frr.conf"))
    assert "routes set with ip route instead of FRR" in p.stderr
    assert calls[-1].startswith("beatd run --config ")


def test_host(tmp_path, paper):
    box = Box(tmp_path)
    h2 = paper.node("h2")
    box.add_iface("eth0", "02:be:00:01:00:00")
    p = box.run(box.env(h2.env), args=[box.host_cmd, "-l"])
    assert p.returncode == 0, p.stderr
    calls = box.calls()
    assert calls == ["ip addr replace 10.77.4.2/24 dev eth0", "ip link set dev eth0 up",
                     "ip route replace default via 10.77.4.1", "shell -l"]
    assert open(os.path.join(box.proc, "net/ipv4/ip_forward")).read() == "0\n"
    assert not os.path.exists(os.path.join(box.etc, "beatd.toml"))


def test_gns3_max_ethernet_and_a_missing_interface(tmp_path, paper):
    box = Box(tmp_path)
    env = dict(paper.node("r2").env)
    del env["BEAT_ETH_COUNT"]                       # GNS3 says how many: GNS3_MAX_ETHERNET
    box.add_iface("eth0", "02:be:00:03:00:00")
    box.add_iface("eth1", "02:be:00:03:00:01")
    t0 = time.monotonic()
    p = box.run(box.env(env, GNS3_MAX_ETHERNET="eth2", BEAT_WAIT_S="1"))
    assert p.returncode == 1
    assert time.monotonic() - t0 >= 1.0
    assert "eth2 did not appear within 1 s (present: eth0, eth1)" in p.stderr
    assert not any(c.startswith("beatd") for c in box.calls())


@pytest.mark.parametrize("var,value,message", [
    ("BEAT_NEIGHBOURS", "2=zz:00:00:00:00:00@10.77.2.2", "BEAT_NEIGHBOURS: 'zz:00:00:00:00:00' is "
                                                         "not a MAC address"),
    ("BEAT_NEIGHBOURS", "2=02:be:00:03:00:00@10.77.2.2%wlan0",
     "BEAT_NEIGHBOURS: 'wlan0' is not an interface name eth0..eth99"),
    ("BEAT_NODE_ID", "", "BEAT_NODE_ID: missing"),
    ("BEAT_LEDGER", "ethereum:http://x", "BEAT_LEDGER: 'ethereum:http://x' is not none"),
    ("BEAT_ROUTES", "10.77.3.0/24", "BEAT_ROUTES: '10.77.3.0/24' is not PREFIX=GATEWAY"),
    ("BEAT_TLS_KEY", "", "BEAT_TLS_KEY: missing"),
    ("BEAT_ETH_COUNT", "2", "BEAT_ETH_COUNT: 2 interfaces, but eth2 is configured"),
    # values only beatd's own loader knows are wrong: its message, naming the key
    ("BEAT_RING_SIZE", "lots", 'store.ring_size: "lots" is not a size'),
    ("BEAT_HASH", "md5", 'hash: "md5" is not one of'),
])
def test_bad_environment_is_named(tmp_path, paper, var, value, message):
    box = Box(tmp_path)
    for i in range(3):
        box.add_iface(f"eth{i}", f"02:be:00:03:00:{i:02x}")
    env = dict(paper.node("r2").env)
    env[var] = value
    p = box.run(box.env(env))
    assert p.returncode == 2, p.stderr
    assert message in p.stderr
    assert not any(c.startswith("beatd") for c in box.calls())


def test_ledger_none_signs_with_the_device_key(tmp_path, paper):
    box = Box(tmp_path)
    for i in range(3):
        box.add_iface(f"eth{i}", f"02:be:00:03:00:{i:02x}")
    env = dict(paper.node("r2").env, BEAT_LEDGER="none")
    p = box.run(box.env(env))
    assert p.returncode == 0, p.stderr
    cfg = beatd_config.load(os.path.join(box.etc, "beatd.toml"))
    assert cfg.ledger_backend == "none"
    assert cfg.interrogation_signing_key == os.path.join(box.etc, "keys", "device.ed25519")


def _ignore_rule_matches(pattern, path):
    """A .dockerignore rule against a path: segment by segment (``*`` stays inside one), and a
    rule naming a directory covers what is under it."""
    import fnmatch

    pat, parts = pattern.split("/"), path.split("/")
    if "**" in pat:
        return fnmatch.fnmatch(path, pattern.replace("**/", "*"))
    return len(parts) >= len(pat) and all(fnmatch.fnmatchcase(a, b) for a, b in zip(parts, pat))


def test_the_dockerfiles_copy_what_exists():
    """No Docker engine here: the images cannot be built. What can be checked: every COPY source
    exists, the ignore file lets it through, the ENTRYPOINT is the file tested above."""
    for image in ("router", "governance"):
        df = os.path.join(REPO, "gns3", image, "Dockerfile")
        ignore = [l.strip() for l in open(df + ".dockerignore") if l.strip() and
                  not l.startswith("#")]
        lines = open(df).read().replace("\\\n", " ").splitlines()
        entry = [l for l in lines if l.startswith("ENTRYPOINT")]
        assert len(entry) == 1
        argv = json.loads(entry[0].split(None, 1)[1])
        assert argv[1] == f"/opt/beat/gns3/{image}/entrypoint.py"
        for l in lines:
            if not l.startswith("COPY") or "--from=" in l:
                continue
            srcs = l.split()[1:-1]
            for src in srcs:
                assert os.path.exists(os.path.join(REPO, src)), f"{image}: COPY {src}: missing"
                # the last matching rule of the ignore file decides (Docker's semantics)
                allowed = True
                for rule in ignore:
                    neg = rule.startswith("!")
                    pat = rule[1:].rstrip("/") if neg else rule.rstrip("/")
                    if _ignore_rule_matches(pat, src.rstrip("/")):
                        allowed = neg
                assert allowed, f"{image}: COPY {src} is excluded by the .dockerignore"
