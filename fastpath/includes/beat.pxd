# C declarations of the fast path, in one place (the .pyx files only cimport from here).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "beat_bytes.h" nogil:
    uint64_t rd64be(const uint8_t *p)

cdef extern from "beat_hash.h" nogil:
    enum:
        BEAT_HASH_SHA3_256
        BEAT_HASH_BLAKE2B_256
    void beat_hash(int alg, const void *data, size_t length, uint8_t *out)
    int beat_hash_simd()
    const char *beat_hash_simd_name()
    int beat_hash_set_simd(int level)


cdef extern from "beat_merkle.h" nogil:
    size_t beat_merkle_depth(size_t n)
    size_t beat_merkle_nodes(size_t n)
    void beat_merkle_levels(int alg, const uint8_t *leaves, size_t n, uint8_t *out)


cdef extern from "beat_parse.h" nogil:
    ctypedef struct beat_obs:
        uint8_t msg[80]
        uint8_t digest[32]
        uint64_t key
        uint8_t src[16]
        uint8_t dst[16]
        uint16_t msg_len
        uint8_t family, dir, mac_state, reason, hashed
        uint8_t mac[6]
        uint32_t ip_len
    ctypedef struct beat_macset:
        const uint64_t *own
        int n_own
    int beat_parse(const uint8_t *f, uint32_t caplen, uint16_t linktype, uint8_t dir_hint,
                   uint8_t vlan_stripped, const beat_macset *own, beat_obs *o)


cdef extern from "beat_pipe.h" nogil:
    ctypedef struct beat_pipe:
        pass
    ctypedef struct beat_buf:
        uint8_t *d
        size_t len
        size_t cap
    ctypedef struct beat_frame:
        const uint8_t *data
        uint64_t t_ns
        uint32_t caplen
        uint16_t linktype
        uint8_t dir
        uint8_t vlan_stripped
        uint8_t slot
    ctypedef struct beat_wrong_if:
        uint64_t frames
        uint64_t node_id
        uint8_t mac[6]
        uint8_t slot, dir
    ctypedef struct beat_unknown_mac:
        uint64_t frames
        uint8_t mac[6]
        uint8_t slot, dir
    enum:
        ST_COUNT
        BEAT_MAX_OWN
        BEAT_WRONG_IF_MAX
        BEAT_UNKNOWN_MAC_MAX
    beat_pipe *beat_pipe_new(uint64_t node_id, int alg, uint64_t join_window_ns,
                             uint64_t receipt_epoch_ns, uint32_t segment_records,
                             uint64_t anchor_period_ns, uint32_t max_pending,
                             uint32_t max_receipts_per_epoch)
    void beat_pipe_free(beat_pipe *p)
    void beat_pipe_lock(beat_pipe *p)
    void beat_pipe_unlock(beat_pipe *p)
    int beat_pipe_set_own(beat_pipe *p, const uint8_t *macs, int n)
    void beat_pipe_set_records_out(beat_pipe *p, int on)
    int beat_pipe_set_neighbours(beat_pipe *p, const uint8_t *macs, const uint64_t *ids,
                                 const uint64_t *slots, int n)
    long beat_pipe_check_desc(const uint8_t *desc, size_t n, size_t buflen)
    int beat_pipe_feed_desc(beat_pipe *p, const uint8_t *buf, const uint8_t *desc, size_t n)
    int beat_pipe_feed_frames(beat_pipe *p, const beat_frame *frames, size_t n)
    int beat_pipe_flush(beat_pipe *p)
    int beat_pipe_close_segment(beat_pipe *p)
    int beat_pipe_advance(beat_pipe *p, uint64_t now_ns)
    int beat_pipe_resume(beat_pipe *p, uint64_t next_seg_seq, const uint8_t *open_records,
                         size_t n_rec, const uint8_t *open_receipts, size_t n_rc,
                         uint64_t closed_before)
    const beat_buf *beat_pipe_records(beat_pipe *p)
    const beat_buf *beat_pipe_segments(beat_pipe *p)
    int beat_pipe_swap_segments(beat_pipe *p, beat_buf *io)
    const beat_buf *beat_pipe_receipts(beat_pipe *p)
    int beat_pipe_counters(beat_pipe *p, beat_buf *out)
    int beat_pipe_open_receipts(beat_pipe *p, beat_buf *out)
    const uint8_t *beat_pipe_open_records(beat_pipe *p, size_t *n, uint64_t *seg_seq)
    const uint64_t *beat_pipe_stats(beat_pipe *p)
    const uint64_t *beat_pipe_totals(beat_pipe *p)
    size_t beat_pipe_take_wrong_interface(beat_pipe *p, beat_wrong_if *out, size_t max)
    size_t beat_pipe_take_unknown_macs(beat_pipe *p, beat_unknown_mac *out, size_t max,
                                       uint64_t *unlisted)
    uint64_t beat_pipe_closed_before(beat_pipe *p)
    void beat_pipe_reset_outputs(beat_pipe *p)
    void beat_fp_many(int alg, uint64_t node_id, const uint8_t *records, size_t n, uint8_t *out)
    void beat_segment_value(int alg, uint64_t node_id, uint64_t seg_seq, const uint8_t *records,
                            size_t n, uint8_t *out)
    void beat_receipt_value(int alg, uint64_t node_id, uint8_t role, const uint8_t *src,
                            const uint8_t *dst, uint64_t epoch_ns, uint64_t packets,
                            uint64_t nbytes, uint8_t *out)
