/* pcap and pcapng read in place (beat_capfile.h). Every rule mirrors beatd/capfile.py's reference
 * reader, which tests/test_capfile_c.py compares this one against, frame by frame and error by
 * error: change both or neither. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "beat_bytes.h"
#include "beat_capfile.h"

#define SHB 0x0A0D0D0Au
#define BOM 0x1A2B3C4Du
#define BOM_SWAPPED 0x4D3C2B1Au
enum { IDB = 1, PB = 2, SPB = 3, EPB = 6 };
enum { OPT_END = 0, EPB_FLAGS = 2, IF_TSRESOL = 9, IF_TSOFFSET = 14 };

static inline uint16_t rd16le(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint16_t rd16(int be, const uint8_t *p) { return be ? rd16be(p) : rd16le(p); }
static inline uint32_t rd32(int be, const uint8_t *p) { return be ? rd32be(p) : rd32le(p); }
static inline uint64_t rd64(int be, const uint8_t *p) { return be ? rd64be(p) : rd64le(p); }

static void say(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Reading stops here: what is wrong goes to r->error (the reference's wording). */
static void damaged(beat_cap *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->error, sizeof r->error, fmt, ap);
    va_end(ap);
    r->damaged = 1;
    r->done = 1;
}

int beat_cap_open(beat_cap *r, const uint8_t *data, uint64_t len, char *err, size_t errlen)
{
    memset(r, 0, sizeof *r);
    r->data = data;
    r->len = len;
    if (len < 4) {
        if (len == 0)
            say(err, errlen, "not a pcap or pcapng file (empty)");
        else
            say(err, errlen, "not a pcap or pcapng file (only %u bytes)", (unsigned)len);
        return -1;
    }
    uint32_t magic = rd32le(data);
    if (magic == 0xa1b2c3d4u || magic == 0xd4c3b2a1u || magic == 0xa1b23c4du ||
        magic == 0x4d3cb2a1u) {
        if (len < 24) {
            say(err, errlen, "pcap file header truncated (%u of 24 bytes)", (unsigned)len);
            return -1;
        }
        r->format = BEAT_CAP_PCAP;
        r->be = magic == 0xd4c3b2a1u || magic == 0x4d3cb2a1u;
        r->frac_ns = (magic == 0xa1b23c4du || magic == 0x4d3cb2a1u) ? 1 : 1000;
        r->snaplen = rd32(r->be, data + 16);
        r->linktype = (uint16_t)rd32(r->be, data + 20); /* the upper bits carry FCS information */
        r->limit = r->snaplen > BEAT_CAP_MAX_SNAPLEN ? r->snaplen : BEAT_CAP_MAX_SNAPLEN;
        r->pos = 24;
        return 0;
    }
    if (magic == SHB) {
        r->format = BEAT_CAP_PCAPNG;
        return 0;
    }
    say(err, errlen, "not a pcap or pcapng file (magic 0x%08x)", magic);
    return -1;
}

void beat_cap_close(beat_cap *r)
{
    free(r->ifs);
    r->ifs = NULL;
    r->n_if = r->cap_if = 0;
}

/* ---- pcap ------------------------------------------------------------------------------- */

static size_t pcap_next(beat_cap *r, beat_cap_frame *out, size_t max, uint64_t max_span)
{
    const uint8_t *d = r->data;
    const int be = r->be;
    size_t n = 0;
    while (n < max) {
        uint64_t rem = r->len - r->pos;
        if (rem < 16) {
            if (rem)
                damaged(r, "record header truncated (%llu of 16 bytes)", (unsigned long long)rem);
            r->done = 1;
            break;
        }
        const uint8_t *h = d + r->pos;
        uint32_t sec = rd32(be, h), frac = rd32(be, h + 4), incl = rd32(be, h + 8);
        if (incl > r->limit) {
            damaged(r, "corrupt record length %u (snaplen %u)", incl, r->snaplen);
            break;
        }
        if (rem < 16 + (uint64_t)incl) {
            damaged(r, "record truncated (%llu of %u bytes)", (unsigned long long)(rem - 16), incl);
            break;
        }
        uint32_t caplen = (!r->snaplen || incl <= r->snaplen) ? incl : r->snaplen;
        if (n && r->pos + 16 + caplen - out[0].off > max_span)
            break;
        beat_cap_frame *f = &out[n++];
        f->t_ns = (uint64_t)sec * 1000000000u + (uint64_t)frac * r->frac_ns;
        f->off = r->pos + 16;
        f->caplen = caplen;
        f->wirelen = rd32(be, h + 12);
        f->linktype = r->linktype;
        f->dir = 0;
        r->pos += 16 + (uint64_t)incl;
    }
    return n;
}

/* ---- pcapng ----------------------------------------------------------------------------- */

static void iface_tsresol(beat_cap_iface *f, uint8_t v)
{
    f->zero = 0;
    f->div = 1;
    if (v & 0x80) { /* 2^-e seconds per unit */
        f->mul = 1000000000u;
        f->shift = v & 0x7F;
        return;
    }
    f->shift = 0; /* 10^-e seconds per unit */
    if (v <= 9) {
        f->mul = 1;
        for (int i = v; i < 9; i++)
            f->mul *= 10;
        return;
    }
    f->mul = 1;
    if (v - 9 >= 20) { /* 10^20 > 2^64 > any ts: the quotient is 0 */
        f->zero = 1;
        return;
    }
    for (int i = 9; i < v; i++)
        f->div *= 10;
}

static uint64_t iface_t_ns(const beat_cap_iface *f, uint64_t ts)
{
    __int128 q = 0;
    if (!f->zero) {
        unsigned __int128 x = (unsigned __int128)ts * f->mul;
        x >>= f->shift;
        q = (__int128)(x / f->div);
    }
    __int128 t = q + (__int128)f->offset_s * 1000000000;
    if (t < 0)
        return 0;
    if (t > (__int128)UINT64_MAX)
        return UINT64_MAX;
    return (uint64_t)t;
}

/* The options in [start, end): calls back per option until the end marker, or one that does not
 * fit. Returns nothing; the callers read what they need. */
typedef struct {
    const uint8_t *d;
    uint64_t at, end;
    int be;
} opt_iter;

static int opt_next(opt_iter *it, uint16_t *code, uint64_t *vo, uint16_t *vl)
{
    if (it->at + 4 > it->end)
        return 0;
    uint16_t c = rd16(it->be, it->d + it->at), l = rd16(it->be, it->d + it->at + 2);
    if (c == OPT_END || it->at + 4 + l > it->end)
        return 0;
    *code = c;
    *vo = it->at + 4;
    *vl = l;
    it->at += 4 + (((uint64_t)l + 3) & ~(uint64_t)3);
    return 1;
}

static int add_iface(beat_cap *r, const uint8_t *d, uint64_t p, uint64_t end)
{
    if (r->n_if == r->cap_if) {
        uint32_t cap = r->cap_if ? r->cap_if * 2 : 8;
        beat_cap_iface *t = realloc(r->ifs, cap * sizeof *t);
        if (!t)
            return -1;
        r->ifs = t;
        r->cap_if = cap;
    }
    beat_cap_iface *f = &r->ifs[r->n_if++];
    memset(f, 0, sizeof *f);
    f->linktype = rd16(r->be, d + p + 8);
    f->snaplen = rd32(r->be, d + p + 12);
    f->mul = 1000; /* default resolution 10^-6 s */
    f->div = 1;
    opt_iter it = {d, p + 16, end, r->be};
    uint16_t code, vl;
    uint64_t vo;
    while (opt_next(&it, &code, &vo, &vl)) {
        if (code == IF_TSRESOL && vl >= 1)
            iface_tsresol(f, d[vo]);
        else if (code == IF_TSOFFSET && vl == 8)
            f->offset_s = (int64_t)rd64(r->be, d + vo);
    }
    return 0;
}

static size_t pcapng_next(beat_cap *r, beat_cap_frame *out, size_t max, uint64_t max_span)
{
    const uint8_t *d = r->data;
    size_t n = 0;
    while (n < max) {
        uint64_t rem = r->len - r->pos;
        if (rem < 12) {
            if (rem)
                damaged(r, "block header truncated (%llu bytes)", (unsigned long long)rem);
            r->done = 1;
            break;
        }
        uint64_t p = r->pos;
        int be = r->be;
        uint32_t btype = rd32(be, d + p);
        if (btype == SHB) {
            uint32_t bom = rd32le(d + p + 8);
            if (bom == BOM) {
                be = 0;
            } else if (bom == BOM_SWAPPED) {
                be = 1;
            } else {
                damaged(r, "section header with a bad byte-order magic 0x%08x", bom);
                break;
            }
        }
        uint32_t blen = rd32(be, d + p + 4);
        if (blen < 12 || blen % 4 || blen > BEAT_CAP_MAX_RECORD) {
            damaged(r, "corrupt block length %u (block type 0x%08x)", blen, btype);
            break;
        }
        if (rem < blen) {
            damaged(r, "block truncated (%llu of %u bytes, block type 0x%08x)",
                    (unsigned long long)rem, blen, btype);
            break;
        }
        if (rd32(be, d + p + blen - 4) != blen) {
            damaged(r, "corrupt block: trailing length differs from %u (block type 0x%08x)", blen,
                    btype);
            break;
        }
        uint64_t end = p + blen - 4;
        beat_cap_frame f;
        int frame = 0;
        uint64_t t = r->last_t;
        if (btype == EPB && blen >= 32) {
            uint32_t iid = rd32(be, d + p + 8);
            uint64_t ts = ((uint64_t)rd32(be, d + p + 12) << 32) | rd32(be, d + p + 16);
            uint64_t caplen = rd32(be, d + p + 20), off = p + 28;
            f.wirelen = rd32(be, d + p + 24);
            if (off + caplen > end)
                caplen = end - off;
            uint64_t opts = off + ((caplen + 3) & ~(uint64_t)3);
            f.dir = 0;
            if (opts < end) {
                opt_iter it = {d, opts, end, be};
                uint16_t code, vl;
                uint64_t vo;
                while (opt_next(&it, &code, &vo, &vl)) {
                    if (code == EPB_FLAGS && vl == 4) {
                        f.dir = rd32(be, d + vo) & 3; /* 1 in, 2 out */
                        if (f.dir == 3)
                            f.dir = 0;
                    }
                }
            }
            if (iid < r->n_if) {
                t = iface_t_ns(&r->ifs[iid], ts);
                f.off = off;
                f.caplen = (uint32_t)caplen;
                f.linktype = r->ifs[iid].linktype;
                frame = 1;
            }
        } else if (btype == SPB && blen >= 16) {
            if (r->n_if) {
                const beat_cap_iface *i0 = &r->ifs[0];
                uint64_t off = p + 12;
                uint64_t caplen = rd32(be, d + p + 8);
                f.wirelen = (uint32_t)caplen;
                if (caplen > end - off)
                    caplen = end - off;
                if (i0->snaplen && caplen > i0->snaplen)
                    caplen = i0->snaplen;
                f.off = off;
                f.caplen = (uint32_t)caplen;
                f.linktype = i0->linktype;
                f.dir = 0;
                frame = 1;
            }
        } else if (btype == PB && blen >= 32) {
            uint16_t iid = rd16(be, d + p + 8);
            uint64_t ts = ((uint64_t)rd32(be, d + p + 12) << 32) | rd32(be, d + p + 16);
            uint64_t caplen = rd32(be, d + p + 20), off = p + 28;
            f.wirelen = rd32(be, d + p + 24);
            if (off + caplen > end)
                caplen = end - off;
            if (iid < r->n_if) {
                t = iface_t_ns(&r->ifs[iid], ts);
                f.off = off;
                f.caplen = (uint32_t)caplen;
                f.linktype = r->ifs[iid].linktype;
                f.dir = 0;
                frame = 1;
            }
        }
        if (frame) {
            if (n && f.off + f.caplen - out[0].off > max_span)
                break; /* the next call reads this block again, from the same state */
            f.t_ns = t;
            out[n++] = f;
        } else if (btype == IDB && blen >= 20) {
            if (add_iface(r, d, p, end)) {
                r->oom = 1;
                r->done = 1;
                break;
            }
        }
        /* anything else (SHB body, NRB, ISB, DSB, custom, unknown) is skipped */
        if (btype == SHB) {
            r->be = be;
            r->n_if = 0; /* interface ids are per section */
        }
        r->last_t = t;
        r->pos = p + blen;
    }
    return n;
}

size_t beat_cap_next(beat_cap *r, beat_cap_frame *out, size_t max, uint64_t max_span)
{
    if (r->done || max == 0)
        return 0;
    size_t n = r->format == BEAT_CAP_PCAP ? pcap_next(r, out, max, max_span)
                                          : pcapng_next(r, out, max, max_span);
    r->frames += n;
    return n;
}

size_t beat_cap_next_frames(beat_cap *r, beat_frame *out, size_t max)
{
    beat_cap_frame f[256];
    size_t n = 0;
    while (n < max) {
        size_t want = max - n < 256 ? max - n : 256;
        size_t got = beat_cap_next(r, f, want, UINT64_MAX);
        for (size_t i = 0; i < got; i++) {
            beat_frame *o = &out[n + i];
            o->data = r->data + f[i].off;
            o->t_ns = f[i].t_ns;
            o->caplen = f[i].caplen;
            o->linktype = f[i].linktype;
            o->dir = f[i].dir;
            o->vlan_stripped = 0;
            o->slot = 0;
        }
        n += got;
        if (got < want)
            break;
    }
    return n;
}

static inline void wr32le(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

void beat_cap_desc(const beat_cap_frame *f, size_t n, uint64_t base, uint8_t *desc)
{
    for (size_t i = 0; i < n; i++, desc += 24) {
        wr32le(desc, (uint32_t)f[i].t_ns);
        wr32le(desc + 4, (uint32_t)(f[i].t_ns >> 32));
        wr32le(desc + 8, (uint32_t)(f[i].off - base));
        wr32le(desc + 12, f[i].caplen);
        wr32le(desc + 16, f[i].wirelen);
        desc[20] = (uint8_t)f[i].linktype;
        desc[21] = (uint8_t)(f[i].linktype >> 8);
        desc[22] = f[i].dir;
        desc[23] = 0;
    }
}
