/* test_shm.c - unit tests of the shared-memory region (shm.c): layout, attach checks, config swap, command rings.
 * Files go to /dev/shm under names that carry the pid; they are removed at exit, also when a check fails or the
 * program crashes. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pydp.h"
#include "check.h"

#define NB_WORKERS 2
#define MAGLEV_MAX 257
#define FLOW_CAP 1024
#define FLOW_BUCKETS 256          /* the power of two >= FLOW_CAP / PYDP_FLOW_WAYS */
#define ALIGN 4096u

enum { P_REGION, P_ZEROS, P_SMALL, P_VERSION, P_HDRSIZE, P_COUNT };
static char tst_paths[P_COUNT][128];

/* ---- cleanup ---- */

static void
tst_cleanup(void)
{
    int i;

    for (i = 0; i < P_COUNT; i++)
        if (tst_paths[i][0] != '\0')
            unlink(tst_paths[i]);
}

static void
tst_on_signal(int sig)
{
    tst_cleanup();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void
tst_setup_paths(void)
{
    static const char *const kind[P_COUNT] = { "region", "zeros", "small", "version", "hdrsize" };
    static const int sigs[] = { SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL, SIGINT, SIGTERM };
    size_t i;

    for (i = 0; i < P_COUNT; i++)
        snprintf(tst_paths[i], sizeof(tst_paths[i]), "/dev/shm/pydp-test-shm-%ld-%s", (long)getpid(), kind[i]);
    atexit(tst_cleanup);
    for (i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        signal(sigs[i], tst_on_signal);
}

/* ---- helpers ---- */

static int
contains(const char *s, const char *needle)
{
    return strstr(s, needle) != NULL;
}

static int
file_exists(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0;
}

/* Writes n bytes of data (or zeros if data is NULL) to a new file, then sizes it to size. */
static int
write_file(const char *path, const void *data, size_t n, uint64_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int ok = fd >= 0;

    if (ok && data != NULL)
        ok = pwrite(fd, data, n, 0) == (ssize_t)n;
    if (ok)
        ok = ftruncate(fd, (off_t)size) == 0;
    if (fd >= 0)
        close(fd);
    return ok ? 0 : -1;
}

static void
set_addr4(uint8_t *field, uint8_t a, uint8_t b, uint8_t c, uint8_t d)
{
    memset(field, 0, 16);
    field[0] = a;
    field[1] = b;
    field[2] = c;
    field[3] = d;
}

static void
set_edge(struct pydp_cluster *c, int slot, const char *name, uint16_t weight, uint8_t state, uint8_t last)
{
    struct pydp_edge *e = &c->edges[slot];

    memset(e, 0, sizeof(*e));
    snprintf(e->name, sizeof(e->name), "%s", name);
    set_addr4(e->addr, 10, 0, 0, last);
    e->family = PYDP_AF_INET;
    e->mac[0] = 0x02;
    e->mac[5] = last;
    e->weight = weight;
    e->state = state;
    e->uid = 1;
}

/* Counts the entries of a table per value; returns the number of entries outside the allowed set. */
static uint32_t
table_outside(const uint8_t *t, uint32_t size, const int *allowed, int n_allowed, uint32_t *count)
{
    uint32_t i, bad = 0;
    int k;

    memset(count, 0, 256 * sizeof(*count));
    for (i = 0; i < size; i++) {
        int ok = 0;

        count[t[i]]++;
        for (k = 0; k < n_allowed; k++)
            if (t[i] == allowed[k])
                ok = 1;
        if (!ok)
            bad++;
    }
    return bad;
}

/* ---- tests ---- */

struct span {
    uint64_t off, len;
    const char *what;
};

static void
test_create_params(void)
{
    struct pydp_shm shm;
    struct pydp_shm_params p = { NB_WORKERS, 1, MAGLEV_MAX, FLOW_CAP };
    char err[PYDP_ERR_LEN];

    p.nb_workers = 0;
    CHECK_EQ(pydp_shm_create(&shm, tst_paths[P_REGION], &p, err), -1);
    CHECK(contains(err, "workers"));
    p.nb_workers = PYDP_MAX_WORKERS + 1;
    CHECK_EQ(pydp_shm_create(&shm, tst_paths[P_REGION], &p, err), -1);
    p.nb_workers = NB_WORKERS;
    p.nb_ports = 0;
    CHECK_EQ(pydp_shm_create(&shm, tst_paths[P_REGION], &p, err), -1);
    p.nb_ports = 1;
    p.maglev_max = 16;
    CHECK_EQ(pydp_shm_create(&shm, tst_paths[P_REGION], &p, err), -1);
    CHECK(contains(err, "maglev_max"));
    p.maglev_max = MAGLEV_MAX;
    p.flow_capacity = 63;
    CHECK_EQ(pydp_shm_create(&shm, tst_paths[P_REGION], &p, err), -1);
    CHECK(!file_exists(tst_paths[P_REGION]));   /* nothing left behind by a refused create */
}

static void
test_header(struct pydp_shm *shm)
{
    struct pydp_shm_header *h = shm->hdr;
    struct span s[16];
    struct stat st;
    int n = 0, i, j, w;

    CHECK(h != NULL);
    CHECK(shm->base == (void *)h);
    CHECK_EQ(shm->owner, 1);
    CHECK(h->magic == (uint64_t)PYDP_SHM_MAGIC);
    CHECK_EQ(h->layout_version, PYDP_LAYOUT_VERSION);
    CHECK_EQ(h->header_size, sizeof(struct pydp_shm_header));
    CHECK_EQ(h->nb_workers, NB_WORKERS);
    CHECK_EQ(h->nb_ports, 1);
    CHECK_EQ(h->maglev_max, MAGLEV_MAX);
    CHECK_EQ(h->flow_capacity, FLOW_BUCKETS * PYDP_FLOW_WAYS);      /* the ways of whole buckets: at least asked */
    CHECK_EQ(h->dp_pid, getpid());
    CHECK_EQ(h->generation, 0);
    CHECK(h->created_ms > 0);
    CHECK(h->created_ms <= pydp_now_ms());
    CHECK_EQ(h->total_size, shm->size);
    CHECK(fstat(shm->fd, &st) == 0 && (uint64_t)st.st_size == h->total_size);
    CHECK_EQ(h->total_size % ALIGN, 0);
    for (w = 0; w < PYDP_MAX_WORKERS; w++)
        CHECK(h->workers[w].seen_gen == UINT64_MAX);
    CHECK_EQ(h->reload_requests, 0);
    CHECK_EQ(h->managed, 0);
    for (w = 0; w < PYDP_MAX_CLUSTERS; w++)
        CHECK_EQ(pydp_shm_config(shm, 0)->clusters[w].owned, 0);

    CHECK_EQ(h->flow_table_stride % ALIGN, 0);
    CHECK(h->flow_table_stride >= pydp_flow_table_bytes(FLOW_CAP));
    s[n++] = (struct span){ 0, sizeof(struct pydp_shm_header), "header" };
    s[n++] = (struct span){ h->off_config[0], sizeof(struct pydp_config), "config 0" };
    s[n++] = (struct span){ h->off_config[1], sizeof(struct pydp_config), "config 1" };
    s[n++] = (struct span){ h->off_maglev[0], (uint64_t)PYDP_MAX_CLUSTERS * MAGLEV_MAX, "maglev 0" };
    s[n++] = (struct span){ h->off_maglev[1], (uint64_t)PYDP_MAX_CLUSTERS * MAGLEV_MAX, "maglev 1" };
    s[n++] = (struct span){ h->off_worker_stats, NB_WORKERS * sizeof(struct pydp_worker_stats), "worker stats" };
    s[n++] = (struct span){ h->off_cluster_stats,
                            (uint64_t)NB_WORKERS * PYDP_MAX_CLUSTERS * sizeof(struct pydp_cluster_stats),
                            "cluster stats" };
    s[n++] = (struct span){ h->off_cmds, NB_WORKERS * sizeof(struct pydp_cmd_ring), "cmds" };
    s[n++] = (struct span){ h->off_events, NB_WORKERS * sizeof(struct pydp_event_ring), "events" };
    s[n++] = (struct span){ h->off_flows, NB_WORKERS * h->flow_table_stride, "flows" };
    for (i = 0; i < n; i++) {
        if (s[i].off % ALIGN != 0 || s[i].off + s[i].len > h->total_size) {
            check_failed++;
            fprintf(stderr, "%s: offset %llu + %llu misaligned or beyond %llu\n", s[i].what,
                    (unsigned long long)s[i].off, (unsigned long long)s[i].len,
                    (unsigned long long)h->total_size);
        } else {
            check_passed++;
        }
        for (j = 0; j < i; j++) {
            int overlap = s[i].off < s[j].off + s[j].len && s[j].off < s[i].off + s[i].len;

            if (overlap) {
                check_failed++;
                fprintf(stderr, "%s overlaps %s\n", s[i].what, s[j].what);
            } else {
                check_passed++;
            }
        }
    }

    /* the accessors land where the offsets say */
    CHECK((uint8_t *)pydp_shm_config(shm, 0) == (uint8_t *)shm->base + h->off_config[0]);
    CHECK((uint8_t *)pydp_shm_config(shm, 1) == (uint8_t *)shm->base + h->off_config[1]);
    CHECK((uint8_t *)pydp_shm_config(shm, 3) == (uint8_t *)shm->base + h->off_config[1]);
    CHECK(pydp_shm_maglev(shm, 1, 2) == (uint8_t *)shm->base + h->off_maglev[1] + 2 * MAGLEV_MAX);
    CHECK((uint8_t *)pydp_shm_worker_stats(shm, 1) ==
          (uint8_t *)shm->base + h->off_worker_stats + sizeof(struct pydp_worker_stats));
    CHECK((uint8_t *)pydp_shm_cluster_stats(shm, 1, 3) ==
          (uint8_t *)shm->base + h->off_cluster_stats + (PYDP_MAX_CLUSTERS + 3) * sizeof(struct pydp_cluster_stats));
    CHECK((uint8_t *)pydp_shm_flows(shm, 1) == (uint8_t *)shm->base + h->off_flows + h->flow_table_stride);
    CHECK((uint8_t *)pydp_shm_cmds(shm, 1) == (uint8_t *)shm->base + h->off_cmds + sizeof(struct pydp_cmd_ring));

    /* initial contents: default configs, empty flow tables */
    for (i = 0; i < 2; i++) {
        struct pydp_config *c = pydp_shm_config(shm, (uint32_t)i);

        CHECK_EQ(c->hash_seed, 0x5eed);
        CHECK_EQ(c->nb_clusters, 0);
        CHECK_EQ(c->generation, 0);
        CHECK(c->tcp_est_timeout_ms > 0);
    }
    for (w = 0; w < NB_WORKERS; w++) {
        CHECK_EQ(pydp_shm_flows(shm, (uint32_t)w)->nb_buckets, FLOW_BUCKETS);
        CHECK_EQ(pydp_shm_flows(shm, (uint32_t)w)->mask, FLOW_BUCKETS - 1);
    }
}

static void
test_attach(struct pydp_shm *shm)
{
    struct pydp_shm other;
    char err[PYDP_ERR_LEN];

    err[0] = '\0';
    CHECK_EQ(pydp_shm_attach(&other, tst_paths[P_REGION], err), 0);
    if (other.hdr == NULL)
        return;
    CHECK_EQ(other.owner, 0);
    CHECK(other.base != shm->base);                   /* a second mapping ... */
    CHECK_EQ(other.size, shm->size);
    CHECK_EQ(other.hdr->nb_workers, NB_WORKERS);

    /* ... of the same memory, both ways */
    shm->hdr->reload_requests = 7;
    CHECK_EQ(other.hdr->reload_requests, 7);
    pydp_shm_worker_stats(&other, 1)->flow_hits = 0x1122334455667788ull;
    CHECK(pydp_shm_worker_stats(shm, 1)->flow_hits == 0x1122334455667788ull);
    pydp_shm_cluster_stats(shm, 1, 63)->drop_no_edge = 42;
    CHECK_EQ(pydp_shm_cluster_stats(&other, 1, 63)->drop_no_edge, 42);
    pydp_shm_maglev(&other, 1, 63)[MAGLEV_MAX - 1] = 0x5c;
    CHECK_EQ(pydp_shm_maglev(shm, 1, 63)[MAGLEV_MAX - 1], 0x5c);
    pydp_shm_config(shm, 1)->udp_timeout_ms = 1234;
    CHECK_EQ(pydp_shm_config(&other, 1)->udp_timeout_ms, 1234);

    /* undo, so the later tests start from a fresh region */
    shm->hdr->reload_requests = 0;
    pydp_shm_worker_stats(shm, 1)->flow_hits = 0;
    pydp_shm_cluster_stats(shm, 1, 63)->drop_no_edge = 0;
    pydp_shm_maglev(shm, 1, 63)[MAGLEV_MAX - 1] = 0;
    pydp_shm_config(shm, 1)->udp_timeout_ms = pydp_shm_config(shm, 0)->udp_timeout_ms;

    pydp_shm_close(&other);
    CHECK(other.base == NULL);
    CHECK(file_exists(tst_paths[P_REGION]));         /* an attacher does not unlink */
}

static void
test_attach_refused(struct pydp_shm *shm)
{
    struct pydp_shm other;
    struct pydp_shm_header copy;
    char err[PYDP_ERR_LEN];
    char missing[160];

    /* missing file */
    snprintf(missing, sizeof(missing), "/dev/shm/pydp-test-shm-%ld-missing", (long)getpid());
    err[0] = '\0';
    CHECK_EQ(pydp_shm_attach(&other, missing, err), -1);
    CHECK(contains(err, missing));
    CHECK(other.base == NULL);

    /* a file of zeros, as large as a region */
    CHECK_EQ(write_file(tst_paths[P_ZEROS], NULL, 0, shm->size), 0);
    err[0] = '\0';
    CHECK_EQ(pydp_shm_attach(&other, tst_paths[P_ZEROS], err), -1);
    CHECK(contains(err, "not a pydp region"));
    CHECK(other.base == NULL);

    /* a file shorter than a header */
    CHECK_EQ(write_file(tst_paths[P_SMALL], "pydp", 4, 16), 0);
    err[0] = '\0';
    CHECK_EQ(pydp_shm_attach(&other, tst_paths[P_SMALL], err), -1);
    CHECK(contains(err, "not a pydp region"));

    /* a region of another layout version: the real header with the field changed */
    memcpy(&copy, shm->hdr, sizeof(copy));
    copy.layout_version = PYDP_LAYOUT_VERSION + 1;
    CHECK_EQ(write_file(tst_paths[P_VERSION], &copy, sizeof(copy), shm->size), 0);
    err[0] = '\0';
    CHECK_EQ(pydp_shm_attach(&other, tst_paths[P_VERSION], err), -1);
    CHECK(contains(err, "layout version"));
    CHECK(other.base == NULL);

    /* same version, another header size */
    memcpy(&copy, shm->hdr, sizeof(copy));
    copy.header_size += 64;
    CHECK_EQ(write_file(tst_paths[P_HDRSIZE], &copy, sizeof(copy), shm->size), 0);
    err[0] = '\0';
    CHECK_EQ(pydp_shm_attach(&other, tst_paths[P_HDRSIZE], err), -1);
    CHECK(contains(err, "layout version"));

    /* an intact header copy in a file shorter than total_size */
    memcpy(&copy, shm->hdr, sizeof(copy));
    CHECK_EQ(write_file(tst_paths[P_HDRSIZE], &copy, sizeof(copy), shm->size / 2), 0);
    err[0] = '\0';
    CHECK_EQ(pydp_shm_attach(&other, tst_paths[P_HDRSIZE], err), -1);
    CHECK(err[0] != '\0');
}

static void
fill_web(struct pydp_cluster *c)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->name, sizeof(c->name), "web");
    c->family = PYDP_AF_INET;
    set_addr4(c->vip, 198, 51, 100, 10);
    c->enabled = 1;
    c->maglev_size = MAGLEV_MAX;
    c->uid = 1;
    /* edge slots 1, 4 and 9: the table must carry slots, not positions */
    set_edge(c, 1, "edge-a", 1, PYDP_EDGE_UP, 21);
    set_edge(c, 4, "edge-b", 2, PYDP_EDGE_UP, 22);
    set_edge(c, 9, "edge-c", 1, PYDP_EDGE_UP, 23);
}

static void
test_config_swap(struct pydp_shm *shm)
{
    struct pydp_shm_header *h = shm->hdr;
    struct pydp_config *cur = pydp_shm_config(shm, 0), *slot, *slot2;
    struct pydp_cluster *c;
    uint32_t count[256], version, i;
    uint64_t t0;
    uint8_t *table, expect[MAGLEV_MAX];
    const char *names[3] = { "edge-a", "edge-b", "edge-c" };
    const uint16_t weights[3] = { 1, 2, 1 };
    const int up_slots[3] = { 1, 4, 9 };
    const int none[1] = { PYDP_MAGLEV_NONE };
    uint8_t vip6[16] = { 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10 };
    uint8_t unknown[16];
    char err[PYDP_ERR_LEN];
    int i_;

    CHECK_EQ(h->generation, 0);

    /* begin: the idle slot (1) with a copy of the current one (0) */
    cur->hash_seed = 0xabcdef;
    err[0] = '\0';
    slot = pydp_config_begin(shm, 100, err);
    CHECK(slot == pydp_shm_config(shm, 1));
    if (slot == NULL) {
        fprintf(stderr, "begin: %s\n", err);
        return;
    }
    CHECK_EQ(slot->hash_seed, 0xabcdef);
    CHECK_MEM(slot, cur, sizeof(*slot));
    CHECK_EQ(h->generation, 0);                       /* begin publishes nothing */

    /* a cluster with three edges up */
    c = &slot->clusters[0];
    fill_web(c);
    version = c->table_version;
    CHECK_EQ(pydp_config_rebuild(shm, slot, 0, err), 0);
    CHECK_EQ(c->table_version, version + 1);
    table = pydp_shm_maglev(shm, 1, 0);
    CHECK_EQ(table_outside(table, MAGLEV_MAX, up_slots, 3, count), 0);
    CHECK(count[1] > 0 && count[4] > 0 && count[9] > 0);
    CHECK(count[4] > count[1] && count[4] > count[9]);   /* weight 2 */
    CHECK_EQ(pydp_maglev_build(names, weights, 3, MAGLEV_MAX, expect, err), 0);
    for (i = 0; i < MAGLEV_MAX; i++)
        expect[i] = expect[i] == PYDP_MAGLEV_NONE ? PYDP_MAGLEV_NONE : (uint8_t)up_slots[expect[i]];
    CHECK_MEM(table, expect, MAGLEV_MAX);
    {
        static const uint8_t zeros[MAGLEV_MAX];

        CHECK_MEM(pydp_shm_maglev(shm, 0, 0), zeros, MAGLEV_MAX);   /* the slot in use is not touched */
    }

    /* draining, down and disabled edges get no entries */
    {
        static const uint8_t states[3] = { PYDP_EDGE_DRAINING, PYDP_EDGE_DOWN, PYDP_EDGE_DISABLED };

        for (i_ = 0; i_ < 3; i_++) {
            int allowed[2], k = 0, j;

            fill_web(c);
            c->edges[up_slots[i_]].state = states[i_];
            for (j = 0; j < 3; j++)
                if (j != i_)
                    allowed[k++] = up_slots[j];
            CHECK_EQ(pydp_config_rebuild(shm, slot, 0, err), 0);
            CHECK_EQ(table_outside(table, MAGLEV_MAX, allowed, 2, count), 0);
            CHECK_EQ(count[up_slots[i_]], 0);
            CHECK(count[allowed[0]] > 0 && count[allowed[1]] > 0);
        }
    }
    /* only one edge up: it gets every entry */
    fill_web(c);
    c->edges[1].state = PYDP_EDGE_DOWN;
    c->edges[9].state = PYDP_EDGE_DRAINING;
    CHECK_EQ(pydp_config_rebuild(shm, slot, 0, err), 0);
    CHECK_EQ(table_outside(table, MAGLEV_MAX, &up_slots[1], 1, count), 0);
    /* none up: every entry empty */
    c->edges[4].state = PYDP_EDGE_DISABLED;
    CHECK_EQ(pydp_config_rebuild(shm, slot, 0, err), 0);
    CHECK_EQ(table_outside(table, MAGLEV_MAX, none, 1, count), 0);
    /* no edges at all */
    memset(c->edges, 0, sizeof(c->edges));
    CHECK_EQ(pydp_config_rebuild(shm, slot, 0, err), 0);
    CHECK_EQ(table_outside(table, MAGLEV_MAX, none, 1, count), 0);
    /* a table larger than the region's room, and a cluster index out of range */
    fill_web(c);
    c->maglev_size = 263;
    CHECK_EQ(pydp_config_rebuild(shm, slot, 0, err), -1);
    CHECK(contains(err, "263"));
    CHECK_EQ(pydp_config_rebuild(shm, slot, PYDP_MAX_CLUSTERS, err), -1);
    /* an unused cluster slot: its whole table is empty */
    memset(pydp_shm_maglev(shm, 1, 3), 7, MAGLEV_MAX);
    CHECK_EQ(pydp_config_rebuild(shm, slot, 3, err), 0);
    CHECK_EQ(table_outside(pydp_shm_maglev(shm, 1, 3), MAGLEV_MAX, none, 1, count), 0);

    /* the final config: web (IPv4, slot 0) and web6 (IPv6, slot 5) */
    fill_web(c);
    CHECK_EQ(pydp_config_rebuild(shm, slot, 0, err), 0);
    CHECK_MEM(table, expect, MAGLEV_MAX);
    c = &slot->clusters[5];
    memset(c, 0, sizeof(*c));
    snprintf(c->name, sizeof(c->name), "web6");
    c->family = PYDP_AF_INET6;
    memcpy(c->vip, vip6, 16);
    c->enabled = 1;
    c->maglev_size = 251;
    set_edge(c, 0, "v6-a", 1, PYDP_EDGE_UP, 31);
    set_edge(c, 1, "v6-b", 1, PYDP_EDGE_UP, 32);
    CHECK_EQ(pydp_config_rebuild(shm, slot, 5, err), 0);

    err[0] = '\0';
    CHECK_EQ(pydp_config_publish(shm, slot, err), 0);
    if (err[0] != '\0')
        fprintf(stderr, "publish: %s\n", err);
    CHECK_EQ(h->generation, 1);
    CHECK_EQ(slot->generation, 1);
    CHECK_EQ(slot->nb_clusters, 6);
    CHECK_EQ(pydp_config_lookup_vip(slot, PYDP_AF_INET, slot->clusters[0].vip), 0);
    CHECK_EQ(pydp_config_lookup_vip(slot, PYDP_AF_INET6, vip6), 5);
    set_addr4(unknown, 198, 51, 100, 11);
    CHECK_EQ(pydp_config_lookup_vip(slot, PYDP_AF_INET, unknown), -1);
    CHECK_EQ(pydp_config_lookup_vip(slot, PYDP_AF_INET6, slot->clusters[0].vip), -1);  /* same bytes, other family */
    CHECK_EQ(pydp_config_lookup_vip(slot, PYDP_AF_INET, vip6), -1);
    CHECK_EQ(pydp_config_lookup_vip(cur, PYDP_AF_INET, slot->clusters[0].vip), -1);    /* the old slot has none */

    /* publishing the slot in use (not the idle one) fails and changes nothing */
    err[0] = '\0';
    CHECK_EQ(pydp_config_publish(shm, slot, err), -1);
    CHECK(err[0] != '\0');
    CHECK_EQ(h->generation, 1);

    /* a worker still on generation 0 blocks the next begin until it passes a quiescent point */
    h->workers[0].online = 1;
    h->workers[0].seen_gen = 0;
    err[0] = '\0';
    t0 = pydp_now_ms();
    slot2 = pydp_config_begin(shm, 50, err);
    CHECK(slot2 == NULL);
    CHECK(pydp_now_ms() - t0 >= 50);
    CHECK(pydp_now_ms() - t0 < 2000);
    CHECK(contains(err, "quiescent"));
    CHECK_EQ(h->generation, 1);

    h->workers[0].seen_gen = 1;                       /* worker 1 stays offline (UINT64_MAX): never waited for */
    err[0] = '\0';
    slot2 = pydp_config_begin(shm, 50, err);
    CHECK(slot2 == pydp_shm_config(shm, 0));
    if (slot2 == NULL) {
        fprintf(stderr, "begin: %s\n", err);
        return;
    }
    CHECK_MEM(slot2, slot, sizeof(*slot2));
    /* the tables rebuilt in slot 1 were brought over to slot 0 */
    CHECK_MEM(pydp_shm_maglev(shm, 0, 0), pydp_shm_maglev(shm, 1, 0), MAGLEV_MAX);
    CHECK_MEM(pydp_shm_maglev(shm, 0, 5), pydp_shm_maglev(shm, 1, 5), 251);

    /* two clusters with one cluster IP: publish refuses */
    c = &slot2->clusters[2];
    memset(c, 0, sizeof(*c));
    snprintf(c->name, sizeof(c->name), "dup");
    c->family = PYDP_AF_INET;
    memcpy(c->vip, slot2->clusters[0].vip, 16);
    c->maglev_size = MAGLEV_MAX;
    set_edge(c, 0, "d-a", 1, PYDP_EDGE_UP, 41);
    err[0] = '\0';
    CHECK_EQ(pydp_config_publish(shm, slot2, err), -1);
    CHECK(contains(err, "twice"));
    CHECK_EQ(h->generation, 1);
    c->family = PYDP_AF_NONE;

    /* a Maglev size that is not prime, zero, or over the room: publish refuses */
    slot2->clusters[0].maglev_size = 256;
    err[0] = '\0';
    CHECK_EQ(pydp_config_publish(shm, slot2, err), -1);
    CHECK(contains(err, "Maglev size"));
    slot2->clusters[0].maglev_size = 0;
    CHECK_EQ(pydp_config_publish(shm, slot2, err), -1);
    slot2->clusters[0].maglev_size = 263;              /* prime, but beyond maglev_max */
    CHECK_EQ(pydp_config_publish(shm, slot2, err), -1);
    slot2->clusters[5].family = 5;                     /* bad family */
    slot2->clusters[0].maglev_size = MAGLEV_MAX;
    CHECK_EQ(pydp_config_publish(shm, slot2, err), -1);
    CHECK_EQ(h->generation, 1);

    /* fixed: publishes as generation 2; removing the last cluster lowers nb_clusters */
    slot2->clusters[5].family = PYDP_AF_NONE;
    err[0] = '\0';
    CHECK_EQ(pydp_config_publish(shm, slot2, err), 0);
    CHECK_EQ(h->generation, 2);
    CHECK_EQ(slot2->generation, 2);
    CHECK_EQ(slot2->nb_clusters, 1);
    CHECK_EQ(pydp_config_lookup_vip(slot2, PYDP_AF_INET6, vip6), -1);
    CHECK_EQ(pydp_config_lookup_vip(slot2, PYDP_AF_INET, slot2->clusters[0].vip), 0);

    h->workers[0].online = 0;
    h->workers[0].seen_gen = UINT64_MAX;
}

static void
test_cmd_ring(struct pydp_shm *shm)
{
    struct pydp_cmd cmd;
    struct pydp_cmd_ring *r = pydp_shm_cmds(shm, 1);
    uint32_t i;
    int fails = 0, wrong = 0;

    memset(&cmd, 0, sizeof(cmd));
    CHECK_EQ(r->head, 0);
    CHECK_EQ(r->tail, 0);
    for (i = 0; i < PYDP_CMD_RING_SIZE; i++) {
        cmd.op = PYDP_CMD_FLUSH_EDGE;
        cmd.arg0 = i;
        cmd.arg1 = i ^ 0x55;
        if (pydp_cmd_push(shm, 1, &cmd) != 0)
            fails++;
    }
    CHECK_EQ(fails, 0);
    CHECK_EQ(r->head, PYDP_CMD_RING_SIZE);
    cmd.arg0 = 999;
    CHECK_EQ(pydp_cmd_push(shm, 1, &cmd), -1);        /* full */
    CHECK_EQ(r->head, PYDP_CMD_RING_SIZE);
    for (i = 0; i < PYDP_CMD_RING_SIZE; i++)
        if (r->cmds[i].op != PYDP_CMD_FLUSH_EDGE || r->cmds[i].arg0 != i || r->cmds[i].arg1 != (i ^ 0x55))
            wrong++;
    CHECK_EQ(wrong, 0);
    CHECK_EQ(pydp_shm_cmds(shm, 0)->head, 0);         /* the other worker's ring is untouched */

    /* the consumer takes one: one more fits, in the first entry */
    r->tail = 1;
    cmd.op = PYDP_CMD_FLUSH_ALL;
    cmd.arg0 = 1000;
    CHECK_EQ(pydp_cmd_push(shm, 1, &cmd), 0);
    CHECK_EQ(r->cmds[0].arg0, 1000);
    CHECK_EQ(r->cmds[0].op, PYDP_CMD_FLUSH_ALL);
    CHECK_EQ(pydp_cmd_push(shm, 1, &cmd), -1);

    /* no such worker */
    CHECK_EQ(pydp_cmd_push(shm, NB_WORKERS, &cmd), -1);
    CHECK_EQ(pydp_cmd_push(shm, PYDP_MAX_WORKERS, &cmd), -1);
}

int
main(void)
{
    struct pydp_shm shm;
    struct pydp_shm_params p = { NB_WORKERS, 1, MAGLEV_MAX, FLOW_CAP };
    char err[PYDP_ERR_LEN];

    tst_setup_paths();
    test_create_params();

    err[0] = '\0';
    if (pydp_shm_create(&shm, tst_paths[P_REGION], &p, err) != 0) {
        fprintf(stderr, "create %s: %s\n", tst_paths[P_REGION], err);
        check_failed++;
        return check_report("shm");
    }
    CHECK(file_exists(tst_paths[P_REGION]));
    test_header(&shm);
    test_attach(&shm);
    test_attach_refused(&shm);
    test_config_swap(&shm);
    test_cmd_ring(&shm);

    pydp_shm_close(&shm);
    CHECK(shm.base == NULL);
    CHECK(!file_exists(tst_paths[P_REGION]));          /* the creator's close unlinks */
    tst_cleanup();
    return check_report("shm");
}
