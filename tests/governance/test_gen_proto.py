"""scripts/gen-proto: the committed stubs in beat_rpc/ are exactly what the .proto generates.

Fails when proto/beat/v1/interrogation.proto is edited without running scripts/gen-proto (or the
stubs are edited by hand). Needs grpcio-tools (requirements-dev.txt): never skipped under CI.
"""
import importlib
import os
import subprocess
import sys

import pytest

from conftest import IN_CI, REPO

SCRIPT = os.path.join(REPO, "scripts", "gen-proto")
STUBS = ("interrogation_pb2.py", "interrogation_pb2.pyi", "interrogation_pb2_grpc.py")


def _need_grpc_tools():
    try:
        importlib.import_module("grpc_tools.protoc")
    except ImportError as exc:
        if IN_CI:
            pytest.fail(f"grpcio-tools is not installed under CI (requirements-dev.txt): {exc}")
        pytest.skip(f"grpcio-tools not installed: {exc}")


def test_committed_stubs_are_what_the_proto_generates(tmp_path):
    _need_grpc_tools()
    assert os.access(SCRIPT, os.X_OK), f"{SCRIPT} is not executable"
    r = subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for name in STUBS:
        with open(tmp_path / name, "rb") as f:
            fresh = f.read()
        with open(os.path.join(REPO, "beat_rpc", name), "rb") as f:
            committed = f.read()
        assert fresh == committed, (f"beat_rpc/{name} is stale: run scripts/gen-proto after "
                                    "editing proto/beat/v1/interrogation.proto")
    r = subprocess.run([sys.executable, SCRIPT, "--check"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr


def test_check_reports_a_stale_stub(tmp_path):
    _need_grpc_tools()
    subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path)], check=True, timeout=120,
                   capture_output=True)
    with open(tmp_path / "interrogation_pb2.py", "a") as f:
        f.write("# edited by hand\n")
    r = subprocess.run([sys.executable, SCRIPT, "--check", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "stale:" in r.stderr and "interrogation_pb2.py" in r.stderr


def test_stubs_import_from_the_package():
    from beat_rpc import interrogation_pb2, interrogation_pb2_grpc
    assert interrogation_pb2.DESCRIPTOR.name == "beat/v1/interrogation.proto"
    assert interrogation_pb2.SignedChunk.__module__ == "beat_rpc.interrogation_pb2"
    service = interrogation_pb2.DESCRIPTOR.services_by_name["Interrogation"]
    assert service.full_name == "beat.v1.Interrogation"
    assert [m.name for m in service.methods] == ["GetNodeInfo", "GetProofSegments",
                                                 "GetSegments", "GetCounterReport",
                                                 "GetReceipts", "GetGapRecords"]
    assert hasattr(interrogation_pb2_grpc, "InterrogationStub")
