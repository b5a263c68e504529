"""The store's errors, and how a py-lmdb or OS error becomes one (naming the path and what to do)."""
import contextlib
import errno
import os

import lmdb

__all__ = ["StoreError", "StoreFullError", "StoreDiskError", "StoreDiskFullError",
           "StoreMismatchError", "StoreCorruptError", "no_room", "translated"]


class StoreError(Exception):
    """The store cannot do what was asked; the message names the path and what to change."""


class StoreFullError(StoreError):
    """The LMDB map is full (raise map_size)."""


class StoreDiskError(StoreError):
    """The disk failed or is full."""


class StoreDiskFullError(StoreFullError, StoreDiskError):
    """The disk holding the store is full (ENOSPC): a StoreFullError too, the store has no room."""


class StoreMismatchError(StoreError):
    """The store belongs to another node, hash or format version."""


class StoreCorruptError(StoreError):
    """The files are not a (valid) LMDB environment, or its content breaks the store's rules."""


# A write that failed with an I/O error while the store's filesystem has less than this free is
# taken for a full disk: LMDB reports a short write (the disk filled during the commit) as EIO.
DISK_FULL_FREE_BYTES = 1 << 20


def _disk_nearly_full(path):
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < DISK_FULL_FREE_BYTES


def no_room(exc, path=None):
    """Whether ``exc`` says the store has no room: ``StoreFullError``, or the raw py-lmdb (or OS)
    error of a full map or disk, from code that writes the environment directly (the ledger
    outbox): ENOSPC, or with ``path`` (the store's directory) an I/O error while its filesystem
    is (nearly) full."""
    if isinstance(exc, (StoreFullError, lmdb.MapFullError)):
        return True
    if isinstance(exc, OSError):
        code = exc.errno
    elif isinstance(exc, lmdb.Error):
        text = str(exc)
        code = (errno.ENOSPC if os.strerror(errno.ENOSPC) in text else
                errno.EIO if os.strerror(errno.EIO) in text else None)
    else:
        return False
    return code == errno.ENOSPC or (code == errno.EIO and path is not None and
                                    _disk_nearly_full(path))


# py-lmdb exceptions -> (our exception, what to do about it). Checked in order (subclasses first).
_ERROR_TABLE = (
    (lmdb.MapFullError, StoreFullError,
     "the LMDB map is full ({map_size} bytes): raise store.map_size"),
    (lmdb.MapResizedError, StoreFullError,
     "another process grew the LMDB map: reopen the store"),
    (lmdb.DiskError, StoreDiskError, "disk error: check the disk and free space"),
    (lmdb.CorruptedError, StoreCorruptError, "the LMDB files are corrupted: restore or remove them"),
    (lmdb.InvalidError, StoreCorruptError, "not an LMDB environment: remove it or choose another path"),
    (lmdb.VersionMismatchError, StoreCorruptError, "written by another LMDB version"),
    (lmdb.ReadersFullError, StoreError, "too many readers of the store"),
    (lmdb.DbsFullError, StoreCorruptError, "too many named databases: not a beatd store"),
    (lmdb.Error, StoreError, "LMDB error"),
)


@contextlib.contextmanager
def translated(path, doing, map_size=None):
    """Raise what fails inside as a ``StoreError`` naming ``path``, what was being done and what
    to change (a StoreError passes as it is)."""
    try:
        yield
    except StoreError:
        raise
    except lmdb.Error as exc:
        if not isinstance(exc, lmdb.MapFullError) and no_room(exc, path):
            raise StoreDiskFullError(f"{path}: {doing}: the disk is full: free space "
                                     f"({exc})") from None
        for lmdb_cls, cls, advice in _ERROR_TABLE:
            if isinstance(exc, lmdb_cls):
                raise cls(f"{path}: {doing}: {advice.format(map_size=map_size)} ({exc})") from None
        raise  # pragma: no cover (lmdb.Error is the last row)
    except OSError as exc:
        if no_room(exc, path):
            raise StoreDiskFullError(f"{path}: {doing}: the disk is full: free space "
                                     f"({exc})") from None
        raise StoreDiskError(f"{path}: {doing}: disk error ({exc})") from None
