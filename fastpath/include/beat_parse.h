/* Frame parsing: link layer -> direction, neighbour MAC, and the SPEC's digest input.
 * See docs/fastpath.md "Link layers" and "IP checks". Pure function of the frame and the own MACs. */
#ifndef BEAT_PARSE_H
#define BEAT_PARSE_H
#include <stdint.h>
#include <stddef.h>

#define BEAT_PD_MSG_MAX 80       /* "BEAT-PD-v1"(10) family(1) IPv6 input(38) P(24) = 73 */
#define BEAT_DIR_AUTO 0
#define BEAT_DIR_INGRESS 1
#define BEAT_DIR_EGRESS 2
#define BEAT_MAC_NONE 0          /* link type without MACs: id 0, not counted */
#define BEAT_MAC_PRESENT 1       /* look `mac` up in the neighbour map */
#define BEAT_MAC_MISSING 2       /* a link layer that should have told us, and did not: id 0, counted */

typedef struct {
    uint8_t msg[BEAT_PD_MSG_MAX]; /* hashed to PD */
    uint8_t digest[32];           /* H(msg), filled by the caller when `hashed` */
    uint64_t key;                 /* the caller's index key of msg[10..] */
    uint8_t src[16], dst[16];     /* IPv4-mapped when family 4 */
    uint16_t msg_len;             /* 0 when the frame got no digest */
    uint8_t family, dir, mac_state, reason, hashed;
    uint8_t mac[6];
    uint32_t ip_len;
} beat_obs;

typedef struct {
    const uint64_t *own;   /* own MACs as mac_key() values */
    int n_own;
} beat_macset;

/* Returns 0 when the frame has a digest input in o->msg (and fills the rest of o), else the ST_*
 * reason it has none. vlan_stripped: VLAN tags the capture already removed (a live ring reports
 * them beside the frame); they count toward the limit of two. */
int beat_parse(const uint8_t *f, uint32_t caplen, uint16_t linktype, uint8_t dir_hint,
               uint8_t vlan_stripped, const beat_macset *own, beat_obs *o);
#endif
