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

    def __post_init__(self):
        if not is_node_id(self.node_id):
            raise ValueError(f"node_id must be in 1..2^64-2, got {self.node_id}")
        if len(self.pubkey) != 32:
            raise ValueError(f"node {self.node_id}: pubkey must be 32 bytes, got {len(self.pubkey)}")
        if self.account is not None and len(self.account) != 20:
            raise ValueError(f"node {self.node_id}: account must be 20 bytes, got "
                             f"{len(self.account)}")


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

    def __post_init__(self):
        if len(self.src) != 16 or len(self.dst) != 16:
            raise ValueError(f"sla {self.sla_id}: src and dst must be 16 bytes")
        if not self.route or any(not is_node_id(n) for n in self.route):
            raise ValueError(f"sla {self.sla_id}: route must be a non-empty list of node ids, "
                             f"got {self.route!r}")
        if self.valid_from_ns > self.valid_to_ns:
            raise ValueError(f"sla {self.sla_id}: valid_from_ns after valid_to_ns")
        object.__setattr__(self, "route", tuple(self.route))

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
