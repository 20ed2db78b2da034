/*
 * worker.c - the poll loop of one worker lcore: burst RX -> parse -> classify -> flow table -> Maglev ->
 * DSR rewrite -> burst TX, with a TX drain timer, an idle back-off and a quiescent point after every iteration.
 */
#include <string.h>

#include <rte_cycles.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_prefetch.h>
#include <rte_vect.h>

#include "dp.h"
#include "pydp_verdict.h"

#define WRK_PREFETCH_AHEAD 4
#define WRK_IDLE_SPIN 64          /* empty polls before the first sleep */
#define WRK_CMDS_PER_LOOP 16

void dp_txq_flush(struct dp_txq *q)
{
    uint16_t sent, i;
    uint64_t bytes = q->bytes;

    if (q->len == 0)
        return;
    sent = rte_eth_tx_burst(q->port, q->queue, q->pkts, q->len);
    if (unlikely(sent < q->len))
        for (i = sent; i < q->len; i++)
            bytes -= rte_pktmbuf_pkt_len(q->pkts[i]);
    q->bytes = 0;
    if (!q->is_exc) {
        q->stats->tx_packets += sent;
        q->stats->tx_bytes += bytes;
    }
    if (unlikely(sent < q->len)) {
        q->stats->drops[q->is_exc ? PYDP_DROP_EXC_TX : PYDP_DROP_TX] += q->len - sent;
        rte_pktmbuf_free_bulk(&q->pkts[sent], q->len - sent);
    }
    q->len = 0;
}

static void wrk_flush_all(struct dp_worker *w)
{
    uint32_t pi;

    for (pi = 0; pi < dp.p.nb_ports; pi++) {
        dp_txq_flush(&w->tx[pi]);
        if (dp.ports[pi].exc_id != DP_NO_PORT)
            dp_txq_flush(&w->exc_tx[pi]);
    }
}

static inline uint32_t wrk_tsc_ms(uint64_t tsc)
{
    return (uint32_t)(dp.base_ms + (tsc - dp.base_tsc) / dp.tsc_per_ms);
}

static inline uint32_t wrk_now_ms(void)
{
    return wrk_tsc_ms(rte_rdtsc());
}

/* Picks up a newly published config: the slot is generation & 1. The flow table learns which cluster slots changed
 * (their flows confirm their pins once, see flow.c). */
static inline void wrk_load_config(struct dp_worker *w, uint32_t now)
{
    uint64_t gen = __atomic_load_n(&dp.shm.hdr->generation, __ATOMIC_ACQUIRE);

    if (likely(gen == w->gen && w->cfg != NULL))
        return;
    w->gen = gen;
    w->cfg = pydp_shm_config(&dp.shm, (uint32_t)gen);
    w->maglev = pydp_shm_maglev(&dp.shm, (uint32_t)gen, 0);
    pydp_flow_config(w->flows, w->cfg, now);
    w->stats->config_swaps++;
}

/* What decides a packet's class: family, parser flags, protocol. Packets with the same code are counted as a run. */
static inline uint32_t wrk_class_of(const struct pydp_pkt_info *info)
{
    return (uint32_t)info->family << 16 | (uint32_t)info->flags << 8 | info->key.proto;
}

/* Counts n packets of class code c (wrk_class_of). */
static inline void wrk_count_class(struct pydp_worker_stats *s, uint32_t c, uint64_t n)
{
    uint8_t family = (uint8_t)(c >> 16), flags = (uint8_t)(c >> 8), proto = (uint8_t)c;

    if (family == PYDP_AF_INET6)
        s->cls_ipv6 += n;
    if (flags & PYDP_PF_FRAGMENT)
        s->cls_fragment += n;
    else if (flags & PYDP_PF_ICMP_ERROR)
        s->cls_icmp_error += n;
    else if (flags & PYDP_PF_IPSEC)
        s->cls_ipsec += n;
    else if (proto == IPPROTO_TCP)
        s->cls_tcp += n;
    else if (proto == IPPROTO_UDP)
        s->cls_udp += n;
    else if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6)
        s->cls_icmp += n;
    else
        s->cls_other += n;
}

/* A packet between the stages of the burst pipeline. */
struct wrk_pkt {
    struct rte_mbuf *m;
    struct pydp_pkt_info info;      /* info.key becomes the hashed key (IPSec local termination folds it) */
    struct pydp_verdict v;          /* cluster and hash from the classify stage, edge from the pick */
    uint8_t exc;                    /* 1 = not IP for a cluster: straight to the exception path */
};

/* What one pass of the pipeline counts, added to the shared counters once at its end: a counter in shared memory
 * costs a load and a store per packet, and a pass has several of them per packet. */
struct wrk_tally {
    uint64_t rx_bytes;
    uint32_t hits;
    uint32_t inserts;
    uint32_t cl_packets;            /* forwarded packets and bytes of cluster cl (the cluster of most packets) */
    uint64_t cl_bytes;
    uint16_t cl;
    uint8_t vip_family;             /* the last cluster-IP lookup: family, destination, result */
    int vip_ci;
    __m128i vip_dst;
    uint32_t cls;                   /* the class (wrk_class_of) of the current run of packets, and its length */
    uint32_t cls_run;
};

#define WRK_STAGE 32                /* packets per pass of the burst pipeline */
#define WRK_WAYS_AHEAD 6            /* forward packet i while the record packet i + 6 will read is being fetched */

/* A flow event for flow sync: one flag test when sync is off (the header line is read-mostly and cached). */
static inline void wrk_event(struct dp_worker *w, uint8_t type, const struct pydp_flow *f, uint32_t now)
{
    if (unlikely(dp.shm.hdr->flow_events))
        pydp_event_push(w->events, type, f, now);
}

/* The edge of a classified packet (pydp_verdict_pick, the DPDK-free core), then what it asks the worker to count
 * and report. Returns PYDP_MAGLEV_NONE when the cluster has no edge up. */
static inline uint32_t wrk_choose_edge(struct dp_worker *w, struct wrk_tally *t, struct wrk_pkt *p, uint32_t now)
{
    struct pydp_worker_stats *s = w->stats;
    struct pydp_verdict *v = &p->v;
    const uint8_t *table = w->maglev + (uint64_t)v->cluster * dp.shm.hdr->maglev_max;
    uint32_t slot = pydp_verdict_pick(w->cfg, table, w->flows, &p->info, now, v);
    uint8_t what = v->what;

    if (likely(what & PYDP_VW_HIT)) {
        t->hits++;
        if (unlikely(what & (PYDP_VW_REHASHED | PYDP_VW_END))) {
            if (what & PYDP_VW_REHASHED) {
                s->flow_rehashed++;
                wrk_event(w, PYDP_EV_NEW, v->flow, now);
            }
            if (what & PYDP_VW_END)
                wrk_event(w, PYDP_EV_END, v->flow, now);
        }
    } else if (what & PYDP_VW_INSERT) {
        t->inserts++;
        s->flow_inserts++;
        s->flow_evictions += (what & PYDP_VW_EVICTED) ? 1 : 0;
        w->cstats[v->cluster].edges[slot].new_flows++;
        wrk_event(w, PYDP_EV_NEW, v->flow, now);
    }
    return slot;
}

/* Stage 1: parse. Frames that are not well-formed IP go to the exception path or are dropped here. Parsing a
 * whole burst before anything reads the results lets the parser's small stores retire first: reading a key back
 * as 8-byte words right after it was written byte by byte would stall on store forwarding. */
static inline int wrk_parse(struct dp_worker *w, uint32_t pi, struct rte_mbuf *m, struct wrk_pkt *p)
{
    struct pydp_port_stats *ps = &w->stats->port[pi];
    const uint8_t *frame = rte_pktmbuf_mtod(m, const uint8_t *);
    int cls;

    if (unlikely(rte_pktmbuf_data_len(m) >= RTE_ETHER_HDR_LEN &&
                 memcmp(frame + 6, dp.ports[pi].mac.addr_bytes, RTE_ETHER_ADDR_LEN) == 0)) {
        dp_drop(ps, m, PYDP_DROP_LOOP);
        return 0;
    }
    cls = pydp_parse(frame, rte_pktmbuf_data_len(m), &p->info);
    if (unlikely(cls == PYDP_CLS_MALFORMED)) {
        dp_drop(ps, m, PYDP_DROP_MALFORMED);
        return 0;
    }
    /* exception frames stay in the burst so the exception path keeps the order they arrived in */
    p->exc = cls != PYDP_CLS_IP;
    p->m = m;
    return 1;
}

/* Stage 2: the cluster IP, enabled, ownership, the flow hash (pydp_verdict_classify), and a prefetch of the
 * flow-table bucket. Returns 1 when the packet goes on to the next stages. */
static inline int wrk_classify(struct dp_worker *w, struct wrk_tally *t, uint32_t pi, struct wrk_pkt *p)
{
    struct pydp_port_stats *ps = &w->stats->port[pi];
    __m128i dst;
    int ci;

    if (unlikely(p->exc)) {
        dp_exc_send(w, pi, p->m, pydp_exc_class(&p->info));
        return 0;
    }
    /* the cluster IP: most packets of a pass go to the previous packet's */
    dst = _mm_loadu_si128((const __m128i *)(const void *)p->info.dst);
    if (likely(p->info.family == t->vip_family &&
               _mm_movemask_epi8(_mm_cmpeq_epi8(dst, t->vip_dst)) == 0xffff)) {
        ci = t->vip_ci;
    } else {
        ci = pydp_config_lookup_vip(w->cfg, p->info.family, p->info.dst);
        t->vip_family = p->info.family;
        t->vip_dst = dst;
        t->vip_ci = ci;
    }
    switch (pydp_verdict_classify_at(w->cfg, ci, &p->info, &p->v)) {
    case PYDP_ACT_FORWARD:
        break;
    case PYDP_ACT_EXCEPTION:
        dp_exc_send(w, pi, p->m, pydp_exc_class(&p->info));
        return 0;
    case PYDP_ACT_DROP_DISABLED:
        w->cstats[p->v.cluster].drop_disabled++;
        dp_drop(ps, p->m, PYDP_DROP_DISABLED);
        return 0;
    default:
        w->cstats[p->v.cluster].drop_not_active++;
        dp_drop(ps, p->m, PYDP_DROP_NOT_ACTIVE);
        return 0;
    }
    if (unlikely(wrk_class_of(&p->info) != t->cls)) {
        if (t->cls_run != 0)
            wrk_count_class(w->stats, t->cls, t->cls_run);
        t->cls = wrk_class_of(&p->info);
        t->cls_run = 0;
    }
    t->cls_run++;
    pydp_flow_prefetch_bucket(w->flows, p->v.hash);
    return 1;
}

/* Stage 4: flow table, Maglev, rewrite, TX. */
static inline void wrk_forward(struct dp_worker *w, struct wrk_tally *t, uint32_t pi, struct wrk_pkt *p,
                               uint32_t now)
{
    struct pydp_port_stats *ps = &w->stats->port[pi];
    const struct pydp_config *cfg = w->cfg;
    const struct pydp_cluster *c = &cfg->clusters[p->v.cluster];
    struct pydp_cluster_stats *cs = &w->cstats[p->v.cluster];
    struct rte_mbuf *m = p->m;
    const struct pydp_edge *e;
    uint32_t slot, len;

    slot = wrk_choose_edge(w, t, p, now);
    if (unlikely(slot == PYDP_MAGLEV_NONE)) {
        cs->drop_no_edge++;
        dp_drop(ps, m, PYDP_DROP_NO_EDGE);
        return;
    }
    e = &c->edges[slot];
    if (c->dsr_mode == PYDP_DSR_L2) {
        pydp_dsr_l2(rte_pktmbuf_mtod(m, uint8_t *), e->mac, dp.ports[pi].mac.addr_bytes);
    } else {
        uint8_t family = p->info.family;
        uint32_t olen = family == PYDP_AF_INET ? 20 : 40;
        uint32_t want = (uint32_t)p->info.l3_off + p->info.l3_len;
        uint8_t src[16];
        uint8_t *out;

        if (unlikely(e->family != family)) {
            dp_drop(ps, m, PYDP_DROP_FAMILY);
            return;
        }
        if (rte_pktmbuf_pkt_len(m) > want)       /* Ethernet padding must not enter the tunnel */
            rte_pktmbuf_trim(m, (uint16_t)(rte_pktmbuf_pkt_len(m) - want));
        out = (uint8_t *)rte_pktmbuf_prepend(m, (uint16_t)olen);
        if (unlikely(out == NULL)) {
            dp_drop(ps, m, PYDP_DROP_NO_HEADROOM);
            return;
        }
        pydp_ipip_source(cfg, family, p->v.hash, src);
        pydp_dsr_encap(out, family, src, e->addr, p->info.l3_len, cfg->gateway_mac, dp.ports[pi].mac.addr_bytes);
    }
    len = rte_pktmbuf_pkt_len(m);
    if (likely(p->v.cluster == t->cl)) {
        t->cl_packets++;
        t->cl_bytes += len;
    } else {
        cs->packets++;
        cs->bytes += len;
    }
    cs->edges[slot].packets++;
    cs->edges[slot].bytes += len;
    dp_txq_put_len(&w->tx[pi], m, len, dp.p.burst);
}

/* One received burst through the pipeline: parse; classify, hash and prefetch buckets; prefetch the matching
 * flows; forward. The flow table is far larger than the caches: overlapping the misses of a whole burst is what
 * keeps a table of millions of flows from costing two memory round trips per packet. */
static void wrk_burst(struct dp_worker *w, uint32_t pi, struct rte_mbuf **pkts, uint16_t n, uint32_t now)
{
    struct wrk_pkt v[WRK_STAGE];
    struct wrk_tally t = { .cl = UINT16_MAX, .vip_family = 0xff, .cls = UINT32_MAX };
    uint32_t i, nv = 0, nk = 0;

    for (i = 0; i < n && i < WRK_PREFETCH_AHEAD; i++)
        rte_prefetch0(rte_pktmbuf_mtod(pkts[i], void *));
    for (i = 0; i < n; i++) {
        if (i + WRK_PREFETCH_AHEAD < n)
            rte_prefetch0(rte_pktmbuf_mtod(pkts[i + WRK_PREFETCH_AHEAD], void *));
        t.rx_bytes += rte_pktmbuf_pkt_len(pkts[i]);
        nv += (uint32_t)wrk_parse(w, pi, pkts[i], &v[nv]);
    }
    w->stats->port[pi].rx_bytes += t.rx_bytes;
    for (i = 0; i < nv; i++) {
        if (wrk_classify(w, &t, pi, &v[i])) {
            if (nk != i)
                v[nk] = v[i];
            nk++;
        }
    }
    if (t.cls_run != 0)
        wrk_count_class(w->stats, t.cls, t.cls_run);
    if (nk == 0)
        return;
    t.cl = v[0].v.cluster;
    /* only TCP packets can change a flow's state (and read its record): the others skip the stage */
    for (i = 0; i < nk && i < WRK_WAYS_AHEAD; i++)
        if (v[i].info.key.proto == IPPROTO_TCP)
            pydp_flow_prefetch_record(w->flows, v[i].v.hash, v[i].v.sig, IPPROTO_TCP, v[i].info.tcp_flags);
    for (i = 0; i < nk; i++) {
        if (i + WRK_WAYS_AHEAD < nk && v[i + WRK_WAYS_AHEAD].info.key.proto == IPPROTO_TCP) {
            const struct wrk_pkt *a = &v[i + WRK_WAYS_AHEAD];

            pydp_flow_prefetch_record(w->flows, a->v.hash, a->v.sig, IPPROTO_TCP, a->info.tcp_flags);
        }
        wrk_forward(w, &t, pi, &v[i], now);
    }
    if (t.inserts != 0)
        pydp_flow_fence();  /* new flows' records (non-temporal stores) before anything else of this burst */
    w->stats->flow_lookups += nk;           /* every packet that reached the flow table */
    w->stats->flow_hits += t.hits;
    w->cstats[t.cl].packets += t.cl_packets;
    w->cstats[t.cl].bytes += t.cl_bytes;
}

static void wrk_run_cmds(struct dp_worker *w)
{
    struct pydp_cmd_ring *r = w->cmds;
    uint32_t tail = r->tail;
    uint32_t head = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
    uint32_t n = 0;

    while (tail != head && n < WRK_CMDS_PER_LOOP) {
        const struct pydp_cmd *cmd = &r->cmds[tail & (PYDP_CMD_RING_SIZE - 1)];
        uint64_t cleared = 0;

        switch (cmd->op) {
        case PYDP_CMD_FLUSH_ALL:
            cleared = pydp_flow_flush(w->flows, -1, -1);
            break;
        case PYDP_CMD_FLUSH_CLUSTER:
            cleared = pydp_flow_flush(w->flows, (int)cmd->arg0, -1);
            break;
        case PYDP_CMD_FLUSH_EDGE:
            cleared = pydp_flow_flush(w->flows, (int)cmd->arg0, (int)cmd->arg1);
            break;
        case PYDP_CMD_INSERT: {
            int evicted = 0;

            /* flow sync: a flow of the peer, pinned to its edge (invalid ones are refused by install) */
            if (pydp_flow_install(w->flows, &cmd->flow, cmd->arg0, wrk_now_ms(), w->cfg, &evicted) != NULL) {
                w->stats->flow_installs++;
                w->stats->flow_evictions += (uint64_t)evicted;
            }
            break;
        }
        default:
            break;
        }
        w->stats->flow_flushed += cleared;
        tail++;
        n++;
    }
    w->stats->cmds += n;
    __atomic_store_n(&r->tail, tail, __ATOMIC_RELEASE);
}

/* The loop. stop_after_idle > 0 (pcap mode): return after that many consecutive empty polls. */
int dp_worker_loop(struct dp_worker *w, uint32_t stop_after_idle)
{
    struct rte_mbuf *pkts[DP_MAX_BURST];
    const uint32_t burst = dp.p.burst;
    const uint32_t nb_ports = dp.p.nb_ports;
    /* the back-off ceiling: idle_sleep_max_us, and idle_sleep_deep_us once nothing came for
     * PYDP_IDLE_DEEP_AFTER_MS (an idle data plane then wakes less often, a burst after a short pause still finds
     * it at the short ceiling) */
    const uint64_t shallow_us = dp.p.idle_sleep_max_us ? dp.p.idle_sleep_max_us : 1;
    const uint64_t deep_us = dp.p.idle_sleep_deep_us > shallow_us ? dp.p.idle_sleep_deep_us : shallow_us;
    const uint64_t deep_after = dp.tsc_per_ms * PYDP_IDLE_DEEP_AFTER_MS;
    uint64_t sleep_us = 0, start, last_busy;
    uint32_t idle = 0;
    int was_busy = 0;

    /* online, and behind every generation until the first quiescent point */
    __atomic_store_n(&w->state->seen_gen, 0, __ATOMIC_SEQ_CST);
    w->state->lcore = w->lcore;
    w->state->online = 1;
    start = rte_rdtsc();
    last_busy = start;
    w->last_drain = start;
    while (likely(!dp.quit)) {
        /* One TSC read per iteration: it ends the previous iteration (busy_cycles) and starts this one. In some
         * VMs rdtsc costs 100+ cycles; three reads per iteration were a measurable share of the fast path. */
        uint64_t tsc = rte_rdtsc();
        uint32_t now = wrk_tsc_ms(tsc);
        uint32_t got = 0, pi, i;

        if (was_busy)
            w->stats->busy_cycles += tsc - start;
        start = tsc;

        wrk_load_config(w, now);
        for (pi = 0; pi < nb_ports; pi++) {
            uint16_t n = rte_eth_rx_burst(dp.ports[pi].port_id, (uint16_t)w->id, pkts, (uint16_t)burst);
            struct pydp_port_stats *ps = &w->stats->port[pi];

            if (n == 0)
                continue;
            got += n;
            ps->rx_packets += n;            /* rx_bytes: counted by the pipeline */
            /* the pipeline runs over at most WRK_STAGE packets at a time: a larger burst amortises the poll,
             * a longer pipeline would only queue more prefetches than the memory system has room for */
            for (i = 0; i < n; i += WRK_STAGE)
                wrk_burst(w, pi, pkts + i, (uint16_t)RTE_MIN((uint32_t)n - i, WRK_STAGE), now);
        }
        if (w->id == 0 && dp_exc_poll(w) != 0)
            last_busy = tsc;            /* the kernel's frames (ARP, BGP) keep the back-off short too */
        if (unlikely(w->cmds->head != w->cmds->tail))
            wrk_run_cmds(w);

        /* drain: at once when the queues ran dry (latency), else on the timer */
        if (got < burst || start - w->last_drain > w->drain_tsc) {
            wrk_flush_all(w);
            w->last_drain = start;
        }
        __atomic_store_n(&w->state->seen_gen, w->gen, __ATOMIC_RELEASE);
        w->stats->polls++;
        if (w->state->heartbeat_ms != now) {   /* every iteration, busy or idle; a store once per ms at most */
            w->state->heartbeat_ms = now;
            pydp_flow_tick(w->flows, now);
        }
        was_busy = got != 0;
        if (got) {
            idle = 0;
            sleep_us = 0;
            last_busy = tsc;
            continue;
        }
        w->stats->idle_polls++;
        idle++;
        if (stop_after_idle && idle >= stop_after_idle)
            break;
        if (dp.p.busy_poll || idle < WRK_IDLE_SPIN) {
            rte_pause();
            continue;
        }
        /* exponential back-off up to the ceiling; the quiescent point above is already published */
        sleep_us = sleep_us ? sleep_us * 2 : 1;
        if (sleep_us > shallow_us)
            sleep_us = tsc - last_busy > deep_after ? RTE_MIN(sleep_us, deep_us) : shallow_us;
        w->stats->sleeps++;
        rte_delay_us_sleep((unsigned int)sleep_us);
    }
    wrk_flush_all(w);
    w->state->online = 0;
    __atomic_store_n(&w->state->seen_gen, UINT64_MAX, __ATOMIC_RELEASE);
    return 0;
}

int dp_worker_main(void *arg)
{
    return dp_worker_loop(arg, 0);
}
