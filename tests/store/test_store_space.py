"""The disk under the store (beatd.store.space): usage, the start-time refusals and warnings, and
the operator's line for a full disk. The small filesystems are tmpfs mounts of their own (root),
each in a private directory and unmounted at the end."""
import contextlib
import os
import subprocess

import pytest

from beatd.store import Store, space
from beatd.store.errors import DISK_FULL_FREE_BYTES, no_space_message

HASH = "sha3-256"


@contextlib.contextmanager
def tmpfs(path, size):
    from conftest import require_root
    require_root()
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(path, leave):
    st = os.statvfs(path.parent)
    size = max(0, st.f_bavail * st.f_frsize - leave)
    with open(path, "wb") as f:
        f.write(b"\xff" * size)


def test_usage_counts_the_store_files_and_the_free_space(tmp_path):
    st = os.statvfs(tmp_path)
    u = space.usage(tmp_path / "not-made-yet" / "store")    # a parent is asked instead
    assert u["store_bytes"] == 0 and u["total_bytes"] == st.f_blocks * st.f_frsize
    assert abs(u["free_bytes"] - st.f_bavail * st.f_frsize) < 64 << 20
    with Store(tmp_path / "s", 1, HASH, 4096, map_size=1 << 30) as s:
        s.record_capture([], alive_t_ns=1)
        u = space.usage(tmp_path / "s")
    data = os.stat(tmp_path / "s" / "data.mdb").st_blocks * 512
    assert u["store_bytes"] >= data > 0
    assert u["store_bytes"] < 1 << 30          # allocated blocks, not the map


def test_a_new_store_without_room_is_refused_and_nothing_is_made(tmp_path):
    with tmpfs(tmp_path / "disk", "2m") as disk:
        _fill(disk / "filler", 256 << 10)
        problems = space.start_check(disk / "store", 64 << 20)
        assert len(problems) == 1, problems
        assert problems[0].startswith(f"no space left on the device of store.path "
                                      f"({disk / 'store'}): ")
        assert "a new store needs at least" in problems[0]
        assert not (disk / "store").exists()          # the check writes nothing
        # with room, the same path is fine (and the map larger than the disk only warned)
        os.unlink(disk / "filler")
        assert space.start_check(disk / "store", 64 << 20) == []
        warnings = space.start_warnings(disk / "store", 64 << 20)
        assert any("the disk will fill before the map" in w for w in warnings), warnings
        assert space.start_warnings(disk / "store", 1 << 20) == []


def test_an_existing_store_on_a_full_disk_starts_with_a_warning(tmp_path):
    with tmpfs(tmp_path / "disk", "4m") as disk:
        with Store(disk / "store", 1, HASH, 4096, map_size=1 << 20) as s:
            s.record_capture([], alive_t_ns=1)
        _fill(disk / "filler", 64 << 10)
        problems, warnings, use = space.check(disk / "store", 1 << 20)
        assert problems == [] and use["free_bytes"] < DISK_FULL_FREE_BYTES
        assert any(w.startswith(no_space_message(disk / "store", use["free_bytes"])) and
                   "starts degraded" in w for w in warnings), warnings
        # and the store opens on it: nothing written at open, committed state readable
        with Store(disk / "store", 1, HASH, 4096, map_size=1 << 20) as s:
            assert s.capture_alive_t_ns() == 1


def test_a_store_on_memory_shares_it_with_the_rings(tmp_path):
    with tmpfs(tmp_path / "disk", "8m") as disk:
        assert space.filesystem_type(disk / "store") == "tmpfs"
        huge = 1 << 50                       # rings larger than any memory: said
        warnings = space.start_warnings(disk / "store", 1 << 20, ring_bytes=huge)
        assert any("memory filesystem" in w for w in warnings), warnings
        assert not any("memory filesystem" in w for w in
                       space.start_warnings(disk / "store", 1 << 20, ring_bytes=1 << 20))
    assert space.filesystem_type("/proc/self") == "proc"


def test_the_message_of_a_full_disk(tmp_path):
    assert no_space_message(tmp_path / "s", 12) == \
        f"no space left on the device of store.path ({tmp_path / 's'}): 12 bytes free"
    assert "bytes free" in no_space_message(tmp_path)             # read now


def test_enospc_and_eio_while_full_are_a_full_disk(tmp_path):
    """The errors a commit meets on a full disk become StoreDiskFullError with the operator's
    line; an I/O error on a disk with room is a disk error, named as one."""
    import errno

    import lmdb

    from beatd.store import StoreDiskError, StoreDiskFullError
    from beatd.store.errors import translated
    with pytest.raises(StoreDiskFullError, match=r"no space left on the device of store.path .* "
                                                 r"bytes free \(committing"):
        with translated(str(tmp_path), "committing a batch"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(StoreDiskError) as e:        # room on this disk: not "full"
        with translated(str(tmp_path), "committing a batch"):
            raise lmdb.Error(f"mdb_txn_commit: {os.strerror(errno.EIO)}")
    assert not isinstance(e.value, StoreDiskFullError)
    assert str(e.value).startswith(f"store.path ({tmp_path}): ")
    with tmpfs(tmp_path / "disk", "1m") as disk:
        _fill(disk / "filler", 0)
        with pytest.raises(StoreDiskFullError, match="no space left on the device"):
            with translated(str(disk), "committing a batch"):
                raise lmdb.Error(f"mdb_txn_commit: {os.strerror(errno.EIO)}")
