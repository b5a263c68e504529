"""The lab CA (beat_lab/ca.py, ``beat-lab certs``), the roles beatd reads (beatd/certs.py), and
mutual TLS on the real Interrogation server.

Certificates: made, 0600 keys, chains that verify (and do not against another CA), roles in SAN
URIs, nothing overwritten without --force, errors naming the file or option. gRPC on 127.0.0.1: the
governance certificate is served; a certificate of another CA, no certificate at all, or a server
of another CA fail the TLS handshake; a device-role (or role-less) certificate may ask for health
but gets PERMISSION_DENIED, naming its role, for GetNodeInfo and every evidence call.
"""
import datetime
import os
import stat

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from beat_rpc import interrogation_pb2 as pb
from beat_rpc import interrogation_pb2_grpc as pb_grpc
from beat_lab import ca as lab_ca
from beat_lab import cli as lab_cli
from beatd import certs
from beatd.interrogation import InterrogationServer
from beatd.store import Store
from governance.client import InterrogationClient, NodeUnreachable, RequestRejected
from ledger_client.keys import DeviceKey

NODE = 9
H = "sha3-256"


def _load(path):
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = d / "ca"
    lab_ca.make_ca(ca)
    lab_ca.make_device(ca, d, NODE, dns=["localhost"], ips=["127.0.0.1", "::1"])
    lab_ca.make_device(ca, d, NODE + 1, ips=["127.0.0.1"])
    lab_ca.make_governance(ca, d)
    other = d / "other-ca"
    lab_ca.make_ca(other, "another CA")
    lab_ca.make_governance(other, d / "other")
    lab_ca.make_device(other, d / "other", NODE, ips=["127.0.0.1"])
    return d


def test_files_modes_chain_and_roles(pki):
    ca = _load(pki / "ca" / "ca.crt")
    other = _load(pki / "other-ca" / "ca.crt")
    for name in ("ca/ca.key", f"device-{NODE}.key", "governance.key", "other-ca/ca.key"):
        assert _mode(pki / name) == 0o600, name
    for name in ("ca/ca.crt", f"device-{NODE}.crt", "governance.crt"):
        assert _mode(pki / name) == 0o644, name
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert certs.verify_issued_by(ca, ca)
    dev, gov = _load(pki / f"device-{NODE}.crt"), _load(pki / "governance.crt")
    for leaf in (dev, gov):
        assert certs.verify_issued_by(leaf, ca)
        assert not certs.verify_issued_by(leaf, other)
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.CLIENT_AUTH in eku and ExtendedKeyUsageOID.SERVER_AUTH in eku
        assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
        assert leaf.public_key().curve.name == "secp256r1"
    assert not certs.verify_issued_by(_load(pki / "other" / "governance.crt"), ca)
    assert certs.roles_of(dev) == [certs.Role("device", NODE)]
    assert certs.roles_of(gov) == [certs.Role("governance")]
    san = dev.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"urn:beat:role:device:{NODE}"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    role, why = certs.peer_role(dev.public_bytes(serialization.Encoding.PEM))
    assert role == certs.Role("device", NODE) and why == f"device:{NODE}"


def test_role_uris():
    assert certs.parse_role_uri("urn:beat:role:governance") == certs.Role("governance")
    assert certs.parse_role_uri("urn:beat:role:device:17") == certs.Role("device", 17)
    for bad in ("urn:beat:role:device:0", "urn:beat:role:device:x", "urn:beat:role:admin",
                "urn:beat:role:device:18446744073709551615", "https://example.org"):
        assert certs.parse_role_uri(bad) is None, bad
    assert certs.peer_role(b"not a cert")[0] is None
    assert "unreadable certificate" in certs.peer_role(b"not a cert")[1]


def test_existing_files_are_kept_without_force(tmp_path):
    lab_ca.make_ca(tmp_path / "ca")
    first = _load(tmp_path / "ca" / "ca.crt").serial_number
    lab_ca.make_governance(tmp_path / "ca", tmp_path)
    with pytest.raises(lab_ca.CertError,
                       match=r"ca\.crt: already there; use --force to replace it"):
        lab_ca.make_ca(tmp_path / "ca")
    with pytest.raises(lab_ca.CertError, match=r"governance\.crt: already there"):
        lab_ca.make_governance(tmp_path / "ca", tmp_path)
    assert _load(tmp_path / "ca" / "ca.crt").serial_number == first
    assert certs.verify_issued_by(_load(tmp_path / "governance.crt"),
                                  _load(tmp_path / "ca" / "ca.crt"))
    lab_ca.make_ca(tmp_path / "ca", force=True)
    assert _load(tmp_path / "ca" / "ca.crt").serial_number != first
    assert _mode(tmp_path / "ca" / "ca.key") == 0o600
    # the governance certificate of the replaced CA no longer chains to the new one
    assert not certs.verify_issued_by(_load(tmp_path / "governance.crt"),
                                      _load(tmp_path / "ca" / "ca.crt"))
    lab_ca.make_governance(tmp_path / "ca", tmp_path, force=True)
    assert certs.verify_issued_by(_load(tmp_path / "governance.crt"),
                                  _load(tmp_path / "ca" / "ca.crt"))
    assert _mode(tmp_path / "governance.key") == 0o600


def test_errors_name_the_option_or_file(tmp_path):
    with pytest.raises(lab_ca.CertError, match=r"ca\.crt: cannot read the CA certificate: No such "
                                              r"file.*beat-lab certs ca"):
        lab_ca.make_governance(tmp_path / "nope", tmp_path)
    lab_ca.make_ca(tmp_path / "ca")
    with pytest.raises(lab_ca.CertError, match="give at least one --dns or --ip"):
        lab_ca.make_device(tmp_path / "ca", tmp_path, 3)
    with pytest.raises(lab_ca.CertError, match=r"--ip: '10\.0\.0\.300' is not an IP address"):
        lab_ca.make_device(tmp_path / "ca", tmp_path, 3, ips=["10.0.0.300"])
    with pytest.raises(lab_ca.CertError, match=r"--node-id: 0 is not in 1\.\.2\^64-2"):
        lab_ca.make_device(tmp_path / "ca", tmp_path, 0, ips=["127.0.0.1"])
    with pytest.raises(lab_ca.CertError, match="--days: 0 must be at least 1"):
        lab_ca.make_ca(tmp_path / "ca2", days=0)
    lab_ca.make_ca(tmp_path / "ca2")
    os.replace(tmp_path / "ca2" / "ca.key", tmp_path / "ca" / "ca.key")
    with pytest.raises(lab_ca.CertError, match=r"ca\.key: this key does not belong to .*ca\.crt"):
        lab_ca.make_governance(tmp_path / "ca", tmp_path)


def test_command_line(tmp_path, capsys):
    ca_dir = str(tmp_path / "ca")
    assert lab_cli.main(["certs", "ca", "--out", ca_dir]) == 0
    assert capsys.readouterr().out.split() == [f"{ca_dir}/ca.crt", f"{ca_dir}/ca.key"]
    args = ["certs", "device", "--ca", ca_dir, "--node-id", "5", "--out", str(tmp_path), "--ip",
            "127.0.0.1", "--dns", "r5.lab"]
    assert lab_cli.main(args) == 0
    assert capsys.readouterr().out.split()[0].endswith("device-5.crt")
    assert lab_cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("beat-lab: certs device: ") and "device-5.crt: already there" in err
    assert lab_cli.main(["certs", "governance", "--ca", ca_dir, "--out", str(tmp_path), "--name",
                         "gov-a"]) == 0
    assert certs.roles_of(_load(tmp_path / "gov-a.crt")) == [certs.Role("governance")]


# -- mutual TLS on the real server --------------------------------------------------------------

@pytest.fixture(scope="module")
def server(pki, tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("store"), NODE, H, 1 << 20)
    key = DeviceKey.generate()
    srv = InterrogationServer(store, key, ca=pki / "ca" / "ca.crt",
                              cert=pki / f"device-{NODE}.crt",
                              private_key=pki / f"device-{NODE}.key",
                              listen="127.0.0.1:0").start()
    yield srv, key
    srv.stop(0)
    store.close()


def _client(srv, key, pki, cert_dir, name, ca="ca"):
    return InterrogationClient(f"127.0.0.1:{srv.port}", pki / ca / "ca.crt",
                               cert_dir / f"{name}.crt", cert_dir / f"{name}.key", H, NODE,
                               key.public, timeout=10)


def test_governance_certificate_is_served(server, pki):
    srv, key = server
    with _client(srv, key, pki, pki, "governance") as c:
        assert c.node_info().node_id == NODE
        assert c.counter_report() == []
        assert c.proof_segments(1, 2) == []


def test_certificate_of_another_ca_fails_the_handshake(server, pki):
    srv, key = server
    with _client(srv, key, pki, pki / "other", "governance") as c:
        with pytest.raises(NodeUnreachable) as e:
            c.node_info()
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    # a client trusting another CA does not accept the device's server certificate either
    with _client(srv, key, pki, pki / "other", "governance", ca="other-ca") as c:
        with pytest.raises(NodeUnreachable):
            c.counter_report()


def test_no_client_certificate_fails_the_handshake(server, pki):
    srv, _ = server
    with open(pki / "ca" / "ca.crt", "rb") as f:
        creds = grpc.ssl_channel_credentials(f.read())
    with grpc.secure_channel(f"127.0.0.1:{srv.port}", creds) as ch:
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.InterrogationStub(ch).GetNodeInfo(pb.NodeInfoRequest(), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def _health(srv, pki, cert_dir, name):
    """Health.Check with that certificate: what any certificate of the domain may ask."""
    creds = grpc.ssl_channel_credentials((pki / "ca" / "ca.crt").read_bytes(),
                                         (cert_dir / f"{name}.key").read_bytes(),
                                         (cert_dir / f"{name}.crt").read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{srv.port}", creds) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                    timeout=10).status


def test_device_role_gets_permission_denied_beyond_health(server, pki):
    srv, key = server
    assert _health(srv, pki, pki, f"device-{NODE + 1}") == health_pb2.HealthCheckResponse.SERVING
    with _client(srv, key, pki, pki, f"device-{NODE + 1}") as c:
        calls = {"GetNodeInfo": c.node_info,
                 "GetProofSegments": lambda: c.proof_segments(1, 2),
                 "GetCounterReport": c.counter_report,
                 "GetReceipts": lambda: c.receipts(1, 2, bytes(16), bytes(16))}
        for rpc, call in calls.items():
            with pytest.raises(RequestRejected) as e:
                call()
            assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert e.value.details == (f"{rpc} needs the governance role; the client "
                                       f"certificate has device:{NODE + 1}")


def _roleless(pki, out):
    """A leaf of the right CA without a BEAT role URI."""
    with open(pki / "ca" / "ca.crt", "rb") as f:
        ca = x509.load_pem_x509_certificate(f.read())
    with open(pki / "ca" / "ca.key", "rb") as f:
        ca_key = serialization.load_pem_private_key(f.read(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(7)
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("someone")]), False)
            .sign(ca_key, hashes.SHA256()))
    (out / "roleless.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "roleless.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


def test_certificate_without_role_gets_permission_denied(server, pki, tmp_path):
    srv, key = server
    _roleless(pki, tmp_path)
    assert _health(srv, pki, tmp_path, "roleless") == health_pb2.HealthCheckResponse.SERVING
    with _client(srv, key, pki, tmp_path, "roleless") as c:
        for call in (c.node_info, c.counter_report):
            with pytest.raises(RequestRejected) as e:
                call()
            assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert e.value.details.endswith("needs the governance role; the client certificate "
                                            "has no role (no urn:beat:role:... SAN URI)")


def test_client_argument_errors(pki, tmp_path):
    args = dict(endpoint="127.0.0.1:1", ca=pki / "ca" / "ca.crt", cert=pki / "governance.crt",
                key=pki / "governance.key", hash_name=H, node_id=NODE, pubkey=bytes(32))
    for change, match in ((dict(cert=tmp_path / "nope.crt"), r'cert: ".*nope\.crt": cannot read'),
                          (dict(pubkey=bytes(31)), r"pubkey: 31 bytes, an Ed25519 public key is "
                                                   "32 \\(take it from the ledger"),
                          (dict(hash_name="md5"), "hash_name must be one of"),
                          (dict(timeout=0), r"timeout: 0 must be more than 0 s")):
        with pytest.raises(ValueError, match=match):
            InterrogationClient(**{**args, **change})
