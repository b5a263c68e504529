/* Bounds-free byte readers and writers: memcpy-free shifts, never an unaligned dereference.
 * Callers check lengths before reading. */
#ifndef BEAT_BYTES_H
#define BEAT_BYTES_H
#include <stdint.h>

static inline uint16_t rd16be(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t rd32be(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint32_t rd32le(const uint8_t *p)
{
    return ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | p[0];
}
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
/* One 8-byte load or store (memcpy: no unaligned dereference) and a bswap: the byte loops below
 * are not always recognised, and a record built byte by byte and then read back as a vector
 * stalls store-to-load forwarding. */
static inline uint64_t rd64be(const uint8_t *p)
{
    uint64_t v;
    __builtin_memcpy(&v, p, 8);
    return __builtin_bswap64(v);
}
static inline uint64_t rd64le(const uint8_t *p)
{
    uint64_t v;
    __builtin_memcpy(&v, p, 8);
    return v;
}
static inline void wr64be(uint8_t *p, uint64_t v)
{
    v = __builtin_bswap64(v);
    __builtin_memcpy(p, &v, 8);
}
static inline void wr64le(uint8_t *p, uint64_t v) { __builtin_memcpy(p, &v, 8); }
#else
static inline uint64_t rd64be(const uint8_t *p) { return ((uint64_t)rd32be(p) << 32) | rd32be(p + 4); }
static inline uint64_t rd64le(const uint8_t *p) { return ((uint64_t)rd32le(p + 4) << 32) | rd32le(p); }
static inline void wr64be(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) { p[i] = (uint8_t)v; v >>= 8; }
}
static inline void wr64le(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) { p[i] = (uint8_t)v; v >>= 8; }
}
#endif
/* A MAC as a 48-bit integer, the key of the own-MAC set and the neighbour map. */
static inline uint64_t mac_key(const uint8_t *p)
{
    return ((uint64_t)rd16be(p) << 32) | rd32be(p + 2);
}
#endif
