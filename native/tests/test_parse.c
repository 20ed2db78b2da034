/*
 * test_parse.c - unit tests of the packet parser (parse.c): frames built byte by byte, every class for IPv4 and
 * IPv6, the malformed cases (every truncation included), and a fixed-seed random mutation loop.
 *
 * Each frame is parsed from a heap copy of exactly the given length, so AddressSanitizer (when enabled) catches any
 * read past the end.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pydp.h"
#include "check.h"

/* ---- frame builder ---- */

struct tb {
    uint8_t  b[2048];
    uint32_t n;
};

static const uint8_t CLI4[4] = { 198, 51, 100, 7 };
static const uint8_t VIP4[4] = { 192, 0, 2, 10 };
static const uint8_t RTR4[4] = { 203, 0, 113, 1 };
static const uint8_t CLI6[16] = { 0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x07 };
static const uint8_t VIP6[16] = { 0x20, 0x01, 0x0d, 0xb8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10 };
static const uint8_t RTR6[16] = { 0x20, 0x01, 0x0d, 0xb8, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01 };

#define ETH_IPV4 0x0800
#define ETH_IPV6 0x86DD

static void
tb_reset(struct tb *t)
{
    memset(t, 0, sizeof(*t));
}

static uint8_t *
tb_put(struct tb *t, uint32_t n)
{
    uint8_t *p = t->b + t->n;

    if (t->n + n > sizeof(t->b)) {
        fprintf(stderr, "test frame too long\n");
        exit(2);
    }
    memset(p, 0, n);
    t->n += n;
    return p;
}

static void
put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void
tb_eth(struct tb *t, uint16_t etype)
{
    static const uint8_t macs[12] = { 0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02 };
    uint8_t *p = tb_put(t, 14);

    memcpy(p, macs, 12);
    put16(p + 12, etype);
}

/* IPv4 header without options; the total length is set by tb_ip4_done */
static uint32_t
tb_ip4(struct tb *t, const uint8_t *src, const uint8_t *dst, uint8_t proto, uint16_t frag)
{
    uint32_t off = t->n;
    uint8_t *p = tb_put(t, 20);

    p[0] = 0x45;
    put16(p + 4, 0x1234);
    put16(p + 6, frag);
    p[8] = 64;
    p[9] = proto;
    memcpy(p + 12, src, 4);
    memcpy(p + 16, dst, 4);
    return off;
}

static void
tb_ip4_done(struct tb *t, uint32_t off)
{
    put16(t->b + off + 2, t->n - off);
}

static uint32_t
tb_ip6(struct tb *t, const uint8_t *src, const uint8_t *dst, uint8_t nh)
{
    uint32_t off = t->n;
    uint8_t *p = tb_put(t, 40);

    p[0] = 0x60;
    p[6] = nh;
    p[7] = 64;
    memcpy(p + 8, src, 16);
    memcpy(p + 24, dst, 16);
    return off;
}

static void
tb_ip6_done(struct tb *t, uint32_t off)
{
    put16(t->b + off + 4, t->n - off - 40);
}

/* hop-by-hop / routing / destination options: (units + 1) * 8 bytes, padded with Pad1 (zero) options */
static void
tb_ext6(struct tb *t, uint8_t nh, uint8_t units)
{
    uint8_t *p = tb_put(t, ((uint32_t)units + 1) * 8);

    p[0] = nh;
    p[1] = units;
}

static void
tb_frag6(struct tb *t, uint8_t nh, uint16_t offset8, int more)
{
    uint8_t *p = tb_put(t, 8);

    p[0] = nh;
    put16(p + 2, (uint32_t)(offset8 << 3) | (more ? 1u : 0u));
    p[4] = 0xde; p[5] = 0xad; p[6] = 0xbe; p[7] = 0xef;
}

static void
tb_tcp(struct tb *t, uint16_t sport, uint16_t dport, uint8_t flags)
{
    uint8_t *p = tb_put(t, 20);

    put16(p, sport);
    put16(p + 2, dport);
    p[4] = 0x11; p[5] = 0x22; p[6] = 0x33; p[7] = 0x44;
    p[12] = 0x50;
    p[13] = flags;
    put16(p + 14, 65535);
}

static void
tb_udp(struct tb *t, uint16_t sport, uint16_t dport, uint32_t payload)
{
    uint8_t *p = tb_put(t, 8 + payload);

    put16(p, sport);
    put16(p + 2, dport);
    put16(p + 4, 8 + payload);
}

static void
tb_icmp(struct tb *t, uint8_t type, uint8_t code, uint16_t id, uint16_t seq)
{
    uint8_t *p = tb_put(t, 8);

    p[0] = type;
    p[1] = code;
    put16(p + 4, id);
    put16(p + 6, seq);
}

static void
tb_data(struct tb *t, uint32_t n)
{
    uint8_t *p = tb_put(t, n);
    uint32_t i;

    for (i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 7 + 3);
}

/* ---- frame makers ---- */

static void
mk_tcp4(struct tb *t, const uint8_t *src, const uint8_t *dst, uint16_t sp, uint16_t dp, uint8_t flags)
{
    uint32_t ip;

    tb_reset(t);
    tb_eth(t, ETH_IPV4);
    ip = tb_ip4(t, src, dst, 6, 0);
    tb_tcp(t, sp, dp, flags);
    tb_ip4_done(t, ip);
}

static void
mk_udp4(struct tb *t, const uint8_t *src, const uint8_t *dst, uint16_t sp, uint16_t dp)
{
    uint32_t ip;

    tb_reset(t);
    tb_eth(t, ETH_IPV4);
    ip = tb_ip4(t, src, dst, 17, 0);
    tb_udp(t, sp, dp, 12);
    tb_ip4_done(t, ip);
}

/* IPv4 with proto and n bytes of payload */
static void
mk_raw4(struct tb *t, uint8_t proto, uint16_t frag, uint32_t n)
{
    uint32_t ip;

    tb_reset(t);
    tb_eth(t, ETH_IPV4);
    ip = tb_ip4(t, CLI4, VIP4, proto, frag);
    tb_data(t, n);
    tb_ip4_done(t, ip);
}

static void
mk_tcp6(struct tb *t, const uint8_t *src, const uint8_t *dst, uint16_t sp, uint16_t dp, uint8_t flags)
{
    uint32_t ip;

    tb_reset(t);
    tb_eth(t, ETH_IPV6);
    ip = tb_ip6(t, src, dst, 6);
    tb_tcp(t, sp, dp, flags);
    tb_ip6_done(t, ip);
}

static void
mk_udp6(struct tb *t, const uint8_t *src, const uint8_t *dst, uint16_t sp, uint16_t dp)
{
    uint32_t ip;

    tb_reset(t);
    tb_eth(t, ETH_IPV6);
    ip = tb_ip6(t, src, dst, 17);
    tb_udp(t, sp, dp, 12);
    tb_ip6_done(t, ip);
}

static void
mk_raw6(struct tb *t, uint8_t nh, uint32_t n)
{
    uint32_t ip;

    tb_reset(t);
    tb_eth(t, ETH_IPV6);
    ip = tb_ip6(t, CLI6, VIP6, nh);
    tb_data(t, n);
    tb_ip6_done(t, ip);
}

static void
mk_icmp4(struct tb *t, uint8_t type, uint8_t code, uint16_t id)
{
    uint32_t ip;

    tb_reset(t);
    tb_eth(t, ETH_IPV4);
    ip = tb_ip4(t, CLI4, VIP4, 1, 0);
    tb_icmp(t, type, code, id, 1);
    tb_data(t, 32);
    tb_ip4_done(t, ip);
}

static void
mk_icmp6(struct tb *t, uint8_t type, uint8_t code, uint16_t id)
{
    uint32_t ip;

    tb_reset(t);
    tb_eth(t, ETH_IPV6);
    ip = tb_ip6(t, CLI6, VIP6, 58);
    tb_icmp(t, type, code, id, 1);
    tb_data(t, 32);
    tb_ip6_done(t, ip);
}

/*
 * ICMPv4 error from a router to the cluster IP, quoting the edge's reply (VIP:vport -> client:cport).
 * quote_l4 = bytes of the quoted L4 header (8 normally); the quoted total length claims 1500 bytes.
 */
static void
mk_icmp4_err(struct tb *t, uint8_t type, uint8_t code, uint8_t qproto, uint16_t qfrag, uint16_t vport,
             uint16_t cport, uint32_t quote_l4)
{
    uint32_t ip, qip;
    uint8_t *p;

    tb_reset(t);
    tb_eth(t, ETH_IPV4);
    ip = tb_ip4(t, RTR4, VIP4, 1, 0);
    tb_icmp(t, type, code, 0, type == 3 && code == 4 ? 1400 : 0);
    qip = tb_ip4(t, VIP4, CLI4, qproto, qfrag);
    put16(t->b + qip + 2, 1500);
    p = tb_put(t, quote_l4);
    if (quote_l4 >= 4) {
        put16(p, vport);
        put16(p + 2, cport);
    }
    tb_ip4_done(t, ip);
}

static void
mk_icmp6_err(struct tb *t, uint8_t type, uint8_t code, uint8_t qproto, uint16_t vport, uint16_t cport,
             uint32_t quote_l4)
{
    uint32_t ip, qip;
    uint8_t *p;

    tb_reset(t);
    tb_eth(t, ETH_IPV6);
    ip = tb_ip6(t, RTR6, VIP6, 58);
    tb_icmp(t, type, code, 0, type == 2 ? 1280 : 0);
    qip = tb_ip6(t, VIP6, CLI6, qproto);
    put16(t->b + qip + 4, 1460);
    p = tb_put(t, quote_l4);
    if (quote_l4 >= 4) {
        put16(p, vport);
        put16(p + 2, cport);
    }
    tb_ip6_done(t, ip);
}

/* ---- parsing and checking ---- */

/* parses the first len bytes of t from a heap copy of exactly len bytes */
static int
parse_n(const uint8_t *b, uint32_t len, struct pydp_pkt_info *info)
{
    uint8_t *copy = malloc(len ? len : 1);
    int r;

    if (copy == NULL)
        exit(2);
    memcpy(copy, b, len);
    r = pydp_parse(copy, len, info);
    free(copy);
    return r;
}

static int
parse(const struct tb *t, struct pydp_pkt_info *info)
{
    return parse_n(t->b, t->n, info);
}

/* the key matches (ports in host order here), compared as bytes, pad and unused address bytes included */
static int
key_is(const struct pydp_pkt_info *in, uint8_t family, const uint8_t *src, const uint8_t *dst, uint16_t sport,
       uint16_t dport, uint8_t proto)
{
    struct pydp_flow_key k;
    uint32_t alen = family == PYDP_AF_INET ? 4 : 16;

    memset(&k, 0, sizeof(k));
    memcpy(k.src, src, alen);
    memcpy(k.dst, dst, alen);
    put16((uint8_t *)&k.sport, sport);
    put16((uint8_t *)&k.dport, dport);
    k.proto = proto;
    k.family = family;
    return memcmp(&in->key, &k, sizeof(k)) == 0;
}

static int
dst_is(const struct pydp_pkt_info *in, uint8_t family, const uint8_t *addr)
{
    uint8_t d[16];

    memset(d, 0, sizeof(d));
    memcpy(d, addr, family == PYDP_AF_INET ? 4 : 16);
    return memcmp(in->dst, d, 16) == 0;
}

static int
same_key(const struct pydp_pkt_info *a, const struct pydp_pkt_info *b)
{
    return memcmp(&a->key, &b->key, sizeof(a->key)) == 0;
}

/* ---- Ethernet ---- */

static void
test_ethernet(void)
{
    struct pydp_pkt_info in;
    struct tb t;
    uint32_t n;

    /* ARP request */
    tb_reset(&t);
    tb_eth(&t, 0x0806);
    tb_data(&t, 28);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_EXC_PRIO);
    CHECK_EQ(in.klass, PYDP_CLS_EXC_PRIO);
    CHECK_EQ(in.ethertype, 0x0806);
    CHECK_EQ(in.l3_off, 14);

    /* VLAN tag: not parsed */
    mk_tcp4(&t, CLI4, VIP4, 1, 2, 0x02);
    put16(t.b + 12, 0x8100);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_EXC);
    CHECK_EQ(in.ethertype, 0x8100);

    /* LLDP and an unknown ethertype */
    tb_reset(&t);
    tb_eth(&t, 0x88cc);
    tb_data(&t, 46);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_EXC);
    CHECK_EQ(in.ethertype, 0x88cc);
    tb_reset(&t);
    tb_eth(&t, 0x1234);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_EXC);

    /* shorter than the Ethernet header */
    tb_reset(&t);
    tb_eth(&t, 0x0806);
    for (n = 0; n < 14; n++) {
        CHECK_EQ(parse_n(t.b, n, &in), PYDP_CLS_MALFORMED);
        CHECK_EQ(in.klass, PYDP_CLS_MALFORMED);
    }
    /* the bare header of an IP ethertype is malformed, that of ARP is not checked further */
    CHECK_EQ(parse_n(t.b, 14, &in), PYDP_CLS_EXC_PRIO);
    put16(t.b + 12, ETH_IPV4);
    CHECK_EQ(parse_n(t.b, 14, &in), PYDP_CLS_MALFORMED);
    put16(t.b + 12, ETH_IPV6);
    CHECK_EQ(parse_n(t.b, 14, &in), PYDP_CLS_MALFORMED);
}

/* ---- IPv4 ---- */

static void
test_ipv4_tcp_udp(void)
{
    struct pydp_pkt_info in;
    struct tb t;

    mk_tcp4(&t, CLI4, VIP4, 40000, 443, 0x02);
    memset(&in, 0xa5, sizeof(in));          /* everything must be overwritten */
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.klass, PYDP_CLS_IP);
    CHECK_EQ(in.family, PYDP_AF_INET);
    CHECK_EQ(in.ethertype, ETH_IPV4);
    CHECK_EQ(in.l3_off, 14);
    CHECK_EQ(in.l3_len, 40);
    CHECK_EQ(in.l4_proto, 6);
    CHECK_EQ(in.flags, 0);
    CHECK_EQ(in.tcp_flags, 0x02);
    CHECK_EQ(in.ttl, 64);
    CHECK(key_is(&in, PYDP_AF_INET, CLI4, VIP4, 40000, 443, 6));
    CHECK(dst_is(&in, PYDP_AF_INET, VIP4));
    /* ports stay in network order */
    CHECK_EQ(((const uint8_t *)&in.key.dport)[0], 443 >> 8);
    CHECK_EQ(((const uint8_t *)&in.key.dport)[1], 443 & 0xff);

    mk_tcp4(&t, CLI4, VIP4, 40000, 443, 0x10);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.tcp_flags, 0x10);
    mk_tcp4(&t, CLI4, VIP4, 40000, 443, 0x11);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.tcp_flags, 0x11);
    CHECK(key_is(&in, PYDP_AF_INET, CLI4, VIP4, 40000, 443, 6));
    mk_tcp4(&t, CLI4, VIP4, 40000, 443, 0x04);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.tcp_flags, 0x04);

    /* TCP with options (doff 8) */
    mk_tcp4(&t, CLI4, VIP4, 40000, 443, 0x02);
    t.b[14 + 20 + 12] = 0x80;
    tb_data(&t, 12);
    tb_ip4_done(&t, 14);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK(key_is(&in, PYDP_AF_INET, CLI4, VIP4, 40000, 443, 6));

    /* IPv4 options (IHL 6) before TCP */
    tb_reset(&t);
    tb_eth(&t, ETH_IPV4);
    tb_ip4(&t, CLI4, VIP4, 6, 0);
    t.b[14] = 0x46;
    tb_put(&t, 4)[0] = 1;                   /* NOP options */
    tb_tcp(&t, 1234, 80, 0x02);
    tb_ip4_done(&t, 14);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK(key_is(&in, PYDP_AF_INET, CLI4, VIP4, 1234, 80, 6));
    CHECK_EQ(in.l3_len, 44);

    /* DF alone is not a fragment */
    mk_tcp4(&t, CLI4, VIP4, 1, 2, 0x02);
    put16(t.b + 14 + 6, 0x4000);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, 0);

    /* UDP, then IKE and NAT-T on either side */
    mk_udp4(&t, CLI4, VIP4, 53000, 53);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK(key_is(&in, PYDP_AF_INET, CLI4, VIP4, 53000, 53, 17));
    CHECK_EQ(in.flags, 0);
    CHECK_EQ(in.tcp_flags, 0);
    mk_udp4(&t, CLI4, VIP4, 500, 500);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_IPSEC);
    CHECK(key_is(&in, PYDP_AF_INET, CLI4, VIP4, 500, 500, 17));
    mk_udp4(&t, CLI4, VIP4, 33000, 500);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_IPSEC);
    mk_udp4(&t, CLI4, VIP4, 4500, 33001);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_IPSEC);
    CHECK(key_is(&in, PYDP_AF_INET, CLI4, VIP4, 4500, 33001, 17));
    mk_udp4(&t, CLI4, VIP4, 501, 4501);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, 0);

    /* ESP, AH: no ports */
    mk_raw4(&t, 50, 0, 40);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_IPSEC);
    CHECK_EQ(in.l4_proto, 50);
    CHECK(key_is(&in, PYDP_AF_INET, CLI4, VIP4, 0, 0, 50));
    mk_raw4(&t, 51, 0, 40);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_IPSEC);
    CHECK(key_is(&in, PYDP_AF_INET, CLI4, VIP4, 0, 0, 51));

    /* another protocol (GRE), even an empty one */
    mk_raw4(&t, 47, 0, 24);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, 0);
    CHECK(key_is(&in, PYDP_AF_INET, CLI4, VIP4, 0, 0, 47));
    mk_raw4(&t, 47, 0, 0);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.l3_len, 20);
    /* ICMPv6 inside IPv4 is just another protocol */
    mk_raw4(&t, 58, 0, 4);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK(key_is(&in, PYDP_AF_INET, CLI4, VIP4, 0, 0, 58));

    /* CARP / VRRP: priority exception, addresses filled */
    mk_raw4(&t, 112, 0, 36);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_EXC_PRIO);
    CHECK_EQ(in.klass, PYDP_CLS_EXC_PRIO);
    CHECK_EQ(in.family, PYDP_AF_INET);
    CHECK(key_is(&in, PYDP_AF_INET, CLI4, VIP4, 0, 0, 112));
    CHECK(dst_is(&in, PYDP_AF_INET, VIP4));

    /* Ethernet padding: a 40-byte packet in a 60-byte frame */
    mk_tcp4(&t, CLI4, VIP4, 40000, 443, 0x10);
    tb_put(&t, 20);
    CHECK_EQ(t.n, 74);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.l3_len, 40);
    CHECK(key_is(&in, PYDP_AF_INET, CLI4, VIP4, 40000, 443, 6));
    mk_raw4(&t, 6, 0, 0);
    put16(t.b + 14 + 2, 20);
    tb_put(&t, 26);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);   /* TCP header in the padding, not in the packet */
}

static void
test_ipv4_fragments(void)
{
    struct pydp_pkt_info first, mid, last, plain;
    struct tb t;

    /* first fragment carries the TCP header, MF set */
    mk_tcp4(&t, CLI4, VIP4, 40000, 443, 0x18);
    tb_data(&t, 1460);
    put16(t.b + 14 + 6, 0x2000);
    tb_ip4_done(&t, 14);
    CHECK_EQ(parse(&t, &first), PYDP_CLS_IP);
    CHECK_EQ(first.flags, PYDP_PF_FRAGMENT);
    CHECK_EQ(first.tcp_flags, 0);
    CHECK_EQ(first.l4_proto, 6);
    CHECK(key_is(&first, PYDP_AF_INET, CLI4, VIP4, 0, 0, 6));

    mk_raw4(&t, 6, 0x2000 | 185, 1480);
    CHECK_EQ(parse(&t, &mid), PYDP_CLS_IP);
    CHECK_EQ(mid.flags, PYDP_PF_FRAGMENT);
    mk_raw4(&t, 6, 370, 100);
    CHECK_EQ(parse(&t, &last), PYDP_CLS_IP);
    CHECK_EQ(last.flags, PYDP_PF_FRAGMENT);
    CHECK(same_key(&first, &mid));
    CHECK(same_key(&first, &last));

    /* a last fragment too short to hold any L4 header is still fine */
    mk_raw4(&t, 17, 370, 1);
    CHECK_EQ(parse(&t, &last), PYDP_CLS_IP);
    CHECK(key_is(&last, PYDP_AF_INET, CLI4, VIP4, 0, 0, 17));

    /* an unfragmented packet of the same flow has ports */
    mk_tcp4(&t, CLI4, VIP4, 40000, 443, 0x10);
    CHECK_EQ(parse(&t, &plain), PYDP_CLS_IP);
    CHECK(!same_key(&first, &plain));

    /* fragmented ICMP: no ICMP parsing */
    mk_raw4(&t, 1, 0x2000, 3);
    CHECK_EQ(parse(&t, &mid), PYDP_CLS_IP);
    CHECK_EQ(mid.flags, PYDP_PF_FRAGMENT);
}

static void
test_ipv4_icmp(void)
{
    struct pydp_pkt_info in, flow;
    struct tb t;

    mk_icmp4(&t, 8, 0, 0x4242);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_ICMP_ECHO);
    CHECK_EQ(in.l4_proto, 1);
    CHECK(key_is(&in, PYDP_AF_INET, CLI4, VIP4, 0x4242, 0, 1));
    mk_icmp4(&t, 0, 0, 0x4243);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_ICMP_ECHO);
    CHECK(key_is(&in, PYDP_AF_INET, CLI4, VIP4, 0x4243, 0, 1));

    /* timestamp request: other type, no ports */
    mk_icmp4(&t, 13, 0, 0x4244);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, 0);
    CHECK(key_is(&in, PYDP_AF_INET, CLI4, VIP4, 0, 0, 1));

    /* fragmentation needed quoting the edge's TCP reply: same key as the client's flow */
    mk_tcp4(&t, CLI4, VIP4, 40000, 443, 0x10);
    CHECK_EQ(parse(&t, &flow), PYDP_CLS_IP);
    mk_icmp4_err(&t, 3, 4, 6, 0, 443, 40000, 8);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_ICMP_ERROR);
    CHECK_EQ(in.l4_proto, 1);
    CHECK_EQ(in.tcp_flags, 0);
    CHECK_EQ(in.family, PYDP_AF_INET);
    CHECK(key_is(&in, PYDP_AF_INET, CLI4, VIP4, 40000, 443, 6));
    CHECK(same_key(&in, &flow));
    CHECK(dst_is(&in, PYDP_AF_INET, VIP4));
    /* the quote may hold the whole TCP header */
    mk_icmp4_err(&t, 3, 4, 6, 0, 443, 40000, 20);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK(same_key(&in, &flow));

    /* host unreachable quoting UDP; time exceeded; parameter problem */
    mk_udp4(&t, CLI4, VIP4, 53000, 53);
    CHECK_EQ(parse(&t, &flow), PYDP_CLS_IP);
    mk_icmp4_err(&t, 3, 1, 17, 0, 53, 53000, 8);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_ICMP_ERROR);
    CHECK(same_key(&in, &flow));
    mk_icmp4_err(&t, 11, 0, 17, 0, 53, 53000, 8);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_ICMP_ERROR);
    CHECK(same_key(&in, &flow));
    mk_icmp4_err(&t, 12, 0, 6, 0, 443, 40000, 8);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_ICMP_ERROR);
    CHECK(key_is(&in, PYDP_AF_INET, CLI4, VIP4, 40000, 443, 6));

    /* quoted IKE / NAT-T / ESP */
    mk_icmp4_err(&t, 3, 4, 17, 0, 4500, 4500, 8);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_ICMP_ERROR | PYDP_PF_IPSEC);
    CHECK(key_is(&in, PYDP_AF_INET, CLI4, VIP4, 4500, 4500, 17));
    mk_icmp4_err(&t, 3, 4, 17, 0, 500, 32000, 8);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_ICMP_ERROR | PYDP_PF_IPSEC);
    mk_icmp4_err(&t, 3, 4, 50, 0, 0x1111, 0x2222, 8);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_ICMP_ERROR | PYDP_PF_IPSEC);
    CHECK(key_is(&in, PYDP_AF_INET, CLI4, VIP4, 0, 0, 50));

    /* quoted fragment: no ports */
    mk_icmp4_err(&t, 11, 1, 6, 0x2000, 443, 40000, 8);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_ICMP_ERROR | PYDP_PF_FRAGMENT);
    CHECK(key_is(&in, PYDP_AF_INET, CLI4, VIP4, 0, 0, 6));
    mk_icmp4_err(&t, 11, 1, 6, 100, 443, 40000, 0);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_ICMP_ERROR | PYDP_PF_FRAGMENT);

    /* quoted echo reply: same key as the client's echo request */
    mk_icmp4(&t, 8, 0, 0x7777);
    CHECK_EQ(parse(&t, &flow), PYDP_CLS_IP);
    mk_icmp4_err(&t, 3, 1, 1, 0, 0, 0, 8);
    t.b[14 + 20 + 8 + 20] = 0;              /* echo reply */
    put16(t.b + 14 + 20 + 8 + 20 + 4, 0x7777);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_ICMP_ERROR);
    CHECK(same_key(&in, &flow));
    /* quoted ICMP of another type: no identifier */
    t.b[14 + 20 + 8 + 20] = 13;
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK(key_is(&in, PYDP_AF_INET, CLI4, VIP4, 0, 0, 1));

    /* quoted protocol without ports, quote without L4 bytes */
    mk_icmp4_err(&t, 3, 1, 47, 0, 0, 0, 0);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK(key_is(&in, PYDP_AF_INET, CLI4, VIP4, 0, 0, 47));

    /* quoted header with options (IHL 6) */
    tb_reset(&t);
    tb_eth(&t, ETH_IPV4);
    tb_ip4(&t, RTR4, VIP4, 1, 0);
    tb_icmp(&t, 3, 4, 0, 1400);
    tb_ip4(&t, VIP4, CLI4, 6, 0);
    t.b[14 + 28] = 0x46;
    tb_put(&t, 4);
    put16(tb_put(&t, 8), 443);
    put16(t.b + t.n - 6, 40000);
    tb_ip4_done(&t, 14);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK(key_is(&in, PYDP_AF_INET, CLI4, VIP4, 40000, 443, 6));
}

static void
test_ipv4_malformed(void)
{
    struct pydp_pkt_info in;
    struct tb t;
    uint32_t n, bad;

    /* every truncation of a TCP/IPv4 frame */
    mk_tcp4(&t, CLI4, VIP4, 40000, 443, 0x02);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    for (bad = 0, n = 0; n < t.n; n++)
        bad += parse_n(t.b, n, &in) != PYDP_CLS_MALFORMED;
    CHECK_EQ(bad, 0);
    /* every IP total length too short for the TCP header, the frame left whole */
    for (bad = 0, n = 0; n < 40; n++) {
        put16(t.b + 14 + 2, n);
        bad += parse(&t, &in) != PYDP_CLS_MALFORMED;
    }
    CHECK_EQ(bad, 0);
    /* every truncation of a UDP and of an ICMP error frame */
    mk_udp4(&t, CLI4, VIP4, 1, 2);
    for (bad = 0, n = 0; n < t.n; n++)
        bad += parse_n(t.b, n, &in) != PYDP_CLS_MALFORMED;
    CHECK_EQ(bad, 0);
    mk_icmp4_err(&t, 3, 4, 6, 0, 443, 40000, 8);
    for (bad = 0, n = 0; n < t.n; n++)
        bad += parse_n(t.b, n, &in) != PYDP_CLS_MALFORMED;
    CHECK_EQ(bad, 0);
    /* ICMP error cut short by the IP total length: ICMP header, quoted IP header or quoted ports missing */
    for (bad = 0, n = 20; n < 20 + 8 + 20 + 8; n++) {
        put16(t.b + 14 + 2, n);
        bad += parse(&t, &in) != PYDP_CLS_MALFORMED;
    }
    CHECK_EQ(bad, 0);
    put16(t.b + 14 + 2, 56);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);

    /* quoted TCP/UDP/echo with fewer than 8 L4 bytes */
    mk_icmp4_err(&t, 3, 4, 6, 0, 443, 40000, 7);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    mk_icmp4_err(&t, 11, 0, 17, 0, 53, 5300, 4);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    mk_icmp4_err(&t, 11, 0, 1, 0, 0x0800, 0, 6);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    /* quoted header: IPv6 version, IHL < 5, IHL beyond the quote */
    mk_icmp4_err(&t, 3, 4, 6, 0, 443, 40000, 8);
    t.b[14 + 28] = 0x65;
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    t.b[14 + 28] = 0x44;
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    t.b[14 + 28] = 0x4f;
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    /* ICMP header shorter than 8 bytes */
    mk_icmp4(&t, 8, 0, 1);
    put16(t.b + 14 + 2, 27);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);

    /* bad version, IHL < 5, IHL beyond the frame, total length beyond the frame or below IHL */
    mk_tcp4(&t, CLI4, VIP4, 40000, 443, 0x02);
    t.b[14] = 0x55;
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    t.b[14] = 0x65;
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    for (n = 0; n < 5; n++) {
        t.b[14] = (uint8_t)(0x40 | n);
        CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    }
    t.b[14] = 0x4f;                          /* 60 bytes of header, 40 in the frame */
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    t.b[14] = 0x46;                          /* 24 bytes of header, fits, TCP then 16 bytes */
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    t.b[14] = 0x45;
    put16(t.b + 14 + 2, 41);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    put16(t.b + 14 + 2, 65535);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    put16(t.b + 14 + 2, 19);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    put16(t.b + 14 + 2, 40);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);

    /* TCP data offset < 5 and beyond the packet */
    for (n = 0; n < 5; n++) {
        t.b[14 + 20 + 12] = (uint8_t)(n << 4);
        CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    }
    t.b[14 + 20 + 12] = 0x60;
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    t.b[14 + 20 + 12] = 0x50;
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);

    /* UDP shorter than 8 bytes */
    mk_raw4(&t, 17, 0, 7);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    mk_raw4(&t, 17, 0, 8);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
}

/* ---- IPv6 ---- */

static void
test_ipv6_basic(void)
{
    struct pydp_pkt_info in, flow;
    struct tb t;
    uint32_t ip;

    mk_tcp6(&t, CLI6, VIP6, 40000, 443, 0x02);
    memset(&in, 0x5a, sizeof(in));
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.family, PYDP_AF_INET6);
    CHECK_EQ(in.ethertype, ETH_IPV6);
    CHECK_EQ(in.l3_off, 14);
    CHECK_EQ(in.l3_len, 60);
    CHECK_EQ(in.l4_proto, 6);
    CHECK_EQ(in.flags, 0);
    CHECK_EQ(in.tcp_flags, 0x02);
    CHECK_EQ(in.ttl, 64);
    CHECK(key_is(&in, PYDP_AF_INET6, CLI6, VIP6, 40000, 443, 6));
    CHECK(dst_is(&in, PYDP_AF_INET6, VIP6));
    mk_tcp6(&t, CLI6, VIP6, 40000, 443, 0x12);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.tcp_flags, 0x12);
    mk_tcp6(&t, CLI6, VIP6, 40000, 443, 0x01);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.tcp_flags, 0x01);

    /* UDP, IKE, NAT-T, ESP, AH */
    mk_udp6(&t, CLI6, VIP6, 53000, 53);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, 0);
    CHECK(key_is(&in, PYDP_AF_INET6, CLI6, VIP6, 53000, 53, 17));
    mk_udp6(&t, CLI6, VIP6, 500, 500);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_IPSEC);
    mk_udp6(&t, CLI6, VIP6, 40000, 4500);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_IPSEC);
    CHECK(key_is(&in, PYDP_AF_INET6, CLI6, VIP6, 40000, 4500, 17));
    mk_raw6(&t, 50, 40);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_IPSEC);
    CHECK(key_is(&in, PYDP_AF_INET6, CLI6, VIP6, 0, 0, 50));
    mk_raw6(&t, 51, 40);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_IPSEC);
    CHECK(key_is(&in, PYDP_AF_INET6, CLI6, VIP6, 0, 0, 51));

    /* no next header, another protocol, ICMP (v4) inside IPv6 */
    mk_raw6(&t, 59, 0);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK(key_is(&in, PYDP_AF_INET6, CLI6, VIP6, 0, 0, 59));
    mk_raw6(&t, 132, 12);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK(key_is(&in, PYDP_AF_INET6, CLI6, VIP6, 0, 0, 132));
    mk_raw6(&t, 1, 2);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK(key_is(&in, PYDP_AF_INET6, CLI6, VIP6, 0, 0, 1));

    /* VRRPv3 over IPv6 */
    mk_raw6(&t, 112, 12);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_EXC_PRIO);
    CHECK(key_is(&in, PYDP_AF_INET6, CLI6, VIP6, 0, 0, 112));

    /* hop-by-hop + destination options before TCP */
    mk_tcp6(&t, CLI6, VIP6, 40000, 443, 0x10);
    CHECK_EQ(parse(&t, &flow), PYDP_CLS_IP);
    tb_reset(&t);
    tb_eth(&t, ETH_IPV6);
    ip = tb_ip6(&t, CLI6, VIP6, 0);
    tb_ext6(&t, 60, 0);
    tb_ext6(&t, 6, 2);
    tb_tcp(&t, 40000, 443, 0x10);
    tb_ip6_done(&t, ip);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.l4_proto, 6);
    CHECK_EQ(in.l3_len, 40 + 8 + 24 + 20);
    CHECK_EQ(in.tcp_flags, 0x10);
    CHECK(same_key(&in, &flow));
    /* routing header before UDP */
    tb_reset(&t);
    tb_eth(&t, ETH_IPV6);
    ip = tb_ip6(&t, CLI6, VIP6, 43);
    tb_ext6(&t, 17, 2);
    tb_udp(&t, 1000, 2000, 0);
    tb_ip6_done(&t, ip);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK(key_is(&in, PYDP_AF_INET6, CLI6, VIP6, 1000, 2000, 17));
    /* destination options before ESP */
    tb_reset(&t);
    tb_eth(&t, ETH_IPV6);
    ip = tb_ip6(&t, CLI6, VIP6, 60);
    tb_ext6(&t, 50, 0);
    tb_data(&t, 16);
    tb_ip6_done(&t, ip);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_IPSEC);
    CHECK(key_is(&in, PYDP_AF_INET6, CLI6, VIP6, 0, 0, 50));
    /* exactly 8 extension headers */
    tb_reset(&t);
    tb_eth(&t, ETH_IPV6);
    ip = tb_ip6(&t, CLI6, VIP6, 60);
    for (int i = 0; i < 7; i++)
        tb_ext6(&t, 60, 0);
    tb_ext6(&t, 6, 0);
    tb_tcp(&t, 40000, 443, 0x10);
    tb_ip6_done(&t, ip);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK(same_key(&in, &flow));

    /* Ethernet padding */
    mk_raw6(&t, 59, 0);
    tb_put(&t, 6);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.l3_len, 40);
}

static void
test_ipv6_fragments(void)
{
    struct pydp_pkt_info first, later, in;
    struct tb t;
    uint32_t ip;

    tb_reset(&t);
    tb_eth(&t, ETH_IPV6);
    ip = tb_ip6(&t, CLI6, VIP6, 44);
    tb_frag6(&t, 17, 0, 1);
    tb_udp(&t, 5000, 6000, 1000);
    tb_ip6_done(&t, ip);
    CHECK_EQ(parse(&t, &first), PYDP_CLS_IP);
    CHECK_EQ(first.flags, PYDP_PF_FRAGMENT);
    CHECK_EQ(first.l4_proto, 17);
    CHECK(key_is(&first, PYDP_AF_INET6, CLI6, VIP6, 0, 0, 17));

    tb_reset(&t);
    tb_eth(&t, ETH_IPV6);
    ip = tb_ip6(&t, CLI6, VIP6, 44);
    tb_frag6(&t, 17, 126, 0);
    tb_data(&t, 3);
    tb_ip6_done(&t, ip);
    CHECK_EQ(parse(&t, &later), PYDP_CLS_IP);
    CHECK_EQ(later.flags, PYDP_PF_FRAGMENT);
    CHECK(same_key(&first, &later));

    /* hop-by-hop then fragment; the walk stops at the fragment header */
    tb_reset(&t);
    tb_eth(&t, ETH_IPV6);
    ip = tb_ip6(&t, CLI6, VIP6, 0);
    tb_ext6(&t, 44, 0);
    tb_frag6(&t, 60, 10, 1);
    tb_ext6(&t, 6, 0);
    tb_ip6_done(&t, ip);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_FRAGMENT);
    CHECK_EQ(in.l4_proto, 60);
    CHECK(key_is(&in, PYDP_AF_INET6, CLI6, VIP6, 0, 0, 60));

    /* truncated fragment header */
    tb_reset(&t);
    tb_eth(&t, ETH_IPV6);
    ip = tb_ip6(&t, CLI6, VIP6, 44);
    tb_frag6(&t, 17, 0, 1);
    t.n -= 1;
    tb_ip6_done(&t, ip);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
}

static void
test_ipv6_icmp(void)
{
    struct pydp_pkt_info in, flow;
    struct tb t;
    uint32_t ip, n;

    mk_icmp6(&t, 128, 0, 0x1001);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_ICMP_ECHO);
    CHECK_EQ(in.l4_proto, 58);
    CHECK(key_is(&in, PYDP_AF_INET6, CLI6, VIP6, 0x1001, 0, 58));
    mk_icmp6(&t, 129, 0, 0x1002);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_ICMP_ECHO);
    CHECK(key_is(&in, PYDP_AF_INET6, CLI6, VIP6, 0x1002, 0, 58));

    /* neighbour discovery: router/neighbour solicitation/advertisement, redirect */
    for (n = 133; n <= 137; n++) {
        mk_icmp6(&t, (uint8_t)n, 0, 0);
        CHECK_EQ(parse(&t, &in), PYDP_CLS_EXC_PRIO);
        CHECK_EQ(in.klass, PYDP_CLS_EXC_PRIO);
        CHECK_EQ(in.flags, PYDP_PF_ND);
        CHECK_EQ(in.family, PYDP_AF_INET6);
    }
    /* MLD (130) and 138: other types */
    mk_icmp6(&t, 130, 0, 0x99);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, 0);
    CHECK(key_is(&in, PYDP_AF_INET6, CLI6, VIP6, 0, 0, 58));
    mk_icmp6(&t, 138, 0, 0x99);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, 0);

    /* packet too big quoting UDP */
    mk_udp6(&t, CLI6, VIP6, 53000, 443);
    CHECK_EQ(parse(&t, &flow), PYDP_CLS_IP);
    mk_icmp6_err(&t, 2, 0, 17, 443, 53000, 8);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_ICMP_ERROR);
    CHECK_EQ(in.l4_proto, 58);
    CHECK(same_key(&in, &flow));
    CHECK(dst_is(&in, PYDP_AF_INET6, VIP6));
    /* unreachable, time exceeded, parameter problem quoting TCP */
    mk_tcp6(&t, CLI6, VIP6, 40000, 443, 0x10);
    CHECK_EQ(parse(&t, &flow), PYDP_CLS_IP);
    for (n = 1; n <= 4; n++) {
        mk_icmp6_err(&t, (uint8_t)n, 0, 6, 443, 40000, 8);
        CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
        CHECK_EQ(in.flags, PYDP_PF_ICMP_ERROR);
        CHECK(same_key(&in, &flow));
    }
    /* quoted NAT-T, AH */
    mk_icmp6_err(&t, 2, 0, 17, 4500, 4500, 8);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_ICMP_ERROR | PYDP_PF_IPSEC);
    mk_icmp6_err(&t, 2, 0, 51, 0x1234, 0x5678, 8);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_ICMP_ERROR | PYDP_PF_IPSEC);
    CHECK(key_is(&in, PYDP_AF_INET6, CLI6, VIP6, 0, 0, 51));
    /* quoted echo reply */
    mk_icmp6(&t, 128, 0, 0x3131);
    CHECK_EQ(parse(&t, &flow), PYDP_CLS_IP);
    mk_icmp6_err(&t, 1, 3, 58, 0, 0, 8);
    t.b[14 + 40 + 8 + 40] = 129;
    put16(t.b + 14 + 40 + 8 + 40 + 4, 0x3131);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_ICMP_ERROR);
    CHECK(same_key(&in, &flow));

    /* quoted header with a destination-options header, then with a fragment header */
    mk_tcp6(&t, CLI6, VIP6, 40000, 443, 0x10);
    CHECK_EQ(parse(&t, &flow), PYDP_CLS_IP);
    tb_reset(&t);
    tb_eth(&t, ETH_IPV6);
    ip = tb_ip6(&t, RTR6, VIP6, 58);
    tb_icmp(&t, 2, 0, 0, 1280);
    tb_ip6(&t, VIP6, CLI6, 60);
    tb_ext6(&t, 6, 1);
    put16(tb_put(&t, 8), 443);
    put16(t.b + t.n - 6, 40000);
    tb_ip6_done(&t, ip);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK(same_key(&in, &flow));
    t.n -= 1;                                /* quoted ports cut */
    tb_ip6_done(&t, ip);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    t.n -= 8;                                /* quoted extension header overruns */
    tb_ip6_done(&t, ip);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);

    tb_reset(&t);
    tb_eth(&t, ETH_IPV6);
    ip = tb_ip6(&t, RTR6, VIP6, 58);
    tb_icmp(&t, 2, 0, 0, 1280);
    tb_ip6(&t, VIP6, CLI6, 44);
    tb_frag6(&t, 6, 0, 1);
    tb_ip6_done(&t, ip);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    CHECK_EQ(in.flags, PYDP_PF_ICMP_ERROR | PYDP_PF_FRAGMENT);
    CHECK(key_is(&in, PYDP_AF_INET6, CLI6, VIP6, 0, 0, 6));
}

static void
test_ipv6_malformed(void)
{
    struct pydp_pkt_info in;
    struct tb t;
    uint32_t n, bad, ip;

    /* every truncation of TCP/IPv6, of TCP/IPv6 behind extension headers, of an ICMPv6 error */
    mk_tcp6(&t, CLI6, VIP6, 40000, 443, 0x02);
    for (bad = 0, n = 0; n < t.n; n++)
        bad += parse_n(t.b, n, &in) != PYDP_CLS_MALFORMED;
    CHECK_EQ(bad, 0);
    /* every payload length too short for the TCP header */
    for (bad = 0, n = 0; n < 20; n++) {
        put16(t.b + 14 + 4, n);
        bad += parse(&t, &in) != PYDP_CLS_MALFORMED;
    }
    CHECK_EQ(bad, 0);

    tb_reset(&t);
    tb_eth(&t, ETH_IPV6);
    ip = tb_ip6(&t, CLI6, VIP6, 0);
    tb_ext6(&t, 60, 1);
    tb_ext6(&t, 6, 0);
    tb_tcp(&t, 40000, 443, 0x02);
    tb_ip6_done(&t, ip);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    for (bad = 0, n = 0; n < t.n; n++)
        bad += parse_n(t.b, n, &in) != PYDP_CLS_MALFORMED;
    CHECK_EQ(bad, 0);
    for (bad = 0, n = 0; n < 16 + 8 + 20; n++) {
        put16(t.b + 14 + 4, n);
        bad += parse(&t, &in) != PYDP_CLS_MALFORMED;
    }
    CHECK_EQ(bad, 0);

    mk_icmp6_err(&t, 2, 0, 17, 443, 53000, 8);
    for (bad = 0, n = 0; n < t.n; n++)
        bad += parse_n(t.b, n, &in) != PYDP_CLS_MALFORMED;
    CHECK_EQ(bad, 0);
    for (bad = 0, n = 0; n < 8 + 40 + 8; n++) {
        put16(t.b + 14 + 4, n);
        bad += parse(&t, &in) != PYDP_CLS_MALFORMED;
    }
    CHECK_EQ(bad, 0);

    /* bad version, payload length beyond the frame */
    mk_tcp6(&t, CLI6, VIP6, 40000, 443, 0x02);
    t.b[14] = 0x40;
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    t.b[14] = 0x70;
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    t.b[14] = 0x60;
    put16(t.b + 14 + 4, 21);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    put16(t.b + 14 + 4, 65535);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    put16(t.b + 14 + 4, 20);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    /* TCP doff < 5 */
    t.b[14 + 40 + 12] = 0x40;
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    /* quoted IPv4 in an ICMPv6 error */
    mk_icmp6_err(&t, 1, 0, 6, 443, 40000, 8);
    t.b[14 + 48] = 0x45;
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);

    /* nine extension headers */
    tb_reset(&t);
    tb_eth(&t, ETH_IPV6);
    ip = tb_ip6(&t, CLI6, VIP6, 60);
    for (n = 0; n < 8; n++)
        tb_ext6(&t, 60, 0);
    tb_ext6(&t, 6, 0);
    tb_tcp(&t, 40000, 443, 0x10);
    tb_ip6_done(&t, ip);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    /* eight then a fragment header: nine */
    t.b[14 + 40 + 7 * 8] = 44;
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);

    /* extension header overrunning the payload (still inside the frame) */
    tb_reset(&t);
    tb_eth(&t, ETH_IPV6);
    ip = tb_ip6(&t, CLI6, VIP6, 0);
    tb_ext6(&t, 6, 0);
    tb_tcp(&t, 40000, 443, 0x10);
    tb_ip6_done(&t, ip);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_IP);
    t.b[14 + 40 + 1] = 3;                    /* 32 bytes, 28 left */
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    t.b[14 + 40 + 1] = 255;
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    t.b[14 + 40 + 1] = 0;
    put16(t.b + 14 + 4, 7);                  /* extension header longer than the payload */
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
    put16(t.b + 14 + 4, 8);                  /* fits, TCP missing */
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);

    /* ICMPv6 shorter than 8 bytes, ND included */
    mk_icmp6(&t, 135, 0, 0);
    put16(t.b + 14 + 4, 7);
    CHECK_EQ(parse(&t, &in), PYDP_CLS_MALFORMED);
}

/* ---- random frames ---- */

static uint64_t rnd_state = 0x9e3779b97f4a7c15ull;

static uint32_t
rnd(void)
{
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 7;
    rnd_state ^= rnd_state << 17;
    return (uint32_t)(rnd_state >> 16);
}

static void
test_random(void)
{
    static struct tb seeds[12];
    struct pydp_pkt_info in;
    uint8_t buf[256];
    uint32_t i, j, len, nmut, bad = 0, counts[4] = { 0, 0, 0, 0 };
    uint32_t ip;
    int k;

    mk_tcp4(&seeds[0], CLI4, VIP4, 40000, 443, 0x02);
    mk_udp4(&seeds[1], CLI4, VIP4, 500, 4500);
    mk_icmp4(&seeds[2], 8, 0, 77);
    mk_icmp4_err(&seeds[3], 3, 4, 6, 0, 443, 40000, 8);
    mk_raw4(&seeds[4], 6, 0x2000, 20);
    mk_tcp6(&seeds[5], CLI6, VIP6, 40000, 443, 0x02);
    mk_udp6(&seeds[6], CLI6, VIP6, 1, 2);
    mk_icmp6(&seeds[7], 135, 0, 0);
    mk_icmp6_err(&seeds[8], 2, 0, 17, 443, 53000, 8);
    tb_reset(&seeds[9]);
    tb_eth(&seeds[9], ETH_IPV6);
    ip = tb_ip6(&seeds[9], CLI6, VIP6, 0);
    tb_ext6(&seeds[9], 60, 0);
    tb_ext6(&seeds[9], 44, 0);
    tb_frag6(&seeds[9], 6, 0, 1);
    tb_tcp(&seeds[9], 1, 2, 0x02);
    tb_ip6_done(&seeds[9], ip);
    mk_icmp4_err(&seeds[10], 11, 0, 1, 0, 0, 0, 8);
    tb_reset(&seeds[11]);
    tb_eth(&seeds[11], 0x0806);
    tb_data(&seeds[11], 28);

    for (i = 0; i < 200000; i++) {
        const struct tb *s = &seeds[rnd() % 12];

        len = rnd() % 201;
        for (j = 0; j < len; j++)
            buf[j] = j < s->n ? s->b[j] : (uint8_t)rnd();
        if (i % 8 == 7) {
            /* pure noise behind an IP ethertype */
            for (j = 14; j < len; j++)
                buf[j] = (uint8_t)rnd();
        }
        nmut = rnd() % 5;
        for (j = 0; len && j < nmut; j++) {
            uint32_t at = rnd() % len;

            /* mostly in the headers */
            if (rnd() & 1)
                at %= len < 80 ? len : 80;
            buf[at] = (rnd() & 3) ? (uint8_t)rnd() : (uint8_t)(buf[at] ^ (1u << (rnd() & 7)));
        }
        k = parse_n(buf, len, &in);
        if (k < PYDP_CLS_MALFORMED || k > PYDP_CLS_EXC_PRIO || k != in.klass) {
            bad++;
            continue;
        }
        counts[k]++;
        if (k == PYDP_CLS_IP &&
            ((in.family != PYDP_AF_INET && in.family != PYDP_AF_INET6) || in.key.family != in.family ||
             (uint32_t)in.l3_off + in.l3_len > len || in.key.pad0 != 0))
            bad++;
    }
    CHECK_EQ(bad, 0);
    /* the mutations reach every class */
    CHECK(counts[PYDP_CLS_MALFORMED] > 0);
    CHECK(counts[PYDP_CLS_IP] > 1000);
    CHECK(counts[PYDP_CLS_EXC] > 0);
    CHECK(counts[PYDP_CLS_EXC_PRIO] > 0);
}

/* ---- the exception-path class (pydp_exc_class) ---- */

static int
exc_class(struct tb *t)
{
    struct pydp_pkt_info in;

    parse(t, &in);
    return pydp_exc_class(&in);
}

static void
test_exc_class(void)
{
    struct pydp_pkt_info in;
    struct tb t;
    uint32_t n;

    /* ARP and IPv6 neighbour discovery: the ARP class */
    tb_reset(&t);
    tb_eth(&t, 0x0806);
    tb_data(&t, 28);
    CHECK_EQ(exc_class(&t), PYDP_EXC_ARP);
    for (n = 133; n <= 137; n++) {
        mk_icmp6(&t, (uint8_t)n, 0, 0);
        CHECK_EQ(exc_class(&t), PYDP_EXC_ARP);
    }

    /* CARP / VRRP with TTL (hop limit) 255: the CARP class; any other TTL was forged off the link: best effort */
    mk_raw4(&t, 112, 0, 36);
    CHECK_EQ(exc_class(&t), PYDP_EXC_BULK);          /* the builder's TTL is 64 */
    t.b[14 + 8] = 255;
    CHECK_EQ(parse(&t, &in), PYDP_CLS_EXC_PRIO);
    CHECK_EQ(in.ttl, 255);
    CHECK_EQ(pydp_exc_class(&in), PYDP_EXC_CARP);
    t.b[14 + 8] = 254;
    CHECK_EQ(exc_class(&t), PYDP_EXC_BULK);
    mk_raw6(&t, 112, 12);
    CHECK_EQ(exc_class(&t), PYDP_EXC_BULK);
    t.b[14 + 7] = 255;
    CHECK_EQ(exc_class(&t), PYDP_EXC_CARP);

    /* BGP either way, BFD control (single hop, multihop): the control class */
    mk_tcp4(&t, CLI4, VIP4, 40000, 179, 0x02);
    CHECK_EQ(exc_class(&t), PYDP_EXC_CONTROL);
    mk_tcp4(&t, CLI4, VIP4, 179, 40000, 0x12);
    CHECK_EQ(exc_class(&t), PYDP_EXC_CONTROL);
    mk_tcp6(&t, CLI6, VIP6, 40000, 179, 0x10);
    CHECK_EQ(exc_class(&t), PYDP_EXC_CONTROL);
    mk_udp4(&t, CLI4, VIP4, 49152, 3784);
    CHECK_EQ(exc_class(&t), PYDP_EXC_CONTROL);
    mk_udp6(&t, CLI6, VIP6, 49152, 4784);
    CHECK_EQ(exc_class(&t), PYDP_EXC_CONTROL);

    /* not control: UDP from port 3784 or to 179, TCP to 3784, other ports, a fragment, an ICMP error quoting BGP */
    mk_udp4(&t, CLI4, VIP4, 3784, 49152);
    CHECK_EQ(exc_class(&t), PYDP_EXC_BULK);
    mk_udp4(&t, CLI4, VIP4, 49152, 179);
    CHECK_EQ(exc_class(&t), PYDP_EXC_BULK);
    mk_tcp4(&t, CLI4, VIP4, 40000, 3784, 0x02);
    CHECK_EQ(exc_class(&t), PYDP_EXC_BULK);
    mk_tcp4(&t, CLI4, VIP4, 40000, 22, 0x02);
    CHECK_EQ(exc_class(&t), PYDP_EXC_BULK);
    mk_raw4(&t, 6, 0x2000, 20);
    CHECK_EQ(exc_class(&t), PYDP_EXC_BULK);
    mk_icmp4_err(&t, 3, 4, 6, 0, 179, 40000, 8);
    CHECK_EQ(exc_class(&t), PYDP_EXC_BULK);

    /* ICMP echo, other protocols, non-IP (LLDP): best effort */
    mk_icmp4(&t, 8, 0, 1);
    CHECK_EQ(exc_class(&t), PYDP_EXC_BULK);
    mk_icmp6(&t, 128, 0, 1);
    CHECK_EQ(exc_class(&t), PYDP_EXC_BULK);
    mk_raw4(&t, 47, 0, 24);
    CHECK_EQ(exc_class(&t), PYDP_EXC_BULK);
    tb_reset(&t);
    tb_eth(&t, 0x88cc);
    tb_data(&t, 46);
    CHECK_EQ(exc_class(&t), PYDP_EXC_BULK);
}

int
main(void)
{
    test_ethernet();
    test_ipv4_tcp_udp();
    test_ipv4_fragments();
    test_ipv4_icmp();
    test_ipv4_malformed();
    test_ipv6_basic();
    test_ipv6_fragments();
    test_ipv6_icmp();
    test_ipv6_malformed();
    test_random();
    test_exc_class();
    return check_report("parse");
}
