/* bare_ring: the reference capture loop. A TPACKET_V3 ring that only counts frames, with the same
 * geometry options as fastpath's Ring; runs until --duration passes or SIGINT/SIGTERM, then prints
 * JSON: frames read, kernel packets and drops (PACKET_STATISTICS), CPU seconds of the process.
 * Prints "ready" on stderr once the ring is bound.
 *
 *   bare_ring IFACE [--block-size B] [--block-count N] [--frame-size F] [--timeout-ms T] [--duration S] */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_signal(int s) { (void)s; stop = 1; }

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s IFACE [--block-size B] [--block-count N] [--frame-size F] "
                "[--timeout-ms T] [--duration S]\n", argv[0]);
        return 2;
    }
    const char *ifname = argv[1];
    unsigned bs = 1 << 20, bc = 16, fs = 2048, tov = 10;
    double duration = 0;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--block-size")) bs = (unsigned)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--block-count")) bc = (unsigned)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--frame-size")) fs = (unsigned)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--timeout-ms")) tov = (unsigned)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--duration")) duration = atof(argv[i + 1]);
        else { fprintf(stderr, "bare_ring: unknown option %s\n", argv[i]); return 2; }
    }
    int fd = socket(AF_PACKET, SOCK_RAW, 0);
    int v = TPACKET_V3;
    if (fd < 0 || setsockopt(fd, SOL_PACKET, PACKET_VERSION, &v, sizeof v) < 0) {
        fprintf(stderr, "bare_ring: socket/PACKET_VERSION on %s: %s\n", ifname, strerror(errno));
        return 1;
    }
    struct tpacket_req3 req = {0};
    req.tp_block_size = bs;
    req.tp_block_nr = bc;
    req.tp_frame_size = fs;
    req.tp_frame_nr = bs / fs * bc;
    req.tp_retire_blk_tov = tov;
    if (setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof req) < 0) {
        fprintf(stderr, "bare_ring: PACKET_RX_RING on %s: %s\n", ifname, strerror(errno));
        return 1;
    }
    size_t len = (size_t)bs * bc;
    uint8_t *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) { fprintf(stderr, "bare_ring: mmap: %s\n", strerror(errno)); return 1; }
    struct sockaddr_ll sll = {0};
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = (int)if_nametoindex(ifname);
    if (!sll.sll_ifindex || bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0) {
        fprintf(stderr, "bare_ring: bind to %s: %s\n", ifname, strerror(errno));
        return 1;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    fprintf(stderr, "ready\n");
    fflush(stderr);

    uint64_t frames = 0, blocks = 0;
    unsigned cur = 0;
    double t0 = now_s(), end = duration > 0 ? t0 + duration : 0;
    while (!stop && !(end && now_s() >= end)) {
        struct tpacket_block_desc *bd = (struct tpacket_block_desc *)(map + (size_t)cur * bs);
        if (!(__atomic_load_n(&bd->hdr.bh1.block_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER)) {
            struct pollfd p = {.fd = fd, .events = POLLIN | POLLERR};
            poll(&p, 1, 100);
            continue;
        }
        frames += bd->hdr.bh1.num_pkts;
        blocks++;
        __atomic_store_n(&bd->hdr.bh1.block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
        cur = (cur + 1) % bc;
    }
    struct tpacket_stats_v3 st = {0};
    socklen_t sl = sizeof st;
    getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &st, &sl);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec * 1e-6;
    printf("{\"interface\": \"%s\", \"frames\": %llu, \"blocks\": %llu, \"kernel_packets\": %u, "
           "\"drops\": %u, \"freeze_q_cnt\": %u, \"cpu_s\": %.6f, \"seconds\": %.6f}\n", ifname,
           (unsigned long long)frames, (unsigned long long)blocks, st.tp_packets, st.tp_drops,
           st.tp_freeze_q_cnt, cpu, now_s() - t0);
    return 0;
}
