/* Capture files (pcap, pcapng) read in place, from memory (a mapped file): frames out as (time,
 * offset, caplen, wirelen, linktype, dir), exactly the frames, times and damage of beatd/capfile.py's
 * reference reader (docs/fastpath.md, "Capture files"). No allocation per frame; one small table of
 * the section's interfaces. */
#ifndef BEAT_CAPFILE_H
#define BEAT_CAPFILE_H
#include <stddef.h>
#include <stdint.h>

#include "beat_pipe.h"

#define BEAT_CAP_ERRLEN 200
#define BEAT_CAP_PCAP 1
#define BEAT_CAP_PCAPNG 2
#define BEAT_CAP_MAX_RECORD (256u << 20) /* a pcapng block above this is a corrupt length */
#define BEAT_CAP_MAX_SNAPLEN 262144u     /* a pcap record above max(snaplen, this) is corrupt */

typedef struct {
    uint64_t t_ns;
    uint64_t off;      /* of the frame's first byte, from the start of the data */
    uint32_t caplen, wirelen;
    uint16_t linktype;
    uint8_t dir;       /* 0, or from epb_flags: 1 inbound, 2 outbound */
} beat_cap_frame;

typedef struct {
    uint32_t snaplen;
    uint16_t linktype;
    uint8_t shift;     /* t_ns = ((ts * mul) >> shift) / div + offset_ns, clamped to 0..2^64-1 */
    uint8_t zero;      /* the resolution is so fine that every time is 0 before the offset */
    uint64_t mul, div;
    int64_t offset_s;  /* if_tsoffset, seconds */
} beat_cap_iface;

typedef struct {
    const uint8_t *data;
    uint64_t len, pos;
    int format;                /* BEAT_CAP_PCAP or BEAT_CAP_PCAPNG */
    int be;                    /* pcap: big-endian file; pcapng: the current section's order */
    /* pcap */
    uint64_t frac_ns;          /* ns per fraction unit: 1000 (µs) or 1 (ns) */
    uint32_t snaplen, limit;
    uint16_t linktype;
    /* pcapng */
    beat_cap_iface *ifs;
    uint32_t n_if, cap_if;
    uint64_t last_t;           /* an SPB has the previous frame's time */
    uint64_t frames;           /* returned so far */
    int done;                  /* the end, or damage (then damaged = 1, error says what) */
    int damaged;
    int oom;
    char error[BEAT_CAP_ERRLEN];
} beat_cap;

/* 0, or -1 when the data is not a capture (err says why, e.g. "not a pcap or pcapng file (magic
 * 0x38464947)"). The data must stay valid and unchanged until beat_cap_close. */
int beat_cap_open(beat_cap *r, const uint8_t *data, uint64_t len, char *err, size_t errlen);
/* Up to max frames into out; stops early before a frame that would end more than max_span bytes
 * after the first frame's offset (a batch's descriptors hold 32-bit offsets). 0: the end (or
 * damage, or out of memory: r->oom); damage found after some frames returns those frames first and
 * sets r->done and r->damaged at once. */
size_t beat_cap_next(beat_cap *r, beat_cap_frame *out, size_t max, uint64_t max_span);
/* The same, as the pipeline's frames (pointers into the data, no interface slot): what
 * beat_pipe_feed_frames takes, without a descriptor in between. */
size_t beat_cap_next_frames(beat_cap *r, beat_frame *out, size_t max);
/* n frames as docs/fastpath.md descriptors (24 bytes each, offsets from base) into desc. */
void beat_cap_desc(const beat_cap_frame *f, size_t n, uint64_t base, uint8_t *desc);
void beat_cap_close(beat_cap *r);
#endif
