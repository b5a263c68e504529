"""The lab's committee and money (issue 15; docs/lab.md, "The committee and the money").

``beat-lab up`` makes a committee of ``n`` member organisations (default three), each with an
Ed25519 key and an Ethereum account (``members/m1.ed25519``, ``members/m1.eth``, ... in the state
dir), the threshold ``k`` (default two), one key pair per operator (the topology's owners:
``operators/<owner>.ed25519|.eth``) and the tenant's (``tenant.ed25519|.eth``). Every governance
act of the set-up (a node with its operator, a link, the SLA with its price and penalty) is
proposed by member 1 and approved by member 2 (executed at k = 2); each operator then locks a
deposit for each of its routers.

The functions ``register``, ``fund``, ``open_dispute``, ``approve``, ``settle`` and ``view`` take
an open ledger (``ledger_client``'s local or ethereum backend) and a JSON-able job; ``run`` runs
one of them in-process (local) or inside the lab's ledger namespace (ethereum: the chain is
reachable only there) and returns its JSON-able result.
"""
import json
import os
import subprocess
import sys

__all__ = ["Money", "MONEY", "Parties", "run", "DEFAULT_MEMBERS", "DEFAULT_K"]

DEFAULT_MEMBERS = 3
DEFAULT_K = 2
ETH = 10 ** 18


class Money:
    """The lab's amounts, in the ledger's unit: the local stand-in for money ("units") or wei."""

    def __init__(self, unit, balance, deposit, price, penalty):
        self.unit, self.balance, self.deposit = unit, balance, deposit
        self.price, self.penalty = price, penalty

    def fmt(self, amount):
        if self.unit == "wei":
            return f"{amount} wei ({amount / ETH:.4f} ETH)"
        return f"{amount} {self.unit}"


MONEY = {
    # local: every operator and the tenant start with `balance` in the ledger's creation
    "local": Money("units", balance=10_000, deposit=500, price=1_000, penalty=100),
    # ethereum: accounts funded from the lab's deployer account after the chain started
    "ethereum": Money("wei", balance=10 * ETH, deposit=ETH // 2, price=ETH // 10,
                      penalty=ETH // 10),
}


class Parties:
    """The key files of the committee's members, the operators and the tenant in ``state_dir``."""

    def __init__(self, state_dir, n=DEFAULT_MEMBERS):
        self.state_dir, self.n = state_dir, n

    def member(self, i, ethereum=False):
        """Member ``i``'s (1-based) key file: Ed25519 (signs on local) or Ethereum (.eth)."""
        return os.path.join(self.state_dir, "members", f"m{i}.{'eth' if ethereum else 'ed25519'}")

    def operator(self, owner, ethereum=False):
        return os.path.join(self.state_dir, "operators",
                            f"{owner}.{'eth' if ethereum else 'ed25519'}")

    def tenant(self, ethereum=False):
        return os.path.join(self.state_dir, f"tenant.{'eth' if ethereum else 'ed25519'}")

    def make(self, owners):
        """Write every key file (both kinds for everyone), mode 0600."""
        from ledger_client.ethereum import Account
        from ledger_client.keys import DeviceKey

        for d in ("members", "operators"):
            os.makedirs(os.path.join(self.state_dir, d), mode=0o700, exist_ok=True)
        paths = ([(self.member(i), self.member(i, True)) for i in range(1, self.n + 1)] +
                 [(self.operator(o), self.operator(o, True)) for o in sorted(set(owners))] +
                 [(self.tenant(), self.tenant(True))])
        for ed, eth in paths:
            DeviceKey.generate().save(ed, overwrite=True)
            Account.generate().save(eth)

    def signer(self, path):
        """The signer of a key file (.eth: an Account; else an Ed25519 DeviceKey)."""
        if path.endswith(".eth"):
            from ledger_client.ethereum import Account
            return Account.from_file(path)
        from ledger_client.keys import DeviceKey
        return DeviceKey.load(path)

    def committee(self, k, ethereum=False):
        from ledger_client.ethereum import Account
        from ledger_client.keys import DeviceKey
        from ledger_client.types import Committee, Member

        members = [Member(DeviceKey.load(self.member(i)).public,
                          Account.from_file(self.member(i, True)).address_bytes)
                   for i in range(1, self.n + 1)]
        return Committee(tuple(members), k)

    def identity(self, path):
        """What the ledger names a party by: the Ed25519 public key (hex) or the address."""
        s = self.signer(path)
        return s.address if path.endswith(".eth") else s.public.hex()


# -- the jobs: each takes an open ledger and a JSON-able job, returns a JSON-able result ----------

def _load(path):
    return Parties(os.path.dirname(path)).signer(path)


def register(led, job):
    """Every node (with its operator), link and the SLA: proposed by ``job["proposer"]`` and
    approved by each of ``job["approvers"]`` (key files) until executed; then each operator's
    deposit for each of its nodes. Returns {"proposals": [[id, act, approvals, state], ...]}."""
    from ledger_client.types import SLA, Node

    proposer = _load(job["proposer"])
    approvers = [_load(p) for p in job["approvers"]]
    ethereum = job["proposer"].endswith(".eth")
    done = []

    def through_committee(result):
        # k = 1: done at once (None); else the proposal, approved until it executes
        if result is None:
            return
        for a in approvers:
            if result.state == "executed":
                break
            result = led.approve(result.proposal_id, signer=a)
        done.append([result.proposal_id, result.act, len(result.approvals), result.state])
        if result.state != "executed":
            raise RuntimeError(f"proposal {result.proposal_id} ({result.act}): "
                               f"{result.line()}, {result.state}")

    for node_id, owner, pub, account, operator in job["nodes"]:
        op = _load(operator)
        op_id = op.address_bytes if ethereum else op.public
        through_committee(led.register_node(
            Node(node_id, owner, bytes.fromhex(pub),
                 bytes.fromhex(account[2:]) if account else None, op_id), signer=proposer))
    for a, b in job["links"]:
        through_committee(led.register_link(a, b, signer=proposer))
    s = job["sla"]
    sla = SLA(s["sla_id"], s["tenant"], bytes.fromhex(s["src"]), bytes.fromhex(s["dst"]),
              tuple(s["route"]), max_loss_ppm=s["max_loss_ppm"], max_delay_us=s["max_delay_us"],
              loss_budget_ppm=s["loss_budget_ppm"],
              penalty_per_violation=s["penalty_per_violation"], price=s["price"])
    tenant = _load(s["tenant_key"])
    if ethereum:
        through_committee(led.register_sla(sla, signer=proposer, tenant_account=tenant))
    else:
        through_committee(led.register_sla(sla, signer=proposer, tenant_pubkey=tenant.public))
    for node_id, operator, amount in job["deposits"]:
        led.deposit(node_id, amount, signer=_load(operator))
    return {"proposals": done}


def fund(led, job):
    """ethereum: ``job["amount"]`` wei from the key file ``job["from"]`` to each of
    ``job["to"]`` (key files), every receipt awaited."""
    src = _load(job["from"])
    w3 = led.w3
    nonce = w3.eth.get_transaction_count(src.address, "pending")
    hashes = []
    for i, path in enumerate(job["to"]):
        tx = {"to": _load(path).address, "value": int(job["amount"]), "gas": 21_000,
              "gasPrice": w3.eth.gas_price, "nonce": nonce + i, "chainId": w3.eth.chain_id}
        hashes.append(w3.eth.send_raw_transaction(src.sign_transaction(tx).raw_transaction))
    for h in hashes:
        r = w3.eth.wait_for_transaction_receipt(h, timeout=120, poll_latency=0.05)
        if r["status"] != 1:
            raise RuntimeError(f"funding transfer {h.hex()} failed")
    return {"funded": len(hashes)}


def open_dispute(led, job):
    """The tenant (key file ``job["tenant"]``) opens a dispute on its SLA."""
    did = led.open_dispute(job["sla_id"], job["from_ns"], job["to_ns"],
                           signer=_load(job["tenant"]))
    return {"dispute_id": did}


def approve(led, job):
    """A member's approval of a decision's content (the lab's tests: a dissenting member)."""
    d = led.approve_decision(job["dispute_id"], bytes.fromhex(job["evidence_digest"]),
                             bytes.fromhex(job["verdict_digest"]), job["faulty"],
                             signer=_load(job["member"]))
    return {"state": d.state}


def settle(led, job):
    """A decided dispute settled by a member (a committee of one: decide and settle are two
    acts; with k > 1 the k-th approval settles)."""
    led.settle(job["dispute_id"], signer=_load(job["member"]))
    return {"state": led.get_dispute(job["dispute_id"]).state}


def view(led, job):
    """What the demo shows and the tests check: the balances of ``job["who"]`` ({name: key
    file}), every node's operator (key hex / address), the deposits of ``job["nodes"]``, the
    dispute ``job["dispute_id"]`` (if any) with its
    approvals, the open proposals, the committee."""
    ethereum = any(p.endswith(".eth") for p in job.get("who", {}).values())
    out = {"balances": {}, "deposits": {}, "pending": [], "dispute": None, "votes": []}
    for name, path in job.get("who", {}).items():
        s = _load(path)
        out["balances"][name] = led.balance(s.address if ethereum else s.public)
    out["operators"] = {str(n.node_id): (("0x" if ethereum else "") + n.operator.hex()
                                         if n.operator else None) for n in led.nodes()}
    for node_id in job.get("nodes", []):
        d = led.deposit_of(node_id)
        out["deposits"][str(node_id)] = {"amount": d.amount, "debt": d.debt,
                                         "frozen_by": d.frozen_by}
    if ethereum:
        out["contract_balance"] = led.balance(led.address)
    out["pending"] = [[p.proposal_id, p.act, len(p.approvals), p.k] for p in led.pending()]
    c = led.committee()
    out["committee"] = {"n": len(c.members), "k": c.k, "epoch": c.epoch,
                        "members": [m.name() for m in c.members]}
    did = job.get("dispute_id")
    if did is not None:
        d = led.get_dispute(did)
        if d is not None:
            out["dispute"] = {"dispute_id": d.dispute_id, "state": d.state,
                              "faulty": list(d.faulty), "penalty": d.penalty,
                              "evidence_digest": (d.evidence_digest or b"").hex(),
                              "verdict_digest": (d.verdict_digest or b"").hex()}
            out["votes"] = [{"member": v.member, "verdict_digest": v.verdict_digest.hex(),
                             "evidence_digest": v.evidence_digest.hex(), "dissent": v.dissent}
                            for v in led.dispute_votes(did)]
    return out


JOBS = {"register": register, "fund": fund, "open_dispute": open_dispute, "approve": approve,
        "settle": settle, "view": view}


def _open(spec):
    """The ledger, as a context manager (the ethereum backend has nothing to close)."""
    import contextlib

    from ledger_client.backend import open_backend
    led = open_backend(spec)
    return led if hasattr(led, "__enter__") else contextlib.nullcontext(led)


def run(lab, name, job, timeout=300):
    """The job ``name`` on the lab's ledger: in-process on local, in the ledger namespace on
    ethereum. Raises the lab's error naming the job and what the ledger said."""
    from .lab import IMPORT_ROOT, LabError

    if lab.ledger_spec is None:
        raise LabError("the lab runs without a ledger (--ledger none): no committee")
    if lab.ledger != "ethereum":
        try:
            with _open(lab.ledger_spec) as led:
                return JOBS[name](led, job)
        except Exception as exc:  # noqa: BLE001 (the ledger's refusal, named)
            raise LabError(f"{name} on {lab.ledger_spec}: {type(exc).__name__}: {exc}") from None
    p = subprocess.run(lab.net_ledger_argv([lab.python, "-m", "beat_lab.committee", name,
                                            lab.ledger_spec]),
                       input=json.dumps(job), capture_output=True, text=True, cwd=IMPORT_ROOT,
                       env=lab._env(), timeout=timeout)
    if p.returncode != 0:
        raise LabError(f"{name} on {lab.ledger_spec}: "
                       f"{(p.stderr.strip().splitlines() or ['exit %d' % p.returncode])[-1]}")
    return json.loads(p.stdout)


def main(argv=None):
    """``python -m beat_lab.committee JOB SPEC`` < job.json: one job (inside the ledger
    namespace); prints its result as JSON, or the error on stderr (exit 1)."""
    argv = sys.argv[1:] if argv is None else argv
    name, spec = argv
    job = json.load(sys.stdin)
    try:
        with _open(spec) as led:
            out = JOBS[name](led, job)
    except Exception as exc:  # noqa: BLE001
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
