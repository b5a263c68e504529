"""The daemon's ledger anchoring (``[ledger]``, docs/ledger.md): the backend, the device's signer,
and the anchor thread that takes the closed segments' outbox leaves to the ledger.

``open_ledger(cfg)`` opens what ``[ledger]`` names (``AnchoringError`` naming the key at fault):
the backend (``local``: the host's LMDB ledger, or ``AwaitedLocalLedger`` until the governance
creates it; ``ethereum``: the Beat contract through a JSON-RPC node), the key that signs the anchors
and, when it is the one that also signs evidence, the device's Ed25519 key.

``Anchoring`` runs ``ledger_client.batcher.Batcher`` on the store in its own thread: every
``ledger.anchor_period_s`` the waiting outbox leaves become one Merkle tree, its leaf proofs and
pending anchor are stored, and the pending anchors are submitted in order (``Unavailable``: retried
with backoff; a refusal such as ``PermissionDenied`` halts submission until ``resume()``, i.e.
SIGHUP, or a restart; building goes on, nothing is lost). Capture never waits for it; the committer
only shares LMDB's writer lock with it for the short transaction that stores a batch. A store
without room for a batch's tree levels gets a smaller batch (``build_smaller``): otherwise a store
filled within one anchor period would hold only unbatched leaves, nothing to anchor or prune, for
good. At shutdown, after the final commit, ``final()`` builds what is left and makes one
submission attempt, bounded.

What goes wrong is a typed value (``failure()``, ``beatd.failures``): the ledger down (backoff),
the ledger refusing (halted), the store full (no room for a batch), or a tick that failed otherwise.
"""
import dataclasses
import logging
import os
import threading
import time

from .failures import Failure, Kind
from .logs import event
from .store import no_room

__all__ = ["Anchoring", "AnchoringError", "LedgerSetup", "open_ledger", "build_smaller"]

log = logging.getLogger("beatd.anchoring")

ANCHOR_POLL_MAX_S = 1.0
FULL_LOG_INTERVAL_S = 10.0            # "no new batch can be built" once, then at most this often


class AnchoringError(Exception):
    """``[ledger]`` cannot be used; the message names the key."""


@dataclasses.dataclass
class LedgerSetup:
    """What ``open_ledger`` opened: the backend, the anchors' signer, the device's Ed25519 key
    (ethereum, ``ledger.device_key``), the key that signs evidence when it is one of these (None:
    the Interrogation service loads its own), and where the ledger is (a path or a URL)."""
    backend: object
    signer: object
    device_key: object = None
    evidence_key: object = None
    where: str | None = None


def open_ledger(cfg):
    """The backend and the device's signer for ``cfg``'s ``[ledger]``."""
    if cfg.ledger_backend == "local":
        from ledger_client.errors import LedgerError
        from ledger_client.keys import DeviceKey, KeyFileError
        from ledger_client.backend import BackendSpec, open_backend
        path = cfg.ledger_path
        if not os.path.exists(path) and not cfg.ledger_path_default:
            raise AnchoringError(f'ledger.path: "{path}": no such ledger (the governance creates '
                                 "it: beatctl --ledger local:PATH --key GOV_KEY register-node ...)")
        signer = _local_device_key(cfg, DeviceKey, KeyFileError)
        evidence_key = signer if cfg.interrogation_signing_key in (None, cfg.ledger_key) else None
        if not os.path.exists(path):
            # the default ledger the governance has not created yet: anchors wait
            backend = open_backend(BackendSpec("local", path=path), hash_name=cfg.hash,
                                   missing="await")
            event(log, logging.WARNING, "ledger: no local ledger yet; batches wait in the "
                  "outbox until the governance creates it", path=path)
        else:
            try:
                backend = open_backend(BackendSpec("local", path=path))
            except LedgerError as exc:
                raise AnchoringError(f'ledger.path: "{path}": {exc}') from None
        return LedgerSetup(backend, signer, None, evidence_key, path)
    if cfg.ledger_backend == "ethereum":
        from ledger_client.backend import BackendSpec, open_backend
        try:
            from ledger_client.ethereum import Account
        except (ImportError, AttributeError) as exc:
            hint = "" if "beat[ethereum]" in str(exc) else "; pip install 'beat[ethereum]'"
            raise AnchoringError(f'ledger.backend: "ethereum" is not installed: {exc}{hint}') from None
        try:
            signer = Account.from_file(cfg.ledger_key)
        except Exception as exc:  # noqa: BLE001 (named, exit 2)
            raise AnchoringError(f'ledger.key: "{cfg.ledger_key}": not an Ethereum account key '
                                 f"(device.eth from `beatd keygen --ethereum`): {exc}") from None
        device_key = evidence_key = None
        if cfg.ledger_device_key is not None:
            from ledger_client.keys import DeviceKey, KeyFileError
            try:
                device_key = DeviceKey.load(cfg.ledger_device_key)
            except KeyFileError as exc:
                raise AnchoringError(f"ledger.device_key: {exc}") from None
            if cfg.interrogation_signing_key in (None, cfg.ledger_device_key):
                evidence_key = device_key
        try:
            backend = open_backend(BackendSpec("ethereum", url=cfg.ledger_url,
                                               contract=cfg.ledger_contract), hash_name=cfg.hash,
                                   confirmations=getattr(cfg, "ledger_confirmations", 0),
                                   max_fee_per_gas_wei=int(getattr(cfg, "ledger_max_fee_gwei",
                                                                   100) * 10 ** 9))
        except Exception as exc:  # noqa: BLE001 (named, exit 2)
            raise AnchoringError(f'ledger.url: "{cfg.ledger_url}": {type(exc).__name__}: '
                                 f"{exc}") from None
        return LedgerSetup(backend, signer, device_key, evidence_key, cfg.ledger_url)
    raise AnchoringError(f'ledger.backend: "{cfg.ledger_backend}": unknown')


def _local_device_key(cfg, DeviceKey, KeyFileError):
    """The device's Ed25519 key; the default one (STORE/device.ed25519) is made at the first
    start, 0600, and its public key logged for the governance to register."""
    if cfg.ledger_key_default and not os.path.exists(cfg.ledger_key):
        key = DeviceKey.generate()
        try:
            key.save(cfg.ledger_key)
        except (OSError, KeyFileError) as exc:
            raise AnchoringError(f'ledger.key: "{cfg.ledger_key}": cannot make the device key: '
                                 f"{exc}") from None
        event(log, logging.WARNING, "ledger: made this device's key; the governance registers "
              "it with beatctl register-node", key=cfg.ledger_key, node_id=cfg.node_id,
              pubkey=key.public.hex())
        return key
    try:
        return DeviceKey.load(cfg.ledger_key)
    except KeyFileError as exc:
        raise AnchoringError(f"ledger.key: {exc}") from None


def check_registration(cfg, setup):
    """Whether the ledger knows this node with this signer (and device key): a warning if not
    (only a hint: the submission says it for sure)."""
    registered = None
    signer, device_key = setup.signer, setup.device_key
    try:
        node = setup.backend.get_node(cfg.node_id)
        if cfg.ledger_backend == "ethereum":
            # the account signs the anchors; the Ed25519 key (when given) is the identity
            registered = (node is not None and bytes(node.account or b"") ==
                          signer.address_bytes and (device_key is None or
                                                    node.pubkey == device_key.public))
        else:
            registered = node is not None and bytes(node.pubkey or b"") == bytes(
                getattr(signer, "public", b"") or b"")
    except Exception as exc:  # noqa: BLE001 (only a hint: the submission says it for sure)
        event(log, logging.WARNING, "ledger: cannot look the node up", error=str(exc))
    if registered is False:
        who = ({"account": signer.address} if cfg.ledger_backend == "ethereum"
               else {"pubkey": signer.public.hex()})
        if device_key is not None:
            who["pubkey"] = device_key.public.hex()
        event(log, logging.WARNING, "ledger: this node is not registered with this key; the "
              "ledger will refuse its anchors until the governance registers it "
              "(beatctl register-node), then SIGHUP or restart", node_id=cfg.node_id, **who)
    return registered


def build_smaller(batcher, store_path):
    """Build a batch of fewer leaves than are waiting (halving, down to one) when a full store has
    no room for the tree levels of them all; the new batch, or None."""
    n = min(batcher.max_leaves, batcher.stats()["leaves_waiting"]) // 2
    while n >= 1:
        try:
            return batcher.build(max_leaves=n)
        except Exception as exc:  # noqa: BLE001 (only the lack of room is retried)
            if not no_room(exc, store_path):
                raise
        n //= 2
    return None


def _stamped(read_stats):
    """``read_stats()`` with ``as_of``: a time before the outbox was read (a status reader that
    saw a segment closed at time T knows its leaf is counted once ``as_of`` >= T)."""
    as_of = time.time()
    stats = read_stats()
    stats["as_of"] = as_of
    return stats


class Anchoring:
    """The anchor thread around one ``Batcher`` (see the module doc)."""

    def __init__(self, batcher, cfg, where=None, map_size=None):
        self.batcher = batcher
        self.cfg = cfg
        self.where = where
        self._map_size = map_size or (lambda: None)
        self._lock = threading.Lock()       # one tick at a time
        self._stop = threading.Event()
        self._thread = None
        self._full_logged = -FULL_LOG_INTERVAL_S
        self._tick_failure = None           # the last tick's failure (None: it went through)
        self.stats = _stamped(batcher.stats)
        self.last_anchor_time = None        # when an anchor last reached the ledger (metrics)

    # -- the thread -----------------------------------------------------------------------------

    def start(self):
        self._thread = threading.Thread(target=self._loop, name="beatd-anchor", daemon=True)
        self._thread.start()

    def request_stop(self):
        self._stop.set()

    def stop(self, timeout_s):
        """Stop the thread (a tick in progress finishes first, within ``timeout_s``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def _loop(self):
        period = self.cfg.effective_ledger_anchor_period_s
        poll = min(ANCHOR_POLL_MAX_S, max(0.05, period / 4))
        while not self._stop.wait(poll):
            self.tick()

    def tick(self, final=False):
        """One batcher tick (``final``: build what is left, one submission attempt now); a
        failure is kept (``failure()``) and logged, and the next tick goes on."""
        b = self.batcher
        path = self.cfg.store_path
        with self._lock:
            failure = None
            try:
                if final:
                    b.build()
                    if b.halted is None:
                        b.retry_now()       # one attempt now, backoff or not
                    b.submit()
                else:
                    b.tick()
            except Exception as exc:  # noqa: BLE001 (kept and shown; the loop goes on)
                error = b.failed("tick", exc)
                if no_room(exc, path):
                    # no room for a new batch's tree levels: a smaller batch may fit, and the
                    # batches built are still submitted (once anchored and older than the
                    # threshold, pruning frees their room)
                    failure = Failure.of(Kind.STORE_FULL, "anchor", exc)
                    self._no_room(error)
                    try:
                        build_smaller(b, path)
                        b.submit()
                    except Exception as exc2:  # noqa: BLE001 (as above)
                        error = b.failed("submit", exc2)
                        if no_room(exc2, path):     # not even room to mark
                            self._no_room(error)
                        else:
                            failure = Failure.of(Kind.ANCHOR, "anchor", exc2)
                            event(log, logging.ERROR, "anchor submission failed", error=error)
                else:
                    failure = Failure.of(Kind.ANCHOR, "anchor", exc)
                    event(log, logging.ERROR, "anchor tick failed", error=error)
            self._tick_failure = failure
            before = (self.stats or {}).get("anchors_submitted", 0)
            try:
                self.stats = _stamped(b.stats)
            except Exception:  # noqa: BLE001 (the store closing under a late tick)
                pass
            if (self.stats or {}).get("anchors_submitted", 0) > before:
                self.last_anchor_time = time.time()

    def _no_room(self, error):
        now = time.monotonic()
        if now - self._full_logged >= FULL_LOG_INTERVAL_S:
            self._full_logged = now
            event(log, logging.WARNING, "store full: no new batch can be built; the batches "
                  "built are still submitted", path=self.cfg.store_path,
                  map_size=self._map_size(), error=error)

    def final(self, timeout_s):
        """After the final commit: build what is left, one submission attempt, bounded."""
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        t = threading.Thread(target=self.tick, kwargs={"final": True},
                             name="beatd-anchor-final", daemon=True)
        t.start()
        t.join(timeout=timeout_s)
        st = self.stats or {}
        if t.is_alive():
            event(log, logging.WARNING, "final anchor submission did not finish in time; the "
                  "pending anchors are submitted at the next start", timeout_s=timeout_s)
        event(log, logging.INFO, "anchors at stop", pending_anchors=st.get("pending_anchors"),
              last_anchored_batch_seq=st.get("last_anchored_batch_seq"),
              leaves_waiting=st.get("leaves_waiting"), last_error=st.get("last_error"))

    def resume(self):
        """SIGHUP: a halted submission goes on (the operator fixed the cause)."""
        b = self.batcher
        if b.halted is not None:
            event(log, logging.INFO, "anchor submission resumed", was=b.halted)
            b.resume()

    # -- what it says about itself ------------------------------------------------------------

    def failure(self):
        """What keeps anchors off the ledger now, as a ``Failure`` (None: nothing): the last
        tick's failure, else a halt (the ledger refused), else a backoff (the ledger down)."""
        if self._tick_failure is not None:
            return self._tick_failure
        b = self.batcher
        halted = b.halted
        if halted is not None:
            return Failure(Kind.LEDGER_REFUSED, "ledger", halted)
        st = self.stats or {}
        if st.get("failures"):
            return Failure(Kind.LEDGER_DOWN, "ledger", st.get("last_error") or "unavailable")
        return None

    def status(self):
        """The anchor state for ``beatd status`` and the metrics."""
        st = dict(self.stats or {})
        failure = self.failure()
        st.update(backend=self.cfg.ledger_backend, ledger=self.where,
                  anchor_period_s=self.cfg.effective_ledger_anchor_period_s,
                  failure=failure.as_dict() if failure is not None else None)
        return st
