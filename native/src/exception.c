/*
 * exception.c - the exception path: frames that are not for a cluster IP go to a kernel interface (TAP), and
 * what the kernel sends there goes out of the data port. Two token buckets per worker keep a flood from starving
 * the workers or crowding out CARP: the priority class (ARP, CARP, ND) has its own budget.
 */
#include <rte_cycles.h>
#include <rte_ethdev.h>

#include "dp.h"

void dp_bucket_init(struct dp_bucket *b, uint64_t pps, uint64_t hz)
{
    uint64_t burst = pps / 20;      /* 50 ms worth of packets */

    if (burst < 64)
        burst = 64;
    b->pps = pps;
    b->cost = hz;
    b->cap = burst * hz;
    b->tokens = b->cap;
    b->last_tsc = rte_rdtsc();
}

static inline int exc_take(struct dp_bucket *b)
{
    uint64_t now = rte_rdtsc();
    uint64_t elapsed = now - b->last_tsc;

    if (elapsed > b->cost)          /* at most one second of refill (keeps the product in range) */
        elapsed = b->cost;
    b->last_tsc = now;
    b->tokens += elapsed * b->pps;
    if (b->tokens > b->cap)
        b->tokens = b->cap;
    if (b->tokens < b->cost)
        return 0;
    b->tokens -= b->cost;
    return 1;
}

void dp_exc_send(struct dp_worker *w, uint32_t pi, struct rte_mbuf *m, int prio)
{
    struct pydp_port_stats *ps = &w->stats->port[pi];

    if (unlikely(dp.ports[pi].exc_id == DP_NO_PORT)) {
        dp_drop(ps, m, PYDP_DROP_EXC_NONE);
        return;
    }
    if (prio) {
        if (!exc_take(&w->exc_prio)) {
            dp_drop(ps, m, PYDP_DROP_EXC_PRIO_RATELIMIT);
            return;
        }
        ps->exc_prio++;
    } else if (!exc_take(&w->exc_bulk)) {
        dp_drop(ps, m, PYDP_DROP_EXC_RATELIMIT);
        return;
    }
    ps->exc_to_kernel++;
    dp_txq_put(&w->exc_tx[pi], m, dp.p.burst);
}

/* Worker 0 only: frames from the kernel (on any exception queue: a multi-queue TAP spreads them) go out of the
 * data port on worker 0's TX queue. */
uint32_t dp_exc_poll(struct dp_worker *w)
{
    struct rte_mbuf *pkts[DP_MAX_BURST];
    uint32_t pi, q, i, got = 0;

    for (pi = 0; pi < dp.p.nb_ports; pi++) {
        if (dp.ports[pi].exc_id == DP_NO_PORT)
            continue;
        for (q = 0; q < dp.p.nb_workers; q++) {
            uint16_t n = rte_eth_rx_burst(dp.ports[pi].exc_id, (uint16_t)q, pkts, (uint16_t)dp.p.burst);

            if (n == 0)
                continue;
            w->stats->port[pi].exc_from_kernel += n;
            got += n;
            for (i = 0; i < n; i++)
                dp_txq_put(&w->tx[pi], pkts[i], dp.p.burst);
        }
    }
    return got;
}
