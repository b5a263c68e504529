/* TPACKET_V3 receive ring feeding the pipeline (docs/daemon.md). The hot path is three short
 * functions, as in Suricata's source-af-packet.c: read a block, walk its packets, handle one packet.
 * A block is always handed back to the kernel, whatever happened while walking it. */
#define _GNU_SOURCE
#include "beat_ring.h"

#include <errno.h>
#include <linux/if_ether.h>
#include <linux/filter.h>
#include <linux/if_packet.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <arpa/inet.h>

#define TPACKET3_HDRLEN_ (TPACKET_ALIGN(sizeof(struct tpacket3_hdr)) + sizeof(struct sockaddr_ll))
#define MIN_FRAME_SIZE (TPACKET3_HDRLEN_ + 64)

/* Frames of one walk, fed to the pipeline before the block they point into is handed back. */
typedef struct {
    beat_frame f[BEAT_RING_BATCH];
    size_t n;
    int rc;                    /* first pipeline error (out of memory), 0 if none */
} batch;

static int fail(beat_ring *r, int e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err, sizeof r->err, fmt, ap);
    va_end(ap);
    return -e;
}

int beat_ring_check_geometry(const beat_ring_geom *g, char *err, size_t errlen)
{
    /* Every message is "<field> <value> <reason>": the field at fault first (the members of
     * beat_ring_geom are also the [capture] keys of beatd's configuration, which names the key
     * from it: beatd/config.py). */
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
#define BAD(...) do { snprintf(err, errlen, __VA_ARGS__); return -EINVAL; } while (0)
    if (g->block_size == 0 || g->block_size % page || g->block_size & (g->block_size - 1))
        BAD("block_size %llu is not a power of two multiple of the page size %llu",
            (unsigned long long)g->block_size, (unsigned long long)page);
    if (g->frame_size % TPACKET_ALIGNMENT)
        BAD("frame_size %llu is not a multiple of %d (TPACKET_ALIGNMENT)",
            (unsigned long long)g->frame_size, TPACKET_ALIGNMENT);
    if (g->frame_size < MIN_FRAME_SIZE)
        BAD("frame_size %llu must be at least %zu (TPACKET3_HDRLEN %zu + 64)",
            (unsigned long long)g->frame_size, (size_t)MIN_FRAME_SIZE, (size_t)TPACKET3_HDRLEN_);
    if (g->frame_size > g->block_size)
        BAD("frame_size %llu is more than block_size (%llu bytes)",
            (unsigned long long)g->frame_size, (unsigned long long)g->block_size);
    if (g->block_count < 1)
        BAD("block_count %llu must be at least 1", (unsigned long long)g->block_count);
    if (g->block_count > BEAT_RING_MAX_BYTES / g->block_size)
        BAD("block_count %llu exceeds %llu bytes (1 GiB) of ring: %llu blocks of block_size "
            "%llu bytes", (unsigned long long)g->block_count,
            (unsigned long long)BEAT_RING_MAX_BYTES, (unsigned long long)g->block_count,
            (unsigned long long)g->block_size);
    if (g->block_timeout_ms < 1 || g->block_timeout_ms > 1000)
        BAD("block_timeout_ms %llu must be in 1..1000", (unsigned long long)g->block_timeout_ms);
#undef BAD
    return 0;
}

/* Accept the frames whose interface is one of ifindex[0..n-1], drop the rest. */
static int attach_ifindex_filter(beat_ring *r, const int *ifindex, int n)
{
    struct sock_filter prog[BEAT_RING_MAX_IFACES + 3];
    prog[0] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, SKF_AD_OFF + SKF_AD_IFINDEX);
    for (int i = 1; i <= n; i++)
        prog[i] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)ifindex[i - 1],
                                               (uint8_t)(n + 1 - i), 0);
    prog[n + 1] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, 0);
    prog[n + 2] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, 0xffffffffu);
    struct sock_fprog fp = {.len = (unsigned short)(n + 3), .filter = prog};
    if (setsockopt(r->fd, SOL_SOCKET, SO_ATTACH_FILTER, &fp, sizeof fp) < 0)
        return fail(r, errno, "setsockopt(SO_ATTACH_FILTER, %d interfaces) on %s: %s", n,
                    r->ifname, strerror(errno));
    return 0;
}

int beat_ring_open(beat_ring *r, const char *ifname, const beat_ring_geom *g, int fanout_group,
                   int fanout_mode)
{
    return beat_ring_open_filtered(r, ifname, g, fanout_group, fanout_mode, NULL, 0);
}

int beat_ring_open_filtered(beat_ring *r, const char *ifname, const beat_ring_geom *g,
                            int fanout_group, int fanout_mode, const char *const *ifnames,
                            int n_if)
{
    int rc, e;
    int filter[BEAT_RING_MAX_IFACES];
    memset(r, 0, sizeof *r);
    r->fd = -1;
    snprintf(r->ifname, sizeof r->ifname, "%s", ifname);
    if (strlen(ifname) >= IF_NAMESIZE)
        return fail(r, ENODEV, "interface name %s is longer than %d bytes", ifname,
                    IF_NAMESIZE - 1);
    rc = beat_ring_check_geometry(g, r->err, sizeof r->err);
    if (rc)
        return rc;
    r->g = *g;
    /* "any": every interface of the namespace on one socket (ifindex 0). Both copies of a
     * forwarded packet then reach the same ring, in order: the join needs ingress before egress. */
    r->ifindex = strcmp(ifname, "any") == 0 ? 0 : (int)if_nametoindex(ifname);
    if (r->ifindex == 0 && strcmp(ifname, "any") != 0)
        return fail(r, errno ? errno : ENODEV, "if_nametoindex(%s): %s", ifname,
                    strerror(errno ? errno : ENODEV));

    if (n_if < 0 || n_if > BEAT_RING_MAX_IFACES)
        return fail(r, EINVAL, "interface filter of %s: %d interfaces, at most %d", ifname, n_if,
                    BEAT_RING_MAX_IFACES);
    for (int i = 0; i < n_if; i++) {
        filter[i] = (int)if_nametoindex(ifnames[i]);
        if (filter[i] == 0)
            return fail(r, errno ? errno : ENODEV, "if_nametoindex(%s) for the filter of %s: %s",
                        ifnames[i], ifname, strerror(errno ? errno : ENODEV));
        r->slot_ifindex[i] = filter[i];
    }
    r->n_slots = n_if;
    if (n_if == 0 && r->ifindex != 0) {   /* a ring bound to one interface: slot 1 */
        r->slot_ifindex[0] = r->ifindex;
        r->n_slots = 1;
    }

    /* Protocol 0 until bind: the socket sees nothing from other interfaces meanwhile. */
    r->fd = socket(AF_PACKET, SOCK_RAW, 0);
    if (r->fd < 0)
        return fail(r, errno, "socket(AF_PACKET, SOCK_RAW) for %s: %s", ifname, strerror(errno));

    int ver = TPACKET_V3;
    if (setsockopt(r->fd, SOL_PACKET, PACKET_VERSION, &ver, sizeof ver) < 0) {
        e = errno;
        beat_ring_close(r);
        return fail(r, e, "setsockopt(PACKET_VERSION, TPACKET_V3) on %s: %s", ifname, strerror(e));
    }

    struct tpacket_req3 req;
    memset(&req, 0, sizeof req);
    req.tp_block_size = (unsigned)g->block_size;
    req.tp_block_nr = (unsigned)g->block_count;
    req.tp_frame_size = (unsigned)g->frame_size;
    req.tp_frame_nr = (unsigned)(g->block_size / g->frame_size * g->block_count);
    req.tp_retire_blk_tov = (unsigned)g->block_timeout_ms;
    req.tp_feature_req_word = 0;
    if (setsockopt(r->fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof req) < 0) {
        e = errno;
        beat_ring_close(r);
        return fail(r, e, "setsockopt(PACKET_RX_RING) on %s: %s (block_size %llu, block_count "
                    "%llu, frame_size %llu)", ifname, strerror(e),
                    (unsigned long long)g->block_size, (unsigned long long)g->block_count,
                    (unsigned long long)g->frame_size);
    }

    r->map_len = (size_t)(g->block_size * g->block_count);
    void *m = mmap(NULL, r->map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_LOCKED, r->fd, 0);
    if (m == MAP_FAILED)   /* MAP_LOCKED can exceed RLIMIT_MEMLOCK: the ring works without it */
        m = mmap(NULL, r->map_len, PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, 0);
    if (m == MAP_FAILED) {
        e = errno;
        r->map_len = 0;
        beat_ring_close(r);
        return fail(r, e, "mmap of the %llu-byte ring on %s: %s",
                    (unsigned long long)(g->block_size * g->block_count), ifname, strerror(e));
    }
    r->map = m;

    if (n_if > 0 && (rc = attach_ifindex_filter(r, filter, n_if)) < 0) {
        beat_ring_close(r);
        return rc;
    }

    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof sll);
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = r->ifindex;
    if (bind(r->fd, (struct sockaddr *)&sll, sizeof sll) < 0) {
        e = errno;
        beat_ring_close(r);
        return fail(r, e, "bind to %s (ifindex %d): %s", ifname, sll.sll_ifindex, strerror(e));
    }

    if (fanout_group >= 0) {
        int arg = (fanout_group & 0xffff) | (fanout_mode << 16);
        if (setsockopt(r->fd, SOL_PACKET, PACKET_FANOUT, &arg, sizeof arg) < 0) {
            e = errno;
            beat_ring_close(r);
            return fail(r, e, "setsockopt(PACKET_FANOUT, group %d, mode %d) on %s: %s",
                        fanout_group, fanout_mode, ifname, strerror(e));
        }
    }
    return 0;
}

static void feed(beat_ring *r, beat_pipe *p, batch *b)
{
    (void)r;
    if (b->n == 0)
        return;
    beat_pipe_lock(p);
    int rc = beat_pipe_feed_frames(p, b->f, b->n);
    beat_pipe_unlock(p);
    if (rc && !b->rc)
        b->rc = rc;
    b->n = 0;
}

/* The slot of the interface a frame was captured on (0: not one of the ring's). A few interfaces:
 * a short scan of one cache line or two. */
static inline uint8_t slot_of(const beat_ring *r, int ifindex)
{
    for (int i = 0; i < r->n_slots; i++)
        if (r->slot_ifindex[i] == ifindex)
            return (uint8_t)(i + 1);
    return 0;
}

/* One packet: a frame for the pipeline, and the ring's counters. */
static inline void handle_packet(beat_ring *r, beat_pipe *p, batch *b, struct tpacket3_hdr *h)
{
    const struct sockaddr_ll *sll =
        (const struct sockaddr_ll *)((uint8_t *)h + TPACKET_ALIGN(sizeof(struct tpacket3_hdr)));
    beat_frame *f = &b->f[b->n++];
    f->data = (const uint8_t *)h + h->tp_mac;
    f->caplen = h->tp_snaplen;
    f->t_ns = (uint64_t)h->tp_sec * 1000000000ULL + h->tp_nsec;
    f->linktype = 1;
    f->dir = sll->sll_pkttype == PACKET_OUTGOING ? 2 : 1;
    /* the kernel took the outer VLAN tag off the frame: it still counts toward the two allowed */
    f->vlan_stripped = (h->tp_status & TP_STATUS_VLAN_VALID) ? 1 : 0;
    f->slot = slot_of(r, sll->sll_ifindex);
    r->c.frames++;
    r->c.bytes += h->tp_len;
    if (h->tp_status & TP_STATUS_VLAN_VALID)
        r->c.vlan_tagged++;
    if (h->tp_snaplen < h->tp_len)
        r->c.snap_truncated++;
    if (b->n == BEAT_RING_BATCH)
        feed(r, p, b);
}

/* Every packet of one block; a packet whose header points outside the block ends the walk. */
static void walk_block(beat_ring *r, beat_pipe *p, batch *b, struct tpacket_block_desc *bd)
{
    uint32_t n = bd->hdr.bh1.num_pkts;
    uint64_t off = bd->hdr.bh1.offset_to_first_pkt;
    const uint64_t size = r->g.block_size;
    for (uint32_t i = 0; i < n; i++) {
        if (off + sizeof(struct tpacket3_hdr) > size)
            break;
        struct tpacket3_hdr *h = (struct tpacket3_hdr *)((uint8_t *)bd + off);
        if (off + h->tp_mac + h->tp_snaplen > size)
            break;
        handle_packet(r, p, b, h);
        if (h->tp_next_offset == 0)
            break;
        off += h->tp_next_offset;
    }
    feed(r, p, b);   /* frames point into this block: feed them before it goes back */
}

/* The next block in ring order, if the kernel has handed it to us: walk it and give it back. */
static int read_block(beat_ring *r, beat_pipe *p, batch *b)
{
    struct tpacket_block_desc *bd =
        (struct tpacket_block_desc *)(r->map + (size_t)r->next_block * r->g.block_size);
    if (!(__atomic_load_n(&bd->hdr.bh1.block_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER))
        return 0;
    walk_block(r, p, b, bd);
    r->c.blocks++;
    __atomic_store_n(&bd->hdr.bh1.block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
    r->next_block = (r->next_block + 1) % (uint32_t)r->g.block_count;
    return 1;
}

long beat_ring_read(beat_ring *r, beat_pipe *p, int timeout_ms)
{
    batch b;
    b.n = 0;
    b.rc = 0;
    if (r->fd < 0)
        return fail(r, EBADF, "read on %s: the ring is closed", r->ifname);
    uint64_t before = r->c.frames;
    struct tpacket_block_desc *bd =
        (struct tpacket_block_desc *)(r->map + (size_t)r->next_block * r->g.block_size);
    if (!(__atomic_load_n(&bd->hdr.bh1.block_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER)) {
        struct pollfd pfd = {.fd = r->fd, .events = POLLIN | POLLERR, .revents = 0};
        int rc = poll(&pfd, 1, timeout_ms);
        if (rc < 0)
            return errno == EINTR ? 0 : fail(r, errno, "poll on %s: %s", r->ifname,
                                             strerror(errno));
        if (pfd.revents & POLLNVAL)
            return fail(r, EBADF, "poll on %s: the socket is not open", r->ifname);
        if (pfd.revents & POLLERR) {
            int e = 0;
            socklen_t len = sizeof e;
            if (getsockopt(r->fd, SOL_SOCKET, SO_ERROR, &e, &len) == 0 && e)
                return fail(r, e, "poll on %s: %s", r->ifname, strerror(e));
        }
    }
    /* At most one lap, so that a flood cannot keep the caller here forever. */
    for (uint64_t i = 0; i < r->g.block_count; i++)
        if (!read_block(r, p, &b))
            break;
    if (b.rc)
        return fail(r, ENOMEM, "pipeline fed from %s: out of memory", r->ifname);
    return (long)(r->c.frames - before);
}

int beat_ring_kernel_stats(beat_ring *r)
{
    struct tpacket_stats_v3 st;
    socklen_t len = sizeof st;
    if (r->fd < 0)
        return 0;
    memset(&st, 0, sizeof st);
    if (getsockopt(r->fd, SOL_PACKET, PACKET_STATISTICS, &st, &len) < 0)
        return fail(r, errno, "getsockopt(PACKET_STATISTICS) on %s: %s", r->ifname,
                    strerror(errno));
    r->k.packets += st.tp_packets;
    r->k.drops += st.tp_drops;
    r->k.freeze_q_cnt += st.tp_freeze_q_cnt;
    return 0;
}

void beat_ring_close(beat_ring *r)
{
    if (r->map) {
        munmap(r->map, r->map_len);
        r->map = NULL;
        r->map_len = 0;
    }
    if (r->fd >= 0) {
        close(r->fd);
        r->fd = -1;
    }
}
