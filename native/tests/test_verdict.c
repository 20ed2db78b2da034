/* test_verdict.c - unit tests of the per-packet verdict (verdict.c) on a real region (/dev/shm, removed at exit):
 * cluster IP, enabled, owned, IPSec fold, flow hit/insert/eviction, the pinned edge, re-hash when it becomes
 * unusable, fragments and ICMP errors, FIN events, no edge up. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pydp.h"
#include "pydp_verdict.h"
#include "check.h"

#define TV_MAGLEV 251
#define TV_FLOWS 64                 /* 8 buckets of 8 ways: the smallest table */

#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_ACK 0x10

static struct pydp_shm tv_shm;
static char tv_path[128];
static uint32_t tv_now = 5000;
static uint16_t tv_edge_uids[3] = { 10, 11, 12 };     /* the uids tv_publish gives cluster 0's edges */

static void
tv_ip4(uint8_t *out, uint8_t a, uint8_t b, uint8_t c, uint8_t d)
{
    memset(out, 0, 16);
    out[0] = a;
    out[1] = b;
    out[2] = c;
    out[3] = d;
}

static void
tv_edge(struct pydp_cluster *c, uint32_t slot, uint8_t state, uint16_t uid)
{
    struct pydp_edge *e = &c->edges[slot];

    memset(e, 0, sizeof(*e));
    snprintf(e->name, sizeof(e->name), "e%u", slot + 1);
    e->family = PYDP_AF_INET;
    tv_ip4(e->addr, 198, 51, 100, (uint8_t)(20 + slot));
    e->mac[0] = 0x02;
    e->mac[5] = (uint8_t)slot;
    e->state = state;
    e->weight = 1;
    e->uid = uid;
}

/* Publishes: cluster 0 "web" 198.51.100.10 with edges 0..2 (states given), owned and enabled as given, IPSec local
 * termination on; cluster 1 "dead" 198.51.100.11 with its only edge down. */
static const struct pydp_config *
tv_publish(const uint8_t states[3], uint8_t enabled, uint8_t owned, uint16_t cluster_uid)
{
    char err[PYDP_ERR_LEN];
    struct pydp_config *slot = pydp_config_begin(&tv_shm, 1000, err);
    struct pydp_cluster *c;
    uint32_t i;

    if (slot == NULL) {
        fprintf(stderr, "config_begin: %s\n", err);
        exit(2);
    }
    c = &slot->clusters[0];
    memset(c, 0, sizeof(*c));
    snprintf(c->name, sizeof(c->name), "web");
    c->family = PYDP_AF_INET;
    tv_ip4(c->vip, 198, 51, 100, 10);
    c->enabled = enabled;
    c->owned = owned;
    c->ipsec_local = 1;
    c->uid = cluster_uid;
    c->maglev_size = TV_MAGLEV;
    for (i = 0; i < 3; i++)
        tv_edge(c, i, states[i], tv_edge_uids[i]);
    c = &slot->clusters[1];
    memset(c, 0, sizeof(*c));
    snprintf(c->name, sizeof(c->name), "dead");
    c->family = PYDP_AF_INET;
    tv_ip4(c->vip, 198, 51, 100, 11);
    c->enabled = 1;
    c->owned = 1;
    c->uid = 7;
    c->maglev_size = TV_MAGLEV;
    tv_edge(c, 0, PYDP_EDGE_DOWN, 20);
    slot->nb_clusters = 2;
    for (i = 0; i < 2; i++) {
        if (pydp_config_rebuild(&tv_shm, slot, i, err) != 0) {
            fprintf(stderr, "config_rebuild: %s\n", err);
            exit(2);
        }
    }
    if (pydp_config_publish(&tv_shm, slot, err) != 0) {
        fprintf(stderr, "config_publish: %s\n", err);
        exit(2);
    }
    /* as the worker does when it picks up a new config: a millisecond later, the flow table learns what changed */
    tv_now++;
    pydp_flow_config(pydp_shm_flows(&tv_shm, 0), pydp_shm_config(&tv_shm, (uint32_t)(tv_shm.hdr->generation & 1)),
                     tv_now);
    return pydp_shm_config(&tv_shm, (uint32_t)(tv_shm.hdr->generation & 1));
}

static const uint8_t *
tv_maglev(void)
{
    return pydp_shm_maglev(&tv_shm, (uint32_t)(tv_shm.hdr->generation & 1), 0);
}

static struct pydp_pkt_info
tv_pkt(uint8_t vip_last, uint32_t client, uint16_t sport, uint8_t proto, uint8_t flags, uint8_t tcp_flags)
{
    struct pydp_pkt_info info;

    memset(&info, 0, sizeof(info));
    info.family = PYDP_AF_INET;
    info.klass = PYDP_CLS_IP;
    tv_ip4(info.dst, 198, 51, 100, vip_last);
    info.key.family = PYDP_AF_INET;
    tv_ip4(info.key.src, 203, (uint8_t)(client >> 16), (uint8_t)(client >> 8), (uint8_t)client);
    memcpy(info.key.dst, info.dst, 16);
    info.key.sport = sport;
    info.key.dport = 80;
    info.key.proto = proto;
    info.flags = flags;
    info.tcp_flags = tcp_flags;
    info.l4_proto = proto;
    return info;
}

static int
tv_run(const struct pydp_config *cfg, struct pydp_pkt_info info, struct pydp_verdict *v)
{
    return pydp_verdict(cfg, pydp_shm_maglev(&tv_shm, (uint32_t)(tv_shm.hdr->generation & 1), 0),
                        tv_shm.hdr->maglev_max, pydp_shm_flows(&tv_shm, 0), &info, tv_now, v);
}

static void
test_classify(void)
{
    static const uint8_t up3[3] = { PYDP_EDGE_UP, PYDP_EDGE_UP, PYDP_EDGE_UP };
    struct pydp_flow_table *t = pydp_shm_flows(&tv_shm, 0);
    const struct pydp_config *cfg;
    struct pydp_verdict v;

    pydp_flow_table_init(t, TV_FLOWS);
    cfg = tv_publish(up3, 1, 1, 1);
    CHECK_EQ(tv_run(cfg, tv_pkt(99, 1, 1000, 17, 0, 0), &v), PYDP_ACT_EXCEPTION);
    CHECK_EQ(v.what, 0);

    cfg = tv_publish(up3, 0, 1, 1);
    CHECK_EQ(tv_run(cfg, tv_pkt(10, 1, 1000, 17, 0, 0), &v), PYDP_ACT_DROP_DISABLED);
    CHECK_EQ(v.cluster, 0);
    CHECK_EQ(t->live, 0);

    /* a cluster the appliance does not own is never forwarded, and opens no flow */
    cfg = tv_publish(up3, 1, 0, 1);
    CHECK_EQ(tv_run(cfg, tv_pkt(10, 1, 1000, 17, 0, 0), &v), PYDP_ACT_DROP_NOT_ACTIVE);
    CHECK_EQ(v.what, 0);
    CHECK_EQ(t->live, 0);

    cfg = tv_publish(up3, 1, 1, 1);
    CHECK_EQ(tv_run(cfg, tv_pkt(10, 1, 1000, 17, 0, 0), &v), PYDP_ACT_FORWARD);
    CHECK_EQ(v.what, PYDP_VW_LOOKUP | PYDP_VW_INSERT);
    CHECK_EQ(t->live, 1);

    /* the only edge of cluster 1 is down */
    CHECK_EQ(tv_run(cfg, tv_pkt(11, 1, 1000, 17, 0, 0), &v), PYDP_ACT_DROP_NO_EDGE);
    CHECK_EQ(v.cluster, 1);
    CHECK_EQ(v.edge, PYDP_MAGLEV_NONE);
    CHECK_EQ(t->live, 1);
}

static void
test_hit_and_rehash(void)
{
    static const uint8_t up3[3] = { PYDP_EDGE_UP, PYDP_EDGE_UP, PYDP_EDGE_UP };
    struct pydp_flow_table *t = pydp_shm_flows(&tv_shm, 0);
    const struct pydp_config *cfg;
    struct pydp_verdict v, v2;
    uint8_t states[3];
    struct pydp_pkt_info p = tv_pkt(10, 2, 2000, 17, 0, 0);
    uint32_t first, again;

    pydp_flow_table_init(t, TV_FLOWS);
    cfg = tv_publish(up3, 1, 1, 1);
    CHECK_EQ(tv_run(cfg, p, &v), PYDP_ACT_FORWARD);
    first = v.edge;
    CHECK(first < 3);
    CHECK_EQ(first, tv_maglev()[pydp_maglev_slot(v.hash, TV_MAGLEV)]);
    CHECK(v.flow != NULL);
    CHECK_EQ(v.flow->edge, first);
    CHECK_EQ(v.flow->edge_uid, 10 + first);
    CHECK_EQ(v.flow->cluster_uid, 1);
    CHECK_EQ(v.flow->state, PYDP_FLOW_UDP);
    CHECK_EQ(pydp_flow_packets(t, v.flow), 1);

    CHECK_EQ(tv_run(cfg, p, &v2), PYDP_ACT_FORWARD);
    CHECK_EQ(v2.what, PYDP_VW_LOOKUP | PYDP_VW_HIT);
    CHECK_EQ(v2.edge, first);
    CHECK(v2.flow == v.flow);
    CHECK_EQ(pydp_flow_packets(t, v2.flow), 2);

    /* draining: the flow stays */
    memcpy(states, up3, 3);
    states[first] = PYDP_EDGE_DRAINING;
    cfg = tv_publish(states, 1, 1, 1);
    CHECK_EQ(tv_run(cfg, p, &v2), PYDP_ACT_FORWARD);
    CHECK_EQ(v2.what, PYDP_VW_LOOKUP | PYDP_VW_HIT);
    CHECK_EQ(v2.edge, first);

    /* down: re-hashed by Maglev onto an edge that is up, and re-pinned there */
    states[first] = PYDP_EDGE_DOWN;
    cfg = tv_publish(states, 1, 1, 1);
    CHECK_EQ(tv_run(cfg, p, &v2), PYDP_ACT_FORWARD);
    CHECK_EQ(v2.what, PYDP_VW_LOOKUP | PYDP_VW_HIT | PYDP_VW_REHASHED);
    again = v2.edge;
    CHECK(again != first && again < 3);
    CHECK_EQ(v2.flow->edge, again);
    CHECK_EQ(v2.flow->edge_uid, 10 + again);
    CHECK_EQ(tv_run(cfg, p, &v2), PYDP_ACT_FORWARD);
    CHECK_EQ(v2.what, PYDP_VW_LOOKUP | PYDP_VW_HIT);
    CHECK_EQ(v2.edge, again);

    /* the first edge back up: the flow stays where it was moved */
    cfg = tv_publish(up3, 1, 1, 1);
    CHECK_EQ(tv_run(cfg, p, &v2), PYDP_ACT_FORWARD);
    CHECK_EQ(v2.edge, again);

    /* the slot given to another cluster (new uid): re-pinned */
    cfg = tv_publish(up3, 1, 1, 2);
    CHECK_EQ(tv_run(cfg, p, &v2), PYDP_ACT_FORWARD);
    CHECK_EQ(v2.what, PYDP_VW_LOOKUP | PYDP_VW_HIT | PYDP_VW_REHASHED);
    CHECK_EQ(v2.flow->cluster_uid, 2);
    CHECK_EQ(t->live, 1);
}

static void
test_fragment_icmp_error(void)
{
    static const uint8_t up3[3] = { PYDP_EDGE_UP, PYDP_EDGE_UP, PYDP_EDGE_UP };
    struct pydp_flow_table *t = pydp_shm_flows(&tv_shm, 0);
    const struct pydp_config *cfg = tv_publish(up3, 1, 1, 1);
    struct pydp_pkt_info p = tv_pkt(10, 3, 3000, 6, 0, TH_ACK);
    struct pydp_pkt_info frag = tv_pkt(10, 3, 0, 6, PYDP_PF_FRAGMENT, 0);
    struct pydp_pkt_info err = tv_pkt(10, 3, 3000, 6, PYDP_PF_ICMP_ERROR, 0);
    struct pydp_verdict v, ve;

    pydp_flow_table_init(t, TV_FLOWS);
    /* neither a fragment nor an ICMP error opens a flow */
    CHECK_EQ(tv_run(cfg, frag, &v), PYDP_ACT_FORWARD);
    CHECK_EQ(v.what, PYDP_VW_LOOKUP);
    CHECK(v.flow == NULL);
    CHECK_EQ(v.edge, tv_maglev()[pydp_maglev_slot(v.hash, TV_MAGLEV)]);
    CHECK_EQ(tv_run(cfg, err, &ve), PYDP_ACT_FORWARD);
    CHECK_EQ(ve.what, PYDP_VW_LOOKUP);
    CHECK_EQ(t->live, 0);

    /* an ICMP error of a known flow goes where the flow goes and does not touch it */
    CHECK_EQ(tv_run(cfg, p, &v), PYDP_ACT_FORWARD);
    CHECK_EQ(v.flow->state, PYDP_FLOW_TCP_EST);
    CHECK_EQ(tv_run(cfg, err, &ve), PYDP_ACT_FORWARD);
    CHECK_EQ(ve.what, PYDP_VW_LOOKUP | PYDP_VW_HIT);
    CHECK_EQ(ve.edge, v.edge);
    CHECK_EQ(pydp_flow_packets(t, ve.flow), 1);
}

static void
test_tcp_end_and_ipsec(void)
{
    static const uint8_t up3[3] = { PYDP_EDGE_UP, PYDP_EDGE_UP, PYDP_EDGE_UP };
    struct pydp_flow_table *t = pydp_shm_flows(&tv_shm, 0);
    const struct pydp_config *cfg = tv_publish(up3, 1, 1, 1);
    struct pydp_verdict v, ike, esp;

    pydp_flow_table_init(t, TV_FLOWS);
    CHECK_EQ(tv_run(cfg, tv_pkt(10, 4, 4000, 6, 0, TH_SYN), &v), PYDP_ACT_FORWARD);
    CHECK_EQ(v.flow->state, PYDP_FLOW_TCP_SYN);
    CHECK_EQ(tv_run(cfg, tv_pkt(10, 4, 4000, 6, 0, TH_ACK), &v), PYDP_ACT_FORWARD);
    CHECK_EQ(v.what, PYDP_VW_LOOKUP | PYDP_VW_HIT);
    CHECK_EQ(v.flow->state, PYDP_FLOW_TCP_EST);
    CHECK_EQ(tv_run(cfg, tv_pkt(10, 4, 4000, 6, 0, TH_FIN | TH_ACK), &v), PYDP_ACT_FORWARD);
    CHECK_EQ(v.what, PYDP_VW_LOOKUP | PYDP_VW_HIT | PYDP_VW_END);
    CHECK_EQ(tv_run(cfg, tv_pkt(10, 4, 4000, 6, 0, TH_FIN | TH_ACK), &v), PYDP_ACT_FORWARD);
    CHECK_EQ(v.what, PYDP_VW_LOOKUP | PYDP_VW_HIT);     /* the end is reported once */

    /* IPSec local termination: IKE (UDP 500) and ESP of one client are one flow on one edge */
    CHECK_EQ(tv_run(cfg, tv_pkt(10, 5, 500, 17, PYDP_PF_IPSEC, 0), &ike), PYDP_ACT_FORWARD);
    CHECK_EQ(ike.what, PYDP_VW_LOOKUP | PYDP_VW_INSERT);
    CHECK_EQ(ike.flow->key.proto, PYDP_VERDICT_ESP);
    CHECK_EQ(ike.flow->key.sport, 0);
    CHECK_EQ(tv_run(cfg, tv_pkt(10, 5, 0, 50, PYDP_PF_IPSEC, 0), &esp), PYDP_ACT_FORWARD);
    CHECK_EQ(esp.what, PYDP_VW_LOOKUP | PYDP_VW_HIT);
    CHECK(esp.flow == ike.flow);
    CHECK_EQ(esp.edge, ike.edge);
    CHECK_EQ(esp.hash, ike.hash);
}

static void
test_eviction(void)
{
    static const uint8_t up3[3] = { PYDP_EDGE_UP, PYDP_EDGE_UP, PYDP_EDGE_UP };
    struct pydp_flow_table *t = pydp_shm_flows(&tv_shm, 0);
    const struct pydp_config *cfg = tv_publish(up3, 1, 1, 1);
    struct pydp_verdict v;
    uint32_t i, ways, inserts = 0, evictions = 0;

    pydp_flow_table_init(t, TV_FLOWS);
    ways = t->nb_buckets * PYDP_FLOW_WAYS;
    /* twice as many live flows as ways: the later ones push earlier ones out, each insert says so */
    for (i = 0; i < 2 * ways; i++) {
        CHECK_EQ(tv_run(cfg, tv_pkt(10, 100 + i, (uint16_t)(5000 + i), 17, 0, 0), &v), PYDP_ACT_FORWARD);
        inserts += (v.what & PYDP_VW_INSERT) != 0;
        evictions += (v.what & PYDP_VW_EVICTED) != 0;
        CHECK(v.flow != NULL && v.flow->edge == v.edge);
    }
    CHECK_EQ(inserts, 2 * ways);
    CHECK_EQ(evictions, t->evicted);
    CHECK(evictions >= ways);
    CHECK_EQ(t->live, ways);
}

/* A hit is decided on the signature; a change of the stored flow needs its key. A stored flow whose key differs
 * from the packet's (what a false signature match is) keeps forwarding-only hits, but is never changed. */
static void
test_signature_hits(void)
{
    static const uint8_t up3[3] = { PYDP_EDGE_UP, PYDP_EDGE_UP, PYDP_EDGE_UP };
    struct pydp_flow_table *t = pydp_shm_flows(&tv_shm, 0);
    const struct pydp_config *cfg = tv_publish(up3, 1, 1, 1);
    struct pydp_verdict v, v2;
    uint8_t states[3];
    uint32_t i, n = 0;

    pydp_flow_table_init(t, TV_FLOWS);
    CHECK_EQ(tv_run(cfg, tv_pkt(10, 6, 6000, 6, 0, TH_ACK), &v), PYDP_ACT_FORWARD);
    CHECK_EQ(v.flow->state, PYDP_FLOW_TCP_EST);
    CHECK_EQ(pydp_flow_state(t, v.flow), PYDP_FLOW_TCP_EST);
    CHECK_EQ(pydp_flow_edge(t, v.flow), v.edge);
    CHECK_EQ(v.flow->sig, (v.sig | 1) & ~(uint32_t)PYDP_FLOW_SIG_SYN);
    v.flow->key.sport ^= 0x100;                     /* the stored key is now another flow's */
    CHECK_EQ(tv_run(cfg, tv_pkt(10, 6, 6000, 6, 0, TH_ACK), &v2), PYDP_ACT_FORWARD);
    CHECK_EQ(v2.what, PYDP_VW_LOOKUP | PYDP_VW_HIT);
    CHECK_EQ(v2.edge, v.edge);
    CHECK_EQ(tv_run(cfg, tv_pkt(10, 6, 6000, 6, 0, TH_FIN | TH_ACK), &v2), PYDP_ACT_FORWARD);
    CHECK_EQ(v2.what, PYDP_VW_LOOKUP | PYDP_VW_FALSE);
    CHECK(v2.flow == NULL);
    CHECK_EQ(v.flow->state, PYDP_FLOW_TCP_EST);     /* left alone */
    CHECK_EQ(t->false_matches, 1);
    CHECK_EQ(t->live, 1);
    /* its edge down: the re-pin is refused too */
    memcpy(states, up3, 3);
    states[v.edge] = PYDP_EDGE_DOWN;
    cfg = tv_publish(states, 1, 1, 1);
    CHECK_EQ(tv_run(cfg, tv_pkt(10, 6, 6000, 6, 0, TH_ACK), &v2), PYDP_ACT_FORWARD);
    CHECK_EQ(v2.what, PYDP_VW_LOOKUP | PYDP_VW_FALSE);
    CHECK(v2.edge != v.edge);
    CHECK_EQ(v.flow->edge, pydp_flow_edge(t, v.flow));
    CHECK_EQ(t->false_matches, 2);

    /* the hot packet counter folds into the cold record every PYDP_FLOW_PKTS_FOLD packets */
    cfg = tv_publish(up3, 1, 1, 1);
    pydp_flow_table_init(t, TV_FLOWS);
    for (i = 0; i < 3 * PYDP_FLOW_PKTS_FOLD + 5; i++) {
        CHECK_EQ(tv_run(cfg, tv_pkt(10, 7, 7000, 17, 0, 0), &v), PYDP_ACT_FORWARD);
        n++;
    }
    CHECK_EQ(pydp_flow_packets(t, v.flow), n);
    CHECK_EQ(v.flow->packets, 3 * PYDP_FLOW_PKTS_FOLD);
    {
        struct pydp_flow_bucket *b;
        int w = pydp_flow_find(t, v.hash, v.sig, tv_now, cfg, &b);

        CHECK(w >= 0 && &b->flows[w] == v.flow);
        if (w >= 0)
            CHECK_EQ(b->pkts[w], 5);            /* the rest is still in the hot line */
    }
}

/* One packet one millisecond later: a hit with these flags, on this edge, with this many pin checks so far. */
static void
tv_hit(const struct pydp_config *cfg, struct pydp_pkt_info p, uint8_t what, uint32_t edge, uint64_t checks)
{
    struct pydp_verdict v;

    tv_now++;
    CHECK_EQ(tv_run(cfg, p, &v), PYDP_ACT_FORWARD);
    CHECK_EQ(v.what, what);
    CHECK_EQ(v.edge, edge);
    CHECK_EQ(pydp_shm_flows(&tv_shm, 0)->pin_checks, checks);
}

/* A hit forwards on the hot line alone while its cluster's slot stays the same; after a change of the slot (an
 * edge's uid here) each flow last seen before it confirms its pin once against its record, and a flow from the
 * peer confirms its pin on its first hit. */
static void
test_pin_checks(void)
{
    static const uint8_t up3[3] = { PYDP_EDGE_UP, PYDP_EDGE_UP, PYDP_EDGE_UP };
    struct pydp_flow_table *t = pydp_shm_flows(&tv_shm, 0);
    const struct pydp_config *cfg;
    struct pydp_verdict v, v2;
    struct pydp_pkt_info p = tv_pkt(10, 7, 7000, 17, 0, 0);
    struct pydp_flow in;
    struct pydp_flow *f;
    uint8_t states[3];
    uint32_t first, other, peer, i;
    int ev;

    pydp_flow_table_init(t, TV_FLOWS);
    cfg = tv_publish(up3, 1, 1, 1);
    tv_now++;
    CHECK_EQ(tv_run(cfg, p, &v), PYDP_ACT_FORWARD);
    CHECK_EQ(v.what, PYDP_VW_LOOKUP | PYDP_VW_INSERT);
    first = v.edge;
    other = (first + 1) % 3;
    tv_hit(cfg, p, PYDP_VW_LOOKUP | PYDP_VW_HIT, first, 0);

    /* another edge draining changes no identity: still the hot line alone */
    memcpy(states, up3, 3);
    states[other] = PYDP_EDGE_DRAINING;
    cfg = tv_publish(states, 1, 1, 1);
    tv_hit(cfg, p, PYDP_VW_LOOKUP | PYDP_VW_HIT, first, 0);

    /* another slot's edge replaced (new uid): the flow confirms its pin once, then the hot line again */
    tv_edge_uids[other] = 99;
    cfg = tv_publish(up3, 1, 1, 1);
    for (i = 0; i < 3; i++)
        tv_hit(cfg, p, PYDP_VW_LOOKUP | PYDP_VW_HIT, first, 1);

    /* its own edge replaced: the record's pin no longer holds, Maglev re-pins it */
    tv_edge_uids[first] = 98;
    cfg = tv_publish(up3, 1, 1, 1);
    tv_now++;
    CHECK_EQ(tv_run(cfg, p, &v2), PYDP_ACT_FORWARD);
    CHECK_EQ(v2.what, PYDP_VW_LOOKUP | PYDP_VW_HIT | PYDP_VW_REHASHED);
    CHECK_EQ(v2.edge, tv_maglev()[pydp_maglev_slot(v2.hash, TV_MAGLEV)]);
    CHECK_EQ(v2.flow->edge_uid, tv_edge_uids[v2.edge]);
    CHECK_EQ(pydp_flow_edge(t, v2.flow), v2.edge);
    CHECK_EQ(t->pin_checks, 1);
    tv_hit(cfg, p, PYDP_VW_LOOKUP | PYDP_VW_HIT, v2.edge, 1);

    /* a flow from the peer, pinned to an edge Maglev would not pick: kept after one confirmation */
    p = tv_pkt(10, 8, 7100, 17, 0, 0);
    CHECK_EQ(pydp_verdict_classify(cfg, &p, &v), PYDP_ACT_FORWARD);
    peer = (tv_maglev()[pydp_maglev_slot(v.hash, TV_MAGLEV)] + 1) % 3;
    memset(&in, 0, sizeof(in));
    in.key = p.key;
    in.cluster = 0;
    in.cluster_uid = 1;
    in.edge = (uint8_t)peer;
    in.edge_uid = tv_edge_uids[peer];
    in.state = PYDP_FLOW_UDP;
    f = pydp_flow_install(t, &in, 0, tv_now, cfg, &ev);
    CHECK(f != NULL);
    CHECK_EQ(pydp_flow_edge(t, f), peer);
    CHECK(pydp_flow_state(t, f) == PYDP_FLOW_UDP);
    for (i = 0; i < 2; i++)
        tv_hit(cfg, p, PYDP_VW_LOOKUP | PYDP_VW_HIT, peer, 2);
    /* ... and one the peer pinned to an edge this appliance does not have (another uid): re-pinned */
    p = tv_pkt(10, 9, 7200, 17, 0, 0);
    in.key = p.key;
    in.edge_uid = 4242;
    CHECK(pydp_flow_install(t, &in, 0, tv_now, cfg, &ev) != NULL);
    tv_now++;
    CHECK_EQ(tv_run(cfg, p, &v2), PYDP_ACT_FORWARD);
    CHECK_EQ(v2.what, PYDP_VW_LOOKUP | PYDP_VW_HIT | PYDP_VW_REHASHED);
    CHECK_EQ(v2.flow->edge_uid, tv_edge_uids[v2.edge]);
    CHECK_EQ(t->pin_checks, 2);

    tv_edge_uids[0] = 10;
    tv_edge_uids[1] = 11;
    tv_edge_uids[2] = 12;
}

int
main(void)
{
    struct pydp_shm_params p = { .nb_workers = 1, .nb_ports = 1, .maglev_max = TV_MAGLEV, .flow_capacity = TV_FLOWS };
    char err[PYDP_ERR_LEN];

    snprintf(tv_path, sizeof(tv_path), "/dev/shm/pydp-test-verdict-%ld", (long)getpid());
    if (pydp_shm_create(&tv_shm, tv_path, &p, err) != 0) {
        fprintf(stderr, "region: %s\n", err);
        return 2;
    }
    unlink(tv_path);
    tv_shm.owner = 0;
    test_classify();
    test_hit_and_rehash();
    test_fragment_icmp_error();
    test_tcp_end_and_ipsec();
    test_eviction();
    test_signature_hits();
    test_pin_checks();
    pydp_shm_close(&tv_shm);
    return check_report("verdict");
}
