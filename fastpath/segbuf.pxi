# The closed segments of one take(), handed to Python without a copy (included by _native.pyx).
#
# take() gives the pipeline's segments buffer away as a SegmentBuffer (read-only, buffer protocol;
# each segment's records a memoryview of it) and gives the pipeline a spare one. A SegmentBuffer's
# bytes never change; when the last view of it is gone, its memory goes back to the pipeline's
# spares (at most SPARES kept) for a later take(): reused memory is already mapped (no page faults),
# and nothing still held by a caller is ever written again.
from cpython.buffer cimport PyBUF_FORMAT, PyBUF_WRITABLE

cdef enum:
    SPARES = 2
cdef char *_FORMAT_B = "B"


cdef class _Spares:
    """The memory of released SegmentBuffers, kept for the next takes of one pipeline."""
    cdef beat_buf bufs[SPARES]
    cdef int n

    def __dealloc__(self):
        cdef int i
        for i in range(self.n):
            free(self.bufs[i].d)
        self.n = 0

    cdef beat_buf pop(self):
        cdef beat_buf b
        if self.n:
            self.n -= 1
            return self.bufs[self.n]
        b.d = NULL
        b.len = b.cap = 0
        return b

    cdef void push(self, uint8_t *d, size_t cap):
        if self.n < SPARES:
            self.bufs[self.n].d = d
            self.bufs[self.n].len = 0
            self.bufs[self.n].cap = cap
            self.n += 1
        else:
            free(d)


cdef class SegmentBuffer:
    """Closed segments as the pipeline wrote them (``seg_seq(8) count(8) S(32) records``, repeated;
    docs/fastpath.md), read-only. Made by ``Pipeline.take()`` only."""
    cdef uint8_t *d
    cdef size_t n, cap
    cdef _Spares spares
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t strides[1]

    def __cinit__(self):
        self.d = NULL
        self.n = self.cap = 0

    def __init__(self):
        raise TypeError("a SegmentBuffer is made by Pipeline.take() only")

    def __dealloc__(self):
        if self.d != NULL:
            if self.spares is not None:
                self.spares.push(self.d, self.cap)
            else:
                free(self.d)
            self.d = NULL

    def __len__(self):
        return self.n

    def __getbuffer__(self, Py_buffer *view, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("a SegmentBuffer is read-only")
        self.shape[0] = self.n
        self.strides[0] = 1
        view.buf = <void *>self.d   # never NULL: take() makes one only over closed segments
        view.obj = self
        view.len = self.n
        view.readonly = 1
        view.itemsize = 1
        view.format = NULL
        if flags & PyBUF_FORMAT:
            view.format = _FORMAT_B
        view.ndim = 1
        view.shape = self.shape
        view.strides = self.strides
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer *view):
        pass


cdef SegmentBuffer _segment_buffer(beat_buf b, _Spares spares):
    cdef SegmentBuffer sb = SegmentBuffer.__new__(SegmentBuffer)
    sb.d = b.d
    sb.n = b.len
    sb.cap = b.cap
    sb.spares = spares
    return sb


def proofs_value(count, value, records):
    """The proof ring's value of a segment, ``count(8) S(32) records`` (docs/store.md): when
    ``records`` is a view of a SegmentBuffer right after that segment's own count and S (as take()
    hands it out), a view of those bytes (no copy); else the three joined."""
    cdef const uint8_t[::1] v
    cdef SegmentBuffer sb
    cdef size_t off, n
    cdef bytes head
    if type(records) is memoryview and type(records.obj) is SegmentBuffer:
        sb = records.obj
        try:
            v = records
        except (ValueError, TypeError, BufferError):   # another format or not contiguous
            v = None
        n = v.shape[0] if v is not None else 0
        if n and sb.d != NULL:
            off = <size_t>(&v[0] - <const uint8_t *>sb.d)
            head = struct.pack(">Q", count) + bytes(value)
            if (40 <= off <= sb.n and n <= sb.n - off and len(head) == 40
                    and memcmp(sb.d + off - 40, <const uint8_t *>head, 40) == 0):
                return memoryview(sb)[off - 40:off + n]
    return b"".join((struct.pack(">Q", count), value, records))
