# Live capture: fastpath._native.Ring, one TPACKET_V3 ring on one interface (docs/daemon.md).
# Included at the end of _native.pyx so that read() can hand Pipeline.p to the C reader; every C
# declaration comes from includes/beat_ring.pxd.
from fastpath.includes.beat_ring cimport *

import errno as _errno


class RingError(OSError):
    """A capture ring could not be opened, configured or read; errno is set and the message names
    the interface and the call (or the geometry numbers)."""


_FANOUT_MODES = {"cpu": PACKET_FANOUT_CPU, "hash": PACKET_FANOUT_HASH, "lb": PACKET_FANOUT_LB}


cdef int _ring_geom(beat_ring_geom *g, block_size, block_count, frame_size,
                    block_timeout_ms) except -1:
    for name, v in (("block_size", block_size), ("block_count", block_count),
                    ("frame_size", frame_size), ("block_timeout_ms", block_timeout_ms)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < (1 << 63):
            raise RingError(_errno.EINVAL, f"{name} must be a non-negative integer, got {v!r}")
    g.block_size = block_size
    g.block_count = block_count
    g.frame_size = frame_size
    g.block_timeout_ms = block_timeout_ms
    cdef char err[256]
    if beat_ring_check_geometry(g, err, sizeof(err)) < 0:
        raise RingError(_errno.EINVAL, err.decode("utf-8", "replace"))
    return 0


cdef dict _geom_dict(const beat_ring_geom *g):
    fpb = g.block_size // g.frame_size
    return {"block_size": g.block_size, "block_count": g.block_count,
            "frame_size": g.frame_size, "block_timeout_ms": g.block_timeout_ms,
            "frames_per_block": fpb, "frame_count": fpb * g.block_count,
            "ring_bytes": g.block_size * g.block_count}


def ring_geometry(block_size, block_count, frame_size, block_timeout_ms=10):
    """Validates a ring geometry (RingError with the numbers) and returns it as a dict."""
    cdef beat_ring_geom g
    _ring_geom(&g, block_size, block_count, frame_size, block_timeout_ms)
    return _geom_dict(&g)


cdef class Ring:
    """A TPACKET_V3 receive ring on `ifname` (both directions; "any": every interface of the
    namespace on one socket, optionally only those named in `interfaces`, a kernel filter). `read(pipeline)` feeds the frames of
    every ready block to the pipeline with the GIL released; one thread reads a ring at a time.
    Frames point into the ring only while the pipeline processes them: nothing is kept."""
    cdef beat_ring r
    cdef readonly str ifname
    cdef readonly int ifindex
    cdef int reading
    cdef bint closing
    cdef dict _geometry
    cdef dict _slots

    def __cinit__(self):
        self.r.fd = -1

    def __init__(self, ifname, block_size=1 << 20, block_count=16, frame_size=2048,
                 block_timeout_ms=10, fanout_group=None, fanout_mode="cpu", interfaces=None):
        cdef beat_ring_geom g
        cdef const char *names[BEAT_RING_MAX_IFACES]
        cdef int n_if = 0
        cdef int group = BEAT_FANOUT_NONE
        cdef int mode = 0
        cdef int rc
        if self.r.fd >= 0:
            raise RingError(_errno.EBUSY, f"ring on {self.ifname} is already open")
        self.ifname = str(ifname)
        _ring_geom(&g, block_size, block_count, frame_size, block_timeout_ms)
        if fanout_group is not None:
            if (isinstance(fanout_group, bool) or not isinstance(fanout_group, int)
                    or not 0 <= fanout_group <= 0xffff):
                raise RingError(_errno.EINVAL, f"fanout_group must be in 0..65535 or None, got "
                                f"{fanout_group!r} (interface {self.ifname})")
            group = fanout_group
        if fanout_mode not in _FANOUT_MODES:
            raise RingError(_errno.EINVAL, f"fanout_mode must be one of cpu, hash, lb, got "
                            f"{fanout_mode!r} (interface {self.ifname})")
        mode = _FANOUT_MODES[fanout_mode]
        cdef list keep = []
        if interfaces is not None:
            if isinstance(interfaces, (str, bytes)):
                interfaces = (interfaces,)
            keep = [str(i).encode() for i in interfaces]
            if not 1 <= len(keep) <= BEAT_RING_MAX_IFACES:
                raise RingError(_errno.EINVAL, f"interfaces of the ring on {self.ifname}: "
                                f"{len(keep)} names, want 1..{BEAT_RING_MAX_IFACES}")
            for n_if in range(len(keep)):
                names[n_if] = keep[n_if]
            n_if = len(keep)
        cdef bytes name = self.ifname.encode()
        cdef const char *cname = name
        with nogil:
            rc = beat_ring_open_filtered(&self.r, cname, &g, group, mode, names, n_if)
        if rc < 0:
            raise RingError(-rc, self.r.err.decode("utf-8", "replace"))
        self.ifindex = self.r.ifindex
        self._geometry = _geom_dict(&self.r.g)
        self._geometry["fanout_group"] = fanout_group
        self._geometry["fanout_mode"] = fanout_mode if fanout_group is not None else None
        self._geometry["interfaces"] = [k.decode() for k in keep] if keep else None
        slot_names = [k.decode() for k in keep] if keep else [self.ifname]
        self._slots = {slot_names[i]: i + 1 for i in range(self.r.n_slots)}

    def __dealloc__(self):
        beat_ring_close(&self.r)

    cdef _release(self):
        if self.r.fd >= 0:
            beat_ring_kernel_stats(&self.r)   # the last counts: closing the socket loses them
            beat_ring_close(&self.r)

    def close(self):
        """Idempotent. A read in progress on another thread finishes first (within its timeout)."""
        self.closing = True
        if not self.reading:
            self._release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def closed(self):
        return self.r.fd < 0 or self.closing

    @property
    def slots(self):
        """``{ifname: slot}``: the slot each frame carries to the pipeline for the interface it
        was captured on (docs/fastpath.md): the filter's interfaces in their order from 1, or 1
        for a ring bound to one interface; empty for an "any" ring without a filter (slot 0,
        unknown)."""
        return dict(self._slots) if self._slots is not None else {}

    @property
    def geometry(self):
        return dict(self._geometry) if self._geometry is not None else None

    def fileno(self):
        if self.r.fd < 0 or self.closing:
            raise RingError(_errno.EBADF, f"ring on {self.ifname} is closed")
        return self.r.fd

    def read(self, Pipeline pipeline not None, int timeout_ms=100):
        """Waits up to timeout_ms for a ready block, feeds every ready block's frames to pipeline
        (under its lock) and hands the blocks back. Returns the frames fed; 0 on timeout."""
        cdef long n
        if timeout_ms < 0:   # poll() would wait forever, beyond the reach of close()
            raise ValueError(f"timeout_ms must be >= 0, got {timeout_ms}")
        if self.r.fd < 0 or self.closing:
            raise RingError(_errno.EBADF, f"read on {self.ifname}: the ring is closed")
        if self.reading:
            raise RingError(_errno.EBUSY, f"read on {self.ifname}: another thread is reading "
                            "this ring")
        self.reading = 1
        try:
            with nogil:
                n = beat_ring_read(&self.r, pipeline.p, timeout_ms)
        finally:
            self.reading = 0
            if self.closing:
                self._release()
        if n < 0:
            raise RingError(-n, self.r.err.decode("utf-8", "replace"))
        return n

    def kernel_stats(self):
        """PACKET_STATISTICS accumulated since the ring opened (packets includes drops)."""
        cdef int rc = 0
        if self.r.fd >= 0 and not self.closing:
            rc = beat_ring_kernel_stats(&self.r)
        if rc < 0:
            raise RingError(-rc, self.r.err.decode("utf-8", "replace"))
        return {"packets": self.r.k.packets, "drops": self.r.k.drops,
                "freeze_q_cnt": self.r.k.freeze_q_cnt}

    def counters(self):
        """What the reader saw: frames and bytes (wire length) fed, blocks walked, frames with a
        VLAN tag stripped by the kernel, frames cut by the snap length."""
        return {"frames": self.r.c.frames, "bytes": self.r.c.bytes, "blocks": self.r.c.blocks,
                "vlan_tagged": self.r.c.vlan_tagged, "snap_truncated": self.r.c.snap_truncated}

    def __repr__(self):
        state = "closed" if self.closed else f"fd {self.r.fd}"
        return f"<Ring {self.ifname} ifindex {self.ifindex} {state}>"
