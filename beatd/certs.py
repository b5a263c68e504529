"""``beatd certs``: the lab CA and the mutual-TLS certificates of the Interrogation service.

    beatd certs ca --out DIR [--days N] [--force]
    beatd certs device --ca DIR --node-id N --out DIR [--dns NAME ...] [--ip ADDR ...] [--force]
    beatd certs governance --ca DIR --out DIR [--name NAME] [--dns NAME ...] [--force]

Keys are ECDSA P-256 (what every TLS stack, BoringSSL in gRPC included, accepts), certificates
X.509 v3 signed with ECDSA-SHA256. Files, PEM: ``ca.crt``/``ca.key``, ``device-N.crt``/
``device-N.key``, ``governance.crt``/``governance.key`` (or ``NAME.crt``/``NAME.key``). Keys are
created with mode 0600 (never wider, even for a moment); an existing file is kept (exit 2) unless
``--force``, which replaces it atomically.

Roles (docs/interrogation.md, "Certificates and roles"): exactly one SAN URI
``urn:beat:role:governance`` or ``urn:beat:role:device:<node_id>`` per leaf certificate. The
Interrogation server reads the role from the client certificate of the TLS session
(``peer_role``): any certificate of the domain's CA may ask for health (grpc.health.v1); everything
else (evidence, ``GetNodeInfo``, server reflection) needs ``governance`` (``beatd.rpc_guard``).
"""
import dataclasses
import datetime
import ipaddress
import os
import sys

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from beat_common.spec import NODE_ID_MAX
from ledger_client.keys import write_new_file

__all__ = ["Role", "CertError", "ROLE_GOVERNANCE", "ROLE_DEVICE", "ROLE_URI_PREFIX", "make_ca",
           "make_device", "make_governance", "load_ca", "peer_role", "roles_of", "verify_issued_by",
           "add_parser", "main"]

ROLE_URI_PREFIX = "urn:beat:role:"
ROLE_GOVERNANCE = "governance"
ROLE_DEVICE = "device"
CA_DAYS = 3650
LEAF_DAYS = 825
EXIT_USAGE = 2


class CertError(Exception):
    """A certificate or key that cannot be made or used; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Role:
    """A peer's role: ``kind`` "governance" or "device" (with its ``node_id``)."""
    kind: str
    node_id: int | None = None

    @property
    def uri(self):
        if self.kind == ROLE_DEVICE:
            return f"{ROLE_URI_PREFIX}{ROLE_DEVICE}:{self.node_id}"
        return f"{ROLE_URI_PREFIX}{self.kind}"

    def __str__(self):
        return self.kind if self.node_id is None else f"{self.kind}:{self.node_id}"


def parse_role_uri(uri):
    """The Role of one SAN URI, or None when it is not a BEAT role URI (or a malformed one)."""
    if not uri.startswith(ROLE_URI_PREFIX):
        return None
    rest = uri[len(ROLE_URI_PREFIX):]
    if rest == ROLE_GOVERNANCE:
        return Role(ROLE_GOVERNANCE)
    kind, _, node = rest.partition(":")
    if kind == ROLE_DEVICE and node.isdigit() and 1 <= int(node) <= NODE_ID_MAX:
        return Role(ROLE_DEVICE, int(node))
    return None


def roles_of(cert):
    """Every BEAT role named by the certificate's SAN URIs (a list, normally of one)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    roles = []
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        role = parse_role_uri(uri)
        if role is not None:
            roles.append(role)
    return roles


def peer_role(pem):
    """``(role, why)`` for a peer certificate in PEM: the Role when it names exactly one, else
    ``(None, why)`` with ``why`` saying what it has instead ("no role", "2 roles: ...")."""
    try:
        cert = x509.load_pem_x509_certificate(bytes(pem))
    except ValueError as exc:
        return None, f"an unreadable certificate ({exc})"
    roles = roles_of(cert)
    if len(roles) == 1:
        return roles[0], str(roles[0])
    if not roles:
        return None, f"no role (no {ROLE_URI_PREFIX}... SAN URI)"
    return None, f"{len(roles)} roles ({', '.join(map(str, roles))}): ambiguous"


def verify_issued_by(cert, ca_cert):
    """True when ``cert`` is signed by ``ca_cert``'s key and names it as its issuer."""
    try:
        cert.verify_directly_issued_by(ca_cert)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


# -- files --------------------------------------------------------------------------------------

def _save_pair(out_dir, name, cert, key, force):
    crt_path = os.path.join(out_dir, f"{name}.crt")
    key_path = os.path.join(out_dir, f"{name}.key")
    if not force:
        for path in (crt_path, key_path):
            if os.path.lexists(path):
                raise CertError(f"{path}: already there; use --force to replace it")
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    try:
        write_new_file(key_path, key_pem, 0o600, force)
        write_new_file(crt_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, force)
    except FileExistsError as exc:
        raise CertError(f"{exc.filename}: already there; use --force to replace it") from None
    except OSError as exc:
        raise CertError(f"{exc.filename or out_dir}: cannot write: {exc.strerror or exc}") from None
    return crt_path, key_path


def _out_dir(path):
    path = os.fspath(path)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise CertError(f"{path}: cannot create the directory: {exc.strerror or exc}") from None
    if not os.path.isdir(path):
        raise CertError(f"{path}: not a directory")
    return path


def load_ca(ca_dir):
    """``(certificate, private key)`` of the CA in ``ca_dir`` (ca.crt, ca.key)."""
    crt_path = os.path.join(os.fspath(ca_dir), "ca.crt")
    key_path = os.path.join(os.fspath(ca_dir), "ca.key")
    try:
        with open(crt_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except OSError as exc:
        raise CertError(f"{crt_path}: cannot read the CA certificate: {exc.strerror or exc} "
                        "(make one with beatd certs ca --out DIR)") from None
    except ValueError as exc:
        raise CertError(f"{crt_path}: not a PEM certificate ({exc})") from None
    try:
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except OSError as exc:
        raise CertError(f"{key_path}: cannot read the CA key: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise CertError(f"{key_path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{key_path}: not an ECDSA key ({type(key).__name__})")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise CertError(f"{key_path}: this key does not belong to {crt_path}")
    return cert, key


# -- making -------------------------------------------------------------------------------------

def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "BEAT"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(out_dir, common_name="BEAT lab CA", days=CA_DAYS, force=False):
    """A self-signed CA (P-256): writes ``ca.crt``, ``ca.key`` (0600); returns their paths."""
    if days < 1:
        raise CertError(f"--days: {days} must be at least 1")
    out_dir = _out_dir(out_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    name = _name(common_name)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    return _save_pair(out_dir, "ca", cert, key, force)


def _leaf(ca_dir, out_dir, file_name, common_name, role, dns, ips, days, force):
    if days < 1:
        raise CertError(f"--days: {days} must be at least 1")
    ca_cert, ca_key = load_ca(ca_dir)
    out_dir = _out_dir(out_dir)
    names = [x509.UniformResourceIdentifier(role.uri)]
    for d in dns:
        if not d or any(c.isspace() for c in d):
            raise CertError(f"--dns: {d!r} is not a DNS name")
        names.append(x509.DNSName(d))
    for ip in ips:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise CertError(f"--ip: {ip!r} is not an IP address") from None
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return _save_pair(out_dir, file_name, cert, key, force)


def make_device(ca_dir, out_dir, node_id, dns=(), ips=(), days=LEAF_DAYS, force=False):
    """A device's certificate (role ``device:<node_id>``, server and client auth) with the DNS
    names and IP addresses the governance dials it by: ``device-<node_id>.crt``/``.key``."""
    if not isinstance(node_id, int) or not 1 <= node_id <= NODE_ID_MAX:
        raise CertError(f"--node-id: {node_id!r} is not in 1..2^64-2")
    if not dns and not ips:
        raise CertError(f"device {node_id}: give at least one --dns or --ip: the names the "
                        "governance connects to (TLS checks them)")
    return _leaf(ca_dir, out_dir, f"device-{node_id}", f"beat-device-{node_id}",
                 Role(ROLE_DEVICE, node_id), dns, ips, days, force)


def make_governance(ca_dir, out_dir, name="governance", dns=(), days=LEAF_DAYS, force=False):
    """The governance's client certificate (role ``governance``): ``NAME.crt``/``NAME.key``."""
    if not name or "/" in name or name.startswith("."):
        raise CertError(f"--name: {name!r} is not a plain file name")
    return _leaf(ca_dir, out_dir, name, f"beat-{name}", Role(ROLE_GOVERNANCE), dns, (), days,
                 force)


# -- command line -------------------------------------------------------------------------------

def add_parser(subparsers):
    """Add ``certs`` (with ``ca``, ``device``, ``governance``) to beatd's subcommands."""
    p = subparsers.add_parser("certs", help="make the lab CA and mutual-TLS certificates",
                              description="The lab CA and the certificates of the Interrogation "
                                          "service (ECDSA P-256; keys 0600).")
    sub = p.add_subparsers(dest="certs_command", required=True, metavar="KIND")
    ca = sub.add_parser("ca", help="a self-signed lab CA: DIR/ca.crt, DIR/ca.key")
    ca.add_argument("--out", metavar="DIR", required=True)
    ca.add_argument("--name", default="BEAT lab CA", help="its common name")
    ca.add_argument("--days", type=int, default=CA_DAYS, help=f"validity (default {CA_DAYS})")
    ca.add_argument("--force", action="store_true", help="replace existing files")
    d = sub.add_parser("device", help="a device certificate (role device:N): "
                                      "DIR/device-N.crt, .key")
    d.add_argument("--ca", metavar="DIR", required=True, help="the CA's directory")
    d.add_argument("--node-id", type=int, required=True)
    d.add_argument("--out", metavar="DIR", required=True)
    d.add_argument("--dns", action="append", default=[], metavar="NAME",
                   help="a DNS name the governance dials (repeatable)")
    d.add_argument("--ip", action="append", default=[], metavar="ADDR",
                   help="an IP address the governance dials (repeatable)")
    d.add_argument("--days", type=int, default=LEAF_DAYS, help=f"validity (default {LEAF_DAYS})")
    d.add_argument("--force", action="store_true", help="replace existing files")
    g = sub.add_parser("governance", help="the governance's client certificate (role "
                                          "governance): DIR/NAME.crt, .key")
    g.add_argument("--ca", metavar="DIR", required=True, help="the CA's directory")
    g.add_argument("--out", metavar="DIR", required=True)
    g.add_argument("--name", default="governance", help="file name (default governance)")
    g.add_argument("--dns", action="append", default=[], metavar="NAME")
    g.add_argument("--days", type=int, default=LEAF_DAYS, help=f"validity (default {LEAF_DAYS})")
    g.add_argument("--force", action="store_true", help="replace existing files")
    return p


def main(args):
    """Run ``beatd certs ...``; returns the exit code (0, or 2 with one line on stderr)."""
    try:
        if args.certs_command == "ca":
            paths = make_ca(args.out, args.name, args.days, args.force)
        elif args.certs_command == "device":
            paths = make_device(args.ca, args.out, args.node_id, args.dns, args.ip, args.days,
                                args.force)
        else:
            paths = make_governance(args.ca, args.out, args.name, args.dns, args.days, args.force)
    except CertError as exc:
        print(f"beatd: certs {args.certs_command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for path in paths:
        print(path)
    return 0
