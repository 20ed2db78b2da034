/*
 * fuzz_classify.c - libFuzzer harness of the whole classify path, as a worker runs it on one port, without DPDK:
 * parse -> cluster-IP lookup in a published config -> flow hash -> flow-table lookup/insert -> Maglev -> DSR
 * rewrite (L2 or IP-in-IP) into a frame buffer with headroom.
 *
 * The config is a real region (pydp_shm_create in /dev/shm, unlinked at once) published with five clusters:
 * 198.51.100.10 (L2, three edges, one draining), 2001:db8::10 (IP-in-IP, an IPv6 and an IPv4 edge),
 * 198.51.100.11 (disabled), 203.0.113.10 (no edge up) and 198.51.100.12 (owned by the peer: never forwarded).
 * The verdict is the worker's own (pydp_verdict, native/src/verdict.c); this harness checks what it returns.
 * Every input starts from an empty flow table of 256 flows, so a crash reproduces from its input alone.
 *
 * Input: one byte of clock steps, then up to 32 frames, each a 2-byte big-endian length and that many bytes (the
 * last frame takes what is left). Besides the sanitizers, it aborts when an invariant of the worker breaks: a
 * new flow on an edge that is not up, a flow pinned outside its cluster, a cluster forwarded that is disabled or
 * owned by the peer, a verdict flow that is another flow, a rewrite that leaves the frame or
 * writes a wrong outer header.
 * The custom mutator (fuzz_mutator.h) knows this framing: it changes one field of one frame, adds the next packet
 * of a flow (other TCP flags), drops a frame or changes the clock; -DPYDP_FUZZ_RAW leaves libFuzzer's bytes only.
 *
 *   scripts/fuzz.sh classify           (builds with -fsanitize=fuzzer,address,undefined and runs it)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pydp.h"
#include "pydp_verdict.h"
#define FZM_CLASSIFY                    /* fuzz_mutator.h mutates one frame of the input, adds or removes one */
#include "fuzz_mutator.h"

#define FZ_MAGLEV 251           /* prime: small tables keep an iteration cheap */
#define FZ_FLOWS 256
#define FZ_HEADROOM 64
#define FZ_MAX_FRAME 9216       /* a jumbo mbuf: what a port can hand a worker */
#define FZ_MAX_FRAMES 32

static struct pydp_shm fz_shm;
static struct pydp_config *fz_cfg;
static struct pydp_flow_table *fz_flows;
static const uint8_t fz_port_mac[6] = { 0x02, 0, 0, 0, 0, 0x01 };
static const uint8_t fz_gw_mac[6] = { 0x02, 0, 0, 0, 0, 0xfe };

static void
fz_die(const char *what, const char *err)
{
    fprintf(stderr, "fuzz_classify setup: %s: %s\n", what, err);
    exit(2);
}

static void
fz_ip(uint8_t *out, uint8_t family, const char *text)
{
    unsigned a, b, c, d;

    memset(out, 0, 16);
    if (family == PYDP_AF_INET && sscanf(text, "%u.%u.%u.%u", &a, &b, &c, &d) == 4) {
        out[0] = (uint8_t)a;
        out[1] = (uint8_t)b;
        out[2] = (uint8_t)c;
        out[3] = (uint8_t)d;
        return;
    }
    /* IPv6: 2001:db8::<last byte> is all the harness needs */
    out[0] = 0x20;
    out[1] = 0x01;
    out[2] = 0x0d;
    out[3] = 0xb8;
    out[15] = (uint8_t)strtoul(text, NULL, 16);
}

static void
fz_edge(struct pydp_cluster *c, uint32_t slot, const char *name, uint8_t family, const char *addr, uint8_t state)
{
    struct pydp_edge *e = &c->edges[slot];

    memset(e, 0, sizeof(*e));
    snprintf(e->name, sizeof(e->name), "%s", name);
    e->family = family;
    fz_ip(e->addr, family, addr);
    e->mac[0] = 0x02;
    e->mac[5] = (uint8_t)(0x20 + slot);
    e->state = state;
    e->weight = 1;
    e->uid = (uint16_t)(slot + 1);
}

static void
fz_cluster(struct pydp_config *cfg, uint32_t ci, const char *name, uint8_t family, const char *vip,
           uint8_t dsr_mode, uint8_t enabled, uint8_t owned)
{
    struct pydp_cluster *c = &cfg->clusters[ci];

    memset(c, 0, sizeof(*c));
    snprintf(c->name, sizeof(c->name), "%s", name);
    c->family = family;
    fz_ip(c->vip, family, vip);
    c->enabled = enabled;
    c->owned = owned;
    c->dsr_mode = dsr_mode;
    c->ipsec_local = ci == 0;
    c->uid = (uint16_t)(ci + 1);
    c->maglev_size = FZ_MAGLEV;
    if (cfg->nb_clusters < ci + 1)
        cfg->nb_clusters = ci + 1;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    struct pydp_shm_params p = { .nb_workers = 1, .nb_ports = 1, .maglev_max = FZ_MAGLEV,
                                 .flow_capacity = FZ_FLOWS };
    char err[PYDP_ERR_LEN], path[128];
    struct pydp_config *slot;
    uint32_t ci;

    snprintf(path, sizeof(path), "/dev/shm/pydp-fuzz-classify-%ld", (long)getpid());
    if (pydp_shm_create(&fz_shm, path, &p, err) != 0)
        fz_die("region", err);
    unlink(path);                   /* the mapping stays; nothing is left behind when the fuzzer dies */
    fz_shm.owner = 0;
    slot = pydp_config_begin(&fz_shm, 1000, err);
    if (slot == NULL)
        fz_die("config_begin", err);
    fz_cluster(slot, 0, "web", PYDP_AF_INET, "198.51.100.10", PYDP_DSR_L2, 1, 1);
    fz_edge(&slot->clusters[0], 0, "e1", PYDP_AF_INET, "198.51.100.21", PYDP_EDGE_UP);
    fz_edge(&slot->clusters[0], 1, "e2", PYDP_AF_INET, "198.51.100.22", PYDP_EDGE_UP);
    fz_edge(&slot->clusters[0], 3, "e4", PYDP_AF_INET, "198.51.100.24", PYDP_EDGE_DRAINING);
    fz_cluster(slot, 1, "web6", PYDP_AF_INET6, "10", PYDP_DSR_IPIP, 1, 1);
    fz_edge(&slot->clusters[1], 0, "e1", PYDP_AF_INET6, "21", PYDP_EDGE_UP);
    fz_edge(&slot->clusters[1], 2, "e3", PYDP_AF_INET, "198.51.100.23", PYDP_EDGE_UP);
    fz_cluster(slot, 2, "off", PYDP_AF_INET, "198.51.100.11", PYDP_DSR_L2, 0, 1);
    fz_edge(&slot->clusters[2], 0, "e1", PYDP_AF_INET, "198.51.100.21", PYDP_EDGE_UP);
    fz_cluster(slot, 3, "dead", PYDP_AF_INET, "203.0.113.10", PYDP_DSR_IPIP, 1, 1);
    fz_edge(&slot->clusters[3], 0, "e1", PYDP_AF_INET, "203.0.113.21", PYDP_EDGE_DOWN);
    fz_cluster(slot, 4, "backup", PYDP_AF_INET, "198.51.100.12", PYDP_DSR_L2, 1, 0);   /* the peer owns it */
    fz_edge(&slot->clusters[4], 0, "e1", PYDP_AF_INET, "198.51.100.21", PYDP_EDGE_UP);
    memcpy(slot->gateway_mac, fz_gw_mac, 6);
    fz_ip(slot->ipip_src4, PYDP_AF_INET, "192.0.2.0");
    slot->ipip_src4_bits = 24;
    fz_ip(slot->ipip_src6, PYDP_AF_INET6, "0");
    slot->ipip_src6_bits = 64;
    for (ci = 0; ci < 5; ci++)
        if (pydp_config_rebuild(&fz_shm, slot, ci, err) != 0)
            fz_die("config_rebuild", err);
    if (pydp_config_publish(&fz_shm, slot, err) != 0)
        fz_die("config_publish", err);
    fz_cfg = pydp_shm_config(&fz_shm, (uint32_t)(fz_shm.hdr->generation & 1));
    fz_flows = pydp_shm_flows(&fz_shm, 0);
    return 0;
}

static const uint8_t *
fz_table(uint32_t ci)
{
    return pydp_shm_maglev(&fz_shm, (uint32_t)(fz_shm.hdr->generation & 1), ci);
}

/* The rewrite of one forwarded frame (worker.c, wrk_forward) into buf, the frame at buf + FZ_HEADROOM. */
static void
fz_rewrite(uint8_t *buf, uint32_t len, const struct pydp_pkt_info *info, uint32_t ci, uint32_t slot,
           uint32_t hash)
{
    const struct pydp_cluster *c = &fz_cfg->clusters[ci];
    const struct pydp_edge *e = &c->edges[slot];
    uint8_t *frame = buf + FZ_HEADROOM;
    uint32_t olen, want;
    uint8_t src[16], *out;
    int r;

    if (c->dsr_mode == PYDP_DSR_L2) {
        pydp_dsr_l2(frame, e->mac, fz_port_mac);
        if (memcmp(frame, e->mac, 6) != 0 || memcmp(frame + 6, fz_port_mac, 6) != 0)
            abort();
        return;
    }
    if (e->family != info->family)
        return;                                 /* PYDP_DROP_FAMILY */
    olen = info->family == PYDP_AF_INET ? 20 : 40;
    want = (uint32_t)info->l3_off + info->l3_len;
    if (want > len || info->l3_off < 14)
        abort();                                /* the parser promised the IP packet lies inside the frame */
    /* the worker trims to want and prepends olen bytes: the outer Ethernet + IP header replace the frame's
     * Ethernet header (and any VLAN tag) in front of the inner IP packet */
    out = frame + info->l3_off - 14 - olen;
    if (out < buf)
        abort();
    pydp_ipip_source(fz_cfg, info->family, hash, src);
    r = pydp_dsr_encap(out, info->family, src, e->addr, info->l3_len, fz_gw_mac, fz_port_mac);
    if (r < 0) {
        if (info->family != PYDP_AF_INET || (uint32_t)info->l3_len + 20 <= 0xffff)
            abort();
        return;
    }
    if ((uint32_t)r != olen || memcmp(out, fz_gw_mac, 6) != 0)
        abort();
    if (info->family == PYDP_AF_INET) {
        uint32_t total = (uint32_t)out[16] << 8 | out[17];

        if (out[12] != 0x08 || out[14] != 0x45 || out[23] != 4 || total != (uint32_t)info->l3_len + 20 ||
            memcmp(out + 30, e->addr, 4) != 0)
            abort();
    } else {
        uint32_t plen = (uint32_t)out[18] << 8 | out[19];

        if (out[12] != 0x86 || (out[14] >> 4) != 6 || out[20] != 41 || plen != info->l3_len ||
            memcmp(out + 38, e->addr, 16) != 0)
            abort();
    }
}

static void
fz_packet(const uint8_t *data, uint32_t len, uint32_t now)
{
    static uint8_t buf[FZ_HEADROOM + FZ_MAX_FRAME];
    struct pydp_pkt_info info;
    struct pydp_verdict v;
    const struct pydp_cluster *c;
    uint64_t live = fz_flows->live;
    int cls, act;

    if (len > FZ_MAX_FRAME)
        len = FZ_MAX_FRAME;
    memcpy(buf + FZ_HEADROOM, data, len);
    cls = pydp_parse(buf + FZ_HEADROOM, len, &info);
    if (cls != PYDP_CLS_IP)
        return;                                 /* dropped or to the exception path */
    act = pydp_verdict(fz_cfg, fz_table(0), fz_shm.hdr->maglev_max, fz_flows, &info, now, &v);
    if (act == PYDP_ACT_EXCEPTION) {
        if (pydp_config_lookup_vip(fz_cfg, info.family, info.dst) >= 0 || v.what != 0)
            abort();                            /* a cluster IP sent to the kernel */
        return;
    }
    if (v.cluster >= fz_cfg->nb_clusters)
        abort();
    c = &fz_cfg->clusters[v.cluster];
    if (c->family != info.family || memcmp(c->vip, info.dst, 16) != 0)
        abort();                                /* the packet was given another cluster */
    if (act == PYDP_ACT_DROP_DISABLED || act == PYDP_ACT_DROP_NOT_ACTIVE) {
        int why_ok = act == PYDP_ACT_DROP_DISABLED ? !c->enabled : (c->enabled && !c->owned);

        if (!why_ok || v.what != 0 || fz_flows->live != live)
            abort();                            /* wrong reason, or the flow table was touched */
        return;
    }
    if (!c->enabled || !c->owned)
        abort();                                /* forwarded for a cluster that is off or not ours */
    if (act == PYDP_ACT_DROP_NO_EDGE) {
        if (v.edge != PYDP_MAGLEV_NONE || (v.what & PYDP_VW_INSERT))
            abort();
        return;
    }
    if (act != PYDP_ACT_FORWARD || v.edge >= PYDP_MAX_EDGES || c->edges[v.edge].state == PYDP_EDGE_EMPTY ||
        c->edges[v.edge].state == PYDP_EDGE_DOWN || c->edges[v.edge].state == PYDP_EDGE_DISABLED)
        abort();                                /* forwarded to an edge that is not in use */
    if (v.what & (PYDP_VW_HIT | PYDP_VW_INSERT)) {
        const struct pydp_flow *f = v.flow;

        if (f == NULL || memcmp(&f->key, &info.key, sizeof(info.key)) != 0)
            abort();                            /* the verdict's flow is another flow */
        if (f->cluster != v.cluster || f->cluster_uid != c->uid || f->edge != v.edge ||
            f->edge_uid != c->edges[v.edge].uid)
            abort();                            /* the flow is not pinned where the packet goes */
        if (f->state == PYDP_FLOW_EMPTY)
            abort();                            /* a flow that has seen a packet has a state */
    }
    if ((v.what & PYDP_VW_INSERT) &&
        ((info.flags & (PYDP_PF_FRAGMENT | PYDP_PF_ICMP_ERROR)) || c->edges[v.edge].state != PYDP_EDGE_UP))
        abort();                                /* a new flow from a fragment or an ICMP error, or on an edge
                                                 * that takes no new flows */
    if (!(v.what & (PYDP_VW_HIT | PYDP_VW_INSERT)) && !(info.flags & (PYDP_PF_FRAGMENT | PYDP_PF_ICMP_ERROR)))
        abort();                                /* a packet that opens no flow must be one that may not */
    fz_rewrite(buf, len, &info, v.cluster, v.edge, v.hash);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint32_t now = 1000, steps, n, frames = 0;

    if (size < 1)
        return 0;
    steps = data[0];
    data++;
    size--;
    pydp_flow_table_init(fz_flows, FZ_FLOWS);
    while (size > 0 && frames < FZ_MAX_FRAMES) {
        n = size >= 2 ? (uint32_t)data[0] << 8 | data[1] : 0;
        if (size < 2 || n > size - 2) {         /* the last frame takes what is left */
            n = (uint32_t)size;
        } else {
            data += 2;
            size -= 2;
        }
        fz_packet(data, n, now);
        data += n;
        size -= n;
        frames++;
        /* two bits of clock per frame: the same ms, +1 s, +31 s (past the SYN and FIN timeouts), +1 h */
        switch ((steps >> ((frames & 3) * 2)) & 3) {
        case 1: now += 1000; break;
        case 2: now += 31000; break;
        case 3: now += 3600000; break;
        default: break;
        }
    }
    if (fz_flows->live > FZ_FLOWS)
        abort();
    return 0;
}
