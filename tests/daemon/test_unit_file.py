"""packaging/beatd.service gives the least privilege that holds: CAP_NET_RAW alone, and systemd's
hardening (a syscall filter, no writable-executable memory, a /proc of its own process only...).

- ``systemd-analyze security --offline=true`` of the unit: its exposure score stays at or below
  ``MAX_EXPOSURE`` (1.6 when written; 4.5 with CAP_NET_ADMIN and without the hardening);
- as root, in a network namespace: ``beatd run`` as user nobody with exactly the unit's
  capabilities (``setpriv``), under the unit's syscall filter, MemoryDenyWriteExecute and
  ProcSubset=pid/ProtectProc=invisible (``unit_sandbox.py`` applies them without systemd), captures
  frames from a veth peer through its TPACKET_V3 ring and learns an IP-configured neighbour from
  the kernel's table (netlink), and names it in its records; the same start without CAP_NET_RAW
  is refused naming the interface and the error (so the test could fail).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from beatd.control import request
from conftest import IN_CI, REPO, require_root, wait_for
from test_daemon import OWN, PEER, mac_str, netns_pair, send, shutdown_bound_s  # noqa: F401
from test_systemd_unit import UNIT, one, parse

SANDBOX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "unit_sandbox.py")
MAX_EXPOSURE = 2.0          # systemd-analyze security's "Overall exposure level"; lower is better
NOBODY = 65534
SLOW_S = 60.0
NEIGH_IP = "10.250.0.9"
NEIGH_ID = 9
CAP_NET_RAW_BIT = 13


def need(tool):
    exe = shutil.which(tool)
    if exe is None:
        msg = f"{tool} is not installed (Debian: apt-get install systemd / util-linux)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


def test_the_unit_grants_cap_net_raw_and_nothing_else():
    unit = parse()
    assert one(unit, "Service", "AmbientCapabilities").split() == ["CAP_NET_RAW"]
    assert one(unit, "Service", "CapabilityBoundingSet").split() == ["CAP_NET_RAW"]
    text = open(UNIT).read()
    assert "CAP_NET_ADMIN" not in re.sub(r"#.*", "", text)
    svc = unit["Service"]
    for key, value in (("NoNewPrivileges", "yes"), ("MemoryDenyWriteExecute", "yes"),
                       ("ProtectClock", "yes"), ("ProtectHostname", "yes"),
                       ("ProtectKernelLogs", "yes"), ("RestrictRealtime", "yes"),
                       ("RestrictSUIDSGID", "yes"), ("ProcSubset", "pid"),
                       ("ProtectProc", "invisible"), ("SystemCallArchitectures", "native")):
        assert svc.get(key, [None])[-1] == value, key
    assert svc["SystemCallFilter"][0] == "@system-service"
    assert int(one(unit, "Service", "UMask"), 8) & 0o007 == 0o007


def test_systemd_analyze_security_exposure(tmp_path):
    exe = need("systemd-analyze")
    unit = tmp_path / "beatd.service"
    unit.write_text(open(UNIT).read().replace("/opt/beatd/venv/bin/beatd", "/bin/true"))
    r = subprocess.run([exe, "security", "--offline=true", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for beatd\.service: ([0-9.]+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    score = float(m.group(1))
    assert score <= MAX_EXPOSURE, (f"exposure {score} > {MAX_EXPOSURE}: the unit lost some "
                                   f"hardening\n{r.stdout}")
    # what the score rests on: no network administration, a syscall filter
    lines = {line.split()[1]: line[0] for line in r.stdout.splitlines()
             if line[:1] in ("✓", "✗") and len(line.split()) > 1}
    assert lines.get("CapabilityBoundingSet=~CAP_NET_ADMIN") == "✓"
    assert lines.get("SystemCallFilter=~@privileged") == "✓"
    assert lines.get("MemoryDenyWriteExecute=") == "✓"


# -- the sandbox, without systemd ------------------------------------------------------------------

def syscall_groups(exe):
    """``{"@group": [entries]}`` of ``systemd-analyze syscall-filter`` (entries: calls, groups)."""
    out = subprocess.run([exe, "syscall-filter", "--no-pager"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    groups, cur = {}, None
    for line in out.splitlines():
        if line.startswith("@"):
            cur = groups.setdefault(line.strip(), [])
        elif line.startswith((" ", "\t")) and cur is not None:
            s = line.strip()
            if s and not s.startswith("#"):
                cur.append(s)
        else:
            cur = None
    return groups


def expand(groups, name, seen=None):
    seen = set() if seen is None else seen
    if not name.startswith("@"):
        return {name}
    if name in seen:
        return set()
    seen.add(name)
    out = set()
    for entry in groups[name]:
        out |= expand(groups, entry, seen)
    return out


def unit_allow_list():
    """The system calls the unit's SystemCallFilter= lines allow (an allow list, then ``~``
    lines removing from it), and SystemCallErrorNumber=."""
    exe = need("systemd-analyze")
    groups = syscall_groups(exe)
    svc = parse()["Service"]
    allowed = None
    for value in svc["SystemCallFilter"]:
        deny = value.startswith("~")
        names = set()
        for item in value.lstrip("~").split():
            names |= expand(groups, item)
        if deny:
            allowed -= names
        else:
            allowed = names if allowed is None else allowed | names
    return sorted(allowed), svc.get("SystemCallErrorNumber", ["EPERM"])[-1]


def blocked_paths():
    """``[(blocked, target)]``: the directories this interpreter and the checkout need (``target``)
    below a directory that user nobody cannot enter (``blocked``: a pyenv or a clone under
    /root). In the sandbox's mount namespace each blocked directory is covered by an empty tmpfs
    (mode 0755) and each target bound back at its path, so that nobody reaches exactly these."""
    out = []
    targets = {sys.base_prefix, REPO, os.path.dirname(os.path.realpath(sys.executable))}
    for target in sorted(targets):
        parts = target.split(os.sep)
        for i in range(2, len(parts)):
            p = os.sep.join(parts[:i])
            if not os.stat(p).st_mode & 0o001:
                out.append((p, target))
                break
    # a target inside another target is bound back with it
    return [(b, t) for b, t in out
            if not any(t != u and t.startswith(u + os.sep) for _, u in out)]


def sandboxed(ns, argv, caps=("net_raw",), sandbox=True, workdir=None):
    """argv as user nobody in namespace ``ns`` with only ``caps``, under the unit's sandbox."""
    allow_file = os.path.join(workdir, "allow.txt")
    names, code = unit_allow_list()
    with open(allow_file, "w") as f:
        f.write("\n".join(names) + "\n")
    os.chmod(allow_file, 0o644)
    prep, binds, covered = [], [], []
    for i, (blocked, target) in enumerate(blocked_paths()):
        keep = os.path.join(workdir, f"keep{i}")
        os.makedirs(keep, exist_ok=True)
        prep.append(f"mount --bind {_q(target)} {_q(keep)}")      # before anything is covered
        if blocked not in covered:
            covered.append(blocked)
        binds += [f"mkdir -p {_q(target)}", f"mount --bind {_q(keep)} {_q(target)}"]
    prep += [f"mount -t tmpfs -o mode=0755 tmpfs {_q(b)}" for b in covered] + binds
    prep.append("mount -t proc -o hidepid=invisible,subset=pid proc /proc")
    capset = ",".join(f"+{c}" for c in caps)
    priv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            f"--inh-caps=-all{',' + capset if caps else ''}",
            f"--bounding-set=-all{',' + capset if caps else ''}", "--no-new-privs"]
    if caps:
        priv.append(f"--ambient-caps={capset}")
    inner = [sys.executable, SANDBOX] + (["--mdwe", "--allow", allow_file, "--errno", code]
                                         if sandbox else []) + ["--"] + argv
    script = " && ".join(prep) + " && exec " + " ".join(_q(a) for a in priv + inner)
    return ["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private",
            "sh", "-c", script]


def _q(s):
    return "'" + str(s).replace("'", "'\\''") + "'"


@pytest.fixture
def nobody_dir():
    d = tempfile.mkdtemp(prefix="beatd-unit-")
    os.chmod(d, 0o755)
    os.chown(d, NOBODY, NOBODY)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def write_config(workdir, d_if):
    cfg = os.path.join(workdir, "beatd.toml")
    with open(cfg, "w") as f:
        f.write(f"""
node_id = 1
own_macs = ["{mac_str(OWN)}"]
interfaces = ["{d_if}"]
[[neighbours]]
node_id = {NEIGH_ID}
ip = "{NEIGH_IP}"
interface = "{d_if}"
[store]
path = "{workdir}/store"
ring_size = "16MiB"
map_size = "256MiB"
[capture]
workers = 1
block_size = "256KiB"
block_count = 4
[daemon]
commit_interval_ms = 20
metrics_listen = ""
control_socket = "{workdir}/control.sock"
log_format = "text"
neighbour_refresh = true
[ledger]
backend = "none"
""")
    os.chmod(cfg, 0o644)
    return cfg


PROBE = r"""
import ctypes, errno, json, mmap, os
libc = ctypes.CDLL(None, use_errno=True)
out = {"uid": os.getuid(), "mdwe": libc.prctl(66, 0, 0, 0, 0)}
for line in open("/proc/self/status"):
    if line.startswith(("CapEff", "CapAmb", "CapBnd", "NoNewPrivs", "Seccomp:")):
        k, v = line.split(":")
        out[k] = v.strip()
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    out["wx_mmap"] = "allowed"
except OSError as e:
    out["wx_mmap"] = errno.errorcode[e.errno]
out["setpriority"] = "allowed" if libc.setpriority(0, 0, 5) == 0 else \
    errno.errorcode[ctypes.get_errno()]
out["proc_stat"] = os.path.exists("/proc/stat")
out["proc_1"] = os.path.exists("/proc/1/status")
print(json.dumps(out))
"""


def test_the_sandbox_is_applied(netns_pair, nobody_dir):
    """The sandbox the daemon test runs under holds what it says (so that test means something):
    uid nobody, CapEff = CAP_NET_RAW only, no new privileges, a seccomp filter that refuses a
    @resources call with EPERM, no writable-executable mapping, a /proc of its own processes."""
    require_root()
    d_ns = netns_pair[0]
    r = subprocess.run(sandboxed(d_ns, [sys.executable, "-c", PROBE], workdir=nobody_dir),
                       capture_output=True, text=True, timeout=60, cwd=nobody_dir)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.splitlines()[-1])
    assert got["uid"] == NOBODY
    assert int(got["CapEff"], 16) == 1 << CAP_NET_RAW_BIT
    assert int(got["CapAmb"], 16) == 1 << CAP_NET_RAW_BIT
    assert int(got["CapBnd"], 16) == 1 << CAP_NET_RAW_BIT
    assert got["NoNewPrivs"] == "1" and got["Seccomp"] == "2"
    assert got["mdwe"] & 1 == 1 and got["wx_mmap"] in ("EACCES", "EPERM")
    assert got["setpriority"] == "EPERM"            # @resources is filtered out
    assert got["proc_stat"] is False and got["proc_1"] is False


def test_capture_and_neighbours_with_cap_net_raw_only(netns_pair, nobody_dir):
    """beatd run as nobody with CAP_NET_RAW alone, under the unit's sandbox: the ring captures,
    the kernel's neighbour table (read and followed over netlink) names the neighbour."""
    require_root()
    d_ns, d_if, p_ns, p_if = netns_pair
    cfg = write_config(nobody_dir, d_if)
    sock = os.path.join(nobody_dir, "control.sock")
    proc = subprocess.Popen(sandboxed(d_ns, [sys.executable, "-m", "beatd", "run", "--config",
                                             cfg], workdir=nobody_dir),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def status():
            return request(sock)
        wait_for(lambda: proc.poll() is not None or os.path.exists(sock), timeout=SLOW_S,
                 what="the daemon's control socket")
        assert proc.poll() is None, proc.stderr.read()
        st = status()
        with open(f"/proc/{st['pid']}/status") as f:
            fields = dict(line.split(":", 1) for line in f)
        assert int(fields["Uid"].split()[0]) == NOBODY
        assert int(fields["CapEff"], 16) == 1 << CAP_NET_RAW_BIT
        # the neighbour appears in the kernel's table after the start: learned over netlink
        subprocess.run(["ip", "-n", d_ns, "neigh", "replace", NEIGH_IP, "lladdr", mac_str(PEER),
                        "dev", d_if, "nud", "permanent"], check=True)
        wait_for(lambda: status()["neighbours"] == {mac_str(PEER): NEIGH_ID}, timeout=SLOW_S,
                 what="the neighbour learned from the kernel's table")
        send(p_ns, p_if, 0, 40, 1)
        wait_for(lambda: status()["totals"]["frames"] >= 40, timeout=SLOW_S,
                 what="40 frames captured")
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=shutdown_bound_s() + 20.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert rc == 0, err
    assert "Operation not permitted" not in err, err
    r = subprocess.run([sys.executable, "-m", "beatd", "dump", "--config", cfg, "--json"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()[:-1]]
    assert len(rows) == 40 and {x["prev_id"] for x in rows} == {NEIGH_ID}


def test_without_cap_net_raw_the_start_is_refused(netns_pair, nobody_dir):
    require_root()
    d_ns, d_if, _, _ = netns_pair
    cfg = write_config(nobody_dir, d_if)
    r = subprocess.run(sandboxed(d_ns, [sys.executable, "-m", "beatd", "run", "--config", cfg],
                                 caps=(), workdir=nobody_dir),
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 2, r.stderr
    assert "Operation not permitted" in r.stderr, r.stderr
    assert "capture needs CAP_NET_RAW" in r.stderr, r.stderr
    assert d_if in r.stderr or '"any"' in r.stderr or "any:" in r.stderr, r.stderr
