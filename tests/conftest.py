"""Shared test fixtures: the two fast-path twins, and the rule that CI never skips silently."""
import importlib
import os

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


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
