/* beat_hash: SHA3-256 and BLAKE2b-256 without OpenSSL. See beat_hash.h.
 *
 * Keccak-f[1600] is written once, as a round macro over abstract lane operations (KT, KXOR,
 * KXOR5, KROL, KCHI, KIOTA), and instantiated three times: scalar uint64_t, AVX2 __m256i
 * (4 messages) and AVX-512F __m512i (8 messages, vprolq + vpternlogq). The SIMD instances are
 * compiled with __attribute__((target(...))), so no -march flag is needed, and are selected at
 * run time with __builtin_cpu_supports.
 */
#include "beat_hash.h"

#include <stdlib.h>
#include <string.h>

/* -DBEAT_HASH_PORTABLE builds the plain C code only (as on non-x86 machines; used by the tests). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(BEAT_HASH_PORTABLE)
#define BEAT_HASH_X86 1
#include <immintrin.h>
#else
#define BEAT_HASH_X86 0
#endif

/* ------------------------------------------------------------------------------------------ */
/* Little-endian loads and stores (memcpy: no unaligned dereferences).                        */

static inline uint64_t ld64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static inline void st64(uint8_t *p, uint64_t v)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    memcpy(p, &v, 8);
}

static inline uint64_t rol64(uint64_t x, unsigned n) { return (x << n) | (x >> (64 - n)); }

/* ------------------------------------------------------------------------------------------ */
/* Keccak-f[1600]                                                                              */

static const uint64_t KECCAK_RC[24] = {
    0x0000000000000001ULL, 0x0000000000008082ULL, 0x800000000000808aULL, 0x8000000080008000ULL,
    0x000000000000808bULL, 0x0000000080000001ULL, 0x8000000080008081ULL, 0x8000000000008009ULL,
    0x000000000000008aULL, 0x0000000000000088ULL, 0x0000000080008009ULL, 0x000000008000000aULL,
    0x000000008000808bULL, 0x800000000000008bULL, 0x8000000000008089ULL, 0x8000000000008003ULL,
    0x8000000000008002ULL, 0x8000000000000080ULL, 0x000000000000800aULL, 0x800000008000000aULL,
    0x8000000080008081ULL, 0x8000000000008080ULL, 0x0000000080000001ULL, 0x8000000080008008ULL,
};

/* Lane names: row y in {b,g,k,m,s} (y = 0..4), column x in {a,e,i,o,u} (x = 0..4);
 * lane index x + 5y. One round: theta, rho, pi, chi, iota from state A into state E. */
#define K_ROW(E, r, B0, B1, B2, B3, B4)            \
    E##r##a = KCHI(B0, B1, B2);                    \
    E##r##e = KCHI(B1, B2, B3);                    \
    E##r##i = KCHI(B2, B3, B4);                    \
    E##r##o = KCHI(B3, B4, B0);                    \
    E##r##u = KCHI(B4, B0, B1)

#define K_ROUND(A, E, rc)                                                              \
    do {                                                                               \
        KT Ca = KXOR5(A##ba, A##ga, A##ka, A##ma, A##sa);                              \
        KT Ce = KXOR5(A##be, A##ge, A##ke, A##me, A##se);                              \
        KT Ci = KXOR5(A##bi, A##gi, A##ki, A##mi, A##si);                              \
        KT Co = KXOR5(A##bo, A##go, A##ko, A##mo, A##so);                              \
        KT Cu = KXOR5(A##bu, A##gu, A##ku, A##mu, A##su);                              \
        KT Da = KXOR(Cu, KROL(Ce, 1));                                                 \
        KT De = KXOR(Ca, KROL(Ci, 1));                                                 \
        KT Di = KXOR(Ce, KROL(Co, 1));                                                 \
        KT Do = KXOR(Ci, KROL(Cu, 1));                                                 \
        KT Du = KXOR(Co, KROL(Ca, 1));                                                 \
        KT B0, B1, B2, B3, B4;                                                         \
        B0 = KXOR(A##ba, Da);                                                          \
        B1 = KROL(KXOR(A##ge, De), 44);                                                \
        B2 = KROL(KXOR(A##ki, Di), 43);                                                \
        B3 = KROL(KXOR(A##mo, Do), 21);                                                \
        B4 = KROL(KXOR(A##su, Du), 14);                                                \
        K_ROW(E, b, B0, B1, B2, B3, B4);                                               \
        E##ba = KIOTA(E##ba, rc);                                                      \
        B0 = KROL(KXOR(A##bo, Do), 28);                                                \
        B1 = KROL(KXOR(A##gu, Du), 20);                                                \
        B2 = KROL(KXOR(A##ka, Da), 3);                                                 \
        B3 = KROL(KXOR(A##me, De), 45);                                                \
        B4 = KROL(KXOR(A##si, Di), 61);                                                \
        K_ROW(E, g, B0, B1, B2, B3, B4);                                               \
        B0 = KROL(KXOR(A##be, De), 1);                                                 \
        B1 = KROL(KXOR(A##gi, Di), 6);                                                 \
        B2 = KROL(KXOR(A##ko, Do), 25);                                                \
        B3 = KROL(KXOR(A##mu, Du), 8);                                                 \
        B4 = KROL(KXOR(A##sa, Da), 18);                                                \
        K_ROW(E, k, B0, B1, B2, B3, B4);                                               \
        B0 = KROL(KXOR(A##bu, Du), 27);                                                \
        B1 = KROL(KXOR(A##ga, Da), 36);                                                \
        B2 = KROL(KXOR(A##ke, De), 10);                                                \
        B3 = KROL(KXOR(A##mi, Di), 15);                                                \
        B4 = KROL(KXOR(A##so, Do), 56);                                                \
        K_ROW(E, m, B0, B1, B2, B3, B4);                                               \
        B0 = KROL(KXOR(A##bi, Di), 62);                                                \
        B1 = KROL(KXOR(A##go, Do), 55);                                                \
        B2 = KROL(KXOR(A##ku, Du), 39);                                                \
        B3 = KROL(KXOR(A##ma, Da), 41);                                                \
        B4 = KROL(KXOR(A##se, De), 2);                                                 \
        K_ROW(E, s, B0, B1, B2, B3, B4);                                               \
    } while (0)

#define K_DECL(A)                                                                      \
    KT A##ba, A##be, A##bi, A##bo, A##bu, A##ga, A##ge, A##gi, A##go, A##gu,           \
       A##ka, A##ke, A##ki, A##ko, A##ku, A##ma, A##me, A##mi, A##mo, A##mu,           \
       A##sa, A##se, A##si, A##so, A##su

#define K_MOVE(A, s, OP)                                                               \
    OP(A##ba, s[0]);  OP(A##be, s[1]);  OP(A##bi, s[2]);  OP(A##bo, s[3]);             \
    OP(A##bu, s[4]);  OP(A##ga, s[5]);  OP(A##ge, s[6]);  OP(A##gi, s[7]);             \
    OP(A##go, s[8]);  OP(A##gu, s[9]);  OP(A##ka, s[10]); OP(A##ke, s[11]);            \
    OP(A##ki, s[12]); OP(A##ko, s[13]); OP(A##ku, s[14]); OP(A##ma, s[15]);            \
    OP(A##me, s[16]); OP(A##mi, s[17]); OP(A##mo, s[18]); OP(A##mu, s[19]);            \
    OP(A##sa, s[20]); OP(A##se, s[21]); OP(A##si, s[22]); OP(A##so, s[23]);            \
    OP(A##su, s[24])
#define K_GET(v, m) (v) = (m)
#define K_PUT(v, m) (m) = (v)

/* The same with six rounds per iteration: gcc schedules the AVX2 instance better so (XKCP's best
 * AVX2 configuration also unrolls six). */
#define K_PERMUTE6(s)                                                                  \
    do {                                                                               \
        K_DECL(A);                                                                     \
        K_DECL(E);                                                                     \
        K_MOVE(A, s, K_GET);                                                           \
        for (int rnd_ = 0; rnd_ < 24; rnd_ += 6) {                                   \
            K_ROUND(A, E, KECCAK_RC[rnd_]);                                            \
            K_ROUND(E, A, KECCAK_RC[rnd_ + 1]);                                        \
            K_ROUND(A, E, KECCAK_RC[rnd_ + 2]);                                        \
            K_ROUND(E, A, KECCAK_RC[rnd_ + 3]);                                        \
            K_ROUND(A, E, KECCAK_RC[rnd_ + 4]);                                        \
            K_ROUND(E, A, KECCAK_RC[rnd_ + 5]);                                        \
        }                                                                              \
        K_MOVE(A, s, K_PUT);                                                           \
    } while (0)

/* The 24 rounds on an array s[25] of KT; two rounds (A -> E -> A) per iteration. */
#define K_PERMUTE(s)                                                                   \
    do {                                                                               \
        K_DECL(A);                                                                     \
        K_DECL(E);                                                                     \
        K_MOVE(A, s, K_GET);                                                           \
        for (int rnd_ = 0; rnd_ < 24; rnd_ += 2) {                                   \
            K_ROUND(A, E, KECCAK_RC[rnd_]);                                            \
            K_ROUND(E, A, KECCAK_RC[rnd_ + 1]);                                        \
        }                                                                              \
        K_MOVE(A, s, K_PUT);                                                           \
    } while (0)

/* ---- scalar instance ---- */
#define KT uint64_t
#define KXOR(a, b) ((a) ^ (b))
#define KXOR5(a, b, c, d, e) ((a) ^ (b) ^ (c) ^ (d) ^ (e))
#define KROL(a, n) rol64((a), (n))
#define KCHI(a, b, c) ((a) ^ (~(b) & (c)))
#define KIOTA(a, rc) ((a) ^ (rc))

static void keccak_f1600_generic(uint64_t s[25])
{
    K_PERMUTE(s);
}

#if BEAT_HASH_X86
/* The same code with BMI1 andn (chi) and BMI2 rorx (non-destructive rotates): ~15-20% faster. */
__attribute__((target("bmi,bmi2"))) static void keccak_f1600_bmi(uint64_t s[25])
{
    K_PERMUTE(s);
}

static int g_has_bmi = -1;

static void keccak_f1600(uint64_t s[25])
{
    int bmi = __atomic_load_n(&g_has_bmi, __ATOMIC_RELAXED);
    if (__builtin_expect(bmi < 0, 0)) {
        __builtin_cpu_init();
        bmi = __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
        __atomic_store_n(&g_has_bmi, bmi, __ATOMIC_RELAXED);
    }
    if (bmi)
        keccak_f1600_bmi(s);
    else
        keccak_f1600_generic(s);
}
#else
#define keccak_f1600 keccak_f1600_generic
#endif

#undef KT
#undef KXOR
#undef KXOR5
#undef KROL
#undef KCHI
#undef KIOTA

/* ------------------------------------------------------------------------------------------ */
/* SHA3-256 (rate 136 bytes = 17 lanes, domain padding 0x06 ... 0x80)                         */

#define SHA3_RATE 136
#define SHA3_LANES 17

static inline void sha3_absorb_block(uint64_t s[25], const uint8_t *p)
{
    for (int j = 0; j < SHA3_LANES; j++)
        s[j] ^= ld64(p + 8 * j);
    keccak_f1600(s);
}

static inline void sha3_squeeze32(const uint64_t s[25], uint8_t out[32])
{
    st64(out, s[0]);
    st64(out + 8, s[1]);
    st64(out + 16, s[2]);
    st64(out + 24, s[3]);
}

/* Pad the final partial block (len < 136 bytes at p) into a state that has absorbed the rest. */
static inline void sha3_final_block(uint64_t s[25], const uint8_t *p, size_t len)
{
    uint8_t blk[SHA3_RATE];
    memset(blk, 0, sizeof blk);
    memcpy(blk, p, len);
    blk[len] ^= 0x06;
    blk[SHA3_RATE - 1] ^= 0x80;
    sha3_absorb_block(s, blk);
}

/* One-shot SHA3-256 of one short message (< 136 bytes). */
static void sha3_short(const uint8_t *p, size_t len, uint8_t out[32])
{
    uint64_t s[25];
    memset(s, 0, sizeof s);
    sha3_final_block(s, p, len);
    sha3_squeeze32(s, out);
}

static void sha3_oneshot(const uint8_t *p, size_t len, uint8_t out[32])
{
    uint64_t s[25];
    memset(s, 0, sizeof s);
    while (len >= SHA3_RATE) {
        sha3_absorb_block(s, p);
        p += SHA3_RATE;
        len -= SHA3_RATE;
    }
    sha3_final_block(s, p, len);
    sha3_squeeze32(s, out);
}

/* ------------------------------------------------------------------------------------------ */
/* BLAKE2b (RFC 7693), digest length 32, no key                                               */

static const uint64_t BLAKE2B_IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

static const uint8_t BLAKE2B_SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

static inline uint64_t ror64(uint64_t x, unsigned n) { return (x >> n) | (x << (64 - n)); }

#define B2_G(a, b, c, d, x, y)          \
    do {                                \
        a = a + b + (x);                \
        d = ror64(d ^ a, 32);           \
        c = c + d;                      \
        b = ror64(b ^ c, 24);           \
        a = a + b + (y);                \
        d = ror64(d ^ a, 16);           \
        c = c + d;                      \
        b = ror64(b ^ c, 63);           \
    } while (0)

static void blake2b_compress(uint64_t h[8], const uint8_t *block, uint64_t t0, uint64_t t1,
                             int last)
{
    uint64_t m[16];
    for (int i = 0; i < 16; i++)
        m[i] = ld64(block + 8 * i);
    uint64_t v0 = h[0], v1 = h[1], v2 = h[2], v3 = h[3];
    uint64_t v4 = h[4], v5 = h[5], v6 = h[6], v7 = h[7];
    uint64_t v8 = BLAKE2B_IV[0], v9 = BLAKE2B_IV[1], v10 = BLAKE2B_IV[2], v11 = BLAKE2B_IV[3];
    uint64_t v12 = BLAKE2B_IV[4] ^ t0, v13 = BLAKE2B_IV[5] ^ t1;
    uint64_t v14 = last ? ~BLAKE2B_IV[6] : BLAKE2B_IV[6], v15 = BLAKE2B_IV[7];
    for (int r = 0; r < 12; r++) {
        const uint8_t *s = BLAKE2B_SIGMA[r];
        B2_G(v0, v4, v8, v12, m[s[0]], m[s[1]]);
        B2_G(v1, v5, v9, v13, m[s[2]], m[s[3]]);
        B2_G(v2, v6, v10, v14, m[s[4]], m[s[5]]);
        B2_G(v3, v7, v11, v15, m[s[6]], m[s[7]]);
        B2_G(v0, v5, v10, v15, m[s[8]], m[s[9]]);
        B2_G(v1, v6, v11, v12, m[s[10]], m[s[11]]);
        B2_G(v2, v7, v8, v13, m[s[12]], m[s[13]]);
        B2_G(v3, v4, v9, v14, m[s[14]], m[s[15]]);
    }
    h[0] ^= v0 ^ v8;
    h[1] ^= v1 ^ v9;
    h[2] ^= v2 ^ v10;
    h[3] ^= v3 ^ v11;
    h[4] ^= v4 ^ v12;
    h[5] ^= v5 ^ v13;
    h[6] ^= v6 ^ v14;
    h[7] ^= v7 ^ v15;
}

static inline void blake2b_h0(uint64_t h[8])
{
    memcpy(h, BLAKE2B_IV, sizeof BLAKE2B_IV);
    /* parameter block: digest_length = 32, key_length = 0, fanout = 1, depth = 1 */
    h[0] ^= 0x01010000ULL ^ (uint64_t)BEAT_HASH_DIGEST_LEN;
}

static inline void blake2b_out(const uint64_t h[8], uint8_t out[32])
{
    st64(out, h[0]);
    st64(out + 8, h[1]);
    st64(out + 16, h[2]);
    st64(out + 24, h[3]);
}

static void blake2b_oneshot(const uint8_t *p, size_t len, uint8_t out[32])
{
    uint64_t h[8];
    uint8_t blk[BEAT_BLAKE2B_BLOCK];
    uint64_t t0 = 0, t1 = 0;
    blake2b_h0(h);
    while (len > BEAT_BLAKE2B_BLOCK) {
        t0 += BEAT_BLAKE2B_BLOCK;
        t1 += (t0 < BEAT_BLAKE2B_BLOCK);
        blake2b_compress(h, p, t0, t1, 0);
        p += BEAT_BLAKE2B_BLOCK;
        len -= BEAT_BLAKE2B_BLOCK;
    }
    memset(blk, 0, sizeof blk);
    memcpy(blk, p, len);
    t0 += len;
    t1 += (t0 < len);
    blake2b_compress(h, blk, t0, t1, 1);
    blake2b_out(h, out);
}

/* ------------------------------------------------------------------------------------------ */
/* Streaming API                                                                              */

void beat_hash_init(beat_hash_ctx *c, int alg)
{
    memset(c, 0, sizeof *c);
    c->alg = (alg == BEAT_HASH_BLAKE2B_256) ? BEAT_HASH_BLAKE2B_256 : BEAT_HASH_SHA3_256;
    if (c->alg == BEAT_HASH_BLAKE2B_256)
        blake2b_h0(c->u.blake2b.h);
}

static inline void blake2b_count(beat_hash_ctx *c, uint64_t n)
{
    c->u.blake2b.t[0] += n;
    c->u.blake2b.t[1] += (c->u.blake2b.t[0] < n);
}

void beat_hash_update(beat_hash_ctx *c, const void *data, size_t len)
{
    const uint8_t *p = (const uint8_t *)data;
    if (len == 0)
        return;
    if (c->alg == BEAT_HASH_BLAKE2B_256) {
        /* The last block must stay buffered until final(): compress only when more follows. */
        if (c->pos + len > BEAT_BLAKE2B_BLOCK) {
            if (c->pos) {
                size_t take = BEAT_BLAKE2B_BLOCK - c->pos;
                memcpy(c->buf + c->pos, p, take);
                p += take;
                len -= take;
                blake2b_count(c, BEAT_BLAKE2B_BLOCK);
                blake2b_compress(c->u.blake2b.h, c->buf, c->u.blake2b.t[0], c->u.blake2b.t[1], 0);
                c->pos = 0;
            }
            while (len > BEAT_BLAKE2B_BLOCK) {
                blake2b_count(c, BEAT_BLAKE2B_BLOCK);
                blake2b_compress(c->u.blake2b.h, p, c->u.blake2b.t[0], c->u.blake2b.t[1], 0);
                p += BEAT_BLAKE2B_BLOCK;
                len -= BEAT_BLAKE2B_BLOCK;
            }
        }
        memcpy(c->buf + c->pos, p, len);
        c->pos += (uint32_t)len;
        return;
    }
    /* SHA3: buffer holds < 136 bytes */
    if (c->pos) {
        size_t take = SHA3_RATE - c->pos;
        if (take > len)
            take = len;
        memcpy(c->buf + c->pos, p, take);
        c->pos += (uint32_t)take;
        p += take;
        len -= take;
        if (c->pos < SHA3_RATE)
            return;
        sha3_absorb_block(c->u.keccak, c->buf);
        c->pos = 0;
    }
    while (len >= SHA3_RATE) {
        sha3_absorb_block(c->u.keccak, p);
        p += SHA3_RATE;
        len -= SHA3_RATE;
    }
    memcpy(c->buf, p, len);
    c->pos = (uint32_t)len;
}

void beat_hash_final(beat_hash_ctx *c, uint8_t out[32])
{
    if (c->alg == BEAT_HASH_BLAKE2B_256) {
        memset(c->buf + c->pos, 0, BEAT_BLAKE2B_BLOCK - c->pos);
        blake2b_count(c, c->pos);
        blake2b_compress(c->u.blake2b.h, c->buf, c->u.blake2b.t[0], c->u.blake2b.t[1], 1);
        blake2b_out(c->u.blake2b.h, out);
    } else {
        sha3_final_block(c->u.keccak, c->buf, c->pos);
        sha3_squeeze32(c->u.keccak, out);
    }
    memset(c, 0, sizeof *c);
}

void beat_hash(int alg, const void *data, size_t len, uint8_t out[32])
{
    if (alg == BEAT_HASH_BLAKE2B_256)
        blake2b_oneshot((const uint8_t *)data, len, out);
    else
        sha3_oneshot((const uint8_t *)data, len, out);
}

/* ------------------------------------------------------------------------------------------ */
/* Multi-lane single-block SHA3-256                                                           */

/* Pad message i of a group into its block and transpose it into lanes[j*W + i] (j < 17).
 * A message that is too long for one block (or an unused lane) gets the empty message. */
static inline void sha3_pack_lane(uint64_t *lanes, int W, int i, const uint8_t *msg, size_t len)
{
    uint8_t blk[SHA3_RATE];
    memset(blk, 0, sizeof blk);
    if (msg != NULL && len < SHA3_RATE)
        memcpy(blk, msg, len);
    else
        len = 0;
    blk[len] ^= 0x06;
    blk[SHA3_RATE - 1] ^= 0x80;
    for (int j = 0; j < SHA3_LANES; j++)
        lanes[j * W + i] = ld64(blk + 8 * j);
}

static inline void sha3_unpack_lane(const uint64_t *lanes, int W, int i, uint8_t *out)
{
    for (int j = 0; j < 4; j++)
        st64(out + 8 * j, lanes[j * W + i]);
}

#if BEAT_HASH_X86

/* ---- AVX2 instance: 4 states, one per 64-bit element ---- */
#define KT __m256i
#define KXOR(a, b) _mm256_xor_si256((a), (b))
#define KXOR5(a, b, c, d, e) KXOR(KXOR(KXOR(a, b), KXOR(c, d)), (e))
/* Rotations by 8 and 56 move whole bytes: one byte shuffle instead of two shifts and an or (as
 * in XKCP's KeccakP-1600-times4-SIMD256); n is a constant: the choice is made at compile time. */
#define KROL_SHIFT(a, n) \
    _mm256_or_si256(_mm256_slli_epi64((a), (n)), _mm256_srli_epi64((a), 64 - (n)))
#define KROL_BYTES(a, b0, b1, b2, b3, b4, b5, b6, b7)                                           \
    _mm256_shuffle_epi8((a), _mm256_setr_epi8(b0, b1, b2, b3, b4, b5, b6, b7, b0 + 8, b1 + 8,   \
                                              b2 + 8, b3 + 8, b4 + 8, b5 + 8, b6 + 8, b7 + 8,   \
                                              b0, b1, b2, b3, b4, b5, b6, b7, b0 + 8, b1 + 8,   \
                                              b2 + 8, b3 + 8, b4 + 8, b5 + 8, b6 + 8, b7 + 8))
#define KROL(a, n)                                                                              \
    ((n) == 8 ? KROL_BYTES(a, 7, 0, 1, 2, 3, 4, 5, 6)                                           \
              : (n) == 56 ? KROL_BYTES(a, 1, 2, 3, 4, 5, 6, 7, 0) : KROL_SHIFT(a, n))
#define KCHI(a, b, c) _mm256_xor_si256((a), _mm256_andnot_si256((b), (c)))
#define KIOTA(a, rc) _mm256_xor_si256((a), _mm256_set1_epi64x((long long)(rc)))

/* 1,024 TSC ticks for the four states on this project's Zen 3 (1,056 with two rounds per
 * iteration and shifts only), the same as XKCP's best AVX2 build (u6) measured beside it
 * (benchmarks/keccak.c): 184 vector operations a round on four vector pipes, ~1,100 cycles, is
 * the bound of this instruction set. */
__attribute__((target("avx2"))) static inline __attribute__((always_inline)) void
keccak_x4_permute_inline(__m256i s[25])
{
    K_PERMUTE6(s);
}

__attribute__((target("avx2"))) static void keccak_x4_permute(__m256i s[25])
{
    keccak_x4_permute_inline(s);
}

/* Word j of a short message's padded block (the 0x06 domain byte included, the final 0x80 not),
 * read from the message itself: a block assembled in memory with stores of other sizes and read
 * back as words or vectors stalls on store forwarding. */
static inline uint64_t sha3_block_word(const uint8_t *m, size_t len, size_t j)
{
    size_t off = 8 * j;
    if (off + 8 <= len)
        return ld64(m + off);
    if (off > len)
        return 0;
    uint64_t w = 0;
    for (size_t b = 0; off + b < len; b++)
        w |= (uint64_t)m[off + b] << (8 * b);
    return w | (0x06ULL << (8 * (len - off)));
}

/* n <= 4 messages; lanes n..3 are dummies (the empty message, as sha3_pack_lane). */
__attribute__((target("avx2"))) static void sha3_x4(const uint8_t *const msg[4],
                                                    const size_t len[4], uint8_t *const out[4],
                                                    int n)
{
    /* The state is built in registers, word by word, from the messages: only the words that hold
     * message bytes or the 0x06 byte are read, the rest is zero; 0x80 goes into the last word of
     * the block of all four at once. Same blocks as sha3_pack_lane. */
    const uint8_t *m[4];
    size_t l[4], words = 1;
    uint64_t lanes[4 * 4] __attribute__((aligned(32)));
    __m256i s[25];
    for (int i = 0; i < 4; i++) {
        m[i] = i < n ? msg[i] : NULL;
        l[i] = i < n ? len[i] : 0;
        if (m[i] == NULL || l[i] >= SHA3_RATE)
            l[i] = 0;
        if (l[i] / 8 + 1 > words)
            words = l[i] / 8 + 1;
    }
    /* every word set once, with constant indices: the state stays in registers (the permutation
     * is inlined here), no memset of the array */
#define W_(j) (j) < words ? _mm256_set_epi64x((long long)sha3_block_word(m[3], l[3], (j)),        \
                                              (long long)sha3_block_word(m[2], l[2], (j)),        \
                                              (long long)sha3_block_word(m[1], l[1], (j)),        \
                                              (long long)sha3_block_word(m[0], l[0], (j)))        \
                          : _mm256_setzero_si256()
    s[0] = W_(0); s[1] = W_(1); s[2] = W_(2); s[3] = W_(3); s[4] = W_(4); s[5] = W_(5);
    s[6] = W_(6); s[7] = W_(7); s[8] = W_(8); s[9] = W_(9); s[10] = W_(10); s[11] = W_(11);
    s[12] = W_(12); s[13] = W_(13); s[14] = W_(14); s[15] = W_(15);
    s[16] = _mm256_xor_si256(W_(16), _mm256_set1_epi64x((long long)0x8000000000000000ULL));
#undef W_
    for (int j = SHA3_LANES; j < 25; j++)
        s[j] = _mm256_setzero_si256();
    keccak_x4_permute_inline(s);
    for (int j = 0; j < 4; j++)
        _mm256_store_si256((__m256i *)(lanes + 4 * j), s[j]);
    for (int i = 0; i < n; i++)
        sha3_unpack_lane(lanes, 4, i, out[i]);
}

/* Four messages padded in their buffers (beat_padded_put: message, 0x06, zeros; BEAT_PADDED_MSG
 * bytes): the state's first 12 words are three 32-byte loads per message transposed 4x4 in
 * registers, the digests transposed back and stored whole. sha3_x4 builds each word from four
 * scalar reads (and a byte loop for the word the message ends in): ~20 ns a message more. */
__attribute__((target("avx2"))) static void sha3_x4_padded(const uint8_t *const blk[4],
                                                           uint8_t *const out[4])
{
    __m256i s[25];
#define LOAD_GROUP(g)                                                                           \
    do {                                                                                        \
        __m256i a0 = _mm256_loadu_si256((const __m256i *)(blk[0] + 32 * (g)));                 \
        __m256i a1 = _mm256_loadu_si256((const __m256i *)(blk[1] + 32 * (g)));                 \
        __m256i a2 = _mm256_loadu_si256((const __m256i *)(blk[2] + 32 * (g)));                 \
        __m256i a3 = _mm256_loadu_si256((const __m256i *)(blk[3] + 32 * (g)));                 \
        __m256i t0 = _mm256_unpacklo_epi64(a0, a1), t1 = _mm256_unpackhi_epi64(a0, a1);        \
        __m256i t2 = _mm256_unpacklo_epi64(a2, a3), t3 = _mm256_unpackhi_epi64(a2, a3);        \
        s[4 * (g) + 0] = _mm256_permute2x128_si256(t0, t2, 0x20);                               \
        s[4 * (g) + 1] = _mm256_permute2x128_si256(t1, t3, 0x20);                               \
        s[4 * (g) + 2] = _mm256_permute2x128_si256(t0, t2, 0x31);                               \
        s[4 * (g) + 3] = _mm256_permute2x128_si256(t1, t3, 0x31);                               \
    } while (0)
    LOAD_GROUP(0);
    LOAD_GROUP(1);
    LOAD_GROUP(2);
#undef LOAD_GROUP
    for (int j = 12; j < 25; j++)
        s[j] = _mm256_setzero_si256();
    s[SHA3_LANES - 1] = _mm256_set1_epi64x((long long)0x8000000000000000ULL);
    keccak_x4_permute_inline(s);
    __m256i t0 = _mm256_unpacklo_epi64(s[0], s[1]), t1 = _mm256_unpackhi_epi64(s[0], s[1]);
    __m256i t2 = _mm256_unpacklo_epi64(s[2], s[3]), t3 = _mm256_unpackhi_epi64(s[2], s[3]);
    _mm256_storeu_si256((__m256i *)out[0], _mm256_permute2x128_si256(t0, t2, 0x20));
    _mm256_storeu_si256((__m256i *)out[1], _mm256_permute2x128_si256(t1, t3, 0x20));
    _mm256_storeu_si256((__m256i *)out[2], _mm256_permute2x128_si256(t0, t2, 0x31));
    _mm256_storeu_si256((__m256i *)out[3], _mm256_permute2x128_si256(t1, t3, 0x31));
}

/* n <= 4 messages of the same length `len` (any length): the full sponge, 4 lanes at once. */
__attribute__((target("avx2"))) static void sha3_x4_long(const uint8_t *const msg[4], size_t len,
                                                         uint8_t *const out[4], int n)
{
    uint64_t lanes[SHA3_LANES * 4] __attribute__((aligned(32)));
    __m256i s[25];
    for (int j = 0; j < 25; j++)
        s[j] = _mm256_setzero_si256();
    size_t off = 0;
    for (; len - off >= SHA3_RATE; off += SHA3_RATE) {
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < SHA3_LANES; j++)
                lanes[j * 4 + i] = i < n ? ld64(msg[i] + off + 8 * j) : 0;
        for (int j = 0; j < SHA3_LANES; j++)
            s[j] = _mm256_xor_si256(s[j], _mm256_load_si256((const __m256i *)(lanes + 4 * j)));
        keccak_x4_permute(s);
    }
    for (int i = 0; i < 4; i++)
        sha3_pack_lane(lanes, 4, i, i < n ? msg[i] + off : NULL, i < n ? len - off : 0);
    for (int j = 0; j < SHA3_LANES; j++)
        s[j] = _mm256_xor_si256(s[j], _mm256_load_si256((const __m256i *)(lanes + 4 * j)));
    keccak_x4_permute(s);
    for (int j = 0; j < 4; j++)
        _mm256_store_si256((__m256i *)(lanes + 4 * j), s[j]);
    for (int i = 0; i < n; i++)
        sha3_unpack_lane(lanes, 4, i, out[i]);
}

#undef KT
#undef KXOR
#undef KXOR5
#undef KROL
#undef KROL_SHIFT
#undef KROL_BYTES
#undef KCHI
#undef KIOTA

/* ---- BLAKE2b, 4 single-block messages at once (AVX2): one message per 64-bit element ---- */
__attribute__((target("avx2"))) static inline __m256i b2_ror32(__m256i x)
{
    return _mm256_shuffle_epi32(x, _MM_SHUFFLE(2, 3, 0, 1));
}
__attribute__((target("avx2"))) static inline __m256i b2_ror24(__m256i x)
{
    const __m256i r = _mm256_setr_epi8(3, 4, 5, 6, 7, 0, 1, 2, 11, 12, 13, 14, 15, 8, 9, 10,
                                       3, 4, 5, 6, 7, 0, 1, 2, 11, 12, 13, 14, 15, 8, 9, 10);
    return _mm256_shuffle_epi8(x, r);
}
__attribute__((target("avx2"))) static inline __m256i b2_ror16(__m256i x)
{
    const __m256i r = _mm256_setr_epi8(2, 3, 4, 5, 6, 7, 0, 1, 10, 11, 12, 13, 14, 15, 8, 9,
                                       2, 3, 4, 5, 6, 7, 0, 1, 10, 11, 12, 13, 14, 15, 8, 9);
    return _mm256_shuffle_epi8(x, r);
}
__attribute__((target("avx2"))) static inline __m256i b2_ror63(__m256i x)
{
    return _mm256_or_si256(_mm256_srli_epi64(x, 63), _mm256_add_epi64(x, x));
}

#define B2X_G(a, b, c, d, x, y)                                            \
    do {                                                                   \
        a = _mm256_add_epi64(_mm256_add_epi64(a, b), (x));                 \
        d = b2_ror32(_mm256_xor_si256(d, a));                              \
        c = _mm256_add_epi64(c, d);                                        \
        b = b2_ror24(_mm256_xor_si256(b, c));                              \
        a = _mm256_add_epi64(_mm256_add_epi64(a, b), (y));                 \
        d = b2_ror16(_mm256_xor_si256(d, a));                              \
        c = _mm256_add_epi64(c, d);                                        \
        b = b2_ror63(_mm256_xor_si256(b, c));                              \
    } while (0)

/* One compression of 4 states; m holds each lane's block, t each lane's byte count so far. */
__attribute__((target("avx2"))) static void b2x4_compress(__m256i h[8], const __m256i m[16],
                                                          __m256i t, int last)
{
    __m256i v[16];
    for (int j = 0; j < 8; j++) {
        v[j] = h[j];
        v[8 + j] = _mm256_set1_epi64x((long long)BLAKE2B_IV[j]);
    }
    v[12] = _mm256_xor_si256(v[12], t);   /* byte counts stay far below 2^64: t1 = 0 */
    if (last)
        v[14] = _mm256_xor_si256(v[14], _mm256_set1_epi64x(-1));
    for (int r = 0; r < 12; r++) {
        const uint8_t *s = BLAKE2B_SIGMA[r];
        B2X_G(v[0], v[4], v[8], v[12], m[s[0]], m[s[1]]);
        B2X_G(v[1], v[5], v[9], v[13], m[s[2]], m[s[3]]);
        B2X_G(v[2], v[6], v[10], v[14], m[s[4]], m[s[5]]);
        B2X_G(v[3], v[7], v[11], v[15], m[s[6]], m[s[7]]);
        B2X_G(v[0], v[5], v[10], v[15], m[s[8]], m[s[9]]);
        B2X_G(v[1], v[6], v[11], v[12], m[s[10]], m[s[11]]);
        B2X_G(v[2], v[7], v[8], v[13], m[s[12]], m[s[13]]);
        B2X_G(v[3], v[4], v[9], v[14], m[s[14]], m[s[15]]);
    }
    for (int j = 0; j < 8; j++)
        h[j] = _mm256_xor_si256(h[j], _mm256_xor_si256(v[j], v[8 + j]));
}

/* Lane i's block: `l` bytes from p (zero-padded), transposed into words[j*4 + i]. */
static inline void b2x4_pack(uint64_t *words, int i, const uint8_t *p, size_t l)
{
    uint8_t blk[BEAT_BLAKE2B_BLOCK];
    memset(blk, 0, sizeof blk);
    if (l)
        memcpy(blk, p, l);
    for (int j = 0; j < 16; j++)
        words[j * 4 + i] = ld64(blk + 8 * j);
}

__attribute__((target("avx2"))) static void b2x4_init(__m256i h[8])
{
    uint64_t h0[8];
    blake2b_h0(h0);
    for (int j = 0; j < 8; j++)
        h[j] = _mm256_set1_epi64x((long long)h0[j]);
}

__attribute__((target("avx2"))) static void b2x4_out(const __m256i h[8], uint8_t *const out[4],
                                                     int n)
{
    uint64_t words[4 * 4] __attribute__((aligned(32)));
    for (int j = 0; j < 4; j++)
        _mm256_store_si256((__m256i *)(words + 4 * j), h[j]);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < 4; j++)
            st64(out[i] + 8 * j, words[j * 4 + i]);
}

/* n <= 4 messages of at most one block (128 bytes) each; lanes n..3 are dummies (as is a longer
 * message: the caller redoes those on the scalar path). */
__attribute__((target("avx2"))) static void blake2b_x4(const uint8_t *const msg[4],
                                                       const size_t len[4], uint8_t *const out[4],
                                                       int n)
{
    uint64_t words[16 * 4] __attribute__((aligned(32)));
    uint64_t tl[4] __attribute__((aligned(32)));
    __m256i m[16], h[8];
    for (int i = 0; i < 4; i++) {
        size_t l = i < n ? len[i] : 0;
        if (l > BEAT_BLAKE2B_BLOCK)
            l = 0;
        b2x4_pack(words, i, i < n ? msg[i] : NULL, l);
        tl[i] = l;
    }
    for (int j = 0; j < 16; j++)
        m[j] = _mm256_load_si256((const __m256i *)(words + 4 * j));
    b2x4_init(h);
    b2x4_compress(h, m, _mm256_load_si256((const __m256i *)tl), 1);
    b2x4_out(h, out, n);
}

/* n <= 4 messages of the same length `len` (any): the whole BLAKE2b, 4 lanes at once. */
__attribute__((target("avx2"))) static void blake2b_x4_long(const uint8_t *const msg[4], size_t len,
                                                            uint8_t *const out[4], int n)
{
    uint64_t words[16 * 4] __attribute__((aligned(32)));
    __m256i m[16], h[8];
    size_t off = 0;
    b2x4_init(h);
    for (;;) {
        size_t l = len - off > BEAT_BLAKE2B_BLOCK ? BEAT_BLAKE2B_BLOCK : len - off;
        int last = len - off <= BEAT_BLAKE2B_BLOCK;
        for (int i = 0; i < 4; i++)
            b2x4_pack(words, i, i < n ? msg[i] + off : NULL, i < n ? l : 0);
        for (int j = 0; j < 16; j++)
            m[j] = _mm256_load_si256((const __m256i *)(words + 4 * j));
        off += l;
        b2x4_compress(h, m, _mm256_set1_epi64x((long long)off), last);
        if (last)
            break;
    }
    b2x4_out(h, out, n);
}
#undef B2X_G

/* ---- AVX-512F instance: 8 states; vprolq for rotations, vpternlogq for theta and chi ---- */
#define KT __m512i
#define KXOR(a, b) _mm512_xor_si512((a), (b))
/* 0x96 = a ^ b ^ c */
#define KXOR5(a, b, c, d, e) _mm512_ternarylogic_epi64(_mm512_ternarylogic_epi64((a), (b), (c), 0x96), (d), (e), 0x96)
#define KROL(a, n) _mm512_rol_epi64((a), (n))
/* 0xD2 = a ^ (~b & c) */
#define KCHI(a, b, c) _mm512_ternarylogic_epi64((a), (b), (c), 0xD2)
#define KIOTA(a, rc) _mm512_xor_si512((a), _mm512_set1_epi64((long long)(rc)))

__attribute__((target("avx512f"))) static void keccak_x8_permute(__m512i s[25])
{
    K_PERMUTE(s);
}

/* n <= 8 messages; lanes n..7 are dummies. */
__attribute__((target("avx512f"))) static void sha3_x8(const uint8_t *const msg[8],
                                                       const size_t len[8], uint8_t *const out[8],
                                                       int n)
{
    uint64_t lanes[SHA3_LANES * 8] __attribute__((aligned(64)));
    __m512i s[25];
    for (int i = 0; i < 8; i++)
        sha3_pack_lane(lanes, 8, i, i < n ? msg[i] : NULL, i < n ? len[i] : 0);
    for (int j = 0; j < SHA3_LANES; j++)
        s[j] = _mm512_load_si512((const void *)(lanes + 8 * j));
    for (int j = SHA3_LANES; j < 25; j++)
        s[j] = _mm512_setzero_si512();
    keccak_x8_permute(s);
    for (int j = 0; j < 4; j++)
        _mm512_store_si512((void *)(lanes + 8 * j), s[j]);
    for (int i = 0; i < n; i++)
        sha3_unpack_lane(lanes, 8, i, out[i]);
}

/* n <= 8 messages of the same length `len`: the full sponge, 8 lanes at once. */
__attribute__((target("avx512f"))) static void sha3_x8_long(const uint8_t *const msg[8], size_t len,
                                                            uint8_t *const out[8], int n)
{
    uint64_t lanes[SHA3_LANES * 8] __attribute__((aligned(64)));
    __m512i s[25];
    for (int j = 0; j < 25; j++)
        s[j] = _mm512_setzero_si512();
    size_t off = 0;
    for (; len - off >= SHA3_RATE; off += SHA3_RATE) {
        for (int i = 0; i < 8; i++)
            for (int j = 0; j < SHA3_LANES; j++)
                lanes[j * 8 + i] = i < n ? ld64(msg[i] + off + 8 * j) : 0;
        for (int j = 0; j < SHA3_LANES; j++)
            s[j] = _mm512_xor_si512(s[j], _mm512_load_si512((const void *)(lanes + 8 * j)));
        keccak_x8_permute(s);
    }
    for (int i = 0; i < 8; i++)
        sha3_pack_lane(lanes, 8, i, i < n ? msg[i] + off : NULL, i < n ? len - off : 0);
    for (int j = 0; j < SHA3_LANES; j++)
        s[j] = _mm512_xor_si512(s[j], _mm512_load_si512((const void *)(lanes + 8 * j)));
    keccak_x8_permute(s);
    for (int j = 0; j < 4; j++)
        _mm512_store_si512((void *)(lanes + 8 * j), s[j]);
    for (int i = 0; i < n; i++)
        sha3_unpack_lane(lanes, 8, i, out[i]);
}

#undef KT
#undef KXOR
#undef KXOR5
#undef KROL
#undef KCHI
#undef KIOTA

#endif /* BEAT_HASH_X86 */

/* ------------------------------------------------------------------------------------------ */
/* SIMD level selection                                                                       */

static int g_simd_max = -1;   /* CPU capability, detected once */
static int g_simd = -1;       /* level in force */

#if BEAT_HASH_X86
/* Known-answer self-test of a SIMD level against the scalar code, run once before the level is
 * used: a lane path that disagrees (a compiler or CPU quirk, or code that could not be run where
 * it was written) is never used, since a wrong digest would be a wrong commitment. */
static int simd_selftest(int level)
{
    enum { W = 8, LONG = 3 * SHA3_RATE + 17 };
    uint8_t buf[W][LONG], want[W][32], got[W][32];
    const uint8_t *mp[W];
    size_t ml[W];
    uint8_t *op[W];
    uint32_t x = 0x2545F491u;
    for (int i = 0; i < W; i++)
        for (int k = 0; k < LONG; k++) {
            x ^= x << 13; x ^= x >> 17; x ^= x << 5;
            buf[i][k] = (uint8_t)x;
        }
    int w = level >= BEAT_SIMD_AVX512 ? 8 : 4;
    /* short messages of different lengths, then equal-length multi-block ones */
    for (int i = 0; i < w; i++) {
        mp[i] = buf[i];
        ml[i] = (size_t)(i * 19) % SHA3_RATE;
        op[i] = got[i];
        sha3_oneshot(mp[i], ml[i], want[i]);
    }
    if (level >= BEAT_SIMD_AVX512) sha3_x8(mp, ml, op, w); else sha3_x4(mp, ml, op, w);
    for (int i = 0; i < w; i++)
        if (memcmp(want[i], got[i], 32))
            return 0;
    for (int i = 0; i < w; i++)
        sha3_oneshot(mp[i], LONG, want[i]);
    if (level >= BEAT_SIMD_AVX512) sha3_x8_long(mp, LONG, op, w); else sha3_x4_long(mp, LONG, op, w);
    for (int i = 0; i < w; i++)
        if (memcmp(want[i], got[i], 32))
            return 0;
    {   /* the padded 4 lanes (AVX2 and above): lengths 0, 33, 66, 95 */
        uint8_t pad[4][BEAT_PADDED_MSG];
        const uint8_t *bp[4];
        for (int i = 0; i < 4; i++) {
            size_t len = (size_t)(i * 33) % BEAT_PADDED_MSG;
            if (i == 3)
                len = BEAT_PADDED_MSG - 1;
            beat_padded_put(pad[i], buf[i], len, len);
            bp[i] = pad[i];
            sha3_oneshot(buf[i], len, want[i]);
        }
        sha3_x4_padded(bp, op);
        for (int i = 0; i < 4; i++)
            if (memcmp(want[i], got[i], 32))
                return 0;
    }
    for (int i = 0; i < 4; i++) {   /* BLAKE2b lanes (AVX2, also used at the AVX-512 level) */
        ml[i] = (size_t)(i * 43) % (BEAT_BLAKE2B_BLOCK + 1);
        blake2b_oneshot(mp[i], ml[i], want[i]);
    }
    blake2b_x4(mp, ml, op, 4);
    for (int i = 0; i < 4; i++)
        if (memcmp(want[i], got[i], 32))
            return 0;
    for (int i = 0; i < 4; i++)
        blake2b_oneshot(mp[i], LONG, want[i]);
    blake2b_x4_long(mp, LONG, op, 4);
    for (int i = 0; i < 4; i++)
        if (memcmp(want[i], got[i], 32))
            return 0;
    return 1;
}
#endif

static int detect_max(void)
{
    int lvl = BEAT_SIMD_SCALAR;
#if BEAT_HASH_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && simd_selftest(BEAT_SIMD_AVX2))
        lvl = BEAT_SIMD_AVX2;
    if (lvl == BEAT_SIMD_AVX2 && __builtin_cpu_supports("avx512f") &&
        simd_selftest(BEAT_SIMD_AVX512))
        lvl = BEAT_SIMD_AVX512;
#endif
    return lvl;
}

static int clamp_level(int level, int max)
{
    if (level >= BEAT_SIMD_AVX512)
        level = BEAT_SIMD_AVX512;
    else if (level >= BEAT_SIMD_AVX2)
        level = BEAT_SIMD_AVX2;
    else
        level = BEAT_SIMD_SCALAR;
    if (level > max)
        level = max;
    return level;
}

int beat_hash_simd_max(void)
{
    int m = __atomic_load_n(&g_simd_max, __ATOMIC_RELAXED);
    if (m < 0) {
        m = detect_max();
        __atomic_store_n(&g_simd_max, m, __ATOMIC_RELAXED);
    }
    return m;
}

int beat_hash_simd(void)
{
    int l = __atomic_load_n(&g_simd, __ATOMIC_RELAXED);
    if (l < 0) {
        int max = beat_hash_simd_max();
        l = max;
        const char *env = getenv("BEAT_SIMD");
        if (env && *env) {
            if (!strcmp(env, "scalar") || !strcmp(env, "0"))
                l = clamp_level(BEAT_SIMD_SCALAR, max);
            else if (!strcmp(env, "avx2") || !strcmp(env, "2"))
                l = clamp_level(BEAT_SIMD_AVX2, max);
            else if (!strcmp(env, "avx512") || !strcmp(env, "3"))
                l = clamp_level(BEAT_SIMD_AVX512, max);
        }
        int expected = -1;
        /* the first caller wins; a concurrent set_simd() is not overwritten */
        if (!__atomic_compare_exchange_n(&g_simd, &expected, l, 0, __ATOMIC_RELAXED,
                                         __ATOMIC_RELAXED))
            l = expected;
    }
    return l;
}

const char *beat_hash_simd_name(void)
{
    switch (beat_hash_simd()) {
    case BEAT_SIMD_AVX512:
        return "avx512x8";
    case BEAT_SIMD_AVX2:
        return "avx2x4";
    default:
        return "scalar";
    }
}

int beat_hash_set_simd(int level)
{
    int l = clamp_level(level, beat_hash_simd_max());
    __atomic_store_n(&g_simd, l, __ATOMIC_RELAXED);
    return l;
}

/* ------------------------------------------------------------------------------------------ */
/* beat_hash_many                                                                              */

void beat_hash_many(int alg, const uint8_t *msgs, size_t stride, const uint16_t *lens, size_t n,
                    uint8_t *out, size_t out_stride)
{
    size_t i = 0;
    if (alg == BEAT_HASH_BLAKE2B_256) {
#if BEAT_HASH_X86
        if (beat_hash_simd() >= BEAT_SIMD_AVX2) {
            const uint8_t *mp[4];
            size_t ml[4];
            uint8_t *op[4];
            for (; n - i >= 2; i += (n - i >= 4 ? 4 : n - i)) {
                int w = n - i >= 4 ? 4 : (int)(n - i);
                for (int k = 0; k < w; k++) {
                    mp[k] = msgs + (i + k) * stride;
                    ml[k] = lens[i + k];
                    op[k] = out + (i + k) * out_stride;
                }
                blake2b_x4(mp, ml, op, w);
                /* multi-block messages were hashed wrongly as one block: redo them scalar */
                for (int k = 0; k < w; k++)
                    if (ml[k] > BEAT_BLAKE2B_BLOCK)
                        blake2b_oneshot(mp[k], ml[k], op[k]);
            }
        }
#endif
        for (; i < n; i++)
            blake2b_oneshot(msgs + i * stride, lens[i], out + i * out_stride);
        return;
    }
#if BEAT_HASH_X86
    int level = beat_hash_simd();
    if (level >= BEAT_SIMD_AVX2 && n >= 2) {
        const uint8_t *mp[8];
        size_t ml[8];
        uint8_t *op[8];
        while (i < n) {
            size_t rem = n - i;
            int w;
            if (level >= BEAT_SIMD_AVX512 && rem > 4)
                w = rem >= 8 ? 8 : (int)rem;      /* 8-lane, dummy lanes for a 5..7 tail */
            else if (rem >= 2)
                w = rem >= 4 ? 4 : (int)rem;      /* 4-lane, dummy lanes for a 2..3 tail */
            else
                break;                            /* a single last message: scalar */
            for (int k = 0; k < w; k++) {
                mp[k] = msgs + (i + k) * stride;
                ml[k] = lens[i + k];
                op[k] = out + (i + k) * out_stride;
            }
            if (w > 4)
                sha3_x8(mp, ml, op, w);
            else
                sha3_x4(mp, ml, op, w);
            /* multi-block messages were hashed as dummies: redo them on the scalar path */
            for (int k = 0; k < w; k++)
                if (ml[k] >= SHA3_RATE)
                    sha3_oneshot(mp[k], ml[k], op[k]);
            i += (size_t)w;
        }
    }
#endif
    for (; i < n; i++) {
        size_t len = lens[i];
        if (len < SHA3_RATE)
            sha3_short(msgs + i * stride, len, out + i * out_stride);
        else
            sha3_oneshot(msgs + i * stride, len, out + i * out_stride);
    }
}

void beat_hash_many_padded(int alg, const uint8_t *msgs, size_t stride, const uint16_t *lens,
                           size_t n, uint8_t *out, size_t out_stride)
{
    size_t i = 0;
#if BEAT_HASH_X86
    /* AVX-512 keeps its 8 lanes (beat_hash_many); a lone last message takes the scalar path */
    if (alg == BEAT_HASH_SHA3_256 && beat_hash_simd() == BEAT_SIMD_AVX2) {
        static const uint8_t empty[BEAT_PADDED_MSG] = {0x06};   /* a dummy lane */
        uint8_t scratch[4][32];
        for (; n - i >= 2; i += 4) {
            const uint8_t *b[4];
            uint8_t *o[4];
            for (int k = 0; k < 4; k++) {
                int real = i + k < n && lens[i + k] < BEAT_PADDED_MSG;
                b[k] = real ? msgs + (i + k) * stride : empty;
                o[k] = real ? out + (i + k) * out_stride : scratch[k];
            }
            sha3_x4_padded(b, o);
            for (int k = 0; k < 4 && i + k < n; k++)   /* not padded here: the generic path */
                if (lens[i + k] >= BEAT_PADDED_MSG)
                    beat_hash_many(alg, msgs + (i + k) * stride, stride, lens + i + k, 1,
                                   out + (i + k) * out_stride, out_stride);
            if (n - i < 4) {
                i = n;
                break;
            }
        }
    }
#endif
    if (i < n)
        beat_hash_many(alg, msgs + i * stride, stride, lens + i, n - i, out + i * out_stride,
                       out_stride);
}

/* ------------------------------------------------------------------------------------------ */
/* beat_hash_many_equal: long messages of one length (proof segments)                         */

void beat_hash_many_equal(int alg, const uint8_t *const *msgs, size_t len, size_t n,
                          uint8_t *const *outs)
{
    size_t i = 0;
#if BEAT_HASH_X86
    if (alg == BEAT_HASH_BLAKE2B_256 && beat_hash_simd() >= BEAT_SIMD_AVX2) {
        for (; n - i >= 2; i += (n - i >= 4 ? 4 : n - i))
            blake2b_x4_long(msgs + i, len, outs + i, n - i >= 4 ? 4 : (int)(n - i));
    }
    if (alg == BEAT_HASH_SHA3_256) {
        int level = beat_hash_simd();
        for (; level >= BEAT_SIMD_AVX2 && n - i >= 2;) {
            int w = (level >= BEAT_SIMD_AVX512 && n - i > 4) ? 8 : 4;
            int m = n - i < (size_t)w ? (int)(n - i) : w;
            if (w == 8)
                sha3_x8_long(msgs + i, len, outs + i, m);
            else
                sha3_x4_long(msgs + i, len, outs + i, m);
            i += (size_t)m;
        }
    }
#endif
    for (; i < n; i++)
        beat_hash(alg, msgs[i], len, outs[i]);
}
