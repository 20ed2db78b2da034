/* test_dsr.c - unit tests of the DSR rewrites (dsr.c): l2 MAC rewrite, IP-in-IP encapsulation, outer sources. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "pydp.h"
#include "check.h"

#define ETH_LEN 14

static const uint8_t MAC_DST[6] = { 0x02, 0x00, 0x00, 0x00, 0x00, 0x21 };
static const uint8_t MAC_SRC[6] = { 0x02, 0x00, 0x00, 0x00, 0x00, 0x01 };

/* ---- helpers ---- */

/* Fills n bytes with a pattern that differs from byte to byte (so a shifted copy would not match). */
static void
fill_pattern(uint8_t *p, size_t n, uint8_t seed)
{
    size_t i;

    for (i = 0; i < n; i++)
        p[i] = (uint8_t)(seed + i * 7u + (i >> 3));
}

/* One's-complement sum of a header, folded: 0xffff when the checksum inside it is right. */
static uint16_t
ones_sum(const uint8_t *h, size_t n)
{
    uint32_t sum = 0;
    size_t i;

    for (i = 0; i + 1 < n; i += 2)
        sum += (uint32_t)h[i] << 8 | h[i + 1];
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum;
}

static uint16_t
be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

/* An Ethernet + IPv4 frame at buf + room: TOS tos, total length ip_len, the rest patterned. */
static uint8_t *
make_frame4(uint8_t *buf, size_t room, uint8_t tos, uint16_t ip_len)
{
    uint8_t *frame = buf + room;
    uint8_t *ip = frame + ETH_LEN;

    fill_pattern(buf, room, 0xA5);
    memset(frame, 0x11, 6);
    memset(frame + 6, 0x22, 6);
    frame[12] = 0x08;
    frame[13] = 0x00;
    fill_pattern(ip, ip_len, 0x31);
    ip[0] = 0x45;
    ip[1] = tos;
    ip[2] = (uint8_t)(ip_len >> 8);
    ip[3] = (uint8_t)ip_len;
    ip[9] = 6;
    return frame;
}

/* An Ethernet + IPv6 frame at buf + room: traffic class tc, flow label patterned, ip_len bytes of IPv6 packet. */
static uint8_t *
make_frame6(uint8_t *buf, size_t room, uint8_t tc, uint16_t ip_len)
{
    uint8_t *frame = buf + room;
    uint8_t *ip = frame + ETH_LEN;

    fill_pattern(buf, room, 0x5A);
    memset(frame, 0x33, 6);
    memset(frame + 6, 0x44, 6);
    frame[12] = 0x86;
    frame[13] = 0xdd;
    fill_pattern(ip, ip_len, 0x77);
    ip[0] = (uint8_t)(0x60 | (tc >> 4));
    ip[1] = (uint8_t)((tc << 4) | 0x0b);      /* low nibble: flow label bits, must not leak into the outer TC */
    ip[4] = (uint8_t)((ip_len - 40) >> 8);
    ip[5] = (uint8_t)(ip_len - 40);
    ip[6] = 17;
    ip[7] = 33;
    return frame;
}

static int
ip4_host_bits(const uint8_t *a, uint32_t bits)
{
    uint32_t v = (uint32_t)a[0] << 24 | (uint32_t)a[1] << 16 | (uint32_t)a[2] << 8 | a[3];
    uint32_t host = bits >= 32 ? 0 : 0xffffffffu >> bits;

    return (int)(v & host);
}

/* ---- l2 ---- */

static void
test_l2(void)
{
    uint8_t frame[128], before[128];
    const uint8_t dst[6] = { 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff };
    const uint8_t src[6] = { 0x02, 0x12, 0x34, 0x56, 0x78, 0x9a };

    fill_pattern(frame, sizeof(frame), 3);
    memcpy(before, frame, sizeof(frame));
    pydp_dsr_l2(frame, dst, src);
    CHECK_MEM(frame, dst, 6);
    CHECK_MEM(frame + 6, src, 6);
    CHECK_MEM(frame + 12, before + 12, sizeof(frame) - 12);   /* only the 12 MAC bytes change */

    /* the same MACs again: idempotent */
    memcpy(before, frame, sizeof(frame));
    pydp_dsr_l2(frame, dst, src);
    CHECK_MEM(frame, before, sizeof(frame));
}

/* ---- IPv4 in IPv4 ---- */

static void
check_encap4(uint8_t tos, uint16_t inner_len)
{
    static uint8_t buf[20 + ETH_LEN + 1600];
    uint8_t inner_copy[1600];
    const uint8_t src[4] = { 192, 0, 2, 77 };
    const uint8_t dst[4] = { 10, 20, 30, 40 };
    uint8_t *frame = make_frame4(buf, 20, tos, inner_len);
    uint8_t *out = frame - 20;
    uint8_t *ip = out + ETH_LEN;
    int r;

    memcpy(inner_copy, frame + ETH_LEN, inner_len);
    r = pydp_dsr_encap(out, PYDP_AF_INET, src, dst, inner_len, MAC_DST, MAC_SRC);
    CHECK_EQ(r, 20);
    CHECK_MEM(out, MAC_DST, 6);
    CHECK_MEM(out + 6, MAC_SRC, 6);
    CHECK_EQ(be16(out + 12), 0x0800);
    CHECK_EQ(ip[0], 0x45);
    CHECK_EQ(ip[1], tos);
    CHECK_EQ(be16(ip + 2), inner_len + 20);
    CHECK((ip[6] & 0x40) != 0);                 /* DF */
    CHECK_EQ(ip[6] & 0x20, 0);                  /* not MF */
    CHECK_EQ(be16(ip + 6) & 0x1fff, 0);         /* no fragment offset */
    CHECK_EQ(ip[8], 64);
    CHECK_EQ(ip[9], 4);
    CHECK_EQ(ones_sum(ip, 20), 0xffff);
    CHECK_MEM(ip + 12, src, 4);
    CHECK_MEM(ip + 16, dst, 4);
    CHECK_MEM(out + 34, inner_copy, inner_len);  /* the inner packet has not moved or changed */
}

static void
test_encap4(void)
{
    uint8_t buf[20 + ETH_LEN + 64];
    const uint8_t a[4] = { 1, 2, 3, 4 };
    uint8_t *frame;
    uint16_t big = 0xffff - 20;

    check_encap4(0x00, 20);
    check_encap4(0xb8, 60);              /* EF DSCP */
    check_encap4(0x03, 1500);            /* ECN CE */
    check_encap4(0xff, 1480);

    /* the checksum of a header whose sum needs folding (large addresses, large length) */
    {
        static uint8_t b2[20 + ETH_LEN + 1600];
        const uint8_t s[4] = { 0xff, 0xff, 0xff, 0xfe };
        const uint8_t d[4] = { 0xff, 0xff, 0xff, 0xfd };
        uint8_t *f = make_frame4(b2, 20, 0xfc, 1580);
        uint8_t *out = f - 20;

        CHECK_EQ(pydp_dsr_encap(out, PYDP_AF_INET, s, d, 1580, MAC_DST, MAC_SRC), 20);
        CHECK_EQ(ones_sum(out + ETH_LEN, 20), 0xffff);
    }

    /* the largest inner length that fits, and the first that does not */
    frame = make_frame4(buf, 20, 0, 40);
    CHECK_EQ(pydp_dsr_encap(frame - 20, PYDP_AF_INET, a, a, big, MAC_DST, MAC_SRC), 20);
    CHECK_EQ(be16(frame - 20 + ETH_LEN + 2), 0xffff);
    CHECK_EQ(ones_sum(frame - 20 + ETH_LEN, 20), 0xffff);
    frame = make_frame4(buf, 20, 0, 40);
    CHECK_EQ(pydp_dsr_encap(frame - 20, PYDP_AF_INET, a, a, (uint16_t)(big + 1), MAC_DST, MAC_SRC), -1);
    CHECK_EQ(pydp_dsr_encap(frame - 20, PYDP_AF_INET, a, a, 0xffff, MAC_DST, MAC_SRC), -1);
}

/* ---- IPv6 in IPv6 ---- */

static void
check_encap6(uint8_t tc, uint16_t inner_len)
{
    static uint8_t buf[40 + ETH_LEN + 1600];
    uint8_t inner_copy[1600];
    const uint8_t src[16] = { 0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x79 };
    const uint8_t dst[16] = { 0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x21 };
    uint8_t *frame = make_frame6(buf, 40, tc, inner_len);
    uint8_t *out = frame - 40;
    uint8_t *ip = out + ETH_LEN;
    int r;

    memcpy(inner_copy, frame + ETH_LEN, inner_len);
    r = pydp_dsr_encap(out, PYDP_AF_INET6, src, dst, inner_len, MAC_DST, MAC_SRC);
    CHECK_EQ(r, 40);
    CHECK_MEM(out, MAC_DST, 6);
    CHECK_MEM(out + 6, MAC_SRC, 6);
    CHECK_EQ(be16(out + 12), 0x86dd);
    CHECK_EQ(ip[0] >> 4, 6);
    CHECK_EQ((uint8_t)((ip[0] << 4) | (ip[1] >> 4)), tc);   /* traffic class copied */
    CHECK_EQ(be16(ip + 4), inner_len);
    CHECK_EQ(ip[6], 41);
    CHECK_EQ(ip[7], 64);
    CHECK_MEM(ip + 8, src, 16);
    CHECK_MEM(ip + 24, dst, 16);
    CHECK_MEM(out + 54, inner_copy, inner_len);
}

static void
test_encap6(void)
{
    check_encap6(0x00, 40);
    check_encap6(0xb8, 100);
    check_encap6(0x01, 1280);
    check_encap6(0xff, 1460);
}

static void
test_encap_bad_family(void)
{
    uint8_t buf[64 + ETH_LEN + 64];
    const uint8_t a[16] = { 1 };

    fill_pattern(buf, sizeof(buf), 9);
    CHECK_EQ(pydp_dsr_encap(buf, PYDP_AF_NONE, a, a, 40, MAC_DST, MAC_SRC), -1);
    CHECK_EQ(pydp_dsr_encap(buf, 5, a, a, 40, MAC_DST, MAC_SRC), -1);
    CHECK_EQ(pydp_dsr_encap(buf, 255, a, a, 40, MAC_DST, MAC_SRC), -1);
}

/* ---- IP-in-IP outer source ---- */

static uint32_t
mix32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

static void
test_ipip_source4(void)
{
    struct pydp_config cfg;
    uint8_t out[16];
    uint32_t i, h;
    int bad_prefix = 0, bad_host = 0, seen[256];
    int distinct = 0;
    const uint32_t special[] = { 0, 1, 2, 0xfd, 0xfe, 0xff, 0x100, 0x1ff, 0xffffff00u, 0xffffffffu };

    pydp_config_defaults(&cfg);
    cfg.ipip_src4[0] = 192;
    cfg.ipip_src4[1] = 0;
    cfg.ipip_src4[2] = 2;
    cfg.ipip_src4[3] = 0;
    cfg.ipip_src4_bits = 24;

    memset(seen, 0, sizeof(seen));
    for (i = 0; i < 20000; i++) {
        h = i < sizeof(special) / sizeof(special[0]) ? special[i] : mix32(i);
        memset(out, 0xee, sizeof(out));
        pydp_ipip_source(&cfg, PYDP_AF_INET, h, out);
        if (out[0] != 192 || out[1] != 0 || out[2] != 2)
            bad_prefix++;
        if (out[3] == 0 || out[3] == 0xff)
            bad_host++;
        if (!seen[out[3]]) {
            seen[out[3]] = 1;
            distinct++;
        }
    }
    CHECK_EQ(bad_prefix, 0);
    CHECK_EQ(bad_host, 0);
    CHECK(distinct >= 250);              /* the host byte really comes from the hash: nearly all 254 values */

    /* host bits follow the hash where the hash is not all-zeros/all-ones */
    pydp_ipip_source(&cfg, PYDP_AF_INET, 0x12345678u, out);
    CHECK_EQ(out[3], 0x78);
    pydp_ipip_source(&cfg, PYDP_AF_INET, 0xabcdef01u, out);
    CHECK_EQ(out[3], 0x01);

    /* deterministic */
    {
        uint8_t a[4], b[4];

        pydp_ipip_source(&cfg, PYDP_AF_INET, 0xdeadbeefu, a);
        pydp_ipip_source(&cfg, PYDP_AF_INET, 0xdeadbeefu, b);
        CHECK_MEM(a, b, 4);
    }

    /* host bits in the configured prefix are ignored */
    cfg.ipip_src4[3] = 0x99;
    pydp_ipip_source(&cfg, PYDP_AF_INET, 0x12345642u, out);
    CHECK_EQ(out[0], 192);
    CHECK_EQ(out[2], 2);
    CHECK_EQ(out[3], 0x42);

    /* a /20: 12 host bits, never all-zeros or all-ones */
    cfg.ipip_src4[0] = 10;
    cfg.ipip_src4[1] = 9;
    cfg.ipip_src4[2] = 0x30;
    cfg.ipip_src4[3] = 0;
    cfg.ipip_src4_bits = 20;
    bad_prefix = bad_host = 0;
    for (i = 0; i < 20000; i++) {
        h = i < sizeof(special) / sizeof(special[0]) ? special[i] : mix32(i ^ 0x5555u);
        pydp_ipip_source(&cfg, PYDP_AF_INET, h, out);
        if (out[0] != 10 || out[1] != 9 || (out[2] & 0xf0) != 0x30)
            bad_prefix++;
        if (ip4_host_bits(out, 20) == 0 || ip4_host_bits(out, 20) == 0xfff)
            bad_host++;
    }
    CHECK_EQ(bad_prefix, 0);
    CHECK_EQ(bad_host, 0);

    /* /32: exactly the prefix, whatever the hash */
    cfg.ipip_src4[0] = 203;
    cfg.ipip_src4[1] = 0;
    cfg.ipip_src4[2] = 113;
    cfg.ipip_src4[3] = 9;
    cfg.ipip_src4_bits = 32;
    bad_prefix = 0;
    for (i = 0; i < 1000; i++) {
        const uint8_t want[4] = { 203, 0, 113, 9 };

        h = i < sizeof(special) / sizeof(special[0]) ? special[i] : mix32(i);
        pydp_ipip_source(&cfg, PYDP_AF_INET, h, out);
        if (memcmp(out, want, 4) != 0)
            bad_prefix++;
    }
    CHECK_EQ(bad_prefix, 0);
}

static void
test_ipip_source6(void)
{
    struct pydp_config cfg;
    const uint8_t prefix[16] = { 0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff, 0x00, 0x07, 0, 0, 0, 0, 0, 0, 0, 0 };
    uint8_t a[16], b[16];
    uint32_t i;
    int bad_prefix = 0, same = 0, differs = 0;

    pydp_config_defaults(&cfg);
    memcpy(cfg.ipip_src6, prefix, 16);
    cfg.ipip_src6_bits = 64;

    pydp_ipip_source(&cfg, PYDP_AF_INET6, 0x12345678u, a);
    CHECK_MEM(a, prefix, 8);
    pydp_ipip_source(&cfg, PYDP_AF_INET6, 0x12345678u, b);
    CHECK_MEM(a, b, 16);                                  /* deterministic */
    pydp_ipip_source(&cfg, PYDP_AF_INET6, 0x9abcdef0u, b);
    CHECK_MEM(b, prefix, 8);
    CHECK(memcmp(a + 12, b + 12, 4) != 0);                /* different hash, different last 32 bits */
    CHECK(memcmp(a, b, 16) != 0);

    /* the last 32 bits carry the hash: the top 24 bits of them verbatim */
    CHECK_EQ(a[12], 0x12);
    CHECK_EQ(a[13], 0x34);
    CHECK_EQ(a[14], 0x56);

    /* many hashes: the prefix never changes; distinct hashes (beyond the lowest bit) give distinct sources */
    for (i = 0; i < 5000; i++) {
        uint32_t h1 = mix32(i), h2 = mix32(i + 100000u);

        pydp_ipip_source(&cfg, PYDP_AF_INET6, h1, a);
        pydp_ipip_source(&cfg, PYDP_AF_INET6, h2, b);
        if (memcmp(a, prefix, 8) != 0 || memcmp(b, prefix, 8) != 0)
            bad_prefix++;
        if ((h1 >> 1) != (h2 >> 1)) {
            if (memcmp(a + 12, b + 12, 4) == 0)
                same++;
            else
                differs++;
        }
        pydp_ipip_source(&cfg, PYDP_AF_INET6, h1, b);
        if (memcmp(a, b, 16) != 0)
            bad_prefix++;
    }
    CHECK_EQ(bad_prefix, 0);
    CHECK_EQ(same, 0);
    CHECK(differs > 4900);

    /* the hash of 0 does not give the all-zeros interface identifier (subnet-router anycast) */
    pydp_ipip_source(&cfg, PYDP_AF_INET6, 0, a);
    {
        static const uint8_t zero[8];

        CHECK(memcmp(a + 8, zero, 8) != 0);
    }
}

int
main(void)
{
    test_l2();
    test_encap4();
    test_encap6();
    test_encap_bad_family();
    test_ipip_source4();
    test_ipip_source6();
    return check_report("dsr");
}
