"""``beatctl serve --config gov.toml``: the service's configuration (docs/governance-service.md).

The file is the governance configuration of ``beatctl interrogate`` (``[interrogation]``,
``[judgement]``, ``[[endpoints]]``, ``[[links]]``: governance/interrogate.py) with one more table::

    [service]
    state_dir = "/var/lib/beat-governance/m1"   # its own state (state.json, evidence archives)
    listen = "127.0.0.1:9480"                   # metrics and the JSON API: loopback only
    poll_s = 0.5                                # the ledger is read this often
    receipt_epoch_ms = 1000                     # the domain's receipt epoch (beatd's)
    consecutive = 3                             # n: violating epochs in a row open a dispute
    unknown_breaks = false                      # an unknown epoch ends a streak (or is skipped)
    final_after_s = 10                          # an epoch not settled by then is unknown
    settle_ms = 200                             # anchors this far past an epoch's end hold all
                                                # its receipts (>= beatd's join window + block
                                                # timeout + commit interval: 110 ms by default)
    delay_sample_every_s = 60                   # a sampled interrogation this often ...
    delay_sample_window_s = 2                   # ... of a window this long ...
    delay_sample_lag_s = 5                      # ... ending this long ago (anchored by then)
    delay_percentile = 99                       # the delay compared with max_delay_us
    late_after_s = 30                           # a receipt anchored later than this: back-dated
    retry_undecided_s = 30                      # a dispute left undecided is interrogated again
    max_receipts_bytes = 4194304                # what one device may answer the monitor, a flow
    series_epochs = 600                         # epochs kept per SLA for the API
    backfill_s = 0                              # at the first start, evaluate from this long ago
    min_dispute_gap_s = 60                      # a window this soon after the last one: queued
    peer_evidence = []                          # other members' evidence/ dirs (read-only)
    peer_wait_s = 30                            # a dispute opened by another: wait for its archive
    stuck_after_s = 120                         # an own dispute undecided this long: not blocking

and an optional ``[http]`` table: the port behind mutual TLS, each client certificate mapped to a
tenant or a member (access.py); ``listen`` may then be any address.
"""
import dataclasses
import ipaddress
import os
import re

from beat_common.tomlfile import read_toml

from ..interrogate import ConfigError, load_config
from .access import load_http
from .monitor import DEFAULT_SETTLE_NS

__all__ = ["ServiceConfig", "load", "ConfigError"]


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    state_dir: str
    listen: str = "127.0.0.1:9480"
    poll_s: float = 0.5
    receipt_epoch_ms: int = 1000
    consecutive: int = 3
    unknown_breaks: bool = False
    final_after_s: float = 10.0
    settle_ms: float = DEFAULT_SETTLE_NS / 1e6
    delay_sample_every_s: float = 60.0
    delay_sample_window_s: float = 2.0
    delay_sample_lag_s: float = 5.0
    delay_percentile: float = 99.0
    late_after_s: float = 30.0
    retry_undecided_s: float = 30.0
    max_receipts_bytes: int = 4 << 20
    series_epochs: int = 600
    backfill_s: float = 0.0
    min_dispute_gap_s: float = 60.0
    peer_evidence: tuple = ()
    peer_wait_s: float = 30.0
    stuck_after_s: float = 120.0
    log_format: str = "json"
    http: object = None                 # access.HttpConfig: mutual TLS and tenants, or None

    @property
    def epoch_ns(self):
        return self.receipt_epoch_ms * 1_000_000

    @property
    def settle_ns(self):
        return int(self.settle_ms * 1_000_000)

    @property
    def host_port(self):
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


_NUMBERS = {  # key: (type, least, above)
    "poll_s": (float, 0.0, True), "receipt_epoch_ms": (int, 1, False),
    "consecutive": (int, 1, False), "final_after_s": (float, 0.0, True),
    "settle_ms": (float, 0.0, False),
    "delay_sample_every_s": (float, 0.0, False), "delay_sample_window_s": (float, 0.0, True),
    "delay_sample_lag_s": (float, 0.0, False), "delay_percentile": (float, 0.0, True),
    "late_after_s": (float, 0.0, True), "retry_undecided_s": (float, 0.0, True),
    "max_receipts_bytes": (int, 1024, False), "series_epochs": (int, 1, False),
    "backfill_s": (float, 0.0, False), "min_dispute_gap_s": (float, 0.0, False),
    "peer_wait_s": (float, 0.0, False), "stuck_after_s": (float, 0.0, True),
}


def _service(path, raw, tls=False):
    sv = raw.get("service")
    if not isinstance(sv, dict):
        raise ConfigError(f"{path}: service: missing ([service] with state_dir at least)")
    known = set(_NUMBERS) | {"state_dir", "listen", "unknown_breaks", "log_format",
                             "peer_evidence"}
    bad = sorted(set(sv) - known)
    if bad:
        raise ConfigError(f"{path}: service.{bad[0]}: unknown key (known: "
                          f"{', '.join(sorted(known))})")
    sd = sv.get("state_dir")
    if not isinstance(sd, str) or not sd:
        raise ConfigError(f"{path}: service.state_dir: missing (a directory for the service's "
                          "own state)")
    out = {"state_dir": sd}
    for key, (kind, least, above) in _NUMBERS.items():
        if key not in sv:
            continue
        v = sv[key]
        ok = not isinstance(v, bool) and isinstance(v, int if kind is int else (int, float))
        if ok and (v < least or (above and v == least)):
            ok = False
        if not ok:
            what = "an integer" if kind is int else "a number"
            raise ConfigError(f"{path}: service.{key}: {v!r} is not {what} "
                              f"{'>' if above else '>='} {least:g}")
        out[key] = kind(v)
    if out.get("delay_percentile", 99.0) > 100:
        raise ConfigError(f"{path}: service.delay_percentile: {out['delay_percentile']!r} is "
                          "above 100")
    if "unknown_breaks" in sv:
        if not isinstance(sv["unknown_breaks"], bool):
            raise ConfigError(f"{path}: service.unknown_breaks: {sv['unknown_breaks']!r} is not "
                              "true or false")
        out["unknown_breaks"] = sv["unknown_breaks"]
    if "peer_evidence" in sv:
        pe = sv["peer_evidence"]
        if not isinstance(pe, list) or not all(isinstance(x, str) and x for x in pe):
            raise ConfigError(f"{path}: service.peer_evidence: {pe!r} is not a list of "
                              "directories (other members' <state_dir>/evidence)")
        out["peer_evidence"] = tuple(pe)
    if "log_format" in sv:
        if sv["log_format"] not in ("json", "text"):
            raise ConfigError(f"{path}: service.log_format: {sv['log_format']!r} is not json or "
                              "text")
        out["log_format"] = sv["log_format"]
    if "listen" in sv:
        listen = sv["listen"]
        m = re.match(r"^\[?([^\]]+)\]?:(\d{1,5})$", listen) if isinstance(listen, str) else None
        if m is None or int(m.group(2)) > 65535:
            raise ConfigError(f"{path}: service.listen: {listen!r} is not host:port")
        try:
            loop = ipaddress.ip_address(m.group(1)).is_loopback
        except ValueError:
            loop = m.group(1) == "localhost"
        if not loop and not tls:
            raise ConfigError(f"{path}: service.listen: {listen!r} is not a loopback address "
                              "(the metrics and the API are for this host only: put a proxy in "
                              "front to publish them, or give an [http] table: mutual TLS)")
        out["listen"] = listen
    return ServiceConfig(**out)


def load(path):
    """``(ServiceConfig, GovernanceConfig)`` from ``path``; ConfigError naming the key."""
    if not os.path.isfile(path):
        raise ConfigError(f'{path}: no such file')
    raw = read_toml(path, ConfigError, "governance service configuration")
    http = load_http(path, raw)
    svc = dataclasses.replace(_service(path, raw, tls=http is not None), http=http)
    gov = load_config(path, extra=("service", "http"))
    if not gov.endpoints:
        raise ConfigError(f"{path}: endpoints: none ([[endpoints]] node_id, address: where each "
                          "device answers)")
    return svc, gov
