#!/usr/bin/env python3
"""The BEAT router image's entrypoint (no systemd): interfaces, configuration, FRR, beatd.

GNS3 starts the container before it moves the link interfaces in (``eth0`` ... ``ethN`` appear
late), so this waits for them, then configures the node from its environment and runs it:

1. wait (``BEAT_WAIT_S``, default 120 s) until ``eth0`` ... ``eth<BEAT_ETH_COUNT - 1>`` exist
   (the count defaults to GNS3's ``GNS3_MAX_ETHERNET``, else to what ``BEAT_IFACES``/``BEAT_MGMT``
   name);
2. sysctls (forwarding on for a router, off for a host; rp_filter off; IPv6 off), each
   interface's MAC (when the environment gives one and the interface has another), address, up;
3. a router: its keys and certificates from the environment into ``/etc/beatd/keys``, then
   ``/etc/beatd/beatd.toml``, validated by beatd's own configuration loader (an error names the
   variable or the key); FRR's static routes (``/etc/frr/frr.conf``) and FRR started, or the
   routes set with ``ip route`` when FRR is absent; then ``exec beatd run``. A host: its routes,
   then ``exec`` its command (the image's CMD: a shell on the GNS3 console).

Environment (``beat-lab gns3 project`` writes all of it):

| variable | what |
|---|---|
| ``BEAT_ROLE`` | ``router`` (default) or ``host`` |
| ``BEAT_NODE_ID`` | the router's node id |
| ``BEAT_IFACES`` | ``eth0=10.77.1.2/24@02:be:00:02:00:00,eth1=...``: the captured interfaces (MAC optional) |
| ``BEAT_MGMT`` | ``eth3=10.199.1.2/24[@MAC]``: the management interface (not captured) |
| ``BEAT_NEIGHBOURS`` | ``2=02:be:00:03:00:00@10.77.2.2%eth1,4=...``: neighbour node id = MAC @ IP % this router's interface on that link (MAC or IP may be left out: ``2=@10.77.2.2``; without ``%IFACE`` the MAC names the neighbour on every interface) |
| ``BEAT_ROUTES`` | ``10.77.3.0/24=10.77.2.2,...``; ``default=GW`` |
| ``BEAT_LEDGER`` | ``none``, ``local:/path/ledger.mdb`` or ``ethereum:URL#CONTRACT`` (default ``none``) |
| ``BEAT_DEVICE_KEY`` | the device's Ed25519 key, PEM in base64 (else beatd makes one in the store, local only) |
| ``BEAT_ETH_KEY`` | the device's Ethereum account key (hex; ``ethereum`` only) |
| ``BEAT_GOVERNANCE_CA``, ``BEAT_TLS_CERT``, ``BEAT_TLS_KEY`` | PEM in base64: the governance CA, this device's certificate and key (the Interrogation service) |
| ``BEAT_INTERROGATION_LISTEN`` | ``ADDR:PORT`` of the Interrogation service (default: the management address, port 9478, when the TLS files are given) |
| ``BEAT_ANCHOR_PERIOD_S``, ``BEAT_RING_SIZE``, ``BEAT_HASH`` | governance parameters (default 10, ``64MiB``, ``sha3-256``) |
| ``BEAT_ETH_COUNT``, ``BEAT_WAIT_S`` | interfaces to wait for, and for how long |

Where things go, overridable for tests outside a container: ``BEAT_SYSFS_NET`` (``/sys/class/net``),
``BEAT_PROC_SYS`` (``/proc/sys``), ``BEAT_ETC`` (``/etc/beatd``), ``BEAT_STORE``
(``/var/lib/beatd``, a volume), ``BEAT_FRR_ETC`` (``/etc/frr``), ``BEAT_FRR_START`` (default
``/usr/lib/frr/frrinit.sh start``; empty: no FRR), ``BEAT_IP`` (``ip``), ``BEAT_BEATD``
(``beatd``), ``BEAT_CONTROL_SOCKET`` (``/run/beatd/control.sock``).

Exit codes: 2 a bad variable or a configuration beatd rejects (one line naming it), 1 an
interface that never appeared or a command that failed.
"""
import base64
import binascii
import ipaddress
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

EXIT_CONFIG = 2
EXIT_RUNTIME = 1
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_IF_RE = re.compile(r"^eth(\d{1,2})$")


class ConfigError(Exception):
    """A bad environment variable: exit 2."""


class RuntimeFailure(Exception):
    """An interface that never came, a command that failed: exit 1."""


def log(msg):
    print(f"beat-entrypoint: {msg}", file=sys.stderr, flush=True)


def env(name, default=None):
    v = os.environ.get(name)
    return default if v is None or v.strip() == "" else v.strip()


def _toml(s):
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


# ------------------------------------------------------------------------------- parsing

def _items(name):
    v = env(name, "")
    return [x.strip() for x in re.split(r"[,\s]+", v) if x.strip()]


def _ifname(v, var):
    if not _IF_RE.match(v):
        raise ConfigError(f"{var}: {v!r} is not an interface name eth0..eth99")
    return v


def _mac(v, var):
    if not _MAC_RE.match(v):
        raise ConfigError(f"{var}: {v!r} is not a MAC address")
    return v.lower()


def parse_iface(item, var):
    """``eth0=10.0.0.1/24@02:..`` -> (ifname, IPv4Interface, mac or None)."""
    name, sep, rest = item.partition("=")
    if not sep or not rest:
        raise ConfigError(f"{var}: {item!r} is not IF=ADDRESS/LEN[@MAC]")
    addr, _, mac = rest.partition("@")
    try:
        iface = ipaddress.IPv4Interface(addr)
    except ValueError:
        raise ConfigError(f"{var}: {item!r}: {addr!r} is not an IPv4 address/length") from None
    if "/" not in addr:
        raise ConfigError(f"{var}: {item!r}: give the prefix length ({addr}/24)")
    return _ifname(name, var), iface, (_mac(mac, var) if mac else None)


def parse_neighbours(var="BEAT_NEIGHBOURS"):
    out = []
    for item in _items(var):
        nid, sep, rest = item.partition("=")
        if not sep or not nid.isdigit() or not 1 <= int(nid) <= (1 << 64) - 2:
            raise ConfigError(f"{var}: {item!r} is not NODE_ID=MAC@IP[%IFACE]")
        rest, _, iface = rest.partition("%")
        if iface:
            iface = _ifname(iface, var)
        mac, _, ip = rest.partition("@")
        if mac:
            mac = _mac(mac, var)
        if ip:
            try:
                ip = str(ipaddress.ip_address(ip))
            except ValueError:
                raise ConfigError(f"{var}: {item!r}: {ip!r} is not an IP address") from None
        if not mac and not ip:
            raise ConfigError(f"{var}: {item!r}: give the MAC, the IP or both")
        out.append((int(nid), mac or None, ip or None, iface or None))
    return out


def parse_routes(var="BEAT_ROUTES"):
    out = []
    for item in _items(var):
        pfx, sep, gw = item.partition("=")
        if not sep:
            raise ConfigError(f"{var}: {item!r} is not PREFIX=GATEWAY")
        try:
            net = (ipaddress.IPv4Network("0.0.0.0/0") if pfx == "default"
                   else ipaddress.IPv4Network(pfx))
            gw = ipaddress.IPv4Address(gw)
        except ValueError:
            raise ConfigError(f"{var}: {item!r} is not PREFIX=GATEWAY (IPv4)") from None
        out.append((net, gw))
    return out


def parse_ledger(var="BEAT_LEDGER"):
    v = env(var, "none")
    if v == "none":
        return ("none",)
    kind, _, rest = v.partition(":")
    if kind == "local" and rest.startswith("/"):
        return ("local", rest)
    if kind == "ethereum":
        url, sep, contract = rest.partition("#")
        if sep and url.startswith(("http://", "https://")) and \
                re.match(r"^(0x)?[0-9a-fA-F]{40}$", contract):
            return ("ethereum", url, contract)
    raise ConfigError(f"{var}: {v!r} is not none, local:/PATH or ethereum:URL#CONTRACT")


def _pem(var, required=False):
    v = env(var)
    if v is None:
        if required:
            raise ConfigError(f"{var}: missing")
        return None
    if v.startswith("-----BEGIN"):
        return v.replace("\\n", "\n").encode()
    try:
        data = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{var}: neither PEM nor base64 of PEM") from None
    if not data.startswith(b"-----BEGIN"):
        raise ConfigError(f"{var}: the base64 does not hold a PEM document")
    return data


def parse(role):
    """Everything the environment says, checked: a dict."""
    if role not in ("router", "host"):
        raise ConfigError(f"BEAT_ROLE: {role!r} is not router or host")
    ifaces = [parse_iface(x, "BEAT_IFACES") for x in _items("BEAT_IFACES")]
    if not ifaces:
        raise ConfigError("BEAT_IFACES: missing (e.g. eth0=10.77.1.2/24@02:be:00:02:00:00)")
    mgmt = None
    if env("BEAT_MGMT"):
        mgmt = parse_iface(env("BEAT_MGMT"), "BEAT_MGMT")
    names = [i[0] for i in ifaces] + ([mgmt[0]] if mgmt else [])
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"BEAT_IFACES/BEAT_MGMT: {sorted(dup)[0]} is given twice")
    count = env("BEAT_ETH_COUNT")
    if count is None and env("GNS3_MAX_ETHERNET"):
        m = _IF_RE.match(env("GNS3_MAX_ETHERNET"))
        count = str(int(m.group(1)) + 1) if m else None
    if count is None:
        count = str(max(int(_IF_RE.match(n).group(1)) for n in names) + 1)
    if not count.isdigit() or not 1 <= int(count) <= 100:
        raise ConfigError(f"BEAT_ETH_COUNT: {count!r} is not a number of interfaces 1..100")
    highest = max(int(_IF_RE.match(n).group(1)) for n in names)
    if highest >= int(count):
        raise ConfigError(f"BEAT_ETH_COUNT: {count} interfaces, but eth{highest} is configured")
    try:
        wait_s = float(env("BEAT_WAIT_S", "120"))
    except ValueError:
        raise ConfigError(f"BEAT_WAIT_S: {env('BEAT_WAIT_S')!r} is not a number of seconds") \
            from None
    cfg = {"role": role, "ifaces": ifaces, "mgmt": mgmt, "count": int(count), "wait_s": wait_s,
           "routes": parse_routes()}
    if role == "router":
        nid = env("BEAT_NODE_ID")
        if nid is None or not nid.isdigit():
            raise ConfigError(f"BEAT_NODE_ID: {nid!r} is not a node id (an integer)"
                              if nid else "BEAT_NODE_ID: missing")
        cfg.update(node_id=int(nid), neighbours=parse_neighbours(), ledger=parse_ledger(),
                   ca=_pem("BEAT_GOVERNANCE_CA"), cert=_pem("BEAT_TLS_CERT"),
                   key=_pem("BEAT_TLS_KEY"), device_key=_pem("BEAT_DEVICE_KEY"),
                   eth_key=env("BEAT_ETH_KEY"), listen=env("BEAT_INTERROGATION_LISTEN"),
                   anchor_period_s=env("BEAT_ANCHOR_PERIOD_S"),
                   ring_size=env("BEAT_RING_SIZE", "64MiB"), hash=env("BEAT_HASH", "sha3-256"))
        tls = [cfg["ca"], cfg["cert"], cfg["key"]]
        if any(tls) and not all(tls):
            missing = [n for n, v in zip(("BEAT_GOVERNANCE_CA", "BEAT_TLS_CERT", "BEAT_TLS_KEY"),
                                         tls) if not v]
            raise ConfigError(f"{missing[0]}: missing (the Interrogation service needs the CA, "
                              "the certificate and the key)")
        if cfg["listen"] is None and all(tls) and mgmt:
            cfg["listen"] = f"{mgmt[1].ip}:9478"
        if cfg["ledger"][0] == "ethereum":
            if not cfg["eth_key"] or not re.match(r"^(0x)?[0-9a-fA-F]{64}$", cfg["eth_key"]):
                raise ConfigError("BEAT_ETH_KEY: missing or not 32 bytes in hex (the device's "
                                  "Ethereum account, needed by BEAT_LEDGER=ethereum:...)")
            if cfg["device_key"] is None:
                raise ConfigError("BEAT_DEVICE_KEY: missing (the device's Ed25519 key, "
                                  "registered on the ledger, needed by BEAT_LEDGER=ethereum:...)")
    return cfg


# ------------------------------------------------------------------------------- the node

def wait_for_interfaces(sysfs, count, timeout):
    """Until ``eth0`` .. ``eth<count-1>`` exist under ``sysfs``; RuntimeFailure after
    ``timeout`` seconds."""
    want = [f"eth{i}" for i in range(count)]
    deadline = time.monotonic() + timeout
    said = 0.0
    while True:
        missing = [w for w in want if not os.path.exists(os.path.join(sysfs, w))]
        if not missing:
            return want
        now = time.monotonic()
        if now >= deadline:
            present = sorted(os.listdir(sysfs)) if os.path.isdir(sysfs) else []
            raise RuntimeFailure(f"{missing[0]} did not appear within {timeout:g} s (present: "
                                 f"{', '.join(present) or 'none'}): does the node have "
                                 f"{count} adapters, all linked?")
        if now - said >= 5:
            log(f"waiting for {', '.join(missing)}")
            said = now
        time.sleep(0.2)


def run(argv):
    log("+ " + " ".join(argv))
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeFailure(f"{' '.join(argv)}: {exc}") from None
    if p.returncode != 0:
        raise RuntimeFailure(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.strip()}")
    return p


def sysctls(proc_sys, router):
    values = {"net/ipv4/ip_forward": "1" if router else "0",
              "net/ipv4/conf/all/rp_filter": "0", "net/ipv4/conf/default/rp_filter": "0",
              "net/ipv4/conf/all/send_redirects": "0",
              "net/ipv6/conf/all/disable_ipv6": "1", "net/ipv6/conf/default/disable_ipv6": "1"}
    for key, value in values.items():
        path = os.path.join(proc_sys, key)
        try:
            with open(path, "w") as f:
                f.write(value + "\n")
        except OSError as exc:
            log(f"warning: {path}: {exc.strerror or exc}")


def configure_interfaces(cfg, sysfs, ip):
    for name, iface, mac in cfg["ifaces"] + ([cfg["mgmt"]] if cfg["mgmt"] else []):
        have = None
        try:
            with open(os.path.join(sysfs, name, "address")) as f:
                have = f.read().strip().lower()
        except OSError:
            pass
        if mac and have != mac:
            run(ip + ["link", "set", "dev", name, "address", mac])
        run(ip + ["addr", "replace", str(iface), "dev", name])
        run(ip + ["link", "set", "dev", name, "up"])


def own_mac(sysfs, name, mac):
    if mac:
        return mac
    try:
        with open(os.path.join(sysfs, name, "address")) as f:
            return f.read().strip().lower()
    except OSError:
        raise ConfigError(f"BEAT_IFACES: no MAC given for {name} and {sysfs}/{name}/address "
                          "cannot be read") from None


def _write(path, data, mode):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def write_keys(cfg, etc):
    """The key files from the environment: {what: path}."""
    keys = os.path.join(etc, "keys")
    os.makedirs(keys, mode=0o700, exist_ok=True)
    out = {}
    if cfg["device_key"]:
        out["device_key"] = os.path.join(keys, "device.ed25519")
        _write(out["device_key"], cfg["device_key"], 0o600)
    if cfg["eth_key"]:
        out["eth_key"] = os.path.join(keys, "device.eth")
        k = cfg["eth_key"] if cfg["eth_key"].startswith("0x") else "0x" + cfg["eth_key"]
        _write(out["eth_key"], k + "\n", 0o600)
    if cfg["ca"]:
        nid = cfg["node_id"]
        out["ca"] = os.path.join(keys, "ca.crt")
        out["cert"] = os.path.join(keys, f"device-{nid}.crt")
        out["key"] = os.path.join(keys, f"device-{nid}.key")
        _write(out["ca"], cfg["ca"], 0o644)
        _write(out["cert"], cfg["cert"], 0o644)
        _write(out["key"], cfg["key"], 0o600)
    return out


def beatd_toml(cfg, sysfs, store, keys, control_socket):
    """The text of beatd.toml."""
    macs = [own_mac(sysfs, n, m) for n, _, m in cfg["ifaces"]]
    lines = ["# written by the BEAT router image's entrypoint from its environment",
             f"node_id = {cfg['node_id']}", f"hash = {_toml(cfg['hash'])}",
             "own_macs = [" + ", ".join(_toml(m) for m in macs) + "]",
             "interfaces = [" + ", ".join(_toml(n) for n, _, _ in cfg["ifaces"]) + "]"]
    for nid, mac, ip, iface in cfg["neighbours"]:
        lines += ["", "[[neighbours]]", f"node_id = {nid}"]
        if mac:
            lines.append(f"mac = {_toml(mac)}")
        if ip:
            lines.append(f"ip = {_toml(ip)}")
        if iface:
            lines.append(f"interface = {_toml(iface)}")   # its MAC names it only there
    lines += ["", "[store]", f"path = {_toml(store)}", f"ring_size = {_toml(cfg['ring_size'])}"]
    if cfg["anchor_period_s"]:
        lines += ["", "[governance]", f"anchor_period_s = {cfg['anchor_period_s']}"]
    lines += ["", "[daemon]", f"control_socket = {_toml(control_socket)}",
              'log_format = "text"']
    led = cfg["ledger"]
    lines += ["", "[ledger]", f"backend = {_toml(led[0])}"]
    if led[0] == "local":
        lines.append(f"path = {_toml(led[1])}")
        if "device_key" in keys:
            lines.append(f"key = {_toml(keys['device_key'])}")
    elif led[0] == "ethereum":
        lines += [f"url = {_toml(led[1])}", f"contract = {_toml(led[2])}",
                  f"key = {_toml(keys['eth_key'])}",
                  f"device_key = {_toml(keys['device_key'])}"]
    if led[0] != "none" and cfg["anchor_period_s"]:
        lines.append(f"anchor_period_s = {cfg['anchor_period_s']}")
    if cfg["listen"] and "ca" in keys:
        lines += ["", "[interrogation]", f"listen = {_toml(cfg['listen'])}",
                  f"ca = {_toml(keys['ca'])}", f"cert = {_toml(keys['cert'])}",
                  f"key = {_toml(keys['key'])}"]
        if led[0] == "none":            # nothing else holds the device's Ed25519 key
            if "device_key" not in keys:
                raise ConfigError("BEAT_DEVICE_KEY: missing (with BEAT_LEDGER=none it is what "
                                  "signs the Interrogation service's evidence)")
            lines.append(f"signing_key = {_toml(keys['device_key'])}")
    return "\n".join(lines) + "\n"


def validate(path):
    """beatd's own loader on the written file: ConfigError naming the key."""
    try:
        from beatd import config as beatd_config
    except ImportError as exc:
        raise RuntimeFailure(f"beatd is not importable here ({exc})") from None
    try:
        return beatd_config.load(path)
    except beatd_config.ConfigError as exc:
        raise ConfigError(f"the beatd configuration written from the environment is rejected: "
                          f"{exc}") from None


def frr_conf(hostname, routes):
    lines = ["! written by the BEAT router image's entrypoint from BEAT_ROUTES",
             "frr defaults traditional", f"hostname {hostname}", "log stdout", "!"]
    lines += [f"ip route {net} {gw}" for net, gw in routes]
    lines += ["!", "line vty", "!"]
    return "\n".join(lines) + "\n"


def start_frr(cfg, frr_etc, frr_start, ip):
    """FRR with the static routes, when ``frr_start`` exists; else ``ip route replace``.
    Returns "frr" or "ip"."""
    argv = shlex.split(frr_start) if frr_start else []
    if argv and (shutil.which(argv[0]) or os.path.exists(argv[0])):
        host = os.uname().nodename
        _write(os.path.join(frr_etc, "frr.conf"), frr_conf(host, cfg["routes"]), 0o640)
        try:
            import grp
            import pwd
            os.chown(os.path.join(frr_etc, "frr.conf"), pwd.getpwnam("frr").pw_uid,
                     grp.getgrnam("frr").gr_gid)
        except (KeyError, PermissionError, ImportError):
            pass
        run(argv)
        return "frr"
    if argv:
        log(f"{argv[0]} not found: routes set with ip route instead of FRR")
    set_routes(cfg, ip)
    return "ip"


def set_routes(cfg, ip):
    for net, gw in cfg["routes"]:
        run(ip + ["route", "replace", "default" if net.prefixlen == 0 else str(net), "via",
                  str(gw)])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    sysfs = os.environ.get("BEAT_SYSFS_NET", "/sys/class/net")
    proc_sys = os.environ.get("BEAT_PROC_SYS", "/proc/sys")
    etc = os.environ.get("BEAT_ETC", "/etc/beatd")
    store = os.environ.get("BEAT_STORE", "/var/lib/beatd")
    frr_etc = os.environ.get("BEAT_FRR_ETC", "/etc/frr")
    frr_start = os.environ.get("BEAT_FRR_START", "/usr/lib/frr/frrinit.sh start")
    ip = shlex.split(os.environ.get("BEAT_IP", "ip"))
    beatd = shlex.split(os.environ.get("BEAT_BEATD", "beatd"))
    control = os.environ.get("BEAT_CONTROL_SOCKET", "/run/beatd/control.sock")
    try:
        role = env("BEAT_ROLE", "router")
        cfg = parse(role)
        log(f"{role}: waiting for eth0..eth{cfg['count'] - 1}")
        wait_for_interfaces(sysfs, cfg["count"], cfg["wait_s"])
        sysctls(proc_sys, role == "router")
        configure_interfaces(cfg, sysfs, ip)
        if role == "host":
            set_routes(cfg, ip)
            cmd = argv or ["/bin/bash"]
            log("host ready: exec " + " ".join(cmd))
            os.execvp(cmd[0], cmd)
        keys = write_keys(cfg, etc)
        os.makedirs(store, exist_ok=True)
        path = os.path.join(etc, "beatd.toml")
        _write(path, beatd_toml(cfg, sysfs, store, keys, control), 0o644)
        validate(path)
        log(f"{path} written and valid")
        how = start_frr(cfg, frr_etc, frr_start, ip)
        log(f"routes: {len(cfg['routes'])} ({how})")
        cmd = beatd + ["run", "--config", path]
        log("exec " + " ".join(cmd))
        os.execvp(cmd[0], cmd)
    except ConfigError as exc:
        log(str(exc))
        return EXIT_CONFIG
    except RuntimeFailure as exc:
        log(str(exc))
        return EXIT_RUNTIME
    except OSError as exc:
        log(f"{exc.filename or ''}: {exc.strerror or exc}")
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
