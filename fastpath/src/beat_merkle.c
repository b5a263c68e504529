/* beat_merkle: RFC 9162 tree levels with beat_hash_many's lanes. See beat_merkle.h. */
#include "beat_merkle.h"

#include <string.h>

#include "beat_hash.h"

enum { CHUNK = 256, LEAF_MSG = 1 + BEAT_MERKLE_LEAF_SIZE, NODE_MSG = 1 + 2 * 32 };

size_t beat_merkle_depth(size_t n)
{
    size_t d = 1;
    while (n > 1) {
        n = (n + 1) / 2;
        d++;
    }
    return d;
}

size_t beat_merkle_nodes(size_t n)
{
    if (n == 0)
        return 1;
    size_t t = n;
    while (n > 1) {
        n = (n + 1) / 2;
        t += n;
    }
    return t;
}

void beat_merkle_levels(int alg, const uint8_t *leaves, size_t n, uint8_t *out)
{
    uint8_t msgs[CHUNK][NODE_MSG];
    uint16_t lens[CHUNK];
    if (n == 0) {
        beat_hash(alg, "", 0, out);
        return;
    }
    /* level 0: H(0x00 || leaf) */
    for (size_t i = 0; i < n; i += CHUNK) {
        size_t m = n - i < CHUNK ? n - i : CHUNK;
        for (size_t j = 0; j < m; j++) {
            msgs[j][0] = 0x00;
            memcpy(msgs[j] + 1, leaves + (i + j) * BEAT_MERKLE_LEAF_SIZE, BEAT_MERKLE_LEAF_SIZE);
            lens[j] = LEAF_MSG;
        }
        beat_hash_many(alg, msgs[0], NODE_MSG, lens, m, out + i * 32, 32);
    }
    /* level k+1: H(0x01 || left || right), an odd last node carried up */
    const uint8_t *lvl = out;
    size_t w = n;
    while (w > 1) {
        uint8_t *up = (uint8_t *)lvl + w * 32;
        size_t pairs = w / 2;
        for (size_t i = 0; i < pairs; i += CHUNK) {
            size_t m = pairs - i < CHUNK ? pairs - i : CHUNK;
            for (size_t j = 0; j < m; j++) {
                msgs[j][0] = 0x01;
                memcpy(msgs[j] + 1, lvl + (i + j) * 64, 64);
                lens[j] = NODE_MSG;
            }
            beat_hash_many(alg, msgs[0], NODE_MSG, lens, m, up + i * 32, 32);
        }
        if (w & 1)
            memcpy(up + pairs * 32, lvl + (w - 1) * 32, 32);
        lvl = up;
        w = (w + 1) / 2;
    }
}
