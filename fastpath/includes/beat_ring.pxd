# C declarations of the live capture ring (fastpath/include/beat_ring.h); ring.pxi cimports them.
from libc.stdint cimport uint64_t

from fastpath.includes.beat cimport beat_pipe


cdef extern from "linux/if_packet.h" nogil:
    enum:
        PACKET_FANOUT_HASH
        PACKET_FANOUT_LB
        PACKET_FANOUT_CPU


cdef extern from "beat_ring.h" nogil:
    enum:
        BEAT_RING_ERRLEN
        BEAT_FANOUT_NONE
        BEAT_RING_MAX_IFACES
    ctypedef struct beat_ring_geom:
        uint64_t block_size, block_count, frame_size, block_timeout_ms
    ctypedef struct beat_ring_counters:
        uint64_t frames, bytes, blocks, vlan_tagged, snap_truncated
    ctypedef struct beat_ring_kstats:
        uint64_t packets, drops, freeze_q_cnt
    ctypedef struct beat_ring:
        int fd
        int ifindex
        int n_slots
        beat_ring_geom g
        beat_ring_counters c
        beat_ring_kstats k
        char err[256]
    int beat_ring_check_geometry(const beat_ring_geom *g, char *err, size_t errlen)
    int beat_ring_open(beat_ring *r, const char *ifname, const beat_ring_geom *g, int fanout_group,
                       int fanout_mode)
    int beat_ring_open_filtered(beat_ring *r, const char *ifname, const beat_ring_geom *g,
                                int fanout_group, int fanout_mode, const char *const *ifnames,
                                int n_if)
    long beat_ring_read(beat_ring *r, beat_pipe *p, int timeout_ms)
    int beat_ring_kernel_stats(beat_ring *r)
    void beat_ring_close(beat_ring *r)
