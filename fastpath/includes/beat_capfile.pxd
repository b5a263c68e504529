# C declarations of the capture file reader (fastpath/include/beat_capfile.h); capfile.pxi cimports them.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from fastpath.includes.beat cimport beat_frame


cdef extern from "beat_capfile.h" nogil:
    enum:
        BEAT_CAP_ERRLEN
        BEAT_CAP_PCAP
        BEAT_CAP_PCAPNG
    ctypedef struct beat_cap_frame:
        uint64_t t_ns
        uint64_t off
        uint32_t caplen, wirelen
        uint16_t linktype
        uint8_t dir
    ctypedef struct beat_cap:
        uint64_t len, pos
        int format
        uint64_t frames
        int done
        int damaged
        int oom
        char error[200]
    int beat_cap_open(beat_cap *r, const uint8_t *data, uint64_t len, char *err, size_t errlen)
    size_t beat_cap_next(beat_cap *r, beat_cap_frame *out, size_t max, uint64_t max_span)
    void beat_cap_close(beat_cap *r)
    size_t beat_cap_next_frames(beat_cap *r, beat_frame *out, size_t max)
    void beat_cap_desc(const beat_cap_frame *f, size_t n, uint64_t base, uint8_t *desc)
