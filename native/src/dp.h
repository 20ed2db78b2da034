/* dp.h - internal state of the data-plane runtime (not part of the public API). */
#ifndef PYDP_DP_H
#define PYDP_DP_H

#include <rte_common.h>
#include <rte_ether.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

#include "pydp.h"

#define DP_MAX_BURST 256
#define DP_NO_PORT UINT16_MAX

/* Frames waiting for one TX queue; flushed when full or on the drain timer. */
struct dp_txq {
    uint16_t port;
    uint16_t queue;
    uint16_t len;
    uint16_t pad;
    struct pydp_port_stats *stats;  /* where sent and dropped frames are counted */
    int is_exc;
    uint64_t bytes;                 /* of the frames queued (counted when they are put, not re-read at send) */
    struct rte_mbuf *pkts[DP_MAX_BURST];
};

struct dp_port {
    uint16_t port_id;
    uint16_t exc_id;                /* DP_NO_PORT: no exception path */
    struct rte_ether_addr mac;
};

/* Token bucket in units of (packets x TSC hz), refilled from the TSC. */
struct dp_bucket {
    uint64_t tokens;
    uint64_t cap;
    uint64_t cost;                  /* one packet */
    uint64_t pps;
    uint64_t last_tsc;
};

struct dp_worker {
    uint32_t id;
    uint32_t lcore;
    struct pydp_worker_stats *stats;
    struct pydp_cluster_stats *cstats;     /* [PYDP_MAX_CLUSTERS] */
    struct pydp_flow_table *flows;
    struct pydp_cmd_ring *cmds;
    struct pydp_event_ring *events;
    struct pydp_worker_state *state;
    uint64_t gen;
    const struct pydp_config *cfg;
    const uint8_t *maglev;                 /* base of the current slot's tables */
    struct dp_bucket exc_bucket[PYDP_EXC__COUNT];  /* enum pydp_exc_class */
    uint64_t drain_tsc;
    uint64_t last_drain;
    struct dp_txq tx[PYDP_MAX_PORTS];
    struct dp_txq exc_tx[PYDP_MAX_PORTS];
} __rte_cache_aligned;

struct dp_main {
    struct pydp_dp_params p;
    struct pydp_shm shm;
    struct rte_mempool *pool;
    struct dp_port ports[PYDP_MAX_PORTS];
    struct dp_worker *workers[PYDP_MAX_WORKERS];
    uint64_t tsc_hz;
    uint64_t tsc_per_ms;
    uint64_t base_tsc;
    uint64_t base_ms;
    volatile int quit;
    int eal_ready;
    int launched;
    int ports_started;
};

extern struct dp_main dp;

void dp_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* port.c */
int dp_port_init(uint16_t port_id, uint16_t nb_rxq, uint16_t nb_txq, int promiscuous);
void dp_port_close(uint16_t port_id);

/* exception.c */
void dp_bucket_init(struct dp_bucket *b, uint64_t pps, uint64_t hz);
void dp_exc_send(struct dp_worker *w, uint32_t pi, struct rte_mbuf *m, int klass);  /* enum pydp_exc_class */
uint32_t dp_exc_poll(struct dp_worker *w);   /* frames moved from the TAPs */

/* worker.c */
int dp_worker_main(void *arg);
int dp_worker_loop(struct dp_worker *w, uint32_t stop_after_idle);
void dp_txq_flush(struct dp_txq *q);

/* Queues m (len = its packet length) for sending; a full queue is sent at once. */
static inline void dp_txq_put_len(struct dp_txq *q, struct rte_mbuf *m, uint32_t len, uint32_t burst)
{
    q->bytes += len;
    q->pkts[q->len++] = m;
    if (unlikely(q->len >= burst))
        dp_txq_flush(q);
}

static inline void dp_txq_put(struct dp_txq *q, struct rte_mbuf *m, uint32_t burst)
{
    dp_txq_put_len(q, m, rte_pktmbuf_pkt_len(m), burst);
}

static inline void dp_drop(struct pydp_port_stats *ps, struct rte_mbuf *m, enum pydp_drop why)
{
    ps->drops[why]++;
    rte_pktmbuf_free(m);
}

#endif
