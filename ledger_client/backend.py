"""The one interface every ledger backend implements (docs/ledger.md, "Backend interface"), and
``open_backend(spec)``: the one place that picks and opens a backend."""
import dataclasses
from typing import Optional, Protocol

from .types import SLA, Anchor, Dispute, Node


class Backend(Protocol):
    hash_name: str

    def register_node(self, node: Node, *, signer) -> None: ...
    def register_sla(self, sla: SLA, *, signer) -> None: ...
    def anchor(self, a: Anchor, *, signer) -> str: ...          # "anchored" | "exists"
    def get_anchor(self, node_id: int, batch_seq: int) -> Optional[Anchor]: ...
    def anchors(self, node_id: Optional[int] = None, from_seq: int = 0) -> list: ...
    def next_batch_seq(self, node_id: int) -> int: ...
    def get_node(self, node_id: int) -> Optional[Node]: ...
    def nodes(self) -> list: ...
    def get_sla(self, sla_id: int) -> Optional[SLA]: ...
    # the registered topology (governance only; idempotent): undirected links between nodes
    def register_link(self, a: int, b: int, *, signer) -> None: ...
    def retire_link(self, a: int, b: int, *, signer) -> None: ...
    def links(self) -> list: ...                                 # sorted (a, b) pairs, a < b
    def neighbours(self, node_id: int) -> list: ...              # sorted node ids
    def open_dispute(self, sla_id: int, from_ns: int, to_ns: int, *, signer) -> int: ...
    def record_evidence(self, dispute_id: int, evidence_digest: bytes, *, signer) -> None: ...
    def decide(self, dispute_id: int, verdict_digest: bytes, faulty, *, signer) -> None: ...
    def settle(self, dispute_id: int, *, signer) -> None: ...
    def get_dispute(self, dispute_id: int) -> Optional[Dispute]: ...


# -- opening a backend: the one place that picks one -------------------------------------------

BACKENDS = ("local", "ethereum")


class BackendUnavailable(ImportError):
    """The backend needs a package this installation does not have (the message says which)."""


@dataclasses.dataclass(frozen=True)
class BackendSpec:
    """Which ledger: ``local`` (``path``: its LMDB file) or ``ethereum`` (``url`` of a JSON-RPC
    node, ``contract``: the Beat contract's address, None before it is deployed)."""
    kind: str
    path: Optional[str] = None
    url: Optional[str] = None
    contract: Optional[str] = None

    def __post_init__(self):
        if self.kind not in BACKENDS:
            raise ValueError(f"ledger backend {self.kind!r} is not one of {', '.join(BACKENDS)}")
        if self.kind == "local" and not self.path:
            raise ValueError("ledger backend local: the ledger's path is missing")
        if self.kind == "ethereum" and not self.url:
            raise ValueError("ledger backend ethereum: the node's URL is missing")

    def __str__(self):
        if self.kind == "local":
            return f"local:{self.path}"
        return f"ethereum:{self.url}" + (f"#{self.contract}" if self.contract else "")

    @classmethod
    def parse(cls, text):
        """``local:PATH`` or ``ethereum:URL[#CONTRACT]`` (ValueError naming the text)."""
        scheme, _, rest = str(text).partition(":")
        if scheme == "local" and rest:
            return cls("local", path=rest)
        if scheme == "ethereum" and rest:
            url, _, contract = rest.partition("#")
            return cls("ethereum", url=url, contract=contract or None)
        raise ValueError(f"{text}: not local:PATH nor ethereum:URL#CONTRACT")


def open_backend(spec, *, hash_name=None, missing="error", governance_pubkey=None, **options):
    """The ledger ``spec`` names (a ``BackendSpec`` or its text), open.

    ``hash_name``: the domain's hash, checked against the ledger's; None takes the ledger's own
    (the local file's, the contract's). ``local`` only: ``missing`` says what a ledger file that
    does not exist gives: ``"error"`` (``NotFound`` naming the path), ``"create"`` (a new ledger
    with ``governance_pubkey`` as its governance) or ``"await"`` (an ``AwaitedLocalLedger`` that
    refuses anchors until the governance creates it; needs ``hash_name``). ``ethereum``:
    ``options`` go to ``EthereumLedger`` (timeouts); web3 is imported only here, and its absence is
    ``BackendUnavailable`` (pip install beat[ethereum])."""
    if not isinstance(spec, BackendSpec):
        spec = BackendSpec.parse(spec)
    if spec.kind == "local":
        import os

        from .errors import NotFound
        from .local import AwaitedLocalLedger, LocalLedger
        if not os.path.exists(spec.path):
            if missing == "error":
                raise NotFound(f"{spec.path}: no such ledger")
            if missing == "await":
                if hash_name is None:
                    raise ValueError(f"{spec.path}: an awaited ledger needs the domain's hash")
                return AwaitedLocalLedger(spec.path, hash_name)
            if missing != "create":
                raise ValueError(f"missing={missing!r}: not error, create nor await")
        return LocalLedger(spec.path, hash_name=hash_name, governance_pubkey=governance_pubkey,
                           **options)
    try:
        from .ethereum import EthereumLedger
    except ImportError as exc:
        raise BackendUnavailable(f'ledger backend "ethereum" needs web3 and eth-account, not '
                                 f"installed here (pip install 'beat[ethereum]'): {exc}") from None
    if spec.contract is None:
        raise ValueError(f"{spec}: the contract's address is missing (ethereum:URL#CONTRACT)")
    led = EthereumLedger(spec.url, spec.contract, hash_name or "sha3-256", **options)
    if hash_name is None:                 # the contract's own hash
        led.adopt_contract_hash()
    return led
