"""beatd configuration: one TOML file, loaded and validated once, at start.

Every key, its type and its default is in ``DEFAULTS`` below (one place). ``load(path)`` returns a
``Config``; anything wrong (a bad value, an unknown key, a missing file) raises ``ConfigError`` whose
message names the key and the value, e.g. ``neighbours[2].mac: "zz:.." is not a MAC address``.
"""
import dataclasses
import ipaddress
import math
import os
import re
import stat

from beat_common.spec import NODE_ID_MAX
from beat_common.tomlfile import read_toml
from fastpath.output import (DEFAULT_MAX_RECEIPTS_PER_EPOCH, HASH_NAMES, MAX_SLOT,
                             MAX_RECEIPTS_PER_EPOCH_LIMIT, RECORD_SIZE)

from .store.layout import SYNC_MODES

__all__ = ["ConfigError", "Config", "Neighbour", "load", "from_dict", "parse_size", "parse_mac",
           "parse_listen", "format_mac", "DEFAULTS", "TOML_KEYS", "RELOADABLE_KEYS", "ReloadPlan",
           "reload_plan"]

# The defaults, in one place. ``None`` for map_size means "derived from ring_size" (see Config).
DEFAULTS = {
    "node_id": None,
    "interfaces": [],
    "hash": "sha3-256",
    "own_macs": [],
    "neighbours": [],
    "store": {
        "path": "/var/lib/beatd",
        "ring_size": 256 << 20,
        "map_size": None,
        "sync": "periodic",
        "sync_interval_s": 1.0,
    },
    "governance": {
        "threshold_s": 3600.0,
        "receipt_epoch_ms": 1000,
        "anchor_period_s": 10.0,
        "segment_records": 1024,
        "join_window_ms": 50.0,
        # receipts of their own per role and epoch; the other flows share one overflow receipt
        # (docs/fastpath.md, "The receipt cap"). 1,024: far above the flows an SLA names at one
        # edge (the lab's 1,000-flow load stays under it), and the receipts it lets through in
        # one hour of threshold (2 x 1,025 per second, ~225 B each until pruned: ~1.7 GB) fit a
        # store whose map is sized by default (see Config.receipts_bound_bytes)
        "max_receipts_per_epoch": DEFAULT_MAX_RECEIPTS_PER_EPOCH,
    },
    "capture": {
        "workers": 0,
        "block_size": 1 << 20,
        "block_count": 16,
        "frame_size": 2048,
        "block_timeout_ms": 10,
        "fanout_mode": "cpu",
    },
    "daemon": {
        "commit_interval_ms": 50,
        "metrics_listen": "127.0.0.1:9477",
        "control_socket": "/run/beatd/control.sock",
        "log_format": "json",
        "neighbour_refresh": True,
        "neighbour_resync_s": 30.0,     # the kernel's neighbour table read again this often (a
                                        # backstop for a missed netlink event)
    },
    # the device's ledger anchoring (docs/ledger.md): "local" by default; "none" keeps the daemon
    # off the ledger
    "ledger": {
        "backend": "local",
        "path": None,               # local: the ledger's LMDB file (default: STORE/ledger.lmdb)
        "key": None,                # the signer: device.ed25519 (local; default:
                                    # STORE/device.ed25519, made at the first start), device.eth
                                    # (ethereum)
        "device_key": None,         # ethereum: the device's Ed25519 key (its identity, checked
                                    # against the registration; evidence signatures)
        "url": None,                # ethereum: the JSON-RPC URL
        "contract": None,           # ethereum: the Beat contract's address
        "anchor_period_s": None,    # None: governance.anchor_period_s
        "max_leaves": 1 << 16,      # leaves per batch at most
        "confirmations": 0,         # ethereum: an anchor counts once this many blocks deep (0:
                                    # final at once: a dev chain, QBFT; a Clique network: e.g. 3)
        "max_fee_gwei": 100,        # ethereum: the most a transaction pays per gas (also when it
                                    # replaces a pending one): an error names it when reached
    },
    # the Interrogation service (gRPC over mutual TLS, docs/interrogation.md): off while listen
    # is ""; on, cert/key/ca are required (no plaintext fallback exists)
    "interrogation": {
        "listen": "",               # e.g. "0.0.0.0:50051"
        "cert": None,               # this device's TLS certificate (PEM; beat-lab certs)
        "key": None,                # its TLS private key (PEM, 0600)
        "ca": None,                 # the governance CA: only clients it signed connect
        "signing_key": None,        # the Ed25519 key that signs evidence; default: the
                                    # device key (ledger.key on local, ledger.device_key on
                                    # ethereum)
        "max_window_s": 3600.0,     # the longest window one request may ask for
        "max_records": 20_000_000,  # the most records one answer may carry
        "max_streams": 4,           # evidence streams open at once
        "max_flow_tags": 64,        # flow tags in one request
        "max_stream_s": 600.0,      # an answer still running after this long is cancelled
        "max_index_entries": 100_000,   # segments in one answer's signed index (coverage)
        "max_seg_seqs": 1024,       # segments one GetSegments request may name
        "max_peer_rpcs": 4,         # calls running at once of one certificate without the
                                    # governance role (health is all it may ask for)
        "max_device_rpcs": 8,       # ... of all the certificates without it, together
        "max_call_s": 60.0,         # any other call (Health.Watch, reflection) still running
                                    # after this long is cancelled
    },
}
LEDGER_BACKENDS = ("none", "local", "ethereum")
FANOUT_MODES = ("cpu", "hash", "lb")
LOG_FORMATS = ("json", "text")
IFNAMSIZ = 16
# the [capture] keys that make the capture ring's geometry: checked by the ring's own C check
# (fastpath/src/beat_ring.c, beat_ring_check_geometry), whose messages start with the field at fault
RING_GEOMETRY_KEYS = ("block_size", "block_count", "frame_size", "block_timeout_ms")
_GEOMETRY_MSG_RE = re.compile(r"^(%s)(?: (\d+))? (.*)$" % "|".join(RING_GEOMETRY_KEYS), re.S)
_GEOMETRY_NAME_RE = re.compile(r"\b(%s)\b" % "|".join(RING_GEOMETRY_KEYS))
# LMDB pages per receipt until it is pruned: 225 B measured (the receipt 106, its outbox leaf 53,
# its share of the batch's tree levels 66), rounded up for half-filled pages
RECEIPT_STORE_BYTES = 256
PRUNE_LAG_PERIODS = 3       # anchor periods between a batch's last leaf and its pruning, at most
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000 ** 2, "mb": 1000 ** 2, "g": 1000 ** 3,
          "gb": 1000 ** 3, "t": 1000 ** 4, "tb": 1000 ** 4, "kib": 1 << 10, "mib": 1 << 20,
          "gib": 1 << 30, "tib": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}([:-])(?:[0-9a-fA-F]{2}\1){4}[0-9a-fA-F]{2}$")


class ConfigError(Exception):
    """A configuration value is wrong; the message names the key and the value."""


def _show(value):
    return f'"{value}"' if isinstance(value, str) else repr(value)


def parse_size(value, key="size"):
    """Bytes from an int or a string such as ``"256MiB"``, ``"1GB"``, ``"4096"``."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: {_show(value)} is not a size")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = _SIZE_RE.match(value)
        if not m or m.group(2).lower() not in _UNITS:
            raise ConfigError(f'{key}: {_show(value)} is not a size (bytes, or e.g. "256MiB", "1GB")')
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    else:
        raise ConfigError(f"{key}: {_show(value)} is not a size")
    if n <= 0:
        raise ConfigError(f"{key}: {_show(value)} must be more than 0 bytes")
    return n


def check_not_self(neighbours, node_id, own_macs):
    """ConfigError when a neighbour is this device itself (its node_id, or a MAC of own_macs): the
    device would record itself as the previous or next hop, records that convict it. Checked at
    load and, on a reload, against the running node_id and own_macs."""
    for i, n in enumerate(neighbours):
        if node_id is not None and n.node_id == node_id:
            raise ConfigError(f"neighbours[{i}].node_id: {n.node_id} is this device's own node_id")
        if n.mac is not None and n.mac in own_macs:
            raise ConfigError(f"neighbours[{i}].mac: {format_mac(n.mac)} is one of own_macs "
                              "(this device's own interfaces, not a neighbour)")


def check_neighbour_mac(mac, key):
    """ConfigError when ``mac`` cannot be one neighbour's interface: the all-zero MAC, the
    broadcast MAC, or a multicast (group) MAC, which name no single device."""
    if mac == bytes(6):
        raise ConfigError(f"{key}: {format_mac(mac)} is the all-zero MAC, no device's")
    if mac == b"\xff" * 6:
        raise ConfigError(f"{key}: {format_mac(mac)} is the broadcast MAC, no single device's")
    if mac[0] & 1:
        raise ConfigError(f"{key}: {format_mac(mac)} is a multicast (group) MAC, no single "
                          "device's")


def check_links(neighbours):
    """ConfigError when two entries give one node_id where it would be named twice on one link.
    One neighbour may have several links to this device, so several entries with its node_id:
    one per link, each with its own ``interface`` (a MAC, or an IP, per link). Two entries with one
    node_id on the same interface, or one of them without an interface (named on every
    interface), contradict each other: which MAC is that neighbour's on the shared link?"""
    first = {}
    for i, n in enumerate(neighbours):
        if n.node_id not in first:
            first[n.node_id] = [(i, n)]
            continue
        for j, m in first[n.node_id]:
            if n.interface is None or m.interface is None:
                which = f"neighbours[{j}]" if m.interface is None else f"neighbours[{i}]"
                raise ConfigError(
                    f"neighbours[{i}].node_id: {n.node_id} is already neighbours[{j}].node_id, "
                    f"and {which} has no interface: a neighbour with several links is given "
                    "once per link, each entry with its own interface")
            if n.interface == m.interface:
                raise ConfigError(
                    f"neighbours[{i}].node_id: {n.node_id} is already neighbours[{j}].node_id on "
                    f"the same interface {_show(n.interface)}: one neighbour, two MACs on one "
                    "link (a wrong node_id?); a neighbour with several links is given once per "
                    "link, each entry with its own interface")
        first[n.node_id].append((i, n))


def parse_mac(value, key="mac"):
    """6 bytes from ``"aa:bb:cc:dd:ee:ff"`` (or with dashes)."""
    if not isinstance(value, str) or not _MAC_RE.match(value):
        raise ConfigError(f"{key}: {_show(value)} is not a MAC address")
    return bytes.fromhex(value.replace(":", "").replace("-", ""))


def format_mac(mac):
    return ":".join(f"{b:02x}" for b in mac)


@dataclasses.dataclass(frozen=True)
class Neighbour:
    """A neighbour's node_id and its MAC, its IP (the daemon learns the MAC from the kernel's
    neighbour table), or both; a MAC given here always wins over the kernel's. ``interface``: the
    captured interface on whose link the neighbour is; its MAC names it only there. Without it, a
    MAC learned from the kernel names it on the interface the kernel's entry is on, and a MAC given
    here names it on every interface (``beatd run`` warns)."""
    node_id: int
    mac: bytes | None
    ip: str | None = None
    interface: str | None = None


@dataclasses.dataclass(frozen=True)
class Config:
    node_id: int | None = DEFAULTS["node_id"]
    hash: str = DEFAULTS["hash"]
    own_macs: tuple = ()
    neighbours: tuple = ()
    store_path: str = DEFAULTS["store"]["path"]
    ring_size: int = DEFAULTS["store"]["ring_size"]
    map_size: int | None = DEFAULTS["store"]["map_size"]
    sync: str = DEFAULTS["store"]["sync"]
    sync_interval_s: float = DEFAULTS["store"]["sync_interval_s"]
    threshold_s: float = DEFAULTS["governance"]["threshold_s"]
    receipt_epoch_ms: int = DEFAULTS["governance"]["receipt_epoch_ms"]
    anchor_period_s: float = DEFAULTS["governance"]["anchor_period_s"]
    segment_records: int = DEFAULTS["governance"]["segment_records"]
    join_window_ms: float = DEFAULTS["governance"]["join_window_ms"]
    max_receipts_per_epoch: int = DEFAULTS["governance"]["max_receipts_per_epoch"]
    interfaces: tuple = ()
    workers: int = DEFAULTS["capture"]["workers"]
    block_size: int = DEFAULTS["capture"]["block_size"]
    block_count: int = DEFAULTS["capture"]["block_count"]
    frame_size: int = DEFAULTS["capture"]["frame_size"]
    block_timeout_ms: int = DEFAULTS["capture"]["block_timeout_ms"]
    fanout_mode: str = DEFAULTS["capture"]["fanout_mode"]
    commit_interval_ms: int = DEFAULTS["daemon"]["commit_interval_ms"]
    metrics_listen: str = DEFAULTS["daemon"]["metrics_listen"]
    control_socket: str = DEFAULTS["daemon"]["control_socket"]
    log_format: str = DEFAULTS["daemon"]["log_format"]
    neighbour_refresh: bool = DEFAULTS["daemon"]["neighbour_refresh"]
    neighbour_resync_s: float = DEFAULTS["daemon"]["neighbour_resync_s"]
    ledger_backend: str = DEFAULTS["ledger"]["backend"]
    ledger_path: str | None = None
    ledger_key: str | None = None
    ledger_device_key: str | None = None
    ledger_url: str | None = None
    ledger_contract: str | None = None
    ledger_anchor_period_s: float | None = None     # None: anchor_period_s (the governance's)
    ledger_max_leaves: int = DEFAULTS["ledger"]["max_leaves"]
    ledger_confirmations: int = DEFAULTS["ledger"]["confirmations"]
    ledger_max_fee_gwei: float = DEFAULTS["ledger"]["max_fee_gwei"]
    interrogation_listen: str = ""
    interrogation_cert: str | None = None
    interrogation_key: str | None = None
    interrogation_ca: str | None = None
    interrogation_signing_key: str | None = None
    interrogation_max_window_s: float = DEFAULTS["interrogation"]["max_window_s"]
    interrogation_max_records: int = DEFAULTS["interrogation"]["max_records"]
    interrogation_max_streams: int = DEFAULTS["interrogation"]["max_streams"]
    interrogation_max_flow_tags: int = DEFAULTS["interrogation"]["max_flow_tags"]
    interrogation_max_stream_s: float = DEFAULTS["interrogation"]["max_stream_s"]
    interrogation_max_index_entries: int = DEFAULTS["interrogation"]["max_index_entries"]
    interrogation_max_seg_seqs: int = DEFAULTS["interrogation"]["max_seg_seqs"]
    interrogation_max_peer_rpcs: int = DEFAULTS["interrogation"]["max_peer_rpcs"]
    interrogation_max_device_rpcs: int = DEFAULTS["interrogation"]["max_device_rpcs"]
    interrogation_max_call_s: float = DEFAULTS["interrogation"]["max_call_s"]
    ledger_path_default: bool = False   # ledger.path not configured: STORE/ledger.lmdb
    ledger_key_default: bool = False    # ledger.key not configured: STORE/device.ed25519

    @property
    def ledger_enabled(self):
        return self.ledger_backend != "none"

    @property
    def effective_ledger_anchor_period_s(self):
        """The batcher's period: ``ledger.anchor_period_s``, else ``governance.anchor_period_s``."""
        if self.ledger_anchor_period_s is not None:
            return self.ledger_anchor_period_s
        return self.anchor_period_s

    @property
    def receipts_bound_bytes(self):
        """The most the store holds in receipts (with their outbox leaves and tree levels) under
        any traffic, once anchoring works (docs/store.md, "How big the store gets"): receipts are
        pruned when anchored, older than threshold_s and their period's proofs left the ring, so
        at most the larger of what the cap lets through in threshold_s (plus the pruning lag),
        and two per record the ring holds."""
        epoch_s = self.receipt_epoch_ms / 1000.0
        span_s = self.threshold_s + PRUNE_LAG_PERIODS * self.anchor_period_s
        by_cap = 2 * (self.max_receipts_per_epoch + 1) * math.ceil(span_s / epoch_s)
        by_ring = 2 * (self.ring_size // (RECORD_SIZE + 8))
        return RECEIPT_STORE_BYTES * max(by_cap, by_ring)

    @property
    def effective_map_size(self):
        """The LMDB map: the ring four times over (free pages, history), 1 GiB for the rest, and
        room for the receipts the cap lets through (``receipts_bound_bytes``)."""
        if self.map_size is not None:
            return self.map_size
        return 4 * self.ring_size + (1 << 30) + self.receipts_bound_bytes

    @property
    def threshold_ns(self):
        return int(self.threshold_s * 1e9)

    def neighbour_map(self):
        """``{mac: node_id}`` of the neighbours whose MAC the configuration gives."""
        return {n.mac: n.node_id for n in self.neighbours if n.mac is not None}

    def ring_kwargs(self):
        """Keyword arguments for ``fastpath._native.Ring(ifname, ...)`` (fanout_group aside)."""
        return {"block_size": self.block_size, "block_count": self.block_count,
                "frame_size": self.frame_size, "block_timeout_ms": self.block_timeout_ms,
                "fanout_mode": self.fanout_mode}

    @property
    def metrics_address(self):
        """``(host, port)`` of metrics_listen, or None when it is "" (off)."""
        return parse_listen(self.metrics_listen) if self.metrics_listen else None

    def pipeline_kwargs(self):
        """Keyword arguments for ``fastpath.Pipeline(...)``."""
        if self.node_id is None:
            raise ConfigError("node_id: not set (give it in the configuration or with --node-id)")
        return {
            "node_id": self.node_id,
            "hash_name": self.hash,
            "own_macs": tuple(self.own_macs),
            "neighbours": self.neighbour_map(),
            "join_window_ns": int(self.join_window_ms * 1_000_000),
            "receipt_epoch_ns": int(self.receipt_epoch_ms) * 1_000_000,
            "segment_records": self.segment_records,
            "anchor_period_ns": int(self.anchor_period_s * 1e9),
            "max_receipts_per_epoch": self.max_receipts_per_epoch,
        }

    def store_kwargs(self):
        """Keyword arguments for ``beatd.store.Store(...)``."""
        if self.node_id is None:
            raise ConfigError("node_id: not set (give it in the configuration or with --node-id)")
        return {"path": self.store_path, "node_id": self.node_id, "hash_name": self.hash,
                "ring_size": self.ring_size, "map_size": self.effective_map_size,
                "sync": self.sync, "sync_interval_s": self.sync_interval_s}

    def value_of(self, key):
        """The value of a TOML key (``"capture.frame_size"``, ``"neighbours"``)."""
        return getattr(self, _FIELD_OF_KEY[key])

    def with_keys(self, other, keys):
        """A copy with the values of the TOML ``keys`` taken from ``other`` (a reload applies
        what it can, the running configuration keeps the rest)."""
        return dataclasses.replace(self, **{_FIELD_OF_KEY[k]: getattr(other, _FIELD_OF_KEY[k])
                                            for k in keys})

    def replace(self, **changes):
        """A copy with some fields changed, validated again (for command-line overrides)."""
        new = dataclasses.replace(self, **changes)
        _check_node_id(new.node_id, "node_id")
        if new.hash not in HASH_NAMES:
            raise ConfigError(f"hash: {_show(new.hash)} is not one of {', '.join(HASH_NAMES)}")
        return new


# -- reload: which keys a running daemon takes from a new configuration ------------------------

# The TOML key of every Config field (one place: docs/operations.md, "Reload", uses these names).
# The top-level keys keep their names; store.path is store_path; [ledger] and [interrogation] keys
# carry their table's name as a prefix; the other tables' keys are the field names.
_FIELD_PREFIX = {"store": "", "governance": "", "capture": "", "daemon": "", "ledger": "ledger_",
                 "interrogation": "interrogation_"}
TOML_KEYS = {}
for _table_name, _default in DEFAULTS.items():
    if isinstance(_default, dict):
        for _key in _default:
            _field = ("store_path" if (_table_name, _key) == ("store", "path")
                      else _FIELD_PREFIX[_table_name] + _key)
            TOML_KEYS[_field] = f"{_table_name}.{_key}"
    else:
        TOML_KEYS[_table_name] = _table_name
del _table_name, _default, _key, _field
# fields derived from others, not keys of their own (ledger.path and ledger.key say it)
_DERIVED_FIELDS = ("ledger_path_default", "ledger_key_default")

# The keys a reload (SIGHUP) applies to the running daemon; a change of any other key is logged
# by its name ("capture.frame_size changed: needs a restart") and takes effect at the next start.
RELOADABLE_KEYS = frozenset({"neighbours"})


@dataclasses.dataclass(frozen=True)
class ReloadPlan:
    """What a new configuration changes against the running one, by TOML key: the keys a reload
    applies (``apply``) and those that need a restart (``restart``), each in DEFAULTS order."""
    apply: tuple = ()
    restart: tuple = ()

    @property
    def changed(self):
        return bool(self.apply or self.restart)


def reload_plan(running, new):
    """Compare the whole of ``new`` with ``running``, key by key, against RELOADABLE_KEYS."""
    changed = [key for field, key in TOML_KEYS.items()
               if getattr(running, field) != getattr(new, field)]
    return ReloadPlan(apply=tuple(k for k in changed if k in RELOADABLE_KEYS),
                      restart=tuple(k for k in changed if k not in RELOADABLE_KEYS))


_FIELD_OF_KEY = {key: field for field, key in TOML_KEYS.items()}
if {f.name for f in dataclasses.fields(Config)} != set(TOML_KEYS) | set(_DERIVED_FIELDS):
    raise AssertionError("every Config field is a TOML key (TOML_KEYS) or derived from one "
                         "(_DERIVED_FIELDS)")


def _check_node_id(value, key, optional=True):
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= NODE_ID_MAX:
        raise ConfigError(f"{key}: {_show(value)} is not a node id (an integer in 1..2^64-2)")
    return value


def _number(table, name, prefix, integer=False, positive=True):
    value = table[name]
    key = f"{prefix}{name}"
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        raise ConfigError(f"{key}: {_show(value)} is not {'an integer' if integer else 'a number'}")
    if positive and not value > 0:
        raise ConfigError(f"{key}: {_show(value)} must be more than 0")
    return value


def _table(raw, defaults, prefix):
    """Merge a TOML table over its defaults, naming any key that is not known."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.')}: {_show(raw)} is not a table")
    testing = sorted(k for k in raw if str(k).replace("-", "_").lower().startswith("testing"))
    if testing:
        # the test-only switches (beatd run --testing-allow-inject, --testing-lie) exist on the
        # command line alone: no configuration file can turn one on
        raise ConfigError(f"{prefix}{testing[0]}: the testing switches (--testing-allow-inject, "
                          "--testing-lie) are TEST ONLY: command line only, never in a "
                          "configuration file")
    unknown = sorted(set(raw) - set(defaults))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(defaults))})")
    return {**defaults, **raw}


def from_dict(raw):
    """A validated ``Config`` from a parsed TOML document (a dict)."""
    top = _table(raw, DEFAULTS, "")
    node_id = _check_node_id(top["node_id"], "node_id")
    hash_name = top["hash"]
    if hash_name not in HASH_NAMES:
        raise ConfigError(f"hash: {_show(hash_name)} is not one of {', '.join(HASH_NAMES)}")
    if not isinstance(top["own_macs"], list):
        raise ConfigError(f"own_macs: {_show(top['own_macs'])} is not a list of MAC addresses")
    own = tuple(parse_mac(m, f"own_macs[{i}]") for i, m in enumerate(top["own_macs"]))

    interfaces = _interfaces(top["interfaces"])
    if not isinstance(top["neighbours"], list):
        raise ConfigError(f"neighbours: {_show(top['neighbours'])} is not an array of tables")
    neighbours = []
    seen = {}
    seen_ip = {}
    for i, n in enumerate(top["neighbours"]):
        p = f"neighbours[{i}]."
        n = _table(n, {"node_id": None, "mac": None, "ip": None, "interface": None}, p)
        if n["node_id"] is None:
            raise ConfigError(f"{p}node_id: missing")
        if n["mac"] is None and n["ip"] is None:
            raise ConfigError(f"{p}mac: missing (give mac, or ip to learn the MAC from the "
                              "kernel's neighbour table)")
        nid = _check_node_id(n["node_id"], p + "node_id", optional=False)
        mac = None
        if n["mac"] is not None:
            mac = parse_mac(n["mac"], p + "mac")
            check_neighbour_mac(mac, p + "mac")
            if mac in seen:
                raise ConfigError(f"{p}mac: {_show(n['mac'])} is already "
                                  f"neighbours[{seen[mac]}].mac")
            seen[mac] = i
        ip = n["ip"]
        if ip is not None:
            try:
                ip = str(ipaddress.ip_address(ip))
            except ValueError:
                raise ConfigError(f"{p}ip: {_show(ip)} is not an IP address") from None
            a = ipaddress.ip_address(ip)
            kind = ("a multicast" if a.is_multicast else "a loopback" if a.is_loopback else
                    "an unspecified" if a.is_unspecified else
                    "the broadcast" if ip == "255.255.255.255" else None)
            if kind:
                raise ConfigError(f"{p}ip: {_show(n['ip'])} is {kind} address, never one "
                                  "neighbour's")
            if ip in seen_ip:
                raise ConfigError(f"{p}ip: {_show(n['ip'])} is already "
                                  f"neighbours[{seen_ip[ip]}].ip")
            seen_ip[ip] = i
        iface = n["interface"]
        if iface is not None:
            _ifname(iface, p + "interface")
            if top["interfaces"] and iface not in top["interfaces"]:
                raise ConfigError(f"{p}interface: {_show(iface)} is not one of interfaces "
                                  f"({', '.join(str(x) for x in top['interfaces'])})")
        neighbours.append(Neighbour(nid, mac, ip, iface))
    check_not_self(neighbours, node_id, own)
    check_links(neighbours)

    st = _table(top["store"], DEFAULTS["store"], "store.")
    if not isinstance(st["path"], str) or not st["path"]:
        raise ConfigError(f"store.path: {_show(st['path'])} is not a directory path")
    ring_size = parse_size(st["ring_size"], "store.ring_size")
    map_size = None if st["map_size"] is None else parse_size(st["map_size"], "store.map_size")
    if map_size is not None and map_size < 2 * ring_size:
        raise ConfigError(f"store.map_size: {_show(st['map_size'])} is less than twice "
                          f"store.ring_size ({ring_size} bytes); the ring would not fit")
    if st["sync"] not in SYNC_MODES:
        raise ConfigError(f"store.sync: {_show(st['sync'])} is not one of {', '.join(SYNC_MODES)}")
    sync_interval = _number(st, "sync_interval_s", "store.")

    gv = _table(top["governance"], DEFAULTS["governance"], "governance.")
    seg = _number(gv, "segment_records", "governance.", integer=True)
    if seg > 1_000_000:
        raise ConfigError(f"governance.segment_records: {seg} is more than 1000000")
    epoch_ms = _number(gv, "receipt_epoch_ms", "governance.", integer=True)
    max_receipts = _number(gv, "max_receipts_per_epoch", "governance.", integer=True)
    if max_receipts > MAX_RECEIPTS_PER_EPOCH_LIMIT:
        raise ConfigError(f"governance.max_receipts_per_epoch: {max_receipts} is more than "
                          f"{MAX_RECEIPTS_PER_EPOCH_LIMIT}")
    if ring_size < 2 * (seg * 48 + 48):
        raise ConfigError(f"store.ring_size: {_show(st['ring_size'])} cannot hold two segments of "
                          f"governance.segment_records = {seg} records ({2 * (seg * 48 + 48)} bytes)")
    capture = _capture(top["capture"])
    daemon = _daemon(top["daemon"])
    ledger = _ledger(top["ledger"], st["path"])
    interrogation = _interrogation(top["interrogation"], ledger)
    return Config(
        interfaces=interfaces, **capture, **daemon, **ledger, **interrogation,
        node_id=node_id, hash=hash_name, own_macs=own, neighbours=tuple(neighbours),
        store_path=st["path"], ring_size=ring_size, map_size=map_size, sync=st["sync"],
        sync_interval_s=float(sync_interval),
        threshold_s=float(_number(gv, "threshold_s", "governance.")),
        receipt_epoch_ms=epoch_ms,
        anchor_period_s=float(_number(gv, "anchor_period_s", "governance.")),
        segment_records=seg,
        join_window_ms=float(_number(gv, "join_window_ms", "governance.")),
        max_receipts_per_epoch=max_receipts,
    )


def _ifname(name, key):
    if (not isinstance(name, str) or not name or len(name) >= IFNAMSIZ or "/" in name
            or any(c.isspace() for c in name) or name in (".", "..")):
        raise ConfigError(f"{key}: {_show(name)} is not an interface name (1 to "
                          f"{IFNAMSIZ - 1} characters, no '/' or space)")


def _interfaces(value):
    if not isinstance(value, list):
        raise ConfigError(f"interfaces: {_show(value)} is not a list of interface names")
    if len(value) > MAX_SLOT:
        raise ConfigError(f"interfaces: {len(value)} names, at most {MAX_SLOT} (each frame carries "
                          "the slot of its interface to the fast path: docs/fastpath.md)")
    seen = {}
    for i, name in enumerate(value):
        key = f"interfaces[{i}]"
        _ifname(name, key)
        if name in seen:
            raise ConfigError(f"{key}: {_show(name)} is already interfaces[{seen[name]}]")
        seen[name] = i
    return tuple(value)


def _capture(raw):
    c = _table(raw, DEFAULTS["capture"], "capture.")
    workers = _number(c, "workers", "capture.", integer=True, positive=False)
    if workers < 0 or workers > 1024:
        raise ConfigError(f"capture.workers: {workers} is not in 0..1024 (0 = one per CPU)")
    block_size = parse_size(c["block_size"], "capture.block_size")
    block_count = _number(c, "block_count", "capture.", integer=True)
    frame_size = _number(c, "frame_size", "capture.", integer=True)
    timeout = _number(c, "block_timeout_ms", "capture.", integer=True)
    _check_ring_geometry(c, {"block_size": block_size, "block_count": block_count,
                             "frame_size": frame_size, "block_timeout_ms": timeout})
    if c["fanout_mode"] not in FANOUT_MODES:
        raise ConfigError(f"capture.fanout_mode: {_show(c['fanout_mode'])} is not one of "
                          f"{', '.join(FANOUT_MODES)}")
    return {"workers": workers, "block_size": block_size, "block_count": block_count,
            "frame_size": frame_size, "block_timeout_ms": timeout, "fanout_mode": c["fanout_mode"]}


def _ring_geometry_check():
    """The capture ring's geometry check (``fastpath._native.ring_geometry``, the C rule the ring
    applies when it opens), or None when the native fast path is not built: then no ring can be
    opened either (``beatd run`` says so), and nothing here second-guesses the rule."""
    try:
        from fastpath._native import ring_geometry
    except (ImportError, AttributeError):
        return None
    return ring_geometry


def _check_ring_geometry(table, geometry):
    """The ring's C check on ``geometry`` (the numbers); its refusal as a ConfigError naming the
    [capture] key at fault and its value as written in ``table``."""
    check = _ring_geometry_check()
    if check is None:
        return
    try:
        check(**geometry)
    except OSError as exc:                  # fastpath._native.RingError
        message = exc.strerror or str(exc)
        m = _GEOMETRY_MSG_RE.match(message)
        if m is None:
            raise ConfigError(f"capture: the ring geometry is refused: {message}") from None
        field, _, reason = m.groups()
        value = table[field]
        shown = _show(value) + (f" ({geometry[field]} bytes)" if isinstance(value, str) else "")
        reason = _GEOMETRY_NAME_RE.sub(r"capture.\1", reason)
        raise ConfigError(f"capture.{field}: {shown} {reason}") from None


def parse_listen(value, key="daemon.metrics_listen"):
    """``(host, port)`` from ``"127.0.0.1:9477"``, ``"[::1]:9477"`` or ``":9477"`` (all)."""
    if not isinstance(value, str):
        raise ConfigError(f"{key}: {_show(value)} is not an address (host:port)")
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f'{key}: {_show(value)} is not an address (host:port, e.g. '
                          f'"127.0.0.1:9477", or "" for off)')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not re.match(r"^[A-Za-z0-9.-]+$", host):
                raise ConfigError(f"{key}: {_show(value)}: {_show(host)} is not a host") from None
    return host or "0.0.0.0", int(port)


def _daemon(raw):
    d = _table(raw, DEFAULTS["daemon"], "daemon.")
    interval = _number(d, "commit_interval_ms", "daemon.", integer=True)
    if interval > 60_000:
        raise ConfigError(f"daemon.commit_interval_ms: {interval} is more than 60000")
    listen = d["metrics_listen"]
    if listen != "":
        parse_listen(listen)
    sock = d["control_socket"]
    if not isinstance(sock, str) or (sock and not sock.startswith("/")):
        raise ConfigError(f"daemon.control_socket: {_show(sock)} is not an absolute path "
                          "(or \"\" for off)")
    if len(sock.encode()) > 107:
        raise ConfigError(f"daemon.control_socket: {_show(sock)} is longer than 107 bytes")
    if d["log_format"] not in LOG_FORMATS:
        raise ConfigError(f"daemon.log_format: {_show(d['log_format'])} is not one of "
                          f"{', '.join(LOG_FORMATS)}")
    if not isinstance(d["neighbour_refresh"], bool):
        raise ConfigError(f"daemon.neighbour_refresh: {_show(d['neighbour_refresh'])} is not "
                          "true or false")
    resync = _number(d, "neighbour_resync_s", "daemon.")
    if not 0.1 <= resync <= 86400:
        raise ConfigError(f"daemon.neighbour_resync_s: {resync} is not in 0.1..86400 seconds "
                          "(how often the kernel's neighbour table is read again)")
    return {"commit_interval_ms": interval, "metrics_listen": listen, "control_socket": sock,
            "log_format": d["log_format"], "neighbour_refresh": d["neighbour_refresh"],
            "neighbour_resync_s": float(resync)}


def check_key_file(path, key="ledger.key"):
    """A key file that exists, is a regular file and is not open to group/others (0600): checked
    with ``stat`` only (the daemon reads the key itself at start)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"{key}: {_show(path)}: cannot use the key file: "
                          f"{exc.strerror or exc} (make one with `beatd keygen --out DIR`)") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{key}: {_show(path)} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(f"{key}: {_show(path)}: mode {mode:04o} lets group/others read or "
                          f"write the key; refusing it (chmod 600 {path})")
    return path


def _ledger(raw, store_path):
    lg = _table(raw, DEFAULTS["ledger"], "ledger.")
    backend = lg["backend"]
    if backend not in LEDGER_BACKENDS:
        raise ConfigError(f"ledger.backend: {_show(backend)} is not one of "
                          f"{', '.join(LEDGER_BACKENDS)}")
    for name in ("path", "key", "device_key", "url", "contract"):
        v = lg[name]
        if v is not None and (not isinstance(v, str) or not v):
            raise ConfigError(f"ledger.{name}: {_show(v)} is not a non-empty string")
    period = None
    if lg["anchor_period_s"] is not None:
        period = float(_number(lg, "anchor_period_s", "ledger."))
    max_leaves = _number(lg, "max_leaves", "ledger.", integer=True)
    if max_leaves > 1 << 24:
        raise ConfigError(f"ledger.max_leaves: {max_leaves} is more than {1 << 24}")
    confirmations = lg["confirmations"]
    if not isinstance(confirmations, int) or isinstance(confirmations, bool) \
            or not 0 <= confirmations <= 1000:
        raise ConfigError(f"ledger.confirmations: {_show(confirmations)} is not a whole number "
                          "of blocks from 0 to 1000")
    out = {"ledger_backend": backend, "ledger_path": lg["path"], "ledger_key": lg["key"],
           "ledger_device_key": lg["device_key"],
           "ledger_url": lg["url"], "ledger_contract": lg["contract"],
           "ledger_anchor_period_s": period, "ledger_max_leaves": max_leaves,
           "ledger_confirmations": confirmations,
           "ledger_max_fee_gwei": float(_number(lg, "max_fee_gwei", "ledger."))}
    if backend == "none":
        return out
    if backend == "local":
        # the embedded default: the host's ledger file and the device key beside the store; the
        # daemon makes the key at its first start and waits for the governance to create the
        # ledger (docs/ledger.md, "The default: local")
        for name, file in (("path", "ledger.lmdb"), ("key", "device.ed25519")):
            if lg[name] is None:
                if not os.path.isabs(store_path):
                    raise ConfigError(f"ledger.{name}: not set, and store.path "
                                      f"{_show(store_path)} is not absolute to put it beside")
                lg[name] = os.path.join(store_path, file)
                out[f"ledger_{name}"] = lg[name]
                out[f"ledger_{name}_default"] = True
    need = ("path", "key") if backend == "local" else ("url", "contract", "key")
    for name in need:
        if lg[name] is None:
            raise ConfigError(f"ledger.{name}: missing (needed by ledger.backend = "
                              f"{_show(backend)})")
    if backend == "local" and not os.path.isabs(lg["path"]):
        raise ConfigError(f"ledger.path: {_show(lg['path'])} is not an absolute path")
    if backend == "ethereum" and not re.match(r"^(0x)?[0-9a-fA-F]{40}$", lg["contract"]):
        raise ConfigError(f"ledger.contract: {_show(lg['contract'])} is not a contract address "
                          "(40 hex digits)")
    if not out.get("ledger_key_default"):
        check_key_file(lg["key"])
    if lg["device_key"] is not None:
        if backend != "ethereum":
            raise ConfigError("ledger.device_key: only with ledger.backend = \"ethereum\" (on "
                              "\"local\", ledger.key is the device's Ed25519 key itself)")
        check_key_file(lg["device_key"], "ledger.device_key")
    return out


def _interrogation(raw, ledger):
    it = _table(raw, DEFAULTS["interrogation"], "interrogation.")
    listen = it["listen"]
    if not isinstance(listen, str):
        raise ConfigError(f"interrogation.listen: {_show(listen)} is not an address (host:port, "
                          'or "" for off)')
    window = float(_number(it, "max_window_s", "interrogation."))
    records = _number(it, "max_records", "interrogation.", integer=True)
    streams = _number(it, "max_streams", "interrogation.", integer=True)
    if streams > 1024:
        raise ConfigError(f"interrogation.max_streams: {streams} is more than 1024")
    tags = _number(it, "max_flow_tags", "interrogation.", integer=True)
    stream_s = float(_number(it, "max_stream_s", "interrogation."))
    index_entries = _number(it, "max_index_entries", "interrogation.", integer=True)
    seg_seqs = _number(it, "max_seg_seqs", "interrogation.", integer=True)
    peer_rpcs = _number(it, "max_peer_rpcs", "interrogation.", integer=True)
    device_rpcs = _number(it, "max_device_rpcs", "interrogation.", integer=True)
    if device_rpcs > 1024:                      # one worker thread each
        raise ConfigError(f"interrogation.max_device_rpcs: {device_rpcs} is more than 1024")
    if peer_rpcs > device_rpcs:
        raise ConfigError(f"interrogation.max_peer_rpcs: {peer_rpcs} is more than "
                          f"interrogation.max_device_rpcs ({device_rpcs}): one certificate "
                          "cannot have more calls than all of them together")
    call_s = float(_number(it, "max_call_s", "interrogation."))
    out = {"interrogation_listen": listen, "interrogation_max_window_s": window,
           "interrogation_max_records": records, "interrogation_max_streams": streams,
           "interrogation_max_flow_tags": tags, "interrogation_max_stream_s": stream_s,
           "interrogation_max_index_entries": index_entries,
           "interrogation_max_seg_seqs": seg_seqs,
           "interrogation_max_peer_rpcs": peer_rpcs, "interrogation_max_device_rpcs": device_rpcs,
           "interrogation_max_call_s": call_s}
    for name in ("cert", "key", "ca", "signing_key"):
        v = it[name]
        if v is not None and (not isinstance(v, str) or not os.path.isabs(v)):
            raise ConfigError(f"interrogation.{name}: {_show(v)} is not an absolute path")
        out[f"interrogation_{name}"] = v
    if listen == "":
        return out
    parse_listen(listen, "interrogation.listen")
    for name in ("cert", "key", "ca"):
        if it[name] is None:
            raise ConfigError(f"interrogation.{name}: missing (needed when interrogation.listen "
                              "is set: the service speaks mutual TLS only; `beat-lab certs` makes "
                              "a lab CA)")
        if name == "key":
            check_key_file(it[name], "interrogation.key")
        elif not os.path.isfile(it[name]):
            raise ConfigError(f"interrogation.{name}: {_show(it[name])}: no such file")
    signing = it["signing_key"]
    if signing is None:
        signing = (ledger["ledger_key"] if ledger["ledger_backend"] == "local"
                   else ledger["ledger_device_key"])
        if signing is None:
            raise ConfigError("interrogation.signing_key: missing (the Ed25519 key that signs "
                              "the evidence; with ledger.backend = "
                              f"{_show(ledger['ledger_backend'])} nothing provides it)")
        out["interrogation_signing_key"] = signing
    else:
        check_key_file(signing, "interrogation.signing_key")
    return out


def load(path):
    """Read and validate the TOML configuration at ``path``."""
    raw = read_toml(path, ConfigError, "configuration")
    try:
        return from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
