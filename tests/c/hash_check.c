/* hash_check: test and benchmark driver for fastpath/src/beat_hash.c.
 *
 *   hash_check            read commands from stdin, one per line, answer on stdout
 *   hash_check bench [seconds_per_case]
 *
 * Commands (ALG is "sha3" or "blake2b"; HEX is the message in hex, "-" for the empty message):
 *   simd                      -> "<level> <name> <max>"          (level in force, CPU maximum)
 *   level N                   -> "<level> <name>"                (beat_hash_set_simd(N))
 *   h ALG HEX                 -> digest (one shot)
 *   inc ALG HEX P1,P2,...     -> digest via init/update/final split at offsets P1 < P2 < ...
 *                                ("-" for no split points)
 *   many ALG STRIDE OSTRIDE HEX1 ... HEXn   (n may be 0)
 *   equal ALG HEX1 ... HEXn                 (beat_hash_many_equal: all of one length)
 *   padded ALG OSTRIDE HEX1 ... HEXn        (beat_hash_many_padded: messages shorter than
 *                                            BEAT_PADDED_MSG padded by beat_padded_put, longer
 *                                            ones as they are, garbage after them)
 *                             -> n digests on one line, space separated ("" for n = 0)
 */
#define _GNU_SOURCE
#include "beat_hash.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int parse_alg(const char *s)
{
    if (!strcmp(s, "sha3"))
        return BEAT_HASH_SHA3_256;
    if (!strcmp(s, "blake2b"))
        return BEAT_HASH_BLAKE2B_256;
    fprintf(stderr, "bad alg %s\n", s);
    exit(2);
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    fprintf(stderr, "bad hex\n");
    exit(2);
}

/* Decode hex token into a malloc'ed buffer (never NULL); returns the length. */
static size_t unhex(const char *s, uint8_t **out)
{
    size_t n = strcmp(s, "-") ? strlen(s) / 2 : 0;
    uint8_t *b = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)(hexval(s[2 * i]) << 4 | hexval(s[2 * i + 1]));
    *out = b;
    return n;
}

static void puthex(const uint8_t *d, size_t n)
{
    static const char H[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        putchar(H[d[i] >> 4]);
        putchar(H[d[i] & 15]);
    }
}

/* n digests at out + i*ostride on one line, space separated */
static void put_digests(const uint8_t *out, size_t n, size_t ostride)
{
    for (size_t i = 0; i < n; i++) {
        if (i)
            putchar(' ');
        puthex(out + i * ostride, 32);
    }
    putchar('\n');
}

static void cmd_many(int alg, size_t stride, size_t ostride, char **tok, size_t n)
{
    uint8_t *msgs = calloc(n * stride + 1, 1);
    uint8_t *out = malloc(n * ostride + 1);
    uint16_t *lens = calloc(n + 1, sizeof *lens);
    memset(out, 0xAA, n * ostride + 1);
    for (size_t i = 0; i < n; i++) {
        uint8_t *m;
        size_t len = unhex(tok[i], &m);
        if (len > stride || len > 65535) {
            fprintf(stderr, "message longer than stride\n");
            exit(2);
        }
        memcpy(msgs + i * stride, m, len);
        /* garbage after the message, inside the stride, must not matter */
        memset(msgs + i * stride + len, 0x5C, stride - len);
        lens[i] = (uint16_t)len;
        free(m);
    }
    beat_hash_many(alg, msgs, stride, lens, n, out, ostride);
    put_digests(out, n, ostride);
    free(msgs);
    free(out);
    free(lens);
}

static void cmd_padded(int alg, size_t ostride, char **tok, size_t n)
{
    size_t stride = BEAT_PADDED_MSG;
    uint8_t **m = calloc(n + 1, sizeof *m);
    size_t *len = calloc(n + 1, sizeof *len);
    for (size_t i = 0; i < n; i++) {
        len[i] = unhex(tok[i], &m[i]);
        m[i] = realloc(m[i], len[i] + 8);   /* readable garbage past the message: masked off */
        memset(m[i] + len[i], 0xA5, 8);
        if (len[i] > stride)
            stride = (len[i] + 31) / 32 * 32;
    }
    uint8_t *msgs = aligned_alloc(32, n * stride + 32);
    uint8_t *out = malloc(n * ostride + 1);
    uint16_t *lens = calloc(n + 1, sizeof *lens);
    memset(msgs, 0x5C, n * stride + 32);
    memset(out, 0xAA, n * ostride + 1);
    for (size_t i = 0; i < n; i++) {
        if (len[i] < BEAT_PADDED_MSG)
            beat_padded_put(msgs + i * stride, m[i], len[i], (i & 1) ? len[i] : len[i] + 8);  /* both tails */
        else
            memcpy(msgs + i * stride, m[i], len[i]);
        lens[i] = (uint16_t)len[i];
        free(m[i]);
    }
    beat_hash_many_padded(alg, msgs, stride, lens, n, out, ostride);
    put_digests(out, n, ostride);
    free(msgs);
    free(out);
    free(lens);
    free(m);
    free(len);
}

static void cmd_equal(int alg, char **tok, size_t n)
{
    uint8_t **msgs = calloc(n + 1, sizeof *msgs);
    uint8_t **outs = calloc(n + 1, sizeof *outs);
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        len = unhex(tok[i], &msgs[i]);
        outs[i] = malloc(32);
    }
    beat_hash_many_equal(alg, (const uint8_t *const *)msgs, len, n, outs);
    for (size_t i = 0; i < n; i++) {
        if (i)
            putchar(' ');
        puthex(outs[i], 32);
        free(msgs[i]);
        free(outs[i]);
    }
    putchar('\n');
    free(msgs);
    free(outs);
}

static int run_commands(void)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    while ((got = getline(&line, &cap, stdin)) > 0) {
        size_t ntok = 0, tcap = 16;
        char **tok = malloc(tcap * sizeof *tok);
        for (char *s = strtok(line, " \t\r\n"); s; s = strtok(NULL, " \t\r\n")) {
            if (ntok == tcap)
                tok = realloc(tok, (tcap *= 2) * sizeof *tok);
            tok[ntok++] = s;
        }
        if (ntok == 0) {
            free(tok);
            continue;
        }
        uint8_t d[32];
        if (!strcmp(tok[0], "simd")) {
            printf("%d %s %d\n", beat_hash_simd(), beat_hash_simd_name(), beat_hash_simd_max());
        } else if (!strcmp(tok[0], "level") && ntok == 2) {
            int l = beat_hash_set_simd(atoi(tok[1]));
            printf("%d %s\n", l, beat_hash_simd_name());
        } else if (!strcmp(tok[0], "h") && ntok == 3) {
            uint8_t *m;
            size_t len = unhex(tok[2], &m);
            beat_hash(parse_alg(tok[1]), m, len, d);
            puthex(d, 32);
            putchar('\n');
            free(m);
        } else if (!strcmp(tok[0], "inc") && ntok == 4) {
            uint8_t *m;
            size_t len = unhex(tok[2], &m), at = 0;
            beat_hash_ctx c;
            beat_hash_init(&c, parse_alg(tok[1]));
            if (strcmp(tok[3], "-")) {
                for (char *p = tok[3]; *p;) {
                    size_t cut = strtoul(p, &p, 10);
                    if (cut < at || cut > len) {
                        fprintf(stderr, "bad split\n");
                        exit(2);
                    }
                    beat_hash_update(&c, m + at, cut - at);
                    at = cut;
                    if (*p == ',')
                        p++;
                }
            }
            beat_hash_update(&c, m + at, len - at);
            beat_hash_final(&c, d);
            puthex(d, 32);
            putchar('\n');
            free(m);
        } else if (!strcmp(tok[0], "equal") && ntok >= 2) {
            cmd_equal(parse_alg(tok[1]), tok + 2, ntok - 2);
        } else if (!strcmp(tok[0], "padded") && ntok >= 3) {
            cmd_padded(parse_alg(tok[1]), strtoul(tok[2], NULL, 10), tok + 3, ntok - 3);
        } else if (!strcmp(tok[0], "many") && ntok >= 4) {
            cmd_many(parse_alg(tok[1]), strtoul(tok[2], NULL, 10), strtoul(tok[3], NULL, 10),
                     tok + 4, ntok - 4);
        } else {
            fprintf(stderr, "bad command %s\n", tok[0]);
            return 2;
        }
        fflush(stdout);
        free(tok);
    }
    free(line);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static volatile uint8_t sink;

/* Returns million hashes per second (the best of several short windows: shared machines are
 * noisy, the best window is the closest to the code's own speed). */
#define BENCH_WINDOWS 10
static double bench_oneshot1(int alg, size_t len, double secs)
{
    uint8_t msg[256], d[32];
    for (size_t i = 0; i < sizeof msg; i++)
        msg[i] = (uint8_t)(i * 7 + 1);
    size_t count = 0;
    double t0 = now(), t;
    do {
        for (int k = 0; k < 256; k++) {
            msg[0] = (uint8_t)k;
            beat_hash(alg, msg, len, d);
            msg[1] ^= d[0];
        }
        count += 256;
        t = now() - t0;
    } while (t < secs);
    sink = msg[1];
    return count / t / 1e6;
}

static double bench_many1(int alg, size_t len, double secs)
{
    enum { N = 256 };
    static uint8_t out[N * 32];
    static uint16_t lens[N];
    size_t stride = 64 > len ? 64 : len;
    uint8_t *buf = malloc(N * stride);
    for (size_t i = 0; i < N * stride; i++)
        buf[i] = (uint8_t)(i * 13 + 5);
    for (int i = 0; i < N; i++)
        lens[i] = (uint16_t)len;
    size_t count = 0;
    double t0 = now(), t;
    do {
        beat_hash_many(alg, buf, stride, lens, N, out, 32);
        buf[count & 255] ^= out[0];
        count += N;
        t = now() - t0;
    } while (t < secs);
    sink = out[5];
    free(buf);
    return count / t / 1e6;
}

static double bench_oneshot(int alg, size_t len, double secs)
{
    double best = 0;
    for (int w = 0; w < BENCH_WINDOWS; w++) {
        double r = bench_oneshot1(alg, len, secs / BENCH_WINDOWS);
        best = r > best ? r : best;
    }
    return best;
}

static double bench_many(int alg, size_t len, double secs)
{
    double best = 0;
    for (int w = 0; w < BENCH_WINDOWS; w++) {
        double r = bench_many1(alg, len, secs / BENCH_WINDOWS);
        best = r > best ? r : best;
    }
    return best;
}

static int run_bench(double secs)
{
    static const size_t sizes[2] = {48, 64};
    int max = beat_hash_simd_max();
    printf("cpu max simd level: %d; default in force: %s\n", max, beat_hash_simd_name());
    printf("%-28s %10s %10s   (best of %d windows of %.3f s)\n", "case (M hashes/s, 1 core)",
           "48 B", "64 B", BENCH_WINDOWS, secs / BENCH_WINDOWS);
    const char *algs[2] = {"sha3-256", "blake2b-256"};
    for (int a = 0; a < 2; a++) {
        printf("%-28s", a ? "blake2b-256 one-shot" : "sha3-256 one-shot (scalar)");
        for (int s = 0; s < 2; s++)
            printf(" %10.2f", bench_oneshot(a, sizes[s], secs));
        printf("\n");
        (void)algs;
    }
    static const int levels[3] = {BEAT_SIMD_SCALAR, BEAT_SIMD_AVX2, BEAT_SIMD_AVX512};
    for (int k = 0; k < 3; k++) {
        if (levels[k] > max)
            continue;
        beat_hash_set_simd(levels[k]);
        char name[64];
        snprintf(name, sizeof name, "sha3-256 many %s", beat_hash_simd_name());
        printf("%-28s", name);
        for (int s = 0; s < 2; s++)
            printf(" %10.2f", bench_many(BEAT_HASH_SHA3_256, sizes[s], secs));
        printf("\n");
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "bench"))
        return run_bench(argc >= 3 ? atof(argv[2]) : 0.5);
    return run_commands();
}
