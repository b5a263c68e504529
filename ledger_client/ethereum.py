"""The `ethereum` backend (docs/ledger.md): BEAT's Beat contract over JSON-RPC with web3.py.

Transactions are built and signed here (raw transactions: the node holds no keys), with nonces
kept per account (refreshed from the chain on 'nonce too low' and after any doubtful send), gas
estimated (a revert shows up there, before anything is spent) and receipts awaited with a
timeout. The PoA middleware (ExtraDataToPOAMiddleware) is injected, for clique/QBFT chains.

Errors: the node unreachable or too slow -> `Unavailable` (naming the URL; the outbox retries);
the contract's custom errors -> `PermissionDenied`, `ConflictError`, `OrderError`, `NotFound` or
`LedgerError` (bad arguments), with the contract's reason and the operation, ids and signer.
"""
import json
import os
import threading
import time

try:
    import eth_abi
    import requests
    from eth_account import Account as _EthAccount
    from eth_utils import keccak, to_checksum_address
    from web3 import HTTPProvider, Web3
    from web3.exceptions import (ContractCustomError, ContractLogicError, ContractPanicError,
                                 TimeExhausted, Web3RPCError)
    from web3.middleware import ExtraDataToPOAMiddleware
except ImportError as _exc:    # the router install without the extra: say which one
    raise ImportError(f"the ethereum ledger backend needs web3 and its eth-* packages, not "
                      f"installed here (no module {_exc.name or _exc!s}): pip install "
                      f"'beat[ethereum]'", name=_exc.name) from _exc

from .errors import (ConflictError, LedgerError, NotFound, OrderError, PermissionDenied,
                     Unavailable)
from .keys import WeakKeyError, check_public
from .types import (ACTS, DEFAULT_NOTICE_S, DEFAULT_TTL_S, DISPUTE_STATES, SLA, Anchor, Committee,
                    Debt, Deposit, Dispute, Member, Node, Proposal, Vote)

ARTIFACT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "contracts", "Beat.json")
ZERO_ADDRESS = "0x" + "00" * 20
# the most a transaction of this client pays per gas, unless configured (beatd [ledger]
# max_fee_gwei): a private ledger's base fee is far below it; a node that asks more for a
# replacement (or a fee market gone wild) meets an error naming it, not an open purse
DEFAULT_MAX_FEE_WEI = 100 * 10 ** 9
# a replacement of a pending transaction pays this much more (percent) than it, fee and tip: the
# pools' rule (geth, the EthereumJS client and ganache want 10 %), plus a margin
REPLACEMENT_BUMP_PCT = 12
LOG_WINDOW = 2000          # blocks per eth_getLogs request (the EthereumJS client refuses > 2,500)
LINK_ACTIVE, LINK_RETIRED = 1, 2        # the contract's linkState
# the contract's ACT_* codes (1-based, in types.ACTS order) and their argument types
ACT_CODES = {name: i + 1 for i, name in enumerate(ACTS)}
SLA_ABI = ("(uint64,string,address,bytes16,bytes16,uint64[],uint64,uint64,uint64,uint256,uint64,"
           "uint64,string,uint256)")
ACT_TYPES = {"register_node": ["uint64", "string", "bytes32", "address", "address"],
             "retire_node": ["uint64"], "register_sla": [SLA_ABI],
             "register_link": ["uint64", "uint64"], "retire_link": ["uint64", "uint64"],
             "add_member": ["address", "bytes32"], "remove_member": ["address"],
             "set_threshold": ["uint64"]}

# The contract's custom errors -> the ledger's exceptions.
ERROR_CLASSES = {
    "NotGovernance": PermissionDenied,
    "NotNodeAccount": PermissionDenied,
    "NotTenantOrGovernance": PermissionDenied,
    "NodeExists": ConflictError,
    "SLAExists": ConflictError,
    "AnchorConflict": ConflictError,
    "BatchSeqGap": OrderError,
    "WrongDisputeState": OrderError,
    "UnknownSLA": NotFound,
    "UnknownDispute": NotFound,
    "UnknownNode": NotFound,
    "UnknownLink": NotFound,
    "InvalidNode": LedgerError,
    "InvalidLink": LedgerError,
    "InvalidSLA": LedgerError,
    "InvalidRange": LedgerError,
    "FaultyNotOnRoute": LedgerError,
    "FaultyDuplicate": LedgerError,
    "NeedsProposal": PermissionDenied,
    "UnknownProposal": NotFound,
    "ProposalExpired": OrderError,
    "ProposalStale": OrderError,
    "ProposalDone": OrderError,
    "UnknownAct": LedgerError,
    "InvalidCommittee": LedgerError,
    "DecisionConflict": ConflictError,
    "NotOperator": PermissionDenied,
    "WithdrawalNotDue": OrderError,
    "DepositFrozen": OrderError,
    "DepositInDebt": OrderError,
    "Reentrant": LedgerError,
}

_artifact_cache = None


def artifact():
    """Beat.json (abi, bytecode, ...), as compiled by contracts/compile.py."""
    global _artifact_cache
    if _artifact_cache is None:
        with open(ARTIFACT_PATH) as f:
            _artifact_cache = json.load(f)
    return _artifact_cache


def _error_table(abi):
    table = {}
    for entry in abi:
        if entry.get("type") == "error":
            types = [i["type"] for i in entry["inputs"]]
            selector = keccak(text=f"{entry['name']}({','.join(types)})")[:4]
            table[selector] = (entry["name"], [i["name"] for i in entry["inputs"]], types)
    return table


def _fmt(value):
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


def decode_revert(data, abi=None):
    """Revert data (hex str, bytes, or a node's error dict) -> (error name, {arg: value}) or None."""
    if isinstance(data, dict):   # ganache: {"result": "0x...", ...}; others: {"data": "0x..."}
        data = data.get("result") or data.get("data")
    if isinstance(data, str):
        try:
            data = bytes.fromhex(data[2:] if data.startswith("0x") else data)
        except ValueError:
            return None
    if not isinstance(data, (bytes, bytearray)) or len(data) < 4:
        return None
    entry = _error_table(abi or artifact()["abi"]).get(bytes(data[:4]))
    if entry is None:
        return None
    name, names, types = entry
    try:
        values = eth_abi.decode(types, bytes(data[4:]))
    except Exception:        # noqa: BLE001 - malformed revert data: report it undecoded
        return None
    values = [to_checksum_address(v) if t == "address" else v for t, v in zip(types, values)]
    return name, dict(zip(names, values))


def revert_exception(exc, op):
    """A web3 contract error -> the ledger exception, with the contract's reason."""
    decoded = decode_revert(getattr(exc, "data", None))
    if decoded is None:
        return LedgerError(f"{op}: reverted: {exc}")
    name, args = decoded
    detail = ", ".join(f"{k}={_fmt(v)}" for k, v in args.items())
    cls = ERROR_CLASSES.get(name, LedgerError)
    e = cls(f"{op}: refused by the contract: {name}({detail})")
    e.reason = name
    e.args_decoded = args
    return e


class Account:
    """An Ethereum signer: a secp256k1 private key and its address."""

    def __init__(self, private_key):
        if isinstance(private_key, str):
            private_key = bytes.fromhex(private_key[2:] if private_key.startswith("0x")
                                        else private_key)
        if len(private_key) != 32:
            raise ValueError("an Ethereum private key is 32 bytes")
        self._local = _EthAccount.from_key(private_key)
        self.address = self._local.address                 # checksummed "0x..."
        self.address_bytes = bytes.fromhex(self.address[2:])

    @classmethod
    def generate(cls):
        return cls(os.urandom(32))

    @classmethod
    def from_file(cls, path):
        """A key file: the private key in hex (as `beatd keygen --ethereum` writes device.eth)."""
        with open(path) as f:
            return cls(f.read().strip())

    def save(self, path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.private_key_hex() + "\n")

    def private_key_hex(self):
        return "0x" + bytes(self._local.key).hex()

    def sign_transaction(self, tx):
        return self._local.sign_transaction(tx)

    def __repr__(self):
        return f"Account({self.address})"


# a node answering from a head block it has not executed yet (the EthereumJS client just after a
# new block or a restart): the same as a node that cannot answer now; ask again later
_NOT_READY = ("not found in db", "state trie does not contain state root")


class _Provider(HTTPProvider):
    """JSON-RPC over HTTP, asking again (up to ``NOT_READY_TRIES`` times, 0.2 s apart) when the
    node answers that it is not ready (``_NOT_READY``: the EthereumJS client answers so for a
    moment after each new block, while it executes it). A request it refused that way did
    nothing (no transaction was taken), so asking again is safe. Still not ready after that:
    the error goes to the caller (``Unavailable``)."""

    NOT_READY_TRIES = 8

    def make_request(self, method, params):
        for attempt in range(self.NOT_READY_TRIES):
            response = super().make_request(method, params)
            err = response.get("error") if isinstance(response, dict) else None
            msg = str(err.get("message", "")).lower() if isinstance(err, dict) else ""
            if not any(m in msg for m in _NOT_READY) or attempt == self.NOT_READY_TRIES - 1:
                return response
            time.sleep(0.2)
        return response


def _is_connection_error(exc):
    if isinstance(exc, Web3RPCError) and any(m in str(exc).lower() for m in _NOT_READY):
        return True
    return isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                            ConnectionError, TimeoutError, OSError))


class EthereumLedger:
    """The Backend over the Beat contract at `contract_address` on the node at `url`."""

    # a replacement refused as underpriced again (another node's pool, a fee that moved): raised
    # again at most this many times in one send; past that, ``Unavailable`` (the caller retries)
    MAX_REPLACEMENTS = 4

    def __init__(self, url, contract_address, hash_name, timeout=10.0, receipt_timeout=None,
                 poll_latency=0.05, gas_margin=1.25, confirmations=0, priority_fee_wei=0,
                 max_fee_per_gas_wei=DEFAULT_MAX_FEE_WEI):
        if not isinstance(confirmations, int) or isinstance(confirmations, bool) \
                or confirmations < 0:
            raise ValueError(f"confirmations: {confirmations!r} must be a whole number of blocks "
                             ">= 0 (0: the chain's blocks are final, as QBFT or a dev chain)")
        self.confirmations = confirmations
        self.priority_fee_wei = int(priority_fee_wei)
        if not isinstance(max_fee_per_gas_wei, int) or isinstance(max_fee_per_gas_wei, bool) \
                or max_fee_per_gas_wei <= 0:
            raise ValueError(f"max_fee_per_gas_wei: {max_fee_per_gas_wei!r} must be a whole "
                             "number of wei > 0 (the most this signer pays per gas)")
        self.max_fee_per_gas_wei = max_fee_per_gas_wei
        self.url = url
        self.hash_name = hash_name
        self.timeout = float(timeout)
        self.receipt_timeout = float(receipt_timeout if receipt_timeout is not None else 3 * timeout)
        self.poll_latency = poll_latency
        self.gas_margin = gas_margin
        # No retries inside web3: the outbox retries, and an unreachable node must fail fast.
        self.w3 = Web3(_Provider(url, request_kwargs={"timeout": self.timeout},
                                    exception_retry_configuration=None))
        self.w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
        self.address = to_checksum_address(contract_address)
        self.contract = self.w3.eth.contract(address=self.address, abi=artifact()["abi"])
        self._lock = threading.RLock()
        self._nonces = {}
        self._sent_fees = {}      # {(address, nonce): the fee fields last sent with that nonce}
        self._chain_id = None
        self._checked = False
        self._governance = None
        self._deployed_at = None

    def adopt_contract_hash(self):
        """Take the contract's own domain hash (LedgerError when no contract is there)."""
        if not self._rpc("open", lambda: self.w3.eth.get_code(self.address)):
            raise LedgerError(f"open: no contract at {self.address} on {self.url}")
        self.hash_name = self._rpc("open", self.contract.functions.hashName().call)
        return self.hash_name

    # ------------------------------------------------------------------ plumbing
    def _unavailable(self, op, exc):
        return Unavailable(f"{op}: the ledger at {self.url} is unreachable: "
                           f"{type(exc).__name__}: {exc}")

    def _rpc(self, op, fn):
        """Run fn() (JSON-RPC reads), mapping transport failures and reverts."""
        try:
            return fn()
        except (ContractCustomError, ContractLogicError, ContractPanicError) as exc:
            raise revert_exception(exc, op) from exc
        except LedgerError:
            raise
        except Exception as exc:   # noqa: BLE001
            if _is_connection_error(exc):
                raise self._unavailable(op, exc) from exc
            raise

    def _ensure(self, op):
        if self._checked:
            return
        def check():
            code = self.w3.eth.get_code(self.address)
            if not code:
                raise LedgerError(f"{op}: no contract at {self.address} on {self.url}")
            name = self.contract.functions.hashName().call()
            if name != self.hash_name:
                raise LedgerError(f"{op}: the contract at {self.address} uses hash {name!r}, "
                                  f"not {self.hash_name!r}")
            self._governance = self.contract.functions.governance().call()
            self._deployed_at = self.contract.functions.deployedAt().call()
            self._chain_id = self.w3.eth.chain_id
        self._rpc(op, check)
        self._checked = True

    def _call(self, op, fn):
        self._ensure(op)
        return self._rpc(op, fn.call)

    @property
    def governance(self):
        self._ensure("governance")
        return self._governance

    def _next_nonce(self, address):
        n = self._nonces.get(address)
        if n is None:
            n = self.w3.eth.get_transaction_count(address, "pending")
        return n

    def _remember_fees(self, address, nonce, fees):
        """The fees sent with (address, nonce), for a later replacement (the last 16 nonces)."""
        self._sent_fees[(address, nonce)] = dict(fees)
        for key in [k for k in self._sent_fees if k[0] == address and k[1] < nonce - 16]:
            del self._sent_fees[key]

    def _check_ceiling(self, op, fees, nonce):
        """``Unavailable`` naming the ceiling when ``fees`` go past ``max_fee_per_gas_wei`` (the
        ledger's fees, or a node asking a replacement fee that high: nothing is sent)."""
        fee = _fee_of(fees)
        if fee > self.max_fee_per_gas_wei:
            what = (f"replacing the pending transaction with nonce {nonce} needs a fee of "
                    f"{fee} wei/gas" if nonce is not None else
                    f"the chain's fee is {fee} wei/gas now")
            raise Unavailable(f"{op}: {what} on {self.url}, above the ceiling of "
                              f"{self.max_fee_per_gas_wei} wei/gas (beatd [ledger] max_fee_gwei, "
                              f"EthereumLedger max_fee_per_gas_wei): not sent; raise the ceiling "
                              f"or wait for the pending transaction to land")

    def _transact(self, op, fn, signer, wait_depth=True):
        """Estimate, sign, send, await the receipt; returns the receipt (status 1). With
        ``confirmations`` > 0 (and ``wait_depth``) it also waits until the transaction is that many
        blocks deep (a decision counts then); reorganised away meanwhile: ``Unavailable`` (the
        caller sends it again; every operation is idempotent)."""
        self._ensure(op)
        op = f"{op} by {signer.address}"
        with self._lock:
            try:
                gas = fn.estimate_gas({"from": signer.address})
            except (ContractCustomError, ContractLogicError, ContractPanicError) as exc:
                raise revert_exception(exc, op) from exc
            except Exception as exc:   # noqa: BLE001
                if _is_connection_error(exc):
                    raise self._unavailable(op, exc) from exc
                raise
            fees = None
            replacements = 0
            attempt = 0
            while True:
                try:
                    if fees is None:
                        fees = _fee_fields(self.w3, self.priority_fee_wei)
                        self._check_ceiling(op, fees, None)
                    nonce = self._next_nonce(signer.address)
                    tx = fn.build_transaction({
                        "from": signer.address, "nonce": nonce, "chainId": self._chain_id,
                        "gas": int(gas * self.gas_margin) + 10_000, **fees})
                    signed = signer.sign_transaction(tx)
                    tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
                    self._nonces[signer.address] = nonce + 1
                    self._remember_fees(signer.address, nonce, fees)
                    break
                except Web3RPCError as exc:
                    msg = str(exc).lower()
                    self._nonces.pop(signer.address, None)
                    if _is_connection_error(exc):     # the node is not ready: later
                        raise self._unavailable(op, exc) from exc
                    if _is_underpriced(msg):
                        # a transaction of ours with this nonce waits in the node's pool (sent
                        # before at a higher fee, or held by a node that cannot seal it now):
                        # replace it, the same nonce at a fee raised past the pool's bump
                        replacements += 1
                        if replacements > self.MAX_REPLACEMENTS:
                            raise Unavailable(
                                f"{op}: the node at {self.url} still refuses the replacement of "
                                f"the transaction with nonce {nonce} after "
                                f"{self.MAX_REPLACEMENTS} raises of its fee (to "
                                f"{_fee_of(fees)} wei/gas): {exc}") from exc
                        fees = _raised_fees(fees, self._sent_fees.get((signer.address, nonce)),
                                            str(exc))
                        self._check_ceiling(op, fees, nonce)
                        self._nonces[signer.address] = nonce     # the same nonce again
                        continue
                    if "already known" in msg or "already in the txpool" in msg:
                        # this very transaction is pending there (sent before an answer was
                        # lost): wait for its receipt like any other
                        tx_hash = signed.hash
                        self._nonces[signer.address] = nonce + 1
                        self._remember_fees(signer.address, nonce, fees)
                        break
                    # "nonce too low" (geth), "the tx doesn't have the correct nonce" (ganache)
                    attempt += 1
                    if "nonce" in msg and attempt < 3:
                        continue     # refresh the nonce from the chain and sign again
                    raise LedgerError(f"{op}: the node refused the transaction: {exc}") from exc
                except Exception as exc:   # noqa: BLE001
                    self._nonces.pop(signer.address, None)   # did it get there? ask next time
                    if _is_connection_error(exc):
                        raise self._unavailable(op, exc) from exc
                    raise
        try:
            receipt = self.w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=self.receipt_timeout, poll_latency=self.poll_latency)
        except TimeExhausted as exc:
            with self._lock:
                self._nonces.pop(signer.address, None)
            raise Unavailable(f"{op}: no receipt for {tx_hash.hex()} from {self.url} within "
                              f"{self.receipt_timeout:g}s") from exc
        except Exception as exc:   # noqa: BLE001
            if _is_connection_error(exc):
                with self._lock:
                    self._nonces.pop(signer.address, None)
                raise self._unavailable(op, exc) from exc
            raise
        if receipt["status"] != 1:
            # Reverted when mined (the state changed since the estimate): ask why.
            try:
                fn.call({"from": signer.address}, block_identifier=receipt["blockNumber"] - 1)
                fn.call({"from": signer.address}, block_identifier=receipt["blockNumber"])
            except (ContractCustomError, ContractLogicError, ContractPanicError) as exc:
                raise revert_exception(exc, op) from exc
            except Exception:   # noqa: BLE001
                pass
            raise LedgerError(f"{op}: transaction {tx_hash.hex()} reverted in block "
                              f"{receipt['blockNumber']}")
        if self.confirmations > 0 and wait_depth:
            self._await_depth(op, tx_hash, receipt)
        return receipt

    def _await_depth(self, op, tx_hash, receipt):
        """Wait until the receipt's transaction is ``confirmations`` blocks deep on the node's
        canonical chain (``receipt_timeout`` at most)."""
        deadline = time.monotonic() + self.receipt_timeout
        while True:
            def look():
                head = self.w3.eth.block_number
                try:
                    r = self.w3.eth.get_transaction_receipt(tx_hash)
                except Exception:   # noqa: BLE001 - web3's TransactionNotFound: not canonical now
                    r = None
                return head, r
            head, r = self._rpc(op, look)
            if r is None:
                with self._lock:
                    self._nonces.clear()
                raise Unavailable(f"{op}: transaction {tx_hash.hex()} is no longer on the chain "
                                  f"of {self.url} (reorganised away): send it again")
            if head - r["blockNumber"] >= self.confirmations:
                return r
            if time.monotonic() >= deadline:
                raise Unavailable(f"{op}: transaction {tx_hash.hex()} not {self.confirmations} "
                                  f"blocks deep on {self.url} within {self.receipt_timeout:g}s")
            time.sleep(max(self.poll_latency, 0.2))

    # ------------------------------------------------------------------ deployment
    @classmethod
    def deploy(cls, url, governance_account, hash_name, timeout=10.0, committee=None,
               notice_s=None, **kwargs):
        """Deploy Beat.json from `governance_account`; returns the ledger. `committee`: a
        ``types.Committee`` (members with accounts; k; ttl_s); None: a committee of one, the
        deployer, k = 1 (the single governance of before). `notice_s`: a deposit's withdrawal
        notice (>= the ttl; default the larger of 14 days and the ttl)."""
        if hash_name not in ("sha3-256", "blake2b-256"):
            raise ValueError(f"unknown hash {hash_name!r}")
        if committee is None:
            committee = Committee((Member(None, governance_account.address_bytes),), 1)
        for m in committee.members:
            if m.account is None:
                raise ValueError("deploy: every committee member needs an account")
        art = artifact()
        w3 = Web3(_Provider(url, request_kwargs={"timeout": float(timeout)},
                               exception_retry_configuration=None))
        w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
        op = f"deploy by {governance_account.address}"
        factory = w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
        try:
            ctor = factory.constructor(
                hash_name, [to_checksum_address(m.account) for m in committee.members],
                [m.pubkey or bytes(32) for m in committee.members], committee.k,
                committee.ttl_s, notice_s if notice_s is not None else max(DEFAULT_NOTICE_S,
                                                                            committee.ttl_s))
            gas = ctor.estimate_gas({"from": governance_account.address})
            tx = ctor.build_transaction({
                "from": governance_account.address,
                "nonce": w3.eth.get_transaction_count(governance_account.address, "pending"),
                "chainId": w3.eth.chain_id, "gas": int(gas * 1.2) + 50_000,
                **_fee_fields(w3, kwargs.get("priority_fee_wei", 0))})
            tx_hash = w3.eth.send_raw_transaction(
                governance_account.sign_transaction(tx).raw_transaction)
            receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=3 * float(timeout),
                                                          poll_latency=0.05)
        except TimeExhausted as exc:
            raise Unavailable(f"{op}: no receipt from {url}") from exc
        except Exception as exc:   # noqa: BLE001
            if _is_connection_error(exc):
                raise Unavailable(f"{op}: the ledger at {url} is unreachable: {exc}") from exc
            raise
        if receipt["status"] != 1 or not receipt["contractAddress"]:
            raise LedgerError(f"{op}: deployment failed (tx {tx_hash.hex()})")
        return cls(url, receipt["contractAddress"], hash_name, timeout=timeout, **kwargs)

    # ------------------------------------------------------------------ registration
    def register_node(self, node: Node, *, signer) -> None:
        op = f"register_node({node.node_id})"
        if node.account is None:
            raise LedgerError(f"{op}: the ethereum backend needs the node's account address")
        # the contract does not look into the key: refuse a weak one here, before any transaction
        try:
            check_public(node.pubkey)
        except WeakKeyError as exc:
            raise WeakKeyError(f"{op}: {exc}") from None
        if node.operator is not None and len(node.operator) != 20:
            raise LedgerError(f"{op}: the ethereum backend needs the operator's account address "
                              "(20 bytes)")
        existing = self.get_node(node.node_id)
        if existing is not None and self.is_member(signer.address):
            if existing == node:
                return       # already there (a retry after Unavailable): nothing to do
            raise ConflictError(f"{op} by {signer.address}: node {node.node_id} is already "
                                f"registered with other data")
        args = (node.node_id, node.owner, node.pubkey, to_checksum_address(node.account),
                _address(node.operator))
        return self._act(op, "register_node", "registerNode", args, signer)

    def retire_node(self, node_id, *, signer):
        """The node anchors no more (its anchors stay); idempotent. Committee act."""
        op = f"retire_node({node_id})"
        if self.node_retired(node_id) and self.is_member(signer.address):
            return
        return self._act(op, "retire_node", "retireNode", (node_id,), signer)

    def node_retired(self, node_id):
        return bool(self._call(f"get_node({node_id})",
                               self.contract.functions.getNode(node_id))[6])

    def register_sla(self, sla: SLA, *, signer, tenant_account=None) -> None:
        """`tenant_account`: the address allowed to open disputes on this SLA (an `Account`,
        20 bytes or "0x..."; default: `sla.tenant` when it is an address, else nobody but the
        governance)."""
        op = f"register_sla({sla.sla_id})"
        existing = self.get_sla(sla.sla_id)
        if existing is not None and self.is_member(signer.address):
            if existing == sla:
                return
            raise ConflictError(f"{op} by {signer.address}: SLA {sla.sla_id} is already "
                                f"registered with other terms")
        tenant = _address(tenant_account, default=sla.tenant)
        terms = (sla.sla_id, sla.tenant, tenant, sla.src, sla.dst, list(sla.route),
                 sla.max_loss_ppm, sla.max_delay_us, sla.loss_budget_ppm,
                 sla.penalty_per_violation, sla.valid_from_ns, sla.valid_to_ns, sla.qm_json(),
                 sla.price)
        return self._act(op, "register_sla", "registerSLA", (terms,), signer)

    # ------------------------------------------------------------------ the topology
    def register_link(self, a, b, *, signer) -> None:
        """The undirected link a-b between registered nodes (governance; idempotent). Unknown
        node: NotFound (UnknownNode); a == b: LedgerError (InvalidLink)."""
        return self._link("register_link", "registerLink", LINK_ACTIVE, a, b, signer)

    def retire_link(self, a, b, *, signer) -> None:
        """The link a-b no longer exists (governance; idempotent). Never registered: NotFound."""
        return self._link("retire_link", "retireLink", LINK_RETIRED, a, b, signer)

    def _link(self, name, function, done, a, b, signer):
        op = f"{name}({a}, {b})"
        fn = self.contract.functions
        # spare a transaction when it is already done (a retry after Unavailable); the contract
        # is idempotent too, and judges everything else (permission, unknown nodes, a == b)
        if a != b and self.is_member(signer.address):
            if self._call(op, fn.linkState(a, b)) == done:
                return
        return self._act(op, name, function, (a, b), signer)

    def links(self):
        """Every active link, as sorted (a, b) pairs with a < b."""
        a, b = self._call("links()", self.contract.functions.linkList())
        return sorted(zip(a, b))

    def neighbours(self, node_id):
        """The node ids linked with ``node_id`` (active links), sorted."""
        return sorted({y if x == node_id else x for x, y in self.links() if node_id in (x, y)})

    # ------------------------------------------------------------------ anchors
    def anchor(self, a: Anchor, *, signer) -> str:
        op = f"anchor(node {a.node_id}, batch {a.batch_seq})"
        fn = self.contract.functions
        # Spare a transaction when the identical anchor is already there; everything else
        # (permission, conflict, gap) is the contract's to judge, through the gas estimate.
        exists, _owner, _pk, account, next_seq, _op, _ret = self._call(op, fn.getNode(a.node_id))
        if exists and account == signer.address and a.batch_seq < next_seq:
            current = self.get_anchor(a.node_id, a.batch_seq, at_head=True)
            if current is not None and current.content() == a.content():
                return "exists"
        # not awaited to depth here: the batcher asks anchor_state() at each tick instead
        receipt = self._transact(op, fn.anchor(a.node_id, a.batch_seq, a.tree_size, a.root,
                                               a.first_t_ns, a.last_t_ns), signer,
                                 wait_depth=False)
        events = self.contract.events.Anchored().process_receipt(receipt, errors=_DISCARD)
        return "anchored" if events else "exists"

    def _anchor_ref(self, node_id, batch_seq, block):
        logs = self._anchored_logs(block, block, {"nodeId": node_id, "batchSeq": batch_seq})
        if logs:
            return f"0x{bytes(logs[0]['transactionHash']).hex()}@{block}"
        return f"@{block}"

    def _anchored_logs(self, from_block, to_block, filters):
        """The ``Anchored`` events of blocks ``from_block..to_block`` matching ``filters``,
        asked in windows of ``LOG_WINDOW`` blocks (a node may refuse a longer range: the
        EthereumJS client above 2,500) and checked here again: a node's filter is not trusted
        (the EthereumJS client used to ignore every topic after the first) and a log marked
        ``removed`` (its block reorganised away) is dropped."""
        out = []
        start = from_block
        while start <= to_block:
            end = min(to_block, start + LOG_WINDOW - 1)
            logs = self.contract.events.Anchored.get_logs(from_block=start, to_block=end,
                                                          argument_filters=filters or None)
            out += [log for log in logs if not log.get("removed", False)
                    and all(log["args"][k] == v for k, v in filters.items())]
            start = end + 1
        return out

    def _read_block(self, op):
        """The block reads are made at: the head, or ``confirmations`` blocks below it (only what
        is that deep counts)."""
        if self.confirmations == 0:
            return "latest"
        return max(0, self._rpc(op, lambda: self.w3.eth.block_number) - self.confirmations)

    def get_anchor(self, node_id, batch_seq, at_head=False):
        """The anchor, if it is ``confirmations`` blocks deep (``at_head``: at the head)."""
        op = f"get_anchor({node_id}, {batch_seq})"
        self._ensure(op)
        where = "latest" if at_head else self._read_block(op)
        exists, size, root, first, last, block = self._rpc(
            op, lambda: self.contract.functions.getAnchor(node_id, batch_seq).call(
                block_identifier=where))
        if not exists:
            return None
        ref = self._rpc(op, lambda: self._anchor_ref(node_id, batch_seq, block))
        ts = self._rpc(op, lambda: self.w3.eth.get_block(block)["timestamp"])
        return Anchor(node_id, batch_seq, size, bytes(root), first, last, ref,
                      int(ts) * 1_000_000_000)

    # how far a block's timestamp (whole seconds, the sealer's clock) may be ahead of this host's
    # clock: an interrogation's cutoff allows it (governance/interrogate.py)
    clock_slack_ns = 2_000_000_000

    def settled_ns(self):
        """A time T such that every anchor with ``ledger_t_ns <= T`` (its block's timestamp) is
        readable now at the ``confirmations`` depth and stays so: blocks carry whole seconds, a
        block sealed later carries a later (or, on some nodes, the same) second, so T is two
        seconds behind this host's clock (one for the rounding, one for the node's clock) and,
        with ``confirmations`` > 0, before the timestamp of the newest block that deep."""
        t = time.time_ns() - 2_000_000_000
        if self.confirmations == 0:
            return t
        op = "settled_ns()"
        deep = self._read_block(op)
        ts = self._rpc(op, lambda: self.w3.eth.get_block(deep)["timestamp"])
        return min(t, int(ts) * 1_000_000_000 - 1)

    def anchors(self, node_id=None, from_seq=0):
        op = f"anchors({node_id}, {from_seq})"
        self._ensure(op)
        filters = {"nodeId": node_id} if node_id is not None else {}
        to_block = self._read_block(op)
        if to_block == "latest":
            to_block = self._rpc(op, lambda: self.w3.eth.block_number)
        if to_block < self._deployed_at:
            return []
        logs = self._rpc(op, lambda: self._anchored_logs(self._deployed_at, to_block, filters))
        by_key = {}
        for log in logs:
            e = log["args"]
            if e["batchSeq"] < from_seq:
                continue
            ref = f"0x{bytes(log['transactionHash']).hex()}@{log['blockNumber']}"
            a = Anchor(e["nodeId"], e["batchSeq"], e["treeSize"], bytes(e["root"]),
                       e["firstTNs"], e["lastTNs"], ref)
            by_key.setdefault((a.node_id, a.batch_seq), []).append(a)
        out = []
        for (nid, seq), found in by_key.items():
            if len(found) > 1:
                # the contract emits one Anchored per (node_id, batch_seq): two logs for one key
                # come from a node showing blocks off its canonical chain; the contract's state
                # at the same block decides which one holds
                held = self._rpc(op, lambda: self.contract.functions.getAnchor(nid, seq).call(
                    block_identifier=to_block))
                found = [a for a in found if held[0] and (a.tree_size, a.root, a.first_t_ns,
                                                          a.last_t_ns) ==
                         (held[1], bytes(held[2]), held[3], held[4])][:1]
            out += found
        out.sort(key=lambda a: (a.node_id, a.batch_seq))
        return out

    # ------------------------------------------------------------------ confirmations
    def head(self):
        """The node's head block number."""
        return self._rpc("head", lambda: self.w3.eth.block_number)

    def anchor_state(self, a: Anchor) -> str:
        """Where the anchor ``a`` stands on this node's chain:

        - ``"confirmed"``: in the contract's state at block ``head - confirmations`` (so at least
          ``confirmations`` blocks deep; with 0, at the head);
        - ``"sent"``: at the head but not that deep yet (a reorganisation may still take it away);
        - ``"missing"``: not at the head: reorganised away, or its transaction dropped (a node
          restarted without its pool): send it again (``anchor`` is idempotent, the contract
          keeps one anchor per (node_id, batch_seq)).

        A different root already there is ``ConflictError``. The cached nonces are forgotten on
        ``"missing"``: the transaction that used one is gone."""
        op = f"anchor_state(node {a.node_id}, batch {a.batch_seq})"
        self._ensure(op)
        fn = self.contract.functions.getAnchor(a.node_id, a.batch_seq)

        def at(block):
            exists, size, root, first, last, _block = fn.call(block_identifier=block)
            if not exists:
                return None
            got = (size, bytes(root), first, last)
            if got != (a.tree_size, bytes(a.root), a.first_t_ns, a.last_t_ns):
                raise ConflictError(f"{op}: the ledger holds another anchor for this batch "
                                    f"(root {bytes(root).hex()}, {size} leaves)")
            return got

        def state():
            head = self.w3.eth.block_number
            if at(head) is None:
                return "missing"
            if self.confirmations == 0:
                return "confirmed"
            deep = head - self.confirmations
            if deep >= 0 and at(deep) is not None:
                return "confirmed"
            return "sent"

        result = self._rpc(op, state)
        if result == "missing":
            with self._lock:
                self._nonces.clear()
        return result

    def next_batch_seq(self, node_id) -> int:
        return self._call(f"next_batch_seq({node_id})",
                          self.contract.functions.nextBatchSeq(node_id))

    # ------------------------------------------------------------------ reads
    def get_node(self, node_id):
        exists, owner, pubkey, account, _next, operator, _retired = self._call(
            f"get_node({node_id})", self.contract.functions.getNode(node_id))
        if not exists:
            return None
        return Node(node_id, owner, bytes(pubkey), bytes.fromhex(account[2:]),
                    None if operator == ZERO_ADDRESS else bytes.fromhex(operator[2:]))

    def nodes(self):
        ids = self._call("nodes()", self.contract.functions.nodeIds())
        return [self.get_node(i) for i in ids]

    def slas(self):
        """Every registered SLA, by the contract's list of ids (they need not be consecutive)."""
        ids = self._call("slas()", self.contract.functions.slaIds())
        return [self.get_sla(i) for i in ids]

    def get_sla(self, sla_id):
        exists, s = self._call(f"get_sla({sla_id})", self.contract.functions.getSLA(sla_id))
        if not exists:
            return None
        (sid, tenant, _tenant_account, src, dst, route, max_loss, max_delay, budget, ppv,
         valid_from, valid_to, qm, price) = s
        return SLA(sid, tenant, bytes(src), bytes(dst), tuple(route), max_loss, max_delay, budget,
                   ppv, valid_from, valid_to, json.loads(qm) if qm else {}, price)

    def sla_tenant_account(self, sla_id):
        """The address allowed to open disputes on the SLA (None: the governance only)."""
        exists, s = self._call(f"get_sla({sla_id})", self.contract.functions.getSLA(sla_id))
        if not exists:
            raise NotFound(f"sla_tenant_account({sla_id}): no such SLA")
        return None if s[2] == ZERO_ADDRESS else s[2]

    # ------------------------------------------------------------------ disputes
    def open_dispute(self, sla_id, from_ns, to_ns, *, signer) -> int:
        op = f"open_dispute(sla {sla_id}, {from_ns}..{to_ns})"
        receipt = self._transact(op, self.contract.functions.openDispute(sla_id, from_ns, to_ns),
                                 signer)
        events = self.contract.events.DisputeOpened().process_receipt(receipt, errors=_DISCARD)
        if not events:
            raise LedgerError(f"{op}: no DisputeOpened event in {receipt['transactionHash']}")
        return events[0]["args"]["disputeId"]

    def record_evidence(self, dispute_id, evidence_digest, *, signer) -> None:
        op = f"record_evidence(dispute {dispute_id})"
        d = self.get_dispute(dispute_id)
        if (d is not None and d.evidence_digest == bytes(evidence_digest)
                and self.is_member(signer.address)):
            return           # already recorded (a retry after Unavailable)
        self._transact(op, self.contract.functions.recordEvidence(dispute_id, evidence_digest),
                       signer)

    def decide(self, dispute_id, verdict_digest, faulty, *, signer) -> None:
        op = f"decide(dispute {dispute_id}, faulty {list(faulty)})"
        d = self.get_dispute(dispute_id)
        if (d is not None and d.verdict_digest == bytes(verdict_digest)
                and d.faulty == tuple(faulty) and self.is_member(signer.address)):
            return
        self._transact(op, self.contract.functions.decide(dispute_id, verdict_digest,
                                                          list(faulty)), signer)

    def settle(self, dispute_id, *, signer) -> None:
        op = f"settle(dispute {dispute_id})"
        d = self.get_dispute(dispute_id)
        if d is not None and d.state == "settled" and self.is_member(signer.address):
            return
        self._transact(op, self.contract.functions.settle(dispute_id), signer)

    def get_dispute(self, dispute_id):
        exists, d = self._call(f"get_dispute({dispute_id})",
                               self.contract.functions.getDispute(dispute_id))
        if not exists:
            return None
        (did, sla_id, from_ns, to_ns, state, evidence, verdict, faulty, penalty, _opener) = d
        state_name = DISPUTE_STATES[state - 1]
        return Dispute(did, sla_id, from_ns, to_ns, state_name,
                       bytes(evidence) if state >= 2 else None,
                       bytes(verdict) if state >= 3 else None,
                       tuple(faulty), penalty)

    # ------------------------------------------------------------------ the committee
    def committee(self):
        accounts, pubkeys, k, epoch, ttl = self._call("committee()",
                                                      self.contract.functions.committee())
        members = tuple(Member(None if bytes(pk) == bytes(32) else bytes(pk),
                               bytes.fromhex(a[2:])) for a, pk in zip(accounts, pubkeys))
        return Committee(members, k, epoch, ttl)

    def is_member(self, address):
        return any(m.account == bytes.fromhex(address[2:]) for m in self.committee().members)

    def _act(self, op, act, function, args, signer):
        """A governance act: direct (the function) for a committee with k = 1, as before;
        else a proposal (propose-or-approve the identical open one): returns its Proposal."""
        fn = self.contract.functions
        if self.committee().k == 1 and self.is_member(signer.address):
            self._transact(op, getattr(fn, function)(*args), signer)
            return None
        encoded = eth_abi.encode(ACT_TYPES[act], list(_abi_args(act, args)))
        receipt = self._transact(f"propose {op}", fn.propose(ACT_CODES[act], encoded), signer)
        return self.proposal(self._proposal_of(receipt, ACT_CODES[act], encoded))

    def _proposal_of(self, receipt, code, encoded):
        for e in self.contract.events.Approved().process_receipt(receipt, errors=_DISCARD):
            return e["args"]["proposalId"]
        # approved before (a no-op): the latest proposal of this content
        for pid in range(self._call("proposals", self.contract.functions.proposalCount()), 0,
                         -1):
            p = self._call("proposal", self.contract.functions.getProposal(pid))
            if p[0] == code and bytes(p[5]) == encoded:
                return pid
        raise LedgerError("propose: no proposal of this content found")

    def propose(self, act, args, *, signer):
        """Propose ``act`` (types.ACTS) with ``args`` (the contract's argument tuple)."""
        encoded = eth_abi.encode(ACT_TYPES[act], list(_abi_args(act, args)))
        receipt = self._transact(f"propose {act}", self.contract.functions.propose(
            ACT_CODES[act], encoded), signer)
        return self.proposal(self._proposal_of(receipt, ACT_CODES[act], encoded))

    def add_member(self, member, *, signer):
        if member.account is None:
            raise LedgerError("add_member: the ethereum backend needs the member's account")
        return self.propose("add_member", (member.account, member.pubkey or bytes(32)),
                            signer=signer)

    def remove_member(self, member, *, signer):
        acct = member.account if isinstance(member, Member) else member
        if acct is None:
            raise LedgerError("remove_member: the ethereum backend needs the member's account")
        return self.propose("remove_member", (acct,), signer=signer)

    def set_threshold(self, k, *, signer):
        return self.propose("set_threshold", (k,), signer=signer)

    def approve(self, proposal_id, *, signer):
        self._transact(f"approve({proposal_id})", self.contract.functions.approve(proposal_id),
                       signer)
        return self.proposal(proposal_id)

    def proposal(self, proposal_id, _committee=None, _now=None):
        p = self._call(f"proposal({proposal_id})",
                       self.contract.functions.getProposal(proposal_id))
        code, executed, epoch, created, approvers, args = p
        if code == 0:
            return None
        c = _committee or self.committee()
        act = ACTS[code - 1]
        now = _now if _now is not None else self._rpc(
            "proposal", lambda: self.w3.eth.get_block("latest")["timestamp"])
        expires = created + c.ttl_s
        state = ("executed" if executed else "stale" if epoch != c.epoch else
                 "expired" if now >= expires else "open")
        values = eth_abi.decode(ACT_TYPES[act], bytes(args))
        return Proposal(proposal_id, act, _args_json(act, values), epoch,
                        created * 10**9, expires * 10**9, tuple(approvers), state, c.k)

    def pending(self):
        """The open (this epoch, unexpired, not executed) proposals with their approvals."""
        n = self._call("pending()", self.contract.functions.proposalCount())
        # the committee and the head's time read once for all of them (3 reads a proposal before)
        c = self.committee()
        now = self._rpc("pending()", lambda: self.w3.eth.get_block("latest")["timestamp"])
        out = [self.proposal(i, _committee=c, _now=now) for i in range(1, n + 1)]
        return [p for p in out if p.state == "open"]

    def approve_decision(self, dispute_id, evidence_digest, verdict_digest, faulty, *, signer):
        """This member's approval of the decision (evidence digest, verdict digest, faulty);
        executes (decides and settles) at the k-th approval of one content. Returns the
        dispute."""
        faulty = sorted(int(x) for x in faulty)
        fn = self.contract.functions.approveDecision(
            dispute_id, bytes(evidence_digest), bytes(verdict_digest), faulty)
        _cap_gas(fn, DECISION_GAS + PUSH_GAS * len(faulty))
        self._transact(f"approve_decision(dispute {dispute_id}, faulty {faulty})", fn, signer)
        return self.get_dispute(dispute_id)

    def dispute_votes(self, dispute_id):
        votes, decided = self._call(f"dispute_votes({dispute_id})",
                                    self.contract.functions.disputeVotes(dispute_id))
        decided = bytes(decided)
        return [Vote(m, bytes(ev), bytes(vd), ep, decided != bytes(32) and bytes(c) != decided)
                for (m, ep, _at, c, ev, vd) in votes]

    def dispute_dissent(self, dispute_id):
        return [v for v in self.dispute_votes(dispute_id) if v.dissent]

    def disputes(self):
        n = self._call("disputes()", self.contract.functions.disputeCount())
        return [self.get_dispute(i) for i in range(1, n + 1)]

    def tenant_of(self, sla_id):
        return self.sla_tenant_account(sla_id)

    # ------------------------------------------------------------------ the money
    def deposit(self, node_id, amount, *, signer):
        """The node's operator locks ``amount`` wei for it (its debts are paid first)."""
        fn = self.contract.functions.deposit(node_id)
        _cap_gas(fn, DEPOSIT_GAS + PUSH_GAS * len(self.debts(node_id)), value=amount)
        self._transact_value(f"deposit(node {node_id}, {amount} wei)", fn, signer, amount)
        return self.deposit_of(node_id)

    def request_withdrawal(self, node_id, *, signer):
        self._transact(f"request_withdrawal(node {node_id})",
                       self.contract.functions.requestWithdrawal(node_id), signer)
        return self.deposit_of(node_id)

    def withdraw(self, node_id, *, signer):
        """The whole deposit to the operator, once the notice passed (OrderError before, with
        a debt, or while a dispute on a route holding the node is open)."""
        before = self.deposit_of(node_id).amount
        self._transact(f"withdraw(node {node_id})", self.contract.functions.withdraw(node_id),
                       signer)
        return before

    def withdraw_credit(self, *, signer):
        self._transact("withdraw_credit", self.contract.functions.withdrawCredit(), signer)

    def deposit_of(self, node_id):
        f = self.contract.functions
        amount = self._call("deposit_of", f.depositOf(node_id))
        due = self._call("deposit_of", f.withdrawalDue(node_id))
        debt = self._call("deposit_of", f.debtOf(node_id))
        frozen = self._call("deposit_of", f.frozenBy(node_id))
        ttl = self._call("deposit_of", f.proposalTtl())
        return Deposit(node_id, amount, due * 10**9 if due else None, debt, frozen or None,
                       (due + 2 * ttl) * 10**9 if due else None)

    def debts(self, node_id=None):
        ids = [node_id] if node_id is not None else [n.node_id for n in self.nodes()]
        out = []
        for i in ids:
            for did, tenant, amount in self._call("debts", self.contract.functions.debts(i)):
                out.append(Debt(i, tenant, amount, did))
        return out

    def balance(self, who):
        """The account's balance on the chain (eth_getBalance), wei."""
        return self._rpc("balance", lambda: self.w3.eth.get_balance(_address(who)))

    def credit_of(self, who):
        return self._call("credit", self.contract.functions.credit(_address(who)))

    def _transact_value(self, op, fn, signer, value):
        """_transact with a value: the same path, the value added to the transaction."""
        orig = fn.build_transaction, fn.estimate_gas

        def build(tx):
            return orig[0](dict(tx, value=value))

        def estimate(tx):
            return orig[1](dict(tx, value=value))

        fn.build_transaction, fn.estimate_gas = build, estimate
        return self._transact(op, fn, signer)


# The gas a decision or a deposit can need, at most: its own work plus, per transfer to a tenant,
# the 50,000 gas stipend of the push (Beat.sol _pay) and the call around it. A tenant contract
# that burns the stipend makes ganache's eth_estimateGas answer near the block gas limit (findings
# C9): the estimate is capped here, so that no tenant can make the decision unestimable (the
# contract credits a failed push for a pull).
DECISION_GAS = 1_000_000
DEPOSIT_GAS = 400_000
PUSH_GAS = 120_000


def _cap_gas(fn, cap, value=0):
    """fn.estimate_gas, capped at ``cap`` (the estimate itself still reverts as before)."""
    orig = fn.estimate_gas

    def estimate(tx=None, *a, **kw):
        tx = dict(tx or {})
        if value:
            tx["value"] = value
        gas = orig(tx, *a, **kw)
        return min(gas, int(cap / 1.3))     # _transact adds its margin on top

    fn.estimate_gas = estimate


def _abi_args(act, args):
    out = []
    for t, v in zip(ACT_TYPES[act], args):
        if t == "address":
            v = _address(v)
        out.append(v)
    return out


def _args_json(act, values):
    def j(v):
        if isinstance(v, bytes):
            return v.hex()
        if isinstance(v, (list, tuple)):
            return [j(x) for x in v]
        return v
    if act == "register_sla":
        names = ("sla_id", "tenant", "tenant_account", "src", "dst", "route", "max_loss_ppm",
                 "max_delay_us", "loss_budget_ppm", "penalty_per_violation", "valid_from_ns",
                 "valid_to_ns", "qm_terms")
        return dict(zip(names, j(list(values[0]))))
    names = {"register_node": ("node_id", "owner", "pubkey", "account", "operator"),
             "retire_node": ("node_id",), "register_link": ("a", "b"),
             "retire_link": ("a", "b"), "add_member": ("account", "pubkey"),
             "remove_member": ("account",), "set_threshold": ("k",)}[act]
    return dict(zip(names, j(list(values))))


def _is_underpriced(msg):
    """The node refused a transaction because one with its nonce is pending at a fee it will not
    replace for this one: "replacement gas too low" (the EthereumJS client), "replacement
    transaction underpriced" (geth), "transaction underpriced" (ganache)."""
    msg = msg.lower()
    return ("replacement" in msg and ("too low" in msg or "underpriced" in msg)) \
        or "transaction underpriced" in msg


def _fee_of(fees):
    return int(fees.get("maxFeePerGas", fees.get("gasPrice", 0)))


def _bump(value):
    return int(value) + (int(value) * REPLACEMENT_BUMP_PCT + 99) // 100


def _raised_fees(fees, sent, message):
    """The fee fields for a replacement of a pending transaction: at least ``REPLACEMENT_BUMP_PCT``
    over what was last sent with that nonce (``sent``, if this client sent it), over what the
    node's error names as the minimum (the EthereumJS client: "got tip T, min: A, got fee F,
    min: B"), and over ``fees`` themselves (nothing known: the pending one was sent by an
    earlier run, at most at today's fee, or the fee moved)."""
    import re
    want_fee = _bump(_fee_of(fees))
    want_tip = _bump(fees.get("maxPriorityFeePerGas", 0))
    if sent:
        want_fee = max(want_fee, _bump(_fee_of(sent)))
        want_tip = max(want_tip, _bump(sent.get("maxPriorityFeePerGas", 0)))
    m = re.search(r"tip (\d+), min: (\d+), got fee (\d+), min: (\d+)", message)
    if m:
        want_tip = max(want_tip, int(m.group(2)))
        want_fee = max(want_fee, int(m.group(4)))
    if "gasPrice" in fees:
        return {"gasPrice": max(want_fee, want_tip)}
    return {"type": 2, "maxFeePerGas": max(want_fee, want_tip), "maxPriorityFeePerGas": want_tip}


def _fee_fields(w3, priority_fee_wei=0):
    """The fee fields of a transaction: EIP-1559 (type 2) with ``priority_fee_wei`` as the tip
    when the chain has a base fee, else the node's gas price. The tip is 0 by default: on the
    EthereumJS client's Clique chains a tip makes the sealer and the other nodes disagree on the
    block's state (the sealer credits it before the block is signed, to no one; the others to the
    signer: "invalid block stateRoot"), and a private ledger needs no tip."""
    block = w3.eth.get_block("latest")
    base = block.get("baseFeePerGas") if hasattr(block, "get") else None
    if base is None:
        return {"gasPrice": w3.eth.gas_price}
    tip = int(priority_fee_wei)
    return {"type": 2, "maxFeePerGas": 2 * int(base) + tip, "maxPriorityFeePerGas": tip}


def _address(value, default=None):
    """An Account, 20 bytes or a "0x..." string -> a checksummed address (zero when none)."""
    if value is None:
        value = default
    if isinstance(value, Account):
        return value.address
    if isinstance(value, (bytes, bytearray)) and len(value) == 20:
        return to_checksum_address(bytes(value))
    if isinstance(value, str) and Web3.is_address(value):
        return to_checksum_address(value)
    return ZERO_ADDRESS


try:     # web3's "drop logs that do not decode" flag, whatever this version calls it
    from web3.logs import DISCARD as _DISCARD
except ImportError:   # pragma: no cover
    _DISCARD = None
