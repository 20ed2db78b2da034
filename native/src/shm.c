/*
 * shm.c - the shared-memory region: creation by the data plane, attachment by the control plane, and the
 * lock-free config swap (double-buffered slots + generation + per-worker quiescent points).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include <nmmintrin.h>

#include "pydp.h"

_Static_assert(sizeof(struct pydp_edge) == 64, "pydp_edge layout");
_Static_assert(sizeof(struct pydp_cluster) == 1088, "pydp_cluster layout");
_Static_assert(sizeof(struct pydp_flow_key) == 40, "pydp_flow_key layout");
_Static_assert(sizeof(struct pydp_flow) == 64, "pydp_flow layout");
_Static_assert(sizeof(struct pydp_flow_bucket) == 448, "pydp_flow_bucket layout");
_Static_assert(sizeof(struct pydp_flow_table) == 3776, "pydp_flow_table layout");
_Static_assert(sizeof(struct pydp_port_stats) == 256, "pydp_port_stats layout");
_Static_assert(sizeof(struct pydp_worker_stats) == 1280, "pydp_worker_stats layout");
_Static_assert(sizeof(struct pydp_cluster_stats) == 576, "pydp_cluster_stats layout");
_Static_assert(sizeof(struct pydp_cmd) == 128, "pydp_cmd layout");
_Static_assert(sizeof(struct pydp_flow_event) == 64, "pydp_flow_event layout");
_Static_assert(offsetof(struct pydp_event_ring, tail) == 64, "event ring: consumer index on its own line");
_Static_assert(offsetof(struct pydp_event_ring, events) == 128, "event ring: events cache aligned");
_Static_assert(sizeof(((struct pydp_event_ring *)0)->events) / 64 == PYDP_EVENT_RING_SIZE, "event ring size");
_Static_assert(sizeof(struct pydp_worker_state) == 64, "pydp_worker_state layout");
_Static_assert(sizeof(struct pydp_port_info) == 128, "pydp_port_info layout");
_Static_assert(offsetof(struct pydp_shm_header, generation) % 64 == 0, "generation on its own cache line");
_Static_assert(offsetof(struct pydp_shm_header, reload_requests) % 64 == 0, "controller line cache aligned");
_Static_assert(offsetof(struct pydp_shm_header, workers) - offsetof(struct pydp_shm_header, reload_requests) == 64,
               "controller line: one cache line");
_Static_assert(offsetof(struct pydp_shm_header, workers) % 64 == 0, "worker states cache aligned");
_Static_assert(PYDP_DROP__COUNT <= PYDP_DROP_SLOTS, "drop reasons fit");
_Static_assert(sizeof(((struct pydp_config *)0)->vip_index) == PYDP_VIP_INDEX_SIZE, "vip index size");
_Static_assert(sizeof(((struct pydp_config *)0)->clusters) / sizeof(struct pydp_cluster) == PYDP_MAX_CLUSTERS,
               "cluster count");
_Static_assert(sizeof(((struct pydp_cluster *)0)->edges) / sizeof(struct pydp_edge) == PYDP_MAX_EDGES, "edges");
_Static_assert(sizeof(((struct pydp_shm_header *)0)->workers) / 64 == PYDP_MAX_WORKERS, "workers");
_Static_assert(sizeof(((struct pydp_shm_header *)0)->ports) / 128 == PYDP_MAX_PORTS, "ports");

#define SHM_ALIGN 4096u
#define SHM_HUGETLBFS_MAGIC 0x958458f6u   /* statfs f_type of hugetlbfs (linux/magic.h) */

static void shm_err(char *err, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL)
        return;
    va_start(ap, fmt);
    vsnprintf(err, PYDP_ERR_LEN, fmt, ap);
    va_end(ap);
}

static uint64_t shm_align(uint64_t v, uint64_t a)
{
    return (v + a - 1) / a * a;
}

uint64_t pydp_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Lays out the region for the given parameters; fills the offsets of hdr and returns the total size. */
static uint64_t shm_layout(struct pydp_shm_header *h, const struct pydp_shm_params *p)
{
    uint64_t off = shm_align(sizeof(*h), SHM_ALIGN);
    uint32_t s;

    for (s = 0; s < 2; s++) {
        h->off_config[s] = off;
        off = shm_align(off + sizeof(struct pydp_config), SHM_ALIGN);
    }
    for (s = 0; s < 2; s++) {
        h->off_maglev[s] = off;
        off = shm_align(off + (uint64_t)PYDP_MAX_CLUSTERS * p->maglev_max, SHM_ALIGN);
    }
    h->off_worker_stats = off;
    off = shm_align(off + (uint64_t)p->nb_workers * sizeof(struct pydp_worker_stats), SHM_ALIGN);
    h->off_cluster_stats = off;
    off = shm_align(off + (uint64_t)p->nb_workers * PYDP_MAX_CLUSTERS * sizeof(struct pydp_cluster_stats),
                    SHM_ALIGN);
    h->off_cmds = off;
    off = shm_align(off + (uint64_t)p->nb_workers * sizeof(struct pydp_cmd_ring), SHM_ALIGN);
    h->off_events = off;
    off = shm_align(off + (uint64_t)p->nb_workers * sizeof(struct pydp_event_ring), SHM_ALIGN);
    h->flow_table_stride = shm_align(pydp_flow_table_bytes(p->flow_capacity), SHM_ALIGN);
    h->off_flows = off;
    off += (uint64_t)p->nb_workers * h->flow_table_stride;
    return off;
}

uint64_t pydp_shm_bytes(const struct pydp_shm_params *p)
{
    struct pydp_shm_header tmp;

    memset(&tmp, 0, sizeof(tmp));
    return shm_layout(&tmp, p);
}

static int shm_map(struct pydp_shm *shm, const char *path, int fd, uint64_t size, int owner, char *err)
{
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);

    if (base == MAP_FAILED) {
        shm_err(err, "%s: mmap of %llu bytes failed: %s", path, (unsigned long long)size, strerror(errno));
        return -1;
    }
    shm->base = base;
    shm->size = size;
    shm->fd = fd;
    shm->owner = owner;
    shm->hdr = base;
    snprintf(shm->path, sizeof(shm->path), "%s", path);
    return 0;
}

/* The page size of the hugetlbfs that will hold path (its directory), or 0 when it is not on one: a file there
 * can only be sized in whole pages (2 MiB or 1 GiB, as the mount's pagesize= says). */
static uint64_t shm_huge_page(const char *path)
{
    char dir[256];
    char *slash;
    struct statfs sf;

    snprintf(dir, sizeof(dir), "%s", path);
    slash = strrchr(dir, '/');
    if (slash == NULL)
        return 0;
    if (slash == dir)
        slash[1] = '\0';
    else
        *slash = '\0';
    if (statfs(dir, &sf) != 0 || (uint32_t)sf.f_type != SHM_HUGETLBFS_MAGIC || sf.f_bsize <= 0)
        return 0;
    return (uint64_t)sf.f_bsize;
}

int pydp_shm_create(struct pydp_shm *shm, const char *path, const struct pydp_shm_params *p, char *err)
{
    struct pydp_shm_header tmp;
    struct pydp_shm_header *h;
    uint64_t size, huge;
    uint32_t w, s;
    int fd;

    memset(shm, 0, sizeof(*shm));
    shm->fd = -1;
    if (p->nb_workers < 1 || p->nb_workers > PYDP_MAX_WORKERS) {
        shm_err(err, "workers must be 1..%d, got %u", PYDP_MAX_WORKERS, p->nb_workers);
        return -1;
    }
    if (p->nb_ports < 1 || p->nb_ports > PYDP_MAX_PORTS) {
        shm_err(err, "ports must be 1..%d, got %u", PYDP_MAX_PORTS, p->nb_ports);
        return -1;
    }
    if (p->maglev_max < 17 || p->maglev_max > PYDP_MAGLEV_MAX_SIZE) {
        shm_err(err, "maglev_max must be 17..%d, got %u", PYDP_MAGLEV_MAX_SIZE, p->maglev_max);
        return -1;
    }
    if (p->flow_capacity < 64) {
        shm_err(err, "flow capacity must be at least 64, got %u", p->flow_capacity);
        return -1;
    }
    if (strlen(path) >= sizeof(shm->path)) {
        shm_err(err, "shared memory path too long: %s", path);
        return -1;
    }
    memset(&tmp, 0, sizeof(tmp));
    size = shm_layout(&tmp, p);
    huge = shm_huge_page(path);
    if (huge != 0)
        size = shm_align(size, huge);

    /* A region left behind by a data plane that died is replaced: the data plane is its only creator. */
    unlink(path);
    fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        shm_err(err, "%s: cannot create: %s", path, strerror(errno));
        return -1;
    }
    if (ftruncate(fd, (off_t)size) != 0) {
        shm_err(err, "%s: cannot size to %llu bytes: %s", path, (unsigned long long)size, strerror(errno));
        close(fd);
        unlink(path);
        return -1;
    }
    if (shm_map(shm, path, fd, size, 1, err) != 0) {
        close(fd);
        unlink(path);
        return -1;
    }
    h = shm->hdr;
    memset(h, 0, sizeof(*h));
    *h = tmp;
    h->layout_version = PYDP_LAYOUT_VERSION;
    h->header_size = sizeof(*h);
    h->total_size = size;
    h->nb_workers = p->nb_workers;
    h->nb_ports = p->nb_ports;
    h->maglev_max = p->maglev_max;
    h->dp_pid = (int32_t)getpid();
    h->created_ms = pydp_now_ms();
    h->heartbeat_ms = h->created_ms;
    for (w = 0; w < PYDP_MAX_WORKERS; w++)
        h->workers[w].seen_gen = UINT64_MAX;
    for (s = 0; s < 2; s++)
        pydp_config_defaults(pydp_shm_config(shm, s));
    for (w = 0; w < p->nb_workers; w++)
        pydp_flow_table_init(pydp_shm_flows(shm, w), p->flow_capacity);
    h->flow_capacity = pydp_shm_flows(shm, 0)->nb_buckets * PYDP_FLOW_WAYS;
    /* magic last: an attacher that sees it sees a complete header */
    __atomic_store_n(&h->magic, (uint64_t)PYDP_SHM_MAGIC, __ATOMIC_RELEASE);
    return 0;
}

/* A region the data plane (root) did not make is not trusted: the control plane follows its offsets. Refused
 * when owned by another user than root and us, or writable by group or others. */
static int shm_untrusted(const char *path, const struct stat *st, char *err)
{
    if (st->st_uid != 0 && st->st_uid != geteuid()) {
        shm_err(err, "%s: owned by uid %u, not by root: refusing to attach a region someone else made", path,
                (unsigned)st->st_uid);
        return 1;
    }
    if (st->st_mode & (S_IWGRP | S_IWOTH)) {
        shm_err(err, "%s: writable by group or others (mode %03o): refusing to attach it", path,
                (unsigned)(st->st_mode & 0777));
        return 1;
    }
    return 0;
}

/* The offsets in a header must be those the data plane computes for its parameters (and fit in the region):
 * nothing in the header can point the control plane outside the mapping. */
static int shm_layout_differs(const struct pydp_shm_header *h)
{
    struct pydp_shm_params p = { .nb_workers = h->nb_workers, .nb_ports = h->nb_ports,
                                 .maglev_max = h->maglev_max, .flow_capacity = h->flow_capacity };
    struct pydp_shm_header want;
    uint64_t size;
    uint32_t buckets = h->flow_capacity / PYDP_FLOW_WAYS;

    /* a table is a power-of-two number of buckets of PYDP_FLOW_WAYS ways */
    if (buckets == 0 || h->flow_capacity % PYDP_FLOW_WAYS != 0 || (buckets & (buckets - 1)) != 0)
        return 1;
    memset(&want, 0, sizeof(want));
    size = shm_layout(&want, &p);
    return size > h->total_size || memcmp(want.off_config, h->off_config, sizeof(want.off_config)) != 0 ||
           memcmp(want.off_maglev, h->off_maglev, sizeof(want.off_maglev)) != 0 ||
           want.off_worker_stats != h->off_worker_stats || want.off_cluster_stats != h->off_cluster_stats ||
           want.off_flows != h->off_flows || want.flow_table_stride != h->flow_table_stride ||
           want.off_cmds != h->off_cmds;
}

int pydp_shm_attach(struct pydp_shm *shm, const char *path, char *err)
{
    struct pydp_shm_header h;
    struct stat st;
    ssize_t n;
    int fd;

    memset(shm, 0, sizeof(*shm));
    shm->fd = -1;
    if (strlen(path) >= sizeof(shm->path)) {
        shm_err(err, "shared memory path too long: %s", path);
        return -1;
    }
    fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0 && (errno == EACCES || errno == EPERM)) {
        shm_err(err, "%s: permission denied: the region is readable and writable by root only; run as root", path);
        return -1;
    }
    if (fd < 0) {
        shm_err(err, "%s: cannot open (is pydp-dataplane running?): %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) == 0 && shm_untrusted(path, &st, err)) {
        close(fd);
        return -1;
    }
    if (fstat(fd, &st) != 0 || (uint64_t)st.st_size < sizeof(h)) {
        shm_err(err, "%s: not a pydp region (too small)", path);
        close(fd);
        return -1;
    }
    n = pread(fd, &h, sizeof(h), 0);
    if (n != (ssize_t)sizeof(h) || h.magic != (uint64_t)PYDP_SHM_MAGIC) {
        shm_err(err, "%s: not a pydp region (bad magic)", path);
        close(fd);
        return -1;
    }
    if (h.layout_version != PYDP_LAYOUT_VERSION || h.header_size != sizeof(h)) {
        shm_err(err, "%s: layout version %u (header %u bytes), this build expects version %u (%zu bytes): "
                "run a pydp-control built with the same pydp release as pydp-dataplane",
                path, h.layout_version, h.header_size, PYDP_LAYOUT_VERSION, sizeof(h));
        close(fd);
        return -1;
    }
    if (h.total_size > (uint64_t)st.st_size || h.nb_workers < 1 || h.nb_workers > PYDP_MAX_WORKERS ||
        h.nb_ports > PYDP_MAX_PORTS || h.maglev_max > PYDP_MAGLEV_MAX_SIZE) {
        shm_err(err, "%s: inconsistent header (size %llu of %llu, %u workers)", path,
                (unsigned long long)h.total_size, (unsigned long long)st.st_size, h.nb_workers);
        close(fd);
        return -1;
    }
    if (shm_layout_differs(&h)) {
        shm_err(err, "%s: inconsistent header (offsets do not match the layout of %u workers)", path, h.nb_workers);
        close(fd);
        return -1;
    }
    if (shm_map(shm, path, fd, h.total_size, 0, err) != 0) {
        close(fd);
        return -1;
    }
    return 0;
}

void pydp_shm_close(struct pydp_shm *shm)
{
    if (shm->base != NULL)
        munmap(shm->base, shm->size);
    if (shm->fd >= 0)
        close(shm->fd);
    if (shm->owner)
        unlink(shm->path);
    shm->base = NULL;
    shm->hdr = NULL;
    shm->fd = -1;
    shm->owner = 0;
}

struct pydp_config *pydp_shm_config(struct pydp_shm *shm, uint32_t slot)
{
    return (struct pydp_config *)((uint8_t *)shm->base + shm->hdr->off_config[slot & 1]);
}

uint8_t *pydp_shm_maglev(struct pydp_shm *shm, uint32_t slot, uint32_t cluster)
{
    return (uint8_t *)shm->base + shm->hdr->off_maglev[slot & 1] + (uint64_t)cluster * shm->hdr->maglev_max;
}

struct pydp_flow_table *pydp_shm_flows(struct pydp_shm *shm, uint32_t worker)
{
    return (struct pydp_flow_table *)((uint8_t *)shm->base + shm->hdr->off_flows +
                                      (uint64_t)worker * shm->hdr->flow_table_stride);
}

struct pydp_worker_stats *pydp_shm_worker_stats(struct pydp_shm *shm, uint32_t worker)
{
    return (struct pydp_worker_stats *)((uint8_t *)shm->base + shm->hdr->off_worker_stats) + worker;
}

struct pydp_cluster_stats *pydp_shm_cluster_stats(struct pydp_shm *shm, uint32_t worker, uint32_t cluster)
{
    return (struct pydp_cluster_stats *)((uint8_t *)shm->base + shm->hdr->off_cluster_stats) +
           (uint64_t)worker * PYDP_MAX_CLUSTERS + cluster;
}

struct pydp_cmd_ring *pydp_shm_cmds(struct pydp_shm *shm, uint32_t worker)
{
    return (struct pydp_cmd_ring *)((uint8_t *)shm->base + shm->hdr->off_cmds) + worker;
}

void pydp_config_defaults(struct pydp_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->hash_seed = 0x5eed;
    cfg->tcp_syn_timeout_ms = 30000;
    cfg->tcp_est_timeout_ms = 900000;
    cfg->tcp_fin_timeout_ms = 10000;
    cfg->udp_timeout_ms = 300000;
    cfg->other_timeout_ms = 60000;
}

/* Runs per packet (the cluster IP lookup): two CRC32C steps over the 16-byte address. */
static inline uint32_t shm_vip_hash(uint8_t family, const uint8_t *addr)
{
    uint64_t a, b;
    uint32_t h;

    memcpy(&a, addr, 8);
    memcpy(&b, addr + 8, 8);
    h = (uint32_t)_mm_crc32_u64(family, a);
    h = (uint32_t)_mm_crc32_u64(h, b);
    return h ^ (h >> 16);
}

int pydp_config_lookup_vip(const struct pydp_config *cfg, uint8_t family, const uint8_t *addr)
{
    uint32_t i = shm_vip_hash(family, addr), n;

    for (n = 0; n < PYDP_VIP_INDEX_SIZE; n++, i++) {
        uint8_t v = cfg->vip_index[i & (PYDP_VIP_INDEX_SIZE - 1)];
        const struct pydp_cluster *c;

        if (v == 0)
            return -1;
        c = &cfg->clusters[v - 1];
        if (c->family == family && memcmp(c->vip, addr, 16) == 0)
            return v - 1;
    }
    return -1;
}

/* Waits until no online worker can still be reading the idle slot: every online worker has passed a quiescent
 * point after the current generation was published. */
static int shm_wait_quiescent(struct pydp_shm *shm, uint64_t gen, uint32_t timeout_ms)
{
    struct pydp_shm_header *h = shm->hdr;
    uint64_t deadline = pydp_now_ms() + timeout_ms;
    struct timespec pause = { 0, 20000 };
    uint32_t w;

    for (;;) {
        int busy = 0;

        for (w = 0; w < h->nb_workers; w++) {
            uint64_t seen = __atomic_load_n(&h->workers[w].seen_gen, __ATOMIC_ACQUIRE);

            if (seen != UINT64_MAX && seen < gen)
                busy = 1;
        }
        if (!busy)
            return 0;
        if (pydp_now_ms() > deadline)
            return -1;
        nanosleep(&pause, NULL);
    }
}

struct pydp_config *pydp_config_begin(struct pydp_shm *shm, uint32_t timeout_ms, char *err)
{
    uint64_t gen = __atomic_load_n(&shm->hdr->generation, __ATOMIC_ACQUIRE);
    struct pydp_config *cur = pydp_shm_config(shm, (uint32_t)gen);
    struct pydp_config *idle = pydp_shm_config(shm, (uint32_t)gen + 1);
    uint32_t c;

    if (shm_wait_quiescent(shm, gen, timeout_ms) != 0) {
        shm_err(err, "a worker did not pass a quiescent point within %u ms (is the data plane stuck?)",
                timeout_ms);
        return NULL;
    }
    /* Bring the idle slot up to date: the config, and the tables rebuilt since it was last current. */
    for (c = 0; c < PYDP_MAX_CLUSTERS; c++) {
        if (idle->clusters[c].table_version != cur->clusters[c].table_version)
            memcpy(pydp_shm_maglev(shm, (uint32_t)gen + 1, c), pydp_shm_maglev(shm, (uint32_t)gen, c),
                   shm->hdr->maglev_max);
    }
    memcpy(idle, cur, sizeof(*idle));
    return idle;
}

/* The version a table rebuilt now carries: the generation the slot being edited will be published as. It is unique
 * by construction (the other slot only holds versions up to the current generation), whatever a writer did to the
 * field, so pydp_config_begin never mistakes a stale table for a current one. */
static uint32_t shm_next_table_version(struct pydp_shm *shm)
{
    return (uint32_t)(__atomic_load_n(&shm->hdr->generation, __ATOMIC_ACQUIRE) + 1);
}

static uint32_t shm_slot_of(struct pydp_shm *shm, struct pydp_config *slot)
{
    return slot == pydp_shm_config(shm, 1) ? 1 : 0;
}

int pydp_config_rebuild(struct pydp_shm *shm, struct pydp_config *slot, uint32_t cluster, char *err)
{
    const char *names[PYDP_MAX_EDGES];
    uint16_t weights[PYDP_MAX_EDGES];
    uint8_t slot_of[PYDP_MAX_EDGES];
    uint8_t *table;
    struct pydp_cluster *c;
    uint32_t e, n = 0;

    if (cluster >= PYDP_MAX_CLUSTERS) {
        shm_err(err, "cluster index %u out of range", cluster);
        return -1;
    }
    c = &slot->clusters[cluster];
    table = pydp_shm_maglev(shm, shm_slot_of(shm, slot), cluster);
    if (c->family == PYDP_AF_NONE) {
        memset(table, PYDP_MAGLEV_NONE, shm->hdr->maglev_max);
        c->table_version = shm_next_table_version(shm);
        return 0;
    }
    if (c->maglev_size > shm->hdr->maglev_max) {
        shm_err(err, "cluster %s: Maglev size %u exceeds the region's %u", c->name, c->maglev_size,
                shm->hdr->maglev_max);
        return -1;
    }
    for (e = 0; e < PYDP_MAX_EDGES; e++) {
        struct pydp_edge *edge = &c->edges[e];

        if (edge->state == PYDP_EDGE_EMPTY)
            continue;
        edge->name[sizeof(edge->name) - 1] = '\0';
        names[n] = edge->name;
        weights[n] = edge->state == PYDP_EDGE_UP ? edge->weight : 0;
        slot_of[n] = (uint8_t)e;
        n++;
    }
    if (n == 0) {
        memset(table, PYDP_MAGLEV_NONE, c->maglev_size);
    } else {
        /* the workers want edge slots, not positions in names[]: the builder writes them */
        if (pydp_maglev_build_labels(names, weights, slot_of, n, c->maglev_size, table, err) != 0)
            return -1;
    }
    c->table_version = shm_next_table_version(shm);
    return 0;
}

int pydp_config_publish(struct pydp_shm *shm, struct pydp_config *slot, char *err)
{
    uint64_t gen = __atomic_load_n(&shm->hdr->generation, __ATOMIC_ACQUIRE);
    uint32_t c, top = 0;

    if (slot != pydp_shm_config(shm, (uint32_t)gen + 1)) {
        shm_err(err, "publish of a slot that is not the idle one");
        return -1;
    }
    memset(slot->vip_index, 0, sizeof(slot->vip_index));
    for (c = 0; c < PYDP_MAX_CLUSTERS; c++) {
        struct pydp_cluster *cl = &slot->clusters[c];
        uint32_t i, n;

        if (cl->family == PYDP_AF_NONE)
            continue;
        if (cl->family != PYDP_AF_INET && cl->family != PYDP_AF_INET6) {
            shm_err(err, "cluster slot %u: bad family %u", c, cl->family);
            return -1;
        }
        if (cl->maglev_size == 0 || cl->maglev_size > shm->hdr->maglev_max || !pydp_is_prime(cl->maglev_size)) {
            shm_err(err, "cluster %.31s: bad Maglev size %u", cl->name, cl->maglev_size);
            return -1;
        }
        if (pydp_config_lookup_vip(slot, cl->family, cl->vip) >= 0) {
            shm_err(err, "cluster %.31s: cluster IP used twice", cl->name);
            return -1;
        }
        i = shm_vip_hash(cl->family, cl->vip);
        for (n = 0; n < PYDP_VIP_INDEX_SIZE; n++, i++) {
            if (slot->vip_index[i & (PYDP_VIP_INDEX_SIZE - 1)] == 0) {
                slot->vip_index[i & (PYDP_VIP_INDEX_SIZE - 1)] = (uint8_t)(c + 1);
                break;
            }
        }
        top = c + 1;
    }
    slot->nb_clusters = top;
    slot->generation = gen + 1;
    __atomic_store_n(&shm->hdr->generation, gen + 1, __ATOMIC_RELEASE);
    return 0;
}

struct pydp_event_ring *pydp_shm_events(struct pydp_shm *shm, uint32_t worker)
{
    return (struct pydp_event_ring *)((uint8_t *)shm->base + shm->hdr->off_events) + worker;
}

int pydp_cmd_push(struct pydp_shm *shm, uint32_t worker, const struct pydp_cmd *cmd)
{
    struct pydp_cmd_ring *r;
    uint32_t head, tail;

    if (worker >= shm->hdr->nb_workers)
        return -1;
    r = pydp_shm_cmds(shm, worker);
    head = r->head;
    tail = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
    if (head - tail >= PYDP_CMD_RING_SIZE)
        return -1;
    r->cmds[head & (PYDP_CMD_RING_SIZE - 1)] = *cmd;
    __atomic_store_n(&r->head, head + 1, __ATOMIC_RELEASE);
    return 0;
}
