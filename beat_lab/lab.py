"""The lab's life cycle: up (namespaces + one beatd per router), demo, dump, down.

State lives under ``<state_root>/<lab key>/`` (default ``/run/beat-lab/beat/``): ``state.json``
(prefix, topology, daemon pids), and per router ``<router>/beatd.toml``, ``store/``,
``control.sock``, ``beatd.log``. ``up`` first clears what a crashed run left (namespaces of this
prefix and topology, daemons recorded in the state file), so it can always be run again.

Ledger (``ledger="local"``, the default): ``up`` also makes the committee's keys (three member
organisations by default, ``members/m1.ed25519`` and ``m1.eth``, ...; k = 2), one key per operator
(the topology's ``owner``, default ``operator-<router>``: ``operators/<owner>.ed25519``) and the
tenant's (``tenant.ed25519``), creates a ``local`` ledger (``ledger.mdb``) with the committee and
the operators' and tenant's balances, a device key per router (``<router>/keys/device.ed25519``, as
``beatd keygen``); member 1 proposes and member 2 approves every router as a node with its owner
and operator, every router-router link of the topology and the SLA (price, penalty); each
operator deposits for its routers (``committee.py``); each beatd gets a ``[ledger]`` section with
a short anchor period (``LAB_ANCHOR_PERIOD_S``). The demo's dispute goes through the committee
(``_demo_dispute``). ``ledger="none"`` leaves the ledger out. Whatever the
ledger, the governance's configuration (``governance.toml``) lists the same links (``[[links]]``).

``ledger="ethereum"``: a proof-of-authority network of EthereumJS client nodes (``chain.LabChain``,
``ledger_client.poa_network``): one node per router in the router's namespace, on its management
address (its operator's node: it seals with the operator's account), and one per committee member
in the namespace ``<prefix>ledger`` (member 1's, the governance's, at ``http://<ledger
address>:8545``), every node reached over the management links only (``Net.create_management``: a
separate 10.N.0.0/16 that carries no tenant traffic). ``up`` makes the deployer's account
(``governance.eth``), the committee's, operators' and tenant's keys as on local, and, per router,
``<router>/keys/device.ed25519`` and ``device.eth`` (as ``beatd keygen --ethereum``), funds the
deployer and the routers at genesis, deploys the Beat contract from the governance's node with the
committee, funds the members, operators and tenant from the deployer, registers through the
committee every router (its owner, Ed25519 key, account and operator's account), every
router-router link and the SLA, the operators' deposits (wei), and gives each beatd ``[ledger]
backend = "ethereum"`` with its own node's URL and ``confirmations`` (an anchor counts 2 blocks
deep). A member's ``beatctl`` (``beatctl_argv(key=...)``) talks to that member's node. The nodes'
databases and logs are in the state dir (``chain/``); the state file records the URLs, the
contract and the nodes' pids; ``down`` stops the nodes and deletes the namespaces. From the host,
the governance's node is reached through the ledger namespace:
``ip netns exec <prefix>ledger beatctl --ledger ethereum:URL#CONTRACT anchors``.
"""
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from beat_common.procs import pid_alive as _pid_alive
from beat_common.tomlfile import dumps

from . import committee as committee_mod
from .committee import DEFAULT_K, DEFAULT_MEMBERS, MONEY, Parties
from .data import topology_path
from .netns import IP, Net, NetError, link_stats, list_namespaces
from .topology import load as load_topology
from . import traffic

__all__ = ["Lab", "LabError", "DEFAULT_TOPOLOGY", "STATE_ROOT"]

# where beat_lab, beatd, governance, ... are imported from (a checkout, or site-packages): the
# processes the lab starts (beatd, beatctl) run from there, with it first on their PYTHONPATH
IMPORT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TOPOLOGY = topology_path()
STATE_ROOT = os.environ.get("BEAT_LAB_STATE", "/run/beat-lab")
LEDGERS = ("local", "none", "ethereum")
LAB_ANCHOR_PERIOD_S = 1.0
LAB_CHAIN_PORT = 8545               # the governance's ledger node (chain.RPC_PORT)
LAB_SLA_ID = 1
LAB_GRPC_PORT = 9478                # each router's Interrogation service, on its management link
LAB_LOSS_BUDGET_PPM = 10_000        # the lab SLA tolerates 1 % loss
LAB_MAX_DELAY_US = 20_000
RECORDS_IN_STORE_S = 0.5            # a packet's record is committed well within this (wait_anchored)
ETH = 10 ** 18


class LabError(Exception):
    """Something the lab cannot do; the message says what and where to look."""


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Lab:
    def __init__(self, topology=None, prefix="beat-", state_root=None, python=None,
                 ring_size="16MiB", ledger="local", committee=(DEFAULT_MEMBERS, DEFAULT_K),
                 chain_sealers="one"):
        """``committee``: (n, k), the lab committee's members and threshold (``up`` makes their
        keys; a running lab keeps the ones it was brought up with). ``chain_sealers`` (ledger
        ``ethereum``): "operators" (every operator's node seals) or "one" (only the
        governance's node seals, the others follow): ``chain.LabChain``."""
        if ledger not in LEDGERS:
            raise LabError(f"ledger: {ledger!r} is not one of {', '.join(LEDGERS)}")
        n, k = committee
        if not 1 <= k <= n:
            raise LabError(f"committee: k = {k} is not in 1..n = {n} (the members)")
        self.ledger = ledger
        self.committee_n, self.committee_k = n, k
        self.topology_path = topology_path(topology)
        self.topo = load_topology(self.topology_path)
        self.net = Net(self.topo, prefix)
        self.prefix = prefix
        self.state_dir = os.path.join(state_root or STATE_ROOT, prefix.rstrip("-") or "lab")
        self.python = python or sys.executable
        self.ring_size = ring_size
        self._procs = {}
        self._state_lock = threading.RLock()   # the state file: threads restart daemons at once
        self._chain_net = None            # ledger "ethereum": the running PoaNetwork, if ours
        from .chain import CONFIRMATIONS, SEALERS
        if chain_sealers not in SEALERS:
            raise LabError(f"chain_sealers: {chain_sealers!r} is not one of {', '.join(SEALERS)}")
        self.chain_sealers = chain_sealers
        self.chain_confirmations = CONFIRMATIONS
        # TEST ONLY: routers whose beatd runs with --testing-allow-inject (misbehaviour scenarios)
        self.testing_inject = set()
        # TEST ONLY: {router: [SPEC, ...]}: its beatd runs with --testing-lie SPEC ... (it lies in
        # its own records: beatd/testing_lies.py); applied at the daemon's (re)start
        self.testing_lies = {}
        # {router: ring size}: that router's store.ring_size instead of ``ring_size`` (written
        # into its config by write_configs / restart_daemon)
        self.ring_sizes = {}

    # ------------------------------------------------------------------ paths and state
    @property
    def state_file(self):
        return os.path.join(self.state_dir, "state.json")

    def router_dir(self, router):
        return os.path.join(self.state_dir, router)

    def config_path(self, router):
        return os.path.join(self.router_dir(router), "beatd.toml")

    def control_socket(self, router):
        return os.path.join(self.router_dir(router), "control.sock")

    def log_path(self, router):
        return os.path.join(self.router_dir(router), "beatd.log")

    @property
    def ledger_path(self):
        """The lab's ``local`` ledger (LMDB file)."""
        return os.path.join(self.state_dir, "ledger.mdb")

    @property
    def pki_dir(self):
        """The lab's PKI: the governance CA, a device certificate per router, the governance's."""
        return os.path.join(self.state_dir, "pki")

    @property
    def governance_config_path(self):
        """``beatctl interrogate --config``: the governance's TLS files, every router's
        endpoint and every router-router link (``[[links]]``; written by ``up``)."""
        return os.path.join(self.state_dir, "governance.toml")

    def grpc_endpoint(self, router):
        """``host:port`` of ``router``'s Interrogation service (its management address)."""
        for name, _lif, _laddr, raddr, _net in self.net.management_links():
            if name == router:
                return f"{raddr}:{LAB_GRPC_PORT}"
        raise LabError(f"{router}: not a router of the lab")

    def setup_pki(self):
        """A lab CA (``beat-lab certs``), each router's device certificate for its management
        address, the governance's client certificate, and the governance's config file."""
        from . import ca as certs

        ca = os.path.join(self.pki_dir, "ca")
        certs.make_ca(ca, common_name=f"BEAT lab CA ({self.prefix})", force=True)
        for r in self.topo.routers:
            host = self.grpc_endpoint(r.name).rsplit(":", 1)[0]
            certs.make_device(ca, self.router_dir(r.name) + "/tls", r.node_id, ips=[host],
                              dns=[r.name], force=True)
        certs.make_governance(ca, os.path.join(self.pki_dir, "governance"), force=True)
        gov = os.path.join(self.pki_dir, "governance")
        doc = {
            "interrogation": {"ca": os.path.join(ca, "ca.crt"),
                              "cert": os.path.join(gov, "governance.crt"),
                              "key": os.path.join(gov, "governance.key"),
                              "retry_s": 5.0},      # a lab router that does not answer: not judged
            "endpoints": [{"node_id": r.node_id, "address": self.grpc_endpoint(r.name),
                           "name": r.name} for r in self.topo.routers],
            # the adjacency, as on the ledger: the governance's own, never the devices' claims
            "links": [{"a": a, "b": b} for a, b in self.topo.router_link_ids()],
        }
        with open(self.governance_config_path, "w") as f:
            f.write(dumps(doc, header=f"written by `beat-lab up` ({self.topology_path})"))

    @property
    def parties(self):
        """The key files of the committee's members, the operators and the tenant."""
        return Parties(self.state_dir, self.committee_n)

    @property
    def money(self):
        """The lab's amounts (balances, deposit, price, penalty) in the ledger's unit."""
        return MONEY["ethereum" if self.ledger == "ethereum" else "local"]

    def member_key_path(self, i=1):
        """Member ``i``'s key file for the lab's ledger (Ed25519 on local, .eth on ethereum)."""
        if not 1 <= i <= self.committee_n:
            raise LabError(f"member {i}: the lab's committee has members 1..{self.committee_n}")
        return self.parties.member(i, ethereum=self.ledger == "ethereum")

    @property
    def tenant_key_path(self):
        return self.parties.tenant(ethereum=self.ledger == "ethereum")

    def operator_key_path(self, router):
        """The key file of ``router``'s operator (its topology owner)."""
        return self.parties.operator(self.topo.node(router).owner,
                                     ethereum=self.ledger == "ethereum")

    @property
    def governance_key_path(self):
        """Member 1's Ed25519 key (the committee member who interrogates first)."""
        return self.parties.member(1)

    def device_key_path(self, router):
        return os.path.join(self.router_dir(router), "keys", "device.ed25519")

    def device_eth_path(self, router):
        return os.path.join(self.router_dir(router), "keys", "device.eth")

    @property
    def governance_eth_path(self):
        return os.path.join(self.state_dir, "governance.eth")

    @property
    def chain_db(self):
        return os.path.join(self.state_dir, "chain")

    @property
    def chain_log(self):
        """The governance's (member 1's) ledger node's log; every node's is beside it."""
        return os.path.join(self.chain_db, "member1.log")

    @property
    def chain_url(self):
        """The lab chain's JSON-RPC URL (reachable from the routers and the ledger namespace)."""
        st = self._read_state().get("ethereum", {})
        return st.get("url") or f"http://{self.net.ledger_address()}:{LAB_CHAIN_PORT}"

    @property
    def contract(self):
        """The Beat contract's address on the lab chain (None before ``up``)."""
        return self._read_state().get("ethereum", {}).get("contract")

    @property
    def ledger_spec(self):
        """The ``beatctl --ledger`` value of the lab's ledger (None without one)."""
        if self.ledger == "local":
            return f"local:{self.ledger_path}"
        if self.ledger == "ethereum":
            return f"ethereum:{self.chain_url}#{self.contract}"
        return None

    # ------------------------------------------------------------------ the ledger
    def _check_ledger_choice(self):
        if self.ledger == "ethereum":
            from ledger_client import devnode, poa_network
            if not os.path.exists(poa_network.EJS_CLI):
                raise LabError(f"--ledger ethereum: the EthereumJS client is not installed "
                               f"({poa_network.EJS_CLI}; run npm ci in {devnode.CONTRACTS_DIR})")
            if shutil.which("node") is None:
                raise LabError("--ledger ethereum: node (Node.js) is not on PATH: the ledger "
                               "nodes need it")

    def _device_keys(self, router, ethereum=False):
        """``beatd keygen [--ethereum]``'s files for ``router``: (DeviceKey, Account or None)."""
        from ledger_client.keys import DeviceKey
        from beatd import keygen

        kdir = os.path.dirname(self.device_key_path(router))
        os.makedirs(kdir, mode=0o700, exist_ok=True)
        key = DeviceKey.generate()
        key.save(self.device_key_path(router), overwrite=True)
        with open(os.path.join(kdir, keygen.PUB_NAME), "w") as f:
            f.write(key.public_hex + "\n")
        acct = None
        if ethereum:
            from ledger_client.ethereum import Account
            acct = Account.generate()
            acct.save(self.device_eth_path(router))
            with open(os.path.join(kdir, keygen.ETH_ADDR_NAME), "w") as f:
                f.write(acct.address + "\n")
        return key, acct

    def setup_ledger(self):
        """``local``: the committee (``committee_mod.Parties``: each member's keys, the operators',
        the tenant's), the ledger created with the committee and the balances, a device key per
        router (``beatd keygen``'s files), then through the committee (member 1 proposes, the
        next members approve up to k) every router as a node with its owner and operator, every
        router-router link, the SLA; each operator's deposit for its routers. Returns {router:
        public key hex}.
        ``ethereum``: see ``setup_ethereum``."""
        if self.ledger == "ethereum":
            return self.setup_ethereum()
        if self.ledger != "local":
            # no ledger: the device keys still sign the evidence of the Interrogation service
            return {r.name: self._device_keys(r.name)[0].public_hex for r in self.topo.routers}
        from ledger_client.local import LocalLedger

        os.makedirs(self.state_dir, exist_ok=True)
        self._record_committee()
        parties = self.parties
        parties.make(r.owner for r in self.topo.routers)
        holders = [parties.operator(r.owner) for r in self.topo.routers] + [parties.tenant()]
        balances = {parties.signer(p).public: self.money.balance for p in holders}
        with LocalLedger(self.ledger_path, hash_name=self._hash(),
                         committee=parties.committee(self.committee_k), balances=balances):
            pass
        pubs, nodes = {}, []
        for r in self.topo.routers:
            key, _ = self._device_keys(r.name)
            nodes.append([r.node_id, r.owner, key.public_hex, None, parties.operator(r.owner)])
            pubs[r.name] = key.public_hex
        committee_mod.run(self, "register", self.registration_job(nodes))
        return pubs

    def _record_committee(self):
        st = self._read_state()
        st["committee"] = {"n": self.committee_n, "k": self.committee_k}
        self._write_state(st)

    def registration_job(self, nodes):
        """The committee's set-up acts (``committee_mod.register``): ``nodes`` [[node_id, owner,
        Ed25519 key hex, account or None, operator key file]], the topology's links, the SLA,
        a deposit of ``money.deposit`` per router by its operator. Proposed by member 1,
        approved by members 2..k."""
        sla = self.sla()
        return {"proposer": self.member_key_path(1),
                "approvers": [self.member_key_path(i) for i in range(2, self.committee_k + 1)],
                "nodes": nodes,
                "links": [list(l) for l in self.topo.router_link_ids()],
                "sla": {"sla_id": sla.sla_id, "tenant": sla.tenant, "src": sla.src.hex(),
                        "dst": sla.dst.hex(), "route": list(sla.route),
                        "max_loss_ppm": sla.max_loss_ppm, "max_delay_us": sla.max_delay_us,
                        "loss_budget_ppm": sla.loss_budget_ppm,
                        "penalty_per_violation": sla.penalty_per_violation,
                        "price": sla.price, "tenant_key": self.tenant_key_path},
                "deposits": [[r.node_id, self.operator_key_path(r.name), self.money.deposit]
                             for r in self.topo.routers]}

    def sla(self):
        """The lab's RO-SLA (id ``LAB_SLA_ID``): the tenant's flow src -> dst over the agreed
        route, 1 % loss budget; its price and its penalty per faulty device (``money``)."""
        import ipaddress

        from ledger_client.types import SLA

        def a16(host):
            return ipaddress.IPv6Address(f"::ffff:{self.topo.host_addr(host)}").packed

        return SLA(LAB_SLA_ID, "lab-tenant", a16(self.topo.src), a16(self.topo.dst),
                   tuple(self.topo.node(r).node_id for r in self.topo.agreed),
                   max_loss_ppm=LAB_LOSS_BUDGET_PPM, max_delay_us=LAB_MAX_DELAY_US,
                   loss_budget_ppm=LAB_LOSS_BUDGET_PPM,
                   penalty_per_violation=self.money.penalty, price=self.money.price)

    def setup_ethereum(self, timeout=180.0):
        """The management network, the accounts, the ledger network (``chain.LabChain``: one
        EthereumJS Clique node per router in its namespace, sealing with its operator's
        account, and one per committee member in the ledger namespace, all over the management
        links), the contract deployed from the governance's node (member 1's) with the
        committee (members, k), the members, operators and tenant funded from the deployer's
        account, then through the committee every router registered (its operator's account),
        every link, the SLA; the operators' deposits (``registration_job``). Returns {router:
        account address}."""
        from ledger_client.devnode import DevNodeError
        from ledger_client.ethereum import Account

        from .chain import LabChain

        os.makedirs(self.state_dir, exist_ok=True)
        if self.net.ledger_ns not in list_namespaces():
            self.net.create_management()
        gov = Account.generate()
        gov.save(self.governance_eth_path)
        self._record_committee()
        self.parties.make(r.owner for r in self.topo.routers)
        nodes, accounts = [], {}
        for r in self.topo.routers:
            key, acct = self._device_keys(r.name, ethereum=True)
            nodes.append([r.node_id, r.owner, key.public_hex, acct.address,
                          self.operator_key_path(r.name)])
            accounts[r.name] = acct
        chain = LabChain(self, sealers=self.chain_sealers)
        funded = [(gov, 1000 * ETH)] + [(a, 100 * ETH) for a in accounts.values()]
        st = self._read_state()
        st["ethereum"] = {"url": chain.member_url(1), "netns": self.net.ledger_ns,
                          "governance": gov.address, "sealers": self.chain_sealers,
                          "confirmations": self.chain_confirmations,
                          "members": {str(i): chain.member_url(i)
                                      for i in range(1, self.committee_n + 1)},
                          "routers": {r.name: chain.router_url(r.name)
                                      for r in self.topo.routers}, "pids": {}}
        self._write_state(st)
        net = chain.network(funded)
        self._chain_net = net
        try:
            net.start(timeout=timeout, min_height=2)
        except DevNodeError as exc:
            raise LabError(f"--ledger ethereum: the ledger network did not start: {exc}") from None
        finally:
            st = self._read_state()
            st["ethereum"]["pids"] = {n.name: n.pid for n in net if n.pid}
            self._write_state(st)
        url = chain.member_url(1)
        # deploy and register from inside the ledger namespace, on the governance's node
        parties = self.parties
        job = {"url": url, "key": self.governance_eth_path, "hash": self._hash(),
               "state_dir": self.state_dir, "n": self.committee_n, "k": self.committee_k,
               "fund": [parties.member(i, True) for i in range(1, self.committee_n + 1)] +
                       sorted({self.operator_key_path(r.name) for r in self.topo.routers}) +
                       [self.tenant_key_path],
               "amount": self.money.balance, "register": self.registration_job(nodes)}
        p = subprocess.run(self.net_ledger_argv([self.python, "-c",
                                                 "from beat_lab.lab import _ethereum_setup; "
                                                 "_ethereum_setup()"]),
                           input=json.dumps(job), capture_output=True, text=True, cwd=IMPORT_ROOT,
                           env=self._env(), timeout=timeout + 300)
        if p.returncode != 0:
            raise LabError(f"--ledger ethereum: deploying the contract and registering the routers "
                           f"failed: {p.stderr.strip()[-2000:]}; the nodes' logs: {chain.base_dir}")
        contract = json.loads(p.stdout)["contract"]
        st = self._read_state()
        st["ethereum"]["contract"] = contract
        self._write_state(st)
        return {r: a.address for r, a in accounts.items()}

    def router_chain_url(self, router):
        """The JSON-RPC URL of ``router``'s own (its operator's) ledger node, on its management
        address, reachable inside its namespace."""
        return self._read_state().get("ethereum", {}).get("routers", {}).get(router) or \
            self.chain_url

    def member_chain_url(self, i):
        """Committee member ``i``'s own ledger node (in the ledger namespace)."""
        return self._read_state().get("ethereum", {}).get("members", {}).get(str(i)) or \
            self.chain_url

    def net_ledger_argv(self, argv):
        """``argv`` run inside the ledger namespace (where the lab's chain is reachable)."""
        return [IP, "netns", "exec", self.net.ledger_ns] + list(argv)

    def beatctl_argv(self, *args, key=None):
        """``beatctl --ledger <the lab's ledger> [--key KEY] ARGS``, inside the ledger namespace
        on ethereum."""
        argv = [self.python, "-m", "governance.cli", "--ledger", self._spec_for(key)]
        if key is not None:
            argv += ["--key", key]
        argv += list(args)
        return self.net_ledger_argv(argv) if self.ledger == "ethereum" else argv

    def _spec_for(self, key):
        """The ledger spec a beatctl with ``key`` uses: on ethereum a committee member's key
        talks to that member's own node, anything else to the governance's (member 1's)."""
        if self.ledger == "ethereum" and key is not None:
            for i in range(1, self.committee_n + 1):
                if os.path.abspath(key) == os.path.abspath(self.member_key_path(i)):
                    return f"ethereum:{self.member_chain_url(i)}#{self.contract}"
        return self.ledger_spec

    def beatctl(self, *args, key=None, timeout=300):
        """Run ``beatctl_argv(*args, key=key)``: the CompletedProcess."""
        return subprocess.run(self.beatctl_argv(*args, key=key), capture_output=True, text=True,
                              cwd=IMPORT_ROOT, env=self._env(), timeout=timeout)

    def interrogate_argv(self, from_ns, to_ns, json_path=None, svg_path=None, record=True,
                         dispute=None, f=None, member=1, evidence=None):
        """``beatctl interrogate`` for the lab's SLA, run in the management namespace (where the
        routers' Interrogation services are reachable), as committee member ``member``
        (``record``: its approval of the decision; with k = 1 the decision itself);
        ``evidence``: the directory the signed answers are kept in (``beatctl decide``)."""
        key = self.member_key_path(member)
        argv = [self.python, "-m", "governance.cli", "--ledger", self._spec_for(key)]
        if record:
            argv += ["--key", key]
        argv += ["interrogate", "--sla", str(LAB_SLA_ID), "--from", str(from_ns), "--to",
                 str(to_ns), "--config", self.governance_config_path]
        if json_path:
            argv += ["--json", json_path]
        if svg_path:
            argv += ["--svg", svg_path]
        if dispute is not None:
            argv += ["--dispute", str(dispute)]
        if f is not None:
            argv += ["--f", str(f)]
        if evidence is not None:
            argv += ["--evidence", evidence]
        if not record:
            argv.append("--no-record")
        return self.net_ledger_argv(argv)

    def interrogate(self, from_ns, to_ns, json_path=None, svg_path=None, record=True,
                    dispute=None, timeout=300, f=None, member=1, evidence=None):
        """Run ``beatctl interrogate`` (see ``interrogate_argv``; ``f``: its ``--f``, how many
        owners may lie together): the CompletedProcess."""
        if self.ledger_spec is None:
            raise LabError("the lab runs without a ledger (--ledger none): nothing to interrogate "
                           "against")
        return subprocess.run(self.interrogate_argv(from_ns, to_ns, json_path, svg_path, record,
                                                    dispute, f, member, evidence),
                              capture_output=True, text=True, cwd=IMPORT_ROOT, env=self._env(),
                              timeout=timeout)

    @staticmethod
    def _env():
        env = dict(os.environ)
        extra = env.get("PYTHONPATH")
        env["PYTHONPATH"] = IMPORT_ROOT + (os.pathsep + extra if extra else "")
        return env

    def stop_chain(self, timeout=10.0):
        """Stop the lab's ledger nodes (SIGTERM: the client closes its databases; SIGKILL after
        ``timeout``). Idempotent."""
        from .chain import LabChain

        net = getattr(self, "_chain_net", None)
        if net is not None:
            net.stop()
            self._chain_net = None
        st = self._read_state()
        eth = st.get("ethereum", {})
        pids = list((eth.get("pids") or {}).values())
        if pids:
            LabChain.stop_pids(pids, timeout=timeout)
            eth["pids"] = {}
            self._write_state(st)

    @staticmethod
    def _hash():
        from beatd import config as beatd_config
        return beatd_config.DEFAULTS["hash"]

    def anchors(self):
        """{router: [Anchor, ...]} from the lab's ledger (empty without one)."""
        if self.ledger == "ethereum":
            return self._ethereum_anchors()
        if self.ledger != "local" or not os.path.exists(self.ledger_path):
            return {}
        from ledger_client.backend import open_backend
        with open_backend(f"local:{self.ledger_path}") as led:
            return {r.name: led.anchors(r.node_id) for r in self.topo.routers}

    def _ethereum_anchors(self):
        from ledger_client.types import Anchor

        if not self.contract:
            return {}
        p = subprocess.run(self.beatctl_argv("anchors", "--json"), capture_output=True, text=True,
                           cwd=IMPORT_ROOT, env=self._env(), timeout=120)
        if p.returncode != 0:
            raise LabError(f"beatctl anchors on {self.ledger_spec}: exit {p.returncode}: "
                           f"{p.stderr.strip()}")
        by_id = {}
        for line in p.stdout.splitlines():
            if line.strip():
                x = json.loads(line)
                by_id.setdefault(x["node_id"], []).append(Anchor(
                    x["node_id"], x["batch_seq"], x["tree_size"], bytes.fromhex(x["root"]),
                    x["first_t_ns"], x["last_t_ns"], x["ref"]))
        return {r.name: sorted(by_id.get(r.node_id, []), key=lambda a: a.batch_seq)
                for r in self.topo.routers}

    def verify_ledger(self):
        """The local ledger's ``verify_chain()`` problems (an empty list: sound)."""
        from ledger_client.backend import open_backend
        with open_backend(f"local:{self.ledger_path}") as led:
            return led.verify_chain()

    def _read_state(self):
        try:
            with open(self.state_file) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _write_state(self, state):
        os.makedirs(self.state_dir, exist_ok=True)
        tmp = f"{self.state_file}.{os.getpid()}.{threading.get_ident()}.tmp"
        with self._state_lock:
            with open(tmp, "w") as f:
                json.dump(state, f, indent=1)
            os.replace(tmp, self.state_file)

    def _set_pid(self, router, pid):
        with self._state_lock:          # read, change, write: one router's change at a time
            st = self._read_state()
            st.setdefault("daemons", {})
            if pid is None:
                st["daemons"].pop(router, None)
            else:
                st["daemons"][router] = pid
            self._write_state(st)

    # ------------------------------------------------------------------ configs
    def daemon_config(self, router):
        """The beatd TOML of ``router``: its node id, its interfaces' MACs, its neighbour routers
        (MAC, node id, IP), a small store and ring, a control socket in the state dir."""
        node = self.topo.node(router)
        d = self.router_dir(router)
        doc = {
            "node_id": node.node_id,
            "own_macs": list(self.net.own_macs(router)),
            "interfaces": [ifname for ifname, *_ in self.net.interfaces(router)],
            "neighbours": [{"node_id": nid, "mac": mac, "ip": ip, "interface": ifname}
                           for nid, mac, ip, ifname in self.net.neighbour_routers(router)],
            "store": {"path": os.path.join(d, "store"),
                      "ring_size": self.ring_sizes.get(router, self.ring_size),
                      "sync": "periodic"},
            # segments close at least once per anchor period: the lab anchors every second, so
            # its segments must close every second too (the governance parameter, set here)
            "governance": {"anchor_period_s": LAB_ANCHOR_PERIOD_S},
            "capture": {"workers": 1, "block_size": "256KiB", "block_count": 8,
                        "block_timeout_ms": 10},
            "daemon": {"commit_interval_ms": 50, "metrics_listen": "",
                       "control_socket": self.control_socket(router), "log_format": "text"},
        }
        if self.ledger == "local":
            doc["ledger"] = {"backend": "local", "path": self.ledger_path,
                             "key": self.device_key_path(router),
                             "anchor_period_s": LAB_ANCHOR_PERIOD_S}
        elif self.ledger == "ethereum":
            doc["ledger"] = {"backend": "ethereum", "url": self.router_chain_url(router),
                             "confirmations": self.chain_confirmations,
                             "contract": self.contract or "0x" + "00" * 20,
                             "key": self.device_eth_path(router),
                             "device_key": self.device_key_path(router),
                             "anchor_period_s": LAB_ANCHOR_PERIOD_S}
        elif self.ledger == "none":
            doc["ledger"] = {"backend": "none"}
        if os.path.exists(os.path.join(self.pki_dir, "ca", "ca.crt")):
            tls = os.path.join(self.router_dir(router), "tls")
            doc["interrogation"] = {
                "listen": self.grpc_endpoint(router),
                "ca": os.path.join(self.pki_dir, "ca", "ca.crt"),
                "cert": os.path.join(tls, f"device-{node.node_id}.crt"),
                "key": os.path.join(tls, f"device-{node.node_id}.key"),
                # with no ledger, nothing else holds the device's Ed25519 key
                "signing_key": self.device_key_path(router) if self.ledger == "none" else None}
        return dumps(doc, header=f"written by `beat-lab up` for {router} ({self.topology_path})")

    def write_configs(self, routers=None):
        from beatd import config as beatd_config

        for name in routers or [r.name for r in self.topo.routers]:
            os.makedirs(self.router_dir(name), exist_ok=True)
            text = self.daemon_config(name)
            with open(self.config_path(name), "w") as f:
                f.write(text)
            try:
                beatd_config.load(self.config_path(name))
            except beatd_config.ConfigError as exc:
                raise LabError(f"the beatd config written for {name} is rejected: {exc}") from None

    # ------------------------------------------------------------------ daemons
    def _beatd(self, *args):
        return [self.python, "-m", "beatd", *args]

    def daemon_available(self):
        """(True, "") when ``beatd run`` exists, else (False, why)."""
        p = subprocess.run(self._beatd("run", "--help"), capture_output=True, text=True,
                           cwd=IMPORT_ROOT, timeout=60)
        if p.returncode != 0:
            return False, (p.stderr.strip().splitlines() or ["?"])[-1]
        return True, ""

    def start_daemon(self, router):
        log = open(self.log_path(router), "ab")
        extra = ["--testing-allow-inject"] if router in self.testing_inject else []
        for spec in self.testing_lies.get(router, ()):
            extra += ["--testing-lie", spec]
        argv = self.net.exec_argv(router, self._beatd("run", "--config", self.config_path(router),
                                                      *extra))
        env = self._env()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=IMPORT_ROOT, env=env, start_new_session=True)
        log.close()
        self._procs[router] = proc
        self._set_pid(router, proc.pid)
        return proc

    def stop_daemon(self, router, timeout=10.0):
        """SIGTERM ``router``'s daemon (it flushes, commits and makes its last anchor attempt),
        wait, SIGKILL it if late. Returns its exit code, "killed", or None when none ran."""
        pid = self._read_state().get("daemons", {}).get(router)
        proc = self._procs.get(router)
        if proc is None and not pid:
            return None
        pid = pid or proc.pid
        if _pid_alive(pid) and "beatd" in _cmdline(pid):
            os.kill(pid, signal.SIGTERM)
        return self._reap(router, pid, proc, time.monotonic() + timeout)

    def _reap(self, router, pid, proc, deadline):
        """Wait until ``deadline`` for a daemon told to stop, SIGKILL it if late, forget it.
        Returns its exit code, "exited" (not our child) or "killed"."""
        def alive():
            return proc.poll() is None if proc is not None else _pid_alive(pid)

        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if proc is not None:
                proc.wait(5)
            result = "killed"
        else:
            result = proc.returncode if proc is not None else "exited"
        self._procs.pop(router, None)
        self._set_pid(router, None)
        return result

    def restart_daemon(self, router, timeout=30.0):
        """Stop ``router``'s daemon, write its config again (``ring_sizes``), start it with the
        switches it has now (``testing_lies``, ``testing_inject``) and wait until it captures.
        Returns the stopped daemon's exit code (see ``stop_daemon``)."""
        code = self.stop_daemon(router)
        self.write_configs([router])
        self.start_daemon(router)
        self.wait_capturing(router, timeout)
        return code

    def inject(self, router, pcap_path, timeout=30.0):
        """TEST ONLY: feed ``pcap_path``'s frames into ``router``'s proofs as if captured (its
        beatd must run with --testing-allow-inject: ``testing_inject``). Returns the frame count."""
        from beatd.control import request

        r = request(self.control_socket(router), f"test-inject {pcap_path}", timeout=timeout)
        if "error" in r:
            raise LabError(f"{router}: {r['error']}")
        return r["frames"]

    def _ifindexes(self, router):
        out = self.net.run(router, ["ip", "-j", "link", "show"]).stdout
        return {d["ifindex"] for d in json.loads(out) if d["ifname"].startswith("to-")}

    def _packet_socket_ifindexes(self, router):
        out = self.net.run(router, ["cat", "/proc/net/packet"]).stdout.splitlines()[1:]
        return {int(line.split()[4]) for line in out if len(line.split()) > 4}

    def status(self, router, timeout=2.0):
        from beatd.control import request

        return request(self.control_socket(router), timeout=timeout)

    def wait_capturing(self, router, timeout=30.0):
        """Until ``router``'s daemon answers on its control socket and holds a packet socket on
        each of its interfaces; LabError with the log's tail otherwise."""
        deadline = time.monotonic() + timeout
        want = self._ifindexes(router)
        last = "no answer yet"
        while time.monotonic() < deadline:
            pid = self._read_state().get("daemons", {}).get(router)
            proc = self._procs.get(router)
            if (proc is not None and proc.poll() is not None) or (pid and not _pid_alive(pid)):
                raise LabError(f"beatd on {router} exited during start-up; "
                               f"{self.log_path(router)}:\n{self._log_tail(router)}")
            try:
                st = self.status(router, timeout=1.0)
                if "error" in st:
                    last = f"status: {st['error']}"
                else:
                    have = self._packet_socket_ifindexes(router)
                    if want <= have or 0 in have:  # an "any" socket (ifindex 0) covers all
                        return st
                    last = f"packet sockets on ifindex {sorted(have)}, want {sorted(want)}"
            except Exception as exc:  # noqa: BLE001 (not up yet: keep asking)
                last = str(exc)
            time.sleep(0.2)
        raise LabError(f"beatd on {router} is not capturing after {timeout:.0f} s ({last}); "
                       f"{self.log_path(router)}:\n{self._log_tail(router)}")

    def wait_anchored(self, to_ns, timeout=60.0, routers=None):
        """Wait until every running router's records up to ``to_ns`` are in closed segments and
        anchored (no leaf waiting, no anchor pending). Returns ``{router: None}`` for the
        anchored ones and ``{router: what is still missing}`` for the others once ``timeout``
        has passed; a router whose daemon is not running is left out.

        Condition on each daemon's status (asked in parallel, so one router that does not
        answer delays nobody else), not a sleep: a slow ledger (a JSON-RPC call that takes its
        whole timeout) only makes this wait longer. The daemon stamps what it reads: the ring
        status read after ``store.ring.as_of`` shows no open record at or before ``to_ns`` (the
        records reach the store within the capture's block timeout and the commit interval:
        ``RECORDS_IN_STORE_S`` after ``to_ns``), then the anchor state read after that moment
        (``anchor.as_of``) shows nothing waiting. Records are taken to reach the store when
        their packets pass (captured ones do); records of ``to_ns`` fed later (a test's
        injection) need ``to_ns`` = the time they were fed."""
        if self.ledger_spec is None:
            raise LabError("the lab runs without a ledger (--ledger none): nothing is anchored")
        pids = self._read_state().get("daemons", {})
        names = [r.name for r in self.topo.routers] if routers is None else list(routers)
        running = [r for r in names if pids.get(r) and _pid_alive(pids[r])]
        deadline = time.monotonic() + timeout
        if not running:
            return {}
        with concurrent.futures.ThreadPoolExecutor(len(running)) as pool:
            late = pool.map(lambda r: self._wait_anchored_one(r, to_ns, deadline), running)
            return dict(zip(running, late))

    def _wait_anchored_one(self, router, to_ns, deadline):
        """``wait_anchored`` for one router: None, or what it still lacks at ``deadline``."""
        in_store = to_ns / 1e9 + RECORDS_IN_STORE_S
        closed_seen = None                     # when its window was seen closed
        why = "no status yet"
        while time.monotonic() < deadline:
            try:
                st = self.status(router, timeout=max(0.1, min(2.0, deadline - time.monotonic())))
            except Exception as exc:  # noqa: BLE001 (busy or gone: ask again)
                why = f"status: {type(exc).__name__}: {exc}"
                time.sleep(0.1)
                continue
            seen_at = time.time()
            ring = (st.get("store") or {}).get("ring") or {}
            anchor = st.get("anchor") or {}
            open_from = ring.get("open_oldest_t_ns")
            if "error" in st:
                why = f"status: {st['error']}"
            elif closed_seen is None and ring.get("as_of", 0) < in_store:
                why = "records of the window not all in the store yet"
            elif closed_seen is None and open_from is not None and open_from <= to_ns:
                why = f"a segment with records of the window is open (from {open_from})"
            else:
                closed_seen = closed_seen or seen_at
                if anchor.get("as_of", 0) < closed_seen:
                    why = "segments closed; anchor state not read since"
                elif anchor.get("leaves_waiting") or anchor.get("pending_anchors"):
                    why = (f"{anchor.get('leaves_waiting')} leaves waiting, "
                           f"{anchor.get('pending_anchors')} anchors pending"
                           + (f" (last error: {anchor['last_error']})"
                              if anchor.get("last_error") else ""))
                else:
                    return None
            time.sleep(0.1)
        return why

    def _log_tail(self, router, n=15):
        try:
            with open(self.log_path(router), errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no log)"

    def stop_daemons(self, timeout=10.0):
        """SIGTERM every daemon (they flush and commit), wait, SIGKILL the late ones.
        Returns {router: exit code or "killed"}."""
        pids = dict(self._read_state().get("daemons", {}))
        for r, proc in self._procs.items():
            pids.setdefault(r, proc.pid)
        for r, pid in pids.items():
            if _pid_alive(pid) and "beatd" in _cmdline(pid):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        return {r: self._reap(r, pid, self._procs.get(r), deadline) for r, pid in pids.items()}

    # ------------------------------------------------------------------ up / down
    def clear_leftovers(self):
        """Stop daemons a previous run recorded, delete this lab's namespaces and state."""
        st = self._read_state()
        if st:
            self.stop_daemons(timeout=5)
            self.stop_chain(timeout=5)
        extra = [ns for ns in st.get("namespaces", [])]
        removed = self.net.destroy(extra)
        if os.path.isdir(self.state_dir):
            shutil.rmtree(self.state_dir, ignore_errors=True)
        return removed

    def up(self, daemons=True, timeout=30.0):
        """Clear leftovers, build the network, set up the ledger, write the configs, start and wait
        for the daemons."""
        self._check_ledger_choice()
        self.clear_leftovers()
        namespaces = self.net.namespaces()
        # the management namespace (the governance's seat, and the chain's on ethereum): each
        # router reaches it over a management link that carries no tenant traffic
        namespaces.append(self.net.ledger_ns)
        self._write_state({"prefix": self.prefix, "topology": self.topology_path,
                           "namespaces": namespaces, "daemons": {},
                           "started": time.time(), "ledger": self.ledger})
        try:
            self.net.create()
            self.net.create_management()
            self.setup_ledger()
            self.setup_pki()
            self.write_configs()
            if daemons:
                ok, why = self.daemon_available()
                if not ok:
                    raise LabError(f"`beatd run` is not available ({why})")
                for r in self.topo.routers:
                    self.start_daemon(r.name)
                for r in self.topo.routers:
                    self.wait_capturing(r.name, timeout)
        except BaseException:
            self.down()
            raise

    def down(self):
        """Stop the daemons, delete the namespaces and the state dir. Idempotent."""
        stopped = self.stop_daemons(timeout=5) if (self._procs or self._read_state()) else {}
        self.stop_chain(timeout=5)
        st = self._read_state()
        self.net.destroy(st.get("namespaces", []))
        shutil.rmtree(self.state_dir, ignore_errors=True)
        return stopped

    def adopt_state(self):
        """Take the ledger and the committee a running lab was brought up with."""
        st = self._read_state()
        self.ledger = st.get("ledger", self.ledger)
        c = st.get("committee")
        if c:
            self.committee_n, self.committee_k = c["n"], c["k"]

    def is_up(self):
        return bool(self.net.exists())

    # ------------------------------------------------------------------ reading the routers
    def dump(self, router):
        """``beatd dump --config <router's config> --json --live``: {"records": [...], "other":
        [...]} (``other``: every JSON line that is not a record, e.g. the summary). ``--live``:
        the router's daemon may be running (a read-only snapshot beside it)."""
        self.topo.node(router)
        cfg = self.config_path(router)
        if not os.path.exists(cfg):
            raise LabError(f"{router}: no config at {cfg}: is the lab up (`beat-lab up`)?")
        p = subprocess.run(self._beatd("dump", "--config", cfg, "--json", "--live"),
                           capture_output=True, text=True, cwd=IMPORT_ROOT, timeout=120)
        if p.returncode != 0:
            raise LabError(f"beatd dump for {router}: exit {p.returncode}: {p.stderr.strip()}")
        records, other = [], []
        for line in p.stdout.splitlines():
            if not line.strip():
                continue
            obj = json.loads(line)
            (records if "pd" in obj and "prev_id" in obj else other).append(obj)
        return {"records": records, "other": other}

    @staticmethod
    def stored_counters(dumped):
        """{(prev_id, next_id): packets} from the store's counters in the dump's summary line
        (None when the dump carries none)."""
        for o in dumped["other"]:
            c = o.get("summary", {}).get("counters") if isinstance(o, dict) else None
            if c is not None:
                return {(x["prev_id"], x["next_id"]): x["packets"] for x in c}
        return None

    @staticmethod
    def pair_counts(records):
        """{(prev_id, next_id): packets} from dumped records."""
        out = {}
        for r in records:
            k = (r["prev_id"], r["next_id"])
            out[k] = out.get(k, 0) + 1
        return out

    # ------------------------------------------------------------------ the demo
    # ------------------------------------------------------------------ the committee's dispute
    def open_dispute(self, from_ns, to_ns):
        """The tenant (its key, ``tenant_key_path``) opens a dispute on the lab's SLA for the
        window ``from_ns``..``to_ns``: the dispute's id."""
        return committee_mod.run(self, "open_dispute", {
            "tenant": self.tenant_key_path, "sla_id": LAB_SLA_ID, "from_ns": int(from_ns),
            "to_ns": int(to_ns)})["dispute_id"]

    def decide(self, dispute, evidence, member, timeout=300):
        """``beatctl decide DISPUTE --evidence DIR --json`` as committee member ``member``: it
        judges the archived evidence again (deterministic) and approves that decision. The
        CompletedProcess."""
        return self.beatctl("decide", str(dispute), "--evidence", evidence, "--json",
                            key=self.member_key_path(member), timeout=timeout)

    def approve_decision(self, member, dispute, evidence_digest, verdict_digest, faulty):
        """Member ``member``'s approval of a decision's content (digests as hex), straight on
        the ledger: what a member who judged otherwise (or lies) sends. Returns the state."""
        return committee_mod.run(self, "approve", {
            "member": self.member_key_path(member), "dispute_id": dispute,
            "evidence_digest": evidence_digest, "verdict_digest": verdict_digest,
            "faulty": list(faulty)})["state"]

    def ledger_view(self, dispute=None):
        """The ledger as the demo shows it: {"balances": {"tenant": .., "<owner>": ..},
        "deposits": {node_id (str): {"amount", "debt", "frozen_by"}}, "dispute": .. (with
        ``dispute``), "votes": [{"member", "verdict_digest", "evidence_digest", "dissent"}],
        "pending": [[proposal, act, approvals, k]], "committee": {..}} (and on ethereum
        "contract_balance": the wei the contract holds)."""
        who = {"tenant": self.tenant_key_path}
        for r in self.topo.routers:
            who[r.owner] = self.operator_key_path(r.name)
        return committee_mod.run(self, "view", {
            "who": who, "nodes": [r.node_id for r in self.topo.routers], "dispute_id": dispute})

    def member_names(self):
        """{how the ledger names a member (key hex / address, lower case): "member i"}."""
        out = {}
        for i in range(1, self.committee_n + 1):
            for eth in (False, True):
                out[self.parties.identity(self.parties.member(i, eth)).lower()] = f"member {i}"
        return out

    def _demo_dispute(self, from_ns, to_ns, out, report_dir):
        """The tenant disputes the window; the committee decides: member 1 interrogates the
        routers (beatctl interrogate --dispute D --evidence DIR: its approval), members 2..k
        judge member 1's archived evidence again (beatctl decide D --evidence DIR) and approve
        the same content; at the k-th approval the decision executes and the penalty moves from
        the faulty operator's deposit to the tenant. Prints each step, the approvals, the
        decision, the balances before and after and the open proposals. Returns the report (or
        None without a ledger)."""
        if self.ledger_spec is None:
            out.write("\n(no ledger: no dispute)\n")
            return None
        out.write("\n(waiting until every router's records of the window are anchored)\n")
        late = {r: why for r, why in self.wait_anchored(to_ns).items() if why}
        for r, why in late.items():
            out.write(f"  {r}: not anchored yet: {why}; its evidence counts as signed, unproven\n")
        jpath = os.path.join(report_dir, "dispute.json")
        spath = os.path.join(report_dir, "dispute.svg")
        evidence = os.path.join(report_dir, "evidence")
        shutil.rmtree(evidence, ignore_errors=True)
        n, k = self.committee_n, self.committee_k
        rel = os.path.relpath
        did = self.open_dispute(from_ns, to_ns)
        out.write(f"\n== the tenant disputes SLA {LAB_SLA_ID}: dispute {did} opened on the ledger "
                  f"with the tenant's key ({rel(self.tenant_key_path, self.state_dir)})\n")
        before = self.ledger_view(did)
        out.write(f"\n== the committee ({n} member organisation{'s' if n > 1 else ''}, k = {k}) "
                  "decides it. Member 1 "
                  "interrogates the routers\n")
        out.write("   (" + " ".join(self.interrogate_argv(
            from_ns, to_ns, jpath, spath, dispute=did, evidence=evidence)[4:]) + ")\n\n")
        p = self.interrogate(from_ns, to_ns, jpath, spath, dispute=did, evidence=evidence)
        out.write(p.stdout)
        if p.returncode not in (0, 3):
            out.write(f"beatctl interrogate failed (exit {p.returncode}): {p.stderr}\n")
            return {"exit": p.returncode, "error": p.stderr, "not_anchored": late,
                    "dispute_id": did}
        with open(jpath) as f:
            data = json.load(f)
        names = {r.node_id: r.name for r in self.topo.routers}
        verdicts = {names.get(d["node_id"], str(d["node_id"])): d["verdict"]
                    for d in data["devices"]}
        out.write(f"\nverdict: {', '.join(f'{n} {v}' for n, v in verdicts.items())} "
                  f"(beatctl exit {p.returncode}); report {jpath}, picture {spath}\n")
        if k > 1:
            out.write(f"(that is member 1's approval of this verdict: 1 of k = {k}; nothing is "
                      "decided and no value moves before the k-th)\n")
        decides = []
        for i in range(2, k + 1):
            out.write(f"\n== member {i} judges member 1's archived evidence again (the same "
                      "checks, deterministic) and approves what it finds\n")
            out.write(f"   (beatctl --key {rel(self.member_key_path(i), self.state_dir)} decide "
                      f"{did} --evidence {evidence})\n")
            q = self.decide(did, evidence, i)
            if q.returncode != 0:
                out.write(f"beatctl decide failed (exit {q.returncode}): {q.stderr}\n")
                return {"exit": q.returncode, "error": q.stderr, "not_anchored": late,
                        "dispute_id": did, "verdicts": verdicts}
            got = json.loads(q.stdout)
            decides.append(got)
            out.write(f"   member {i}: verdict digest {got['verdict_digest'][:16]}..., faulty "
                      f"{got['faulty'] or 'none'}: {got['approvals']} of {got['k']} approvals, "
                      f"{got['state']}\n")
        after = self.ledger_view(did)
        if after["dispute"] and after["dispute"]["state"] == "decided":
            # a committee of one decided alone (k = 1: decide and settle are two acts)
            out.write(f"\n== member 1 settles dispute {did} (k = 1)\n")
            committee_mod.run(self, "settle", {"member": self.member_key_path(1),
                                               "dispute_id": did})
            after = self.ledger_view(did)
        self._print_decision(out, did, before, after)
        return {"exit": p.returncode, "verdicts": verdicts, "json": jpath, "svg": spath,
                "evidence": evidence, "dispute_id": did,
                "decision": dict(after["dispute"] or {}, dispute_id=did),
                "votes": after["votes"], "decides": decides, "before": before, "after": after,
                "not_anchored": late}

    def _print_decision(self, out, did, before, after):
        """The committee's approvals, the decision, the money before -> after, the open
        proposals (beatctl pending)."""
        money, members = self.money, self.member_names()
        names = {r.node_id: r.name for r in self.topo.routers}
        d = after["dispute"] or {}
        out.write(f"\n== the committee's approvals of dispute {did} (k = {self.committee_k})\n")
        if not after["votes"]:
            out.write("   none recorded: a committee of one (k = 1) decides alone, as a single "
                      "governance key\n")
        for v in after["votes"]:
            who = members.get(v["member"].lower(), v["member"])
            out.write(f"   {who}: evidence {v['evidence_digest'][:16]}..., verdict "
                      f"{v['verdict_digest'][:16]}..."
                      + ("  DISSENT (another verdict than the one decided)" if v["dissent"]
                         else "") + "\n")
        faulty = d.get("faulty") or []
        named = ", ".join(f"{names.get(x, x)} (node {x}, {self.topo.node(names[x]).owner})"
                          if x in names else str(x) for x in faulty)
        if d.get("state") in ("decided", "settled"):
            out.write(f"\n== the decision: dispute {did} decided: faulty {faulty}: "
                      f"{named or 'nobody'}; penalty {money.fmt(d['penalty'])}, "
                      f"{d['state']}"
                      + (" in the same step as the k-th approval" if self.committee_k > 1
                         else "") + "\n")
        else:
            out.write(f"\n== no decision yet: dispute {did} is {d.get('state')} (fewer than "
                      f"k = {self.committee_k} approvals of one content)\n")
        out.write("\n== the money (the ledger's balances, before the decision -> after)\n")
        for x in faulty or [r.node_id for r in self.topo.routers if r.name in self.topo.agreed]:
            if x not in names:
                continue
            b, a = before["deposits"][str(x)], after["deposits"][str(x)]
            out.write(f"   {names[x]}'s deposit ({self.topo.node(names[x]).owner}): "
                      f"{money.fmt(b['amount'])} -> {money.fmt(a['amount'])}"
                      + (f", debt {money.fmt(a['debt'])}" if a["debt"] else "") + "\n")
        out.write(f"   the tenant's balance: {money.fmt(before['balances']['tenant'])} -> "
                  f"{money.fmt(after['balances']['tenant'])}\n")
        p = self.beatctl("pending")
        out.write("\n== open proposals (beatctl pending): "
                  + (("\n" + p.stdout) if p.stdout.strip() else "none\n"))
        if p.returncode != 0:
            out.write(f"beatctl pending failed (exit {p.returncode}): {p.stderr}\n")
        where = (f"ip netns exec {self.net.ledger_ns} beatctl --ledger {self.ledger_spec}"
                 if self.ledger == "ethereum" else f"beatctl --ledger {self.ledger_spec}")
        bal = "balances --account ADDR" if self.ledger == "ethereum" else "balances"
        out.write(f"   (every step on the ledger: {where} disputes | dissent {did} | deposits"
                  f" | {bal})\n\n")

    def demo(self, known=20, flows=1000, load_packets=20000, rate=20000.0, out=None,
             report_dir=None):
        """The paper's scenario: known packets and load h1 -> h2 on the agreed path; then the
        first router of the detour moves its route (the deviation) and more known packets follow.
        Stops the daemons (SIGTERM: flush) and prints what each router recorded. Returns a dict."""
        out = out or sys.stdout
        topo, net = self.topo, self.net
        if not self.is_up():
            self.up()
        else:       # the ledger (and committee) the running lab was brought up with
            self.adopt_state()
        src, dst = topo.src, topo.dst
        a_src, a_dst = topo.host_addr(src), topo.host_addr(dst)
        phase1 = traffic.known_packets(a_src, a_dst, known, sport=40000, tag=b"agreed")
        out.write(f"lab {topo.name}: {src} -> {dst} over {' - '.join(topo.agreed)}\n")
        window_from = time.time_ns()
        n1 = traffic.send_packets(net, src, phase1)
        load = traffic.send_load(net, src, dst, flows=flows, count=load_packets,
                                 seconds=max(1.0, load_packets / rate * 2) if rate else 10.0,
                                 rate=rate)
        out.write(f"  sent {n1} known packets and {load['sent']} load packets over "
                  f"{load['flows']} flows in {load['seconds']} s\n")
        phase2 = []
        if topo.detour:
            time.sleep(0.2)
            first, nxt = topo.detour[0], topo.detour[1]
            net.route_via(first, dst, nxt)
            out.write(f"  {first} moves its route to {dst} to {nxt}: detour "
                      f"{' - '.join(topo.detour)}\n")
            phase2 = traffic.known_packets(a_src, a_dst, known, sport=50000, tag=b"detour")
            n2 = traffic.send_packets(net, src, phase2)
            out.write(f"  sent {n2} known packets on the detour\n")
        window_to = time.time_ns()
        dispute = self._demo_dispute(window_from, window_to, out, report_dir or self.state_dir)
        if topo.detour:
            net.route_via(topo.detour[0], dst, topo.agreed[topo.agreed.index(topo.detour[0]) + 1])
        time.sleep(0.3)
        stopped = self.stop_daemons()
        out.write(f"  daemons stopped: {stopped}\n\n")
        report = {"stopped": stopped, "routers": {}, "load": load, "dispute": dispute}
        pd1 = {traffic.expected_pd(p).hex(): i for i, p in enumerate(phase1)}
        pd2 = {traffic.expected_pd(p).hex(): i for i, p in enumerate(phase2)}
        for r in topo.routers:
            d = self.dump(r.name)
            pairs = self.pair_counts(d["records"])
            k1 = len({x["pd"] for x in d["records"] if x["pd"] in pd1})
            k2 = len({x["pd"] for x in d["records"] if x["pd"] in pd2})
            none = (1 << 64) - 1
            unjoined = sum(1 for x in d["records"] if none in (x["prev_id"], x["next_id"]))
            stats = link_stats(net, r.name)
            report["routers"][r.name] = {"node_id": r.node_id, "records": len(d["records"]),
                                         "pairs": {f"{a}->{b}": n for (a, b), n in
                                                   sorted(pairs.items())},
                                         "known_agreed": k1, "known_detour": k2,
                                         "unjoined": unjoined,
                                         "interfaces": stats, "other": d["other"]}
            out.write(f"{r.name} (node {r.node_id}): {len(d['records'])} records; distinct known packets: "
                      f"{k1}/{len(phase1)} agreed phase, {k2}/{len(phase2)} detour phase\n")
            def name(v):
                return "NONE" if v == none else str(v)

            if unjoined:
                out.write(f"    ({unjoined} records with NONE: an ingress or egress copy "
                          "without its other half)\n")
            for (a, b), n in sorted(pairs.items()):
                out.write(f"    records prev {name(a)} -> next {name(b)}: {n}\n")
            stored = self.stored_counters(d)
            report["routers"][r.name]["counters"] = (
                None if stored is None else {f"{a}->{b}": n for (a, b), n in sorted(stored.items())})
            if stored is not None:
                out.write("    stored counters: " + ", ".join(
                    f"({name(a)}, {name(b)}): {n}" for (a, b), n in sorted(stored.items())) + "\n")
        anchors = self.anchors()
        if anchors:
            report["anchors"] = {}
            where = self.ledger_path if self.ledger == "local" else self.ledger_spec
            out.write(f"\nledger {where}:\n")
            for r in topo.routers:
                got = anchors.get(r.name, [])
                report["anchors"][r.name] = {"anchors": len(got),
                                             "leaves": sum(a.tree_size for a in got)}
                out.write(f"  {r.name} (node {r.node_id}): {len(got)} anchors, batch_seq "
                          + (f"0..{got[-1].batch_seq}" if got else "-")
                          + f", {sum(a.tree_size for a in got)} leaves\n")
            if self.ledger == "ethereum":
                out.write(f"  (ip netns exec {self.net.ledger_ns} beatctl --ledger "
                          f"{self.ledger_spec} anchors)\n")
            else:
                out.write(f"  (beatctl --ledger local:{self.ledger_path} anchors)\n")
        out.write("\n(`beat-lab dump NODE` shows a router's records; `beat-lab down` removes "
                  "the lab)\n")
        return report


def _ethereum_setup():
    """Run inside the ledger namespace by ``Lab.setup_ethereum``: a JSON job on stdin (url, the
    deployer's key file, hash, the state dir with the committee's key files, n, k, the accounts to
    fund and the amount, the registration job); deploys the Beat contract with the committee,
    funds the accounts, registers through the committee (``committee.register``), prints
    {"contract": address}."""
    from ledger_client.ethereum import Account, EthereumLedger

    job = json.load(sys.stdin)
    gov = Account.from_file(job["key"])
    committee = Parties(job["state_dir"], job["n"]).committee(job["k"])
    led = EthereumLedger.deploy(job["url"], gov, job["hash"], committee=committee)
    from .chain import fund
    fund(led, gov, [Account.from_file(p).address for p in job["fund"]], job["amount"])
    committee_mod.register(led, job["register"])
    json.dump({"contract": led.address}, sys.stdout)
