/*
 * verdict.c - the per-packet verdict (see pydp_verdict.h): cluster IP, enabled, owned, IPSec fold, hash; then the
 * flow table, the pinned edge or Maglev. Plain C on memory: the worker inlines it (LTO), the unit tests and the
 * classify fuzzer call it as it is.
 */
#include <stdint.h>
#include <stddef.h>

#include "pydp.h"
#include "pydp_verdict.h"

int
pydp_verdict_classify(const struct pydp_config *cfg, struct pydp_pkt_info *info, struct pydp_verdict *v)
{
    return pydp_verdict_classify_at(cfg, pydp_config_lookup_vip(cfg, info->family, info->dst), info, v);
}

int
pydp_verdict_classify_at(const struct pydp_config *cfg, int ci, struct pydp_pkt_info *info, struct pydp_verdict *v)
{
    const struct pydp_cluster *c;

    v->flow = NULL;
    v->edge = PYDP_MAGLEV_NONE;
    v->what = 0;
    if (ci < 0) {
        v->cluster = 0;
        v->action = PYDP_ACT_EXCEPTION;
        return v->action;
    }
    c = &cfg->clusters[ci];
    v->cluster = (uint16_t)ci;
    if (__builtin_expect(!c->enabled, 0)) {
        v->action = PYDP_ACT_DROP_DISABLED;
        return v->action;
    }
    if (__builtin_expect(!c->owned, 0)) {
        v->action = PYDP_ACT_DROP_NOT_ACTIVE;
        return v->action;
    }
    if ((info->flags & PYDP_PF_IPSEC) && c->ipsec_local) {
        /* IKE, NAT-T, ESP and AH of one client land on one edge */
        info->key.sport = 0;
        info->key.dport = 0;
        info->key.proto = PYDP_VERDICT_ESP;
    }
    v->hash = pydp_flow_hash(&info->key, cfg->hash_seed);
    v->sig = pydp_flow_sig(&info->key);
    v->action = PYDP_ACT_FORWARD;
    return v->action;
}

/* An edge keeps its flows while up or draining. */
static inline int
vd_keeps_flows(const struct pydp_edge *e)
{
    return e->state == PYDP_EDGE_UP || e->state == PYDP_EDGE_DRAINING;
}

/* The pin in a flow's record still names this cluster and this edge of it (after the cluster's slot changed, or
 * for a flow pinned by the peer). */
static inline int
vd_record_pin_current(const struct pydp_cluster *c, uint16_t cluster, const struct pydp_flow *f)
{
    const struct pydp_edge *e = &c->edges[f->edge & (PYDP_MAX_EDGES - 1)];

    return f->cluster == cluster && f->cluster_uid == c->uid && e->uid == f->edge_uid && vd_keeps_flows(e);
}

/* flatten: the flow-table calls of a hit (flow.c, another unit; LTO sees them) are inlined into the worker's loop */
__attribute__((flatten)) uint32_t
pydp_verdict_pick(const struct pydp_config *cfg, const uint8_t *table, struct pydp_flow_table *t,
                  const struct pydp_pkt_info *info, uint32_t now_ms, struct pydp_verdict *v)
{
    const struct pydp_cluster *c = &cfg->clusters[v->cluster];
    struct pydp_flow_bucket *b;
    struct pydp_flow *f;
    uint32_t slot;
    int evicted = 0;
    int w, current;

    v->what = PYDP_VW_LOOKUP;
    w = pydp_flow_find(t, v->hash, v->sig, now_ms, cfg, &b);
    if (w >= 0) {
        f = &b->flows[w];
        slot = pydp_flow_edge_at(b, (unsigned)w);
        current = pydp_flow_pin_current(t, b, (unsigned)w, v->cluster);
        if (__builtin_expect(current && vd_keeps_flows(&c->edges[slot]), 1)) {
            /* the hot line alone: the pin was made or confirmed after the cluster's slot last changed */
        } else if (!current && f->edge == slot && vd_record_pin_current(c, v->cluster, f)) {
            pydp_flow_pin_confirmed(t, b, (unsigned)w);
        } else {
            /* a re-pin changes the stored flow: only for its own key */
            if (__builtin_expect(!pydp_flow_confirm(f, &info->key), 0)) {
                t->false_matches++;
                goto false_match;
            }
            slot = table[pydp_maglev_slot(v->hash, c->maglev_size)];
            if (__builtin_expect(slot == PYDP_MAGLEV_NONE, 0))
                goto no_edge;
            pydp_flow_pin(t, f, v->cluster, c->uid, (uint8_t)slot, c->edges[slot].uid);
            v->what |= PYDP_VW_REHASHED;
        }
        if (!(info->flags & PYDP_PF_ICMP_ERROR)) {
            int r = pydp_flow_hit_at(t, b, (unsigned)w, &info->key, info->tcp_flags, now_ms);

            if (__builtin_expect(r != 0, 0)) {
                if (r < 0)
                    goto false_match;
                if (pydp_flow_state_at(b, (unsigned)w) == PYDP_FLOW_TCP_FIN)
                    v->what |= PYDP_VW_END;
            }
        }
        v->what |= PYDP_VW_HIT;
        v->flow = f;
        v->edge = (uint8_t)slot;
        v->action = PYDP_ACT_FORWARD;
        return slot;
    }
    slot = table[pydp_maglev_slot(v->hash, c->maglev_size)];
    if (__builtin_expect(slot == PYDP_MAGLEV_NONE, 0))
        goto no_edge;
    v->edge = (uint8_t)slot;
    v->action = PYDP_ACT_FORWARD;
    /* Fragments hash on addresses only and ICMP errors belong to a flow: neither opens one. */
    if (info->flags & (PYDP_PF_FRAGMENT | PYDP_PF_ICMP_ERROR))
        return slot;
    f = pydp_flow_open(t, &info->key, v->hash, v->sig, now_ms, cfg, v->cluster, c->uid, (uint8_t)slot,
                       c->edges[slot].uid, info->tcp_flags, &evicted);
    v->flow = f;
    v->what |= PYDP_VW_INSERT | (evicted ? PYDP_VW_EVICTED : 0);
    return slot;

false_match:
    /* the packet's own flow is not stored and cannot be (its signature is taken): Maglev, no flow */
    v->what = PYDP_VW_LOOKUP | PYDP_VW_FALSE;
    v->flow = NULL;
    slot = table[pydp_maglev_slot(v->hash, c->maglev_size)];
    if (__builtin_expect(slot == PYDP_MAGLEV_NONE, 0))
        goto no_edge;
    v->edge = (uint8_t)slot;
    v->action = PYDP_ACT_FORWARD;
    return slot;

no_edge:
    v->edge = PYDP_MAGLEV_NONE;
    v->action = PYDP_ACT_DROP_NO_EDGE;
    return PYDP_MAGLEV_NONE;
}

int
pydp_verdict(const struct pydp_config *cfg, const uint8_t *maglev, uint32_t maglev_max, struct pydp_flow_table *t,
             struct pydp_pkt_info *info, uint32_t now_ms, struct pydp_verdict *v)
{
    if (pydp_verdict_classify(cfg, info, v) != PYDP_ACT_FORWARD)
        return v->action;
    pydp_verdict_pick(cfg, maglev + (uint64_t)v->cluster * maglev_max, t, info, now_ms, v);
    return v->action;
}
