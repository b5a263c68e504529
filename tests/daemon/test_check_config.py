"""``beatd check-config F``: every start-time check without capturing, one line each, exit 0 / 2.

On good and bad files: a good file (lab certificates, a local ledger with the node registered, a
veth interface in a namespace) is ok throughout; each bad thing FAILs on its own line naming the
key and the value: a bad value, a missing interface, a neighbour on an interface not captured, a
port in use, a store locked by another process (its pid), another node's store, a certificate
whose key is another's or from another CA, an expired one, a local ledger the daemon's user cannot
open, an unreachable ethereum ledger (within the short timeout); with a real daemon running on
the file, the store, the ports and the control socket FAIL naming it. As user nobody (no
CAP_NET_RAW, unit_sandbox's mounts): capture permission and a root-owned store FAIL.
"""
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from beat_lab import ca as lab_ca
from beatd import check_config
from beatd.config import load
from beatd.control import request
from beatd.store import Store, StoreLock
from conftest import free_port, require_root, wait_for
from test_daemon import ROOT, SLOW_S, config_text, netns_pair, shutdown_bound_s  # noqa: F401
from test_daemon_ledger import _ledger
from test_unit_file import NOBODY, nobody_dir, sandboxed  # noqa: F401

NODE = 1


def check(cfg, ns=None, timeout=60):
    cmd = [sys.executable, "-m", "beatd", "check-config", str(cfg)]
    if ns:
        cmd = ["ip", "netns", "exec", ns] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return r


def lines_of(r):
    """{check: [(status, text)]} of the output (the summary line left out)."""
    out = {}
    for line in r.stdout.splitlines()[:-1]:
        name, rest = line[:22].strip(), line[22:].strip()
        if rest.startswith("ok"):
            out.setdefault(name, []).append(("ok", rest[2:].strip(" ()")))
        else:
            status, _, text = rest.partition(": ")
            out.setdefault(name, []).append((status, text))
    return out


def fails(r):
    return [t for ls in lines_of(r).values() for s, t in ls if s == "FAIL"]


def write(path, text):
    path.write_text(text)
    return path


def base(tmp_path, interfaces=("lo",), metrics=None, extra="", ledger='backend = "none"\n',
         interrogation=""):
    metrics = f"127.0.0.1:{free_port()}" if metrics is None else metrics
    text = config_text(tmp_path / "store", tmp_path / "control.sock", interfaces=interfaces,
                       metrics=metrics, extra=extra)
    return write(tmp_path / "beatd.toml", text + "[ledger]\n" + ledger + interrogation)


def certs(tmp_path, node=NODE):
    ca_dir = tmp_path / "ca"
    lab_ca.make_ca(ca_dir)
    lab_ca.make_device(ca_dir, tmp_path / "tls", node, ips=["127.0.0.1"])
    return ca_dir / "ca.crt", tmp_path / "tls" / f"device-{node}.crt", \
        tmp_path / "tls" / f"device-{node}.key"


def interrogation_lines(ca, cert, key, port):
    from ledger_client.keys import DeviceKey
    signing = os.path.join(os.path.dirname(cert), "signing.ed25519")
    if not os.path.exists(signing):
        DeviceKey.generate().save(signing)
        os.chmod(signing, 0o600)
    return (f'[interrogation]\nlisten = "127.0.0.1:{port}"\nca = "{ca}"\ncert = "{cert}"\n'
            f'key = "{key}"\nsigning_key = "{signing}"\n')


# -- a good file, in a namespace with its interface ----------------------------------------------

def test_a_good_file_is_ok_throughout(tmp_path, netns_pair):
    require_root()
    d_ns, d_if, _, _ = netns_pair
    led, _, key = _ledger(tmp_path)
    ca, cert, tls_key = certs(tmp_path)
    cfg = base(tmp_path, interfaces=[d_if], metrics="127.0.0.1:9477",
               ledger=f'backend = "local"\npath = "{led}"\nkey = "{key}"\n',
               interrogation=interrogation_lines(ca, cert, tls_key, 9478))
    r = check(cfg, ns=d_ns)
    assert r.returncode == 0, r.stdout + r.stderr
    got = lines_of(r)
    for name in ("configuration", "node_id", "interfaces", "neighbours", "capture permission",
                 "capture rings", "daemon.metrics_listen", "interrogation.listen",
                 "daemon.control_socket", "store", "store disk", "certificates", "ledger"):
        assert name in got, (name, r.stdout)
        assert all(s in ("ok", "WARN") for s, _ in got[name]), (name, got[name])
    assert got["interfaces"] == [("ok", f"captures on {d_if}")]
    assert "registered with this key" in got["ledger"][-1][1]
    assert "key matches" in got["certificates"][0][1]
    assert r.stdout.splitlines()[-1].endswith("every check ok")
    assert not (tmp_path / "store").exists()        # nothing made, nothing written


def test_the_default_interface_set_is_stated(tmp_path, netns_pair):
    require_root()
    d_ns, d_if, _, _ = netns_pair
    cfg = base(tmp_path, interfaces=[])
    r = check(cfg, ns=d_ns)
    got = lines_of(r)
    assert ("ok", f"interfaces = [] captures on every non-loopback interface present at start: "
                  f"{d_if}") in got["interfaces"]
    assert any(s == "WARN" and "management ports included" in t for s, t in got["interfaces"])
    assert r.returncode == 0, r.stdout


# -- bad files -----------------------------------------------------------------------------------

def test_a_bad_value_fails_naming_key_and_value(tmp_path):
    cfg = base(tmp_path)
    write(cfg, cfg.read_text().replace("block_count = 4", "block_count = -4"))
    r = check(cfg)
    assert r.returncode == 2
    assert fails(r) == [f"{cfg}: capture.block_count: -4 must be more than 0"]


def test_missing_interface_and_neighbour_interface(tmp_path):
    cfg = base(tmp_path, interfaces=["lo", "nosuch-if0"])
    r = check(cfg)
    assert r.returncode == 2
    assert any(f.startswith('interfaces[1]: "nosuch-if0": no such network interface') and
               "present: " in f for f in fails(r)), r.stdout


def test_ports_in_use_are_named(tmp_path):
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    port = held.getsockname()[1]
    try:
        ca, cert, key = certs(tmp_path)
        cfg = base(tmp_path, metrics=f"127.0.0.1:{port}",
                   interrogation=interrogation_lines(ca, cert, key, port))
        r = check(cfg)
    finally:
        held.close()
    assert r.returncode == 2
    f = fails(r)
    assert any(x.startswith(f'daemon.metrics_listen: "127.0.0.1:{port}": cannot listen: Address '
                            "already in use") for x in f), r.stdout
    assert any(x.startswith(f'interrogation.listen: "127.0.0.1:{port}": cannot listen') for x in f)
    r = check(cfg)                  # released: ok now
    assert not fails(r), r.stdout


def test_a_locked_store_names_the_holder(tmp_path):
    cfg = base(tmp_path)
    lock = StoreLock(tmp_path / "store", "a test holding the store").acquire()
    try:
        r = check(cfg)
    finally:
        lock.release()
    assert r.returncode == 2
    assert f'store.path: "{tmp_path / "store"}": store in use by pid {os.getpid()}' in \
        "\n".join(fails(r)), r.stdout
    assert check(cfg).returncode == 0


def test_another_nodes_store_fails(tmp_path):
    cfg = base(tmp_path)
    c = load(cfg)
    with Store(**{**c.store_kwargs(), "node_id": 5}):
        pass
    r = check(cfg)
    assert r.returncode == 2
    assert any(str(tmp_path / "store") in f and "node_id 5" in f for f in fails(r)), r.stdout


def test_certificates_key_ca_and_dates(tmp_path):
    ca, cert, key = certs(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    ca2, cert2, key2 = certs(other)
    port = free_port()
    # the key of another certificate
    cfg = base(tmp_path, interrogation=interrogation_lines(ca, cert, key2, port))
    r = check(cfg)
    assert r.returncode == 2
    assert f'interrogation.key: "{key2}" is not the key of interrogation.cert "{cert}"' in fails(r)
    # a certificate of another CA
    cfg = base(tmp_path, interrogation=interrogation_lines(ca, cert2, key2, port))
    r = check(cfg)
    assert r.returncode == 2
    assert any(f.startswith(f'interrogation.cert: "{cert2}" is not issued by interrogation.ca '
                            f'"{ca}"') for f in fails(r)), r.stdout
    # expired (the clock moved past its end), and not yet valid
    c = load(base(tmp_path, interrogation=interrogation_lines(ca, cert, key, port)))
    late = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=20000)
    got = check_config.check_certificates(c, now=late)
    assert any(x.status == "FAIL" and x.text.startswith(f'interrogation.cert: "{cert}": expired '
                                                        "on ") for x in got), got
    early = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
    got = check_config.check_certificates(c, now=early)
    assert any(x.status == "FAIL" and "not valid before" in x.text for x in got), got
    assert all(x.status != "FAIL" for x in check_config.check_certificates(c)), got


def test_a_missing_local_ledger_and_an_unreachable_ethereum_one(tmp_path):
    from ledger_client.keys import DeviceKey
    key = tmp_path / "device.ed25519"
    DeviceKey.generate().save(key)
    os.chmod(key, 0o600)
    cfg = base(tmp_path, ledger=f'backend = "local"\npath = "{tmp_path / "none.lmdb"}"\n'
                                f'key = "{key}"\n')
    r = check(cfg)
    assert r.returncode == 2
    assert any(f.startswith(f'ledger.path: "{tmp_path / "none.lmdb"}": no such ledger')
               for f in fails(r)), r.stdout
    assert not (tmp_path / "none.lmdb").exists()
    acct = tmp_path / "eth" / "device.eth"
    r = subprocess.run([sys.executable, "-m", "beatd", "keygen", "--out", str(tmp_path / "eth"),
                        "--ethereum"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    port = free_port()              # nobody listens there
    cfg = base(tmp_path, ledger=f'backend = "ethereum"\nurl = "http://127.0.0.1:{port}"\n'
                                f'contract = "{"ab" * 20}"\nkey = "{acct}"\n')
    t0 = time.monotonic()
    r = check(cfg)
    took = time.monotonic() - t0
    assert r.returncode == 2, r.stdout
    assert any(f.startswith(f'ledger.url: "http://127.0.0.1:{port}": unreachable')
               for f in fails(r)), r.stdout
    assert took < 30, f"check-config took {took:.1f} s against an unreachable ledger"


# -- a running daemon on the same file -----------------------------------------------------------

def test_with_a_daemon_running_on_the_file(tmp_path, netns_pair):
    require_root()
    d_ns, d_if, _, _ = netns_pair
    cfg = base(tmp_path, interfaces=[d_if], metrics="127.0.0.1:9477")
    sock = tmp_path / "control.sock"
    proc = subprocess.Popen(["ip", "netns", "exec", d_ns, sys.executable, "-m", "beatd", "run",
                             "--config", str(cfg)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: proc.poll() is not None or request(str(sock)) is not None,
                 timeout=SLOW_S, what="the daemon's control socket")
        assert proc.poll() is None, proc.stderr.read()
        pid = request(str(sock))["pid"]
        r = check(cfg, ns=d_ns)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=shutdown_bound_s() + 20.0) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert r.returncode == 2
    f = "\n".join(fails(r))
    assert f"store in use by pid {pid}" in f, r.stdout
    assert 'daemon.metrics_listen: "127.0.0.1:9477": cannot listen' in f
    assert f'daemon.control_socket: "{sock}": a beatd answers there (pid {pid}' in f
    r = check(cfg, ns=d_ns)        # stopped: a start would work
    assert r.returncode == 0, r.stdout


# -- as the daemon's user, without root's rights -------------------------------------------------

def test_as_an_unprivileged_user(tmp_path, netns_pair, nobody_dir):
    """As nobody without CAP_NET_RAW: capture permission FAILs; a store directory and a local
    ledger file that root made (the ledger-ownership step) FAIL with what to chown."""
    require_root()
    d_ns, d_if, _, _ = netns_pair
    led, _, key = _ledger(tmp_path)
    led_copy = os.path.join(nobody_dir, "ledger.lmdb")
    shutil.copy(led, led_copy)                  # root's, 0644: nobody cannot open it read-write
    key_copy = os.path.join(nobody_dir, "device.ed25519")
    shutil.copy(key, key_copy)
    os.chown(key_copy, NOBODY, NOBODY)
    store = os.path.join(nobody_dir, "rootstore")
    os.makedirs(store, mode=0o755)              # root's
    cfg = os.path.join(nobody_dir, "beatd.toml")
    text = config_text(store, os.path.join(nobody_dir, "c.sock"), interfaces=[d_if],
                       metrics="")
    with open(cfg, "w") as f:
        f.write(text + f'[ledger]\nbackend = "local"\npath = "{led_copy}"\nkey = "{key_copy}"\n')
    os.chmod(cfg, 0o644)
    r = subprocess.run(sandboxed(d_ns, [sys.executable, "-m", "beatd", "check-config", cfg],
                                 caps=(), sandbox=False, workdir=nobody_dir),
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2, r.stdout + r.stderr
    f = fails(r)
    assert any(x.startswith(f"this user (uid {NOBODY}) cannot open a packet socket") and
               "CAP_NET_RAW" in x for x in f), r.stdout
    assert any(x.startswith(f'store.path: "{store}": not writable by this user (uid {NOBODY}; '
                            "owner uid 0") for x in f), r.stdout
    assert any(x.startswith(f'ledger.path: "{led_copy}": {led_copy} is not readable and '
                            "writable by this user") and "chown beatd:beatd" in x
               for x in f), r.stdout
    os.chown(led_copy, NOBODY, NOBODY)
    os.chown(store, NOBODY, NOBODY)
    r = subprocess.run(sandboxed(d_ns, [sys.executable, "-m", "beatd", "check-config", cfg],
                                 caps=("net_raw",), sandbox=False, workdir=nobody_dir),
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_registering_as_root_leaves_a_ledger_the_daemons_user_can_open(tmp_path, netns_pair,
                                                                      nobody_dir):
    """The docs' step: the governance registers the node as root on the default local ledger in
    the daemon's store directory (owned by the daemon's user): the new ledger's files go to that
    user, and check-config run as that user finds the ledger and the node registered."""
    require_root()
    d_ns, d_if, _, _ = netns_pair
    from ledger_client.keys import DeviceKey
    store = os.path.join(nobody_dir, "store")
    os.makedirs(store)
    os.chown(store, NOBODY, NOBODY)
    dev = DeviceKey.generate()
    dev.save(os.path.join(store, "device.ed25519"))
    os.chown(os.path.join(store, "device.ed25519"), NOBODY, NOBODY)
    gov = tmp_path / "gov.ed25519"
    DeviceKey.generate().save(gov)
    led = os.path.join(store, "ledger.lmdb")
    r = subprocess.run([sys.executable, "-c", "import sys; from governance.cli import main; "
                        "sys.exit(main())", "--ledger", f"local:{led}", "--key",
                        str(gov), "register-node", "--node-id", str(NODE), "--owner", "isp-a",
                        "--pubkey", dev.public_hex], capture_output=True, text=True, timeout=60,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert f"given to uid {NOBODY}" in r.stderr
    for f in (led, led + "-lock"):
        assert os.stat(f).st_uid == NOBODY, f
    cfg = os.path.join(nobody_dir, "beatd.toml")
    with open(cfg, "w") as f:
        f.write(config_text(store, os.path.join(nobody_dir, "c.sock"), interfaces=[d_if],
                            metrics=""))      # [ledger] by default: local, beside the store
    os.chmod(cfg, 0o644)
    r = subprocess.run(sandboxed(d_ns, [sys.executable, "-m", "beatd", "check-config", cfg],
                                 caps=("net_raw",), sandbox=False, workdir=nobody_dir),
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("ok", f"local {led} reachable, node {NODE} registered with this key") in \
        lines_of(r)["ledger"], r.stdout
