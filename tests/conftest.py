"""Shared test fixtures and helpers: the two fast-path twins, the rule that CI never skips silently
(require_root, require_real_pcaps, require_ganache), waiting for a condition, a free port.

The tests live in one folder per subsystem (fastpath/, daemon/, store/, ledger/, governance/, lab/,
common/); their module names are unique across folders. A few test doubles are shared across
folders by module name (test_daemon's stand-in capture source and configuration, test_batcher's
in-memory ledger, test_daemon_ledger's daemon-with-a-ledger set-up), so every folder is on the
import path from the start, whichever file pytest collects first."""
import importlib
import os
import re
import shutil
import socket
import sys
import time

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the real-world captures travel with the repository (tests/data/pcaps); BEAT_SHARED=DIR reads
# DIR/pcaps/real instead
SHARED = os.environ.get("BEAT_SHARED") or os.path.join(REPO, "tests", "data")
REAL_PCAP_DIR = os.path.join(SHARED, "pcaps", "real")
TESTS = os.path.dirname(os.path.abspath(__file__))
SUBSYSTEMS = ("fastpath", "daemon", "store", "ledger", "governance", "lab", "common")
for _folder in SUBSYSTEMS:
    if os.path.join(TESTS, _folder) not in sys.path:
        sys.path.append(os.path.join(TESTS, _folder))


# the checkout's packages (and the test helpers subprocesses import), byte-compiled once per
# session: the daemons, beatctl and labs the tests start are child interpreters that import them
# again; where PYTHONDONTWRITEBYTECODE is set (it is in the CI sandbox) each would compile every
# module it imports from source
PRECOMPILED = ("beat_common", "fastpath", "beatd", "ledger_client", "governance", "beat_rpc",
               "beat_lab", "benchmarks", "tests")


def pytest_sessionstart(session):
    if hasattr(session.config, "workerinput"):
        return                  # an xdist worker: the controller compiled them before it started
    import compileall
    import re
    skip = re.compile(r"[/\\](node_modules|data)[/\\]")
    for name in PRECOMPILED:
        compileall.compile_dir(os.path.join(REPO, name), quiet=1, rx=skip)


# `make test` runs the suite on two pytest-xdist workers (`-n 2 --dist loadgroup`): most of its
# time is spent waiting (for blocks, anchor periods, timeouts), not computing. The work is handed
# out a module at a time (a module's fixtures are made once), in the order below: first SERIAL,
# one unit run by one worker, test after test: the namespace labs (each a dozen daemons, a
# ledger and traffic, timed by their anchor periods) and the proof-of-authority networks (a
# node process per sealer), never two of them at once on the two cores.
SERIAL = "labs-and-networks"
SERIAL_FILES = re.compile(r"^tests/(lab/test_lab\w*|lab/test_wheel|ledger/test_poa_\w+)\.py$")


def xdist_group_of(nodeid):
    """The unit of work a test is handed out in: SERIAL, or its module's path."""
    path = nodeid.split("::", 1)[0]
    return SERIAL if SERIAL_FILES.match(path) else path


def _distributed(config):
    """Run with `--dist loadgroup` (an xdist worker has its dist set to "no" and loadgroup True)."""
    return bool(getattr(config.option, "loadgroup", False)) or \
        getattr(config.option, "dist", "no") == "loadgroup"


def pytest_xdist_make_scheduler(config, log):
    """The controller's scheduler: xdist's scopes, with xdist_group_of as the scope. (Its own
    loadgroup reads `xdist_group` marks from a suffix of the node id, which pytest 9 no longer
    lets a plugin change.)"""
    if not _distributed(config):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleOrSerial(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return xdist_group_of(nodeid)

    return ModuleOrSerial(config, log)


class _SerialFirst:
    """In each worker's collection (the order the work is handed out in, with
    `--no-loadscope-reorder`): SERIAL first, its longest test first, then the rest as collected.
    After pytest's own reordering."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config, items):
        if _distributed(config):
            first = [i for i in items if xdist_group_of(i.nodeid) == SERIAL]
            first.sort(key=lambda i: "test_lab_ethereum" not in i.nodeid)
            rest = [i for i in items if xdist_group_of(i.nodeid) != SERIAL]
            items[:] = first + rest


def pytest_configure(config):
    config.pluginmanager.register(_SerialFirst(), "beat-serial-first")


def real_pcaps():
    """The real-world captures of tests/data/pcaps/real (an empty list when they are missing: the
    tests that need them then fail through require_real_pcaps, never skip)."""
    if not os.path.isdir(REAL_PCAP_DIR):
        return []
    return sorted(os.path.join(REAL_PCAP_DIR, f) for f in os.listdir(REAL_PCAP_DIR)
                  if f.endswith((".pcap", ".pcapng")))


def require_real_pcaps():
    paths = real_pcaps()
    assert paths, f"no captures in {REAL_PCAP_DIR} (tests/data/pcaps/real, or BEAT_SHARED)"
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


def require_ganache():
    """Tests on a ganache development chain (node + the project's npm packages): skip on a
    developer box without them, fail under CI=true."""
    from ledger_client.devnode import GANACHE_CLI

    missing = None
    if shutil.which("node") is None:
        missing = "node (Node.js) is not on PATH"
    elif not os.path.exists(GANACHE_CLI):
        missing = f"{GANACHE_CLI} missing: run `npm ci` in ledger_client/contracts"
    if missing:
        if IN_CI:
            pytest.fail(missing)
        pytest.skip(missing)


def wait_for(pred, timeout=5.0, what="condition"):
    """Until ``pred()`` is true, at most ``timeout`` seconds. An exception raised by ``pred`` (a
    status request that timed out, a reply of None) counts as "not yet"; at the deadline the
    AssertionError names the last one. ``pred`` is asked once more at or after the deadline.
    ``what`` may be a callable: it is called for the message (the state at the deadline)."""
    end = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            if pred():
                return
            last_exc = None
        except Exception as exc:  # noqa: BLE001 (not yet; shown if it lasts to the deadline)
            last_exc = exc
        if time.monotonic() >= end:
            break
        time.sleep(0.02)
    what = what() if callable(what) else what
    if last_exc is not None:
        raise AssertionError(f"timed out waiting for {what} after {timeout:g} s; the last check "
                             f"raised {type(last_exc).__name__}: {last_exc}") from last_exc
    raise AssertionError(f"timed out waiting for {what} after {timeout:g} s")


def free_port():
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_root():
    """Root-only tests: skip on a developer box, but fail under CI=true, where they must run."""
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("this test needs root, and CI runs as root: something is wrong")
        pytest.skip("needs root")


@pytest.fixture(autouse=True)
def _ledger_host_clock(request, monkeypatch):
    """A test marked ledger_host_clock(value) runs with BEAT_LEDGER_HOST_CLOCK=value (its child
    processes too): the local ledger checks entry times against that host clock instead of the
    real time (ledger_client.local.MAX_SKEW_NS). Unmarked tests: the real time."""
    mark = request.node.get_closest_marker("ledger_host_clock")
    if mark is not None:
        monkeypatch.setenv("BEAT_LEDGER_HOST_CLOCK", str(mark.args[0]))


@pytest.fixture(autouse=True)
def _beatd_logger_restored():
    """The ``beatd`` logger as it was before the test: a test that runs a command in-process
    (``beatd.logs.setup``: its own handler, no propagation) must not hide the next module's
    records from ``caplog`` (tests/daemon failed after tests/governance in one process)."""
    import logging
    log = logging.getLogger("beatd")
    saved = (list(log.handlers), log.propagate, log.level)
    yield
    log.handlers[:] = saved[0]
    log.propagate, log.level = saved[1], saved[2]
