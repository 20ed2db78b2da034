/*
 * bench_verdict.c - the worker's per-packet verdict (native/src/verdict.c) and flow table without DPDK or memif:
 * a cycles-per-packet figure for the flow-table levers that a shared, noisy VM cannot blur, since it is the
 * minimum over repetitions of a loop that touches nothing but the table.
 *
 * A real region (/dev/shm, unlinked at once) with one cluster of four edges; FLOWS distinct UDP flows sent round
 * robin, as pydp-gen's tuple program sends them, in bursts of 32 through the worker's stages: classify (cluster
 * IP, hash, signature, prefetch of the bucket), the ways prefetch 6 packets ahead, and the pick. The first pass
 * inserts every flow; the timed passes are hits (and the inserts of flows evicted from over-full buckets). The
 * millisecond clock advances every 7008 packets (about 7 Mpps).
 *
 *   pydp-bench-verdict [FLOWS [CAPACITY [REPEATS [stages]]]]      (defaults 1000000 2097152 7)
 *
 * Prints cycles per packet (TSC) of every pass and the minimum. With "stages" it then times the classify stage's
 * parts alone over the same packets (the minimum over REPEATS passes each): the cluster-IP lookup
 * (pydp_config_lookup_vip), the flow hash and signature, and the whole of pydp_verdict_classify; then pydp_parse of
 * 4096 distinct 64-byte UDP/IPv4 frames and of 4096 78-byte UDP/IPv6 frames (as perf/trex's udp_flows and ipv6
 * profiles send them), each followed by the hash and signature of the key it built. Not a test: speed is never
 * asserted.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <x86intrin.h>

#include "pydp.h"
#include "pydp_verdict.h"

#define BV_BURST 32
#ifndef BV_AHEAD
#define BV_AHEAD 6
#endif

static void
bv_die(const char *what, const char *err)
{
    fprintf(stderr, "bench_verdict: %s: %s\n", what, err);
    exit(2);
}

#define BV_FRAMES 4096

/* pydp_parse (+ hash and signature of the key) over BV_FRAMES distinct UDP frames of each family. */
static void
bv_parse_stages(uint32_t reps, uint64_t *sink)
{
    static uint8_t f4[BV_FRAMES][64], f6[BV_FRAMES][78];
    static const char *what[4] = { "parse UDP/IPv4", "parse UDP/IPv6", "parse + hash + signature UDP/IPv4",
                                   "parse + hash + signature UDP/IPv6" };
    double st[4] = { 1e30, 1e30, 1e30, 1e30 };
    struct pydp_pkt_info x;
    uint32_t i, r, s;

    for (i = 0; i < BV_FRAMES; i++) {
        uint8_t *e = f4[i], *ip = e + 14, *u = ip + 20;

        e[12] = 0x08;                                   /* IPv4: 198.18.x.y -> 198.51.100.10, UDP 1024+ -> 80 */
        ip[0] = 0x45;
        ip[3] = 50;                                     /* total length 50: 64-byte frame */
        ip[8] = 64;
        ip[9] = 17;
        ip[12] = 198, ip[13] = 18, ip[14] = (uint8_t)(i >> 8), ip[15] = (uint8_t)i;
        ip[16] = 198, ip[17] = 51, ip[18] = 100, ip[19] = 10;
        u[0] = 4, u[1] = (uint8_t)i, u[3] = 80, u[5] = 30;
        e = f6[i], ip = e + 14, u = ip + 40;
        e[12] = 0x86, e[13] = 0xdd;                     /* IPv6: 2001:db8:1::x -> 2001:db8::10 */
        ip[0] = 0x60;
        ip[5] = 24;                                     /* payload 24: 78-byte frame */
        ip[6] = 17;
        ip[7] = 64;
        ip[8] = 0x20, ip[9] = 0x01, ip[10] = 0x0d, ip[11] = 0xb8, ip[13] = 1;
        ip[22] = (uint8_t)(i >> 8), ip[23] = (uint8_t)i;
        ip[24] = 0x20, ip[25] = 0x01, ip[26] = 0x0d, ip[27] = 0xb8, ip[39] = 0x10;
        u[0] = 4, u[1] = (uint8_t)i, u[3] = 80, u[5] = 24;
    }
    for (r = 0; r < reps; r++) {
        for (s = 0; s < 4; s++) {
            uint64_t t0 = __rdtsc();
            double c;

            for (i = 0; i < BV_FRAMES; i++) {
                if (s % 2 == 0)
                    *sink += (uint64_t)pydp_parse(f4[i], 64, &x);
                else
                    *sink += (uint64_t)pydp_parse(f6[i], 78, &x);
                if (s >= 2)
                    *sink += pydp_flow_hash(&x.key, 0x5eed) ^ pydp_flow_sig(&x.key);
                *sink += x.key.sport;
            }
            c = (double)(__rdtsc() - t0) / BV_FRAMES;
            if (c < st[s])
                st[s] = c;
        }
    }
    for (s = 0; s < 4; s++)
        printf("stage %s: best %.1f cycles/packet\n", what[s], st[s]);
}

int
main(int argc, char **argv)
{
    uint32_t flows = argc > 1 ? (uint32_t)strtoul(argv[1], NULL, 10) : 1000000;
    uint32_t cap = argc > 2 ? (uint32_t)strtoul(argv[2], NULL, 10) : 2097152;
    uint32_t reps = argc > 3 ? (uint32_t)strtoul(argv[3], NULL, 10) : 7;
    struct pydp_shm_params p = { .nb_workers = 1, .nb_ports = 1, .maglev_max = 65537, .flow_capacity = cap };
    struct pydp_shm shm;
    struct pydp_pkt_info *pk, burst[BV_BURST];
    struct pydp_verdict v[BV_BURST];
    const struct pydp_config *cfg;
    struct pydp_config *slot;
    struct pydp_flow_table *t;
    const uint8_t *maglev;
    char err[PYDP_ERR_LEN], path[128];
    double best = 1e30;
    uint32_t i, e, r, now = 1000;
    uint64_t hits = 0, inserts = 0;

    if (flows == 0 || reps == 0)
        bv_die("usage", "pydp-bench-verdict [FLOWS [CAPACITY [REPEATS]]]");
    snprintf(path, sizeof(path), "/dev/hugepages/pydp-bench-verdict-%ld", (long)getpid());
    if (pydp_shm_create(&shm, path, &p, err) != 0) {
        snprintf(path, sizeof(path), "/dev/shm/pydp-bench-verdict-%ld", (long)getpid());
        if (pydp_shm_create(&shm, path, &p, err) != 0)
            bv_die("region", err);
    }
    unlink(path);
    shm.owner = 0;
    slot = pydp_config_begin(&shm, 1000, err);
    if (slot == NULL)
        bv_die("config_begin", err);
    memset(&slot->clusters[0], 0, sizeof(slot->clusters[0]));
    snprintf(slot->clusters[0].name, PYDP_NAME_LEN, "bench");
    slot->clusters[0].family = PYDP_AF_INET;
    slot->clusters[0].vip[0] = 198;
    slot->clusters[0].vip[1] = 51;
    slot->clusters[0].vip[2] = 100;
    slot->clusters[0].vip[3] = 10;
    slot->clusters[0].enabled = 1;
    slot->clusters[0].owned = 1;
    slot->clusters[0].uid = 1;
    slot->clusters[0].maglev_size = 65537;
    for (e = 0; e < 4; e++) {
        struct pydp_edge *ed = &slot->clusters[0].edges[e];

        snprintf(ed->name, sizeof(ed->name), "edge%u", e + 1);
        ed->family = PYDP_AF_INET;
        ed->addr[0] = 198;
        ed->addr[1] = 51;
        ed->addr[2] = 100;
        ed->addr[3] = (uint8_t)(21 + e);
        ed->state = PYDP_EDGE_UP;
        ed->weight = 1;
        ed->uid = (uint16_t)(e + 1);
    }
    slot->nb_clusters = 1;
    if (pydp_config_rebuild(&shm, slot, 0, err) != 0 || pydp_config_publish(&shm, slot, err) != 0)
        bv_die("config", err);
    cfg = pydp_shm_config(&shm, (uint32_t)(shm.hdr->generation & 1));
    maglev = pydp_shm_maglev(&shm, (uint32_t)(shm.hdr->generation & 1), 0);
    t = pydp_shm_flows(&shm, 0);

    /* the flows as pydp-gen's tuple program makes them: 198.18.0.0/15 walks, the port steps when it wraps */
    pk = calloc(flows, sizeof(*pk));
    if (pk == NULL)
        bv_die("memory", "no room for the packets");
    for (i = 0; i < flows; i++) {
        uint32_t a = 0xc6120000u + i % 131072u;
        struct pydp_pkt_info *x = &pk[i];

        x->family = PYDP_AF_INET;
        x->klass = PYDP_CLS_IP;
        memcpy(x->dst, cfg->clusters[0].vip, 16);
        x->key.family = PYDP_AF_INET;
        x->key.src[0] = (uint8_t)(a >> 24);
        x->key.src[1] = (uint8_t)(a >> 16);
        x->key.src[2] = (uint8_t)(a >> 8);
        x->key.src[3] = (uint8_t)a;
        memcpy(x->key.dst, x->dst, 16);
        x->key.sport = __builtin_bswap16((uint16_t)(1024 + i / 131072u));
        x->key.dport = __builtin_bswap16(8080);
        x->key.proto = 17;
        x->l4_proto = 17;
    }

    for (r = 0; r <= reps; r++) {
        uint64_t t0 = __rdtsc(), n = 0;
#ifdef BV_SPAN
        /* the pipeline spans bursts: burst N+1 is classified (and its buckets prefetched) before burst N is
         * picked */
        static struct pydp_pkt_info nburst[BV_BURST];
        static struct pydp_verdict nv[BV_BURST];
        uint32_t nb = 0, k;

        for (i = 0; i <= flows; i += BV_BURST) {
            uint32_t nn = i >= flows ? 0 : (flows - i < BV_BURST ? flows - i : BV_BURST);

            for (k = 0; k < nn; k++) {
                nburst[k] = pk[i + k];
                pydp_verdict_classify(cfg, &nburst[k], &nv[k]);
                pydp_flow_prefetch_bucket(t, nv[k].hash);
            }
            for (k = 0; k < nb && k < BV_AHEAD; k++)
                pydp_flow_prefetch_record(t, v[k].hash, v[k].sig, burst[k].key.proto, burst[k].tcp_flags);
            for (k = 0; k < nb; k++) {
                if (k + BV_AHEAD < nb)
                    pydp_flow_prefetch_record(t, v[k + BV_AHEAD].hash, v[k + BV_AHEAD].sig, burst[k + BV_AHEAD].key.proto,
                                              burst[k + BV_AHEAD].tcp_flags);
                pydp_verdict_pick(cfg, maglev, t, &burst[k], now, &v[k]);
                hits += (v[k].what & PYDP_VW_HIT) != 0;
                inserts += (v[k].what & PYDP_VW_INSERT) != 0;
            }
            n += nb;
            memcpy(burst, nburst, sizeof(burst[0]) * nn);
            memcpy(v, nv, sizeof(v[0]) * nn);
            nb = nn;
            if ((i / BV_BURST) % 219 == 218)
                now++;
        }
#else

        for (i = 0; i < flows; i += BV_BURST) {
            uint32_t nb = flows - i < BV_BURST ? flows - i : BV_BURST, k;
            for (k = 0; k < nb; k++) {
                burst[k] = pk[i + k];
                pydp_verdict_classify(cfg, &burst[k], &v[k]);
                pydp_flow_prefetch_bucket(t, v[k].hash);
            }
            for (k = 0; k < nb && k < BV_AHEAD; k++)
                pydp_flow_prefetch_record(t, v[k].hash, v[k].sig, burst[k].key.proto, burst[k].tcp_flags);
            for (k = 0; k < nb; k++) {
                if (k + BV_AHEAD < nb)
                    pydp_flow_prefetch_record(t, v[k + BV_AHEAD].hash, v[k + BV_AHEAD].sig, burst[k + BV_AHEAD].key.proto,
                                              burst[k + BV_AHEAD].tcp_flags);
                pydp_verdict_pick(cfg, maglev, t, &burst[k], now, &v[k]);
                hits += (v[k].what & PYDP_VW_HIT) != 0;
                inserts += (v[k].what & PYDP_VW_INSERT) != 0;
            }
            pydp_flow_fence();
            n += nb;
            if ((i / BV_BURST) % 219 == 218)    /* the clock: about 7000 packets per millisecond (7 Mpps) */
                now++;
        }
#endif
        if (r > 0) {                            /* pass 0 fills the table */
            double cpp = (double)(__rdtsc() - t0) / (double)n;

            printf("pass %u: %.1f cycles/packet\n", r, cpp);
            if (cpp < best)
                best = cpp;
        }
    }
    printf("flows %u, capacity %u (layout %u): best %.1f cycles/packet; hits %llu, inserts %llu, evicted %llu\n",
           flows, cap, (unsigned)PYDP_LAYOUT_VERSION, best, (unsigned long long)hits,
           (unsigned long long)inserts, (unsigned long long)t->evicted);
    if (argc > 4 && strcmp(argv[4], "stages") == 0) {
        static const char *what[3] = { "cluster-IP lookup", "flow hash + signature", "classify (all of it)" };
        double st[3] = { 1e30, 1e30, 1e30 };
        uint64_t sink = 0;
        uint32_t s;

        for (r = 0; r < reps; r++) {
            for (s = 0; s < 3; s++) {
                uint64_t t0 = __rdtsc();

                for (i = 0; i < flows; i++) {
                    struct pydp_pkt_info x = pk[i];

                    if (s == 0)
                        sink += (uint64_t)pydp_config_lookup_vip(cfg, x.family, x.dst);
                    else if (s == 1)
                        sink += pydp_flow_hash(&x.key, cfg->hash_seed) ^ pydp_flow_sig(&x.key);
                    else
                        sink += pydp_verdict_classify(cfg, &x, &v[0]) + v[0].hash;
                }
                if ((double)(__rdtsc() - t0) / flows < st[s])
                    st[s] = (double)(__rdtsc() - t0) / flows;
            }
        }
        for (s = 0; s < 3; s++)
            printf("stage %s: best %.1f cycles/packet\n", what[s], st[s]);
        bv_parse_stages(reps, &sink);
        printf("(sink %llu)\n", (unsigned long long)sink);
    }
    pydp_shm_close(&shm);
    free(pk);
    return 0;
}
