/*
 * pydp_gen.c - pydp-gen: a small DPDK traffic generator and sink on one port, for the performance harness.
 *
 *   pydp-gen EAL-ARGS -- --spec FILE [--seconds S] [--warmup S] [--warmup-packets N] [--rate PPS] [--count N]
 *                        [--drain S] [--link-timeout S] [--json] [--linger S]
 *
 * The spec (perf/trex/compile.py writes it from a TRex stateless profile) holds each stream's frame and its
 * field-engine program (gen_engine.c). One lcore sends bursts of 32 frames, the streams interleaved in the
 * spec's order, and in the same loop receives and counts what comes back on the same port (the forwarder under
 * test sends it back).
 *
 * Each stream has a template pool: every mbuf is written once with the stream's frame when the pool is created,
 * and since nothing else ever writes into those buffers (received frames come from a separate pool), a packet is
 * made by running the program only. Frames the ring refuses are kept and sent first next time, so the field
 * engine's sequence (the flows) has no gaps.
 *
 * Phases: wait for the link, warm up (at least --warmup seconds and at least --warmup-packets packets, so the
 * forwarder's flow table holds the flows; bounded), then measure for --seconds (or until --count packets are
 * sent), then receive only for --drain seconds (frames still in flight count as received). Progress goes to
 * stderr ("pydp-gen: measuring" marks the start of the measurement window), the result to stdout.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_malloc.h>
#include <rte_mbuf.h>
#include <rte_mbuf_pool_ops.h>
#include <rte_mempool.h>

#include "gen_engine.h"

#define GEN_BURST 32
#define GEN_RX_BURST 64
#define GEN_RING 1024
#define GEN_TX_MBUFS 8191           /* over all streams */
#define GEN_RX_MBUFS 8191
#define GEN_CACHE 256
#define GEN_WARMUP_GRACE_S 30       /* how long past --warmup the --warmup-packets may take */

struct gen_opts {
    const char *spec;
    double seconds;
    double warmup;
    uint64_t warmup_packets;
    uint64_t rate;                  /* packets per second, 0 = as fast as possible */
    uint64_t count;                 /* packets to send in the measurement window, 0 = no limit */
    double drain;
    double link_timeout;
    double linger;                  /* after reporting, keep the link up (draining RX) this long or until a signal */
    int json;
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
            "usage: pydp-gen EAL-ARGS -- --spec FILE [options]\n"
            "  --spec FILE        streams and field-engine programs (perf/trex/compile.py PROFILE -o FILE)\n"
            "  --seconds S        measurement time (default 5)\n"
            "  --warmup S         send this long first (default 2)\n"
            "  --warmup-packets N and at least N packets (e.g. the flow count: the forwarder then holds every flow)\n"
            "  --rate PPS         offered load, 0 = flat out (default 0)\n"
            "  --count N          stop the measurement after N packets (default: no limit)\n"
            "  --drain S          after sending, receive only for S seconds (in-flight frames count; default 0)\n"
            "  --link-timeout S   how long to wait for the link (default 30)\n"
            "  --json             print the result as one JSON object\n"
            "  --linger S         after the result, keep the link up (draining) for S seconds or until SIGTERM,\n"
            "                     so the peer can stop first\n"
            "example:\n"
            "  pydp-gen --lcores 0@0 --no-pci --vdev net_memif0,role=server,socket=/tmp/m.sock -- \\\n"
            "      --spec udp.spec --seconds 5 --json\n");
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

static int parse_opts(int argc, char **argv, struct gen_opts *o)
{
    static const struct option longopts[] = {
        {"spec", required_argument, NULL, 'S'},
        {"seconds", required_argument, NULL, 't'},
        {"warmup", required_argument, NULL, 'w'},
        {"warmup-packets", required_argument, NULL, 'W'},
        {"rate", required_argument, NULL, 'r'},
        {"count", required_argument, NULL, 'c'},
        {"drain", required_argument, NULL, 'D'},
        {"link-timeout", required_argument, NULL, 'l'},
        {"json", no_argument, NULL, 'j'},
        {"linger", required_argument, NULL, 'g'},
        {NULL, 0, NULL, 0},
    };
    struct { int opt; const char *name; double *secs; uint64_t *num; } fields[] = {
        {'t', "--seconds", &o->seconds, NULL}, {'w', "--warmup", &o->warmup, NULL},
        {'D', "--drain", &o->drain, NULL}, {'l', "--link-timeout", &o->link_timeout, NULL},
        {'g', "--linger", &o->linger, NULL}, {'W', "--warmup-packets", NULL, &o->warmup_packets},
        {'r', "--rate", NULL, &o->rate}, {'c', "--count", NULL, &o->count},
    };
    int c;
    size_t i;

    memset(o, 0, sizeof(*o));
    o->seconds = 5.0;
    o->warmup = 2.0;
    o->link_timeout = 30.0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        if (c == 'S') {
            o->spec = optarg;
            continue;
        }
        if (c == 'j') {
            o->json = 1;
            continue;
        }
        for (i = 0; i < RTE_DIM(fields); i++) {
            if (fields[i].opt != c)
                continue;
            if (fields[i].secs ? parse_secs(optarg, fields[i].secs) : parse_u64(optarg, fields[i].num)) {
                fprintf(stderr, "pydp-gen: %s: '%s' is not a %s\n", fields[i].name, optarg,
                        fields[i].secs ? "number of seconds (0..86400)" : "non-negative integer");
                return -1;
            }
            break;
        }
        if (i == RTE_DIM(fields)) {
            usage(stderr);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "pydp-gen: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (o->spec == NULL) {
        fprintf(stderr, "pydp-gen: --spec FILE is required (perf/trex/compile.py writes one from a profile)\n");
        return -1;
    }
    if (!(o->seconds > 0) && o->count == 0) {
        fprintf(stderr, "pydp-gen: --seconds must be positive\n");
        return -1;
    }
    return 0;
}

/* mempool object initialiser: after the standard mbuf init, copy the stream's frame into the buffer. */
static void init_tx_mbuf(struct rte_mempool *mp, void *arg, void *obj, unsigned int idx)
{
    const struct gen_stream *s = arg;
    struct rte_mbuf *m = obj;

    rte_pktmbuf_init(mp, NULL, obj, idx);
    memcpy((uint8_t *)m->buf_addr + RTE_PKTMBUF_HEADROOM, s->frame, s->len);
}

static struct rte_mempool *make_tx_pool(const struct gen_stream *s, unsigned int n, unsigned int idx, int socket)
{
    struct rte_pktmbuf_pool_private priv;
    struct rte_mempool *mp;
    char name[RTE_MEMPOOL_NAMESIZE];

    snprintf(name, sizeof(name), "gen_tx%u", idx);
    mp = rte_mempool_create_empty(name, n, sizeof(struct rte_mbuf) + RTE_MBUF_DEFAULT_BUF_SIZE, GEN_CACHE,
                                  sizeof(priv), socket, 0);
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
    rte_mempool_obj_iter(mp, init_tx_mbuf, (void *)(uintptr_t)s);
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

struct gen_tx {
    struct gen_spec *spec;
    struct rte_mempool *pools[GEN_MAX_STREAMS];
    uint32_t cursor;                /* position in spec->order of the next packet */
    struct rte_mbuf *pending[GEN_BURST];    /* made, refused by the ring: sent first next time */
    uint16_t nb_pending;
};

struct gen_count {
    uint64_t tx, rx, tx_full, tx_nombuf;
    uint64_t stream_tx[GEN_MAX_STREAMS];
};

/* Fills the burst up to GEN_BURST with new packets (pending ones first); returns how many it holds. */
static uint16_t make_burst(struct gen_tx *g, struct rte_mbuf **pkts, uint16_t want, struct gen_count *c)
{
    struct gen_spec *spec = g->spec;
    uint8_t which[GEN_BURST];
    uint16_t need[GEN_MAX_STREAMS] = {0}, pos[GEN_MAX_STREAMS] = {0};
    struct rte_mbuf *got[GEN_MAX_STREAMS][GEN_BURST];
    uint16_t n = g->nb_pending, i, k;
    uint32_t cur = g->cursor, s;

    memcpy(pkts, g->pending, n * sizeof(pkts[0]));
    g->nb_pending = 0;
    if (want <= n)
        return n;
    k = want - n;
    for (i = 0; i < k; i++) {
        which[i] = spec->order[cur];
        need[which[i]]++;
        if (++cur == spec->order_len)
            cur = 0;
    }
    for (s = 0; s < spec->nb_streams; s++) {
        if (need[s] && rte_pktmbuf_alloc_bulk(g->pools[s], got[s], need[s]) != 0) {
            while (s-- > 0)
                if (need[s])
                    rte_pktmbuf_free_bulk(got[s], need[s]);
            c->tx_nombuf++;
            return n;
        }
    }
    for (i = 0; i < k; i++) {
        struct gen_stream *st = &spec->streams[which[i]];
        struct rte_mbuf *m = got[which[i]][pos[which[i]]++];

        m->data_len = (uint16_t)st->len;       /* the allocation reset the lengths, not the bytes */
        m->pkt_len = st->len;
        gen_stream_apply(st, rte_pktmbuf_mtod(m, uint8_t *));
        c->stream_tx[which[i]]++;
        pkts[n++] = m;
    }
    g->cursor = cur;
    return n;
}

/* Sends and receives until end_tsc (and until min_packets were sent, or hard_end_tsc), or until
 * max_packets were sent (0: no limit). Returns the TSC at which the phase ended. */
static uint64_t run_phase(uint16_t port, struct gen_tx *g, const struct gen_opts *o, struct gen_count *c,
                          uint64_t end_tsc, uint64_t min_packets, uint64_t hard_end_tsc, uint64_t max_packets)
{
    struct rte_mbuf *pkts[GEN_BURST];
    struct rte_mbuf *rx[GEN_RX_BURST];
    const uint64_t hz = rte_get_tsc_hz();
    const uint64_t burst_gap = o->rate ? hz * GEN_BURST / o->rate : 0;
    uint64_t now = rte_get_tsc_cycles();
    uint64_t next_tx = now;
    uint16_t n;

    while (!gen_quit) {
        now = rte_get_tsc_cycles();
        if (max_packets ? c->tx >= max_packets && g->nb_pending == 0
                        : now >= end_tsc && (c->tx >= min_packets || now >= hard_end_tsc))
            break;
        if (burst_gap == 0 || now >= next_tx) {
            uint16_t want = GEN_BURST, have, sent;

            if (max_packets && max_packets - c->tx < want)
                want = (uint16_t)(max_packets - c->tx);
            have = make_burst(g, pkts, want, c);
            sent = have ? rte_eth_tx_burst(port, 0, pkts, have) : 0;
            if (sent < have) {
                c->tx_full += have - sent;
                memcpy(g->pending, &pkts[sent], (have - sent) * sizeof(pkts[0]));
                g->nb_pending = have - sent;
            }
            c->tx += sent;
            if (burst_gap)
                next_tx += burst_gap;
        }
        n = rte_eth_rx_burst(port, 0, rx, GEN_RX_BURST);
        if (n) {
            c->rx += n;
            rte_pktmbuf_free_bulk(rx, n);
        }
    }
    return now;
}

/* Receives only, until end_tsc: frames still in flight when sending stopped. */
static void drain(uint16_t port, uint64_t end_tsc, uint64_t *rx)
{
    struct rte_mbuf *pkts[GEN_RX_BURST];

    while (!gen_quit && rte_get_tsc_cycles() < end_tsc) {
        uint16_t n = rte_eth_rx_burst(port, 0, pkts, GEN_RX_BURST);

        if (n) {
            *rx += n;
            rte_pktmbuf_free_bulk(pkts, n);
        } else {
            rte_delay_us_sleep(50);
        }
    }
}

static void report(const struct gen_opts *o, const struct gen_spec *spec, const struct gen_count *warm,
                   const struct gen_count *m, uint64_t drained, double secs)
{
    uint32_t s;

    if (!o->json) {
        printf("seconds %.3f  streams %u\n", secs, spec->nb_streams);
        printf("tx %" PRIu64 " (%.3f Mpps)  rx %" PRIu64 " (%.3f Mpps)  drained %" PRIu64 "  tx ring full %" PRIu64
               "\n", m->tx, secs > 0 ? (double)m->tx / secs / 1e6 : 0.0, m->rx,
               secs > 0 ? (double)m->rx / secs / 1e6 : 0.0, drained, m->tx_full);
        return;
    }
    printf("{\"tx_pps\": %.1f, \"rx_pps\": %.1f, \"tx\": %" PRIu64 ", \"rx\": %" PRIu64 ", \"drained_rx\": %" PRIu64
           ", \"seconds\": %.6f, \"tx_ring_full\": %" PRIu64 ", \"tx_no_mbuf\": %" PRIu64 ", \"warmup_tx\": %" PRIu64
           ", \"warmup_rx\": %" PRIu64 ", \"tsc_hz\": %" PRIu64 ", \"interrupted\": %s, \"streams\": [",
           secs > 0 ? (double)m->tx / secs : 0.0, secs > 0 ? (double)m->rx / secs : 0.0, m->tx, m->rx, drained, secs,
           m->tx_full, m->tx_nombuf, warm->tx, warm->rx, rte_get_tsc_hz(), gen_quit ? "true" : "false");
    for (s = 0; s < spec->nb_streams; s++)
        printf("%s{\"size\": %u, \"tx\": %" PRIu64 "}", s ? ", " : "", spec->streams[s].len, m->stream_tx[s]);
    printf("]}\n");
}

static void linger(uint16_t port, double secs)
{
    /* The peer stops first: a memif peer that vanishes while the other side polls can crash it. */
    uint64_t discard = 0;

    fprintf(stderr, "pydp-gen: lingering (up to %.1f s, until SIGTERM)\n", secs);
    drain(port, rte_get_tsc_cycles() + (uint64_t)(secs * (double)rte_get_tsc_hz()), &discard);
}

static struct gen_spec *load_spec(const char *path)
{
    static char err[512];
    struct gen_spec *spec = rte_zmalloc("gen_spec", sizeof(*spec), RTE_CACHE_LINE_SIZE);
    FILE *f;

    if (spec == NULL) {
        fprintf(stderr, "pydp-gen: out of memory\n");
        return NULL;
    }
    f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "pydp-gen: --spec %s: %s\n", path, strerror(errno));
        rte_free(spec);
        return NULL;
    }
    if (gen_spec_load(spec, f, path, err, sizeof(err)) != 0) {
        fprintf(stderr, "pydp-gen: %s\n", err);
        rte_free(spec);
        spec = NULL;
    }
    fclose(f);
    return spec;
}

int main(int argc, char **argv)
{
    struct gen_opts o;
    struct gen_tx g;
    struct rte_mempool *rx_pool = NULL;
    struct gen_count warm, meas;
    uint64_t hz, start, end, drained = 0;
    uint16_t port = RTE_MAX_ETHPORTS, pid;
    int ret, rc = 1, port_started = 0;
    uint32_t s;
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
    memset(&g, 0, sizeof(g));
    ret = rte_eal_init(argc, argv);
    if (ret < 0) {
        fprintf(stderr, "pydp-gen: EAL initialisation failed: %s\n", rte_strerror(rte_errno));
        return 1;
    }
    argc -= ret;
    argv += ret;
    if (parse_opts(argc, argv, &o) != 0 || (g.spec = load_spec(o.spec)) == NULL)
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
    rx_pool = rte_pktmbuf_pool_create("gen_rx", GEN_RX_MBUFS, GEN_CACHE, 0, RTE_MBUF_DEFAULT_BUF_SIZE,
                                      (int)rte_socket_id());
    for (s = 0; s < g.spec->nb_streams; s++) {
        g.pools[s] = make_tx_pool(&g.spec->streams[s], GEN_TX_MBUFS / g.spec->nb_streams, s,
                                  (int)rte_socket_id());
        if (g.pools[s] == NULL)
            break;
    }
    if (rx_pool == NULL || s < g.spec->nb_streams) {
        fprintf(stderr, "pydp-gen: cannot create the mbuf pools: %s\n", rte_strerror(rte_errno));
        goto out;
    }
    if (port_setup(port, rx_pool) != 0)
        goto out;
    port_started = 1;
    fprintf(stderr, "pydp-gen: port %u up, %u stream(s), waiting for the link\n", port, g.spec->nb_streams);
    if (wait_link(port, o.link_timeout) != 0) {
        fprintf(stderr, "pydp-gen: %s\n", gen_quit ? "interrupted" : "no link (is the peer connected?)");
        goto out;
    }
    hz = rte_get_tsc_hz();

    memset(&warm, 0, sizeof(warm));
    if (o.warmup > 0 || o.warmup_packets > 0) {
        start = rte_get_tsc_cycles();
        end = start + (uint64_t)(o.warmup * (double)hz);
        fprintf(stderr, "pydp-gen: link up, warming up (%.1f s, %" PRIu64 " packets)\n", o.warmup,
                o.warmup_packets);
        run_phase(port, &g, &o, &warm, end, o.warmup_packets, end + (uint64_t)GEN_WARMUP_GRACE_S * hz, 0);
        if (warm.tx < o.warmup_packets && !gen_quit)
            fprintf(stderr, "pydp-gen: warning: warm-up ended after %" PRIu64 " of %" PRIu64 " packets\n",
                    warm.tx, o.warmup_packets);
    }

    memset(&meas, 0, sizeof(meas));
    fprintf(stderr, "pydp-gen: measuring (%.1f s)\n", o.seconds);
    start = rte_get_tsc_cycles();
    end = run_phase(port, &g, &o, &meas, start + (uint64_t)(o.seconds * (double)hz), 0, 0, o.count);
    secs = (double)(end - start) / (double)hz;
    if (o.drain > 0)
        drain(port, rte_get_tsc_cycles() + (uint64_t)(o.drain * (double)hz), &drained);
    fprintf(stderr, "pydp-gen: done\n");
    if (gen_quit)
        fprintf(stderr, "pydp-gen: interrupted: the result covers %.3f s\n", secs);
    report(&o, g.spec, &warm, &meas, drained, secs);
    fflush(stdout);
    if (o.linger > 0 && !gen_quit)
        linger(port, o.linger);
    rc = 0;
out:
    if (port_started) {
        rte_eth_dev_stop(port);
        rte_eth_dev_close(port);
    }
    if (g.nb_pending)
        rte_pktmbuf_free_bulk(g.pending, g.nb_pending);
    for (s = 0; s < GEN_MAX_STREAMS; s++)
        if (g.pools[s] != NULL)
            rte_mempool_free(g.pools[s]);
    if (rx_pool != NULL)
        rte_mempool_free(rx_pool);
    rte_free(g.spec);
    rte_eal_cleanup();
    return rc;
}
