/* beat_hash: SHA3-256 (FIPS 202) and BLAKE2b-256 (RFC 7693, digest_length = 32, no key),
 * self-contained (no OpenSSL), with a multi-lane single-block SHA3 path for many short messages.
 *
 * Outputs are always the full 32-byte digest; callers truncate.
 *   SHA3-256    == hashlib.sha3_256
 *   BLAKE2B_256 == hashlib.blake2b(digest_size=32)   (not truncated BLAKE2b-512)
 *
 * SIMD (x86_64 only, chosen at run time, no -march needed): beat_hash_many uses 8-lane AVX-512F or
 * 4-lane AVX2 Keccak when the CPU has it. The environment variable BEAT_SIMD=scalar|avx2|avx512
 * (read once, at first use) caps the default level; beat_hash_set_simd() overrides it.
 */
#ifndef BEAT_HASH_H
#define BEAT_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "beat_bytes.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { BEAT_HASH_SHA3_256 = 0, BEAT_HASH_BLAKE2B_256 = 1 };
enum { BEAT_SIMD_SCALAR = 0, BEAT_SIMD_AVX2 = 2, BEAT_SIMD_AVX512 = 3 };

#define BEAT_HASH_DIGEST_LEN 32
#define BEAT_SHA3_256_RATE 136   /* bytes; a single-block SHA3 message is <= 135 bytes */
#define BEAT_BLAKE2B_BLOCK 128   /* bytes; a single-block BLAKE2b message is <= 128 bytes */

/* Treat the fields as private. */
typedef struct {
    union {
        uint64_t keccak[25];              /* Keccak-f[1600] state, lane i = x + 5y */
        struct {
            uint64_t h[8];                /* chain value */
            uint64_t t[2];                /* byte counter (128-bit) */
        } blake2b;
    } u;
    uint8_t buf[BEAT_SHA3_256_RATE];      /* pending input, < rate (SHA3) or <= 128 (BLAKE2b) */
    uint32_t pos;                         /* bytes in buf */
    int alg;
} beat_hash_ctx;

void beat_hash_init(beat_hash_ctx *c, int alg);
void beat_hash_update(beat_hash_ctx *c, const void *data, size_t len);
void beat_hash_final(beat_hash_ctx *c, uint8_t out[32]);
void beat_hash(int alg, const void *data, size_t len, uint8_t out[32]);   /* one shot */

/* Many short messages at once: message i is at msgs + i*stride, length lens[i]; digest i is
 * written to out + i*out_stride (32 bytes). Messages longer than one block (> 135 bytes for SHA3)
 * are hashed by the scalar path, so any length is correct. BLAKE2b loops the scalar path. */
void beat_hash_many(int alg, const uint8_t *msgs, size_t stride, const uint16_t *lens, size_t n,
                    uint8_t *out, size_t out_stride);

/* beat_hash_many for short messages already padded in their buffers: every buffer is at least
 * BEAT_PADDED_MSG bytes (msgs + i*stride, stride a multiple of 32 is best), holds the message
 * (lens[i] < BEAT_PADDED_MSG), then the byte 0x06 at lens[i], then zeros to BEAT_PADDED_MSG
 * (beat_padded_put writes one). SHA3-256 on AVX2 then loads the state with whole-vector loads and
 * a 4x4 transpose; every other case is beat_hash_many (which ignores the padding). */
#define BEAT_PADDED_MSG 96
void beat_hash_many_padded(int alg, const uint8_t *msgs, size_t stride, const uint16_t *lens,
                           size_t n, uint8_t *out, size_t out_stride);

/* Word by word, in registers (a word assembled in memory from byte stores and read back whole
 * stalls store forwarding): reads msg[0..avail) (avail >= len: the readable bytes at msg; bytes
 * past len are masked off), writes buf[0..BEAT_PADDED_MSG). */
static inline void beat_padded_put(uint8_t *buf, const uint8_t *msg, size_t len, size_t avail)
{
    for (size_t off = 0; off < BEAT_PADDED_MSG; off += 8) {
        uint64_t w;
        if (off + 8 <= len) {
            w = rd64le(msg + off);
        } else if (off > len) {
            w = 0;
        } else {
            size_t k = len - off;   /* 0..7 message bytes in this word, then 0x06 */
            if (off + 8 <= avail) {
                w = k ? rd64le(msg + off) & (~0ULL >> (64 - 8 * k)) : 0;
            } else {
                w = 0;
                for (size_t b = 0; b < k; b++)
                    w |= (uint64_t)msg[off + b] << (8 * b);
            }
            w |= (uint64_t)0x06 << (8 * k);   /* SHA3's domain byte (FIPS 202: 01 || pad10*1) */
        }
        wr64le(buf + off, w);
    }
}

/* n messages of one length `len` (any length; proof segments), digest i to outs[i]: SHA3 runs
 * 4 or 8 sponges at once when the CPU has the lanes. */
void beat_hash_many_equal(int alg, const uint8_t *const *msgs, size_t len, size_t n,
                          uint8_t *const *outs);

int beat_hash_simd(void);               /* level beat_hash_many uses now: 0, 2 or 3 */
const char *beat_hash_simd_name(void);  /* "scalar", "avx2x4", "avx512x8" */
int beat_hash_simd_max(void);           /* best level this CPU supports and that passed its
                                           known-answer self-test (ignores BEAT_SIMD) */
/* Select a level (0 scalar, 2 AVX2, 3 AVX-512), clamped to what the CPU supports (a level the
 * CPU lacks falls back to the best lower one); returns the level in force. */
int beat_hash_set_simd(int level);

#ifdef __cplusplus
}
#endif

#endif /* BEAT_HASH_H */
