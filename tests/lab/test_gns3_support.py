"""What the GNS3 tests share: the separate virtual environment with gns3-server and gns3-gui
(``scripts/gns3-venv``), code run in it, and a real gns3-server 3.x started on 127.0.0.1.

There is no Docker engine on this machine, and GNS3 asks the engine for a Docker node's image and
creates its container as soon as the node is created (``DockerVM.create``: ``GET /version``,
``GET /images/<image>/json``, ``POST /containers/create``). The server started here is therefore
given a stand-in for the engine's API (``DockerEngineStub``): a Unix socket answering those calls
with the image metadata read from our Dockerfiles (ENTRYPOINT, CMD, VOLUME, ENV), recording what
GNS3 asks, and refusing everything else (starting a container above all: nodes cannot start here).
GNS3 only talks to ``/var/run/docker.sock``, so the server runs in a private mount namespace
(``unshare --mount``, root) where ``/run`` is a directory of the test holding the stub's socket;
nothing outside the test sees it. Everything else -- the controller, the compute, the REST API,
authentication, the database, templates, appliances, projects, nodes, links, import -- is the real
server's own code.
"""
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import IN_CI, free_port

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GNS3_VENV = os.environ.get("BEAT_GNS3_VENV") or os.path.join(REPO, ".venv-gns3")
GNS3_PY = os.path.join(GNS3_VENV, "bin", "python")


def _skip_or_fail(why):
    if IN_CI:
        pytest.fail(why)
    pytest.skip(why)


def require_gns3_venv():
    """The GNS3 virtual environment, made by scripts/gns3-venv when missing (PyPI)."""
    p = subprocess.run([os.path.join(REPO, "scripts", "gns3-venv"), GNS3_VENV],
                       capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        _skip_or_fail(f"scripts/gns3-venv could not make {GNS3_VENV}: "
                      f"{(p.stderr or p.stdout).strip()[-800:]}")
    return GNS3_PY


def in_gns3(code, *args, timeout=120):
    """Run ``code`` with the GNS3 venv's Python; its stdout parsed as JSON."""
    p = subprocess.run([GNS3_PY, "-c", code, *args], capture_output=True, text=True,
                       timeout=timeout, cwd=REPO)
    assert p.returncode == 0, f"in the gns3 venv: exit {p.returncode}\n{p.stderr[-3000:]}"
    return json.loads(p.stdout)


# ------------------------------------------------------------------------------ Dockerfiles

def dockerfile_image_config(path):
    """The image config a Dockerfile's last stage declares: Entrypoint, Cmd, Volumes, Env
    (exec-form JSON only, which is all ours use)."""
    text = open(path).read().replace("\\\n", " ")
    stages = text.split("\nFROM ")
    cfg = {"Entrypoint": None, "Cmd": None, "Volumes": {}, "Env": [], "User": ""}
    for line in stages[-1].splitlines():
        line = line.strip()
        word, _, rest = line.partition(" ")
        if word == "ENTRYPOINT":
            cfg["Entrypoint"] = json.loads(rest)
        elif word == "CMD":
            cfg["Cmd"] = json.loads(rest)
        elif word == "VOLUME":
            for v in json.loads(rest):
                cfg["Volumes"][v] = {}
        elif word == "ENV":
            for kv in rest.split():
                cfg["Env"].append(kv)
    return cfg


def test_dockerfile_image_config():
    cfg = dockerfile_image_config(os.path.join(REPO, "gns3", "router", "Dockerfile"))
    assert cfg["Entrypoint"][1] == "/opt/beat/gns3/router/entrypoint.py"
    assert "/var/lib/beatd" in cfg["Volumes"]
    cfg = dockerfile_image_config(os.path.join(REPO, "gns3", "governance", "Dockerfile"))
    assert cfg["Entrypoint"][1] == "/opt/beat/gns3/governance/entrypoint.py"
    assert "/var/lib/beat" in cfg["Volumes"]


# ------------------------------------------------------------------------------ the engine stub

STUB = r'''
import hashlib, http.server, json, os, re, socketserver, sys
sock, log_path, images = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
containers = {}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def _send(self, code, obj=None):
        body = b"" if obj is None else json.dumps(obj).encode()
        self.send_response(code)
        if obj is not None:            # the engine sends 204s without a body or a type
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def _any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n) or b"null") if n else None
        with open(log_path, "a") as f:
            f.write(json.dumps({"method": self.command, "path": self.path, "body": body}) + "\n")
        p = re.sub(r"^/v[0-9.]+", "", self.path.split("?")[0])
        if p == "/version":
            return self._send(200, {"ApiVersion": "1.44", "Version": "25.0.0",
                                    "MinAPIVersion": "1.24"})
        m = re.match(r"^/images/(.+)/json$", p)
        if m and self.command == "GET":
            if m.group(1) in images:
                return self._send(200, {"Id": "sha256:" + "0" * 64, "Config": images[m.group(1)]})
            return self._send(404, {"message": f"No such image: {m.group(1)}"})
        if p == "/containers/create" and self.command == "POST":
            cid = hashlib.sha256(self.path.encode() + os.urandom(8)).hexdigest()
            containers[cid] = body
            return self._send(201, {"Id": cid, "Warnings": []})
        m = re.match(r"^/containers/([0-9a-f]+)/json$", p)
        if m and m.group(1) in containers:
            return self._send(200, {"Id": m.group(1), "State": {"Status": "created",
                                    "Running": False, "Paused": False, "Pid": 0}})
        m = re.match(r"^/containers/([0-9a-f]+)$", p)
        if m and self.command == "DELETE":
            containers.pop(m.group(1), None)
            return self._send(204)
        return self._send(501, {"message": f"no Docker engine on this machine (a test stand-in "
                                           f"answers): {self.command} {p} is not available"})
    do_GET = do_POST = do_DELETE = do_PUT = _any
class S(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    def get_request(self):
        r, _ = super().get_request()
        return r, ("stub", 0)
if os.path.exists(sock):
    os.unlink(sock)
S(sock, H).serve_forever()
'''


def _stop(proc, timeout=15):
    if proc is None or proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            continue


class GNS3Server:
    """A real gns3-server on 127.0.0.1 (a free port, its own config, database, projects,
    appliances and HOME under ``root``), with the Docker engine stand-in; ``stop()`` ends both."""

    def __init__(self, root, appliances=()):
        self.root = str(root)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.password = secrets.token_hex(8)
        self.run_dir = os.path.join(self.root, "run")
        self.docker_log = os.path.join(self.root, "docker-requests.jsonl")
        self.log_path = os.path.join(self.root, "gns3server.log")
        for d in ("home", "projects", "images", "appliances", "symbols", "configs", "run"):
            os.makedirs(os.path.join(self.root, d), exist_ok=True)
        for a in appliances:
            shutil.copy(a, os.path.join(self.root, "appliances"))
        conf = os.path.join(self.root, "gns3_server.conf")
        with open(conf, "w") as f:
            f.write(f"""[Server]
host = 127.0.0.1
port = {self.port}
projects_path = {self.root}/projects
images_path = {self.root}/images
appliances_path = {self.root}/appliances
symbols_path = {self.root}/symbols
configs_path = {self.root}/configs
report_errors = False
install_builtin_appliances = False
enable_builtin_templates = False
auto_discover_images = False
compute_password = {secrets.token_hex(8)}
[Controller]
jwt_secret_key = {secrets.token_hex(16)}
default_admin_username = admin
default_admin_password = {self.password}
""")
        self.conf = conf
        self.stub = self.proc = None

    def start(self, timeout=120):
        from beat_lab import gns3

        images = {gns3.ROUTER_IMAGE: dockerfile_image_config(
                      os.path.join(REPO, "gns3", "router", "Dockerfile")),
                  gns3.GOVERNANCE_IMAGE: dockerfile_image_config(
                      os.path.join(REPO, "gns3", "governance", "Dockerfile"))}
        sock = os.path.join(self.run_dir, "docker.sock")
        self.stub = subprocess.Popen([sys.executable, "-c", STUB, sock, self.docker_log,
                                      json.dumps(images)], start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            if self.stub.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Docker engine stand-in did not start: "
                                   f"{self.stub.stderr.read().decode()[-1000:]}")
            time.sleep(0.05)
        gns3server = os.path.join(GNS3_VENV, "bin", "gns3server")
        inner = (f"mount --bind {self.run_dir} /run && exec {gns3server} --config {self.conf} "
                 f"--host 127.0.0.1 --port {self.port} --logfile {self.log_path}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("GNS3")}
        env["HOME"] = os.path.join(self.root, "home")
        self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh",
                                      "-c", inner], env=env, start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gns3server exited ({self.proc.returncode}): "
                                   f"{self.proc.stderr.read().decode()[-2000:]}\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/v3/version", timeout=2) as r:
                    if r.status == 200:
                        self.version = json.loads(r.read())["version"]
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"gns3server did not answer on {self.url} within {timeout} s\n"
                           f"{self.log()}")

    def log(self, n=40):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no log)"

    def docker_requests(self):
        try:
            with open(self.docker_log) as f:
                return [json.loads(l) for l in f if l.strip()]
        except OSError:
            return []

    def stop(self):
        _stop(self.proc)
        _stop(self.stub)


@contextlib.contextmanager
def gns3_server(tmp_path, appliances=()):
    """A started GNS3Server, stopped at the end. Needs root (a private mount namespace for the
    engine stand-in's socket): skipped with the reason outside CI, a failure under CI."""
    if os.geteuid() != 0:
        _skip_or_fail("the GNS3 server test needs root: the Docker engine stand-in's socket is "
                      "bound at /run inside a private mount namespace (unshare --mount)")
    if shutil.which("unshare") is None:
        _skip_or_fail("unshare (util-linux) is missing")
    require_gns3_venv()
    srv = GNS3Server(tmp_path, appliances)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
