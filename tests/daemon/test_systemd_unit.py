"""packaging/beatd.service: a dedicated user, exactly CAP_NET_RAW (no CAP_NET_ADMIN: nothing needs
it, test_unit_file.py runs the daemon so), never root; ``systemd-analyze verify`` when this machine
has it (it is not installed for the test)."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNIT = os.path.join(ROOT, "packaging", "beatd.service")


def parse(path=UNIT):
    """``{section: {key: [values]}}`` (systemd allows a key several times)."""
    out, section = {}, None
    with open(path) as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("[") and line.endswith("]"):
                section = out.setdefault(line[1:-1], {})
                continue
            key, sep, value = line.partition("=")
            assert sep and section is not None, f"not a unit file line: {raw!r}"
            section.setdefault(key.strip(), []).append(value.strip())
    return out


def one(unit, section, key):
    values = unit[section].get(key)
    assert values, f"[{section}] {key} is missing"
    return values[-1]


def test_runs_as_a_dedicated_user_with_cap_net_raw_only():
    unit = parse()
    svc = unit["Service"]
    assert one(unit, "Service", "User") == "beatd"
    assert svc.get("Group", ["beatd"])[-1] == "beatd"
    assert one(unit, "Service", "User") not in ("root", "0")
    caps = {"CAP_NET_RAW"}
    assert set(one(unit, "Service", "AmbientCapabilities").split()) == caps
    assert set(one(unit, "Service", "CapabilityBoundingSet").split()) == caps
    assert one(unit, "Service", "NoNewPrivileges") in ("yes", "true")
    assert "PermissionsStartOnly" not in svc and "+" not in one(unit, "Service", "ExecStart")[:1]


def test_directories_reload_restart():
    unit = parse()
    assert one(unit, "Service", "StateDirectory") == "beatd"
    assert one(unit, "Service", "RuntimeDirectory") == "beatd"
    assert one(unit, "Service", "ProtectSystem") == "strict"
    assert "/var/lib/beatd" in one(unit, "Service", "ReadWritePaths").split()
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    start = one(unit, "Service", "ExecStart").split()
    assert start[1:] == ["run", "--config", "/etc/beatd/beatd.toml"]
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_paths_agree_with_the_example_configuration():
    from beatd.config import load
    cfg = load(os.path.join(ROOT, "packaging", "beatd.toml"))
    assert cfg.store_path == "/var/lib/beatd"                    # StateDirectory=beatd
    assert os.path.dirname(cfg.control_socket) == "/run/beatd"   # RuntimeDirectory=beatd


def test_systemd_analyze_verify(tmp_path):
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (the unit is still parsed above)")
    # ExecStart must name an existing program for verify: point it at this checkout's beatd
    text = open(UNIT).read()
    launcher = tmp_path / "beatd"
    launcher.write_text(f"#!/bin/sh\nexec {sys.executable} -m beatd \"$@\"\n")
    launcher.chmod(0o755)
    unit = tmp_path / "beatd.service"
    unit.write_text(text.replace("/opt/beatd/venv/bin/beatd", str(launcher)))
    r = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and only prints them: any line about the unit is a problem
    problems = [line for line in (r.stdout + r.stderr).splitlines() if "beatd.service" in line]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr
