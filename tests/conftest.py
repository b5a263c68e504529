"""Shared test fixtures: the two fast-path twins, and the rule that CI never skips silently."""
import importlib
import os

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# shared/ sits beside the clone (locally and in CI); BEAT_SHARED points elsewhere when needed.
SHARED = os.environ.get("BEAT_SHARED") or os.path.join(os.path.dirname(REPO), "shared")
REAL_PCAP_DIR = os.path.join(SHARED, "pcaps", "real")


def real_pcaps():
    """The real-world captures of shared/pcaps/real (an empty list when they are missing: the
    tests that need them then fail through require_real_pcaps, never skip)."""
    if not os.path.isdir(REAL_PCAP_DIR):
        return []
    return sorted(os.path.join(REAL_PCAP_DIR, f) for f in os.listdir(REAL_PCAP_DIR)
                  if f.endswith((".pcap", ".pcapng")))


def require_real_pcaps():
    paths = real_pcaps()
    assert paths, (f"no captures in {REAL_PCAP_DIR}: shared/ must sit beside the repository "
                   "(or set BEAT_SHARED)")
    return paths


def _load(name):
    if name == "py":
        return importlib.import_module("fastpath.pure")
    try:
        return importlib.import_module("fastpath._native")
    except ImportError as exc:
        if IN_CI:
            pytest.fail(f"the native fast path is not built under CI: {exc}")
        pytest.skip(f"native fast path not built: {exc}")


@pytest.fixture(params=["py", "c"], ids=["py", "c"])
def impl(request):
    """Each test using this runs against both twins: fastpath.pure and fastpath._native."""
    return _load(request.param)


@pytest.fixture
def pure():
    return _load("py")


@pytest.fixture
def native():
    return _load("c")


def require_root():
    """Root-only tests: skip on a developer box, but fail under CI=true, where they must run."""
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("this test needs root, and CI runs as root: something is wrong")
        pytest.skip("needs root")
