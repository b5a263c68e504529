/* The per-packet accountability pipeline: frames in, records/counters/receipts/segments out.
 * Semantics: docs/fastpath.md. No Python object, no lock; the caller serialises calls. */
#ifndef BEAT_PIPE_H
#define BEAT_PIPE_H
#include <stddef.h>
#include <stdint.h>

#include "beat_stats.h"

#define BEAT_NONE 0xFFFFFFFFFFFFFFFFULL
#define BEAT_DESC_SIZE 24
#define BEAT_RECORD_SIZE 48
#define BEAT_RECEIPT_SIZE 89
#define BEAT_OPEN_RECEIPT_SIZE 57
#define BEAT_COUNTER_SIZE 48
#define BEAT_MAX_OWN 64
/* The descriptor's flags byte: bits 0-1 the VLAN tags the capture stripped, bits 2-7 the capture
 * interface's slot (1..63; 0 = unknown, e.g. a replayed pcap). */
#define BEAT_FLAGS_VLAN_MASK 3u
#define BEAT_FLAGS_SLOT_SHIFT 2
#define BEAT_MAX_SLOT 63
#define BEAT_SLOTS_ANY 0xFFFFFFFFFFFFFFFFULL /* a neighbour matched on every interface */
#define BEAT_WRONG_IF_MAX 16 /* distinct (MAC, slot, dir) kept between two take_wrong_interface */
#define BEAT_UNKNOWN_MAC_MAX 64 /* distinct (MAC, slot, dir) kept between two take_unknown_macs */

typedef struct beat_pipe beat_pipe;

/* One frame as the live path hands it over: valid for the duration of the call only. */
typedef struct {
    const uint8_t *data;
    uint64_t t_ns;
    uint32_t caplen;
    uint16_t linktype;
    uint8_t dir;
    uint8_t vlan_stripped; /* VLAN tags the capture removed (TP_STATUS_VLAN_VALID): 0 or 1 */
    uint8_t slot;          /* the capture interface's slot, 1..63; 0 unknown (docs/fastpath.md) */
} beat_frame;

/* A frame whose neighbour MAC was on an interface where that neighbour is not (recorded as from or
 * to outside, 0): what the daemon logs. */
typedef struct {
    uint64_t frames;
    uint64_t node_id;   /* the neighbour whose MAC it carried */
    uint8_t mac[6];
    uint8_t slot, dir;  /* dir 1 ingress (source MAC), 2 egress (destination MAC) */
} beat_wrong_if;

/* Frames whose neighbour MAC is no neighbour's (recorded as from or to outside, 0): what the
 * daemon logs and shows. */
typedef struct {
    uint64_t frames;
    uint8_t mac[6];
    uint8_t slot, dir;  /* dir 1 ingress (source MAC), 2 egress (destination MAC) */
} beat_unknown_mac;

typedef struct {
    uint8_t *d;
    size_t len, cap;
} beat_buf;

/* max_receipts_per_epoch: receipts of their own per role and epoch; the flows beyond share the
 * epoch's overflow receipt of the role (src = dst = 16 zero bytes). */
beat_pipe *beat_pipe_new(uint64_t node_id, int alg, uint64_t join_window_ns,
                         uint64_t receipt_epoch_ns, uint32_t segment_records,
                         uint64_t anchor_period_ns, uint32_t max_pending,
                         uint32_t max_receipts_per_epoch);
void beat_pipe_free(beat_pipe *p);
/* The pipeline is not thread-safe by itself: callers that share one (capture workers feeding, a
 * committer taking) hold this lock around every other call. */
void beat_pipe_lock(beat_pipe *p);
void beat_pipe_unlock(beat_pipe *p);
int beat_pipe_set_own(beat_pipe *p, const uint8_t *macs, int n);           /* n * 6 bytes */
/* on = 0: released records are not copied to the records output (beat_pipe_records stays empty);
 * segments, counters, receipts and stats are the same. For consumers that never read it. */
void beat_pipe_set_records_out(beat_pipe *p, int on);
/* slots[j]: bit s set when neighbour j is at the interface of slot s (bit 0, unknown interface,
 * always counts as set); BEAT_SLOTS_ANY for a neighbour matched on every interface. */
int beat_pipe_set_neighbours(beat_pipe *p, const uint8_t *macs, const uint64_t *ids,
                             const uint64_t *slots, int n);

/* Returns -1 when every descriptor fits in the buffer and has a valid dir (0, 1, 2), else the index
 * of the first that does not (every flags byte is valid). Call before feed_desc. */
long beat_pipe_check_desc(const uint8_t *desc, size_t n, size_t buflen);
/* 0, or -1 when memory ran out (the batch is then partly processed). */
int beat_pipe_feed_desc(beat_pipe *p, const uint8_t *buf, const uint8_t *desc, size_t n);
int beat_pipe_feed_frames(beat_pipe *p, const beat_frame *frames, size_t n);
int beat_pipe_flush(beat_pipe *p);
int beat_pipe_close_segment(beat_pipe *p);
/* Move the clock to now_ns (if later) without a frame: release what the join window let go and
 * close receipt epochs, as a frame at now_ns would before being observed. */
int beat_pipe_advance(beat_pipe *p, uint64_t now_ns);
/* Replaces the open segment, the open receipts, seg_seq and closed_before (the FIFO, the clock and
 * the outputs not taken yet stay). -2: n_rec not below segment_records, or a receipt role other
 * than 1 or 2 (nothing changed); -1: out of memory. */
int beat_pipe_resume(beat_pipe *p, uint64_t next_seg_seq, const uint8_t *open_records, size_t n_rec,
                     const uint8_t *open_receipts, size_t n_rc, uint64_t closed_before);

/* Outputs since the last beat_pipe_reset_outputs(); see docs/fastpath.md "Outputs". */
const beat_buf *beat_pipe_records(beat_pipe *p);
const beat_buf *beat_pipe_segments(beat_pipe *p);   /* seg_seq(8) count(8) S(32) records, repeated */
/* Hands the segments buffer over: *io (any malloc'ed buffer, or d = NULL, cap = 0) becomes the
 * pipeline's segments buffer (the open segment copied into it) and receives the one that held the
 * closed segments (its len bytes: beat_pipe_segments' layout; the caller frees it or hands it back
 * in a later call). -1: out of memory, nothing changed. */
int beat_pipe_swap_segments(beat_pipe *p, beat_buf *io);
const beat_buf *beat_pipe_receipts(beat_pipe *p);   /* sorted at close */
int beat_pipe_counters(beat_pipe *p, beat_buf *out); /* sorted deltas into out (caller frees out->d) */
int beat_pipe_open_receipts(beat_pipe *p, beat_buf *out);
const uint8_t *beat_pipe_open_records(beat_pipe *p, size_t *n, uint64_t *seg_seq);
const uint64_t *beat_pipe_stats(beat_pipe *p);       /* deltas, ST_COUNT long */
const uint64_t *beat_pipe_totals(beat_pipe *p);
/* The wrong-interface frames since the previous call, by (MAC, slot, dir) in first-seen order (at
 * most BEAT_WRONG_IF_MAX distinct; later ones are only counted in the stats): copies up to max
 * into out, returns how many, and forgets them. */
size_t beat_pipe_take_wrong_interface(beat_pipe *p, beat_wrong_if *out, size_t max);
/* The frames with a MAC that is no neighbour's since the previous call, by (MAC, slot, dir) in
 * first-seen order (at most BEAT_UNKNOWN_MAC_MAX distinct; the frames of later ones are added to
 * *unlisted): copies up to max into out, returns how many, and forgets them. */
size_t beat_pipe_take_unknown_macs(beat_pipe *p, beat_unknown_mac *out, size_t max,
                                   uint64_t *unlisted);
uint64_t beat_pipe_closed_before(beat_pipe *p);
void beat_pipe_reset_outputs(beat_pipe *p);

/* SPEC values, one at a time or many. */
void beat_fp_many(int alg, uint64_t node_id, const uint8_t *records, size_t n, uint8_t *out);
void beat_segment_value(int alg, uint64_t node_id, uint64_t seg_seq, const uint8_t *records,
                        size_t n, uint8_t out[32]);
void beat_receipt_value(int alg, uint64_t node_id, uint8_t role, const uint8_t src[16],
                        const uint8_t dst[16], uint64_t epoch_ns, uint64_t packets, uint64_t bytes,
                        uint8_t out[32]);
#endif
