/* The per-packet pipeline of docs/fastpath.md: parse a chunk of frames, hash their digests several
 * at a time, then join, release, count, aggregate receipts and build segments, frame by frame.
 * Everything lives in preallocated tables; only the output buffers and the receipt/counter tables
 * grow (amortised, never per packet in the steady state). */
#include <pthread.h>
#include <sys/mman.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "beat_bytes.h"
#include "beat_hash.h"
#include "beat_parse.h"
#include "beat_pipe.h"

#define NIL 0xFFFFFFFFu
#define CHUNK 64
#define FT_CACHE_BITS 14
/* The FIFO and the join index start small and double with what is really pending (up to
 * max_pending): a sparse table of max_pending entries would cost a cache miss per packet. */
#define FIFO_MIN 1024u
#define PDT_MIN 2048u
#define RC_KEY 41 /* epoch_ns(8) role(1) src(16) dst(16) */

/* A FIFO entry: what a release reads. The digest input of an indexed entry, for the join index's
 * equality check, is beside it in fin[] (same position), read only when two keys are equal. */
#define IN_MAX 64
typedef uint8_t fin_t[IN_MAX];
typedef struct {
    uint64_t t_ns, prev, next;
    uint64_t key;      /* index key of the digest input, while indexed */
    uint64_t fh;       /* the flow's table hash (src || dst): receipts are found by it */
    uint8_t pd[16], ft[8], src[16], dst[16];
    uint32_t ip_len;
    uint32_t pnext;    /* next entry with the same digest input, while indexed */
    uint8_t done, indexed, in_len; /* in_len: of the digest input in fin[], while indexed */
} entry;

/* The join index: digest input -> queue of unjoined ingress entries, in FIFO order. It is keyed
 * by the digest *input* (family || input, SPEC "Packet digest"), not by PD: equal inputs have
 * equal PDs, and an egress frame that joins then needs no hash of its own. A slot is 16 bytes (four
 * to a cache line, the whole index of 2^16 pending entries in 2 MiB): the input itself is checked
 * against the queue's first entry, only when the 64-bit keys are equal. first == NIL: free. */
typedef struct {
    uint64_t key;
    uint32_t first, last;
} pd_slot;

typedef struct {
    uint8_t key[32];   /* src || dst */
    uint8_t ft[8];
    uint8_t used;
    uint8_t pad[23];   /* one slot, one cache line (the table is 64-byte aligned) */
} ft_slot;

typedef struct {
    uint64_t key, id;  /* key = mac_key | 1 << 63 when used */
    uint64_t slots;    /* bit s: the neighbour is at the interface of slot s (bit 0 always set) */
} nb_slot;

typedef struct {
    uint64_t prev, next, packets, bytes, first, last;
    uint8_t used;
} ctr_slot;

/* An open receipt; `used` is RC_OWN for a flow's own receipt, RC_OVERFLOW for the epoch's
 * overflow receipt of its role (src = dst = 16 zero bytes). */
enum { RC_FREE, RC_OWN, RC_OVERFLOW };
typedef struct {
    uint8_t key[RC_KEY];
    uint8_t used;
    uint64_t packets, bytes;
} rc_slot;

/* Per open epoch: how many flows of each role hold a receipt of their own (at most rc_max). */
typedef struct {
    uint64_t epoch;
    uint32_t own[2];
    uint8_t used;
} rcn_slot;

#define UNK_SLOTS (2 * BEAT_UNKNOWN_MAC_MAX)   /* at most half full: a probe always ends */

struct beat_pipe {
    uint64_t node_id, window, epoch, period, seed;
    int alg;
    uint32_t seg_records, max_pending, fifo_mask;
    uint64_t own[BEAT_MAX_OWN];
    beat_macset ownset;
    nb_slot *nb;
    uint32_t nb_mask;
    beat_wrong_if wrong[BEAT_WRONG_IF_MAX];   /* since the last take_wrong_interface */
    uint32_t n_wrong;
    beat_unknown_mac unk[BEAT_UNKNOWN_MAC_MAX];   /* since the last take_unknown_macs */
    uint8_t unk_idx[UNK_SLOTS];    /* 1 + index into unk, 0 free: found by a hash of the key */
    uint32_t n_unk;
    uint64_t unk_unlisted;         /* frames of (MAC, slot, dir) beyond BEAT_UNKNOWN_MAC_MAX */
    /* The last (MAC, slot, dir) looked up (mac_key | slot << 48 | dir << 56 | 1 << 63; 0: none)
     * and what it was: frames come in runs of one host's or neighbour's MAC, and a repeat skips
     * the neighbour lookup and the unknown-MAC list's probe. Forgotten when the neighbours change
     * and when the unknown-MAC list is taken. */
    uint64_t memo_key, memo_id;
    int memo_found;                /* NB_FOUND or NB_UNKNOWN (NB_ELSEWHERE is never kept) */
    int memo_unk;                  /* NB_UNKNOWN: its index in unk, -1 when it is unlisted */
    entry *fifo;
    fin_t *fin;        /* the digest inputs (family || input) of the FIFO's entries */
    uint64_t head, tail;
    pd_slot *pdt;
    uint32_t pdt_mask, pdt_n;
    ft_slot *ftc;
    uint64_t clock;
    ctr_slot *ctr;
    uint32_t ctr_mask, ctr_n;
    rc_slot *rc;
    uint32_t rc_mask, rc_n;
    rcn_slot *rcn;
    uint32_t rcn_mask, rcn_n, rc_max;
    /* The open receipts' slots in key order, as beat_pipe_open_receipts last sorted them: kept
     * while no slot is added and the table is not rebuilt (only counts change between most
     * batches), so each batch does not sort every flow of the epoch again. */
    uint32_t *rc_order;
    uint32_t rc_order_n, rc_order_cap;
    int rc_order_ok;
    uint64_t closed_before;
    uint64_t seg_seq, seg_first_t;
    uint64_t seg_period;           /* start of the anchor period of seg_first_t */
    uint64_t ep_rel, ep_close;     /* epoch starts last computed (releases, closing): a division
                                    * only when the time leaves that epoch */
    uint32_t seg_count;
    beat_buf out_records, out_segments, out_receipts;
    /* out_segments: the closed segments of this batch (len bytes), then the open segment in place,
     * its 48-byte header left free and its records after it (open_at()): records are released
     * straight to where their segment is handed out, and closing one is writing its header. The
     * buffer always has room for a full open segment (seg_room()). */
    beat_buf seg_pending;          /* offsets (size_t) into out_segments of segments whose S is due */
    /* stats: this batch's counts (handed out and zeroed by take); the totals are totals_base (the
     * batches taken) + stats, added up when asked: one increment a count, not two */
    uint64_t stats[ST_COUNT], totals_base[ST_COUNT], totals[ST_COUNT];
    uint32_t ctr_memo;             /* the counter slot ctr_add found last (checked before use) */
    int oom;
    int records_out;               /* 0: released records go to segments only (nothing reads them) */
    pthread_mutex_t lock;  /* capture workers feed, the committer takes */
};

void beat_pipe_lock(beat_pipe *p) { pthread_mutex_lock(&p->lock); }
void beat_pipe_unlock(beat_pipe *p) { pthread_mutex_unlock(&p->lock); }

static const uint8_t FT_TAG[10] = {'B', 'E', 'A', 'T', '-', 'F', 'T', '-', 'v', '1'};
static const uint8_t FP_TAG[10] = {'B', 'E', 'A', 'T', '-', 'F', 'P', '-', 'v', '1'};
static const uint8_t SG_TAG[10] = {'B', 'E', 'A', 'T', '-', 'S', 'G', '-', 'v', '1'};
static const uint8_t RC_TAG[10] = {'B', 'E', 'A', 'T', '-', 'R', 'C', '-', 'v', '1'};

/* ---- small helpers ---------------------------------------------------------------------- */

/* Room for len more bytes (doubling). */
static int buf_grow(beat_buf *b, size_t len)
{
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + len)
        cap *= 2;
    uint8_t *d = realloc(b->d, cap);
    if (!d)
        return -1;
    b->d = d;
    b->cap = cap;
    return 0;
}

/* A table that grew large (the join index, the FIFO and its digest inputs, the FT cache): 2 MiB
 * aligned and backed by huge pages where the kernel allows it (MADV_HUGEPAGE; a hint, without
 * effect elsewhere). Their entries are reached at random, and with 4 KiB pages most lookups missed
 * the TLB as well as the cache. free() releases it. */
#define HUGE_PAGE (2u << 20)
static void *table_alloc(size_t size)
{
    if (size < (HUGE_PAGE >> 1))
        return malloc(size);
    size_t len = (size + HUGE_PAGE - 1) & ~(size_t)(HUGE_PAGE - 1);
    void *t = NULL;
    if (posix_memalign(&t, HUGE_PAGE, len))
        return NULL;
#ifdef MADV_HUGEPAGE
    madvise(t, len, MADV_HUGEPAGE);
#endif
    return t;
}

static int buf_put(beat_buf *b, const void *data, size_t len)
{
    if (b->len + len > b->cap && buf_grow(b, len))
        return -1;
    memcpy(b->d + b->len, data, len);
    b->len += len;
    return 0;
}

static inline void count(beat_pipe *p, int st)
{
    p->stats[st]++;
}

static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* Table index of a key (digest inputs, addresses, receipt keys): a multiply and a fold per 8-byte
 * word, so bits that vary only at the top of a word (IPv4-mapped addresses) still reach the low
 * index bits. Seeded per pipeline at random, so traffic cannot be crafted offline to pile onto one
 * probe run; no output depends on table order. Not cryptographic; tables stay at most half full. */
static uint64_t bytes_hash(uint64_t seed, const uint8_t *k, size_t n)
{
    uint64_t h = seed ^ n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        h = (h ^ rd64le(k + i)) * 0xBF58476D1CE4E5B9ULL;
        h ^= h >> 31;
    }
    uint64_t t = 0;
    for (; i < n; i++)
        t = (t << 8) | k[i];
    return mix64(h ^ t);
}

static uint32_t pow2_at_least(uint64_t n)
{
    uint32_t c = 16;
    while (c < n)
        c <<= 1;
    return c;
}

/* ---- neighbours ------------------------------------------------------------------------- */

enum { NB_UNKNOWN, NB_FOUND, NB_ELSEWHERE };

/* The neighbour of `mac` seen on the interface of `slot`: NB_FOUND (its id in *id), NB_UNKNOWN (no
 * neighbour has this MAC) or NB_ELSEWHERE (a neighbour's MAC on an interface where that neighbour
 * is not: not from it; its id in *id for the log). Slot 0 (interface unknown) matches anywhere. */
static int nb_lookup(const beat_pipe *p, const uint8_t *mac, uint8_t slot, uint64_t *id)
{
    uint64_t key = mac_key(mac) | (1ULL << 63);
    for (uint32_t i = (uint32_t)mix64(key) & p->nb_mask;; i = (i + 1) & p->nb_mask) {
        if (p->nb[i].key == key) {
            *id = p->nb[i].id;
            return (p->nb[i].slots >> slot) & 1 ? NB_FOUND : NB_ELSEWHERE;
        }
        if (p->nb[i].key == 0)
            return NB_UNKNOWN;
    }
}

/* Kept for the daemon's log: the first BEAT_WRONG_IF_MAX distinct (MAC, slot, dir) since the last
 * take_wrong_interface, with their frame counts. Runs only for such frames. */
static void note_wrong_interface(beat_pipe *p, const uint8_t *mac, uint8_t slot, uint8_t dir,
                                 uint64_t id)
{
    for (uint32_t i = 0; i < p->n_wrong; i++) {
        beat_wrong_if *w = &p->wrong[i];
        if (w->slot == slot && w->dir == dir && memcmp(w->mac, mac, 6) == 0) {
            w->frames++;
            return;
        }
    }
    if (p->n_wrong == BEAT_WRONG_IF_MAX)
        return;
    beat_wrong_if *w = &p->wrong[p->n_wrong++];
    memcpy(w->mac, mac, 6);
    w->slot = slot;
    w->dir = dir;
    w->node_id = id;
    w->frames = 1;
}

size_t beat_pipe_take_wrong_interface(beat_pipe *p, beat_wrong_if *out, size_t max)
{
    size_t n = p->n_wrong < max ? p->n_wrong : max;
    memcpy(out, p->wrong, n * sizeof *out);
    p->n_wrong = 0;
    return n;
}

/* Kept for the daemon's log and status: the first BEAT_UNKNOWN_MAC_MAX distinct (MAC, slot, dir)
 * with a MAC that is no neighbour's since the last take_unknown_macs, with their frame counts.
 * Runs only for such frames: a seeded hash and a short probe in a fixed table, no allocation. */
/* Returns the entry's index in unk, -1 when the list is full (counted in unk_unlisted). */
static int note_unknown_mac(beat_pipe *p, const uint8_t *mac, uint8_t slot, uint8_t dir)
{
    uint64_t key = mac_key(mac) | (uint64_t)slot << 48 | (uint64_t)dir << 56;
    for (uint32_t i = (uint32_t)mix64(key ^ p->seed) & (UNK_SLOTS - 1);;
         i = (i + 1) & (UNK_SLOTS - 1)) {
        uint8_t k = p->unk_idx[i];
        if (k == 0) {
            if (p->n_unk == BEAT_UNKNOWN_MAC_MAX) {
                p->unk_unlisted++;
                return -1;
            }
            beat_unknown_mac *u = &p->unk[p->n_unk++];
            memcpy(u->mac, mac, 6);
            u->slot = slot;
            u->dir = dir;
            u->frames = 1;
            p->unk_idx[i] = (uint8_t)p->n_unk;
            return (int)p->n_unk - 1;
        }
        beat_unknown_mac *u = &p->unk[k - 1];
        if (u->slot == slot && u->dir == dir && memcmp(u->mac, mac, 6) == 0) {
            u->frames++;
            return k - 1;
        }
    }
}

size_t beat_pipe_take_unknown_macs(beat_pipe *p, beat_unknown_mac *out, size_t max,
                                   uint64_t *unlisted)
{
    size_t n = p->n_unk < max ? p->n_unk : max;
    memcpy(out, p->unk, n * sizeof *out);
    *unlisted = p->unk_unlisted;
    p->n_unk = 0;
    p->unk_unlisted = 0;
    memset(p->unk_idx, 0, sizeof p->unk_idx);
    p->memo_key = 0;
    return n;
}

int beat_pipe_set_neighbours(beat_pipe *p, const uint8_t *macs, const uint64_t *ids,
                             const uint64_t *slots, int n)
{
    uint32_t cap = pow2_at_least((uint64_t)n * 2 + 1);
    nb_slot *nb = calloc(cap, sizeof(nb_slot));
    if (!nb)
        return -1;
    for (int j = 0; j < n; j++) {
        uint64_t key = mac_key(macs + 6 * j) | (1ULL << 63);
        uint32_t i = (uint32_t)mix64(key) & (cap - 1);
        while (nb[i].key != 0 && nb[i].key != key)
            i = (i + 1) & (cap - 1);
        nb[i].key = key;
        nb[i].id = ids[j];
        nb[i].slots = slots[j] | 1u;   /* an unknown interface (replay) matches as before */
    }
    free(p->nb);
    p->nb = nb;
    p->nb_mask = cap - 1;
    p->memo_key = 0;
    return 0;
}

void beat_pipe_set_records_out(beat_pipe *p, int on) { p->records_out = on != 0; }

int beat_pipe_set_own(beat_pipe *p, const uint8_t *macs, int n)
{
    if (n > BEAT_MAX_OWN)
        return -1;
    for (int i = 0; i < n; i++)
        p->own[i] = mac_key(macs + 6 * i);
    p->ownset.n_own = n;
    return 0;
}

/* ---- join index: linear probing with backward-shift deletion ----------------------------- */

static inline int pd_used(const pd_slot *q) { return q->first != NIL; }

static inline int pd_same(const beat_pipe *p, const pd_slot *q, uint64_t key, const uint8_t *in,
                          uint32_t len)
{
    if (q->key != key)
        return 0;
    return p->fifo[q->first].in_len == len && memcmp(p->fin[q->first], in, len) == 0;
}

static uint32_t pd_find(const beat_pipe *p, uint64_t key, const uint8_t *in, uint32_t len)
{
    for (uint32_t i = (uint32_t)key & p->pdt_mask;; i = (i + 1) & p->pdt_mask) {
        const pd_slot *q = &p->pdt[i];
        if (!pd_used(q))
            return NIL;
        if (pd_same(p, q, key, in, len))
            return i;
    }
}

/* The slot of this input's queue, or a free slot for it (*fresh = 1, key set, queue empty). */
static uint32_t pd_insert(beat_pipe *p, uint64_t key, const uint8_t *in, uint32_t len, int *fresh)
{
    for (uint32_t i = (uint32_t)key & p->pdt_mask;; i = (i + 1) & p->pdt_mask) {
        pd_slot *q = &p->pdt[i];
        if (!pd_used(q)) {
            q->key = key;
            p->pdt_n++;
            *fresh = 1;
            return i;
        }
        if (pd_same(p, q, key, in, len)) {
            *fresh = 0;
            return i;
        }
    }
}

static void pd_delete(beat_pipe *p, uint32_t i)
{
    uint32_t m = p->pdt_mask;
    for (uint32_t j = (i + 1) & m; pd_used(&p->pdt[j]); j = (j + 1) & m) {
        uint32_t home = (uint32_t)p->pdt[j].key & m;
        /* move j back into the hole i when its home is not in (i, j] cyclically */
        if (((j - home) & m) >= ((j - i) & m)) {
            p->pdt[i] = p->pdt[j];
            i = j;
        }
    }
    p->pdt[i].first = p->pdt[i].last = NIL;
    p->pdt_n--;
}

static pd_slot *pdt_alloc(uint32_t cap)
{
    pd_slot *t = table_alloc(sizeof(pd_slot) * cap);
    if (t)
        memset(t, 0xFF, sizeof(pd_slot) * cap);   /* first = NIL: free */
    return t;
}

static int pdt_grow(beat_pipe *p)
{
    uint32_t cap = (p->pdt_mask + 1) * 2;
    pd_slot *t = pdt_alloc(cap);
    if (!t)
        return -1;
    for (uint32_t j = 0; j <= p->pdt_mask; j++) {
        if (!pd_used(&p->pdt[j]))
            continue;
        uint32_t i = (uint32_t)p->pdt[j].key & (cap - 1);
        while (pd_used(&t[i]))
            i = (i + 1) & (cap - 1);
        t[i] = p->pdt[j];
    }
    free(p->pdt);
    p->pdt = t;
    p->pdt_mask = cap - 1;
    return 0;
}

/* Double the FIFO ring: entries move to seq & (new mask), and every index that links them (the
 * queues' pnext, the index slots' first/last) is remapped. */
static int fifo_grow(beat_pipe *p)
{
    uint32_t oc = p->fifo_mask + 1, nc = oc * 2;
    entry *f = table_alloc(sizeof(entry) * nc);
    fin_t *fi = table_alloc(sizeof(fin_t) * nc);
    if (!f || !fi) {
        free(f);
        free(fi);
        return -1;
    }
    for (uint64_t q = p->head; q != p->tail; q++) {
        f[q & (nc - 1)] = p->fifo[q & (oc - 1)];
        memcpy(fi[q & (nc - 1)], p->fin[q & (oc - 1)], sizeof(fin_t));
    }
    uint32_t h = (uint32_t)(p->head & (oc - 1));
#define REMAP(i) ((i) == NIL ? NIL : (uint32_t)((p->head + (((i) - h) & (oc - 1))) & (nc - 1)))
    for (uint64_t q = p->head; q != p->tail; q++) {
        entry *e = &f[q & (nc - 1)];
        if (e->indexed)
            e->pnext = REMAP(e->pnext);
    }
    for (uint32_t j = 0; j <= p->pdt_mask; j++) {
        if (pd_used(&p->pdt[j])) {
            p->pdt[j].first = REMAP(p->pdt[j].first);
            p->pdt[j].last = REMAP(p->pdt[j].last);
        }
    }
#undef REMAP
    free(p->fifo);
    free(p->fin);
    p->fifo = f;
    p->fin = fi;
    p->fifo_mask = nc - 1;
    return 0;
}

/* Remove entry `idx` from its queue. Released entries are the first of theirs (every earlier
 * entry with the same input was released or joined before), so this is one probe. */
static void pd_unlink(beat_pipe *p, uint32_t idx)
{
    entry *e = &p->fifo[idx];
    e->indexed = 0;
    for (uint32_t s = (uint32_t)e->key & p->pdt_mask; pd_used(&p->pdt[s]); s = (s + 1) & p->pdt_mask) {
        pd_slot *q = &p->pdt[s];
        if (q->key != e->key)
            continue;
        uint32_t prev = NIL;
        for (uint32_t i = q->first; i != NIL; prev = i, i = p->fifo[i].pnext) {
            if (i != idx)
                continue;
            if (prev == NIL)
                q->first = e->pnext;
            else
                p->fifo[prev].pnext = e->pnext;
            if (q->last == idx)
                q->last = prev;
            if (q->first == NIL)
                pd_delete(p, s);
            return;
        }
    }
}

/* ---- counters and receipts -------------------------------------------------------------- */

static int ctr_grow(beat_pipe *p)
{
    uint32_t cap = (p->ctr_mask + 1) * 2;
    ctr_slot *t = calloc(cap, sizeof(ctr_slot));
    if (!t)
        return -1;
    for (uint32_t j = 0; j <= p->ctr_mask; j++) {
        if (!p->ctr[j].used)
            continue;
        uint32_t i = (uint32_t)mix64(p->ctr[j].prev * 31 + p->ctr[j].next) & (cap - 1);
        while (t[i].used)
            i = (i + 1) & (cap - 1);
        t[i] = p->ctr[j];
    }
    free(p->ctr);
    p->ctr = t;
    p->ctr_mask = cap - 1;
    return 0;
}

static inline void ctr_count(ctr_slot *c, uint32_t len, uint64_t t)
{
    c->packets++;
    c->bytes += len;
    if (t < c->first)
        c->first = t;
    if (t > c->last)
        c->last = t;
}

static int ctr_add(beat_pipe *p, uint64_t prev, uint64_t next, uint32_t len, uint64_t t)
{
    /* the slot of the release before: most releases in a row count the same (prev, next) */
    ctr_slot *m = &p->ctr[p->ctr_memo & p->ctr_mask];
    if (m->used && m->prev == prev && m->next == next) {
        ctr_count(m, len, t);
        return 0;
    }
    uint32_t i = (uint32_t)mix64(prev * 31 + next) & p->ctr_mask;
    for (;; i = (i + 1) & p->ctr_mask) {
        ctr_slot *c = &p->ctr[i];
        if (c->used && c->prev == prev && c->next == next) {
            p->ctr_memo = i;
            ctr_count(c, len, t);
            return 0;
        }
        if (!c->used) {
            p->ctr_memo = i;
            c->used = 1;
            c->prev = prev;
            c->next = next;
            c->packets = 1;
            c->bytes = len;
            c->first = c->last = t;
            if (++p->ctr_n * 2 > p->ctr_mask + 1)
                return ctr_grow(p);
            return 0;
        }
    }
}

/* Table index of a receipt key: the flow's hash (src || dst, seeded, the one the FT cache uses)
 * mixed with the epoch and role, so that a release finds its receipt from the entry's `fh` without
 * hashing 41 bytes (and can fetch the slot ahead). */
static inline uint64_t rc_hash_flow(uint64_t fh, uint64_t epoch, uint8_t role)
{
    return mix64(fh ^ (epoch * 0x9E3779B97F4A7C15ULL) ^ ((uint64_t)role << 56));
}

static inline uint64_t rc_hash_key(uint64_t seed, const uint8_t *key)
{
    return rc_hash_flow(bytes_hash(seed, key + 9, 32), rd64be(key), key[8]);
}

static int rc_insert_into(uint64_t seed, rc_slot *t, uint32_t mask, const uint8_t *key,
                          uint64_t packets, uint64_t bytes, uint8_t kind)
{
    uint32_t i = (uint32_t)rc_hash_key(seed, key) & mask;
    for (;; i = (i + 1) & mask) {
        if (t[i].used && memcmp(t[i].key, key, RC_KEY) == 0) {
            t[i].packets += packets;
            t[i].bytes += bytes;
            return 0;
        }
        if (!t[i].used) {
            memcpy(t[i].key, key, RC_KEY);
            t[i].used = kind;
            t[i].packets = packets;
            t[i].bytes = bytes;
            return 1;
        }
    }
}

static rc_slot *rc_find(const beat_pipe *p, const uint8_t *key, uint64_t h)
{
    uint32_t i = (uint32_t)h & p->rc_mask;
    for (;; i = (i + 1) & p->rc_mask) {
        rc_slot *s = &p->rc[i];
        if (!s->used)
            return NULL;
        if (memcmp(s->key, key, RC_KEY) == 0)
            return s;
    }
}

/* The per-epoch counts of receipts of their own: a small table keyed by epoch_ns (a few epochs are
 * open at a time), rebuilt without the closed epochs whenever receipts are finalised. */
static rcn_slot *rcn_lookup(rcn_slot *t, uint32_t mask, uint64_t epoch, int insert)
{
    for (uint32_t i = (uint32_t)mix64(epoch) & mask;; i = (i + 1) & mask) {
        if (t[i].used && t[i].epoch == epoch)
            return &t[i];
        if (!t[i].used) {
            if (!insert)
                return NULL;
            t[i].used = 1;
            t[i].epoch = epoch;
            t[i].own[0] = t[i].own[1] = 0;
            return &t[i];
        }
    }
}

static int rcn_rebuild(beat_pipe *p, uint32_t cap, uint64_t drop_before)
{
    rcn_slot *t = calloc(cap, sizeof(rcn_slot));
    if (!t)
        return -1;
    uint32_t n = 0;
    for (uint32_t j = 0; j <= p->rcn_mask; j++) {
        const rcn_slot *o = &p->rcn[j];
        if (o->used && o->epoch >= drop_before) {
            rcn_slot *c = rcn_lookup(t, cap - 1, o->epoch, 1);
            c->own[0] = o->own[0];
            c->own[1] = o->own[1];
            n++;
        }
    }
    free(p->rcn);
    p->rcn = t;
    p->rcn_mask = cap - 1;
    p->rcn_n = n;
    return 0;
}

static rcn_slot *rcn_get(beat_pipe *p, uint64_t epoch)
{
    rcn_slot *c = rcn_lookup(p->rcn, p->rcn_mask, epoch, 0);
    if (c)
        return c;
    if ((p->rcn_n + 1) * 2 > p->rcn_mask + 1 && rcn_rebuild(p, (p->rcn_mask + 1) * 2, 0))
        return NULL;
    p->rcn_n++;
    return rcn_lookup(p->rcn, p->rcn_mask, epoch, 1);
}

static int rc_rebuild(beat_pipe *p, uint32_t cap, uint64_t drop_before)
{
    p->rc_order_ok = 0;
    rc_slot *t = calloc(cap, sizeof(rc_slot));
    if (!t)
        return -1;
    uint32_t n = 0;
    for (uint32_t j = 0; j <= p->rc_mask; j++) {
        const rc_slot *o = &p->rc[j];
        if (o->used && rd64be(o->key) >= drop_before)
            n += rc_insert_into(p->seed, t, cap - 1, o->key, o->packets, o->bytes, o->used);
    }
    free(p->rc);
    p->rc = t;
    p->rc_mask = cap - 1;
    p->rc_n = n;
    return 0;
}

static int is_zero32(const uint8_t *b)
{
    uint64_t x = 0;
    for (int i = 0; i < 32; i += 8)
        x |= rd64le(b + i);
    return x == 0;
}

/* Count a released packet in its flow's receipt of this epoch and role; a flow without one gets
 * one while the epoch has fewer than rc_max of that role, else the packet goes into the epoch's
 * overflow receipt of the role (src = dst = 16 zero bytes; docs/fastpath.md, "Releasing"). */
/* rc_find for the key (epoch, role, e->src, e->dst), compared in place: a key built on the stack
 * and read back in 8-byte words across its differently sized stores stalls store forwarding. */
static rc_slot *rc_find_flow(const beat_pipe *p, const entry *e, uint64_t epoch, uint8_t role)
{
    uint8_t eb[8];
    uint64_t ebe;
    wr64be(eb, epoch);
    memcpy(&ebe, eb, 8);   /* the key's first 8 bytes, as stored */
    uint32_t i = (uint32_t)rc_hash_flow(e->fh, epoch, role) & p->rc_mask;
    for (;; i = (i + 1) & p->rc_mask) {
        rc_slot *s = &p->rc[i];
        if (!s->used)
            return NULL;
        uint64_t k0;
        memcpy(&k0, s->key, 8);
        if (k0 == ebe && s->key[8] == role && memcmp(s->key + 9, e->src, 16) == 0 &&
            memcmp(s->key + 25, e->dst, 16) == 0)
            return s;
    }
}

static int rc_add(beat_pipe *p, uint8_t role, const entry *e, uint64_t epoch)
{
    rc_slot *s = rc_find_flow(p, e, epoch, role);
    if (s && s->used == RC_OWN) {
        s->packets++;
        s->bytes += e->ip_len;
        return 0;
    }
    uint8_t key[RC_KEY];
    wr64be(key, epoch);
    key[8] = role;
    memcpy(key + 9, e->src, 16);
    memcpy(key + 25, e->dst, 16);
    uint8_t kind = RC_OVERFLOW;
    if (!s && !is_zero32(key + 9)) {
        rcn_slot *c = rcn_get(p, epoch);
        if (!c)
            return -1;
        if (c->own[role - 1] < p->rc_max) {
            c->own[role - 1]++;
            kind = RC_OWN;
        } else {
            memset(key + 9, 0, 32);
            s = rc_find(p, key, rc_hash_key(p->seed, key));
        }
    }
    if (kind == RC_OVERFLOW)
        count(p, ST_RECEIPT_OVERFLOW);
    if (s) {
        s->packets++;
        s->bytes += e->ip_len;
        return 0;
    }
    p->rc_n += rc_insert_into(p->seed, p->rc, p->rc_mask, key, 1, e->ip_len, kind);
    p->rc_order_ok = 0;
    if (p->rc_n * 2 > p->rc_mask + 1)
        return rc_rebuild(p, (p->rc_mask + 1) * 2, 0);
    return 0;
}

static int cmp_receipt(const void *a, const void *b) { return memcmp(a, b, RC_KEY); }
static int cmp_counter(const void *a, const void *b) { return memcmp(a, b, 16); }

void beat_receipt_value(int alg, uint64_t node_id, uint8_t role, const uint8_t src[16],
                        const uint8_t dst[16], uint64_t epoch_ns, uint64_t packets, uint64_t bytes,
                        uint8_t out[32])
{
    uint8_t m[75];
    memcpy(m, RC_TAG, 10);
    wr64be(m + 10, node_id);
    m[18] = role;
    memcpy(m + 19, src, 16);
    memcpy(m + 35, dst, 16);
    wr64be(m + 51, epoch_ns);
    wr64be(m + 59, packets);
    wr64be(m + 67, bytes);
    beat_hash(alg, m, sizeof m, out);
}

/* Finalise every open receipt with epoch_ns < target, in key order. */
static int close_receipts(beat_pipe *p, uint64_t target)
{
    size_t start = p->out_receipts.len, n = 0;
    for (uint32_t j = 0; j <= p->rc_mask; j++) {
        rc_slot *s = &p->rc[j];
        if (!s->used || rd64be(s->key) >= target)
            continue;
        uint8_t r[BEAT_RECEIPT_SIZE];
        memcpy(r, s->key, RC_KEY);
        wr64be(r + 41, s->packets);
        wr64be(r + 49, s->bytes);
        beat_receipt_value(p->alg, p->node_id, s->key[8], s->key + 9, s->key + 25, rd64be(s->key),
                           s->packets, s->bytes, r + 57);
        if (buf_put(&p->out_receipts, r, sizeof r))
            return -1;
        n++;
    }
    if (n == 0)
        return 0;
    qsort(p->out_receipts.d + start, n, BEAT_RECEIPT_SIZE, cmp_receipt);
    p->stats[ST_RECEIPTS] += n;
    if (rcn_rebuild(p, p->rcn_mask + 1, target))
        return -1;
    return rc_rebuild(p, p->rc_mask + 1, target);
}

/* ---- segments --------------------------------------------------------------------------- */

void beat_segment_value(int alg, uint64_t node_id, uint64_t seg_seq, const uint8_t *records,
                        size_t n, uint8_t out[32])
{
    uint8_t h[34];
    beat_hash_ctx c;
    memcpy(h, SG_TAG, 10);
    wr64be(h + 10, node_id);
    wr64be(h + 18, seg_seq);
    wr64be(h + 26, n);
    beat_hash_init(&c, alg);
    beat_hash_update(&c, h, sizeof h);
    beat_hash_update(&c, records, n * BEAT_RECORD_SIZE);
    beat_hash_final(&c, out);
}

/* The open segment's records: after the closed segments and a 48-byte header left free. */
static inline uint8_t *open_at(const beat_pipe *p)
{
    return p->out_segments.d + p->out_segments.len + 48;
}

/* Room after the closed segments for a full open segment (header and records). */
static int seg_room(beat_pipe *p)
{
    size_t need = 48 + (size_t)p->seg_records * BEAT_RECORD_SIZE;
    if (p->out_segments.len + need <= p->out_segments.cap)
        return 0;
    return buf_grow(&p->out_segments, need);   /* realloc: the open records move with it */
}

/* Closing a segment writes its header before its records and queues it: S is computed in
 * finish_segments(), for all the segments of a call at once, so several sponges run side by side
 * in the SIMD lanes. */
static int seg_close(beat_pipe *p)
{
    if (p->seg_count == 0)
        return 0;
    size_t off = p->out_segments.len;
    uint8_t *h = p->out_segments.d + off;
    wr64be(h, p->seg_seq);
    wr64be(h + 8, p->seg_count);
    memset(h + 16, 0, 32);
    if (buf_put(&p->seg_pending, &off, sizeof off))
        return -1;
    p->out_segments.len += 48 + (size_t)p->seg_count * BEAT_RECORD_SIZE;
    p->seg_count = 0;   /* the next open segment is empty: growing moves nothing of it */
    if (seg_room(p))
        return -1;
    count(p, ST_SEGMENTS);
    p->seg_seq++;
    return 0;
}

#define SEG_LANES 8
#define SEG_HEAD 34 /* "BEAT-SG-v1" node_id seg_seq count */
#define SEG_MSG_AT (48 - SEG_HEAD) /* the message head written just before the records */

/* S of every queued segment, hashed straight from the segment buffer: a segment's 48-byte header
 * (seg_seq count S) is overwritten for the hash by the message head ("BEAT-SG-v1" node_id seg_seq
 * count, 34 bytes) right before its records, and written back after it. Runs of equal length go
 * through the lanes together. */
static int finish_segments(beat_pipe *p)
{
    size_t n = p->seg_pending.len / sizeof(size_t);
    const size_t *offs = (const size_t *)p->seg_pending.d;
    size_t i = 0;
    while (i < n) {
        uint64_t count = rd64be(p->out_segments.d + offs[i] + 8);
        size_t len = SEG_HEAD + count * BEAT_RECORD_SIZE;
        size_t w = 1;
        while (w < SEG_LANES && i + w < n &&
               rd64be(p->out_segments.d + offs[i + w] + 8) == count)
            w++;
        const uint8_t *msgs[SEG_LANES];
        uint8_t *outs[SEG_LANES];
        uint8_t s[SEG_LANES][32];
        uint64_t seq[SEG_LANES];
        for (size_t k = 0; k < w; k++) {
            uint8_t *sk = p->out_segments.d + offs[i + k];
            seq[k] = rd64be(sk);
            memcpy(sk + SEG_MSG_AT, SG_TAG, 10);
            wr64be(sk + SEG_MSG_AT + 10, p->node_id);
            wr64be(sk + SEG_MSG_AT + 18, seq[k]);
            wr64be(sk + SEG_MSG_AT + 26, count);
            msgs[k] = sk + SEG_MSG_AT;
            outs[k] = s[k];
        }
        beat_hash_many_equal(p->alg, msgs, len, w, outs);
        for (size_t k = 0; k < w; k++) {
            uint8_t *sk = p->out_segments.d + offs[i + k];
            wr64be(sk, seq[k]);
            wr64be(sk + 8, count);
            memcpy(sk + 16, s[k], 32);
        }
        i += w;
    }
    p->seg_pending.len = 0;
    return 0;
}

/* ---- release ---------------------------------------------------------------------------- */

/* t - t % epoch, with the division only when t is not in the epoch *last (which it updates):
 * times move slowly, and a 64-bit division per frame costs more than the rest of a release. */
static inline uint64_t epoch_start(uint64_t epoch, uint64_t *last, uint64_t t)
{
    if (t - *last < epoch)   /* t >= *last (else the difference wraps) and in that epoch */
        return *last;
    return *last = t - t % epoch;
}

static inline void seg_first(beat_pipe *p, uint64_t t)
{
    p->seg_first_t = t;
    p->seg_period = t - t % p->period;
}

/* The record of a released entry (SPEC "Proof record"), written straight where it goes in 8-byte
 * words: a record built on the stack and copied with vector loads stalls on store forwarding. */
static inline void put_record(uint8_t *d, const entry *e)
{
    uint64_t pd0, pd1, ft;
    memcpy(&pd0, e->pd, 8);
    memcpy(&pd1, e->pd + 8, 8);
    memcpy(&ft, e->ft, 8);
    wr64be(d, e->t_ns);
    wr64be(d + 8, e->prev);
    wr64be(d + 16, e->next);
    memcpy(d + 24, &pd0, 8);
    memcpy(d + 32, &pd1, 8);
    memcpy(d + 40, &ft, 8);
}

static int release(beat_pipe *p, entry *e)
{
    if (p->records_out) {
        beat_buf *out = &p->out_records;
        if (out->len + BEAT_RECORD_SIZE > out->cap && buf_grow(out, BEAT_RECORD_SIZE))
            return -1;
        put_record(out->d + out->len, e);
        out->len += BEAT_RECORD_SIZE;
    }
    count(p, ST_RECORDS);
    if (e->next == BEAT_NONE)
        count(p, ST_INGRESS_ONLY);
    if (e->prev == BEAT_NONE)
        count(p, ST_EGRESS_ONLY);
    if (ctr_add(p, e->prev, e->next, e->ip_len, e->t_ns))
        return -1;
    uint64_t epoch = epoch_start(p->epoch, &p->ep_rel, e->t_ns);
    for (uint8_t role = 1; role <= 2; role++) {
        if ((role == 1 ? e->prev : e->next) != 0)
            continue;
        if (epoch < p->closed_before)
            count(p, ST_RECEIPT_LATE);
        else if (rc_add(p, role, e, epoch))
            return -1;
    }
    if (p->seg_count > 0 && e->t_ns - p->seg_period >= p->period)   /* another anchor period */
        if (seg_close(p))
            return -1;
    if (p->seg_count == 0)
        seg_first(p, e->t_ns);
    put_record(open_at(p) + (size_t)p->seg_count * BEAT_RECORD_SIZE, e);
    if (++p->seg_count == p->seg_records)
        return seg_close(p);
    return 0;
}

/* Entries are released in FIFO order: fetch the index slot of the one RELEASE_AHEAD places
 * behind the head now, so that unlinking it later does not wait for memory. */
/* Six, not more: a frame's work between two releases touches enough memory that lines fetched
 * sixteen releases ahead were evicted again before use (ingress only: 6 is ~3% faster than 16;
 * joined traffic the same). */
#define RELEASE_AHEAD 6

static int release_head(beat_pipe *p)
{
    entry *e = &p->fifo[p->head & p->fifo_mask];
    if (p->tail - p->head > RELEASE_AHEAD) {
        const entry *a = &p->fifo[(p->head + RELEASE_AHEAD) & p->fifo_mask];
        if (a->indexed) {   /* its slot, and the next line: pd_delete reads the slot after it */
            __builtin_prefetch(&p->pdt[(uint32_t)a->key & p->pdt_mask]);
            __builtin_prefetch(&p->pdt[((uint32_t)a->key + 4) & p->pdt_mask]);
        }
        if (a->prev == 0 || a->next == 0) {
            uint64_t epoch = epoch_start(p->epoch, &p->ep_rel, a->t_ns);
            if (a->prev == 0)
                __builtin_prefetch(&p->rc[rc_hash_flow(a->fh, epoch, 1) & p->rc_mask]);
            if (a->next == 0)
                __builtin_prefetch(&p->rc[rc_hash_flow(a->fh, epoch, 2) & p->rc_mask]);
        }
    }
    if (e->indexed)
        pd_unlink(p, (uint32_t)(p->head & p->fifo_mask));
    p->head++;
    return release(p, e);
}

static int release_ready(beat_pipe *p)
{
    while (p->head != p->tail) {
        entry *e = &p->fifo[p->head & p->fifo_mask];
        if (!e->done && e->t_ns + p->window >= p->clock)
            break;
        if (release_head(p))
            return -1;
    }
    return 0;
}

/* ---- observations ----------------------------------------------------------------------- */

/* The flow's table hash (src || dst): the FT cache's index and the receipts' (entry.fh). */
static inline uint64_t flow_hash(const beat_pipe *p, const beat_obs *o)
{
    uint8_t key[32];
    memcpy(key, o->src, 16);
    memcpy(key + 16, o->dst, 16);
    return bytes_hash(p->seed, key, 32);
}

/* FT of the observation (flow hash fh) into ft. */
static void flow_tag(beat_pipe *p, const beat_obs *o, uint64_t fh, uint8_t ft[8])
{
    uint8_t key[32];
    memcpy(key, o->src, 16);
    memcpy(key + 16, o->dst, 16);
    /* two ways (slots i and i ^ 1, 128 aligned bytes): two flows of one set do not evict each
     * other on every packet, as they would direct-mapped; a miss replaces the way fh chooses */
    ft_slot *set = &p->ftc[fh & ((1u << FT_CACHE_BITS) - 2)];
    ft_slot *s = set;
    if (!(s->used && memcmp(s->key, key, 32) == 0)) {
        s = set + 1;
        if (!(s->used && memcmp(s->key, key, 32) == 0))
            s = NULL;
    }
    if (!s) {
        uint8_t m[42], h[32];
        s = !set[0].used ? set : !set[1].used ? set + 1 : set + ((fh >> 40) & 1);
        memcpy(m, FT_TAG, 10);
        memcpy(m + 10, key, 32);
        beat_hash(p->alg, m, sizeof m, h);
        memcpy(s->key, key, 32);
        memcpy(s->ft, h, 8);
        s->used = 1;
    }
    memcpy(ft, s->ft, 8);
}

static entry *append(beat_pipe *p)
{
    if (p->tail - p->head >= p->max_pending) {
        count(p, ST_JOIN_OVERFLOW);
        if (release_head(p))
            return NULL;
    } else if (p->tail - p->head == (uint64_t)p->fifo_mask + 1 && fifo_grow(p)) {
        return NULL;
    }
    return &p->fifo[p->tail++ & p->fifo_mask];
}

static int observe(beat_pipe *p, beat_obs *o, uint64_t t, uint8_t slot, uint64_t fh)
{
    uint64_t id = 0;
    if (o->mac_state == BEAT_MAC_PRESENT) {
        uint64_t mk = mac_key(o->mac) | (uint64_t)slot << 48 | (uint64_t)o->dir << 56 | 1ULL << 63;
        if (mk == p->memo_key) {   /* the same MAC, interface and direction as the frame before */
            id = p->memo_id;
            if (p->memo_found == NB_UNKNOWN) {
                count(p, ST_UNKNOWN_MAC);
                if (p->memo_unk >= 0)
                    p->unk[p->memo_unk].frames++;
                else
                    p->unk_unlisted++;
            }
            goto named;
        }
        int found = nb_lookup(p, o->mac, slot, &id);
        if (found == NB_UNKNOWN) {
            count(p, ST_UNKNOWN_MAC);
            p->memo_unk = note_unknown_mac(p, o->mac, slot, o->dir);
            p->memo_key = mk;
            p->memo_found = NB_UNKNOWN;
            p->memo_id = id = 0;
        } else if (found == NB_FOUND) {
            p->memo_key = mk;
            p->memo_found = NB_FOUND;
            p->memo_id = id;
        } else {   /* NB_ELSEWHERE: from (or to) somewhere we cannot name */
            count(p, ST_NEIGHBOUR_WRONG_INTERFACE);
            note_wrong_interface(p, o->mac, slot, o->dir, id);
            id = 0;
        }
    } else if (o->mac_state == BEAT_MAC_MISSING) {
        count(p, ST_UNKNOWN_MAC);
    }
named:;
    const uint8_t *in = o->msg + 10;
    uint32_t in_len = o->msg_len - 10u;
    if (o->dir == BEAT_DIR_EGRESS) {
        count(p, ST_EGRESS);
        uint32_t s = pd_find(p, o->key, in, in_len);
        if (s != NIL) {
            pd_slot *q = &p->pdt[s];
            uint32_t prev = NIL;
            for (uint32_t i = q->first; i != NIL; prev = i, i = p->fifo[i].pnext) {
                entry *e = &p->fifo[i];
                if (e->t_ns + p->window < t)
                    continue;
                if (prev == NIL)
                    q->first = e->pnext;
                else
                    p->fifo[prev].pnext = e->pnext;
                if (q->last == i)
                    q->last = prev;
                if (q->first == NIL)
                    pd_delete(p, s);
                e->indexed = 0;
                e->done = 1;
                e->next = id;
                count(p, ST_JOINED);
                return 0;
            }
        }
        if (!o->hashed) { /* predicted to join, and did not: hash it now */
            beat_hash(p->alg, o->msg, o->msg_len, o->digest);
            o->hashed = 1;
            fh = flow_hash(p, o);
        }
        entry *e = append(p);
        if (!e)
            return -1;
        e->t_ns = t;
        e->prev = BEAT_NONE;
        e->next = id;
        e->done = 1;
        e->indexed = 0;
        memcpy(e->pd, o->digest, 16);
        flow_tag(p, o, e->fh = fh, e->ft);
        memcpy(e->src, o->src, 16);
        memcpy(e->dst, o->dst, 16);
        e->ip_len = o->ip_len;
        return 0;
    }
    count(p, ST_INGRESS);
    entry *e = append(p);
    if (!e)
        return -1;
    uint32_t idx = (uint32_t)((p->tail - 1) & p->fifo_mask);
    e->t_ns = t;
    e->prev = id;
    e->next = BEAT_NONE;
    e->done = 0;
    e->indexed = 1;
    e->pnext = NIL;
    e->key = o->key;
    e->in_len = (uint8_t)in_len;
    memcpy(p->fin[idx], in, IN_MAX);   /* fixed size (in is o->msg + 10): bytes past in_len unused */
    memcpy(e->pd, o->digest, 16);
    flow_tag(p, o, e->fh = fh, e->ft);
    memcpy(e->src, o->src, 16);
    memcpy(e->dst, o->dst, 16);
    e->ip_len = o->ip_len;
    int fresh;
    /* at most a quarter full: a probe's first slot is free 3 times in 4 (at a half, the branch on
     * it mispredicted often and clusters grew: ingress only, 50 ms pending, ~15 ns a frame) */
    if (((uint64_t)p->pdt_n + 1) * 4 > (uint64_t)p->pdt_mask + 1 && pdt_grow(p))
        return -1;
    uint32_t s = pd_insert(p, o->key, in, in_len, &fresh);
    if (fresh)
        p->pdt[s].first = idx;
    else
        p->fifo[p->pdt[s].last].pnext = idx;
    p->pdt[s].last = idx;
    return 0;
}

static int close_epochs(beat_pipe *p)
{
    uint64_t target = p->clock > p->window ? p->clock - p->window : 0;
    target = epoch_start(p->epoch, &p->ep_close, target);
    if (target > p->closed_before) {
        if (close_receipts(p, target))
            return -1;
        p->closed_before = target;
    }
    return 0;
}

/* Will this egress frame join a pending ingress observation (in the index, or earlier in this
 * chunk)? Only a guess that saves its hash: a wrong guess costs one scalar hash later. */
static int predict_join(const beat_pipe *p, const beat_obs *obs, size_t i)
{
    const beat_obs *o = &obs[i];
    uint32_t len = o->msg_len - 10u;
    if (pd_find(p, o->key, o->msg + 10, len) != NIL)
        return 1;
    while (i-- > 0) {
        const beat_obs *q = &obs[i];
        if (q->key == o->key && !q->reason && q->dir != BEAT_DIR_EGRESS && q->msg_len == o->msg_len &&
            memcmp(q->msg + 10, o->msg + 10, len) == 0)
            return 1;
    }
    return 0;
}

/* One chunk: parse all, hash together the digests that may be needed, then run the per-frame
 * state machine in order. */
static int run_chunk(beat_pipe *p, const beat_frame *fr, size_t n)
{
    beat_obs obs[CHUNK];
    uint64_t fh[CHUNK];
    uint8_t hmsg[CHUNK][BEAT_PADDED_MSG] __attribute__((aligned(32))), hout[CHUNK][32];
    uint16_t hlen[CHUNK];
    uint8_t hidx[CHUNK];
    size_t nh = 0;
    for (size_t i = 0; i < n && i < 8; i++)
        __builtin_prefetch(fr[i].data);
    for (size_t i = 0; i < n; i++) {
        beat_obs *o = &obs[i];
        if (i + 8 < n)  /* frames are scattered over a large buffer (or ring): fetch ahead */
            __builtin_prefetch(fr[i + 8].data);
        int r = beat_parse(fr[i].data, fr[i].caplen, fr[i].linktype, fr[i].dir, fr[i].vlan_stripped,
                           &p->ownset, o);
        o->reason = (uint8_t)r;
        o->hashed = 0;
    }
    /* A second pass: the digest inputs are written by the parser in pieces of 1 to 8 bytes, and
     * reading them back at once as 8-byte words (the key) or vectors (the hash's copy) stalls on
     * store forwarding; a chunk later, those stores have reached the cache. */
    for (size_t i = 0; i < n; i++) {
        beat_obs *o = &obs[i];
        if (o->reason)
            continue;
        o->key = bytes_hash(p->seed, o->msg + 10, o->msg_len - 10u);
        __builtin_prefetch(&p->pdt[(uint32_t)o->key & p->pdt_mask]);   /* for observe() */
        if (o->dir == BEAT_DIR_EGRESS && predict_join(p, obs, i))
            continue;
        fh[i] = flow_hash(p, o);                                        /* it will need its FT */
        __builtin_prefetch(&p->ftc[fh[i] & ((1u << FT_CACHE_BITS) - 2)]);
        __builtin_prefetch(&p->ftc[(fh[i] & ((1u << FT_CACHE_BITS) - 2)) + 1]);
        beat_padded_put(hmsg[nh], o->msg, o->msg_len, BEAT_PD_MSG_MAX);
        hlen[nh] = o->msg_len;
        hidx[nh++] = (uint8_t)i;
        o->hashed = 1;
    }
    beat_hash_many_padded(p->alg, hmsg[0], BEAT_PADDED_MSG, hlen, nh, hout[0], 32);
    for (size_t k = 0; k < nh; k++)
        memcpy(obs[hidx[k]].digest, hout[k], 16);
    for (size_t i = 0; i < n; i++) {
        uint64_t t = fr[i].t_ns;
        if (t > p->clock)
            p->clock = t;
        count(p, ST_FRAMES);
        if (obs[i].reason) {
            count(p, obs[i].reason);
        } else {
            count(p, ST_IP);
            if (release_ready(p) || observe(p, &obs[i], t, fr[i].slot, fh[i]))
                return -1;
        }
        if (release_ready(p) || close_epochs(p))
            return -1;
    }
    return 0;
}

int beat_pipe_feed_frames(beat_pipe *p, const beat_frame *frames, size_t n)
{
    for (size_t i = 0; i < n; i += CHUNK) {
        if (run_chunk(p, frames + i, n - i < CHUNK ? n - i : CHUNK)) {
            p->oom = 1;
            return -1;
        }
    }
    return finish_segments(p);
}

long beat_pipe_check_desc(const uint8_t *desc, size_t n, size_t buflen)
{
    for (size_t i = 0; i < n; i++) {
        const uint8_t *d = desc + i * BEAT_DESC_SIZE;
        uint64_t end = (uint64_t)rd32le(d + 8) + rd32le(d + 12);
        if (end > buflen || d[22] > 2)
            return (long)i;
    }
    return -1;
}

int beat_pipe_feed_desc(beat_pipe *p, const uint8_t *buf, const uint8_t *desc, size_t n)
{
    beat_frame fr[CHUNK];
    for (size_t i = 0; i < n; i += CHUNK) {
        size_t m = n - i < CHUNK ? n - i : CHUNK;
        for (size_t j = 0; j < m; j++) {
            const uint8_t *d = desc + (i + j) * BEAT_DESC_SIZE;
            fr[j].t_ns = rd64le(d);
            fr[j].data = buf + rd32le(d + 8);
            fr[j].caplen = rd32le(d + 12);
            fr[j].linktype = (uint16_t)(d[20] | (d[21] << 8));
            fr[j].dir = d[22];
            fr[j].vlan_stripped = d[23] & BEAT_FLAGS_VLAN_MASK;
            fr[j].slot = (uint8_t)(d[23] >> BEAT_FLAGS_SLOT_SHIFT);
        }
        if (run_chunk(p, fr, m)) {
            p->oom = 1;
            return -1;
        }
    }
    return finish_segments(p);
}

int beat_pipe_flush(beat_pipe *p)
{
    while (p->head != p->tail)
        if (release_head(p))
            return -1;
    if (seg_close(p) || close_receipts(p, BEAT_NONE))
        return -1;
    uint64_t end = p->clock - p->clock % p->epoch + p->epoch;
    if (end > p->closed_before)
        p->closed_before = end;
    return finish_segments(p);
}

int beat_pipe_close_segment(beat_pipe *p) { return seg_close(p) || finish_segments(p); }

int beat_pipe_advance(beat_pipe *p, uint64_t now_ns)
{
    if (now_ns > p->clock)
        p->clock = now_ns;
    if (release_ready(p) || close_epochs(p) || finish_segments(p)) {
        p->oom = 1;
        return -1;
    }
    return 0;
}

int beat_pipe_resume(beat_pipe *p, uint64_t next_seg_seq, const uint8_t *open_records, size_t n_rec,
                     const uint8_t *open_receipts, size_t n_rc, uint64_t closed_before)
{
    if (n_rec >= p->seg_records) /* a full segment would have been closed */
        return -2;
    for (size_t i = 0; i < n_rc; i++) {
        uint8_t role = open_receipts[i * BEAT_OPEN_RECEIPT_SIZE + 8];
        if (role != 1 && role != 2)
            return -2;
    }
    p->seg_seq = next_seg_seq;
    p->seg_count = (uint32_t)n_rec;
    if (n_rec) {
        memcpy(open_at(p), open_records, n_rec * BEAT_RECORD_SIZE);
        seg_first(p, rd64be(open_records));
    }
    p->closed_before = closed_before;
    /* the open receipts are replaced (not added to), and the per-epoch counts with them */
    memset(p->rc, 0, (size_t)(p->rc_mask + 1) * sizeof(rc_slot));
    p->rc_n = 0;
    p->rc_order_ok = 0;
    memset(p->rcn, 0, (size_t)(p->rcn_mask + 1) * sizeof(rcn_slot));
    p->rcn_n = 0;
    for (size_t i = 0; i < n_rc; i++) {
        const uint8_t *r = open_receipts + i * BEAT_OPEN_RECEIPT_SIZE;
        uint8_t kind = is_zero32(r + 9) ? RC_OVERFLOW : RC_OWN;
        if (kind == RC_OWN) {
            rcn_slot *c = rcn_get(p, rd64be(r));
            if (!c)
                return -1;
            c->own[r[8] - 1]++;
        }
        p->rc_n += rc_insert_into(p->seed, p->rc, p->rc_mask, r, rd64be(r + 41), rd64be(r + 49),
                                  kind);
        if (p->rc_n * 2 > p->rc_mask + 1 && rc_rebuild(p, (p->rc_mask + 1) * 2, 0))
            return -1;
    }
    return 0;
}

/* ---- outputs ---------------------------------------------------------------------------- */

const beat_buf *beat_pipe_records(beat_pipe *p) { return &p->out_records; }
const beat_buf *beat_pipe_segments(beat_pipe *p) { return &p->out_segments; }
const beat_buf *beat_pipe_receipts(beat_pipe *p) { return &p->out_receipts; }
const uint64_t *beat_pipe_stats(beat_pipe *p) { return p->stats; }
const uint64_t *beat_pipe_totals(beat_pipe *p)
{
    for (int i = 0; i < ST_COUNT; i++)
        p->totals[i] = p->totals_base[i] + p->stats[i];
    return p->totals;
}
uint64_t beat_pipe_closed_before(beat_pipe *p) { return p->closed_before; }

int beat_pipe_counters(beat_pipe *p, beat_buf *out)
{
    out->d = NULL;
    out->len = out->cap = 0;
    for (uint32_t j = 0; j <= p->ctr_mask; j++) {
        ctr_slot *c = &p->ctr[j];
        if (!c->used)
            continue;
        uint8_t v[BEAT_COUNTER_SIZE];
        wr64be(v, c->prev);
        wr64be(v + 8, c->next);
        wr64be(v + 16, c->packets);
        wr64be(v + 24, c->bytes);
        wr64be(v + 32, c->first);
        wr64be(v + 40, c->last);
        if (buf_put(out, v, sizeof v))
            return -1;
    }
    if (out->len)
        qsort(out->d, out->len / BEAT_COUNTER_SIZE, BEAT_COUNTER_SIZE, cmp_counter);
    return 0;
}

static int cmp_slot_ptr(const void *a, const void *b)
{
    return memcmp((*(const rc_slot *const *)a)->key, (*(const rc_slot *const *)b)->key, RC_KEY);
}

/* rc_order: the used slots' indices in key order (sorted through pointers: 8 bytes moved per
 * swap, not 57), sorted again only after a slot was added or the table rebuilt. */
static int rc_sort(beat_pipe *p)
{
    if (p->rc_order_ok)
        return 0;
    if (p->rc_order_cap < p->rc_n) {
        uint32_t *o = realloc(p->rc_order, sizeof *o * p->rc_n);
        if (!o)
            return -1;
        p->rc_order = o;
        p->rc_order_cap = p->rc_n;
    }
    const rc_slot **ptr = malloc(sizeof *ptr * (p->rc_n ? p->rc_n : 1));
    if (!ptr)
        return -1;
    size_t n = 0;
    for (uint32_t j = 0; j <= p->rc_mask; j++)
        if (p->rc[j].used)
            ptr[n++] = &p->rc[j];
    qsort(ptr, n, sizeof *ptr, cmp_slot_ptr);
    for (size_t k = 0; k < n; k++)
        p->rc_order[k] = (uint32_t)(ptr[k] - p->rc);
    free(ptr);
    p->rc_order_n = (uint32_t)n;
    p->rc_order_ok = 1;
    return 0;
}

/* Every open receipt, sorted by key: runs once per batch over every flow of the epoch. */
int beat_pipe_open_receipts(beat_pipe *p, beat_buf *out)
{
    out->d = NULL;
    out->len = out->cap = 0;
    if (p->rc_n == 0)
        return 0;
    if (rc_sort(p))
        return -1;
    size_t n = p->rc_order_n;
    out->cap = n * BEAT_OPEN_RECEIPT_SIZE;
    out->d = malloc(out->cap);
    if (!out->d)
        return -1;
    for (size_t k = 0; k < n; k++) {
        const rc_slot *s = &p->rc[p->rc_order[k]];
        uint8_t *v = out->d + k * BEAT_OPEN_RECEIPT_SIZE;
        memcpy(v, s->key, RC_KEY);
        wr64be(v + 41, s->packets);
        wr64be(v + 49, s->bytes);
    }
    out->len = out->cap;
    return 0;
}

int beat_pipe_swap_segments(beat_pipe *p, beat_buf *io)
{
    finish_segments(p);   /* a batch cut short by running out of memory may have left S to do */
    beat_buf nb = *io;
    nb.len = 0;
    size_t need = 48 + (size_t)p->seg_records * BEAT_RECORD_SIZE;
    if (nb.cap < need) {
        uint8_t *d = realloc(nb.d, need);
        if (!d)
            return -1;
        nb.d = d;
        nb.cap = need;
    }
    memcpy(nb.d + 48, open_at(p), (size_t)p->seg_count * BEAT_RECORD_SIZE);
    *io = p->out_segments;
    p->out_segments = nb;
    return 0;
}

const uint8_t *beat_pipe_open_records(beat_pipe *p, size_t *n, uint64_t *seg_seq)
{
    *n = p->seg_count;
    *seg_seq = p->seg_seq;
    return open_at(p);
}

void beat_pipe_reset_outputs(beat_pipe *p)
{
    beat_buf *sg = &p->out_segments;
    size_t open_len = (size_t)p->seg_count * BEAT_RECORD_SIZE;
    if (sg->len) {   /* the open segment moves to the front */
        memmove(sg->d + 48, sg->d + sg->len + 48, open_len);
        sg->len = 0;
    }
    if (sg->cap > (64u << 20) && sg->cap > 2 * (48 + (size_t)p->seg_records * BEAT_RECORD_SIZE)) {
        beat_buf small = {NULL, 0, 0};   /* shrink to one segment's room, open records kept */
        if (buf_grow(&small, 48 + (size_t)p->seg_records * BEAT_RECORD_SIZE) == 0) {
            memcpy(small.d + 48, sg->d + 48, open_len);
            free(sg->d);
            *sg = small;
        }
    }
    p->out_records.len = 0;
    p->out_receipts.len = 0;
    for (int i = 0; i < ST_COUNT; i++)
        p->totals_base[i] += p->stats[i];
    memset(p->stats, 0, sizeof p->stats);
    if (p->ctr_n) {
        memset(p->ctr, 0, (size_t)(p->ctr_mask + 1) * sizeof(ctr_slot));
        p->ctr_n = 0;
    }
    /* keep buffers that grew large from pinning memory forever */
    beat_buf *bufs[2] = {&p->out_records, &p->out_receipts};
    for (int i = 0; i < 2; i++) {
        if (bufs[i]->cap > (64u << 20)) {
            free(bufs[i]->d);
            bufs[i]->d = NULL;
            bufs[i]->cap = 0;
        }
    }
}

/* ---- FP --------------------------------------------------------------------------------- */

void beat_fp_many(int alg, uint64_t node_id, const uint8_t *records, size_t n, uint8_t *out)
{
    enum { B = 64, L = 58 };
    uint8_t msgs[B][64];
    uint16_t lens[B];
    for (size_t i = 0; i < n; i += B) {
        size_t m = n - i < B ? n - i : B;
        for (size_t j = 0; j < m; j++) {
            const uint8_t *r = records + (i + j) * BEAT_RECORD_SIZE;
            uint8_t *x = msgs[j];
            memcpy(x, FP_TAG, 10);
            wr64be(x + 10, node_id);
            memcpy(x + 18, r + 8, 16);   /* prev_id, next_id */
            memcpy(x + 34, r + 24, 16);  /* PD */
            memcpy(x + 50, r, 8);        /* t_ns */
            lens[j] = L;
        }
        beat_hash_many(alg, msgs[0], 64, lens, m, out + i * 32, 32);
    }
}

/* ---- life cycle ------------------------------------------------------------------------- */

void beat_pipe_free(beat_pipe *p)
{
    if (!p)
        return;
    free(p->nb);
    free(p->fifo);
    free(p->fin);
    free(p->pdt);
    free(p->ftc);
    free(p->ctr);
    free(p->rc);
    free(p->rcn);
    free(p->rc_order);
    free(p->out_records.d);
    free(p->out_segments.d);
    free(p->out_receipts.d);
    free(p->seg_pending.d);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

/* A per-pipeline seed for the table index hash: the kernel's random bytes, else time and address. */
static uint64_t pipe_seed(const beat_pipe *p)
{
    uint64_t seed = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (f) {
        if (fread(&seed, sizeof seed, 1, f) != 1)
            seed = 0;
        fclose(f);
    }
    if (seed == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        seed = mix64((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)(uintptr_t)p);
    }
    return seed | 1;
}

beat_pipe *beat_pipe_new(uint64_t node_id, int alg, uint64_t join_window_ns,
                         uint64_t receipt_epoch_ns, uint32_t segment_records,
                         uint64_t anchor_period_ns, uint32_t max_pending,
                         uint32_t max_receipts_per_epoch)
{
    beat_pipe *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->node_id = node_id;
    p->alg = alg;
    p->seed = pipe_seed(p);
    pthread_mutex_init(&p->lock, NULL);
    p->window = join_window_ns;
    p->epoch = receipt_epoch_ns;
    p->period = anchor_period_ns;
    p->seg_records = segment_records;
    p->max_pending = max_pending;
    p->records_out = 1;
    p->fifo_mask = (max_pending < FIFO_MIN ? max_pending : FIFO_MIN) - 1;
    p->ownset.own = p->own;
    p->pdt_mask = PDT_MIN - 1;
    p->ctr_mask = 63;
    p->rc_mask = 1023;
    p->rcn_mask = 15;
    p->rc_max = max_receipts_per_epoch;
    p->fifo = table_alloc(sizeof(entry) * (p->fifo_mask + 1));
    p->fin = table_alloc(sizeof(fin_t) * (p->fifo_mask + 1));
    p->pdt = pdt_alloc(PDT_MIN);
    p->ftc = table_alloc(sizeof(ft_slot) << FT_CACHE_BITS);   /* 1 MiB: 2 MiB aligned */
    if (p->ftc)
        memset(p->ftc, 0, sizeof(ft_slot) << FT_CACHE_BITS);
    p->ctr = calloc(p->ctr_mask + 1, sizeof(ctr_slot));
    p->rc = calloc(p->rc_mask + 1, sizeof(rc_slot));
    p->rcn = calloc(p->rcn_mask + 1, sizeof(rcn_slot));
    if (!p->fifo || !p->fin || !p->pdt || !p->ftc || !p->ctr || !p->rc || !p->rcn || seg_room(p) ||
        beat_pipe_set_neighbours(p, NULL, NULL, NULL, 0)) {
        beat_pipe_free(p);
        return NULL;
    }
    return p;
}

_Static_assert(BEAT_PD_MSG_MAX < BEAT_PADDED_MSG, "a PD message and its 0x06 fit a padded buffer");
_Static_assert(10 + IN_MAX <= BEAT_PD_MSG_MAX, "fin copies IN_MAX bytes from o->msg + 10");
