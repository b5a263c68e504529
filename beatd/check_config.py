"""``beatd check-config F``: the checks ``beatd run`` makes at start, without capturing.

One line per check, ``ok`` (with what was found) or ``FAIL: <reason>`` naming the key and its value,
and ``WARN: ...`` lines for what a start would warn about; exit code 0 when nothing failed, 2 when
something did (``beatd run`` would not start, or would start without what the file asks for).

The checks, in order (a configuration that does not load stops there: the others need it):
configuration (``beatd.config.load``: every key and value, the ring geometry through the ring's
own C check), node_id, interfaces (present in this network namespace; the set ``[]`` stands for,
stated), the neighbours' interfaces, capture permission (a packet socket opened and closed at once:
nothing is bound or captured), ring memory, ports (the metrics and Interrogation addresses bound
for an instant, then released), the control socket, the store (writable, not locked by another
process, this node's, the disk's free space), certificates (readable, the key matching the
certificate, validity dates, issued by the CA), the ledger (keys, the ledger reachable with a short
timeout, the node registered).

Nothing here writes to the store or the ledger; the checks run as the user who runs them (run it
as the daemon's user, ``sudo -u beatd beatd check-config F``, to check that user's rights).
"""
import dataclasses
import datetime
import errno
import os
import socket
import stat

__all__ = ["Line", "run", "main", "format_line", "LEDGER_TIMEOUT_S", "CERT_WARN_DAYS"]

LEDGER_TIMEOUT_S = 3.0          # the ledger's answer: at most this long (ethereum)
CERT_WARN_DAYS = 30             # a certificate expiring sooner is a warning
OK, FAIL, WARN = "ok", "FAIL", "WARN"


@dataclasses.dataclass
class Line:
    check: str                  # what was checked ("store", "interfaces", ...)
    status: str                 # ok, FAIL, WARN
    text: str = ""              # ok: what was found; FAIL/WARN: the reason


def format_line(line):
    if line.status == OK:
        return f"{line.check:<22} ok" + (f" ({line.text})" if line.text else "")
    return f"{line.check:<22} {line.status}: {line.text}"


def _q(value):
    return f'"{value}"'


def _err(exc):
    return getattr(exc, "strerror", None) or str(exc)


# -- the checks (each returns a list of Line) --------------------------------------------------

def check_interfaces(cfg):
    from .daemon import list_interfaces
    present = [n for _, n in sorted(socket.if_nameindex())]
    out = []
    if cfg.interfaces:
        missing = False
        for i, name in enumerate(cfg.interfaces):
            if name not in present:
                missing = True
                out.append(Line("interfaces", FAIL, f"interfaces[{i}]: {_q(name)}: no such network "
                                f"interface in this network namespace (present: "
                                f"{', '.join(present)})"))
        if not missing:
            out.append(Line("interfaces", OK, "captures on " + ", ".join(cfg.interfaces)))
        captured = list(cfg.interfaces)
    else:
        captured = list_interfaces()
        if not captured:
            return [Line("interfaces", FAIL, "interfaces: [] (every non-loopback interface) and "
                         "there is none here; list the interfaces to capture on")]
        out.append(Line("interfaces", OK, "interfaces = [] captures on every non-loopback "
                        "interface present at start: " + ", ".join(captured)))
        out.append(Line("interfaces", WARN, "interfaces = [] (the default) captures on every "
                        "interface, management ports included (" + ", ".join(captured) + "); "
                        "list the forwarding ports in interfaces"))
    for i, n in enumerate(cfg.neighbours):
        if n.interface is not None and n.interface not in captured:
            out.append(Line("neighbours", FAIL, f"neighbours[{i}].interface: {_q(n.interface)} "
                            f"is not a captured interface (interfaces: {', '.join(captured)})"))
    if not any(x.check == "neighbours" for x in out):
        out.append(Line("neighbours", OK, f"{len(cfg.neighbours)} configured"))
    return out


def check_capture_permission():
    """A packet socket opened (protocol 0: it receives nothing) and closed: what the rings need."""
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except PermissionError as exc:
        return [Line("capture permission", FAIL, f"this user (uid {os.geteuid()}) cannot open a "
                     f"packet socket: {_err(exc)}; beatd needs CAP_NET_RAW (the systemd unit "
                     "grants it; by hand: setpriv --inh-caps=+net_raw --ambient-caps=+net_raw, "
                     "or root)")]
    except OSError as exc:
        return [Line("capture permission", FAIL, f"cannot open a packet socket: {_err(exc)}")]
    s.close()
    return [Line("capture permission", OK, f"uid {os.geteuid()} may open packet sockets")]


def _workers(cfg):
    return cfg.workers or os.cpu_count() or 1


def ring_bytes(cfg):
    """The capture rings' memory: block_size x block_count per worker (one ring each)."""
    return cfg.block_size * cfg.block_count * _workers(cfg)


def check_ring(cfg):
    total = ring_bytes(cfg)
    text = (f"capture.block_size {cfg.block_size} x capture.block_count {cfg.block_count} x "
            f"{_workers(cfg)} workers = {total} bytes, capture.frame_size {cfg.frame_size}")
    from .store.space import mem_available
    avail = mem_available()
    if avail is not None and total > avail:
        return [Line("capture rings", FAIL, f"{text}: more than the {avail} bytes of memory "
                     "available; lower capture.block_count, capture.block_size or "
                     "capture.workers")]
    return [Line("capture rings", OK, text)]


def _bind_check(key, value, host, port):
    """Bind (host, port) for an instant, as the server would (SO_REUSEADDR)."""
    if port == 0:
        return Line(key, OK, f"{_q(value)}: any free port")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return Line(key, FAIL, f"{key}: {_q(value)}: {host!r} does not resolve: {exc.strerror}")
    fam, _, _, _, addr = infos[0]
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(addr)
        s.listen(1)
    except OSError as exc:
        why = {errno.EADDRINUSE: "another process listens there (ss -ltnp shows which); change "
                                 "the port",
               errno.EADDRNOTAVAIL: "not an address of this host (in this network namespace)",
               errno.EACCES: "a port below 1024 needs CAP_NET_BIND_SERVICE; use a higher one"}
        return Line(key, FAIL, f"{key}: {_q(value)}: cannot listen: {_err(exc)}"
                    + (f": {why[exc.errno]}" if exc.errno in why else ""))
    finally:
        s.close()
    return Line(key, OK, f"{_q(value)} is free")


def check_ports(cfg):
    from .config import parse_listen
    out = []
    if cfg.metrics_listen:
        host, port = parse_listen(cfg.metrics_listen)
        out.append(_bind_check("daemon.metrics_listen", cfg.metrics_listen, host, port))
    else:
        out.append(Line("daemon.metrics_listen", OK, "off"))
    if cfg.interrogation_listen:
        host, port = parse_listen(cfg.interrogation_listen, "interrogation.listen")
        out.append(_bind_check("interrogation.listen", cfg.interrogation_listen, host, port))
    else:
        out.append(Line("interrogation.listen", OK, "off"))
    return out


def _writable_dir(path):
    """None when ``path`` (a directory, made if missing) can be written by this user, else why."""
    p = os.path.abspath(path)
    if os.path.exists(p):
        if not os.path.isdir(p):
            return "exists and is not a directory"
        if not os.access(p, os.W_OK | os.X_OK):
            st = os.stat(p)
            return (f"not writable by this user (uid {os.geteuid()}; owner uid {st.st_uid}, mode "
                    f"{stat.S_IMODE(st.st_mode):04o})")
        return None
    parent = os.path.dirname(p)
    while not os.path.exists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"does not exist, and this user (uid {os.geteuid()}) cannot make it in {parent}"
    return None


def check_control_socket(cfg):
    from .control import ControlError, request
    path = cfg.control_socket
    if not path:
        return [Line("daemon.control_socket", OK, "off")]
    if os.path.exists(path):
        try:
            st = request(path, timeout=2.0)
        except ControlError:
            st = None
        if st is not None:
            return [Line("daemon.control_socket", FAIL, f"daemon.control_socket: {_q(path)}: a "
                         f"beatd answers there (pid {st.get('pid')}, node {st.get('node_id')}): "
                         "stop it first, or give this one another control socket")]
    why = _writable_dir(os.path.dirname(path))
    if why:
        return [Line("daemon.control_socket", FAIL, f"daemon.control_socket: {_q(path)}: its "
                     f"directory {why}")]
    return [Line("daemon.control_socket", OK, path)]


def check_store(cfg):
    from .store import Store, StoreError, lock_holder
    from .store.space import start_check, start_warnings, usage
    path = cfg.store_path
    why = _writable_dir(path)
    if why:
        return [Line("store", FAIL, f"store.path: {_q(path)}: {why}")]
    out = []
    try:
        pid = lock_holder(path)
    except StoreError as exc:
        return [Line("store", FAIL, str(exc))]
    if pid is not None:
        who = f"pid {pid}" if pid > 0 else "another process (pid unknown)"
        out.append(Line("store", FAIL, f"store.path: {_q(path)}: store in use by {who}: a store "
                        "has one user at a time; stop that process first, or use another "
                        "store.path"))
    found = "a new store (made at the first start)"
    if os.path.isfile(os.path.join(path, "data.mdb")):
        kw = cfg.store_kwargs()
        try:
            st = Store(**kw, readonly=True)
            try:
                ring = st.proof_ring_status(0, 0)
                found = (f"node {cfg.node_id}, {cfg.hash}, {ring.get('segments', 0)} segments in "
                         "its proof ring")
            finally:
                st.close()
        except StoreError as exc:
            out.append(Line("store", FAIL, str(exc)))
        except OSError as exc:
            out.append(Line("store", FAIL, f"store.path: {_q(path)}: cannot read the store: "
                            f"{_err(exc)}"))
    for problem in start_check(path, cfg.effective_map_size, ring_bytes(cfg)):
        out.append(Line("store disk", FAIL, problem))
    for warning in start_warnings(path, cfg.effective_map_size, ring_bytes(cfg)):
        out.append(Line("store disk", WARN, warning))
    if not any(x.status == FAIL and x.check == "store" for x in out):
        out.insert(0, Line("store", OK, f"{path}: {found}"))
    if not any(x.status == FAIL and x.check == "store disk" for x in out):
        try:
            u = usage(path)
            out.append(Line("store disk", OK, f"{u['free_bytes']} bytes free, the store takes "
                            f"{u['store_bytes']}, store.map_size {cfg.effective_map_size}"))
        except OSError:
            pass
    return out


# -- certificates ----------------------------------------------------------------------------

def _read(key, path):
    try:
        with open(path, "rb") as f:
            return f.read(), None
    except OSError as exc:
        return None, Line("certificates", FAIL, f"{key}: {_q(path)}: cannot read it: {_err(exc)}")


def _dates(key, path, cert, now):
    before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < before:
        return Line("certificates", FAIL, f"{key}: {_q(path)}: not valid before "
                    f"{before:%Y-%m-%d %H:%M} UTC (is this host's clock right?)")
    if now > after:
        return Line("certificates", FAIL, f"{key}: {_q(path)}: expired on "
                    f"{after:%Y-%m-%d %H:%M} UTC; issue a new one")
    if after - now < datetime.timedelta(days=CERT_WARN_DAYS):
        return Line("certificates", WARN, f"{key}: {_q(path)}: expires on "
                    f"{after:%Y-%m-%d %H:%M} UTC, in {(after - now).days} days")
    return None


def check_certificates(cfg, now=None):
    if not cfg.interrogation_listen:
        return [Line("certificates", OK, "interrogation off: none needed")]
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from .certs import ROLE_DEVICE, Role, roles_of, verify_issued_by
    now = now or datetime.datetime.now(datetime.timezone.utc)
    out = []
    pems = {}
    for key, path in (("interrogation.cert", cfg.interrogation_cert),
                      ("interrogation.key", cfg.interrogation_key),
                      ("interrogation.ca", cfg.interrogation_ca)):
        data, fail = _read(key, path)
        if fail:
            out.append(fail)
        pems[key] = data
    if out:
        return out
    try:
        cert = x509.load_pem_x509_certificate(pems["interrogation.cert"])
    except ValueError as exc:
        return [Line("certificates", FAIL, f"interrogation.cert: {_q(cfg.interrogation_cert)}: "
                     f"not a PEM certificate: {exc}")]
    try:
        ca = x509.load_pem_x509_certificate(pems["interrogation.ca"])
    except ValueError as exc:
        return [Line("certificates", FAIL, f"interrogation.ca: {_q(cfg.interrogation_ca)}: not a "
                     f"PEM certificate: {exc}")]
    try:
        key = serialization.load_pem_private_key(pems["interrogation.key"], password=None)
    except (ValueError, TypeError) as exc:
        return [Line("certificates", FAIL, f"interrogation.key: {_q(cfg.interrogation_key)}: not "
                     f"an unencrypted PEM private key: {exc}")]
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if cert.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        out.append(Line("certificates", FAIL, f"interrogation.key: {_q(cfg.interrogation_key)} is "
                        f"not the key of interrogation.cert {_q(cfg.interrogation_cert)}"))
    for k, p, c in (("interrogation.cert", cfg.interrogation_cert, cert),
                    ("interrogation.ca", cfg.interrogation_ca, ca)):
        line = _dates(k, p, c, now)
        if line is not None:
            out.append(line)
    if not verify_issued_by(cert, ca):
        out.append(Line("certificates", FAIL, f"interrogation.cert: {_q(cfg.interrogation_cert)} "
                        f"is not issued by interrogation.ca {_q(cfg.interrogation_ca)} (issuer "
                        f"{cert.issuer.rfc4514_string()}, CA {ca.subject.rfc4514_string()}): the "
                        "governance would refuse the TLS handshake"))
    want = Role(ROLE_DEVICE, cfg.node_id)
    roles = roles_of(cert)
    if roles != [want]:
        out.append(Line("certificates", WARN, f"interrogation.cert: {_q(cfg.interrogation_cert)} "
                        f"names {', '.join(map(str, roles)) or 'no BEAT role'}, not {want} "
                        f"(SAN URI {want.uri})"))
    out.extend(_signing_key(cfg))
    if not any(x.status == FAIL for x in out):
        out.insert(0, Line("certificates", OK, f"{cfg.interrogation_cert}: issued by "
                           f"{ca.subject.rfc4514_string()}, valid until "
                           f"{cert.not_valid_after_utc:%Y-%m-%d}, key matches"))
    return out


def _signing_key(cfg):
    from ledger_client.keys import DeviceKey, KeyFileError
    path = cfg.interrogation_signing_key
    if path is None:
        return []
    if (path == cfg.ledger_key and cfg.ledger_key_default and not os.path.exists(path)):
        return []                       # the device key, made at the first start
    try:
        DeviceKey.load(path)
    except KeyFileError as exc:
        return [Line("certificates", FAIL, f"interrogation.signing_key: {exc}")]
    return []


# -- the ledger ------------------------------------------------------------------------------

def check_ledger(cfg, timeout_s=LEDGER_TIMEOUT_S):
    if not cfg.ledger_enabled:
        return [Line("ledger", OK, 'off (ledger.backend = "none")')]
    if cfg.ledger_backend == "local":
        return _check_local(cfg)
    return _check_ethereum(cfg, timeout_s)


def _ledger_file_rights(path):
    """Why this user cannot open the local ledger file (LMDB opens it read-write and makes
    PATH-lock beside it), or None."""
    problems = []
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        st = os.stat(path)
        problems.append(f"{path} is not readable and writable by this user (uid {os.geteuid()}; "
                        f"owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})")
    lock = path + "-lock"
    if os.path.exists(lock) and not os.access(lock, os.R_OK | os.W_OK):
        st = os.stat(lock)
        problems.append(f"{lock} is not writable by this user (owner uid {st.st_uid})")
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(lock) and not os.access(d, os.W_OK | os.X_OK):
        problems.append(f"its directory {d} is not writable by this user (LMDB makes "
                        f"{os.path.basename(lock)} there)")
    if problems:
        return "; ".join(problems) + ": chown the files to the daemon's user (chown beatd:beatd)"
    return None


def _device_key(cfg, key_name="ledger.key"):
    """(DeviceKey or None, [Line])."""
    from ledger_client.keys import DeviceKey, KeyFileError
    path = cfg.ledger_key if key_name == "ledger.key" else cfg.ledger_device_key
    if key_name == "ledger.key" and cfg.ledger_key_default and not os.path.exists(path):
        why = _writable_dir(os.path.dirname(path))
        if why:
            return None, [Line("ledger", FAIL, f"ledger.key: {_q(path)}: not made yet, and its "
                               f"directory {why}")]
        return None, [Line("ledger", OK, f"ledger.key {path}: made at the first start")]
    try:
        return DeviceKey.load(path), []
    except KeyFileError as exc:
        return None, [Line("ledger", FAIL, f"{key_name}: {exc}")]


def _check_local(cfg):
    from ledger_client.backend import BackendSpec, open_backend
    from ledger_client.errors import LedgerError, NotFound
    key, out = _device_key(cfg)
    path = cfg.ledger_path
    why = _ledger_file_rights(path) if os.path.exists(path) else None
    if why:
        out.append(Line("ledger", FAIL, f"ledger.path: {_q(path)}: {why}"))
        return out
    try:
        backend = open_backend(BackendSpec("local", path=path), missing="error")
    except NotFound:
        if cfg.ledger_path_default:
            out.append(Line("ledger", WARN, f"ledger.path: {_q(path)}: no ledger there yet; the "
                            "daemon starts and the batches wait in the store until the governance "
                            "creates it (beatctl --ledger local:PATH register-node ...)"))
        else:
            out.append(Line("ledger", FAIL, f"ledger.path: {_q(path)}: no such ledger (the "
                            "governance creates it: beatctl --ledger local:PATH --key GOV_KEY "
                            "register-node ...)"))
        return out
    except (LedgerError, OSError) as exc:
        out.append(Line("ledger", FAIL, f"ledger.path: {_q(path)}: {exc}"))
        return out
    try:
        out.extend(_registration(cfg, backend, key, f"local {path}", f"ledger.path: {_q(path)}"))
    finally:
        getattr(backend, "close", lambda: None)()
    return out


def _registration(cfg, backend, pubkey_of, where, key, account=None):
    """Is this node registered with these keys? (``key``: the key and value the ledger was
    reached by, for a failure)."""
    try:
        node = backend.get_node(cfg.node_id)
    except Exception as exc:  # noqa: BLE001 (a check: named, never a traceback)
        return [Line("ledger", FAIL, f"{key}: unreachable, or no answer about node "
                     f"{cfg.node_id} within {LEDGER_TIMEOUT_S:g} s: {type(exc).__name__}: "
                     f"{exc}")]
    if node is None:
        return [Line("ledger", OK, f"{where} reachable"),
                Line("ledger", WARN, f"node_id {cfg.node_id} is not registered on {where}: its "
                     "anchors are refused until the governance registers it (beatctl "
                     "register-node)")]
    mismatch = []
    if pubkey_of is not None and bytes(node.pubkey or b"") != pubkey_of.public:
        mismatch.append("its public key differs from the device key's")
    if account is not None and bytes(node.account or b"") != account.address_bytes:
        mismatch.append("its account differs from ledger.key's")
    if mismatch:
        return [Line("ledger", OK, f"{where} reachable"),
                Line("ledger", WARN, f"node_id {cfg.node_id} is registered on {where}, but "
                     + " and ".join(mismatch) + ": its anchors will be refused")]
    return [Line("ledger", OK, f"{where} reachable, node {cfg.node_id} registered with this key")]


def _check_ethereum(cfg, timeout_s):
    from ledger_client.backend import BackendSpec, open_backend
    try:
        from ledger_client.ethereum import Account
    except (ImportError, AttributeError) as exc:
        return [Line("ledger", FAIL, f'ledger.backend: "ethereum" is not installed: {exc}; pip '
                     "install 'beat[ethereum]'")]
    out = []
    try:
        account = Account.from_file(cfg.ledger_key)
    except Exception as exc:  # noqa: BLE001 (named)
        return [Line("ledger", FAIL, f"ledger.key: {_q(cfg.ledger_key)}: not an Ethereum account "
                     f"key (device.eth from `beatd keygen --ethereum`): {exc}")]
    device = None
    if cfg.ledger_device_key is not None:
        device, lines = _device_key(cfg, "ledger.device_key")
        out.extend(lines)
    try:
        backend = open_backend(BackendSpec("ethereum", url=cfg.ledger_url,
                                           contract=cfg.ledger_contract), hash_name=cfg.hash,
                               timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 (named)
        out.append(Line("ledger", FAIL, f"ledger.url: {_q(cfg.ledger_url)}: unreachable or not "
                        f"the BEAT contract {cfg.ledger_contract}: {type(exc).__name__}: {exc}"))
        return out
    try:
        out.extend(_registration(cfg, backend, device, f"ethereum {cfg.ledger_url}",
                                 f"ledger.url: {_q(cfg.ledger_url)}", account))
    finally:
        getattr(backend, "close", lambda: None)()
    return out


# -- all of them -----------------------------------------------------------------------------

def run(path):
    """Every check of the configuration file at ``path``: a list of Line."""
    from .config import ConfigError, load
    try:
        cfg = load(path)
    except ConfigError as exc:
        return [Line("configuration", FAIL, str(exc))]
    out = [Line("configuration", OK, os.path.abspath(path))]
    if cfg.node_id is None:
        out.append(Line("node_id", FAIL, "node_id: not set (the id the governance registered)"))
        return out
    out.append(Line("node_id", OK, str(cfg.node_id)))
    for check in (check_interfaces, lambda c: check_capture_permission(), check_ring,
                  check_ports, check_control_socket, check_store, check_certificates,
                  check_ledger):
        try:
            out.extend(check(cfg))
        except Exception as exc:  # noqa: BLE001 (a check that broke is a failed check, named)
            out.append(Line("check", FAIL, f"{type(exc).__name__}: {exc}"))
    return out


def main(args, out=None):
    """``beatd check-config F``: prints the lines; 0 when nothing failed, else 2."""
    import sys
    out = out or sys.stdout
    lines = run(args.file)
    for line in lines:
        out.write(format_line(line) + "\n")
    failed = sum(1 for x in lines if x.status == FAIL)
    warned = sum(1 for x in lines if x.status == WARN)
    out.write(f"{args.file}: " + (f"{failed} check(s) FAILED" if failed else "every check ok")
              + (f", {warned} warning(s)" if warned else "") + "\n")
    out.flush()
    return 2 if failed else 0
