/* beat_merkle: the levels of an RFC 9162 Merkle tree (docs/ledger.md), hashed in SIMD lanes.
 *
 * Leaves are SPEC leaf data, n x 33 bytes (type(1) || value(32)). Level 0 is the n leaf hashes
 * H(0x00 || leaf); level k+1 is H(0x01 || left || right) over adjacent pairs of level k, an odd
 * last node carried up unchanged, until one node: the RFC 9162 root. The empty tree (n = 0) has
 * one level of one node, H(). Every node is 32 bytes; the levels are written one after another.
 */
#ifndef BEAT_MERKLE_H
#define BEAT_MERKLE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BEAT_MERKLE_LEAF_SIZE 33

/* Number of levels of a tree of n leaves (1 for n = 0 and n = 1). */
size_t beat_merkle_depth(size_t n);
/* Number of nodes over all levels (the output holds 32 times this many bytes; 1 for n = 0). */
size_t beat_merkle_nodes(size_t n);
/* Hash the levels of the tree of the n leaves (n * 33 bytes) into out (beat_merkle_nodes(n) * 32
 * bytes, level 0 first). alg: BEAT_HASH_SHA3_256 or BEAT_HASH_BLAKE2B_256. */
void beat_merkle_levels(int alg, const uint8_t *leaves, size_t n, uint8_t *out);

#ifdef __cplusplus
}
#endif

#endif /* BEAT_MERKLE_H */
