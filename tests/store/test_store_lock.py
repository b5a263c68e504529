"""The store's lock (beatd.store.lock): one process at a time, the holder named, stale files and
reused pids not taken for a holder, the kernel dropping the lock of a killed process."""
import os
import signal
import subprocess
import sys
import time

import pytest

from beatd.store import Store, StoreLock, StoreLockedError, lock_holder
from beatd.store.lock import LOCK_FILE, take_lock
from conftest import REPO, wait_for

HASH = "sha3-256"

HOLD = r"""
import sys, time
from beatd.store.lock import StoreLock
lock = StoreLock(sys.argv[1], sys.argv[2]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def _holder(path, what="beatd run"):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path), what], cwd=REPO,
                         stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": REPO})
    assert p.stdout.readline().strip() == "held"
    return p


def _files(path):
    """Every file of the store: name -> (size, mtime_ns, content)."""
    out = {}
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        st = os.stat(full)
        with open(full, "rb") as f:
            out[name] = (st.st_size, st.st_mtime_ns, f.read())
    return out


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    d = tmp_path / "store"
    with StoreLock(d, "beatd run") as lock:
        assert lock.held and lock_holder(d) == os.getpid()
        with open(d / LOCK_FILE) as f:
            assert f.read() == f"{os.getpid()}\nbeatd run\n"
        with pytest.raises(StoreLockedError) as e:
            StoreLock(d, "beatd replay").acquire()       # same process, another open file
        assert e.value.pid == os.getpid() and e.value.what == "beatd run"
        assert str(e.value).startswith(f"store {d} in use by pid {os.getpid()} (beatd run)")
    assert lock_holder(d) is None
    with open(d / LOCK_FILE) as f:
        assert f.read() == ""              # released: no pid left naming a holder
    with StoreLock(d, "again"):            # free again
        pass


def test_another_process_holding_it(tmp_path):
    d = tmp_path / "store"
    with Store(d, 1, HASH, 4096) as s:
        s.record_capture([], alive_t_ns=10**18)
    before = _files(d)
    p = _holder(d)
    try:
        assert lock_holder(d) == p.pid
        with pytest.raises(StoreLockedError) as e:
            Store(d, 1, HASH, 4096, lock="beatd replay")
        assert e.value.pid == p.pid and f"in use by pid {p.pid} (beatd run)" in str(e.value)
        # the refused opener wrote nothing: not the lock file, not the LMDB files
        after = _files(d)
        assert after.pop(LOCK_FILE)[2] == f"{p.pid}\nbeatd run\n".encode()
        before.pop(LOCK_FILE)
        assert after == before
    finally:
        p.kill()
        p.wait()
    # killed (SIGKILL): the kernel dropped its lock; the file still names it, and names nobody
    with open(d / LOCK_FILE) as f:
        assert f.read() == f"{p.pid}\nbeatd run\n"
    assert lock_holder(d) is None
    with Store(d, 1, HASH, 4096) as s:
        assert s.capture_alive_t_ns() == 10**18
        assert lock_holder(d) == os.getpid()


def test_a_stale_file_naming_a_live_pid_is_not_a_lock(tmp_path):
    """A pid reused by an unrelated process (here: pid 1, and this very process) in a lock file
    nobody holds: the store is free."""
    d = tmp_path / "store"
    d.mkdir()
    for pid in (1, os.getpid(), 999_999_999):
        (d / LOCK_FILE).write_text(f"{pid}\nbeatd run\n")
        assert lock_holder(d) is None
        with StoreLock(d, "beatd run"):
            assert lock_holder(d) == os.getpid()
    (d / LOCK_FILE).write_text("garbage\n\x00\x01")
    assert lock_holder(d) is None
    with StoreLock(d, "x"):
        pass


def test_no_lock_file_and_no_store(tmp_path):
    assert lock_holder(tmp_path / "nothing") is None
    assert not (tmp_path / "nothing").exists()          # lock_holder writes nothing
    assert lock_holder(tmp_path) is None
    assert not (tmp_path / LOCK_FILE).exists()


def test_the_lock_is_released_at_close_and_on_a_failed_open(tmp_path):
    d = tmp_path / "store"
    Store(d, 1, HASH, 4096).close()
    assert lock_holder(d) is None
    from beatd.store import StoreMismatchError
    with pytest.raises(StoreMismatchError):
        Store(d, 2, HASH, 4096)                      # another node's store: refused, released
    assert lock_holder(d) is None
    lock = StoreLock(d, "beatd run").acquire()
    s = Store(d, 1, HASH, 4096, lock=lock)           # a lock taken first, owned by the store
    assert lock_holder(d) == os.getpid()
    s.close()
    assert not lock.held and lock_holder(d) is None
    with pytest.raises(ValueError):
        take_lock(tmp_path / "other", StoreLock(d))


def test_a_read_only_reader_needs_no_lock_and_writes_nothing(tmp_path):
    d = tmp_path / "store"
    with Store(d, 1, HASH, 4096) as s:
        s.record_capture([(1, 2, 3, 1, "eth0")], alive_t_ns=10**18)
    before = _files(d)
    p = _holder(d)
    try:
        r = Store(d, 1, HASH, 4096, readonly=True)
        try:
            with r.snapshot():
                assert r.capture_gaps() == [(1, 2, 3, 1, "eth0")]
                assert r.stats()["records"] == 0
        finally:
            r.close()
        assert lock_holder(d) == p.pid                   # untouched
    finally:
        p.kill()
        p.wait()
    after = _files(d)
    for f in (LOCK_FILE, "lock.mdb"):      # the holder's pid; LMDB's reader table
        after.pop(f), before.pop(f)
    assert after == before
    from beatd.store import StoreError
    with pytest.raises(StoreError, match="no store there"):
        Store(tmp_path / "none", 1, HASH, 4096, readonly=True)
    assert not (tmp_path / "none").exists()


def test_a_killed_holder_frees_the_store(tmp_path):
    """SIGKILL (no clean-up at all): the next process takes the store at once."""
    d = tmp_path / "store"
    p = _holder(d, "beatd run")
    assert lock_holder(d) == p.pid
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    wait_for(lambda: lock_holder(d) is None, timeout=5, what="the lock dropped by the kernel")
    t0 = time.monotonic()
    with StoreLock(d, "next"):
        assert time.monotonic() - t0 < 5


def test_a_lock_file_made_by_root_belongs_to_the_stores_owner(tmp_path):
    """Root running a dump on a stopped daemon's store makes the lock file: it belongs to the
    store directory's owner (the daemon's user), who can take the lock afterwards."""
    import shutil
    import tempfile
    from pathlib import Path

    from conftest import require_root
    require_root()
    top = Path(tempfile.mkdtemp(prefix="beat-lock-"))      # reachable by the other user
    try:
        os.chmod(top, 0o755)
        _root_made_lock_file(top / "store")
    finally:
        shutil.rmtree(top)


def _root_made_lock_file(d):
    d.mkdir()
    os.chown(d, 65534, 65534)             # the store's user (nobody, here)
    with StoreLock(d, "beatd dump"):
        st = os.stat(d / LOCK_FILE)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o600)
    code = ("import sys; from beatd.store.lock import StoreLock, lock_holder\n"
            "l = StoreLock(sys.argv[1], 'beatd run').acquire(); print(lock_holder(sys.argv[1]))")
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        sys.executable, "-c", code, str(d)], capture_output=True, text=True,
                       cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, timeout=60)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) > 0
    # a file of another user the holder cannot write: locked read-only all the same
    os.chown(d / LOCK_FILE, 0, 0)
    os.chmod(d / LOCK_FILE, 0o644)
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        sys.executable, "-c", code, str(d)], capture_output=True, text=True,
                       cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, timeout=60)
    assert r.returncode == 0, r.stderr
