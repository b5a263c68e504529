"""The lab's ledger network (``beat-lab up --ledger ethereum``): EthereumJS client nodes holding
one proof-of-authority (Clique) chain (``ledger_client.poa_network``), every one reached over the
management links only.

- One node per router, in the router's namespace, on its management address
  (``http://<router's mgmt address>:8545``): its operator's node. Its beatd anchors through it
  and nothing else. The node seals with the operator's Ethereum account (one sealer per operator:
  a second router of the same operator runs a follower), unless ``sealers="one"``.
- One node per committee member, in the ledger namespace (``http://<ledger address>:8545``
  for member 1, ``:8546`` for member 2, ...): member ``i``'s ``beatctl`` talks to its own node.
  Member 1's node is the governance's: the contract is deployed and the lab's set-up acts
  (registrations through the committee, the operators' deposits) are sent there.
- Peers: every router's node dials every member's node (over its management link: the
  routers cannot reach each other there, the ledger namespace forwards nothing); the members'
  nodes dial each other (loopback of the ledger namespace).

``sealers="one"``: only member 1's node seals, every other node follows (docs/ledger.md says
when to use it). Blocks every ``PERIOD_S`` second; anchors count ``CONFIRMATIONS`` blocks deep.
"""
import os
import signal
import time

from beat_common.procs import pid_alive

RPC_PORT = 8545
P2P_PORT = 30303
PERIOD_S = 1
CONFIRMATIONS = 2
SEALERS = ("operators", "one")


def member_name(i):
    return f"member{i}"


class LabChain:
    """The nodes of one lab's chain (see the module doc). ``lab``: the ``Lab``; its state dir
    holds the chain (``chain/``: the genesis, one directory and log per node)."""

    def __init__(self, lab, sealers="one"):
        if sealers not in SEALERS:
            raise ValueError(f"sealers: {sealers!r} is not one of {', '.join(SEALERS)}")
        self.lab = lab
        self.sealers = sealers
        self.base_dir = os.path.join(lab.state_dir, "chain")

    def member_url(self, i):
        return f"http://{self.lab.net.ledger_address()}:{RPC_PORT + i - 1}"

    def router_address(self, router):
        for name, _lif, _laddr, raddr, _net in self.lab.net.management_links():
            if name == router:
                return str(raddr)
        raise KeyError(router)

    def router_url(self, router):
        return f"http://{self.router_address(router)}:{RPC_PORT}"

    def specs(self):
        """The ``NodeSpec`` of every node (members first)."""
        from ledger_client.ethereum import Account
        from ledger_client.poa_network import NodeSpec

        lab = self.lab
        n = lab.committee_n
        members = [member_name(i) for i in range(1, n + 1)]
        routers = [r.name for r in lab.topo.routers]
        out = []
        for i in range(1, n + 1):
            sealer = None
            if self.sealers == "one" and i == 1:
                sealer = Account.from_file(lab.parties.member(1, True))
            out.append(NodeSpec(member_name(i), host=str(lab.net.ledger_address()),
                                sealer=sealer,
                                peers=tuple(m for m in members if m != member_name(i)) +
                                tuple(routers),
                                netns=lab.net.ledger_ns, rpc_port=RPC_PORT + i - 1,
                                p2p_port=P2P_PORT + i - 1))
        owners = set()
        for r in lab.topo.routers:
            sealer = None
            if self.sealers == "operators" and r.owner not in owners:
                owners.add(r.owner)
                sealer = Account.from_file(lab.operator_key_path(r.name))
            out.append(NodeSpec(r.name, host=self.router_address(r.name), sealer=sealer,
                                peers=tuple(members), netns=lab.net.ns(r.name),
                                rpc_port=RPC_PORT, p2p_port=P2P_PORT))
        return out

    def network(self, funded=()):
        from ledger_client.poa_network import PoaNetwork
        return PoaNetwork(self.base_dir, self.specs(), funded=funded, period=PERIOD_S)

    def start(self, funded=(), timeout=180):
        """Start every node, wait until the chain grows on all of them. Returns the network."""
        net = self.network(funded)
        try:
            net.start(timeout=timeout, min_height=2)
        except BaseException:
            net.kill()
            raise
        return net

    @staticmethod
    def stop_pids(pids, timeout=10.0):
        """SIGTERM (the client closes its databases), SIGKILL after ``timeout``: the nodes
        recorded in the lab's state (by pid; only processes that are still the launcher)."""
        from .lab import _cmdline

        mine = [p for p in pids if p and pid_alive(p) and "poa_node.mjs" in _cmdline(p)]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in mine:
                try:
                    os.killpg(pid, sig)
                except (ProcessLookupError, PermissionError):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + timeout
            while any(pid_alive(p) for p in mine) and time.monotonic() < deadline:
                time.sleep(0.05)
            mine = [p for p in mine if pid_alive(p)]
            if not mine:
                return


def fund(led, source, targets, amount, timeout=120):
    """``amount`` wei from the account ``source`` to each address of ``targets``: EIP-1559
    transfers with a zero tip (``ethereum._fee_fields``: a tip breaks the EthereumJS client's
    Clique blocks), every receipt awaited."""
    from ledger_client.ethereum import _fee_fields

    w3 = led.w3
    nonce = w3.eth.get_transaction_count(source.address, "pending")
    chain_id = w3.eth.chain_id
    hashes = []
    for i, to in enumerate(targets):
        tx = {"to": to, "value": int(amount), "gas": 21_000, "nonce": nonce + i,
              "chainId": chain_id, **_fee_fields(w3)}
        hashes.append(w3.eth.send_raw_transaction(source.sign_transaction(tx).raw_transaction))
    for h in hashes:
        r = w3.eth.wait_for_transaction_receipt(h, timeout=timeout, poll_latency=0.1)
        if r["status"] != 1:
            raise RuntimeError(f"funding transfer {h.hex()} failed")
    return len(hashes)


def readers(lab):
    """{node name: a ``PoaNode`` that reads that running node (``head()``, ``block_hash(n)``,
    ``peer_count()``) from inside its namespace}, from the lab's state file."""
    from ledger_client.poa_network import PoaNode

    eth = lab._read_state().get("ethereum", {})
    out = {}
    urls = [(f"member{i}", u, lab.net.ledger_ns) for i, u in (eth.get("members") or {}).items()]
    urls += [(r, u, lab.net.ns(r)) for r, u in (eth.get("routers") or {}).items()]
    for name, url, ns in urls:
        host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
        out[name] = PoaNode(os.path.join(lab.state_dir, "chain", name), "-", "00" * 31 + "01",
                            host=host, port=int(port), netns=ns, name=name)
    return out


def one_chain(lab, depth=2):
    """(True, heads) when every node of the lab's chain answers and holds the same block
    ``depth`` below the lowest head; else (False, heads)."""
    nodes = readers(lab)
    heads = {name: n.head() for name, n in nodes.items()}
    if not heads or any(h is None for h in heads.values()):
        return False, heads
    low = max(0, min(h[0] for h in heads.values()) - depth)
    return len({n.block_hash(low) for n in nodes.values()}) == 1, heads
