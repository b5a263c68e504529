"""The roles of the Interrogation service's mutual-TLS certificates, as the device reads them.

What beatd needs at run time: the role a peer's certificate names, and whether a certificate was
issued by a given CA. Making certificates (the lab CA, ``beat-lab certs``) is the testbed's:
``beat_lab/ca.py``.

Roles (docs/interrogation.md, "Certificates and roles"): exactly one SAN URI
``urn:beat:role:governance`` or ``urn:beat:role:device:<node_id>`` per leaf certificate. The
Interrogation server reads the role from the client certificate of the TLS session
(``peer_role``): any certificate of the domain's CA may ask for health (grpc.health.v1); everything
else (evidence, ``GetNodeInfo``, server reflection) needs ``governance`` (``beatd.rpc_guard``).
"""
import dataclasses

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from beat_common.spec import NODE_ID_MAX

__all__ = ["Role", "ROLE_GOVERNANCE", "ROLE_DEVICE", "ROLE_URI_PREFIX", "NODE_ID_MAX",
           "parse_role_uri", "peer_role", "roles_of", "verify_issued_by"]

ROLE_URI_PREFIX = "urn:beat:role:"
ROLE_GOVERNANCE = "governance"
ROLE_DEVICE = "device"


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
