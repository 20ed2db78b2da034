/*
 * parse.c - the fast-path packet parser.
 *
 * Reads one Ethernet II frame (a plain byte buffer, no DPDK types) and classifies it: exception traffic (ARP, CARP,
 * IPv6 neighbour discovery, non-IP), malformed, or an IP packet with its flow key (client -> cluster IP).
 * ICMP errors get the key of the flow they are about, rebuilt (reversed) from the quoted header.
 *
 * Every read is preceded by a bounds check against the frame length and the IP length; there is no loop other than
 * the bounded walk over IPv6 extension headers, and no copy other than the addresses.
 */
#include <stdint.h>
#include <string.h>

#include "pydp.h"

#define prs_likely(x)   __builtin_expect(!!(x), 1)
#define prs_unlikely(x) __builtin_expect(!!(x), 0)

#define PRS_ETH_HLEN      14u
#define PRS_ETYPE_IPV4    0x0800
#define PRS_ETYPE_ARP     0x0806
#define PRS_ETYPE_IPV6    0x86DD

#define PRS_IP4_HLEN      20u
#define PRS_IP6_HLEN      40u
#define PRS_TCP_HLEN      20u
#define PRS_UDP_HLEN      8u
#define PRS_ICMP_HLEN     8u
#define PRS_QUOTE_L4_LEN  8u      /* bytes of the quoted L4 header an ICMP error must carry */
#define PRS_IP6_MAX_EXT   8u

#define PRS_PROTO_HOPOPTS 0
#define PRS_PROTO_ICMP    1
#define PRS_PROTO_TCP     6
#define PRS_PROTO_UDP     17
#define PRS_PROTO_ROUTING 43
#define PRS_PROTO_FRAG    44
#define PRS_PROTO_ESP     50
#define PRS_PROTO_AH      51
#define PRS_PROTO_ICMPV6  58
#define PRS_PROTO_DSTOPTS 60
#define PRS_PROTO_CARP    112

#define PRS_PORT_IKE      500
#define PRS_PORT_NATT     4500

/* host-order value of a big-endian 16-bit field (byte access: no alignment assumption) */
static inline uint16_t
prs_be16(const uint8_t *p)
{
    return (uint16_t)(((uint16_t)p[0] << 8) | p[1]);
}

/* a 16-bit field kept in network order */
static inline uint16_t
prs_raw16(const uint8_t *p)
{
    uint16_t v;

    memcpy(&v, p, sizeof(v));
    return v;
}

static inline int
prs_ike_port(uint16_t host_port)
{
    return host_port == PRS_PORT_IKE || host_port == PRS_PORT_NATT;
}

/*
 * Walks the IPv6 extension headers that start at *off (the byte after the fixed header), none of which may pass end.
 * Returns the protocol that ends the walk, or -1 if an extension header overruns end or there are too many.
 * A fragment header ends the walk: *frag is set and the result is the fragment header's next header.
 */
static inline int
prs_ip6_walk(const uint8_t *p, uint32_t *off, uint32_t end, uint8_t nh, int *frag)
{
    uint32_t o = *off;
    uint32_t n;
    uint32_t hlen;

    for (n = 0; ; n++) {
        if (nh != PRS_PROTO_HOPOPTS && nh != PRS_PROTO_ROUTING && nh != PRS_PROTO_DSTOPTS &&
            nh != PRS_PROTO_FRAG)
            break;
        /* every extension header is at least 8 bytes, its length byte included */
        if (prs_unlikely(n == PRS_IP6_MAX_EXT || end - o < 8))
            return -1;
        if (nh == PRS_PROTO_FRAG) {
            nh = p[o];
            o += 8;
            *frag = 1;
            break;
        }
        hlen = ((uint32_t)p[o + 1] + 1) * 8;
        if (prs_unlikely(hlen > end - o))
            return -1;
        nh = p[o];
        o += hlen;
    }
    *off = o;
    return nh;
}

/*
 * The quoted (embedded) packet of an ICMP error at off, bounded by end: the edge's reply to the client. Builds the
 * reversed key (client -> cluster IP). Returns PYDP_CLS_IP or PYDP_CLS_MALFORMED.
 */
static int
prs_icmp_quote(const uint8_t *f, uint32_t off, uint32_t end, struct pydp_pkt_info *info)
{
    struct pydp_flow_key *key = &info->key;
    uint32_t l4;
    uint8_t proto;
    int frag = 0;

    if (info->family == PYDP_AF_INET) {
        uint32_t ihl;

        if (prs_unlikely(end - off < PRS_IP4_HLEN || (f[off] >> 4) != 4))
            return PYDP_CLS_MALFORMED;
        ihl = (uint32_t)(f[off] & 0x0f) * 4;
        if (prs_unlikely(ihl < PRS_IP4_HLEN || ihl > end - off))
            return PYDP_CLS_MALFORMED;
        /* quoted total length is not checked: the quote is usually cut short */
        frag = (prs_be16(f + off + 6) & 0x3fff) != 0;
        proto = f[off + 9];
        memset(key->src, 0, sizeof(key->src));
        memset(key->dst, 0, sizeof(key->dst));
        memcpy(key->src, f + off + 16, 4);
        memcpy(key->dst, f + off + 12, 4);
        l4 = off + ihl;
    } else {
        int nh;

        if (prs_unlikely(end - off < PRS_IP6_HLEN || (f[off] >> 4) != 6))
            return PYDP_CLS_MALFORMED;
        memcpy(key->src, f + off + 24, 16);
        memcpy(key->dst, f + off + 8, 16);
        l4 = off + PRS_IP6_HLEN;
        nh = prs_ip6_walk(f, &l4, end, f[off + 6], &frag);
        if (prs_unlikely(nh < 0))
            return PYDP_CLS_MALFORMED;
        proto = (uint8_t)nh;
    }

    key->proto = proto;
    key->sport = 0;
    key->dport = 0;
    if (prs_unlikely(frag)) {
        info->flags |= PYDP_PF_FRAGMENT;
        return PYDP_CLS_IP;
    }

    switch (proto) {
    case PRS_PROTO_TCP:
    case PRS_PROTO_UDP:
        if (prs_unlikely(end - l4 < PRS_QUOTE_L4_LEN))
            return PYDP_CLS_MALFORMED;
        key->sport = prs_raw16(f + l4 + 2);
        key->dport = prs_raw16(f + l4);
        if (proto == PRS_PROTO_UDP &&
            (prs_ike_port(prs_be16(f + l4)) || prs_ike_port(prs_be16(f + l4 + 2))))
            info->flags |= PYDP_PF_IPSEC;
        break;
    case PRS_PROTO_ICMP:
    case PRS_PROTO_ICMPV6:
        /* only the family's own ICMP carries an echo identifier */
        if ((proto == PRS_PROTO_ICMP) != (info->family == PYDP_AF_INET))
            break;
        if (prs_unlikely(end - l4 < PRS_QUOTE_L4_LEN))
            return PYDP_CLS_MALFORMED;
        if (proto == PRS_PROTO_ICMP ? (f[l4] == 0 || f[l4] == 8) : (f[l4] == 128 || f[l4] == 129))
            key->sport = prs_raw16(f + l4 + 4);
        break;
    case PRS_PROTO_ESP:
    case PRS_PROTO_AH:
        info->flags |= PYDP_PF_IPSEC;
        break;
    default:
        break;
    }
    return PYDP_CLS_IP;
}

/* ICMP (IPv4) or ICMPv6 header at off, bounded by end. */
static int
prs_icmp(const uint8_t *f, uint32_t off, uint32_t end, struct pydp_pkt_info *info)
{
    uint8_t type;
    int err;

    if (prs_unlikely(end - off < PRS_ICMP_HLEN))
        return PYDP_CLS_MALFORMED;
    type = f[off];
    if (info->family == PYDP_AF_INET) {
        if (type == 8 || type == 0) {
            info->flags |= PYDP_PF_ICMP_ECHO;
            info->key.sport = prs_raw16(f + off + 4);
            return PYDP_CLS_IP;
        }
        err = type == 3 || type == 11 || type == 12;
    } else {
        if (type == 128 || type == 129) {
            info->flags |= PYDP_PF_ICMP_ECHO;
            info->key.sport = prs_raw16(f + off + 4);
            return PYDP_CLS_IP;
        }
        if (type >= 133 && type <= 137) {
            info->flags |= PYDP_PF_ND;
            return PYDP_CLS_EXC_PRIO;
        }
        err = type >= 1 && type <= 4;
    }
    if (!err)
        return PYDP_CLS_IP;
    info->flags |= PYDP_PF_ICMP_ERROR;
    return prs_icmp_quote(f, off + PRS_ICMP_HLEN, end, info);
}

/* The L4 header of a non-fragment at off, bounded by end (the end of the IP packet). */
static inline int
prs_l4(const uint8_t *f, uint32_t off, uint32_t end, uint8_t proto, struct pydp_pkt_info *info)
{
    uint32_t doff;

    switch (proto) {
    case PRS_PROTO_TCP:
        if (prs_unlikely(end - off < PRS_TCP_HLEN))
            return PYDP_CLS_MALFORMED;
        doff = (uint32_t)(f[off + 12] >> 4) * 4;
        if (prs_unlikely(doff < PRS_TCP_HLEN || doff > end - off))
            return PYDP_CLS_MALFORMED;
        info->key.sport = prs_raw16(f + off);
        info->key.dport = prs_raw16(f + off + 2);
        info->tcp_flags = f[off + 13];
        return PYDP_CLS_IP;
    case PRS_PROTO_UDP:
        if (prs_unlikely(end - off < PRS_UDP_HLEN))
            return PYDP_CLS_MALFORMED;
        info->key.sport = prs_raw16(f + off);
        info->key.dport = prs_raw16(f + off + 2);
        if (prs_unlikely(prs_ike_port(prs_be16(f + off)) || prs_ike_port(prs_be16(f + off + 2))))
            info->flags |= PYDP_PF_IPSEC;
        return PYDP_CLS_IP;
    case PRS_PROTO_ICMP:
        if (info->family == PYDP_AF_INET)
            return prs_icmp(f, off, end, info);
        return PYDP_CLS_IP;
    case PRS_PROTO_ICMPV6:
        if (info->family == PYDP_AF_INET6)
            return prs_icmp(f, off, end, info);
        return PYDP_CLS_IP;
    case PRS_PROTO_ESP:
    case PRS_PROTO_AH:
        info->flags |= PYDP_PF_IPSEC;
        return PYDP_CLS_IP;
    default:
        return PYDP_CLS_IP;
    }
}

static inline int
prs_ipv4(const uint8_t *f, uint32_t len, struct pydp_pkt_info *info)
{
    const uint8_t *ip = f + PRS_ETH_HLEN;
    uint32_t avail = len - PRS_ETH_HLEN;
    uint32_t ihl, tot;
    uint8_t proto;

    if (prs_unlikely(avail < PRS_IP4_HLEN || (ip[0] >> 4) != 4))
        return PYDP_CLS_MALFORMED;
    ihl = (uint32_t)(ip[0] & 0x0f) * 4;
    tot = prs_be16(ip + 2);
    if (prs_unlikely(ihl < PRS_IP4_HLEN || ihl > avail || tot < ihl || tot > avail))
        return PYDP_CLS_MALFORMED;

    info->family = PYDP_AF_INET;
    info->l3_len = (uint16_t)tot;
    info->ttl = ip[8];
    proto = ip[9];
    info->l4_proto = proto;
    info->key.family = PYDP_AF_INET;
    info->key.proto = proto;
    memcpy(info->key.src, ip + 12, 4);
    memcpy(info->key.dst, ip + 16, 4);
    memcpy(info->dst, ip + 16, 4);

    if (prs_unlikely(proto == PRS_PROTO_CARP))
        return PYDP_CLS_EXC_PRIO;
    /* MF or a fragment offset: 3-tuple key, even for the first fragment, so all fragments hash alike */
    if (prs_unlikely((prs_be16(ip + 6) & 0x3fff) != 0)) {
        info->flags |= PYDP_PF_FRAGMENT;
        return PYDP_CLS_IP;
    }
    return prs_l4(f, PRS_ETH_HLEN + ihl, PRS_ETH_HLEN + tot, proto, info);
}

static inline int
prs_ipv6(const uint8_t *f, uint32_t len, struct pydp_pkt_info *info)
{
    const uint8_t *ip = f + PRS_ETH_HLEN;
    uint32_t avail = len - PRS_ETH_HLEN;
    uint32_t tot, off, end;
    int frag = 0;
    int nh;

    if (prs_unlikely(avail < PRS_IP6_HLEN || (ip[0] >> 4) != 6))
        return PYDP_CLS_MALFORMED;
    tot = PRS_IP6_HLEN + prs_be16(ip + 4);
    /* l3_len is 16 bits: a packet longer than 65535 bytes (jumbogram) is not representable */
    if (prs_unlikely(tot > avail || tot > UINT16_MAX))
        return PYDP_CLS_MALFORMED;

    info->family = PYDP_AF_INET6;
    info->l3_len = (uint16_t)tot;
    info->ttl = ip[7];
    info->key.family = PYDP_AF_INET6;
    memcpy(info->key.src, ip + 8, 16);
    memcpy(info->key.dst, ip + 24, 16);
    memcpy(info->dst, ip + 24, 16);

    off = PRS_ETH_HLEN + PRS_IP6_HLEN;
    end = PRS_ETH_HLEN + tot;
    nh = prs_ip6_walk(f, &off, end, ip[6], &frag);
    if (prs_unlikely(nh < 0))
        return PYDP_CLS_MALFORMED;
    info->l4_proto = (uint8_t)nh;
    info->key.proto = (uint8_t)nh;

    if (prs_unlikely(nh == PRS_PROTO_CARP))
        return PYDP_CLS_EXC_PRIO;
    if (prs_unlikely(frag)) {
        info->flags |= PYDP_PF_FRAGMENT;
        return PYDP_CLS_IP;
    }
    return prs_l4(f, off, end, (uint8_t)nh, info);
}

int
pydp_parse(const uint8_t *frame, uint32_t len, struct pydp_pkt_info *info)
{
    uint16_t etype;
    int klass;

    memset(info, 0, sizeof(*info));
    info->l3_off = PRS_ETH_HLEN;
    if (prs_unlikely(len < PRS_ETH_HLEN)) {
        info->klass = PYDP_CLS_MALFORMED;
        return PYDP_CLS_MALFORMED;
    }
    etype = prs_be16(frame + 12);
    info->ethertype = etype;

    if (prs_likely(etype == PRS_ETYPE_IPV4))
        klass = prs_ipv4(frame, len, info);
    else if (etype == PRS_ETYPE_IPV6)
        klass = prs_ipv6(frame, len, info);
    else if (etype == PRS_ETYPE_ARP)
        klass = PYDP_CLS_EXC_PRIO;
    else
        klass = PYDP_CLS_EXC;

    info->klass = (uint8_t)klass;
    return klass;
}

/* a port number as pydp_parse stores it (network order) */
static inline uint16_t
prs_port(uint16_t port)
{
    const uint8_t b[2] = { (uint8_t)(port >> 8), (uint8_t)port };

    return prs_raw16(b);
}

/* The exception-path class. CARP (like VRRP) is only valid with TTL / hop limit 255 (it never crosses a router),
 * so an advert with any other TTL, forged from off the link, falls to the best-effort class and cannot use the
 * CARP budget. BGP is TCP 179 either way (we may be the client or the server); BFD control is UDP to 3784
 * (single hop) or 4784 (multihop). ICMP errors carry the quoted packet's ports: they stay best effort. */
int
pydp_exc_class(const struct pydp_pkt_info *info)
{
    if (info->ethertype == PRS_ETYPE_ARP || (info->flags & PYDP_PF_ND))
        return PYDP_EXC_ARP;
    if (info->family == PYDP_AF_NONE)
        return PYDP_EXC_BULK;
    if (info->l4_proto == PRS_PROTO_CARP)
        return info->ttl == 255 ? PYDP_EXC_CARP : PYDP_EXC_BULK;
    if (info->flags & (PYDP_PF_FRAGMENT | PYDP_PF_ICMP_ERROR))
        return PYDP_EXC_BULK;
    if (info->l4_proto == PRS_PROTO_TCP) {
        if (info->key.sport == prs_port(179) || info->key.dport == prs_port(179))
            return PYDP_EXC_CONTROL;
    } else if (info->l4_proto == PRS_PROTO_UDP) {
        if (info->key.dport == prs_port(3784) || info->key.dport == prs_port(4784))
            return PYDP_EXC_CONTROL;
    }
    return PYDP_EXC_BULK;
}
