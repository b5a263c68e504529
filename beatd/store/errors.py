"""The store's errors, and how a py-lmdb or OS error becomes one (naming the path and what to do)."""
import contextlib
import errno
import os

import lmdb

__all__ = ["StoreError", "StoreFullError", "StoreDiskError", "StoreDiskFullError",
           "StoreMismatchError", "StoreCorruptError", "no_room", "translated", "no_space_message",
           "DISK_FULL_FREE_BYTES"]


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


def _free_bytes(path):
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _disk_nearly_full(path):
    free = _free_bytes(path)
    return free is not None and free < DISK_FULL_FREE_BYTES


def no_space_message(store_path, free_bytes=None):
    """The operator's line for a full disk: "no space left on the device of store.path (P): N
    bytes free" (N read now unless given)."""
    if free_bytes is None:
        free_bytes = _free_bytes(store_path)
    return (f"no space left on the device of store.path ({os.fspath(store_path)}): "
            f"{'?' if free_bytes is None else free_bytes} bytes free")


def no_room(exc, path=None):
    """Whether ``exc`` says the store has no room: ``StoreFullError``, or the raw py-lmdb (or OS)
    error of a full map or disk, from code that writes the environment directly (the ledger
    outbox): ENOSPC, or with ``path`` (the store's directory) an I/O error while its filesystem
    is (nearly) full."""
    if isinstance(exc, (StoreFullError, lmdb.MapFullError)):
        return True
    code = _os_errno(exc)
    return code in (errno.ENOSPC, errno.EDQUOT) or (code == errno.EIO and path is not None and
                                                    _disk_nearly_full(path))


# the OS errors py-lmdb reports as a plain lmdb.Error with the OS's text, and what to do
_OS_ADVICE = {
    errno.EIO: "the disk reported an I/O error: check the disk (dmesg) and its free space",
    errno.EROFS: "the filesystem is read-only: remount it read-write, or choose another "
                 "store.path",
    errno.EACCES: "permission denied: give the user beatd runs as (beatd) the store's directory "
                  "and files",
    errno.EPERM: "permission denied: give the user beatd runs as (beatd) the store's directory "
                 "and files",
    errno.EDQUOT: "the disk quota of beatd's user is exhausted: raise it or free space",
}


def _os_errno(exc):
    """The OS error behind ``exc`` (an OSError, or an lmdb.Error carrying the OS's text)."""
    if isinstance(exc, OSError):
        return exc.errno
    if isinstance(exc, lmdb.Error):
        text = str(exc)
        for code in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES,
                     errno.EPERM):
            if os.strerror(code) in text:
                return code
    return None


# py-lmdb exceptions -> (our exception, what is wrong and what to do). Checked in order
# (subclasses first). Every message reads "store.path (P): <what is wrong> (<doing>): <what to do>
# (LMDB's own words)": an operator's sentence; LMDB's words last, for a bug report.
_ERROR_TABLE = (
    (lmdb.MapFullError, StoreFullError,
     "the store's map is full (store.map_size = {map_size} bytes): raise store.map_size and "
     "restart; meanwhile pruning frees what the ledger holds"),
    (lmdb.MapResizedError, StoreFullError,
     "another program changed the store's size while beatd had it open: restart beatd, and "
     "let no other program write the store"),
    (lmdb.PanicError, StoreDiskError,
     "a write to the disk failed and the store refuses further writes until it is reopened: "
     "check the disk (dmesg) and its free space, then restart beatd"),
    (lmdb.DiskError, StoreDiskError,
     "the disk reported an error: check the disk (dmesg) and its free space"),
    (lmdb.CorruptedError, StoreCorruptError,
     "the store's files are damaged: restore the store from a backup, or move it away to start "
     "a new one (its evidence is then gone)"),
    (lmdb.InvalidError, StoreCorruptError,
     "not a store (these files are not an LMDB environment): choose another store.path, or move "
     "these files away"),
    (lmdb.VersionMismatchError, StoreCorruptError,
     "written by another version of LMDB: open it with the beatd that wrote it"),
    (lmdb.ReadersFullError, StoreError,
     "too many readers of the store at once: stop the other readers (beatd dump --live)"),
    (lmdb.DbsFullError, StoreCorruptError,
     "not a beatd store (too many named databases): choose another store.path"),
    (lmdb.ReadonlyError, StoreError,
     "opened read-only: nothing can be written through it"),
    (lmdb.Error, StoreError, "the store failed: check the disk; restart beatd"),
)


def where(path):
    """How a message names the store: "store.path (P)"."""
    return f"store.path ({os.fspath(path)})"


@contextlib.contextmanager
def translated(path, doing, map_size=None):
    """Raise what fails inside as a ``StoreError`` naming ``path``, what was being done and what
    to do (a StoreError passes as it is). A full disk (ENOSPC, or an I/O error while the disk
    is nearly full) is ``StoreDiskFullError``: "no space left on the device of store.path (P):
    N bytes free"."""
    try:
        yield
    except StoreError:
        raise
    except lmdb.Error as exc:
        if not isinstance(exc, lmdb.MapFullError) and no_room(exc, path):
            raise StoreDiskFullError(f"{no_space_message(path)} ({doing}): free space on that "
                                     f"filesystem ({exc})") from None
        code = _os_errno(exc)
        if type(exc) is lmdb.Error and code in _OS_ADVICE:
            raise StoreDiskError(f"{where(path)}: {_OS_ADVICE[code]} ({doing}: {exc})") from None
        for lmdb_cls, cls, advice in _ERROR_TABLE:
            if isinstance(exc, lmdb_cls):
                raise cls(f"{where(path)}: {advice.format(map_size=map_size)} ({doing}: "
                          f"{exc})") from None
        raise  # pragma: no cover (lmdb.Error is the last row)
    except OSError as exc:
        if no_room(exc, path):
            raise StoreDiskFullError(f"{no_space_message(path)} ({doing}): free space on that "
                                     f"filesystem ({exc.strerror or exc})") from None
        advice = _OS_ADVICE.get(exc.errno, "the disk refused it: check the disk and the "
                                           "store's permissions")
        raise StoreDiskError(f"{where(path)}: {advice} ({doing}: {exc.strerror or exc})") from None
