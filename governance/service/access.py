"""Who may read the service's HTTP port, and what each client sees (docs/governance-service.md,
"Web page").

Without an ``[http]`` table the port is bound to loopback and everyone on this host sees
everything (the operator's view). With one, the port speaks TLS and requires a client certificate
issued by ``client_ca``; the certificate is then mapped to what it may see::

    [http]
    tls_cert = "/etc/beat/gov-web.crt"      # the server's certificate and key (PEM)
    tls_key = "/etc/beat/gov-web.key"
    client_ca = "/etc/beat/clients-ca.crt"  # clients' certificates must be issued by this CA

    [[http.clients]]                        # a tenant: its own SLAs only
    sha256 = "3f:a1:..."                    # the client certificate's SHA-256 fingerprint ...
    tenant = "tenant-a"                     # ... sees the SLAs of this tenant (as on the ledger)

    [[http.clients]]
    cn = "member-2"                         # ... or its subject's common name
    member = true                           # a committee member or operator: everything

A certificate of the CA that no entry lists is refused (403): the CA alone grants nothing. A
tenant sees its SLAs, their disputes and reports, and the routers of their routes; another
tenant's SLA, dispute or report is "not found" (404), the same answer as an id that does not
exist, so that guessing ids tells nothing. Tenants see no pending proposals (their arguments name
other tenants' SLAs) and not /metrics (labelled with every SLA).
"""
import dataclasses
import hashlib
import os
import re
import ssl

from ..interrogate import ConfigError

__all__ = ["HttpConfig", "Client", "LOCAL", "load_http", "server_context", "identify",
           "fingerprint", "Scope"]

_FP = re.compile(r"^[0-9a-f]{64}$")


@dataclasses.dataclass(frozen=True)
class Client:
    """One client's view: ``tenant`` None sees everything (a member, or loopback without TLS)."""
    name: str
    tenant: str | None = None
    known: bool = True

    @property
    def member(self):
        return self.known and self.tenant is None


LOCAL = Client("loopback")
UNKNOWN = Client("unknown certificate", known=False)


@dataclasses.dataclass(frozen=True)
class ClientEntry:
    sha256: str | None
    cn: str | None
    tenant: str | None

    @property
    def label(self):
        return f"cn={self.cn}" if self.cn is not None else f"sha256={self.sha256[:16]}.."


@dataclasses.dataclass(frozen=True)
class HttpConfig:
    tls_cert: str
    tls_key: str
    client_ca: str
    clients: tuple = ()


def fingerprint(der):
    """The SHA-256 fingerprint of a DER certificate, lower-case hex without separators."""
    return hashlib.sha256(der).hexdigest()


def _norm_fp(text):
    return text.replace(":", "").replace(" ", "").lower()


def load_http(path, raw):
    """The ``[http]`` table of the service's configuration (None when absent); ConfigError
    naming the key."""
    h = raw.get("http")
    if h is None:
        return None
    if not isinstance(h, dict):
        raise ConfigError(f"{path}: http: not a table")
    known = {"tls_cert", "tls_key", "client_ca", "clients"}
    bad = sorted(set(h) - known)
    if bad:
        raise ConfigError(f"{path}: http.{bad[0]}: unknown key (known: {', '.join(sorted(known))})")
    files = {}
    for key in ("tls_cert", "tls_key", "client_ca"):
        v = h.get(key)
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{path}: http.{key}: missing (with [http], the port speaks mutual "
                              "TLS: tls_cert, tls_key and client_ca are all needed)")
        if not os.path.isfile(v):
            raise ConfigError(f"{path}: http.{key}: {v}: no such file")
        files[key] = v
    entries = h.get("clients")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: http.clients: none ([[http.clients]] with sha256 or cn, and "
                          "tenant or member = true): with none, every client would be refused")
    clients, seen = [], set()
    for i, e in enumerate(entries):
        where = f"{path}: http.clients[{i}]"
        if not isinstance(e, dict):
            raise ConfigError(f"{where}: not a table")
        bad = sorted(set(e) - {"sha256", "cn", "tenant", "member"})
        if bad:
            raise ConfigError(f"{where}.{bad[0]}: unknown key (known: cn, member, sha256, tenant)")
        if ("sha256" in e) == ("cn" in e):
            raise ConfigError(f"{where}: give exactly one of sha256 (the certificate's "
                              "fingerprint) or cn (its subject's common name)")
        sha = cn = None
        if "sha256" in e:
            sha = _norm_fp(e["sha256"]) if isinstance(e["sha256"], str) else ""
            if not _FP.match(sha):
                raise ConfigError(f"{where}.sha256: {e['sha256']!r} is not a SHA-256 fingerprint "
                                  "(64 hex digits, colons allowed)")
        else:
            cn = e["cn"]
            if not isinstance(cn, str) or not cn:
                raise ConfigError(f"{where}.cn: {cn!r} is not a common name")
        member = e.get("member", False)
        if not isinstance(member, bool):
            raise ConfigError(f"{where}.member: {member!r} is not true or false")
        tenant = e.get("tenant")
        if (tenant is not None) == member:
            raise ConfigError(f"{where}: give exactly one of tenant = \"NAME\" (sees that "
                              "tenant's SLAs) or member = true (sees everything)")
        if tenant is not None and (not isinstance(tenant, str) or not tenant):
            raise ConfigError(f"{where}.tenant: {tenant!r} is not a tenant name")
        key = ("sha256", sha) if sha else ("cn", cn)
        if key in seen:
            raise ConfigError(f"{where}.{key[0]}: {key[1]!r} is listed twice")
        seen.add(key)
        clients.append(ClientEntry(sha, cn, tenant))
    cfg = HttpConfig(files["tls_cert"], files["tls_key"], files["client_ca"], tuple(clients))
    server_context(cfg, path)               # the files load, or the configuration is refused
    return cfg


def server_context(cfg, path="configuration"):
    """The server's TLS context: TLS 1.2+, a client certificate of ``client_ca`` required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{path}: http.tls_cert/tls_key: {cfg.tls_cert}, {cfg.tls_key}: "
                          f"not a certificate and its key ({exc})") from None
    try:
        ctx.load_verify_locations(cafile=cfg.client_ca)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{path}: http.client_ca: {cfg.client_ca}: not a PEM CA certificate "
                          f"({exc})") from None
    return ctx


def _common_name(der):
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return cns[0].value if len(cns) == 1 else None      # none, or ambiguous: no CN match


def identify(cfg, der):
    """The Client a verified peer certificate (DER) is: by fingerprint first, then by CN;
    UNKNOWN when no entry lists it. ``cfg`` None (no TLS): LOCAL."""
    if cfg is None:
        return LOCAL
    if not der:
        return UNKNOWN
    fp = fingerprint(der)
    for e in cfg.clients:
        if e.sha256 == fp:
            return Client(e.label, e.tenant)
    cn = _common_name(der)
    if cn is not None:
        for e in cfg.clients:
            if e.cn == cn:
                return Client(e.label, e.tenant)
    return UNKNOWN


class Scope:
    """What ``client`` may see of the ledger's ``view`` (the watcher's last read)."""

    def __init__(self, client, view):
        self.client = client
        if client.tenant is None:
            self.slas = self.nodes = None                  # everything
        else:
            mine = [s for s in (view.slas.values() if view is not None else ())
                    if s.tenant == client.tenant]
            self.slas = {s.sla_id for s in mine}
            self.nodes = {n for s in mine for n in s.route}

    def sla(self, sla_id):
        return self.slas is None or int(sla_id) in self.slas

    def restrict(self, kind, out):
        """The JSON ``out`` of route ``kind`` cut to this client's view; None: not found."""
        if self.slas is None or out is None:
            return out
        if kind == "slas":
            return [s for s in out if s["sla_id"] in self.slas]
        if kind in ("sla", "report", "report_svg"):
            return out if self.sla(out["sla_id"]) else None
        if kind == "disputes":
            return [d for d in out if d["sla_id"] in self.slas]
        if kind == "routers":
            return [r for r in out if r["node_id"] in self.nodes]
        if kind == "proposals":
            return {"committee": out["committee"], "pending": []}
        if kind in ("health", "access", "static"):
            return out
        return None                                        # anything else: members only
