"""The ledger's records (docs/ledger.md, "Data types"): nodes, SLAs, anchors, disputes."""
import dataclasses
import json
from typing import Optional

from beat_common.spec import is_node_id

DISPUTE_STATES = ("opened", "evidence", "decided", "settled")


@dataclasses.dataclass(frozen=True)
class Node:
    node_id: int
    owner: str
    pubkey: bytes                      # Ed25519 public key, 32 bytes
    account: Optional[bytes] = None    # 20-byte Ethereum address (ethereum backend)
    # who locks the node's deposit and is paid its withdrawals: an account (20 bytes) on
    # ethereum, an Ed25519 public key (32 bytes) on local; None: no operator (no deposit)
    operator: Optional[bytes] = None

    def __post_init__(self):
        if not is_node_id(self.node_id):
            raise ValueError(f"node_id must be in 1..2^64-2, got {self.node_id}")
        if len(self.pubkey) != 32:
            raise ValueError(f"node {self.node_id}: pubkey must be 32 bytes, got {len(self.pubkey)}")
        if self.account is not None and len(self.account) != 20:
            raise ValueError(f"node {self.node_id}: account must be 20 bytes, got "
                             f"{len(self.account)}")
        if self.operator is not None and len(self.operator) not in (20, 32):
            raise ValueError(f"node {self.node_id}: operator must be an account (20 bytes) or an "
                             f"Ed25519 key (32 bytes), got {len(self.operator)} bytes")


class Terms(dict):
    """An SLA's QM-SLA terms (name -> integer), read-only as the SLA itself: a ledger hands the
    same decoded SLA to every caller (LocalLedger's cache), so an edit by one would change the
    others' SLA. Edits raise TypeError; copies are the object itself."""

    def _read_only(self, *args, **kw):
        raise TypeError("an SLA's qm_terms are read-only (make a new SLA with other terms)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = \
        _read_only

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        return (Terms, (dict(self),))


@dataclasses.dataclass(frozen=True)
class SLA:
    sla_id: int
    tenant: str
    src: bytes                         # 16-byte addresses (IPv4-mapped for IPv4), as the SPEC
    dst: bytes
    route: tuple                       # the agreed route: node_ids, first to last
    max_loss_ppm: int = 0
    max_delay_us: int = 0
    loss_budget_ppm: int = 0
    penalty_per_violation: int = 0
    valid_from_ns: int = 0
    valid_to_ns: int = (1 << 64) - 1
    qm_terms: dict = dataclasses.field(default_factory=dict)   # QM-SLA terms: name -> integer
    price: int = 0                     # what the tenant pays for the service (recorded)

    def __post_init__(self):
        if len(self.src) != 16 or len(self.dst) != 16:
            raise ValueError(f"sla {self.sla_id}: src and dst must be 16 bytes")
        if not self.route or any(not is_node_id(n) for n in self.route):
            raise ValueError(f"sla {self.sla_id}: route must be a non-empty list of node ids, "
                             f"got {self.route!r}")
        if self.valid_from_ns > self.valid_to_ns:
            raise ValueError(f"sla {self.sla_id}: valid_from_ns after valid_to_ns")
        object.__setattr__(self, "route", tuple(self.route))
        object.__setattr__(self, "qm_terms", Terms(self.qm_terms))

    def qm_json(self):
        """QM-SLA terms in their canonical form (sorted keys, no spaces)."""
        return json.dumps(self.qm_terms, sort_keys=True, separators=(",", ":"))

    def __hash__(self):
        return hash((self.sla_id, self.tenant, self.src, self.dst, self.route))


@dataclasses.dataclass(frozen=True)
class Anchor:
    node_id: int
    batch_seq: int
    tree_size: int
    root: bytes                        # 32 bytes
    first_t_ns: int
    last_t_ns: int
    ref: Optional[str] = None          # where it lives: local entry number, or tx hash@block
    # when the ledger took it (ns since the epoch): the local ledger's clock at the write, the
    # block's timestamp on ethereum; None when the ledger does not say (written before it did)
    ledger_t_ns: Optional[int] = dataclasses.field(default=None, compare=False)

    def content(self):
        """What idempotency compares: the SPEC's anchor tuple, without where it landed."""
        return (self.node_id, self.batch_seq, self.tree_size, self.root, self.first_t_ns,
                self.last_t_ns)


@dataclasses.dataclass(frozen=True)
class Dispute:
    dispute_id: int
    sla_id: int
    from_ns: int
    to_ns: int
    state: str = "opened"
    evidence_digest: Optional[bytes] = None
    verdict_digest: Optional[bytes] = None
    faulty: tuple = ()
    penalty: int = 0


# -- the committee (docs/ledger.md, "The committee") ---------------------------------------------

ACTS = ("register_node", "retire_node", "register_sla", "register_link", "retire_link",
        "add_member", "remove_member", "set_threshold")
DEFAULT_TTL_S = 7 * 24 * 3600          # a proposal's lifetime
DEFAULT_NOTICE_S = 14 * 24 * 3600      # a deposit's withdrawal notice


@dataclasses.dataclass(frozen=True)
class Member:
    """A member organisation of the committee: its Ed25519 key (signs on local) and its Ethereum
    account (signs on ethereum); each backend keeps the other as data (None when not given)."""
    pubkey: Optional[bytes] = None
    account: Optional[bytes] = None

    def __post_init__(self):
        if self.pubkey is not None and len(self.pubkey) != 32:
            raise ValueError(f"member: pubkey must be 32 bytes, got {len(self.pubkey)}")
        if self.account is not None and len(self.account) != 20:
            raise ValueError(f"member: account must be 20 bytes, got {len(self.account)}")
        if self.pubkey is None and self.account is None:
            raise ValueError("member: needs a pubkey or an account")

    def name(self):
        """How messages and beatctl name the member: its account (0x...) or key (hex)."""
        if self.account is not None:
            return "0x" + self.account.hex()
        return self.pubkey.hex()


@dataclasses.dataclass(frozen=True)
class Committee:
    members: tuple                 # Member, in order of admission
    k: int                         # approvals needed, 1 <= k <= len(members)
    epoch: int = 0                 # bumped by every membership or threshold change
    ttl_s: int = DEFAULT_TTL_S     # a proposal expires ttl_s after it was made

    def __post_init__(self):
        object.__setattr__(self, "members", tuple(self.members))
        if not 1 <= self.k <= len(self.members):
            raise ValueError(f"committee: k = {self.k} is not in 1..n = {len(self.members)}")
        if self.ttl_s <= 0:
            raise ValueError(f"committee: the proposal ttl must be > 0 s, got {self.ttl_s}")


@dataclasses.dataclass(frozen=True)
class Proposal:
    proposal_id: int
    act: str                       # one of ACTS
    args: dict                     # the act's arguments (JSON-like)
    epoch: int
    created_ns: int
    expires_ns: int
    approvals: tuple               # the approving members' names (Member.name()), in order
    state: str                     # "open", "executed", "expired" or "stale" (an older epoch)
    k: int = 0                     # the committee's threshold when read

    def line(self):
        if self.state == "executed":      # k may have changed since (a threshold change)
            return f"proposal {self.proposal_id}: {len(self.approvals)} approvals"
        return f"proposal {self.proposal_id}: {len(self.approvals)} of {self.k} approvals"


@dataclasses.dataclass(frozen=True)
class Vote:
    """A member's approval of a dispute decision; ``dissent`` when its content is not the one
    decided (known once the decision executed)."""
    member: str                    # Member.name()
    evidence_digest: bytes
    verdict_digest: bytes
    epoch: int
    dissent: bool = False


# -- the money (docs/ledger.md, "Settlement") ------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Deposit:
    node_id: int
    amount: int                    # locked now
    due_ns: Optional[int]          # a withdrawal requested: when it may be made; None: none
    debt: int                      # unpaid debts in total
    frozen_by: Optional[int]       # the open dispute that freezes it now, None: none
    lapses_ns: Optional[int] = None  # the request lapses then (due + 2 ttl): a pending
    #                                withdrawal, visible to the tenants, in [due_ns, lapses_ns)


@dataclasses.dataclass(frozen=True)
class Debt:
    node_id: int
    tenant: object                 # the tenant's account ("0x...") or Ed25519 key (bytes)
    amount: int
    dispute_id: int
