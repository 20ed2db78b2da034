/* test_flow.c - unit tests of the flow table (flow.c): no DPDK, table memory from aligned_alloc. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pydp.h"
#include "check.h"

#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_PSH 0x08
#define TH_ACK 0x10

/* ---- helpers ---- */

/* A local flow hash (pydp_flow_hash lives in hash.c): fold the five key words through a multiply-xorshift mix. */
static uint32_t
tst_hash(const struct pydp_flow_key *key)
{
    const uint8_t *p = (const uint8_t *)key;
    uint64_t h = 0x243f6a8885a308d3ull;
    int i;

    for (i = 0; i < 5; i++) {
        uint64_t w;

        memcpy(&w, p + 8 * i, sizeof(w));
        h ^= w;
        h *= 0x9e3779b97f4a7c15ull;
        h ^= h >> 31;
    }
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 29;
    return (uint32_t)(h ^ (h >> 32));
}

static uint64_t
tst_splitmix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static struct pydp_flow_key
tst_key4(uint32_t src, uint16_t sport, uint16_t dport, uint8_t proto)
{
    struct pydp_flow_key k;
    const uint8_t dst[4] = { 192, 0, 2, 10 };

    memset(&k, 0, sizeof(k));
    memcpy(k.src, &src, 4);
    memcpy(k.dst, dst, 4);
    k.sport = sport;
    k.dport = dport;
    k.proto = proto;
    k.family = PYDP_AF_INET;
    return k;
}

static struct pydp_flow_key
tst_key6(uint8_t last, uint16_t sport, uint16_t dport, uint8_t proto)
{
    struct pydp_flow_key k;
    unsigned i;

    memset(&k, 0, sizeof(k));
    k.src[0] = 0x20; k.src[1] = 0x01; k.src[2] = 0x0d; k.src[3] = 0xb8;
    for (i = 4; i < 15; i++)
        k.src[i] = (uint8_t)(i * 17);
    k.src[15] = last;
    k.dst[0] = 0x20; k.dst[1] = 0x01; k.dst[2] = 0x0d; k.dst[3] = 0xb8; k.dst[15] = 0x80;
    k.sport = sport;
    k.dport = dport;
    k.proto = proto;
    k.family = PYDP_AF_INET6;
    return k;
}

/* The i-th flow of the bulk test: unique (bijective scramble of i in the source address), random source port. */
static struct pydp_flow_key
tst_bulk_key(uint32_t i)
{
    uint64_t r = tst_splitmix(i);

    return tst_key4((i * 0x9e3779b1u) ^ 0x5bd1e995u, (uint16_t)(r | 1024), 443, 6);
}

static struct pydp_config
tst_cfg(void)
{
    struct pydp_config c;

    memset(&c, 0, sizeof(c));
    c.tcp_syn_timeout_ms = 5000;
    c.tcp_est_timeout_ms = 300000;
    c.tcp_fin_timeout_ms = 10000;
    c.udp_timeout_ms = 30000;
    c.other_timeout_ms = 60000;
    return c;
}

static struct pydp_flow_table *
tst_table(uint32_t capacity)
{
    uint64_t bytes = pydp_flow_table_bytes(capacity);
    struct pydp_flow_table *t = aligned_alloc(64, (size_t)bytes);

    if (t == NULL) {
        fprintf(stderr, "aligned_alloc(%llu) failed\n", (unsigned long long)bytes);
        exit(2);
    }
    memset(t, 0xa5, (size_t)bytes);   /* init must clear garbage */
    pydp_flow_table_init(t, capacity);
    return t;
}

/* What the worker does for the first packet of a flow. */
static struct pydp_flow *
tst_new_flow(struct pydp_flow_table *t, const struct pydp_flow_key *k, uint32_t hash, uint32_t now,
             const struct pydp_config *cfg, uint8_t flags, uint16_t cluster, uint8_t edge, int *evicted)
{
    int ev = -1;
    struct pydp_flow *f;

    CHECK(pydp_flow_lookup(t, k, hash, now, cfg) == NULL);
    f = pydp_flow_insert(t, k, hash, now, cfg, &ev);
    CHECK(f != NULL);
    CHECK(ev == 0 || ev == 1);
    f->cluster = cluster;
    f->edge = edge;
    f->state = PYDP_FLOW_EMPTY;
    pydp_flow_touch(t, f, flags, now);
    if (evicted != NULL)
        *evicted = ev;
    return f;
}

static double
tst_now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- tests ---- */

static void
test_sizes(void)
{
    const uint64_t hdr = sizeof(struct pydp_flow_table), bk = sizeof(struct pydp_flow_bucket);
    struct pydp_flow_table *t;

    CHECK_EQ(hdr, 3776);
    CHECK_EQ(bk, 448);
    CHECK_EQ(PYDP_FLOW_WAYS, 6);
    CHECK_EQ(pydp_flow_table_bytes(0), hdr + 8 * bk);
    CHECK_EQ(pydp_flow_table_bytes(1), hdr + 8 * bk);
    CHECK_EQ(pydp_flow_table_bytes(48), hdr + 8 * bk);
    CHECK_EQ(pydp_flow_table_bytes(49), hdr + 16 * bk);
    CHECK_EQ(pydp_flow_table_bytes(1000), hdr + 256 * bk);
    CHECK_EQ(pydp_flow_table_bytes(6u << 17), hdr + (1u << 17) * bk);
    CHECK_EQ(pydp_flow_table_bytes((6u << 17) + 1), hdr + (1u << 18) * bk);
    CHECK_EQ(pydp_flow_table_bytes(1u << 21), hdr + (1u << 19) * bk);     /* the default 2M: 3M entries */
    CHECK_EQ(pydp_flow_table_bytes(UINT32_MAX), hdr + (1ull << 30) * bk);

    t = tst_table(1000);
    CHECK_EQ(t->nb_buckets, 256);
    CHECK_EQ(t->mask, 255);
    {
        struct pydp_config cfg = tst_cfg();
        CHECK_EQ(pydp_flow_count(t, 12345, &cfg), 0);
    }
    free(t);
}

static void
test_timeouts(void)
{
    struct pydp_config cfg = tst_cfg();

    CHECK_EQ(pydp_flow_timeout(&cfg, PYDP_FLOW_TCP_SYN), 5000);
    CHECK_EQ(pydp_flow_timeout(&cfg, PYDP_FLOW_TCP_EST), 300000);
    CHECK_EQ(pydp_flow_timeout(&cfg, PYDP_FLOW_TCP_FIN), 10000);
    CHECK_EQ(pydp_flow_timeout(&cfg, PYDP_FLOW_UDP), 30000);
    CHECK_EQ(pydp_flow_timeout(&cfg, PYDP_FLOW_OTHER), 60000);
}

static void
test_roundtrip(void)
{
    struct pydp_config cfg = tst_cfg();
    struct pydp_flow_table *t = tst_table(1024);
    struct pydp_flow_key k4 = tst_key4(0x0a000001, 0x3930, 0xbb01, 6);
    struct pydp_flow_key k6 = tst_key6(7, 0x1027, 0x3500, 17);
    uint32_t h4 = tst_hash(&k4), h6 = tst_hash(&k6);
    struct pydp_flow *f4, *f6;
    int ev = -1;

    f4 = pydp_flow_insert(t, &k4, h4, 1000, &cfg, &ev);
    CHECK(f4 != NULL);
    CHECK_EQ(ev, 0);
    CHECK_MEM(&f4->key, &k4, sizeof(k4));
    CHECK_EQ(f4->hash, h4);
    CHECK_EQ(f4->created_ms, 1000);
    CHECK_EQ(pydp_flow_packets(t, f4), 0);
    CHECK_EQ(f4->state, PYDP_FLOW_OTHER);
    CHECK_EQ(f4->cluster, 0);
    CHECK_EQ(f4->edge, 0);
    CHECK_EQ(f4->cluster_uid, 0);
    CHECK_EQ(f4->edge_uid, 0);
    CHECK_EQ(pydp_flow_last_ms(t, f4), 1000);
    f4->cluster = 3;
    f4->edge = 5;
    f4->state = PYDP_FLOW_EMPTY;
    pydp_flow_touch(t, f4, TH_SYN, 1000);
    CHECK_EQ(pydp_flow_packets(t, f4), 1);
    CHECK_EQ(f4->state, PYDP_FLOW_TCP_SYN);

    ev = -1;
    f6 = pydp_flow_insert(t, &k6, h6, 1001, &cfg, &ev);
    CHECK(f6 != NULL);
    CHECK(f6 != f4);
    CHECK_EQ(ev, 0);
    CHECK_MEM(&f6->key, &k6, sizeof(k6));
    f6->state = PYDP_FLOW_EMPTY;
    pydp_flow_touch(t, f6, 0, 1001);
    CHECK_EQ(f6->state, PYDP_FLOW_UDP);

    CHECK(pydp_flow_lookup(t, &k4, h4, 1500, &cfg) == f4);
    CHECK(pydp_flow_lookup(t, &k6, h6, 1500, &cfg) == f6);
    CHECK_EQ(f4->cluster, 3);
    CHECK_EQ(f4->edge, 5);
    /* lookup does not touch */
    CHECK_EQ(pydp_flow_last_ms(t, f4), 1000);
    CHECK_EQ(pydp_flow_packets(t, f4), 1);
    pydp_flow_touch(t, f4, TH_ACK, 1600);
    CHECK_EQ(pydp_flow_last_ms(t, f4), 1600);
    CHECK_EQ(pydp_flow_packets(t, f4), 2);
    CHECK_EQ(f4->created_ms, 1000);
    CHECK_EQ(pydp_flow_count(t, 1600, &cfg), 2);

    /* keys differing in any one field miss */
    {
        struct pydp_flow_key m;

        m = k4; m.sport ^= 1;            CHECK(pydp_flow_lookup(t, &m, h4, 1600, &cfg) == NULL);
        m = k4; m.dport ^= 0x100;        CHECK(pydp_flow_lookup(t, &m, h4, 1600, &cfg) == NULL);
        m = k4; m.proto = 17;            CHECK(pydp_flow_lookup(t, &m, h4, 1600, &cfg) == NULL);
        m = k4; m.family = PYDP_AF_INET6; CHECK(pydp_flow_lookup(t, &m, h4, 1600, &cfg) == NULL);
        m = k4; m.src[3] ^= 1;           CHECK(pydp_flow_lookup(t, &m, h4, 1600, &cfg) == NULL);
        m = k4; m.dst[0] ^= 1;           CHECK(pydp_flow_lookup(t, &m, h4, 1600, &cfg) == NULL);
        m = k6; m.src[15] ^= 1;          CHECK(pydp_flow_lookup(t, &m, h6, 1600, &cfg) == NULL);
        m = k6; m.dst[8] ^= 1;           CHECK(pydp_flow_lookup(t, &m, h6, 1600, &cfg) == NULL);
    }
    /* the right key in another bucket misses (the signature comes from the key, the bucket from the hash) */
    CHECK(pydp_flow_lookup(t, &k4, h4 ^ 1u, 1600, &cfg) == NULL);
    CHECK(pydp_flow_lookup(t, &k4, h4, 1600, &cfg) == f4);
    free(t);
}

static void
test_same_hash(void)
{
    struct pydp_config cfg = tst_cfg();
    struct pydp_flow_table *t = tst_table(64);
    struct pydp_flow_key a = tst_key4(0x01020304, 1000, 80, 6);
    struct pydp_flow_key b = tst_key4(0x01020305, 1000, 80, 6);
    uint32_t h = tst_hash(&a);
    struct pydp_flow *fa, *fb;

    fa = tst_new_flow(t, &a, h, 10, &cfg, TH_ACK, 1, 1, NULL);
    CHECK(pydp_flow_lookup(t, &b, h, 10, &cfg) == NULL);        /* same hash (same bucket), other key */
    fb = tst_new_flow(t, &b, h, 11, &cfg, TH_ACK, 1, 2, NULL);
    CHECK(fa != fb);
    CHECK(pydp_flow_lookup(t, &a, h, 12, &cfg) == fa);
    CHECK(pydp_flow_lookup(t, &b, h, 12, &cfg) == fb);
    CHECK_EQ(fa->edge, 1);
    CHECK_EQ(fb->edge, 2);
    CHECK_EQ(pydp_flow_count(t, 12, &cfg), 2);
    free(t);
}

/* One flow per state, created at base (near UINT32_MAX so base + timeout wraps): alive at base + timeout, expired
 * (and reclaimed by the lookup) at base + timeout + 1. */
static void
test_expiry(void)
{
    static const struct {
        uint8_t proto, flags, state;
    } cases[] = {
        { 6, TH_SYN, PYDP_FLOW_TCP_SYN },
        { 6, TH_ACK, PYDP_FLOW_TCP_EST },
        { 6, TH_FIN | TH_ACK, PYDP_FLOW_TCP_FIN },
        { 17, 0, PYDP_FLOW_UDP },
        { 1, 0, PYDP_FLOW_OTHER },
        { 50, 0, PYDP_FLOW_OTHER },
    };
    struct pydp_config cfg = tst_cfg();
    const uint32_t bases[] = { 1000, UINT32_MAX - 1000, UINT32_MAX };
    unsigned c, bi;

    for (bi = 0; bi < sizeof(bases) / sizeof(bases[0]); bi++) {
        for (c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
            struct pydp_flow_table *t = tst_table(256);
            struct pydp_flow_key k = tst_key4(0x0a0000f0 + c, 5555, 53, cases[c].proto);
            uint32_t h = tst_hash(&k), base = bases[bi];
            uint32_t to = pydp_flow_timeout(&cfg, cases[c].state);
            struct pydp_flow *f = tst_new_flow(t, &k, h, base, &cfg, cases[c].flags, 0, 0, NULL);

            CHECK_EQ(f->state, cases[c].state);
            CHECK(pydp_flow_lookup(t, &k, h, base + to / 2, &cfg) == f);
            CHECK(pydp_flow_lookup(t, &k, h, base + to, &cfg) == f);
            CHECK_EQ(pydp_flow_count(t, base + to, &cfg), 1);
            CHECK_EQ(pydp_flow_count(t, base + to + 1, &cfg), 0);
            /* a packet refreshes it */
            pydp_flow_touch(t, f, cases[c].flags & ~TH_SYN, base + to);
            CHECK(pydp_flow_lookup(t, &k, h, base + to + 1, &cfg) == f);
            CHECK(pydp_flow_lookup(t, &k, h, base + to + to, &cfg) == f);
            /* expired: a miss, and the way is reclaimed (missing even at an earlier time afterwards) */
            CHECK(pydp_flow_lookup(t, &k, h, base + to + to + 1, &cfg) == NULL);
            CHECK(pydp_flow_lookup(t, &k, h, base, &cfg) == NULL);
            CHECK_EQ(pydp_flow_count(t, base, &cfg), 0);
            free(t);
        }
    }

    /* the timeout follows the current state: a SYN flow that got established lives long */
    {
        struct pydp_flow_table *t = tst_table(64);
        struct pydp_flow_key k = tst_key4(0x0a000042, 4242, 443, 6);
        uint32_t h = tst_hash(&k), base = UINT32_MAX - 10;
        struct pydp_flow *f = tst_new_flow(t, &k, h, base, &cfg, TH_SYN, 0, 0, NULL);

        CHECK(pydp_flow_lookup(t, &k, h, base + 5001, &cfg) == NULL);
        f = tst_new_flow(t, &k, h, base, &cfg, TH_SYN, 0, 0, NULL);
        pydp_flow_touch(t, f, TH_ACK, base + 100);
        CHECK_EQ(f->state, PYDP_FLOW_TCP_EST);
        CHECK(pydp_flow_lookup(t, &k, h, base + 100 + 5001, &cfg) == f);
        CHECK(pydp_flow_lookup(t, &k, h, base + 100 + 300000, &cfg) == f);
        CHECK(pydp_flow_lookup(t, &k, h, base + 100 + 300001, &cfg) == NULL);
        free(t);
    }
}

static void
test_tcp_states(void)
{
    struct pydp_config cfg = tst_cfg();
    struct pydp_flow_table *t = tst_table(64);
    struct pydp_flow_key k1 = tst_key4(0x0a000101, 40000, 80, 6);
    struct pydp_flow_key k2 = tst_key4(0x0a000102, 40001, 80, 6);
    struct pydp_flow_key k3 = tst_key4(0x0a000103, 40002, 80, 6);
    struct pydp_flow_key k4 = tst_key4(0x0a000104, 40003, 80, 6);
    struct pydp_flow_key k5 = tst_key6(9, 40004, 80, 6);
    struct pydp_flow *f;
    uint32_t now = 100;

    /* SYN -> EST -> FIN, then port reuse */
    f = tst_new_flow(t, &k1, tst_hash(&k1), now, &cfg, TH_SYN, 0, 0, NULL);
    CHECK_EQ(f->state, PYDP_FLOW_TCP_SYN);
    pydp_flow_touch(t, f, TH_SYN, ++now);                 /* retransmitted SYN */
    CHECK_EQ(f->state, PYDP_FLOW_TCP_SYN);
    pydp_flow_touch(t, f, TH_SYN | TH_ACK, ++now);        /* not a handshake ACK */
    CHECK_EQ(f->state, PYDP_FLOW_TCP_SYN);
    pydp_flow_touch(t, f, TH_ACK, ++now);
    CHECK_EQ(f->state, PYDP_FLOW_TCP_EST);
    pydp_flow_touch(t, f, TH_ACK | TH_PSH, ++now);
    CHECK_EQ(f->state, PYDP_FLOW_TCP_EST);
    pydp_flow_touch(t, f, TH_SYN, ++now);                 /* SYN on an established flow: ignored */
    CHECK_EQ(f->state, PYDP_FLOW_TCP_EST);
    pydp_flow_touch(t, f, TH_FIN | TH_ACK, ++now);
    CHECK_EQ(f->state, PYDP_FLOW_TCP_FIN);
    pydp_flow_touch(t, f, TH_ACK, ++now);                 /* last ACK */
    CHECK_EQ(f->state, PYDP_FLOW_TCP_FIN);
    pydp_flow_touch(t, f, TH_SYN, ++now);                 /* port reuse */
    CHECK_EQ(f->state, PYDP_FLOW_TCP_SYN);
    pydp_flow_touch(t, f, TH_ACK, ++now);
    CHECK_EQ(f->state, PYDP_FLOW_TCP_EST);
    CHECK_EQ(pydp_flow_packets(t, f), 10);
    CHECK_EQ(pydp_flow_last_ms(t, f), now);

    /* ACK first (mid-stream, e.g. after a fail-over) -> EST; then RST -> FIN */
    f = tst_new_flow(t, &k2, tst_hash(&k2), now, &cfg, TH_ACK, 0, 0, NULL);
    CHECK_EQ(f->state, PYDP_FLOW_TCP_EST);
    pydp_flow_touch(t, f, TH_RST, ++now);
    CHECK_EQ(f->state, PYDP_FLOW_TCP_FIN);

    /* RST on a SYN flow, RST as a first packet, FIN as a first packet */
    f = tst_new_flow(t, &k3, tst_hash(&k3), now, &cfg, TH_SYN, 0, 0, NULL);
    pydp_flow_touch(t, f, TH_RST | TH_ACK, ++now);
    CHECK_EQ(f->state, PYDP_FLOW_TCP_FIN);
    f = tst_new_flow(t, &k4, tst_hash(&k4), now, &cfg, TH_RST, 0, 0, NULL);
    CHECK_EQ(f->state, PYDP_FLOW_TCP_FIN);
    f = tst_new_flow(t, &k5, tst_hash(&k5), now, &cfg, TH_FIN | TH_ACK, 0, 0, NULL);
    CHECK_EQ(f->state, PYDP_FLOW_TCP_FIN);
    pydp_flow_touch(t, f, TH_SYN | TH_ACK, ++now);        /* SYN with ACK does not reopen */
    CHECK_EQ(f->state, PYDP_FLOW_TCP_FIN);

    /* UDP and other protocols ignore the flags */
    {
        struct pydp_flow_key u = tst_key4(0x0a000105, 5353, 53, 17);
        struct pydp_flow_key o = tst_key6(10, 0, 0, 58);

        f = tst_new_flow(t, &u, tst_hash(&u), now, &cfg, TH_SYN | TH_FIN, 0, 0, NULL);
        CHECK_EQ(f->state, PYDP_FLOW_UDP);
        pydp_flow_touch(t, f, TH_RST, ++now);
        CHECK_EQ(f->state, PYDP_FLOW_UDP);
        f = tst_new_flow(t, &o, tst_hash(&o), now, &cfg, TH_RST, 0, 0, NULL);
        CHECK_EQ(f->state, PYDP_FLOW_OTHER);
    }
    free(t);
}

static void
test_lru(void)
{
    struct pydp_config cfg = tst_cfg();
    enum { W = PYDP_FLOW_WAYS, A = PYDP_FLOW_WAYS - 3, B = PYDP_FLOW_WAYS - 2 };   /* A, B: flows that close */
    struct pydp_flow_table *t = tst_table(8 * PYDP_FLOW_WAYS);      /* 8 buckets */
    struct pydp_flow_key k[W + 4];
    uint32_t h[W + 4];
    struct pydp_flow *f[W + 4], *g;
    const uint32_t T = UINT32_MAX - 20;             /* the ages straddle the wrap */
    int ev, i;

    CHECK_EQ(t->nb_buckets, 8);
    for (i = 0; i < W + 4; i++) {
        k[i] = tst_key4(0x0b000000u + (uint32_t)i, (uint16_t)(2000 + i), 443, 6);
        h[i] = ((uint32_t)(i + 1) << 12) | 3;       /* all in bucket 3, distinct signatures */
    }
    for (i = 0; i < W; i++) {
        f[i] = tst_new_flow(t, &k[i], h[i], T + (uint32_t)i, &cfg, TH_ACK, 0, 0, &ev);
        CHECK_EQ(ev, 0);
    }
    /* flow 0 gets a packet: flow 1 is now the least recently used */
    pydp_flow_touch(t, f[0], TH_ACK, T + 40);
    g = tst_new_flow(t, &k[W], h[W], T + 50, &cfg, TH_ACK, 0, 0, &ev);
    CHECK_EQ(ev, 1);
    CHECK(g == f[1]);
    CHECK(pydp_flow_lookup(t, &k[1], h[1], T + 50, &cfg) == NULL);
    for (i = 0; i <= W; i++)
        if (i != 1)
            CHECK(pydp_flow_lookup(t, &k[i], h[i], T + 50, &cfg) != NULL);
    f[W] = g;
    CHECK_EQ(pydp_flow_count(t, T + 50, &cfg), W);

    /* flow A closes (FIN: 10 s); once it has expired it is taken before the LRU flow (2), with no eviction */
    pydp_flow_touch(t, f[A], TH_FIN | TH_ACK, T + 60);
    g = tst_new_flow(t, &k[W + 1], h[W + 1], T + 60 + 10001, &cfg, TH_ACK, 0, 0, &ev);
    CHECK_EQ(ev, 0);
    CHECK(g == f[A]);
    CHECK(pydp_flow_lookup(t, &k[A], h[A], T + 60 + 10001, &cfg) == NULL);
    CHECK(pydp_flow_lookup(t, &k[2], h[2], T + 60 + 10001, &cfg) == f[2]);
    CHECK(pydp_flow_lookup(t, &k[W + 1], h[W + 1], T + 60 + 10001, &cfg) == g);
    f[W + 1] = g;

    /* a FIN flow not yet expired is not preferred: the LRU one (2) goes */
    pydp_flow_touch(t, f[B], TH_RST, T + 20000);
    g = tst_new_flow(t, &k[W + 2], h[W + 2], T + 20001, &cfg, TH_ACK, 0, 0, &ev);
    CHECK_EQ(ev, 1);
    CHECK(g == f[2]);
    CHECK(pydp_flow_lookup(t, &k[B], h[B], T + 20001, &cfg) == f[B]);

    /* a lookup that reclaims an expired way leaves room: the next insert does not evict */
    CHECK(pydp_flow_lookup(t, &k[B], h[B], T + 20000 + 10001, &cfg) == NULL);
    g = tst_new_flow(t, &k[W + 3], h[W + 3], T + 20000 + 10001, &cfg, TH_ACK, 0, 0, &ev);
    CHECK_EQ(ev, 0);
    CHECK(g == f[B]);
    CHECK_EQ(pydp_flow_count(t, T + 20000 + 10001, &cfg), W);
    /* the other buckets stayed empty */
    for (i = 0; i < 8; i++) {
        unsigned w;
        const struct pydp_flow_bucket *b = (const struct pydp_flow_bucket *)(t + 1) + i;

        for (w = 0; w < PYDP_FLOW_WAYS; w++)
            if (i != 3)
                CHECK_EQ(b->sig[w], 0);
            else
                CHECK(b->sig[w] != 0);
    }
    free(t);
}

/* A full bucket of established flows and SYN-state flows: inserts evict the SYN flows (oldest first) and leave the
 * established ones, even when those are the least recently used; with no SYN flow left, LRU decides again. */
static void
test_syn_first_eviction(void)
{
    enum { W = PYDP_FLOW_WAYS, H = PYDP_FLOW_WAYS / 2 };
    struct pydp_config cfg = tst_cfg();
    struct pydp_flow_table *t = tst_table(64);
    struct pydp_flow_key k[2 * W + 1];
    uint32_t h[2 * W + 1];
    struct pydp_flow *f[2 * W + 1], *g;
    const struct pydp_flow_bucket *bk = (const struct pydp_flow_bucket *)(t + 1) + 5;
    const uint32_t T = 1000;
    int ev, i;

    for (i = 0; i < 2 * W + 1; i++) {
        k[i] = tst_key4(0x0c000000u + (uint32_t)i, (uint16_t)(3000 + i), 443, 6);
        h[i] = ((uint32_t)(i + 1) << 12) | 5;       /* all in bucket 5 */
    }
    /* the first half of the ways: established, oldest; the second half: half-open (SYN), newer */
    for (i = 0; i < W; i++) {
        f[i] = tst_new_flow(t, &k[i], h[i], T + (uint32_t)i, &cfg, i < H ? TH_ACK : TH_SYN, 0, 0, &ev);
        CHECK_EQ(ev, 0);
        CHECK_EQ(f[i]->state, i < H ? PYDP_FLOW_TCP_EST : PYDP_FLOW_TCP_SYN);
        /* the signature mirrors "half-open", so the eviction scan needs no flow line */
        CHECK_EQ((bk->sig[i] & PYDP_FLOW_SIG_SYN) != 0, i >= H);
    }
    /* as many more SYNs: each takes the oldest SYN way, never an established one */
    for (i = W; i < W + (W - H); i++) {
        g = tst_new_flow(t, &k[i], h[i], T + 100 + (uint32_t)i, &cfg, TH_SYN, 0, 0, &ev);
        CHECK_EQ(ev, 1);
        CHECK(g == f[i - (W - H)]);
        f[i] = g;
    }
    for (i = 0; i < H; i++)
        CHECK(pydp_flow_lookup(t, &k[i], h[i], T + 200, &cfg) == f[i]);
    CHECK_EQ(t->evicted, W - H);
    /* the SYN flows complete their handshakes: now all are established and plain LRU (flow 0) applies */
    for (i = W; i < W + (W - H); i++) {
        pydp_flow_touch(t, f[i], TH_ACK, T + 300);
        CHECK_EQ(bk->sig[i - (W - H)] & PYDP_FLOW_SIG_SYN, 0);
        CHECK(pydp_flow_lookup(t, &k[i], h[i], T + 300, &cfg) == f[i]);
    }
    g = tst_new_flow(t, &k[2 * W], h[2 * W], T + 400, &cfg, TH_SYN, 0, 0, &ev);
    CHECK_EQ(ev, 1);
    CHECK(g == f[0]);
    free(t);
}

/* The half-open bit is bit 1 of the signature: a hash with that bit set still finds its flow in every state, and a
 * flow installed by flow sync in the SYN state carries the bit. */
static void
test_sig_syn_bit(void)
{
    struct pydp_config cfg = tst_cfg();
    struct pydp_flow_table *t = tst_table(64);
    struct pydp_flow_key k = tst_key4(0x0c000001u, 4000, 443, 6);
    const uint32_t h = 0xabcd0007u;             /* bit 1 set; bucket 7 */
    const struct pydp_flow_bucket *b;
    struct pydp_flow *f, in;
    int ev;

    f = tst_new_flow(t, &k, h, 10, &cfg, TH_SYN, 0, 0, &ev);
    CHECK(pydp_flow_lookup(t, &k, h, 11, &cfg) == f);
    pydp_flow_touch(t, f, TH_ACK, 12);
    CHECK_EQ(f->state, PYDP_FLOW_TCP_EST);
    CHECK(pydp_flow_lookup(t, &k, h, 13, &cfg) == f);
    pydp_flow_touch(t, f, TH_FIN, 14);
    pydp_flow_touch(t, f, TH_SYN, 15);          /* port reuse */
    CHECK_EQ(f->state, PYDP_FLOW_TCP_SYN);
    CHECK(pydp_flow_lookup(t, &k, h, 16, &cfg) == f);

    memset(&in, 0, sizeof(in));
    in.key = tst_key4(0x0c000002u, 4001, 443, 6);
    in.state = PYDP_FLOW_TCP_SYN;
    f = pydp_flow_install(t, &in, 0, 20, &cfg, &ev);
    CHECK(f != NULL);
    b = (const struct pydp_flow_bucket *)(t + 1) + (f->hash & t->mask);
    CHECK(b->sig[f - b->flows] & PYDP_FLOW_SIG_SYN);
    CHECK(pydp_flow_lookup(t, &in.key, f->hash, 21, &cfg) == f);
    free(t);
}

/* pydp_flow_open (the worker's new-flow path: one pass, the record in non-temporal stores) leaves a flow exactly as
 * insert + pin + EMPTY + pydp_flow_touch does, for every protocol and first-packet flags, in an empty and in a
 * full bucket (where both evict the same way). */
static void
test_flow_open(void)
{
    static const uint8_t protos[] = { 6, 17, 1, 50 };
    static const uint8_t flags[] = { 0, TH_SYN, TH_SYN | TH_ACK, TH_ACK, TH_FIN | TH_ACK, TH_RST };
    struct pydp_config cfg = tst_cfg();
    struct pydp_flow_table *a = tst_table(64), *b = tst_table(64);
    unsigned pi, fi, round;
    uint32_t n = 0;

    for (round = 0; round < 3; round++) {
        for (pi = 0; pi < sizeof(protos); pi++) {
            for (fi = 0; fi < sizeof(flags); fi++, n++) {
                struct pydp_flow_key k = tst_key4(0x0c000000u + n, (uint16_t)(5000 + n), 443, protos[pi]);
                uint32_t h = pydp_flow_hash(&k, cfg.hash_seed);
                uint32_t now = 100 + n;
                uint16_t cl = (uint16_t)(n % 3), cuid = (uint16_t)(700 + n), euid = (uint16_t)(900 + n);
                uint8_t ed = (uint8_t)(n % 5);
                int eva = -1, evb = -1;
                struct pydp_flow *fa = tst_new_flow(a, &k, h, now, &cfg, flags[fi], cl, ed, &eva);
                struct pydp_flow *fb;
                const struct pydp_flow_bucket *ba = (const struct pydp_flow_bucket *)(a + 1) + (h & a->mask);
                const struct pydp_flow_bucket *bb = (const struct pydp_flow_bucket *)(b + 1) + (h & b->mask);
                unsigned wa, wb;

                pydp_flow_pin(a, fa, cl, cuid, ed, euid);
                fb = pydp_flow_open(b, &k, h, pydp_flow_sig(&k), now, &cfg, cl, cuid, ed, euid, flags[fi], &evb);
                pydp_flow_fence();
                wa = (unsigned)(fa - ba->flows);
                wb = (unsigned)(fb - bb->flows);
                CHECK_EQ(wb, wa);
                CHECK_EQ(evb, eva);
                CHECK(memcmp(&fb->key, &k, sizeof(k)) == 0);
                CHECK_EQ(fb->hash, h);
                CHECK_EQ(fb->created_ms, now);
                CHECK_EQ(fb->sig, fa->sig);
                CHECK_EQ(fb->state, fa->state);
                CHECK_EQ(fb->cluster, cl);
                CHECK_EQ(fb->cluster_uid, cuid);
                CHECK_EQ(fb->edge, ed);
                CHECK_EQ(fb->edge_uid, euid);
                CHECK_EQ(bb->pin[wb], ba->pin[wa]);
                CHECK_EQ(pydp_flow_edge_at(bb, wb), ed);
                CHECK_EQ(pydp_flow_state_at(bb, wb), fb->state);
                CHECK_EQ(pydp_flow_packets(b, fb), pydp_flow_packets(a, fa));
                CHECK_EQ(bb->sig[wb], ba->sig[wa]);
                CHECK_EQ(bb->last_ms[wb], ba->last_ms[wa]);
                CHECK(pydp_flow_lookup(b, &k, h, now, &cfg) == fb);
            }
        }
    }
    CHECK(a->evicted > 0);          /* 72 flows in 64 entries: the later rounds evicted in both tables alike */
    CHECK_EQ(b->evicted, a->evicted);
    CHECK_EQ(b->live, a->live);
    free(a);
    free(b);
}

static void
test_flush(void)
{
    struct pydp_config cfg = tst_cfg();
    struct pydp_flow_table *t = tst_table(4096);
    uint32_t i, evictions = 0;
    int ev;

    for (i = 0; i < 300; i++) {
        struct pydp_flow_key k = tst_key4(0x0c000000u + i, (uint16_t)(3000 + i), 80, (i & 1) ? 6 : 17);

        tst_new_flow(t, &k, tst_hash(&k), 5000, &cfg, TH_SYN, (uint16_t)(i % 3), (uint8_t)(i % 5), &ev);
        evictions += (uint32_t)ev;
    }
    CHECK_EQ(evictions, 0);
    CHECK_EQ(pydp_flow_count(t, 5000, &cfg), 300);
    CHECK_EQ(pydp_flow_flush(t, 1, 2), 20);
    CHECK_EQ(pydp_flow_flush(t, 1, 2), 0);
    CHECK_EQ(pydp_flow_count(t, 5000, &cfg), 280);
    CHECK_EQ(pydp_flow_flush(t, 1, -1), 80);
    CHECK_EQ(pydp_flow_flush(t, 7, -1), 0);
    CHECK_EQ(pydp_flow_count(t, 5000, &cfg), 200);
    for (i = 0; i < 300; i++) {
        struct pydp_flow_key k = tst_key4(0x0c000000u + i, (uint16_t)(3000 + i), 80, (i & 1) ? 6 : 17);
        struct pydp_flow *f = pydp_flow_lookup(t, &k, tst_hash(&k), 5000, &cfg);

        if (i % 3 == 1)
            CHECK(f == NULL);
        else
            CHECK(f != NULL && f->cluster == i % 3 && f->edge == i % 5);
    }
    CHECK_EQ(pydp_flow_flush(t, 0, 4), 20);
    CHECK_EQ(pydp_flow_flush(t, -1, 3), 180);       /* cluster < 0: all, whatever the edge */
    CHECK_EQ(pydp_flow_count(t, 5000, &cfg), 0);
    CHECK_EQ(pydp_flow_flush(t, -1, -1), 0);
    free(t);
}

#define BULK_N (1u << 20)
#define BULK_LAST 100000u

static void
test_bulk(void)
{
    struct pydp_config cfg = tst_cfg();
    struct pydp_flow_table *t;
    struct pydp_flow_key *keys;
    uint32_t *hashes;
    const uint32_t base = UINT32_MAX - 500000;       /* the fill crosses the wrap */
    uint32_t i, now, hits, rounds = 5;
    uint64_t evictions = 0, live;
    double t0, t1, t2;

    cfg.tcp_est_timeout_ms = 3600000;                /* nothing expires during the fill */
    t = tst_table(BULK_N);
    CHECK(t->nb_buckets * PYDP_FLOW_WAYS >= BULK_N && t->nb_buckets / 2 * PYDP_FLOW_WAYS < BULK_N);

    t0 = tst_now_s();
    for (i = 0; i < BULK_N; i++) {
        struct pydp_flow_key k = tst_bulk_key(i);
        uint32_t h = tst_hash(&k);
        struct pydp_flow *f;
        int ev = 0;

        now = base + i;
        f = pydp_flow_lookup(t, &k, h, now, &cfg);
        if (f == NULL) {
            f = pydp_flow_insert(t, &k, h, now, &cfg, &ev);
            evictions += (uint64_t)ev;
            f->cluster = (uint16_t)(i & 63);
            f->edge = (uint8_t)(i & 15);
            f->state = PYDP_FLOW_EMPTY;
        }
        pydp_flow_touch(t, f, TH_SYN | TH_ACK, now);  /* starts EST */
    }
    t1 = tst_now_s();
    now = base + BULK_N;
    live = pydp_flow_count(t, now, &cfg);
    CHECK_EQ(live + evictions, BULK_N);
    printf("flow bulk: %u flows into %u ways: %llu live (%.1f%% occupancy), %llu evictions (%.2f%%), "
           "%.2f M lookup+insert/s\n", BULK_N, t->nb_buckets * PYDP_FLOW_WAYS, (unsigned long long)live,
           100.0 * (double)live / (double)(t->nb_buckets * PYDP_FLOW_WAYS), (unsigned long long)evictions,
           100.0 * (double)evictions / BULK_N, BULK_N / (t1 - t0) / 1e6);

    /* the last 100K inserted all hit */
    keys = malloc(sizeof(*keys) * BULK_LAST);
    hashes = malloc(sizeof(*hashes) * BULK_LAST);
    CHECK(keys != NULL && hashes != NULL);
    if (keys == NULL || hashes == NULL) {
        free(keys);
        free(hashes);
        free(t);
        return;
    }
    for (i = 0; i < BULK_LAST; i++) {
        uint32_t n = BULK_N - BULK_LAST + i;

        keys[i] = tst_bulk_key(n);
        hashes[i] = tst_hash(&keys[i]);
    }
    hits = 0;
    t0 = tst_now_s();
    for (uint32_t r = 0; r < rounds; r++)
        for (i = 0; i < BULK_LAST; i++) {
            struct pydp_flow *f = pydp_flow_lookup(t, &keys[i], hashes[i], now, &cfg);

            hits += f != NULL && f->hash == hashes[i];
        }
    t1 = tst_now_s();
    CHECK_EQ(hits, rounds * BULK_LAST);

    /* misses: flows never inserted (the scramble of i is a bijection, so these keys are new) */
    for (i = 0; i < BULK_LAST; i++) {
        keys[i] = tst_bulk_key(BULK_N + 12345 + i);
        hashes[i] = tst_hash(&keys[i]);
    }
    hits = 0;
    t2 = tst_now_s();
    for (uint32_t r = 0; r < rounds; r++)
        for (i = 0; i < BULK_LAST; i++)
            hits += pydp_flow_lookup(t, &keys[i], hashes[i], now, &cfg) != NULL;
    CHECK_EQ(hits, 0);
    {
        double t3 = tst_now_s();

        printf("flow bulk: lookups %.2f M/s (hits), %.2f M/s (misses)\n",
               rounds * BULK_LAST / (t1 - t0) / 1e6, rounds * BULK_LAST / (t3 - t2) / 1e6);
    }
    CHECK_EQ(pydp_flow_count(t, now, &cfg), live);   /* lookups changed nothing */

    /* everything expires one EST timeout later; flushes (which ignore expiry) clear every occupied way */
    CHECK_EQ(pydp_flow_count(t, now + 3600000, &cfg), 0);
    {
        /* cluster = i & 63 and edge = i & 15: cluster 5 holds only edge 5 */
        uint64_t c5 = pydp_flow_flush(t, 5, 5), sum;
        int c;

        CHECK(c5 > 0);
        CHECK_EQ(pydp_flow_flush(t, 5, -1), 0);
        sum = c5;
        for (c = 0; c < 64; c++)
            sum += pydp_flow_flush(t, c, -1);
        CHECK_EQ(sum, live);
        CHECK_EQ(pydp_flow_flush(t, -1, -1), 0);
    }
    free(keys);
    free(hashes);
    free(t);
}

/* The table's own counters: live ways, reclaimed expired flows, evictions. */
static void
test_counters(void)
{
    struct pydp_config cfg = tst_cfg();
    struct pydp_flow_table *t = tst_table(64);
    struct pydp_flow_key k;
    uint32_t i, h = 0x1234u;
    int ev;

    CHECK_EQ(t->live, 0);
    /* PYDP_FLOW_WAYS + 1 UDP flows in one bucket: the last evicts the oldest */
    for (i = 0; i <= PYDP_FLOW_WAYS; i++) {
        k = tst_key4(i + 1, 1000, 53, 17);
        tst_new_flow(t, &k, h, 100 + i, &cfg, 0, 0, 0, &ev);
    }
    CHECK_EQ(t->live, PYDP_FLOW_WAYS);
    CHECK_EQ(t->evicted, 1);
    CHECK_EQ(t->expired, 0);
    /* a lookup after the UDP timeout reclaims the flow */
    k = tst_key4(PYDP_FLOW_WAYS + 1, 1000, 53, 17);
    CHECK(pydp_flow_lookup(t, &k, h, 100 + PYDP_FLOW_WAYS + cfg.udp_timeout_ms + 1, &cfg) == NULL);
    CHECK_EQ(t->live, PYDP_FLOW_WAYS - 1);
    CHECK_EQ(t->expired, 1);
    /* an insert over an expired way counts it as expired, not evicted */
    k = tst_key4(100, 1000, 53, 17);
    tst_new_flow(t, &k, h, 200000, &cfg, 0, 0, 0, &ev);
    CHECK_EQ(t->live, PYDP_FLOW_WAYS);
    k = tst_key4(101, 1000, 53, 17);
    tst_new_flow(t, &k, h, 200000, &cfg, 0, 0, 0, &ev);
    CHECK_EQ(ev, 0);
    CHECK_EQ(t->expired, 2);
    CHECK_EQ(t->evicted, 1);
    CHECK_EQ(pydp_flow_flush(t, -1, -1), PYDP_FLOW_WAYS);
    CHECK_EQ(t->live, 0);
    free(t);
}

/* ---- flow sync: install (PYDP_CMD_INSERT) and the flow-event ring ---- */

static struct pydp_flow
tst_synced(const struct pydp_flow_key *k, uint16_t cluster, uint16_t cluster_uid, uint8_t edge, uint16_t edge_uid,
           uint8_t state)
{
    struct pydp_flow f;

    memset(&f, 0, sizeof(f));
    f.key = *k;
    f.hash = 0xdeadbeef;            /* the peer's hash is never trusted: install recomputes it */
    f.cluster = cluster;
    f.cluster_uid = cluster_uid;
    f.edge = edge;
    f.edge_uid = edge_uid;
    f.state = state;
    return f;
}

static void
test_install(void)
{
    struct pydp_config cfg = tst_cfg();
    struct pydp_flow_table *t = tst_table(1024);
    struct pydp_flow_key k = tst_key4(0x0a000001, 40000, 443, 6);
    struct pydp_flow in = tst_synced(&k, 3, 7, 5, 11, PYDP_FLOW_TCP_EST);
    uint32_t hash;
    struct pydp_flow *f;
    int ev = -1;

    cfg.hash_seed = 0x5eed;
    hash = pydp_flow_hash(&k, cfg.hash_seed);
    /* update-only on an absent flow (an END for a flow we never had): nothing is inserted */
    CHECK(pydp_flow_install(t, &in, PYDP_INSTALL_UPDATE_ONLY, 1000, &cfg, &ev) == NULL);
    CHECK_EQ(t->live, 0);
    /* insert: the worker's lookup (with its own hash) finds the flow pinned to the peer's edge */
    f = pydp_flow_install(t, &in, 0, 1000, &cfg, &ev);
    CHECK(f != NULL);
    CHECK_EQ(ev, 0);
    CHECK(pydp_flow_lookup(t, &k, hash, 1001, &cfg) == f);
    CHECK_EQ(f->hash, hash);
    CHECK_EQ(f->cluster, 3);
    CHECK_EQ(f->cluster_uid, 7);
    CHECK_EQ(f->edge, 5);
    CHECK_EQ(f->edge_uid, 11);
    CHECK_EQ(f->state, PYDP_FLOW_TCP_EST);
    CHECK_EQ(pydp_flow_last_ms(t, f), 1000);
    CHECK_EQ(t->live, 1);
    /* a refresh late in the timeout keeps the flow alive: last_ms moves, no second copy */
    in.edge = 6;
    in.edge_uid = 12;
    CHECK(pydp_flow_install(t, &in, 0, 1000 + cfg.tcp_est_timeout_ms - 1, &cfg, &ev) == f);
    CHECK_EQ(t->live, 1);
    CHECK_EQ(f->edge, 6);
    CHECK_EQ(f->edge_uid, 12);
    CHECK(pydp_flow_lookup(t, &k, hash, 1000 + 2 * cfg.tcp_est_timeout_ms - 2, &cfg) == f);
    /* END: update-only moves it to FIN (short timeout) */
    in.state = PYDP_FLOW_TCP_FIN;
    CHECK(pydp_flow_install(t, &in, PYDP_INSTALL_UPDATE_ONLY, 1000 + 2 * cfg.tcp_est_timeout_ms - 2, &cfg, &ev) == f);
    CHECK_EQ(f->state, PYDP_FLOW_TCP_FIN);
    CHECK(pydp_flow_lookup(t, &k, hash, 1000 + 2 * cfg.tcp_est_timeout_ms + cfg.tcp_fin_timeout_ms + 1, &cfg)
          == NULL);
    /* a padded key is normalised (keys compare as bytes) */
    in = tst_synced(&k, 3, 7, 5, 11, PYDP_FLOW_UDP);
    in.key.pad0 = 0xffff;
    f = pydp_flow_install(t, &in, 0, 5000000, &cfg, &ev);
    CHECK(f != NULL && f->key.pad0 == 0);
    CHECK(pydp_flow_lookup(t, &k, hash, 5000001, &cfg) == f);
    /* what the fast path could not use is refused, and the table is unchanged */
    in = tst_synced(&k, PYDP_MAX_CLUSTERS, 7, 5, 11, PYDP_FLOW_UDP);
    CHECK(pydp_flow_install(t, &in, 0, 5000000, &cfg, &ev) == NULL);
    in = tst_synced(&k, 3, 7, PYDP_MAX_EDGES, 11, PYDP_FLOW_UDP);
    CHECK(pydp_flow_install(t, &in, 0, 5000000, &cfg, &ev) == NULL);
    in = tst_synced(&k, 3, 7, 5, 11, PYDP_FLOW_OTHER + 1);
    CHECK(pydp_flow_install(t, &in, 0, 5000000, &cfg, &ev) == NULL);
    in = tst_synced(&k, 3, 7, 5, 11, PYDP_FLOW_UDP);
    in.key.family = 0;
    CHECK(pydp_flow_install(t, &in, 0, 5000000, &cfg, &ev) == NULL);
    CHECK_EQ(t->live, 1);
    free(t);
}

static void
test_event_ring(void)
{
    struct pydp_event_ring *r = aligned_alloc(64, sizeof(*r));
    static struct pydp_flow_event out[PYDP_EVENT_RING_SIZE + 8];
    struct pydp_flow f;
    uint32_t i, n, got;
    uint32_t start = UINT32_MAX - 100;     /* the indices wrap during the test */

    memset(r, 0, sizeof(*r));
    r->head = r->tail = start;
    memset(&f, 0, sizeof(f));
    f.key = tst_key4(1, 1, 80, 6);
    CHECK_EQ(pydp_event_pop(r, out, 16), 0);
    for (i = 0; i < PYDP_EVENT_RING_SIZE; i++) {
        f.key.sport = (uint16_t)i;
        f.edge = (uint8_t)(i & 15);
        f.cluster = (uint16_t)(i & 63);
        f.edge_uid = (uint16_t)(i * 3);
        f.state = PYDP_FLOW_TCP_EST;
        CHECK_EQ(pydp_event_push(r, (uint8_t)(i & 1 ? PYDP_EV_END : PYDP_EV_NEW), &f, i), 0);
    }
    /* full: the event is dropped and counted, the ring unchanged */
    CHECK_EQ(pydp_event_push(r, PYDP_EV_NEW, &f, 0), -1);
    CHECK_EQ(r->dropped, 1);
    CHECK_EQ(r->written, PYDP_EVENT_RING_SIZE);
    /* drained in pieces, in order, with every field */
    for (got = 0; got < PYDP_EVENT_RING_SIZE; got += n) {
        n = pydp_event_pop(r, out + got, 1000);
        CHECK(n > 0);
        if (n == 0)
            break;
    }
    CHECK_EQ(got, PYDP_EVENT_RING_SIZE);
    for (i = 0; i < got; i++) {
        if (out[i].key.sport != i || out[i].edge != (i & 15) || out[i].cluster != (i & 63) ||
            out[i].edge_uid != (uint16_t)(i * 3) || out[i].type != (i & 1 ? PYDP_EV_END : PYDP_EV_NEW) ||
            out[i].time_ms != i || out[i].state != PYDP_FLOW_TCP_EST) {
            CHECK(!"event out of order or changed");
            break;
        }
    }
    CHECK_EQ(r->tail, r->head);
    CHECK_EQ(r->head, start + PYDP_EVENT_RING_SIZE);
    /* room again after the consumer moved on */
    CHECK_EQ(pydp_event_push(r, PYDP_EV_NEW, &f, 7), 0);
    CHECK_EQ(pydp_event_pop(r, out, 16), 1);
    CHECK_EQ(out[0].time_ms, 7);
    /* a consumer index beyond reason (corrupt ring) is resynchronised, never read past the array */
    r->tail = r->head + 5;
    CHECK_EQ(pydp_event_pop(r, out, 16), 0);
    CHECK_EQ(r->tail, r->head);
    free(r);
}

/* pydp_flow_config: which config changes a cluster slot's identity (its flows then confirm their pins), which do
 * not; pydp_flow_tick keeps the change times within 2^30 ms of now. */
static void
test_pin_config(void)
{
    struct pydp_config cfg = tst_cfg();
    struct pydp_flow_table *t = tst_table(64);
    struct pydp_cluster *c = &cfg.clusters[0];
    struct pydp_flow_key k = tst_key4(0x0a000009, 1000, 80, 17);
    struct pydp_flow *f;
    const struct pydp_flow_bucket *b;
    uint32_t h = tst_hash(&k), now;
    unsigned w;
    int ev;

    cfg.nb_clusters = 1;
    c->family = PYDP_AF_INET;
    c->uid = 1;
    c->vip[0] = 198;
    c->edges[0].uid = 10;
    c->edges[0].state = PYDP_EDGE_UP;
    pydp_flow_config(t, &cfg, 100);
    CHECK_EQ(t->pin_since[0], 100);
    CHECK_EQ(t->pin_since[1], 0);               /* an unused slot stays unused: no change */

    /* a flow opened after the change is current from its first packet; one last seen at the change is not */
    f = pydp_flow_open(t, &k, h, pydp_flow_sig(&k), 150, &cfg, 0, 1, 0, 10, 0, &ev);
    b = (const struct pydp_flow_bucket *)(t + 1) + (h & t->mask);
    w = (unsigned)(f - b->flows);
    CHECK(pydp_flow_pin_current(t, b, w, 0));
    pydp_flow_config(t, &cfg, 150);             /* nothing changed: nothing to check */
    CHECK(pydp_flow_pin_current(t, b, w, 0));

    /* not identity: edge state, weight, enabled, owned, name, Maglev size */
    c->edges[0].state = PYDP_EDGE_DRAINING;
    c->edges[0].weight = 7;
    c->enabled = 0;
    c->owned = 1;
    c->name[0] = 'x';
    c->maglev_size = 65537;
    pydp_flow_config(t, &cfg, 200);
    CHECK_EQ(t->pin_since[0], 100);
    CHECK(pydp_flow_pin_current(t, b, w, 0));

    /* identity: the cluster IP, the family, an edge's uid, the cluster's uid, the slot going out of use */
    c->vip[3] = 1;
    pydp_flow_config(t, &cfg, 300);
    CHECK_EQ(t->pin_since[0], 300);
    CHECK(!pydp_flow_pin_current(t, b, w, 0));
    c->family = PYDP_AF_INET6;
    pydp_flow_config(t, &cfg, 310);
    CHECK_EQ(t->pin_since[0], 310);
    c->edges[5].uid = 3;
    pydp_flow_config(t, &cfg, 320);
    CHECK_EQ(t->pin_since[0], 320);
    c->uid = 2;
    pydp_flow_config(t, &cfg, 330);
    CHECK_EQ(t->pin_since[0], 330);
    cfg.nb_clusters = 0;
    pydp_flow_config(t, &cfg, 340);
    CHECK_EQ(t->pin_since[0], 340);

    /* a touch after the change makes the pin current again (the caller confirmed the record first) */
    pydp_flow_touch(t, f, 0, 341);
    CHECK(pydp_flow_pin_current(t, b, w, 0));
    /* the check mark (a flow from the peer) holds whatever the time */
    ((struct pydp_flow_bucket *)(uintptr_t)b)->pin[w] |= PYDP_FLOW_PIN_CHECK;
    CHECK(!pydp_flow_pin_current(t, b, w, 0));
    CHECK_EQ(pydp_flow_edge(t, f), 0);
    CHECK(pydp_flow_state(t, f) == PYDP_FLOW_UDP);
    pydp_flow_pin_confirmed(t, (struct pydp_flow_bucket *)(uintptr_t)b, w);
    CHECK(pydp_flow_pin_current(t, b, w, 0));
    CHECK_EQ(t->pin_checks, 1);

    /* tick: a change time more than 2^30 ms old moves up to now - 2^30 (slot now % 64 per call); newer ones stay */
    now = 0x80000000u + 3;                      /* slot 3 */
    t->pin_since[3] = 5;
    t->pin_since[4] = now - 1000;
    pydp_flow_tick(t, now);
    CHECK_EQ(t->pin_since[3], now - (1u << 30));
    pydp_flow_tick(t, now + 1);                 /* slot 4 */
    CHECK_EQ(t->pin_since[4], now - 1000);
    free(t);
}

int
main(void)
{
    test_sizes();
    test_timeouts();
    test_roundtrip();
    test_same_hash();
    test_expiry();
    test_tcp_states();
    test_lru();
    test_syn_first_eviction();
    test_sig_syn_bit();
    test_flow_open();
    test_flush();
    test_counters();
    test_bulk();
    test_install();
    test_event_ring();
    test_pin_config();
    return check_report("flow");
}
