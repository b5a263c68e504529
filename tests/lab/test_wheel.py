"""The wheel, installed as a user would: ``pip wheel`` of a copy of the checkout (nothing built in
place goes in), its contents (one package per role, the package data, no benchmarks or tests,
scapy and web3 only as extras), then two fresh venvs from PyPI (pinned with -c requirements*.txt):

- the router install (``pip install beat-*.whl``): beatd and beatctl import and run without scapy
  or web3; ``backend = "ethereum"`` without web3 is refused naming the extra; the lab CA and the
  offline demo (package data) work from site-packages;
- the testbed install (``beat-*.whl[lab,ethereum]``): ``beat-lab up``/``dump``/``down`` (root,
  namespaces) and ``beatd replay`` of the bundled capture, run from the venv, in a directory
  that is not the checkout; the ethereum backend imports.

One wheel and one venv of each kind per test session (module-scoped fixtures; the two venvs are
made at the same time): about a minute.
"""
import concurrent.futures
import glob
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO, require_root

pytestmark = pytest.mark.slow

PREFIX = f"beat-w{os.getpid() % 10000}-"
# what a copy of the checkout leaves out: virtualenvs, npm, build products, caches
# (.gitignore's, plus .git: what a fresh clone would not have)
NOT_COPIED = shutil.ignore_patterns(".venv*", "node_modules", ".git", "build", "dist",
                                    "*.egg-info", "__pycache__", "*.so", "*.o", ".pytest_cache",
                                    ".hypothesis", ".benchmarks", "corpus", "tmp")
ROLES = ("beat_common", "fastpath", "beatd", "ledger_client", "governance", "beat_rpc", "beat_lab")
PIP_TIMEOUT_S = 600


def _run(argv, cwd, timeout=300, check=True, env=None):
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd,
                       timeout=timeout, env=env)
    if check:
        assert p.returncode == 0, f"{argv}: exit {p.returncode}\n{p.stdout[-3000:]}\n" \
                                  f"{p.stderr[-3000:]}"
    return p


def _clean_env():
    """The environment without anything that would put the checkout on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    src = tmp_path_factory.mktemp("src") / "beat"
    shutil.copytree(REPO, src, ignore=NOT_COPIED)
    out = tmp_path_factory.mktemp("wheel")
    # the dev venv has the build requirements (setuptools, wheel, the pinned Cython)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
          "-w", out, src], cwd=src, timeout=PIP_TIMEOUT_S)
    (path,) = glob.glob(str(out / "beat-*.whl"))
    return path


def _venv(tmp_path_factory, name, requirement, constraints):
    d = tmp_path_factory.mktemp(name)
    venv = d / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=d, timeout=120)
    py = venv / "bin" / "python"
    cons = [a for c in constraints for a in ("-c", os.path.join(REPO, c))]
    _run([py, "-m", "pip", "install", "-q", requirement, *cons], cwd=d, timeout=PIP_TIMEOUT_S,
         env=_clean_env())
    return venv


@pytest.fixture(scope="module")
def venvs(wheel, tmp_path_factory):
    """The router venv and the testbed venv, made at the same time (two pip installs, one per
    core: each waits mostly on its own unpacking and byte-compiling). A failure of either is
    raised here, naming its pip command."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        router = pool.submit(_venv, tmp_path_factory, "router", wheel, ["requirements.txt"])
        lab = pool.submit(_venv, tmp_path_factory, "lab", f"{wheel}[lab,ethereum]",
                          ["requirements.txt", "requirements-lab.txt",
                           "requirements-ethereum.txt"])
        return {"router": router.result(), "lab": lab.result()}


@pytest.fixture(scope="module")
def router_venv(venvs):
    return venvs["router"]


@pytest.fixture(scope="module")
def lab_venv(venvs):
    return venvs["lab"]


def test_the_wheel_holds_one_package_per_role_and_the_data(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt")))
    # (the wheel's .data directory holds the documents: share/doc/beatd, below)
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info",
                                                                            ".data"))}
    assert tops == set(ROLES), tops
    # every package of the checkout's roles (subpackages too) is in it
    for role in ROLES:
        for init in glob.glob(os.path.join(REPO, role, "**", "__init__.py"), recursive=True):
            rel = os.path.relpath(init, REPO)
            if "node_modules" not in rel:
                assert rel in names, f"{rel}: not in the wheel"
    for data in ("beat_lab/topologies/paper.toml", "beat_lab/topologies/line4.toml",
                 "beat_lab/capture/r2.pcap", "beat_lab/capture/r2.toml",
                 "ledger_client/contracts/Beat.json"):
        assert data in names, data
    assert any(n.startswith("fastpath/_native") and n.endswith(".so") for n in names)
    requires = [l.split(":", 1)[1].strip() for l in meta.splitlines()
                if l.startswith("Requires-Dist:")]
    plain = [r for r in requires if "extra ==" not in r]
    assert not [r for r in plain if r.startswith(("scapy", "web3", "eth-"))], plain
    assert any(r.startswith("scapy") and 'extra == "lab"' in r for r in requires), requires
    assert any(r.startswith("web3") and 'extra == "ethereum"' in r for r in requires), requires
    scripts = entry.decode()
    for line in ("beatd = beatd.cli:main", "beatctl = governance.cli:main",
                 "beat-lab = beat_lab.cli:main"):
        assert line in scripts, scripts


def test_the_units_documentation_is_installed(router_venv):
    """packaging/beatd.service's Documentation= names files under /opt/beatd/venv (the venv its
    ExecStart runs): the wheel installs them there (share/doc/beatd), the documents of docs/."""
    from test_systemd_unit import parse
    docs = [u for v in parse()["Unit"]["Documentation"] for u in v.split()]
    assert docs
    for url in docs:
        assert url.startswith("file:///opt/beatd/venv/"), url
        path = router_venv / url[len("file:///opt/beatd/venv/"):]
        assert path.is_file(), f"{url}: not installed by the wheel ({path})"
    share = router_venv / "share" / "doc" / "beatd"
    for doc in glob.glob(os.path.join(REPO, "docs", "*.md")):
        assert (share / os.path.basename(doc)).is_file(), doc
    assert (share / "packaging" / "beatd.service").read_text() == \
        open(os.path.join(REPO, "packaging", "beatd.service")).read()


def test_the_router_install_needs_neither_scapy_nor_web3(router_venv, tmp_path):
    py, bin_ = router_venv / "bin" / "python", router_venv / "bin"
    env = _clean_env()
    p = _run([py, "-c", "import beatd, beatd.daemon, beatd.cli, governance.cli, beat_lab.cli, "
                        "beat_lab.lab, fastpath; print(beatd.__file__, fastpath.IMPL)"],
             cwd=tmp_path, env=env)
    where, impl = p.stdout.split()
    assert where.startswith(str(router_venv)) and impl == "c", p.stdout
    for mod in ("scapy", "web3"):
        p = _run([py, "-c", f"import {mod}"], cwd=tmp_path, env=env, check=False)
        assert p.returncode != 0 and f"No module named '{mod}'" in p.stderr, (mod, p.stderr)
    assert _run([bin_ / "beatd", "--version"], cwd=tmp_path, env=env).stdout.startswith("beatd ")
    _run([bin_ / "beatctl", "--help"], cwd=tmp_path, env=env)
    # the ethereum backend without web3: refused, naming the extra to install
    p = _run([py, "-c", "import ledger_client.ethereum"], cwd=tmp_path, env=env, check=False)
    assert "pip install 'beat[ethereum]'" in p.stderr, p.stderr
    _run([bin_ / "beatd", "keygen", "--out", tmp_path / "keys"], cwd=tmp_path, env=env)
    (tmp_path / "beatd.toml").write_text(f"""
node_id = 1
own_macs = ["02:00:00:00:00:01"]
interfaces = ["lo"]
[store]
path = "{tmp_path / 'store'}"
ring_size = "16MiB"
map_size = "64MiB"
[daemon]
metrics_listen = ""
control_socket = ""
[ledger]
backend = "ethereum"
url = "http://127.0.0.1:1"
contract = "0x{'ab' * 20}"
key = "{tmp_path / 'keys' / 'device.ed25519'}"
""")
    p = _run([bin_ / "beatd", "run", "--config", tmp_path / "beatd.toml"], cwd=tmp_path,
             env=env, check=False, timeout=60)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert 'ledger.backend: "ethereum"' in p.stderr and "pip install 'beat[ethereum]'" in p.stderr
    # beat-lab's CA and offline demo need no extra; the demo finds its capture as package data
    p = _run([bin_ / "beat-lab", "certs", "ca", "--out", tmp_path / "ca"], cwd=tmp_path, env=env)
    assert p.stdout.split() == [str(tmp_path / "ca" / "ca.crt"), str(tmp_path / "ca" / "ca.key")]
    p = _run([bin_ / "beat-lab", "demo", "--offline"], cwd=tmp_path, env=env)
    assert f"{router_venv}/lib/" in p.stdout and "beat_lab/capture/r2.pcap: pcap" in p.stdout
    assert "== store check: consistent" in p.stdout


def test_the_lab_install_runs_the_lab_and_replays_the_bundled_capture(lab_venv, tmp_path):
    require_root()
    py, bin_ = lab_venv / "bin" / "python", lab_venv / "bin"
    env = _clean_env()
    p = _run([py, "-c", "import scapy.layers.inet; from ledger_client.ethereum import Account; "
                        "import beat_lab.data as d; print(d.data_path('capture', 'r2.pcap')); "
                        "print(d.data_path('capture', 'r2.toml')); "
                        "print(Account.generate().address)"],
             cwd=tmp_path, env=env)
    pcap, toml, address = p.stdout.split()
    assert pcap.startswith(str(lab_venv)) and address.startswith("0x")
    # beatd replay of the bundled capture, from the venv
    p = _run([bin_ / "beatd", "replay", pcap, "--config", toml, "--json"], cwd=tmp_path, env=env)
    summary = json.loads(p.stdout.splitlines()[-1])["summary"]
    assert summary["frames"] == 440 and summary["records"] == 220, summary
    # the namespace lab, from the venv: up (a beatd per router, the venv's), dump, down
    state = tmp_path / "state"
    lab = [bin_ / "beat-lab", "--prefix", PREFIX, "--state-dir", state]
    try:
        p = _run([*lab, "up"], cwd=tmp_path, env=env, timeout=180)
        assert p.stdout.startswith("lab paper up: namespaces "), p.stdout
        assert f"{PREFIX}r1" in _run(["ip", "netns", "list"], cwd=tmp_path).stdout
        with open(state / PREFIX.rstrip("-") / "state.json") as f:
            pids = json.load(f)["daemons"]
        assert len(pids) == 4, pids
        for pid in pids.values():      # the venv's beatd, from site-packages
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert f.read().split(b"\0")[0] == str(py).encode()
        p = _run([*lab, "dump", "r2", "--json"], cwd=tmp_path, env=env)
        assert json.loads(p.stdout.splitlines()[-1])["summary"]["node_id"] == 2
    finally:
        p = _run([*lab, "down"], cwd=tmp_path, env=env, timeout=120, check=False)
    assert p.returncode == 0 and p.stdout.strip() == "lab paper down", (p.stdout, p.stderr)
    assert PREFIX not in _run(["ip", "netns", "list"], cwd=tmp_path).stdout
