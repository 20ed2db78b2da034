/*
 * pydp_gen.c - pydp-gen: a small DPDK UDP traffic generator and sink on one port, for the fast-path benchmark.
 *
 *   pydp-gen EAL-ARGS -- [--flows N] [--dst IP] [--dst-mac MAC] [--size BYTES] [--seconds S] [--warmup S]
 *                        [--rate PPS] [--link-timeout S] [--json]
 *
 * One lcore sends bursts of 32 UDP/IPv4 frames to the cluster IP and, in the same loop, receives and counts what
 * comes back on the same port (the forwarder under test sends it back). The flows are N distinct 5-tuples: the
 * source address walks the benchmarking range 198.18.0.0/15 and the source port steps every 131072 flows.
 *
 * The TX mempool is a template pool: every mbuf is written once with a complete frame when the pool is created,
 * and since nothing else ever writes into those buffers (received frames come from a separate pool), a packet is
 * made by rewriting only the IPv4 source, its checksum (incrementally) and the UDP source port.
 *
 * Phases: wait for the link, warm up (at least --warmup seconds and at least one pass over all N flows, so the
 * forwarder's flow table holds them all; bounded), then measure for --seconds. Progress goes to stderr
 * ("pydp-gen: measuring" marks the start of the measurement window), the result to stdout.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rte_byteorder.h>
#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_ethdev.h>
#include <rte_ip.h>
#include <rte_lcore.h>
#include <rte_malloc.h>
#include <rte_mbuf.h>
#include <rte_mbuf_pool_ops.h>
#include <rte_mempool.h>
#include <rte_udp.h>

#define GEN_BURST 32
#define GEN_RX_BURST 64
#define GEN_RING 1024
#define GEN_TX_MBUFS 8191
#define GEN_RX_MBUFS 8191
#define GEN_CACHE 256
#define GEN_SRC_BASE 0xc6120000u    /* 198.18.0.0 */
#define GEN_SRC_SPAN 131072u        /* addresses in 198.18.0.0/15 */
#define GEN_SPORT_BASE 1024u
#define GEN_SPORT_SPAN 64512u       /* source ports 1024..65535 */
#define GEN_DPORT 8080
#define GEN_MIN_SIZE 60             /* Ethernet + IPv4 + UDP + 18 bytes, without FCS */
#define GEN_MAX_SIZE 1514
#define GEN_WARMUP_GRACE_S 30       /* how long past --warmup the first pass over the flows may take */

struct gen_opts {
    uint32_t flows;
    uint32_t dst_ip;                /* host order */
    struct rte_ether_addr dst_mac;
    uint32_t size;
    double seconds;
    double warmup;
    uint64_t rate;                  /* packets per second, 0 = as fast as possible */
    double link_timeout;
    double linger;                  /* after reporting, keep the link up (draining RX) this long or until a signal */
    int json;
};

/* The template written into every TX mbuf; only the varying fields change per packet. */
struct gen_template {
    uint8_t frame[GEN_MAX_SIZE];
    uint32_t len;
    uint32_t cksum_base;            /* one's-complement sum of the IPv4 header without source and checksum */
};

static volatile sig_atomic_t gen_quit;

static void gen_on_signal(int sig)
{
    (void)sig;
    gen_quit = 1;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: pydp-gen EAL-ARGS -- [options]\n"
            "  --flows N          distinct UDP flows (default 1024; max 4294967295)\n"
            "  --dst IP           destination IPv4 address, the cluster IP (default 198.51.100.10)\n"
            "  --dst-mac MAC      destination MAC (default 02:00:00:00:00:02)\n"
            "  --size BYTES       frame size without FCS, %d..%d (default 64)\n"
            "  --seconds S        measurement time (default 5)\n"
            "  --warmup S         send this long first, and at least one pass over all flows (default 2)\n"
            "  --rate PPS         offered load, 0 = flat out (default 0)\n"
            "  --link-timeout S   how long to wait for the link (default 30)\n"
            "  --json             print the result as one JSON object\n"
            "  --linger S         after the result, keep the link up (draining) for S seconds or until SIGTERM,\n"
            "                     so the peer can stop first\n",
            GEN_MIN_SIZE, GEN_MAX_SIZE);
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 0);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-')
        return -1;
    *out = v;
    return 0;
}

static int parse_secs(const char *s, double *out)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= 0.0) || v > 86400.0)
        return -1;
    *out = v;
    return 0;
}

static int parse_ipv4(const char *s, uint32_t *out)
{
    unsigned int a, b, c, d;
    char tail;

    if (sscanf(s, "%u.%u.%u.%u%c", &a, &b, &c, &d, &tail) != 4 || a > 255 || b > 255 || c > 255 || d > 255)
        return -1;
    *out = (a << 24) | (b << 16) | (c << 8) | d;
    return 0;
}

static int parse_opts(int argc, char **argv, struct gen_opts *o)
{
    static const struct option longopts[] = {
        {"flows", required_argument, NULL, 'f'},
        {"dst", required_argument, NULL, 'd'},
        {"dst-mac", required_argument, NULL, 'm'},
        {"size", required_argument, NULL, 's'},
        {"seconds", required_argument, NULL, 't'},
        {"warmup", required_argument, NULL, 'w'},
        {"rate", required_argument, NULL, 'r'},
        {"link-timeout", required_argument, NULL, 'l'},
        {"json", no_argument, NULL, 'j'},
        {"linger", required_argument, NULL, 'g'},
        {NULL, 0, NULL, 0},
    };
    uint64_t v;
    int c;

    memset(o, 0, sizeof(*o));
    o->flows = 1024;
    o->dst_ip = 0xc633640a;         /* 198.51.100.10 */
    rte_ether_unformat_addr("02:00:00:00:00:02", &o->dst_mac);
    o->size = 64;
    o->seconds = 5.0;
    o->warmup = 2.0;
    o->link_timeout = 30.0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'f':
            /* 131072 addresses x 64512 ports exceed 2^32: every 32-bit count is a set of distinct flows */
            if (parse_u64(optarg, &v) != 0 || v < 1 || v > UINT32_MAX) {
                fprintf(stderr, "pydp-gen: --flows: '%s' is not a flow count (1..%u)\n", optarg, UINT32_MAX);
                return -1;
            }
            o->flows = (uint32_t)v;
            break;
        case 'd':
            if (parse_ipv4(optarg, &o->dst_ip) != 0) {
                fprintf(stderr, "pydp-gen: --dst: '%s' is not an IPv4 address\n", optarg);
                return -1;
            }
            break;
        case 'm':
            if (rte_ether_unformat_addr(optarg, &o->dst_mac) != 0) {
                fprintf(stderr, "pydp-gen: --dst-mac: '%s' is not a MAC address\n", optarg);
                return -1;
            }
            break;
        case 's':
            if (parse_u64(optarg, &v) != 0 || v < GEN_MIN_SIZE || v > GEN_MAX_SIZE) {
                fprintf(stderr, "pydp-gen: --size: '%s' is not a frame size (%d..%d)\n", optarg, GEN_MIN_SIZE,
                        GEN_MAX_SIZE);
                return -1;
            }
            o->size = (uint32_t)v;
            break;
        case 't':
            if (parse_secs(optarg, &o->seconds) != 0 || o->seconds <= 0) {
                fprintf(stderr, "pydp-gen: --seconds: '%s' is not a positive number of seconds\n", optarg);
                return -1;
            }
            break;
        case 'w':
            if (parse_secs(optarg, &o->warmup) != 0) {
                fprintf(stderr, "pydp-gen: --warmup: '%s' is not a number of seconds\n", optarg);
                return -1;
            }
            break;
        case 'r':
            if (parse_u64(optarg, &o->rate) != 0) {
                fprintf(stderr, "pydp-gen: --rate: '%s' is not a packet rate\n", optarg);
                return -1;
            }
            break;
        case 'l':
            if (parse_secs(optarg, &o->link_timeout) != 0) {
                fprintf(stderr, "pydp-gen: --link-timeout: '%s' is not a number of seconds\n", optarg);
                return -1;
            }
            break;
        case 'j':
            o->json = 1;
            break;
        case 'g':
            if (parse_secs(optarg, &o->linger) != 0) {
                fprintf(stderr, "pydp-gen: --linger: '%s' is not a number of seconds\n", optarg);
                return -1;
            }
            break;
        default:
            usage(stderr);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "pydp-gen: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    return 0;
}

static uint32_t csum_add16(uint32_t sum, const uint8_t *p, uint32_t len)
{
    uint32_t i;

    for (i = 0; i + 1 < len; i += 2)
        sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    return sum;
}

static inline uint16_t csum_fold(uint32_t sum)
{
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static void build_template(struct gen_template *t, const struct gen_opts *o, const struct rte_ether_addr *src_mac)
{
    struct rte_ether_hdr *eth = (struct rte_ether_hdr *)t->frame;
    struct rte_ipv4_hdr *ip = (struct rte_ipv4_hdr *)(eth + 1);
    struct rte_udp_hdr *udp = (struct rte_udp_hdr *)(ip + 1);
    uint32_t ip_len = o->size - RTE_ETHER_HDR_LEN;
    uint32_t i;

    memset(t, 0, sizeof(*t));
    t->len = o->size;
    rte_ether_addr_copy(&o->dst_mac, &eth->dst_addr);
    rte_ether_addr_copy(src_mac, &eth->src_addr);
    eth->ether_type = rte_cpu_to_be_16(RTE_ETHER_TYPE_IPV4);
    ip->version_ihl = RTE_IPV4_VHL_DEF;
    ip->type_of_service = 0;
    ip->total_length = rte_cpu_to_be_16((uint16_t)ip_len);
    ip->packet_id = 0;
    ip->fragment_offset = rte_cpu_to_be_16(RTE_IPV4_HDR_DF_FLAG);
    ip->time_to_live = 64;
    ip->next_proto_id = IPPROTO_UDP;
    ip->hdr_checksum = 0;
    ip->src_addr = 0;
    ip->dst_addr = rte_cpu_to_be_32(o->dst_ip);
    udp->src_port = rte_cpu_to_be_16(GEN_SPORT_BASE);
    udp->dst_port = rte_cpu_to_be_16(GEN_DPORT);
    udp->dgram_len = rte_cpu_to_be_16((uint16_t)(ip_len - sizeof(*ip)));
    udp->dgram_cksum = 0;           /* no UDP checksum (allowed for IPv4) */
    for (i = RTE_ETHER_HDR_LEN + sizeof(*ip) + sizeof(*udp); i < t->len; i++)
        t->frame[i] = (uint8_t)i;
    /* source address and checksum are zero here, so this is the sum of the fixed words */
    t->cksum_base = csum_add16(0, (const uint8_t *)ip, sizeof(*ip));
}

/* mempool object initialiser: after the standard mbuf init, copy the template frame into the buffer. */
static void init_tx_mbuf(struct rte_mempool *mp, void *arg, void *obj, unsigned int idx)
{
    const struct gen_template *t = arg;
    struct rte_mbuf *m = obj;

    rte_pktmbuf_init(mp, NULL, obj, idx);
    memcpy((uint8_t *)m->buf_addr + RTE_PKTMBUF_HEADROOM, t->frame, t->len);
}

static struct rte_mempool *make_tx_pool(const struct gen_template *t, int socket)
{
    struct rte_pktmbuf_pool_private priv;
    struct rte_mempool *mp;

    mp = rte_mempool_create_empty("gen_tx", GEN_TX_MBUFS, sizeof(struct rte_mbuf) + RTE_MBUF_DEFAULT_BUF_SIZE,
                                  GEN_CACHE, sizeof(priv), socket, 0);
    if (mp == NULL)
        return NULL;
    if (rte_mempool_set_ops_byname(mp, rte_mbuf_best_mempool_ops(), NULL) != 0)
        goto fail;
    memset(&priv, 0, sizeof(priv));
    priv.mbuf_data_room_size = RTE_MBUF_DEFAULT_BUF_SIZE;
    priv.mbuf_priv_size = 0;
    rte_pktmbuf_pool_init(mp, &priv);
    if (rte_mempool_populate_default(mp) < 0)
        goto fail;
    rte_mempool_obj_iter(mp, init_tx_mbuf, (void *)(uintptr_t)t);
    return mp;
fail:
    rte_mempool_free(mp);
    return NULL;
}

static int port_setup(uint16_t port, struct rte_mempool *rx_pool)
{
    struct rte_eth_conf conf;
    struct rte_eth_dev_info info;
    uint16_t rxd = GEN_RING, txd = GEN_RING;
    int ret;

    memset(&conf, 0, sizeof(conf));
    ret = rte_eth_dev_info_get(port, &info);
    if (ret != 0) {
        fprintf(stderr, "pydp-gen: port %u: no device info: %s\n", port, rte_strerror(-ret));
        return -1;
    }
    if (info.tx_offload_capa & RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE)
        conf.txmode.offloads |= RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE;
    ret = rte_eth_dev_configure(port, 1, 1, &conf);
    if (ret == 0)
        ret = rte_eth_dev_adjust_nb_rx_tx_desc(port, &rxd, &txd);
    if (ret == 0)
        ret = rte_eth_rx_queue_setup(port, 0, rxd, rte_eth_dev_socket_id(port), NULL, rx_pool);
    if (ret == 0) {
        struct rte_eth_txconf txconf = info.default_txconf;

        txconf.offloads = conf.txmode.offloads;
        ret = rte_eth_tx_queue_setup(port, 0, txd, rte_eth_dev_socket_id(port), &txconf);
    }
    if (ret == 0)
        ret = rte_eth_dev_start(port);
    if (ret != 0) {
        fprintf(stderr, "pydp-gen: port %u setup failed: %s\n", port, rte_strerror(-ret));
        return -1;
    }
    rte_eth_promiscuous_enable(port);   /* best effort: count every frame that comes back */
    return 0;
}

static int wait_link(uint16_t port, double timeout)
{
    uint64_t deadline = rte_get_tsc_cycles() + (uint64_t)(timeout * (double)rte_get_tsc_hz());
    struct rte_eth_link link;

    while (!gen_quit) {
        memset(&link, 0, sizeof(link));
        if (rte_eth_link_get_nowait(port, &link) == 0 && link.link_status)
            return 0;
        if (rte_get_tsc_cycles() > deadline)
            return -1;
        rte_delay_us_sleep(10000);
    }
    return -1;
}

struct gen_run {
    uint64_t tx, rx, tx_full;
    uint64_t cursor;                /* index of the next flow to send, 0..flows-1 */
    uint64_t sent_total;            /* since the start of the warm-up: >= flows means one full pass */
};

static inline void rewrite(struct rte_mbuf *m, const struct gen_template *t, uint32_t flow)
{
    uint8_t *frame = rte_pktmbuf_mtod(m, uint8_t *);
    struct rte_ipv4_hdr *ip = (struct rte_ipv4_hdr *)(frame + RTE_ETHER_HDR_LEN);
    struct rte_udp_hdr *udp = (struct rte_udp_hdr *)(ip + 1);
    uint32_t src = GEN_SRC_BASE + flow % GEN_SRC_SPAN;
    uint16_t sport = (uint16_t)(GEN_SPORT_BASE + flow / GEN_SRC_SPAN);
    uint32_t sum = t->cksum_base + (src >> 16) + (src & 0xffff);

    ip->src_addr = rte_cpu_to_be_32(src);
    ip->hdr_checksum = rte_cpu_to_be_16(csum_fold(sum));
    udp->src_port = rte_cpu_to_be_16(sport);
}

/* Sends and receives until end_tsc (and, when need_pass, at least one pass over all flows, until hard_end_tsc).
 * Returns the TSC at which the phase ended. */
static uint64_t run_phase(uint16_t port, struct rte_mempool *tx_pool, const struct gen_template *t,
                          const struct gen_opts *o, struct gen_run *r, uint64_t end_tsc, int need_pass,
                          uint64_t hard_end_tsc)
{
    struct rte_mbuf *pkts[GEN_BURST];
    struct rte_mbuf *rx[GEN_RX_BURST];
    const uint64_t hz = rte_get_tsc_hz();
    const uint64_t burst_gap = o->rate ? hz * GEN_BURST / o->rate : 0;
    uint64_t now = rte_get_tsc_cycles();
    uint64_t next_tx = now;
    uint16_t i, n;

    while (!gen_quit) {
        now = rte_get_tsc_cycles();
        if (now >= end_tsc && (!need_pass || r->sent_total >= o->flows || now >= hard_end_tsc))
            break;
        if (burst_gap == 0 || now >= next_tx) {
            if (rte_pktmbuf_alloc_bulk(tx_pool, pkts, GEN_BURST) == 0) {
                uint64_t c = r->cursor;
                uint16_t sent;

                for (i = 0; i < GEN_BURST; i++) {
                    struct rte_mbuf *m = pkts[i];

                    m->data_len = (uint16_t)t->len;
                    m->pkt_len = t->len;
                    rewrite(m, t, (uint32_t)c);
                    if (++c == o->flows)
                        c = 0;
                }
                sent = rte_eth_tx_burst(port, 0, pkts, GEN_BURST);
                if (sent < GEN_BURST) {
                    r->tx_full += GEN_BURST - sent;
                    rte_pktmbuf_free_bulk(&pkts[sent], GEN_BURST - sent);
                }
                /* the cursor moves by what was sent, so a full ring skips no flow */
                r->cursor = (r->cursor + sent) % o->flows;
                r->tx += sent;
                r->sent_total += sent;
            }
            if (burst_gap)
                next_tx += burst_gap;
        }
        n = rte_eth_rx_burst(port, 0, rx, GEN_RX_BURST);
        if (n) {
            r->rx += n;
            rte_pktmbuf_free_bulk(rx, n);
        }
    }
    return now;
}

int main(int argc, char **argv)
{
    struct gen_opts o;
    struct gen_template *t = NULL;
    struct rte_mempool *tx_pool = NULL, *rx_pool = NULL;
    struct rte_ether_addr src_mac;
    struct gen_run warm, meas;
    uint64_t hz, start, end, hard_end;
    uint16_t port = RTE_MAX_ETHPORTS, pid;
    int ret, rc = 1, port_started = 0;
    double secs;
    int i;

    /* --help after "--" answers before EAL starts (nothing to clean up) */
    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            for (i++; i < argc; i++) {
                if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
                    usage(stdout);
                    return 0;
                }
            }
        }
    }
    ret = rte_eal_init(argc, argv);
    if (ret < 0) {
        fprintf(stderr, "pydp-gen: EAL initialisation failed: %s\n", rte_strerror(rte_errno));
        return 1;
    }
    argc -= ret;
    argv += ret;
    if (parse_opts(argc, argv, &o) != 0)
        goto out;
    signal(SIGINT, gen_on_signal);
    signal(SIGTERM, gen_on_signal);

    RTE_ETH_FOREACH_DEV(pid) {
        if (port == RTE_MAX_ETHPORTS)
            port = pid;
    }
    if (port == RTE_MAX_ETHPORTS || rte_eth_dev_count_avail() != 1) {
        fprintf(stderr, "pydp-gen: needs exactly one port (e.g. --vdev net_memif0,role=server,socket=PATH), "
                "found %u\n", rte_eth_dev_count_avail());
        goto out;
    }
    t = rte_zmalloc("gen_template", sizeof(*t), RTE_CACHE_LINE_SIZE);
    if (t == NULL) {
        fprintf(stderr, "pydp-gen: out of memory\n");
        goto out;
    }
    rte_eth_macaddr_get(port, &src_mac);
    build_template(t, &o, &src_mac);
    rx_pool = rte_pktmbuf_pool_create("gen_rx", GEN_RX_MBUFS, GEN_CACHE, 0, RTE_MBUF_DEFAULT_BUF_SIZE,
                                      (int)rte_socket_id());
    tx_pool = make_tx_pool(t, (int)rte_socket_id());
    if (rx_pool == NULL || tx_pool == NULL) {
        fprintf(stderr, "pydp-gen: cannot create the mbuf pools: %s\n", rte_strerror(rte_errno));
        goto out;
    }
    if (port_setup(port, rx_pool) != 0)
        goto out;
    port_started = 1;
    fprintf(stderr, "pydp-gen: port %u up, waiting for the link\n", port);
    if (wait_link(port, o.link_timeout) != 0) {
        fprintf(stderr, "pydp-gen: %s\n", gen_quit ? "interrupted" : "no link (is the peer connected?)");
        goto out;
    }
    hz = rte_get_tsc_hz();

    memset(&warm, 0, sizeof(warm));
    start = rte_get_tsc_cycles();
    end = start + (uint64_t)(o.warmup * (double)hz);
    hard_end = end + (uint64_t)GEN_WARMUP_GRACE_S * hz;
    fprintf(stderr, "pydp-gen: link up, warming up (%.1f s, %u flows)\n", o.warmup, o.flows);
    run_phase(port, tx_pool, t, &o, &warm, end, 1, hard_end);
    if (warm.sent_total < o.flows && !gen_quit)
        fprintf(stderr, "pydp-gen: warning: warm-up ended after %" PRIu64 " of %u flows\n", warm.sent_total,
                o.flows);

    memset(&meas, 0, sizeof(meas));
    meas.cursor = warm.cursor;
    fprintf(stderr, "pydp-gen: measuring (%.1f s)\n", o.seconds);
    start = rte_get_tsc_cycles();
    end = run_phase(port, tx_pool, t, &o, &meas, start + (uint64_t)(o.seconds * (double)hz), 0, 0);
    secs = (double)(end - start) / (double)hz;
    fprintf(stderr, "pydp-gen: done\n");
    if (gen_quit)
        fprintf(stderr, "pydp-gen: interrupted: the result covers %.3f s\n", secs);

    if (o.json) {
        printf("{\"tx_pps\": %.1f, \"rx_pps\": %.1f, \"tx\": %" PRIu64 ", \"rx\": %" PRIu64 ", \"seconds\": %.6f, "
               "\"flows\": %u, \"size\": %u, \"tx_ring_full\": %" PRIu64 ", \"warmup_tx\": %" PRIu64
               ", \"warmup_rx\": %" PRIu64 ", \"tsc_hz\": %" PRIu64 ", \"interrupted\": %s}\n",
               secs > 0 ? (double)meas.tx / secs : 0.0, secs > 0 ? (double)meas.rx / secs : 0.0, meas.tx, meas.rx,
               secs, o.flows, o.size, meas.tx_full, warm.tx, warm.rx, hz, gen_quit ? "true" : "false");
    } else {
        printf("seconds %.3f  flows %u  size %u\n", secs, o.flows, o.size);
        printf("tx %" PRIu64 " (%.3f Mpps)  rx %" PRIu64 " (%.3f Mpps)  tx ring full %" PRIu64 "\n", meas.tx,
               secs > 0 ? (double)meas.tx / secs / 1e6 : 0.0, meas.rx,
               secs > 0 ? (double)meas.rx / secs / 1e6 : 0.0, meas.tx_full);
    }
    fflush(stdout);
    if (o.linger > 0 && !gen_quit) {
        /* The peer stops first: a memif peer that vanishes while the other side polls can crash it. */
        uint64_t until = rte_get_tsc_cycles() + (uint64_t)(o.linger * (double)hz);
        struct rte_mbuf *drain[GEN_BURST];

        fprintf(stderr, "pydp-gen: lingering (up to %.1f s, until SIGTERM)\n", o.linger);
        while (!gen_quit && rte_get_tsc_cycles() < until) {
            uint16_t n = rte_eth_rx_burst(port, 0, drain, GEN_BURST);

            if (n)
                rte_pktmbuf_free_bulk(drain, n);
            else
                rte_delay_us_sleep(100);
        }
    }
    rc = 0;
out:
    if (port_started) {
        rte_eth_dev_stop(port);
        rte_eth_dev_close(port);
    }
    if (tx_pool != NULL)
        rte_mempool_free(tx_pool);
    if (rx_pool != NULL)
        rte_mempool_free(rx_pool);
    rte_free(t);
    rte_eal_cleanup();
    return rc;
}
