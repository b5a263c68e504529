/* beat_send: a fast traffic generator for the capture benchmark and tests.
 * Minimum-size Ethernet/IPv4/UDP frames over N flows, sent with sendmmsg in batches of 64 on an
 * AF_PACKET socket with PACKET_QDISC_BYPASS; every frame gets its own IP id and a sequence number
 * in the payload, so no two frames have the same packet digest. Prints what it sent as JSON.
 *
 *   beat_send IFACE DST_MAC SRC_MAC [--rate PPS] [--duration S | --count N] [--flows N]
 *             [--src-ip A.B.C.D] [--dst-ip A.B.C.D] [--seq-start N] [--random-src SEED]
 *   --rate 0 (default) sends as fast as possible; otherwise batches are paced with clock_nanosleep.
 *   Flow f is 10.0.f.1 -> 10.1.f.1, UDP sport 10000 + f; --src-ip / --dst-ip fix the source /
 *   destination address of every flow (the flows then differ by source port only), e.g. one
 *   tenant's flow between two lab hosts: --src-ip H1 --dst-ip H2 --flows 1. --seq-start N starts
 *   the sequence (IP id, payload) at N (default 0): runs that must not repeat a packet digest of an
 *   earlier run give each its own range. --random-src SEED gives every frame a source address
 *   drawn at random from the whole IPv4 space (xorshift64* seeded with SEED, so a run can be
 *   repeated): a spoofed-source flood, a new (src, dst) flow per packet. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define FRAME 60

static volatile sig_atomic_t stop;
static void on_signal(int s) { (void)s; stop = 1; }

static int parse_mac(const char *s, uint8_t *m)
{
    unsigned v[6];
    if (sscanf(s, "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6)
        return -1;
    for (int i = 0; i < 6; i++)
        m[i] = (uint8_t)v[i];
    return 0;
}

static uint16_t csum(const uint8_t *p, int n)
{
    uint32_t s = 0;
    for (int i = 0; i < n; i += 2)
        s += (uint32_t)(p[i] << 8 | p[i + 1]);
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (uint16_t)~s;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* --src-ip / --dst-ip (network order), when given */
static int fixed_src, fixed_dst;
static uint8_t src_ip[4], dst_ip[4];
/* --random-src: the generator's state (0: off) */
static uint64_t random_src;

static uint32_t next_random(void)
{
    uint64_t x = random_src;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    random_src = x;
    return (uint32_t)((x * 0x2545F4914F6CDD1DULL) >> 32);
}

/* Ethernet, IPv4 (10.0.f.1 -> 10.1.f.1 unless fixed), UDP, 18 bytes of payload starting with the
 * sequence. */
static void build(uint8_t *f, const uint8_t *dst, const uint8_t *src, uint32_t flow)
{
    memset(f, 0, FRAME);
    memcpy(f, dst, 6);
    memcpy(f + 6, src, 6);
    f[12] = 0x08;
    uint8_t *ip = f + 14;
    ip[0] = 0x45;
    ip[3] = 46;            /* total length: 20 + 8 + 18 */
    ip[8] = 64;
    ip[9] = 17;
    ip[12] = 10; ip[13] = 0; ip[14] = (uint8_t)(flow >> 8); ip[15] = (uint8_t)flow;
    ip[16] = 10; ip[17] = 1; ip[18] = (uint8_t)(flow >> 8); ip[19] = (uint8_t)flow;
    if (fixed_src) memcpy(ip + 12, src_ip, 4);
    if (fixed_dst) memcpy(ip + 16, dst_ip, 4);
    if (random_src) {
        uint32_t a = next_random();
        ip[12] = (uint8_t)(a >> 24); ip[13] = (uint8_t)(a >> 16);
        ip[14] = (uint8_t)(a >> 8); ip[15] = (uint8_t)a;
    }
    uint8_t *udp = ip + 20;
    uint16_t sp = htons((uint16_t)(10000 + flow)), dp = htons(9);
    memcpy(udp, &sp, 2);
    memcpy(udp + 2, &dp, 2);
    udp[5] = 26;
}

static void stamp(uint8_t *f, uint64_t seq)
{
    uint8_t *ip = f + 14;
    ip[4] = (uint8_t)(seq >> 8);
    ip[5] = (uint8_t)seq;
    ip[10] = ip[11] = 0;
    uint16_t c = csum(ip, 20);
    ip[10] = (uint8_t)(c >> 8);
    ip[11] = (uint8_t)c;
    for (int i = 0; i < 8; i++)
        ip[28 + i] = (uint8_t)(seq >> (56 - 8 * i));
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s IFACE DST_MAC SRC_MAC [--rate PPS] [--duration S | --count N] "
                "[--flows N] [--src-ip A.B.C.D] [--dst-ip A.B.C.D] [--seq-start N] "
                "[--random-src SEED]\n", argv[0]);
        return 2;
    }
    const char *ifname = argv[1];
    uint8_t dst[6], src[6];
    if (parse_mac(argv[2], dst) || parse_mac(argv[3], src)) {
        fprintf(stderr, "beat_send: bad MAC %s or %s\n", argv[2], argv[3]);
        return 2;
    }
    double rate = 0, duration = 0;
    uint64_t count = 0;
    uint32_t flows = 1000;
    uint64_t seq_start = 0;
    for (int i = 4; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--rate")) rate = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--duration")) duration = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--count")) count = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--flows")) flows = (uint32_t)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seq-start")) seq_start = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--random-src")) {
            /* any seed; 0 would stop the generator, so it is mixed with a constant */
            random_src = strtoull(argv[i + 1], NULL, 10) ^ 0x9E3779B97F4A7C15ULL;
            if (!random_src) random_src = 1;
        }
        else if (!strcmp(argv[i], "--src-ip") || !strcmp(argv[i], "--dst-ip")) {
            int is_src = argv[i][2] == 's';
            if (inet_pton(AF_INET, argv[i + 1], is_src ? src_ip : dst_ip) != 1) {
                fprintf(stderr, "beat_send: %s: %s is not an IPv4 address\n", argv[i], argv[i + 1]);
                return 2;
            }
            if (is_src) fixed_src = 1; else fixed_dst = 1;
        }
        else { fprintf(stderr, "beat_send: unknown option %s\n", argv[i]); return 2; }
    }
    if (flows < 1) flows = 1;
    if (!count && duration <= 0) duration = 1;

    int fd = socket(AF_PACKET, SOCK_RAW, 0);   /* protocol 0: this socket receives nothing */
    if (fd < 0) { fprintf(stderr, "beat_send: socket(AF_PACKET): %s\n", strerror(errno)); return 1; }
    struct sockaddr_ll sll = {0};
    sll.sll_family = AF_PACKET;
    sll.sll_ifindex = (int)if_nametoindex(ifname);
    if (!sll.sll_ifindex) { fprintf(stderr, "beat_send: %s: %s\n", ifname, strerror(errno)); return 1; }
    if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0) {
        fprintf(stderr, "beat_send: bind to %s: %s\n", ifname, strerror(errno));
        return 1;
    }
    int one = 1;
    if (setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one) < 0)
        fprintf(stderr, "beat_send: PACKET_QDISC_BYPASS on %s: %s (going on)\n", ifname,
                strerror(errno));
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    static uint8_t frames[BATCH][FRAME];
    struct iovec iov[BATCH];
    struct mmsghdr msg[BATCH];
    memset(msg, 0, sizeof msg);
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = frames[i];
        iov[i].iov_len = FRAME;
        msg[i].msg_hdr.msg_iov = &iov[i];
        msg[i].msg_hdr.msg_iovlen = 1;
    }
    /* Low rates send smaller batches, so that the pacing stays smooth (about 1 batch per ms). */
    int batch = BATCH;
    if (rate > 0 && rate < BATCH * 1000.0)
        batch = rate / 1000.0 < 1 ? 1 : (int)(rate / 1000.0);
    uint64_t seq = seq_start, sent = 0, errors = 0, enobufs = 0;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    double t0 = now_s(), end = duration > 0 ? t0 + duration : 0;
    uint64_t step_ns = rate > 0 ? (uint64_t)(batch * 1e9 / rate) : 0;
    while (!stop) {
        if (count && sent >= count) break;
        if (end && now_s() >= end) break;
        int n = batch;
        if (count && count - sent < (uint64_t)n) n = (int)(count - sent);
        for (int i = 0; i < n; i++) {
            uint64_t s = seq + i;
            build(frames[i], dst, src, (uint32_t)(s % flows));
            stamp(frames[i], s);
        }
        int k = sendmmsg(fd, msg, n, 0);
        if (k < 0) {
            if (errno == ENOBUFS || errno == EAGAIN) enobufs++;
            else if (errno != EINTR) errors++;
            if (errors > 1000) { fprintf(stderr, "beat_send: sendmmsg: %s\n", strerror(errno)); break; }
            continue;
        }
        sent += k;
        seq += k;
        if (step_ns) {
            next.tv_nsec += step_ns;
            while (next.tv_nsec >= 1000000000L) { next.tv_nsec -= 1000000000L; next.tv_sec++; }
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
        }
    }
    double secs = now_s() - t0;
    printf("{\"interface\": \"%s\", \"sent\": %llu, \"seconds\": %.6f, \"pps\": %.1f, "
           "\"rate_requested\": %.1f, \"flows\": %u, \"frame_size\": %d, \"enobufs\": %llu, "
           "\"errors\": %llu, \"random_src\": %s}\n", ifname, (unsigned long long)sent, secs,
           secs > 0 ? sent / secs : 0, rate, flows, FRAME, (unsigned long long)enobufs,
           (unsigned long long)errors, random_src ? "true" : "false");
    close(fd);
    return 0;
}
