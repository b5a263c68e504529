# Capture files: fastpath._native.CaptureFile, pcap and pcapng read in place by C
# (src/beat_capfile.c; docs/fastpath.md "Capture files"). Included at the end of _native.pyx so that
# feed() can hand Pipeline.p to the C loop; every C declaration comes from includes/beat_capfile.pxd.
from libc.stdlib cimport malloc

from fastpath.includes.beat_capfile cimport *

cdef uint64_t _MAX_SPAN = 0xFFFFFFFF   # a descriptor's offset is 32 bits: a batch spans less


cdef class CaptureFile:
    """The frames of a capture file's bytes ``data`` (any buffer: a read-only mmap of the file,
    bytes), read by C without a Python object per frame. ``ValueError`` when ``data`` is not a
    capture. ``read(n)`` returns the next batch as ``(buf, desc)`` (``buf`` a memoryview of
    ``data``, ``desc`` docs/fastpath.md descriptors), ``None`` at the end; ``feed(pipeline, n)``
    hands the next n frames straight to a native Pipeline (GIL released). At the end, ``damaged``
    says whether reading stopped at damage and ``error`` what it was (the reference reader's
    words, without the path). One thread at a time."""
    cdef beat_cap r
    cdef object data
    cdef object mv
    cdef const uint8_t[::1] view
    cdef beat_cap_frame *fr
    cdef beat_frame *bf
    cdef size_t fr_cap, bf_cap
    cdef int opened, reading

    def __cinit__(self):
        self.fr = NULL
        self.bf = NULL
        self.fr_cap = self.bf_cap = 0
        self.opened = 0
        self.reading = 0

    def __init__(self, data):
        cdef char err[256]
        cdef const uint8_t *p = NULL
        if self.opened:
            raise ValueError("CaptureFile is already open")
        mv = memoryview(data)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast("B")
        cdef uint64_t n = mv.nbytes
        if n:
            self.view = mv
            p = &self.view[0]
        if beat_cap_open(&self.r, p, n, err, sizeof(err)):
            beat_cap_close(&self.r)
            raise ValueError(err.decode("utf-8", "replace"))
        self.data = data
        self.mv = mv
        self.opened = 1

    def __dealloc__(self):
        if self.opened:
            beat_cap_close(&self.r)
        free(self.fr)
        free(self.bf)

    @property
    def format(self):
        return "pcap" if self.r.format == BEAT_CAP_PCAP else "pcapng"

    @property
    def frames(self):
        """Frames read so far."""
        return self.r.frames

    @property
    def done(self):
        return bool(self.r.done)

    @property
    def damaged(self):
        return bool(self.r.damaged)

    @property
    def error(self):
        """What stopped the reading early (None when nothing did)."""
        return self.r.error.decode("utf-8", "replace") if self.r.damaged else None

    cdef int _enter(self, size_t n) except -1:
        if not self.opened:
            raise ValueError("CaptureFile is not open")
        if self.reading:
            raise RuntimeError("CaptureFile: another thread is reading this file")
        if n < 1:
            raise ValueError(f"batch size must be at least 1, got {n}")
        self.reading = 1
        return 0

    def read(self, size_t batch_frames):
        """The next batch ``(buf, desc)`` of at most ``batch_frames`` frames, or None."""
        cdef size_t n
        cdef uint64_t base, end
        cdef uint8_t[::1] dv
        self._enter(batch_frames)
        try:
            if self.fr_cap < batch_frames:
                free(self.fr)
                self.fr = <beat_cap_frame *>malloc(batch_frames * sizeof(beat_cap_frame))
                self.fr_cap = batch_frames if self.fr != NULL else 0
                if self.fr == NULL:
                    raise MemoryError(f"capture file: cannot allocate a batch of {batch_frames} frames")
            with nogil:
                n = beat_cap_next(&self.r, self.fr, batch_frames, _MAX_SPAN)
            self._check_oom()
            if n == 0:
                return None
            desc = bytearray(n * 24)
            dv = desc
            base = self.fr[0].off
            end = self.fr[n - 1].off + self.fr[n - 1].caplen
            beat_cap_desc(self.fr, n, base, &dv[0])
            return self.mv[base:end], bytes(desc)
        finally:
            self.reading = 0

    def feed(self, Pipeline pipeline not None, size_t max_frames):
        """Feeds the next frames (at most ``max_frames``) to ``pipeline`` under its lock, with the
        GIL released; returns how many (0 at the end)."""
        cdef size_t n
        cdef int rc = 0
        self._enter(max_frames)
        try:
            if self.bf_cap < max_frames:
                free(self.bf)
                self.bf = <beat_frame *>malloc(max_frames * sizeof(beat_frame))
                self.bf_cap = max_frames if self.bf != NULL else 0
                if self.bf == NULL:
                    raise MemoryError(f"capture file: cannot allocate a batch of {max_frames} frames")
            with nogil:
                n = beat_cap_next_frames(&self.r, self.bf, max_frames)
                if n:
                    beat_pipe_lock(pipeline.p)
                    rc = beat_pipe_feed_frames(pipeline.p, self.bf, n)
                    beat_pipe_unlock(pipeline.p)
            self._check_oom()
            if rc:
                raise MemoryError("fast path: out of memory while processing a batch")
            return n
        finally:
            self.reading = 0

    cdef int _check_oom(self) except -1:
        if self.r.oom:
            raise MemoryError("capture file: out of memory for the interface table")
        return 0
