"""The disk under the store: how much the store takes, how much is free, and the start-time check.

LMDB's map (``store.map_size``) is address space: the file grows as pages are used, so a map
larger than the free space is not wrong in itself; it means the disk, not the map, may be what
fills first. What cannot work is a store that cannot even be made.

``start_check(store_path, map_size, ring_bytes=0)`` -> the problems that refuse a start (empty:
fine): a store not made yet on a filesystem with less than ``NEW_STORE_BYTES`` free. A store
that exists is never refused for a full disk: its daemon starts, serves what it holds, says it is
degraded, and records again when there is room (docs/store.md, "The disk").

``start_warnings(...)`` -> what a start should warn about: the map larger than the store can
grow to on its filesystem (its bytes plus the free space), a disk already full, a store on a
memory filesystem (tmpfs) whose free memory the capture rings (``ring_bytes``, pinned in RAM)
share.

``usage(store_path)`` -> ``{"store_bytes", "free_bytes", "total_bytes"}``: the bytes the store's
files take on disk (allocated blocks: a sparse file counts what it uses) and what the filesystem
has free for the store's user (``f_bavail``).
"""
import os

from .errors import DISK_FULL_FREE_BYTES, no_space_message

__all__ = ["usage", "start_check", "start_warnings", "check", "mem_available", "no_space_message",
           "NEW_STORE_BYTES", "STORE_FILES", "MEMORY_FILESYSTEMS"]

# what a new store needs at least: LMDB's two meta pages, the lock file and the first pages of
# the databases are some tens of KiB; the margin is DISK_FULL_FREE_BYTES (below it, an I/O error
# at a write is taken for a full disk: docs/store.md)
NEW_STORE_BYTES = DISK_FULL_FREE_BYTES
STORE_FILES = ("data.mdb", "lock.mdb", "beatd.lock")
MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")


def _allocated(path):
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


def _statvfs(path):
    """statvfs of ``path``, or of its nearest existing parent (a store not made yet)."""
    p = os.path.abspath(os.fspath(path))
    while True:
        try:
            return os.statvfs(p)
        except FileNotFoundError:
            parent = os.path.dirname(p)
            if parent == p:
                raise
            p = parent


def usage(store_path):
    """``{"store_bytes", "free_bytes", "total_bytes"}`` of the store at ``store_path`` (0 store
    bytes for a store not made yet); OSError when not even a parent can be read."""
    st = _statvfs(store_path)
    return {"store_bytes": sum(_allocated(os.path.join(os.fspath(store_path), f))
                               for f in STORE_FILES),
            "free_bytes": st.f_bavail * st.f_frsize,
            "total_bytes": st.f_blocks * st.f_frsize}


def filesystem_type(path):
    """The type of the filesystem holding ``path`` (``/proc/self/mounts``: the longest mount
    point above it), or None."""
    p = os.path.realpath(os.fspath(path))
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    best, kind = "", None
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, kind = mnt, parts[2]
    except OSError:
        return None
    return kind


def mem_available():
    """MemAvailable of /proc/meminfo in bytes, None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check(store_path, map_size, ring_bytes=0):
    """``(problems, warnings, usage)``: see ``start_check`` and ``start_warnings``."""
    path = os.fspath(store_path)
    try:
        use = usage(path)
    except OSError as exc:
        return ([f"store.path ({path}): cannot read its filesystem's free space: "
                 f"{exc.strerror or exc}"], [], None)
    free, used = use["free_bytes"], use["store_bytes"]
    exists = os.path.isfile(os.path.join(path, "data.mdb"))
    problems, warnings = [], []
    if not exists and free < NEW_STORE_BYTES:
        problems.append(f"{no_space_message(path, free)}: a new store needs at least "
                        f"{NEW_STORE_BYTES} bytes; free space there or choose another store.path")
    elif exists and free < DISK_FULL_FREE_BYTES:
        warnings.append(f"{no_space_message(path, free)}: the store is full; the daemon starts "
                        "degraded (it serves and anchors what the store holds, and records again "
                        "by itself once there is room): free space on that filesystem")
    if map_size and map_size > used + free:
        warnings.append(f"store.map_size ({map_size} bytes) is more than the store can grow to on "
                        f"the filesystem of store.path ({path}: the store takes {used} bytes, "
                        f"{free} bytes are free): the disk will fill before the map; free space "
                        "or lower store.map_size")
    if ring_bytes and filesystem_type(path) in MEMORY_FILESYSTEMS:
        avail = mem_available()
        if avail is not None and ring_bytes + min(map_size or 0, free) > avail:
            warnings.append(f"store.path ({path}) is on a memory filesystem: the store's pages "
                            f"and the capture rings ({ring_bytes} bytes, pinned) share the "
                            f"{avail} bytes of memory available; a store growing to its map "
                            "would not fit: put the store on a disk or lower store.map_size")
    return problems, warnings, use


def start_check(store_path, map_size, ring_bytes=0):
    """The problems that refuse a start (empty if fine): a new store without room to be made, a
    filesystem whose free space cannot be read. Writes nothing."""
    return check(store_path, map_size, ring_bytes)[0]


def start_warnings(store_path, map_size, ring_bytes=0):
    """What a start warns about (empty if nothing): a full disk (the daemon starts degraded), a
    map that may outgrow the disk, a store on tmpfs sharing memory with the rings."""
    return check(store_path, map_size, ring_bytes)[1]
