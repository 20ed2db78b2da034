/*
 * pydp_verdict.h - the per-packet verdict of the fast path, on plain memory (no DPDK): which cluster a parsed
 * packet belongs to, whether it is forwarded, and to which edge. The worker (worker.c), the C unit tests
 * (native/tests/test_verdict.c) and the classify fuzzer (native/tests/fuzz_classify.c) all run this code; the
 * worker only counts, emits flow events and transmits what it returns.
 *
 * It is one function, pydp_verdict(), made of two stages the worker calls apart so that a burst's flow-table
 * buckets can be prefetched between them:
 *
 *   pydp_verdict_classify   cluster-IP lookup, enabled, owned, IPSec fold of the key, flow hash
 *   pydp_verdict_pick       flow lookup on the signature (the hot line only); the pinned edge while usable, else
 *                           Maglev (a re-hash, after confirming the key); a new flow unless the packet is a
 *                           fragment or an ICMP error; time, count and state of the flow
 *
 * Not part of the shared-memory layout and not seen by cffi.
 */
#ifndef PYDP_VERDICT_H
#define PYDP_VERDICT_H

#include "pydp.h"

/* What becomes of the packet (struct pydp_verdict.action). */
enum pydp_action {
    PYDP_ACT_FORWARD = 0,        /* to edge slot v.edge of cluster v.cluster */
    PYDP_ACT_EXCEPTION = 1,      /* not a cluster IP: the exception path (the kernel) */
    PYDP_ACT_DROP_DISABLED = 2,  /* the cluster is disabled */
    PYDP_ACT_DROP_NOT_ACTIVE = 3,/* the cluster IP is owned by the peer (CARP backup) */
    PYDP_ACT_DROP_NO_EDGE = 4    /* no edge up in the cluster */
};

/* What happened in the flow table (struct pydp_verdict.what, bits). */
#define PYDP_VW_LOOKUP    0x01   /* the flow table was searched */
#define PYDP_VW_HIT       0x02   /* the flow was found */
#define PYDP_VW_INSERT    0x04   /* a new flow was opened (a flow event NEW and a new_flows count are due) */
#define PYDP_VW_EVICTED   0x08   /* ... pushing a live flow out of a full bucket */
#define PYDP_VW_REHASHED  0x10   /* the flow's pinned edge was unusable: re-pinned by Maglev (event NEW due) */
#define PYDP_VW_END       0x20   /* a TCP flow saw its first FIN or RST (event END due) */
#define PYDP_VW_FALSE     0x40   /* the signature matched another flow (its key differed when a change needed it):
                                  * the packet went by Maglev and the stored flow was left alone */

struct pydp_verdict {
    struct pydp_flow *flow;      /* the flow of the packet when PYDP_VW_HIT or PYDP_VW_INSERT, else NULL */
    uint32_t hash;               /* flow hash of the (possibly folded) key; valid from classify on */
    uint32_t sig;                /* its signature (pydp_flow_sig) */
    uint16_t cluster;            /* cluster index (valid unless action is EXCEPTION) */
    uint8_t  edge;               /* edge slot, PYDP_MAGLEV_NONE when none */
    uint8_t  action;             /* enum pydp_action */
    uint8_t  what;               /* PYDP_VW_* */
};

#define PYDP_VERDICT_ESP 50      /* the protocol an IPSec-folded key carries */

/* Stage 1. info->key is folded in place for IPSec local termination (the hashed key). Returns v->action:
 * FORWARD means "go on to pydp_verdict_pick" (v->cluster and v->hash set). */
int pydp_verdict_classify(const struct pydp_config *cfg, struct pydp_pkt_info *info, struct pydp_verdict *v);
/* The same with the cluster-IP lookup done by the caller: ci = pydp_config_lookup_vip(cfg, info->family, info->dst)
 * (the worker reuses the previous packet's when the destination is the same). */
int pydp_verdict_classify_at(const struct pydp_config *cfg, int ci, struct pydp_pkt_info *info,
                             struct pydp_verdict *v);

/* Stage 2, for a packet classify passed. table is the cluster's Maglev table (maglev_max slots). Returns the edge
 * slot (also v->edge), or PYDP_MAGLEV_NONE with v->action = PYDP_ACT_DROP_NO_EDGE. */
uint32_t pydp_verdict_pick(const struct pydp_config *cfg, const uint8_t *table, struct pydp_flow_table *t,
                           const struct pydp_pkt_info *info, uint32_t now_ms, struct pydp_verdict *v);

/* Both stages: maglev is the base of the config slot's tables ([cluster][maglev_max]). Returns v->action. */
int pydp_verdict(const struct pydp_config *cfg, const uint8_t *maglev, uint32_t maglev_max,
                 struct pydp_flow_table *t, struct pydp_pkt_info *info, uint32_t now_ms, struct pydp_verdict *v);

#endif
