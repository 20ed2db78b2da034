/*
 * exception.c - the exception path: frames that are not for a cluster IP go to a kernel interface (TAP), and
 * what the kernel sends there goes out of the data port. A token bucket per class and worker (enum
 * pydp_exc_class: best effort, ARP/ND, CARP, BGP/BFD control) keeps a flood from starving the workers and a flood
 * of one class (an ARP or ICMP storm) from using the budget of another (CARP adverts, routing sessions).
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

static const uint8_t exc_drop_reason[PYDP_EXC__COUNT] = {
    [PYDP_EXC_BULK] = PYDP_DROP_EXC_RATELIMIT,
    [PYDP_EXC_ARP] = PYDP_DROP_EXC_ARP_RATELIMIT,
    [PYDP_EXC_CARP] = PYDP_DROP_EXC_CARP_RATELIMIT,
    [PYDP_EXC_CONTROL] = PYDP_DROP_EXC_CONTROL_RATELIMIT,
};

void dp_exc_send(struct dp_worker *w, uint32_t pi, struct rte_mbuf *m, int klass)
{
    struct pydp_port_stats *ps = &w->stats->port[pi];

    if (unlikely(dp.ports[pi].exc_id == DP_NO_PORT)) {
        dp_drop(ps, m, PYDP_DROP_EXC_NONE);
        return;
    }
    if (!exc_take(&w->exc_bucket[klass])) {
        dp_drop(ps, m, exc_drop_reason[klass]);
        return;
    }
    switch (klass) {
    case PYDP_EXC_ARP:
        ps->exc_arp++;
        break;
    case PYDP_EXC_CARP:
        ps->exc_carp++;
        break;
    case PYDP_EXC_CONTROL:
        ps->exc_control++;
        break;
    default:
        break;
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
