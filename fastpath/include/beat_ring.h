/* Live capture: one TPACKET_V3 receive ring on one interface, feeding a beat_pipe.
 * Contract: docs/daemon.md ("fastpath._native.Ring"). No Python object, no GIL; one thread reads a
 * ring at a time (the binding enforces it). Errors return -errno and leave a message naming the
 * interface and the call in ring->err. */
#ifndef BEAT_RING_H
#define BEAT_RING_H
#include <net/if.h>
#include <stddef.h>
#include <stdint.h>

#include "beat_pipe.h"

#define BEAT_RING_MAX_BYTES (1ULL << 30)   /* total ring memory: block_size * block_count */
#define BEAT_RING_BATCH 256                /* frames handed to the pipeline per lock */
#define BEAT_RING_ERRLEN 256
#define BEAT_RING_MAX_IFACES BEAT_MAX_SLOT /* interface filter of an "any" ring: one slot each */

enum { BEAT_FANOUT_NONE = -1 };

/* Wide fields so that validation sees what the caller asked for, not a truncated value. */
typedef struct {
    uint64_t block_size, block_count, frame_size, block_timeout_ms;
} beat_ring_geom;

typedef struct {
    uint64_t frames, bytes, blocks, vlan_tagged, snap_truncated;
} beat_ring_counters;

/* PACKET_STATISTICS, accumulated (the kernel resets them on every read). packets includes drops. */
typedef struct {
    uint64_t packets, drops, freeze_q_cnt;
} beat_ring_kstats;

typedef struct {
    int fd;
    int ifindex;
    char ifname[IF_NAMESIZE];
    /* Each frame is handed over with the slot of the interface it was captured on: slot k + 1 is
     * slot_ifindex[k] (the filter's interfaces in their order, or the one interface of a ring bound
     * to it); an "any" ring without a filter hands over slot 0 (unknown). */
    int slot_ifindex[BEAT_RING_MAX_IFACES];
    int n_slots;
    uint8_t *map;
    size_t map_len;
    beat_ring_geom g;
    uint32_t next_block;      /* the block the kernel fills next, in ring order */
    beat_ring_counters c;
    beat_ring_kstats k;
    char err[BEAT_RING_ERRLEN];
} beat_ring;

/* 0 when the geometry is usable, else -EINVAL with a message carrying the numbers in err:
 * "<field> <value> <reason>", the field at fault first (beatd's configuration names its key). */
int beat_ring_check_geometry(const beat_ring_geom *g, char *err, size_t errlen);

/* ifname "any" binds to every interface of the namespace (ifindex 0). Opens, binds, maps and (fanout_group >= 0) joins fanout group fanout_group with fanout_mode
 * (PACKET_FANOUT_CPU, _HASH, _LB). On error the ring is left closed (fd -1). */
int beat_ring_open(beat_ring *r, const char *ifname, const beat_ring_geom *g, int fanout_group,
                   int fanout_mode);

/* Same, keeping only the frames of the n_if interfaces ifnames (n_if 0: no filter). The filter is
 * a classic BPF program on the frame's ifindex, attached before bind: other interfaces' frames
 * never enter the ring and count in no kernel statistic. ifnames[k] is slot k + 1. */
int beat_ring_open_filtered(beat_ring *r, const char *ifname, const beat_ring_geom *g,
                            int fanout_group, int fanout_mode, const char *const *ifnames,
                            int n_if);

/* Waits up to timeout_ms for a ready block, then walks every ready block in ring order, feeding
 * its frames to p under p's lock, and hands each block back to the kernel. Returns the frames fed
 * (0 on timeout or EINTR), or -errno. Frame data is valid only during the pipeline call. */
long beat_ring_read(beat_ring *r, beat_pipe *p, int timeout_ms);

/* Reads PACKET_STATISTICS into r->k (accumulating). 0 or -errno. */
int beat_ring_kernel_stats(beat_ring *r);

/* Idempotent. */
void beat_ring_close(beat_ring *r);

#endif
