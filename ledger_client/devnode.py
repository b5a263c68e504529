"""A local JSON-RPC test chain for labs and tests: ganache 7 from the project's node_modules.

ganache is pinned in ``ledger_client/contracts/package.json`` (``npm ci`` there installs it). This
is a development chain -- one process, no consensus, keys given on the command line -- for labs
and tests only, never for production.

```python
with DevNode(db_path, accounts=[(gov.private_key_hex(), 10**21)]) as node:
    led = EthereumLedger.deploy(node.url, gov, "sha3-256")
    ...
    node.kill()          # an outage: SIGKILL now
    node.start()         # back on the same chain (same db_path, same port, same URL)
```

- ``accounts``: ``[(private_key_hex, balance_wei), ...]`` (an object with ``private_key_hex()``,
  such as ``ethereum.Account``, is accepted for the key); funded at genesis.
- ``port=0``: a free port is picked on the first start and kept for the restarts (the URL does
  not change across ``kill()``/``start()``).
- ``block_time=None``: a block per transaction (``--miner.instamine eager``: the receipt is there
  when ``eth_sendRawTransaction`` returns); else seconds per block (``--miner.blockTime``), a
  PoA-like chain.
- ``db_path``: ganache's ``--database.dbPath``; a restart continues the same chain.
- ``netns``: run it inside that network namespace (``ip netns exec NAME node ...``); the readiness
  probe then runs inside the namespace too.
- ``log_path``: ganache's output (appended across restarts); default ``<db_path>.log``.

Known ganache fault: with several accounts sending at once, ganache 7 now and then never answers an
``eth_estimateGas`` (seen 2-3 times in 90 s with four processes anchoring every second, in eager
and in 0.25 s block-time mode; no other method hung). ``EthereumLedger``'s per-call timeout turns it
into ``Unavailable`` and the batcher retries after its backoff, so such an anchor lands about
``timeout`` (10 s) late; the lab waits on its routers' anchor state (``Lab.wait_anchored``), not on
a fixed delay.

Errors are ``DevNodeError`` with what to do: ganache or node missing, the port in use, ganache
exiting at start or not answering ``eth_chainId`` in time (with the last lines of its log).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

CONTRACTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "contracts")
GANACHE_CLI = os.path.join(CONTRACTS_DIR, "node_modules", "ganache", "dist", "node", "cli.js")


class DevNodeError(RuntimeError):
    """The dev chain could not be started (or stopped) as asked."""


def _key_hex(key):
    if hasattr(key, "private_key_hex"):
        key = key.private_key_hex()
    if isinstance(key, (bytes, bytearray)):
        key = bytes(key).hex()
    key = str(key)
    if not key.startswith("0x"):
        key = "0x" + key
    if len(key) != 66:
        raise ValueError(f"an account's private key must be 32 bytes in hex, got {len(key)-2} "
                         "hex digits")
    int(key, 16)
    return key


_PROBE = r"""
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1], data=json.dumps({"jsonrpc": "2.0", "id": 1,
      "method": "eth_chainId", "params": []}).encode(), headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=float(sys.argv[2])) as r:
        print(int(json.load(r)["result"], 16))
except Exception:
    sys.exit(1)
"""

_FREE_PORT = r"""
import socket, sys
s = socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1]); s.close()
"""

_PORT_FREE = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind((sys.argv[1], int(sys.argv[2])))
except OSError:
    sys.exit(1)
"""


class DevNode:
    """A ganache process on one port and one chain database (kept across stop/kill/start)."""

    PROGRAM = "ganache"

    def __init__(self, db_path, host="127.0.0.1", port=0, accounts=(), block_time=None,
                 netns=None, chain_id=1337, log_path=None):
        self.db_path = os.path.abspath(str(db_path))
        self.host = host
        self.port = int(port)
        self.accounts = [(_key_hex(k), int(bal)) for k, bal in accounts]
        if block_time is not None and not block_time > 0:
            raise ValueError(f"block_time: {block_time!r} must be None (instamine) or > 0")
        self.block_time = block_time
        self.netns = netns
        self.chain_id = int(chain_id)
        self.log_path = os.path.abspath(str(log_path)) if log_path else self.db_path + ".log"
        self._proc = None
        self._log = None

    # ------------------------------------------------------------------ helpers
    def _ns(self, cmd):
        return ["ip", "netns", "exec", self.netns] + cmd if self.netns else cmd

    def _py(self, script, *args, timeout=10):
        """Run a small python snippet (inside the netns if any): (returncode, stdout)."""
        try:
            r = subprocess.run(self._ns([sys.executable, "-c", script] + [str(a) for a in args]),
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return 1, ""
        return r.returncode, r.stdout.strip()

    def _pick_port(self):
        if self.netns:
            rc, out = self._py(_FREE_PORT, self.host)
            if rc != 0 or not out.isdigit():
                raise DevNodeError(f"cannot pick a free port on {self.host} in netns "
                                   f"{self.netns} (does the namespace exist?)")
            return int(out)
        with socket.socket() as s:
            s.bind((self.host, 0))
            return s.getsockname()[1]

    def _port_free(self):
        if self.netns:
            return self._py(_PORT_FREE, self.host, self.port)[0] == 0
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((self.host, self.port))
            except OSError:
                return False
            return True

    def _probe(self, timeout=1.0):
        """eth_chainId answered by the node (an int), or None."""
        if self.netns:
            rc, out = self._py(_PROBE, self.url, timeout, timeout=timeout + 5)
            return int(out) if rc == 0 and out.isdigit() else None
        req = urllib.request.Request(self.url, data=json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode(),
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return int(json.load(r)["result"], 16)
        except (OSError, ValueError, KeyError, urllib.error.URLError):
            return None

    def log_tail(self, lines=20):
        """The last lines of the node's log (for error messages)."""
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:]).rstrip()
        except OSError:
            return ""

    def command(self):
        """The command line start() runs."""
        cmd = ["node", GANACHE_CLI, "--server.host", self.host, "--server.port", str(self.port),
               "--database.dbPath", self.db_path, "--chain.chainId", str(self.chain_id),
               "--logging.quiet"]
        if self.block_time is None:
            cmd += ["--miner.instamine", "eager"]
        else:
            cmd += ["--miner.blockTime", f"{self.block_time:g}"]
        for key, balance in self.accounts:
            cmd += ["--wallet.accounts", f"{key},{balance}"]
        return self._ns(cmd)

    def _check_installed(self):
        if not os.path.exists(GANACHE_CLI):
            raise DevNodeError(f"ganache not found at {GANACHE_CLI}: run npm ci in "
                               f"{CONTRACTS_DIR}")
        if shutil.which("node") is None:
            raise DevNodeError("node (Node.js) is not installed or not on PATH: ganache needs it")

    def _popen_env(self):
        """The environment of the node process (None: ours)."""
        return None

    def _prepare(self):
        """Files the node needs before it starts (none for ganache)."""

    # ------------------------------------------------------------------ API
    @property
    def url(self):
        if not self.port:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self):
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self):
        return self._proc.pid if self.running else None

    def start(self, timeout=60):
        """Start ganache (on the same port and chain database as before, if it ran before) and
        wait until it answers eth_chainId. Returns the URL."""
        if self.running:
            return self.url
        self._check_installed()
        if self.netns and shutil.which("ip") is None:
            raise DevNodeError(f"netns {self.netns}: the ip command (iproute2) is not installed")
        if not self.port:
            self.port = self._pick_port()
        elif not self._port_free():
            raise DevNodeError(f"port {self.port} on {self.host} is in use"
                               + (f" (netns {self.netns})" if self.netns else ""))
        os.makedirs(self.db_path, exist_ok=True)
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        self._prepare()
        self._log = open(self.log_path, "a")
        self._log.write(f"--- devnode start {time.strftime('%Y-%m-%dT%H:%M:%S')}: "
                        f"{self.url} db {self.db_path}\n")
        self._log.flush()
        self._proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True,
                                      env=self._popen_env())
        deadline = time.monotonic() + timeout
        while True:
            rc = self._proc.poll()
            if rc is not None:
                self._close()
                tail = self.log_tail()
                self._proc = None
                if "EADDRINUSE" in tail:
                    raise DevNodeError(f"port {self.port} on {self.host} is in use "
                                       f"({self.PROGRAM}: EADDRINUSE); log {self.log_path}:\n{tail}")
                raise DevNodeError(f"{self.PROGRAM} exited at start (code {rc}); log "
                                   f"{self.log_path}:\n{tail}")
            got = self._probe()
            if got is not None:
                if got != self.chain_id:
                    self.stop()
                    raise DevNodeError(f"the node on {self.url} answers chain id {got}, not "
                                       f"{self.chain_id} (another node on this port?)")
                return self.url
            if time.monotonic() >= deadline:
                tail = self.log_tail()
                self.kill()
                raise DevNodeError(f"{self.PROGRAM} did not answer eth_chainId on {self.url} within "
                                   f"{timeout}s; last lines of {self.log_path}:\n{tail}")
            time.sleep(0.1)

    def _signal(self, sig):
        try:
            os.killpg(self._proc.pid, sig)     # its own session: ip netns exec + node
        except (ProcessLookupError, PermissionError):
            try:
                self._proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def _close(self):
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self, timeout=10):
        """SIGTERM (the node closes its database cleanly), then SIGKILL after ``timeout`` s."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self._proc.wait()
        self._proc = None
        self._close()

    def kill(self):
        """SIGKILL now (an outage); ``start()`` brings it back on the same chain database."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._signal(signal.SIGKILL)
            self._proc.wait()
        self._proc = None
        self._close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def __repr__(self):
        return (f"DevNode({self.url or 'not started'}, db={self.db_path}, "
                f"{'running pid %d' % self.pid if self.running else 'stopped'})")
