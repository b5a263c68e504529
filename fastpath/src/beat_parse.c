/* Frame parsing for the fast path: every link type of docs/fastpath.md, up to the SPEC's digest
 * input. Walks a pointer and a length; every read is preceded by a length check. */
#include <string.h>

#include "beat_bytes.h"
#include "beat_parse.h"
#include "beat_stats.h"

static const uint8_t PD_TAG[10] = {'B', 'E', 'A', 'T', '-', 'P', 'D', '-', 'v', '1'};
static const uint8_t V4_MAPPED[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* want: 4 or 6 (announced by the link layer), or 0 (take the version nibble). */
static int parse_ip(const uint8_t *p, uint32_t cap, int want, beat_obs *o)
{
    uint8_t *m = o->msg;
    if (cap < 1)
        return ST_TRUNCATED;
    int ver = p[0] >> 4;
    if (want == 0) {
        if (ver != 4 && ver != 6)
            return ST_NON_IP;
        want = ver;
    }
    if (ver != want)
        return ST_BAD_VERSION;
    memcpy(m, PD_TAG, 10);
    if (want == 4) {
        if (cap < 20)
            return ST_TRUNCATED;
        uint32_t hl = (uint32_t)(p[0] & 15) * 4;
        if (hl < 20)
            return ST_BAD_IHL;
        uint32_t tl = rd16be(p + 2);
        if (tl < hl)
            return ST_BAD_LENGTH;
        if (cap < hl)
            return ST_TRUNCATED;
        uint32_t pl = tl - hl < 24 ? tl - hl : 24;
        if (cap < hl + pl)
            return ST_TRUNCATED;
        m[10] = 4;
        m[11] = p[0];                 /* ver_ihl */
        memcpy(m + 12, p + 2, 6);     /* total_length, identification, flags_fragment */
        m[18] = p[9];                 /* protocol */
        memcpy(m + 19, p + 12, 8);    /* src, dst */
        memcpy(m + 27, p + hl, pl);
        o->msg_len = (uint16_t)(27 + pl);
        memcpy(o->src, V4_MAPPED, 12);
        memcpy(o->src + 12, p + 12, 4);
        memcpy(o->dst, V4_MAPPED, 12);
        memcpy(o->dst + 12, p + 16, 4);
        o->ip_len = tl;
    } else {
        if (cap < 40)
            return ST_TRUNCATED;
        uint32_t L = rd16be(p + 4);
        uint32_t pl = L < 24 ? L : 24;
        if (cap < 40 + pl)
            return ST_TRUNCATED;
        m[10] = 6;
        m[11] = p[4];                 /* payload_length */
        m[12] = p[5];
        m[13] = p[6];                 /* next_header */
        m[14] = p[1] & 0x0f;          /* flow_label, top 4 bits zero */
        m[15] = p[2];
        m[16] = p[3];
        memcpy(m + 17, p + 8, 32);    /* src, dst */
        memcpy(m + 49, p + 40, pl);
        o->msg_len = (uint16_t)(49 + pl);
        memcpy(o->src, p + 8, 16);
        memcpy(o->dst, p + 24, 16);
        o->ip_len = 40 + L;
    }
    o->family = (uint8_t)want;
    return 0;
}

/* The ethertype walk: `et` is the first ethertype, `off` the offset of the bytes after it; `tags`
 * VLAN tags were already stripped by the capture (they count toward the limit of two). */
static int walk(const uint8_t *f, uint32_t cap, uint16_t et, uint32_t off, int tags, beat_obs *o)
{
    if (tags > 2)
        return ST_VLAN_DEPTH;
    for (;;) {
        if (et == 0x8100 || et == 0x88a8 || et == 0x9100) {
            if (++tags > 2)
                return ST_VLAN_DEPTH;
            if (cap < off + 4)
                return ST_RUNT;
            et = rd16be(f + off + 2);
            off += 4;
            continue;
        }
        if (et == 0x8847 || et == 0x8848) {
            for (;;) {
                if (cap < off + 4)
                    return ST_RUNT;
                int bos = f[off + 2] & 1;
                off += 4;
                if (bos)
                    break;
            }
            if (cap <= off)
                return ST_TRUNCATED;
            int nib = f[off] >> 4;
            if (nib == 4 || nib == 6)
                return parse_ip(f + off, cap - off, nib, o);
            return ST_NON_IP;
        }
        if (et == 0x0800)
            return parse_ip(f + off, cap - off, 4, o);
        if (et == 0x86dd)
            return parse_ip(f + off, cap - off, 6, o);
        return ST_NON_IP;
    }
}

static int is_own(const beat_macset *own, const uint8_t *mac)
{
    uint64_t k = mac_key(mac);
    for (int i = 0; i < own->n_own; i++)
        if (own->own[i] == k)
            return 1;
    return 0;
}

static int null_family(uint32_t v)
{
    if (v == 2)
        return 4;
    if (v == 10 || v == 24 || v == 28 || v == 30)
        return 6;
    return 0;
}

/* SLL and SLL2: the address is the sender's MAC when it is an Ethernet address. */
static void cooked_mac(beat_obs *o, uint16_t pkttype, uint16_t arphrd, uint16_t alen,
                       const uint8_t *addr, uint8_t dir_hint)
{
    o->dir = dir_hint ? dir_hint : (pkttype == 4 ? BEAT_DIR_EGRESS : BEAT_DIR_INGRESS);
    if (o->dir == BEAT_DIR_INGRESS && arphrd == 1 && alen == 6) {
        o->mac_state = BEAT_MAC_PRESENT;
        memcpy(o->mac, addr, 6);
    } else {
        o->mac_state = BEAT_MAC_MISSING;
    }
}

int beat_parse(const uint8_t *f, uint32_t cap, uint16_t linktype, uint8_t dir_hint,
               uint8_t vlan_stripped, const beat_macset *own, beat_obs *o)
{
    o->msg_len = 0;
    o->mac_state = BEAT_MAC_NONE;
    o->dir = dir_hint ? dir_hint : BEAT_DIR_INGRESS;
    switch (linktype) {
    case 1: /* Ethernet */
        if (cap < 14)
            return ST_RUNT;
        if (!dir_hint)
            o->dir = is_own(own, f + 6) ? BEAT_DIR_EGRESS : BEAT_DIR_INGRESS;
        o->mac_state = BEAT_MAC_PRESENT;
        memcpy(o->mac, o->dir == BEAT_DIR_INGRESS ? f + 6 : f, 6);
        return walk(f, cap, rd16be(f + 12), 14, vlan_stripped, o);
    case 113: /* Linux cooked v1 */
        if (cap < 16)
            return ST_RUNT;
        cooked_mac(o, rd16be(f), rd16be(f + 2), rd16be(f + 4), f + 6, dir_hint);
        return walk(f, cap, rd16be(f + 14), 16, vlan_stripped, o);
    case 276: /* Linux cooked v2 */
        if (cap < 20)
            return ST_RUNT;
        cooked_mac(o, f[10], rd16be(f + 8), f[11], f + 12, dir_hint);
        return walk(f, cap, rd16be(f), 20, vlan_stripped, o);
    case 101: case 12: case 14: /* raw IP */
        return parse_ip(f, cap, 0, o);
    case 228:
        return parse_ip(f, cap, 4, o);
    case 229:
        return parse_ip(f, cap, 6, o);
    case 0: { /* BSD null: the capturer's byte order */
        if (cap < 4)
            return ST_RUNT;
        int fam = null_family(rd32le(f));
        if (!fam)
            fam = null_family(rd32be(f));
        if (!fam)
            return ST_NON_IP;
        return parse_ip(f + 4, cap - 4, fam, o);
    }
    case 108: { /* OpenBSD loop: network byte order */
        if (cap < 4)
            return ST_RUNT;
        int fam = null_family(rd32be(f));
        if (!fam)
            return ST_NON_IP;
        return parse_ip(f + 4, cap - 4, fam, o);
    }
    case 104: /* Cisco HDLC */
        if (cap < 4)
            return ST_RUNT;
        return walk(f, cap, rd16be(f + 2), 4, vlan_stripped, o);
    case 9: case 50: { /* PPP */
        uint32_t off = (cap >= 2 && f[0] == 0xff && f[1] == 0x03) ? 2 : 0;
        if (cap < off + 2)
            return ST_RUNT;
        uint16_t proto = rd16be(f + off);
        if (proto == 0x0021)
            return parse_ip(f + off + 2, cap - off - 2, 4, o);
        if (proto == 0x0057)
            return parse_ip(f + off + 2, cap - off - 2, 6, o);
        return ST_NON_IP;
    }
    default:
        return ST_UNSUPPORTED_LINKTYPE;
    }
}
