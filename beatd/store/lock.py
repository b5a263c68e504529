"""One process at a time per store: an ``flock`` on ``beatd.lock`` in the store's directory.

``StoreLock(path, what)`` takes ``flock(LOCK_EX | LOCK_NB)`` on ``<path>/beatd.lock`` and then
writes the holder's pid and what it is (``"1234\\nbeatd run\\n"``) into it; the lock lasts as long
as the file stays open: ``release()``, the process's exit, or its death by any signal (the kernel
drops it; SIGKILL included). A second process is refused with ``StoreLockedError`` naming the
holder's pid, and writes nothing (the lock file exists already; it is opened, never truncated,
by a process that does not get the lock).

The lock file's content only names the holder: whether the store is held is the kernel's lock,
never the file (a file left by a process that died holds nothing, and a pid in it that was reused
by an unrelated process does not make the store "held").

``lock_holder(path)``: the pid of the process holding the store now, or None; it takes no lock
that a starting daemon could trip over (the kernel's table ``/proc/locks`` first; only where that
cannot be read, a shared lock for an instant, which ``acquire()`` retries past).

The lock file is never deleted: deleting it while another process has it open would let two
processes each lock a different file of the same name.
"""
import errno
import fcntl
import os
import time

from beat_common.procs import pid_alive as _pid_alive

from .errors import StoreError

__all__ = ["LOCK_FILE", "StoreLock", "StoreLockedError", "lock_holder", "lock_path", "take_lock",
           "HELD_PID_UNKNOWN"]

LOCK_FILE = "beatd.lock"
# acquire(): a refused flock is tried again for this long (a lock_holder() probe holds a shared
# lock for microseconds; a real holder keeps it)
RETRY_S = 0.2
RETRY_STEP_S = 0.02
HELD_PID_UNKNOWN = -1           # lock_holder(): held, by a process whose pid cannot be read


class StoreLockedError(StoreError):
    """The store is held by another process (``pid``, ``what``: what it said it is)."""

    def __init__(self, path, pid, what, hint=None):
        self.path, self.pid, self.what = os.fspath(path), pid, what
        who = f"pid {pid}" if pid and pid > 0 else "another process (pid unknown)"
        super().__init__(f"store {self.path} in use by {who}" + (f" ({what})" if what else "") +
                         ": " + (hint or "a store has one user at a time; stop that process "
                                 "first, or use another store path"))


def lock_path(path):
    """The lock file of the store at ``path`` (its directory)."""
    return os.path.join(os.fspath(path), LOCK_FILE)


def _read_owner(fd):
    """(pid, what) as the holder wrote them, (None, None) for an empty or garbled file."""
    try:
        data = os.pread(fd, 256, 0).decode("utf-8", "replace")
    except OSError:
        return None, None
    lines = data.split("\n")
    try:
        pid = int(lines[0])
    except ValueError:
        return None, None
    what = lines[1].strip() if len(lines) > 1 else ""
    return (pid if pid > 0 else None), (what or None)


def _kernel_holders(st):
    """Pids holding an flock on the file of ``st`` (os.stat result), from /proc/locks; None when
    the table cannot be read."""
    try:
        with open("/proc/locks") as f:
            text = f.read()
    except OSError:
        return None
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    pids = []
    for line in text.splitlines():
        parts = line.split()
        if "->" in parts:                 # a waiter, not a holder
            continue
        if len(parts) < 6 or parts[1] != "FLOCK":
            continue
        try:
            major, minor, ino = parts[5].split(":")
            key = (int(major, 16), int(minor, 16), int(ino))
            pid = int(parts[4])
        except ValueError:
            continue
        if key == want:
            pids.append(pid)
    return pids


def lock_holder(path):
    """The pid of the live process holding the store at ``path``, or None when nobody holds it
    (no lock file, or one whose writer is gone: a stale file is not a lock). ``-1``
    (``HELD_PID_UNKNOWN``): held, but the holder's pid cannot be read. Writes nothing."""
    lp = lock_path(path)
    try:
        fd = os.open(lp, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"{lp}: cannot read the store's lock file: "
                         f"{exc.strerror or exc}") from None
    try:
        pids = _kernel_holders(os.fstat(fd))
        if pids is not None and not pids:
            # /proc/locks may not show a lock taken in another mount namespace's view of the
            # file on some filesystems: ask the lock itself before saying "free"
            if not _probe_held(fd):
                return None
        elif pids is None and not _probe_held(fd):
            return None
        pid, _ = _read_owner(fd)
        if pid is not None and (pids is None or pid in pids) and _pid_alive(pid):
            return pid
        if pids:
            return pids[0]
        # held, and the holder has not written its pid yet: read again shortly
        for _ in range(10):
            time.sleep(0.01)
            pid, _ = _read_owner(fd)
            if pid is not None and _pid_alive(pid):
                return pid
        return HELD_PID_UNKNOWN
    finally:
        os.close(fd)


def _probe_held(fd):
    """Whether an exclusive lock is held on ``fd``'s file: a shared lock taken and dropped at
    once (acquire() retries past it)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


class StoreLock:
    """``flock(LOCK_EX | LOCK_NB)`` on ``<path>/beatd.lock``, held until ``release()`` (or the
    process ends). ``what`` is written beside the pid, for the refusal a second process gets
    (``"beatd run"``, ``"beatd replay"``...). A context manager."""

    def __init__(self, path, what="beatd"):
        self.path = os.fspath(path)
        self.file = lock_path(self.path)
        self.what = " ".join(str(what).split())[:100]
        self.fd = None

    @property
    def held(self):
        return self.fd is not None

    def acquire(self):
        """Take the lock (``StoreLockedError`` naming the holder; ``StoreError`` when the lock
        file cannot be made). The store's directory is made if missing (the store makes it
        anyway). Returns self."""
        if self.fd is not None:
            return self
        try:
            os.makedirs(self.path, exist_ok=True)
            fd = self._open()
        except OSError as exc:
            raise StoreError(f"{self.file}: cannot open the store's lock file: "
                             f"{exc.strerror or exc}: give the user beatd runs as the store's "
                             "directory and files") from None
        deadline = time.monotonic() + RETRY_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise StoreError(f"{self.file}: cannot lock the store: "
                                     f"{exc.strerror or exc}") from None
                if time.monotonic() >= deadline:
                    pid, what = _read_owner(fd)
                    if pid is None or not _pid_alive(pid):
                        pids = _kernel_holders(os.fstat(fd))
                        pid, what = (pids[0], what) if pids else (None, what)
                    os.close(fd)
                    raise StoreLockedError(self.path, pid, what) from None
                time.sleep(RETRY_STEP_S)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n{self.what}\n".encode(), 0)
        except OSError:
            # a full disk may refuse even these few bytes (or the file is another user's, open
            # read-only): the lock holds all the same (the refusal of a second process then
            # names the pid from the kernel's table)
            pass
        self.fd = fd
        return self

    def _open(self):
        """The lock file, opened for writing (never truncated: a refused process must not touch
        the holder's file). Made here: mode 0600, owned like the store's directory (root running
        ``beatd dump`` on a stopped daemon's store must not leave a file its user cannot open).
        One another user made: locked read-only (an flock needs no write access), pid unwritten."""
        try:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            try:
                return os.open(self.file, os.O_RDWR | os.O_CLOEXEC)
            except PermissionError:
                return os.open(self.file, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.stat(self.path)
            if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
                os.fchown(fd, st.st_uid, st.st_gid)
        except OSError:
            pass
        return fd

    def release(self):
        """Drop the lock (the file stays, emptied: no pid in it names a holder)."""
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)                    # closing the last descriptor drops the flock

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        if getattr(self, "fd", None) is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass


def default_what():
    """What this process is, for the lock file: ``beatd run``, ``beatd replay``, ``pytest``..."""
    import sys
    argv = [a for a in sys.argv if a] or ["python"]
    prog = os.path.basename(argv[0])
    if prog == "__main__.py":           # python -m PACKAGE
        prog = os.path.basename(os.path.dirname(argv[0])) or prog
    if prog == "beatd" and len(argv) > 1:
        return f"beatd {argv[1]}"
    return prog


def take_lock(path, lock):
    """The lock a ``Store`` holds: ``lock`` True (taken here, ``default_what()``), a string (taken
    here, that ``what``), a ``StoreLock`` (taken if not yet: the store then owns it) or False
    (none: a caller that holds the lock some other way). Returns the StoreLock or None."""
    if lock is False or lock is None:
        return None
    if isinstance(lock, StoreLock):
        if os.path.realpath(lock.path) != os.path.realpath(path):
            raise ValueError(f"lock: the lock of {lock.path}, not of the store {path}")
        return lock.acquire()
    return StoreLock(path, default_what() if lock is True else str(lock)).acquire()
