"""A ledger network: EthereumJS client nodes sealing a proof-of-authority (Clique) chain.

Each node is one process (``PoaNode``: ``node ledger_client/contracts/poa_node.mjs``, the pinned
``@ethereumjs/client`` with the changes that launcher lists), with its own chain database, devp2p
key (so its enode is known before it starts), JSON-RPC port and log, optionally inside a network
namespace; ``start()``/``stop()``/``kill()``/``restart()`` like ``devnode.DevNode`` (the same
chain database across restarts; ``kill()`` is SIGKILL: the node's transaction pool is lost).

``PoaNetwork`` writes the genesis (geth format: Clique with the sealers' addresses in
``extraData``, the funded accounts in ``alloc``) and the nodes: one per ``NodeSpec``; a sealer
signs blocks with its account's key, every node dials the ``peers`` it is given (static peers:
redialled while down, never banned). docs/ledger.md, "A network of ledger nodes", says which
configuration holds a chain with several sealers and what was measured.

```python
net = PoaNetwork(base_dir, [NodeSpec("gov", "127.0.0.1", peers=["r1", "r2"]),
                            NodeSpec("r1", "127.0.0.1", sealer=acct1, peers=["gov"]),
                            NodeSpec("r2", "127.0.0.1", sealer=acct2, peers=["gov"])],
                 funded=[(gov, 10**21)], period=1)
net.start()                      # every node; waits until every node answers and the chain grows
net.node("r1").kill(); net.node("r1").start()
net.stop()
```
"""
import dataclasses
import json
import os
import shutil
import time

from .devnode import CONTRACTS_DIR, DevNode, DevNodeError, _key_hex

POA_LAUNCHER = os.path.join(CONTRACTS_DIR, "poa_node.mjs")
EJS_CLI = os.path.join(CONTRACTS_DIR, "node_modules", "@ethereumjs", "client", "dist", "esm",
                       "bin", "cli.js")
CHAIN_NAME = "beat-poa"          # the genesis file's name: the client's chain name (its data dir)
DEFAULT_CHAIN_ID = 4242
DEFAULT_PERIOD = 1               # Clique's block period, whole seconds
DEFAULT_RPC_PORT = 8545
DEFAULT_P2P_PORT = 30303
# what the client logs when a block its chain database should hold is not there
DAMAGE_MARKERS = ("not found in DB", "Missing node in DB")


def _address(account):
    """An Account, 20 bytes or "0x..." -> lower-case hex address without 0x."""
    a = getattr(account, "address", account)
    if isinstance(a, (bytes, bytearray)):
        a = bytes(a).hex()
    a = str(a).lower()
    a = a[2:] if a.startswith("0x") else a
    if len(a) != 40:
        raise ValueError(f"{account!r}: not an Ethereum address")
    int(a, 16)
    return a


def genesis(sealers, funded, chain_id=DEFAULT_CHAIN_ID, period=DEFAULT_PERIOD, epoch=30000,
            gas_limit=30_000_000):
    """A geth-format genesis of a Clique chain (London rules, the contract's "paris" EVM runs on
    it): ``sealers`` (accounts or addresses) in ``extraData``, ``funded`` [(account, wei)] in
    ``alloc``."""
    if not sealers:
        raise ValueError("a proof-of-authority chain needs at least one sealer")
    if int(period) != period or period < 1:
        raise ValueError(f"period: {period!r} must be a whole number of seconds >= 1 (Clique)")
    signers = sorted(_address(s) for s in sealers)
    if len(set(signers)) != len(signers):
        raise ValueError("a sealer is listed twice")
    forks = ["homestead", "eip150", "eip155", "eip158", "byzantium", "constantinople",
             "petersburg", "istanbul", "berlin", "london"]
    config = {"chainId": int(chain_id), **{f"{f}Block": 0 for f in forks},
              "clique": {"period": int(period), "epoch": int(epoch)}}
    return {
        "config": config, "nonce": "0x0", "timestamp": "0x0",
        "extraData": "0x" + "00" * 32 + "".join(signers) + "00" * 65,
        "gasLimit": hex(gas_limit), "difficulty": "0x1", "mixHash": "0x" + "00" * 32,
        "coinbase": "0x" + "00" * 20, "number": "0x0", "gasUsed": "0x0",
        "parentHash": "0x" + "00" * 32, "baseFeePerGas": hex(10 ** 9),
        "alloc": {_address(a): {"balance": hex(int(wei))} for a, wei in funded},
    }


def node_key_enode_id(node_key_hex):
    """The devp2p node id (64-byte public key, hex) of a node key."""
    from eth_keys import keys
    return keys.PrivateKey(bytes.fromhex(node_key_hex[2:] if node_key_hex.startswith("0x")
                                         else node_key_hex)).public_key.to_hex()[2:]


class PoaNode(DevNode):
    """One EthereumJS client node (see the module doc). ``db_path``: its data directory."""

    PROGRAM = "the EthereumJS client"

    def __init__(self, db_path, genesis_path, node_key, host="127.0.0.1", port=0,
                 p2p_port=DEFAULT_P2P_PORT, sealer_key=None, peers=(), netns=None,
                 chain_id=DEFAULT_CHAIN_ID, log_path=None, seal_peers=1, settle_ms=3000,
                 out_of_turn_min_ms=500, name=None):
        super().__init__(db_path, host=host, port=port, netns=netns, chain_id=chain_id,
                         log_path=log_path)
        self.genesis_path = os.path.abspath(str(genesis_path))
        self.node_key = _key_hex(node_key)[2:]
        self.p2p_port = int(p2p_port)
        self.sealer_key = _key_hex(sealer_key)[2:] if sealer_key is not None else None
        self.peers = list(peers)
        self.seal_peers = int(seal_peers)
        self.settle_ms = int(settle_ms)
        self.out_of_turn_min_ms = int(out_of_turn_min_ms)
        self.name = name or os.path.basename(self.db_path)
        self.resyncs = 0          # times the node was started again from a fresh database
        self.fresh = False        # this run started from a fresh database (resync)

    @property
    def enode(self):
        """This node's enode URL (its devp2p id at ``host:p2p_port``)."""
        return f"enode://{node_key_enode_id(self.node_key)}@{self.host}:{self.p2p_port}"

    @property
    def sealer(self):
        return self.sealer_key is not None

    @property
    def key_file(self):
        return os.path.join(self.db_path, "sealer.key")

    def _check_installed(self):
        if not os.path.exists(EJS_CLI):
            raise DevNodeError(f"the EthereumJS client is not installed ({EJS_CLI}): run npm ci "
                               f"in {CONTRACTS_DIR}")
        if shutil.which("node") is None:
            raise DevNodeError("node (Node.js) is not installed or not on PATH: the EthereumJS "
                               "client needs it")

    def _prepare(self):
        if self.sealer_key is not None:
            fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.sealer_key)

    def _popen_env(self):
        env = dict(os.environ)
        env.update({"BEAT_POA_NODEKEY": self.node_key,
                    "BEAT_POA_NODEID": node_key_enode_id(self.node_key),
                    "BEAT_POA_LISTEN": self.host,
                    "BEAT_POA_PEERS": ",".join(self.peers),
                    "BEAT_POA_SEAL_PEERS": str(self.seal_peers),
                    "BEAT_POA_SETTLE_MS": str(self.settle_ms),
                    "BEAT_POA_OUT_OF_TURN_MIN_MS": str(self.out_of_turn_min_ms)})
        return env

    def command(self):
        cmd = ["node", POA_LAUNCHER, "--gethGenesis", self.genesis_path,
               "--dataDir", self.db_path, "--port", str(self.p2p_port),
               "--rpc", "--rpcAddr", self.host, "--rpcPort", str(self.port),
               "--discDns", "false", "--discV4", "false", "--no-logFile",
               "--logLevel", "info"]
        if self.sealer_key is not None:
            cmd += ["--mine", "--unlock", self.key_file]
        return self._ns(cmd)

    # -- reads (inside the namespace when there is one) -------------------------------------
    def rpc(self, method, params=(), timeout=5.0):
        """One JSON-RPC call to this node: its result, or None if it does not answer."""
        script = r"""
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1], data=json.dumps({"jsonrpc": "2.0", "id": 1,
      "method": sys.argv[2], "params": json.loads(sys.argv[3])}).encode(),
      headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=float(sys.argv[4])) as r:
        print(json.dumps(json.load(r).get("result")))
except Exception:
    sys.exit(1)
"""
        if self.url is None:
            return None
        if self.netns:
            rc, out = self._py(script, self.url, method, json.dumps(list(params)), timeout,
                               timeout=timeout + 5)
            return json.loads(out) if rc == 0 and out else None
        import urllib.request
        req = urllib.request.Request(self.url, data=json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode(),
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.load(r).get("result")
        except (OSError, ValueError):
            return None

    def head(self):
        """(number, hash) of this node's head block, or None."""
        b = self.rpc("eth_getBlockByNumber", ["latest", False])
        return (int(b["number"], 16), b["hash"]) if b else None

    def block_hash(self, number):
        b = self.rpc("eth_getBlockByNumber", [hex(number), False])
        return b["hash"] if b else None

    def peer_count(self):
        n = self.rpc("net_peerCount")
        return int(n, 16) if n else 0

    def sealed_blocks(self):
        """How many blocks this node sealed (its log's "Sealed block" lines, all runs)."""
        try:
            with open(self.log_path, errors="replace") as f:
                return sum(1 for line in f if "Miner: Sealed block" in line)
        except OSError:
            return 0

    def reorganisations(self):
        """The log lines where this node moved to another branch."""
        try:
            with open(self.log_path, errors="replace") as f:
                return [line.rstrip() for line in f if "BEAT: reorganised" in line]
        except OSError:
            return []

    def restart(self, timeout=60):
        self.stop()
        return self.start(timeout=timeout)

    # -- a damaged chain database ----------------------------------------------------------
    @property
    def chain_dir(self):
        """The client's databases (chain, state, meta): ``<db_path>/beat-poa``."""
        return os.path.join(self.db_path, CHAIN_NAME)

    def _this_run(self):
        """The log lines since the last start (the launcher's ``--- devnode start`` line)."""
        try:
            with open(self.log_path, errors="replace") as f:
                lines = f.readlines()
        except OSError:
            return []
        for i in range(len(lines) - 1, -1, -1):
            if lines[i].startswith("--- devnode start"):
                return lines[i + 1:]
        return lines

    def damage_seen(self):
        """The log lines of this run that show a damaged chain database: the node could not
        store blocks (a branch or a new block) because a block its database should hold is
        missing ("... not found in DB"), as after a SIGKILL that cut a write short."""
        return [line.rstrip() for line in self._this_run()
                if "BEAT:" in line and ("not stored" in line or "fetching the branch" in line)
                and any(m in line for m in DAMAGE_MARKERS)]

    def resync(self, timeout=90, why="its chain database is damaged"):
        """What an operator does with a node whose chain database is damaged: stop it, move the
        database aside (``<db_path>/beat-poa.damaged-<time>``, kept for a look, never read
        again) and start it from the genesis with the same node key (the same enode: its peers
        know it) and the same sealer key; it then syncs the chain from its peers (a sealer seals
        again once it has caught up: the launcher's gate). Returns the URL."""
        self.stop()
        moved = None
        if os.path.isdir(self.chain_dir):
            moved = f"{self.chain_dir}.damaged-{time.strftime('%Y%m%dT%H%M%S')}-{self.resyncs}"
            os.rename(self.chain_dir, moved)
        self.resyncs += 1
        self.fresh = True
        try:
            with open(self.log_path, "a") as f:
                f.write(f"--- beat: node {self.name}: {why}; chain database moved to {moved}; "
                        f"syncing again from the peers with the same keys\n")
        except OSError:
            pass
        return DevNode.start(self, timeout=timeout)

    def start(self, timeout=60):
        """Start the node on its chain database; if the client exits at start while a database
        is there (it could not open it), ``resync`` (once) and start from its peers instead.
        Returns the URL."""
        if not self.running:
            self.fresh = False            # set by resync: this start began a fresh database
        try:
            return super().start(timeout=timeout)
        except DevNodeError as exc:
            if "exited at start" not in str(exc) or not os.path.isdir(self.chain_dir) \
                    or not self.peers:
                raise
            return self.resync(timeout=timeout, why=f"the client exited at start ({exc})"
                               .replace("\n", " ")[:400])

    def catch_up(self, target, timeout=90, stall_s=20.0):
        """Wait until this node's head is at ``target`` or more. When the node shows a damaged
        chain database (``damage_seen``) while behind, or its head has not moved for
        ``stall_s`` while behind, ``resync`` it (once per start; never a node that started from
        a fresh database already) and wait again. DevNodeError after ``timeout``. Returns the
        head (number, hash)."""
        deadline = time.monotonic() + timeout
        resynced = self.fresh             # a fresh database already: nothing more to move aside
        last, moved_at = None, time.monotonic()
        while True:
            if not self.running:
                raise DevNodeError(f"node {self.name} exited while catching up; last lines of "
                                   f"{self.log_path}:\n{self.log_tail()}")
            h = self.head()
            if h is not None and h[0] >= target:
                return h
            now = time.monotonic()
            if h != last:
                last, moved_at = h, now
            if not resynced and self.peers:
                damage = self.damage_seen()
                if damage or now - moved_at >= stall_s:
                    why = (f"its chain database is damaged ({damage[-1][-200:]})" if damage
                           else f"its head {h} stayed behind block {target} for {stall_s:g}s")
                    self.resync(timeout=max(10.0, deadline - now), why=why)
                    resynced = True
                    last, moved_at = None, time.monotonic()
                    continue
            if now >= deadline:
                raise DevNodeError(f"node {self.name} did not catch up to block {target} within "
                                   f"{timeout}s (head {h}); last lines of {self.log_path}:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.25)


@dataclasses.dataclass
class NodeSpec:
    """One node of a ``PoaNetwork``: its name, the address it listens on (JSON-RPC and devp2p),
    its sealer account (None: a follower), the names of the nodes it dials, its namespace."""
    name: str
    host: str = "127.0.0.1"
    sealer: object = None
    peers: tuple = ()
    netns: str = None
    rpc_port: int = 0
    p2p_port: int = 0


class PoaNetwork:
    """The nodes of one proof-of-authority chain (see the module doc). Files under ``base_dir``:
    ``beat-poa.json`` (the genesis), ``<name>/`` (data, keys) and ``<name>.log``."""

    def __init__(self, base_dir, specs, funded=(), period=DEFAULT_PERIOD,
                 chain_id=DEFAULT_CHAIN_ID, out_of_turn_min_ms=500, settle_ms=3000):
        self.base_dir = os.path.abspath(str(base_dir))
        self.specs = list(specs)
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise ValueError(f"node names must differ: {names}")
        sealers = [s.sealer for s in self.specs if s.sealer is not None]
        self.period = period
        self.chain_id = chain_id
        os.makedirs(self.base_dir, exist_ok=True)
        self.genesis_path = os.path.join(self.base_dir, f"{CHAIN_NAME}.json")
        if not os.path.exists(self.genesis_path):     # a restart of the lab keeps its chain
            doc = genesis(sealers, list(funded), chain_id=chain_id, period=period)
            with open(self.genesis_path, "w") as f:
                json.dump(doc, f, indent=1)
        ports = self._ports()
        keys = {s.name: self._node_key(s.name) for s in self.specs}
        enodes = {s.name: f"enode://{node_key_enode_id(keys[s.name])}@{s.host}:{ports[s.name][1]}"
                  for s in self.specs}
        self.nodes = {}
        for s in self.specs:
            unknown = [p for p in s.peers if p not in enodes]
            if unknown:
                raise ValueError(f"node {s.name}: unknown peers {unknown}")
            sealer_key = None
            if s.sealer is not None:
                sealer_key = s.sealer.private_key_hex() if hasattr(s.sealer, "private_key_hex") \
                    else s.sealer
            self.nodes[s.name] = PoaNode(
                os.path.join(self.base_dir, s.name), self.genesis_path, keys[s.name],
                host=s.host, port=ports[s.name][0], p2p_port=ports[s.name][1],
                sealer_key=sealer_key, peers=[enodes[p] for p in s.peers], netns=s.netns,
                chain_id=chain_id, log_path=os.path.join(self.base_dir, f"{s.name}.log"),
                seal_peers=1 if s.peers else 0, settle_ms=settle_ms,
                out_of_turn_min_ms=out_of_turn_min_ms, name=s.name)

    def _ports(self):
        """{name: (rpc_port, p2p_port)}: as given, else free ones (kept in ``ports.json`` so that
        a restarted network keeps its enodes)."""
        path = os.path.join(self.base_dir, "ports.json")
        try:
            with open(path) as f:
                saved = json.load(f)
        except (OSError, ValueError):
            saved = {}
        out = {}
        for s in self.specs:
            rpc, p2p = saved.get(s.name, (0, 0))
            rpc = s.rpc_port or rpc
            p2p = s.p2p_port or p2p
            if not rpc or not p2p:
                probe = DevNode(os.path.join(self.base_dir, s.name), host=s.host, netns=s.netns)
                rpc = rpc or probe._pick_port()
                p2p = p2p or probe._pick_port()
                while p2p == rpc or p2p in [x for pair in out.values() for x in pair]:
                    p2p = probe._pick_port()
            out[s.name] = (int(rpc), int(p2p))
        with open(path, "w") as f:
            json.dump(out, f)
        return out

    def _node_key(self, name):
        path = os.path.join(self.base_dir, name, "node.key")
        if os.path.exists(path):
            with open(path) as f:
                return f.read().strip()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        key = os.urandom(32).hex()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        return key

    def node(self, name):
        return self.nodes[name]

    def __iter__(self):
        return iter(self.nodes.values())

    def start(self, timeout=90, min_height=2):
        """Start every node (in parallel), wait until each answers and every node's head is at
        ``min_height`` or more (the sealers found each other and seal). Returns self."""
        import concurrent.futures
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            for f in [pool.submit(n.start, timeout) for n in self.nodes.values()]:
                f.result()
        if min_height:
            self.wait_height(min_height, timeout=timeout)
        return self

    def wait_height(self, height, timeout=60, nodes=None):
        """Wait until every (running) node's head is at ``height`` or more; DevNodeError with the
        heads otherwise."""
        nodes = [self.nodes[n] for n in nodes] if nodes else list(self.nodes.values())
        deadline = time.monotonic() + timeout
        while True:
            heads = {n.name: n.head() for n in nodes if n.running}
            if heads and all(h is not None and h[0] >= height for h in heads.values()):
                return heads
            if time.monotonic() >= deadline:
                raise DevNodeError(f"the ledger network did not reach block {height} within "
                                   f"{timeout}s: heads {heads}; logs in {self.base_dir}")
            time.sleep(0.25)

    def start_node(self, name, timeout=90, stall_s=20.0):
        """Start (or restart) one node and wait until it has caught up: its head at least where
        the other running nodes' heads were when it started (its JSON-RPC answers before that,
        from a stale state). A node whose chain database turns out damaged (after a SIGKILL:
        it cannot store the blocks it fetches, or never moves) is started again from a fresh
        database with its keys and syncs from its peers (``PoaNode.catch_up``)."""
        node = self.nodes[name]
        others = [n for n in self.nodes.values() if n is not node and n.running]
        target = max([h[0] for h in (n.head() for n in others) if h] or [0])
        t0 = time.monotonic()
        node.start(timeout=timeout)
        node.catch_up(target, timeout=max(10.0, timeout - (time.monotonic() - t0)),
                      stall_s=stall_s)
        return node

    def heads(self):
        return {n.name: n.head() for n in self.nodes.values() if n.running}

    def agree(self, depth=2):
        """True when every running node has the same block at (lowest head - depth)."""
        heads = self.heads()
        if not heads or any(h is None for h in heads.values()):
            return False
        number = max(0, min(h[0] for h in heads.values()) - depth)
        return len({n.block_hash(number) for n in self.nodes.values() if n.running}) == 1

    def stop(self):
        for n in self.nodes.values():
            n.stop()

    def kill(self):
        for n in self.nodes.values():
            n.kill()

    def pids(self):
        return {n.name: n.pid for n in self.nodes.values() if n.running}

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
