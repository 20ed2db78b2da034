/*
 * dsr.c - Direct Server Return rewrites: l2 (MAC addresses only) and ipip (IPv4-in-IPv4 / IPv6-in-IPv6).
 */
#include <string.h>

#include "pydp.h"

#define DSR_ETH_LEN 14
#define DSR_IP4_LEN 20
#define DSR_IP6_LEN 40
#define DSR_PROTO_IPIP 4
#define DSR_PROTO_IPV6 41
#define DSR_OUTER_TTL 64

void pydp_dsr_l2(uint8_t *frame, const uint8_t *dst_mac, const uint8_t *src_mac)
{
    memcpy(frame, dst_mac, 6);
    memcpy(frame + 6, src_mac, 6);
}

static uint16_t dsr_cksum20(const uint8_t *h)
{
    uint32_t sum = 0;
    int i;

    for (i = 0; i < DSR_IP4_LEN; i += 2)
        sum += (uint32_t)h[i] << 8 | h[i + 1];
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

int pydp_dsr_encap(uint8_t *out, uint8_t family, const uint8_t *outer_src, const uint8_t *outer_dst,
                   uint16_t inner_len, const uint8_t *dst_mac, const uint8_t *src_mac)
{
    uint8_t *ip = out + DSR_ETH_LEN;

    memcpy(out, dst_mac, 6);
    memcpy(out + 6, src_mac, 6);
    if (family == PYDP_AF_INET) {
        const uint8_t *inner = ip + DSR_IP4_LEN;
        uint32_t total = (uint32_t)inner_len + DSR_IP4_LEN;
        uint16_t ck;

        if (total > 0xffff)
            return -1;
        out[12] = 0x08;
        out[13] = 0x00;
        ip[0] = 0x45;
        ip[1] = inner[1];                   /* keep the DSCP/ECN of the inner packet */
        ip[2] = (uint8_t)(total >> 8);
        ip[3] = (uint8_t)total;
        ip[4] = 0;                          /* identification: DF is set, so none is needed */
        ip[5] = 0;
        ip[6] = 0x40;                       /* DF: the edge network carries the extra 20 bytes or says so */
        ip[7] = 0;
        ip[8] = DSR_OUTER_TTL;
        ip[9] = DSR_PROTO_IPIP;
        ip[10] = 0;
        ip[11] = 0;
        memcpy(ip + 12, outer_src, 4);
        memcpy(ip + 16, outer_dst, 4);
        ck = dsr_cksum20(ip);
        ip[10] = (uint8_t)(ck >> 8);
        ip[11] = (uint8_t)ck;
        return DSR_IP4_LEN;
    }
    if (family == PYDP_AF_INET6) {
        const uint8_t *inner = ip + DSR_IP6_LEN;
        uint8_t tclass = (uint8_t)((inner[0] << 4) | (inner[1] >> 4));

        out[12] = 0x86;
        out[13] = 0xdd;
        ip[0] = (uint8_t)(0x60 | (tclass >> 4));
        ip[1] = (uint8_t)(tclass << 4);
        ip[2] = 0;
        ip[3] = 0;
        ip[4] = (uint8_t)(inner_len >> 8);
        ip[5] = (uint8_t)inner_len;
        ip[6] = DSR_PROTO_IPV6;
        ip[7] = DSR_OUTER_TTL;
        memcpy(ip + 8, outer_src, 16);
        memcpy(ip + 24, outer_dst, 16);
        return DSR_IP6_LEN;
    }
    return -1;
}

/* The outer source: the configured prefix with the host bits taken from the flow hash, so an edge's NIC spreads
 * tunnels over its queues (RSS on the outer header) while one flow always uses one source. */
void pydp_ipip_source(const struct pydp_config *cfg, uint8_t family, uint32_t hash, uint8_t *out)
{
    if (family == PYDP_AF_INET) {
        uint32_t prefix = (uint32_t)cfg->ipip_src4[0] << 24 | (uint32_t)cfg->ipip_src4[1] << 16 |
                          (uint32_t)cfg->ipip_src4[2] << 8 | cfg->ipip_src4[3];
        uint32_t bits = cfg->ipip_src4_bits > 32 ? 32 : cfg->ipip_src4_bits;
        uint32_t host = bits >= 32 ? 0 : (uint32_t)(0xffffffffu >> bits);
        uint32_t a = (prefix & ~host) | (hash & host);

        /* keep away from the all-zeros and all-ones host addresses */
        if (host > 1 && ((a & host) == 0 || (a & host) == host))
            a ^= 2;
        out[0] = (uint8_t)(a >> 24);
        out[1] = (uint8_t)(a >> 16);
        out[2] = (uint8_t)(a >> 8);
        out[3] = (uint8_t)a;
        return;
    }
    memcpy(out, cfg->ipip_src6, 16);
    if (cfg->ipip_src6_bits <= 96) {
        /* the last 32 bits carry the hash (prefixes up to /96 leave them free) */
        out[12] = (uint8_t)(hash >> 24);
        out[13] = (uint8_t)(hash >> 16);
        out[14] = (uint8_t)(hash >> 8);
        out[15] = (uint8_t)(hash | 1);
    }
}
