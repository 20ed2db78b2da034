/*
 * fuzz_mutator.h - a structure-aware packet mutator for the libFuzzer harnesses (fuzz_parse.c, fuzz_classify.c).
 *
 * libFuzzer's own mutations flip bytes: a frame whose IPv4 total length, IHL, IPv6 payload length or extension
 * chain no longer agree is refused early, and the deep paths (ICMP errors quoting a packet, extension headers
 * before a fragment header, a flow that sees SYN then FIN) are reached by luck. This mutator knows the layers:
 * it finds Ethernet [802.1Q/802.1ad tags] IPv4/IPv6 [options, extension headers, fragment header] and the L4 header
 * (TCP, UDP, ICMP, ICMPv6 with the quoted packet of an error, ESP, AH, GRE, CARP, ...), changes ONE thing (a field
 * of a layer to a value that matters to the parser: a length, IHL, the fragment bits, a next header, a port, a
 * type; an extension header in or out; a VLAN tag in or out; an ICMP error wrapped around the packet; a cut at a
 * layer boundary), and then, most of the time, makes the lengths agree again (IPv4 total length and checksum, the
 * IPv6 payload length) - or leaves them broken on purpose. It also builds whole valid frames towards the harnesses'
 * cluster IPs. One mutation in four is left to libFuzzer's byte mutations (LLVMFuzzerMutate).
 *
 * A harness includes this file and defines FZM_CLASSIFY when its input is the classify framing (a byte of clock
 * steps, then frames with 2-byte lengths). Built with -DPYDP_FUZZ_RAW, no custom mutator is defined: libFuzzer's
 * byte mutations only (scripts/fuzz.sh --raw, to compare the coverage of both).
 */
#ifndef PYDP_FUZZ_MUTATOR_H
#define PYDP_FUZZ_MUTATOR_H

#ifndef PYDP_FUZZ_RAW

#include <stddef.h>
#include <stdint.h>
#include <string.h>

size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed);

#define FZM_MAX_EXT 10
#define FZM_FRAME_MAX 9216

struct fzm_layers {
    uint32_t l3;                /* offset of the IP header; 0: no IP */
    uint8_t family;             /* 4, 6 or 0 */
    uint32_t l3_hlen;           /* IPv4: IHL * 4; IPv6: 40 */
    uint32_t nh_pos;            /* the byte that names the L4 protocol (IPv4 protocol, the last next header) */
    uint32_t ext[FZM_MAX_EXT];  /* offsets of the IPv6 extension headers */
    uint32_t n_ext;
    uint32_t l4;                /* offset of the L4 header; 0: none (cut short, or a fragment header's data) */
    uint8_t proto;
    uint32_t inner;             /* offset of the quoted IP packet of an ICMP error; 0: none */
};

static uint64_t fzm_state;

static uint32_t
fzm_rand(void)
{
    fzm_state ^= fzm_state << 13;
    fzm_state ^= fzm_state >> 7;
    fzm_state ^= fzm_state << 17;
    return (uint32_t)(fzm_state >> 11);
}

static uint32_t
fzm_below(uint32_t n)
{
    return n ? fzm_rand() % n : 0;
}

static void
fzm_put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static uint32_t
fzm_get16(const uint8_t *p)
{
    return (uint32_t)p[0] << 8 | p[1];
}

/* values that matter to the parser and the classify path, and now and then any value */
static uint32_t
fzm_pick(const uint32_t *vals, uint32_t n, uint32_t any_mask)
{
    return fzm_below(8) == 0 ? fzm_rand() & any_mask : vals[fzm_below(n)];
}

static const uint32_t fzm_protos[] = { 0, 1, 4, 6, 17, 41, 43, 44, 47, 50, 51, 58, 59, 60, 112, 135, 139, 253 };
static const uint32_t fzm_ports[] = { 80, 443, 500, 4500, 53, 0, 1, 1024, 40000, 65535 };
static const uint32_t fzm_icmp4[] = { 0, 3, 4, 5, 8, 11, 12, 13 };
static const uint32_t fzm_icmp6[] = { 1, 2, 3, 4, 128, 129, 133, 134, 135, 136, 137, 143 };
static const uint32_t fzm_etypes[] = { 0x0800, 0x86dd, 0x0806, 0x8100, 0x88a8, 0x8847, 0x0000, 0xffff };
/* the harnesses' cluster IPs (fuzz_classify.c) and a client */
static const uint8_t fzm_v4[][4] = { { 198, 51, 100, 10 }, { 198, 51, 100, 11 }, { 198, 51, 100, 12 },
                                     { 203, 0, 113, 10 }, { 198, 51, 100, 7 }, { 192, 0, 2, 1 } };
static const uint8_t fzm_v6_last[] = { 0x10, 0x11, 0x07, 0x21 };

static int
fzm_is_ext(uint8_t nh)
{
    return nh == 0 || nh == 43 || nh == 44 || nh == 60;
}

/* The layers of frame f (len bytes), as far as they go; ip: offset of an IP header to start at (0: Ethernet). */
static void
fzm_layers(const uint8_t *f, uint32_t len, uint32_t ip, struct fzm_layers *L)
{
    uint32_t off, et, end;
    uint8_t nh;

    memset(L, 0, sizeof(*L));
    if (ip == 0) {
        if (len < 14)
            return;
        off = 12;
        et = fzm_get16(f + off);
        while ((et == 0x8100 || et == 0x88a8) && off + 6 <= len) {
            off += 4;
            et = fzm_get16(f + off);
        }
        off += 2;
        if (et != 0x0800 && et != 0x86dd)
            return;
    } else {
        off = ip;
    }
    if (off >= len)
        return;
    L->l3 = off;
    if ((f[off] >> 4) == 4 && len - off >= 20) {
        L->family = 4;
        L->l3_hlen = (uint32_t)(f[off] & 15) * 4;
        L->nh_pos = off + 9;
        L->proto = f[off + 9];
        if (L->l3_hlen < 20 || L->l3_hlen > len - off || (fzm_get16(f + off + 6) & 0x3fff) != 0)
            return;
        L->l4 = off + L->l3_hlen;
    } else if ((f[off] >> 4) == 6 && len - off >= 40) {
        L->family = 6;
        L->l3_hlen = 40;
        L->nh_pos = off + 6;
        nh = f[off + 6];
        end = len;
        off += 40;
        while (fzm_is_ext(nh) && L->n_ext < FZM_MAX_EXT && end - off >= 8) {
            L->ext[L->n_ext++] = off;
            L->nh_pos = off;
            if (nh == 44) {
                L->proto = f[off];
                return;             /* the data after a fragment header is no L4 header to the parser */
            }
            nh = f[off];
            off += ((uint32_t)f[off + 1] + 1) * 8;
            if (off > end)
                return;
        }
        if (fzm_is_ext(nh))
            return;
        L->proto = nh;
        L->l4 = off;
    } else {
        return;
    }
    if (L->l4 >= len)
        L->l4 = 0;
    /* an ICMP error quotes a packet after its 8-byte header */
    if (L->l4 && len - L->l4 >= 8 + 20 &&
        ((L->family == 4 && L->proto == 1 && (f[L->l4] == 3 || f[L->l4] == 11 || f[L->l4] == 12)) ||
         (L->family == 6 && L->proto == 58 && f[L->l4] >= 1 && f[L->l4] <= 4)))
        L->inner = L->l4 + 8;
}

static uint16_t
fzm_csum(const uint8_t *p, uint32_t n)
{
    uint32_t s = 0, i;

    for (i = 0; i + 1 < n; i += 2)
        s += fzm_get16(p + i);
    if (n & 1)
        s += (uint32_t)p[n - 1] << 8;
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (uint16_t)~s;
}

/* Makes the IP lengths (and the IPv4 header checksum) of the packet at ip agree with end, the end of its bytes. */
static void
fzm_fix(uint8_t *f, uint32_t ip, uint32_t end)
{
    uint32_t hl;

    if (ip >= end)
        return;
    if ((f[ip] >> 4) == 4 && end - ip >= 20) {
        fzm_put16(f + ip + 2, end - ip > 0xffff ? 0xffff : end - ip);
        hl = (uint32_t)(f[ip] & 15) * 4;
        if (hl >= 20 && hl <= end - ip) {
            f[ip + 10] = f[ip + 11] = 0;
            fzm_put16(f + ip + 10, fzm_csum(f + ip, hl));
        }
    } else if ((f[ip] >> 4) == 6 && end - ip >= 40) {
        fzm_put16(f + ip + 4, end - ip - 40 > 0xffff ? 0xffff : end - ip - 40);
    }
}

/* Builds an IP packet (family 4 or 6) at p, at most max bytes; depth 0 may become an ICMP error quoting one. */
static uint32_t
fzm_build_ip(uint8_t *p, uint32_t max, int family, int depth)
{
    uint32_t n, l4, i, nh_pos, plen, proto, r;

    if (max < 80)
        return 0;
    memset(p, 0, 80);
    if (family == 4) {
        uint32_t opt = fzm_below(6) == 0 ? 4 * (1 + fzm_below(3)) : 0;

        p[0] = (uint8_t)(0x40 | ((20 + opt) / 4));
        p[8] = 64;
        memcpy(p + 12, fzm_v4[4 + fzm_below(2)], 4);
        memcpy(p + 16, fzm_v4[fzm_below(4)], 4);
        for (i = 0; i < opt; i++)
            p[20 + i] = i == 0 ? 1 : 0;           /* NOPs then zeros: options the parser skips */
        if (fzm_below(8) == 0)
            fzm_put16(p + 6, fzm_below(2) ? 0x2000 : fzm_rand() & 0x1fff);
        nh_pos = 9;
        l4 = 20 + opt;
    } else {
        uint32_t next;

        p[0] = 0x60;
        p[7] = 64;
        p[8] = 0x20; p[9] = 0x01; p[10] = 0x0d; p[11] = 0xb8;
        memcpy(p + 24, p + 8, 4);
        p[23] = fzm_v6_last[2 + fzm_below(2)];
        p[39] = fzm_v6_last[fzm_below(2)];
        nh_pos = 6;
        l4 = 40;
        next = fzm_below(3) == 0 ? 1 + fzm_below(3) : 0;
        for (i = 0; i < next && l4 + 16 <= 64; i++) {
            static const uint8_t ext[] = { 0, 60, 43, 44 };
            uint8_t t = ext[fzm_below(4)];

            p[nh_pos] = t;
            nh_pos = l4;
            p[l4 + 1] = 0;
            if (t == 44) {
                fzm_put16(p + l4 + 2, fzm_below(2) ? 1 : (fzm_rand() & 0xfff8) | 1);
                l4 += 8;
                break;
            }
            l4 += 8;
        }
    }
    r = fzm_below(10);
    proto = r < 4 ? 6 : r < 7 ? 17 : r < 9 ? (family == 4 ? 1 : 58) : fzm_pick(fzm_protos, 18, 0xff);
    p[nh_pos] = (uint8_t)proto;
    n = l4;
    if (proto == 6) {
        fzm_put16(p + l4, 40000 + fzm_below(4));
        fzm_put16(p + l4 + 2, fzm_pick(fzm_ports, 10, 0xffff));
        p[l4 + 12] = 0x50;
        static const uint8_t fl[] = { 0x02, 0x10, 0x18, 0x11, 0x04, 0x12, 0x14, 0x01 };
        p[l4 + 13] = fl[fzm_below(8)];
        n += 20;
    } else if (proto == 17) {
        fzm_put16(p + l4, fzm_pick(fzm_ports, 10, 0xffff));
        fzm_put16(p + l4 + 2, fzm_pick(fzm_ports, 10, 0xffff));
        n += 8;
        fzm_put16(p + l4 + 4, 8);
    } else if (proto == 1 || proto == 58) {
        int err = depth == 0 && fzm_below(2);

        if (family == 4)
            p[l4] = err ? (uint8_t)(3 + 8 * fzm_below(2)) : (uint8_t)(8 * fzm_below(2));
        else
            p[l4] = err ? (uint8_t)(1 + fzm_below(4)) : (uint8_t)(128 + fzm_below(2));
        fzm_put16(p + l4 + 4, fzm_rand() & 0xffff);
        n += 8;
        if (err) {
            /* the edge's reply to the client, quoted: from the cluster IP back to the client */
            uint32_t q = fzm_build_ip(p + n, max - n, fzm_below(8) ? family : 10 - family, 1);

            if (q >= 20 && family == 4 && (p[n] >> 4) == 4) {
                uint8_t t[4];

                memcpy(t, p + n + 12, 4);
                memcpy(p + n + 12, p + n + 16, 4);
                memcpy(p + n + 16, t, 4);
            }
            if (q > 28 && fzm_below(2))
                q = 28 + fzm_below(q - 28);        /* quotes are usually cut short */
            n += q;
        }
    } else if (proto == 50 || proto == 51) {
        fzm_put16(p + l4, 0x1000);
        n += 8;
    }
    plen = fzm_below(4) == 0 ? fzm_below(48) : 0;
    if (n + plen > max)
        plen = max - n;
    memset(p + n, 0xab, plen);
    n += plen;
    fzm_fix(p, 0, n);
    return n;
}

/* A whole frame towards the harnesses' cluster IPs. */
static uint32_t
fzm_build(uint8_t *f, uint32_t max)
{
    uint32_t off = 12, n;
    int family = fzm_below(3) == 0 ? 6 : 4;

    if (max < 14 + 80)
        return 0;
    memset(f, 0, 12);
    f[0] = 0x02; f[5] = 0x01;
    f[6] = 0x02; f[11] = 0x99;
    if (fzm_below(10) == 0) {
        fzm_put16(f + off, 0x8100);
        fzm_put16(f + off + 2, 100);
        off += 4;
    }
    fzm_put16(f + off, family == 4 ? 0x0800 : 0x86dd);
    off += 2;
    n = fzm_build_ip(f + off, max - off, family, 0);
    return n ? off + n : 0;
}

/* Moves the bytes from at on by delta (insert > 0, remove < 0) within a frame of *len bytes, at most max. */
static int
fzm_shift(uint8_t *f, uint32_t *len, uint32_t max, uint32_t at, int32_t delta)
{
    if (at > *len)
        return -1;
    if (delta > 0) {
        if (*len + (uint32_t)delta > max)
            return -1;
        memmove(f + at + delta, f + at, *len - at);
        memset(f + at, 0, (uint32_t)delta);
        *len += (uint32_t)delta;
    } else if (delta < 0) {
        if (at + (uint32_t)-delta > *len)
            return -1;
        memmove(f + at, f + at + (uint32_t)-delta, *len - at - (uint32_t)-delta);
        *len -= (uint32_t)-delta;
    }
    return 0;
}

/* One structural mutation of the IP packet at L (an outer or a quoted one). */
static void
fzm_mutate_ip(uint8_t *f, uint32_t *len, uint32_t max, const struct fzm_layers *L)
{
    uint8_t *ip = f + L->l3;
    uint32_t l4 = L->l4;

    switch (fzm_below(14)) {
    case 0:                                     /* IHL / version */
        if (fzm_below(4) == 0)
            ip[0] = (uint8_t)((fzm_below(16) << 4) | (ip[0] & 15));
        else if (L->family == 4)
            ip[0] = (uint8_t)(0x40 | fzm_below(16));
        else
            ip[0] = 0x60;
        break;
    case 1:                                     /* total / payload length: off by a little, or anything */
        if (L->family == 4 || L->family == 6) {
            uint8_t *lf = ip + (L->family == 4 ? 2 : 4);
            uint32_t v = fzm_get16(lf);

            fzm_put16(lf, fzm_below(2) ? v + fzm_below(9) - 4 : fzm_pick((const uint32_t[]){ 0, 19, 20, 39, 40,
                                                                                      0xffff }, 6, 0xffff));
        }
        return;                                 /* lengths left broken */
    case 2:                                     /* fragment bits: MF, DF, an offset */
        if (L->family == 4) {
            static const uint32_t fr[] = { 0, 0x2000, 0x4000, 0x0001, 0x2001, 0x1fff, 0x3fff, 0x8000 };

            fzm_put16(ip + 6, fzm_pick(fr, 8, 0xffff));
        } else if (L->n_ext) {                  /* the last extension header's bytes 2-3: a fragment offset */
            uint32_t e = L->ext[L->n_ext - 1];

            if (e + 8 <= *len)
                fzm_put16(f + e + 2, fzm_rand() & 0xffff);
        }
        break;
    case 3:                                     /* the L4 protocol / the last next header */
        if (L->nh_pos < *len)
            f[L->nh_pos] = (uint8_t)fzm_pick(fzm_protos, 18, 0xff);
        break;
    case 4:                                     /* an IPv6 extension header in (hop-by-hop, routing, dest, frag) */
        if (L->family == 6) {
            static const uint8_t ext[] = { 0, 43, 60, 44 };
            uint32_t at = L->l3 + 40, hl = 8 * (1 + (fzm_below(4) == 0 ? fzm_below(3) : 0));
            uint8_t t = ext[fzm_below(4)];

            if (L->n_ext && fzm_below(2)) {       /* after an existing one */
                uint32_t e = L->ext[fzm_below(L->n_ext)];

                if (f[e] != 44 && e + 8 <= *len && e + ((uint32_t)f[e + 1] + 1) * 8 <= *len) {
                    uint32_t nat = e + ((uint32_t)f[e + 1] + 1) * 8;

                    if (fzm_shift(f, len, max, nat, (int32_t)(t == 44 ? 8 : hl)) == 0) {
                        f[nat] = f[e];
                        f[e] = t;
                        f[nat + 1] = t == 44 ? 0 : (uint8_t)(hl / 8 - 1);
                        if (t == 44)
                            fzm_put16(f + nat + 2, fzm_rand() & 0xffff);
                    }
                    break;
                }
            }
            if (fzm_shift(f, len, max, at, (int32_t)(t == 44 ? 8 : hl)) == 0) {
                ip = f + L->l3;
                f[at] = ip[6];
                ip[6] = t;
                f[at + 1] = t == 44 ? 0 : (uint8_t)(hl / 8 - 1);
                if (t == 44)
                    fzm_put16(f + at + 2, fzm_below(2) ? 1 : fzm_rand() & 0xffff);
            }
        } else if (L->l3_hlen >= 20 && (ip[0] & 15) < 15) {     /* IPv4: 4 bytes of options */
            if (fzm_shift(f, len, max, L->l3 + L->l3_hlen, 4) == 0) {
                ip = f + L->l3;
                ip[0] = (uint8_t)(ip[0] + 1);
                f[L->l3 + L->l3_hlen] = fzm_below(2) ? 1 : (uint8_t)fzm_rand();
            }
        }
        break;
    case 5:                                     /* an extension header out, or its length byte changed */
        if (L->family == 6 && L->n_ext) {
            uint32_t i = fzm_below(L->n_ext), e = L->ext[i];
            uint32_t prev = i ? L->ext[i - 1] : L->l3 + 6;

            if (fzm_below(3) == 0) {
                if (e + 2 <= *len)
                    f[e + 1] = (uint8_t)fzm_pick((const uint32_t[]){ 0, 1, 2, 31, 255 }, 5, 0xff);
                return;
            }
            if (e + 8 <= *len) {
                uint32_t hl = f[prev] == 44 ? 8 : ((uint32_t)f[e + 1] + 1) * 8;

                f[prev] = f[e];
                if (hl > *len - e)
                    hl = *len - e;
                fzm_shift(f, len, max, e, -(int32_t)hl);
            }
        }
        break;
    case 6:                                     /* the addresses: a cluster IP, swapped, or the client's */
        if (L->family == 4) {
            memcpy(ip + 16, fzm_v4[fzm_below(6)], 4);
            if (fzm_below(4) == 0)
                memcpy(ip + 12, fzm_v4[fzm_below(6)], 4);
        } else {
            static const uint8_t db8[4] = { 0x20, 0x01, 0x0d, 0xb8 };

            memcpy(ip + 24, db8, 4);
            memset(ip + 28, 0, 11);
            ip[39] = fzm_v6_last[fzm_below(4)];
        }
        break;
    case 7:                                     /* TCP: data offset and flags; UDP: ports and length */
    case 8:
        if (l4 && L->proto == 6 && l4 + 20 <= *len) {
            if (fzm_below(3) == 0)
                f[l4 + 12] = (uint8_t)(fzm_below(16) << 4);
            else
                f[l4 + 13] = (uint8_t)fzm_pick((const uint32_t[]){ 0x02, 0x12, 0x10, 0x11, 0x04, 0x14, 0x01, 0x03,
                                                                   0x06, 0x3f }, 10, 0xff);
        } else if (l4 && L->proto == 17 && l4 + 8 <= *len) {
            uint32_t w = fzm_below(3);

            fzm_put16(f + l4 + 2 * w, w < 2 ? fzm_pick(fzm_ports, 10, 0xffff) : fzm_rand() & 0xffff);
        } else if (l4 && (L->proto == 1 || L->proto == 58) && l4 + 8 <= *len) {
            f[l4] = (uint8_t)(L->proto == 1 ? fzm_pick(fzm_icmp4, 8, 0xff) : fzm_pick(fzm_icmp6, 12, 0xff));
            f[l4 + 1] = (uint8_t)fzm_below(5);
        }
        break;
    case 9:                                     /* ports: the cluster's services, IKE/NAT-T, anything */
        if (l4 && (L->proto == 6 || L->proto == 17) && l4 + 4 <= *len)
            fzm_put16(f + l4 + 2 * fzm_below(2), fzm_pick(fzm_ports, 10, 0xffff));
        break;
    case 10: {                                  /* cut at a layer boundary, give or take a byte */
        uint32_t cuts[4 + FZM_MAX_EXT], n = 0, i, at;

        cuts[n++] = L->l3;
        cuts[n++] = L->l3 + L->l3_hlen;
        if (l4)
            cuts[n++] = l4 + (L->proto == 6 ? 20 : 8);
        if (L->inner)
            cuts[n++] = L->inner + 20;
        for (i = 0; i < L->n_ext; i++)
            cuts[n++] = L->ext[i] + 8;
        at = cuts[fzm_below(n)] + fzm_below(3) - 1;
        if (at < *len)
            *len = at;
        return;                                 /* the outer lengths are fixed by the caller or not */
    }
    case 11:                                    /* TTL / hop limit, DSCP, the checksum: nothing to the parser */
        if (L->family == 4)
            fzm_put16(ip + 10, fzm_rand() & 0xffff);
        else
            ip[7] = (uint8_t)fzm_rand();
        return;
    case 12:                                    /* some payload in or out */
        if (l4) {
            uint32_t n = fzm_below(64);

            if (fzm_below(2) && *len + n <= max) {
                memset(f + *len, (uint8_t)fzm_rand(), n);
                *len += n;
            } else if (*len > l4 + n) {
                *len -= n;
            }
        }
        break;
    default:                                    /* the family of the L4 header's ICMP: 1 <-> 58 */
        if (L->nh_pos < *len && (f[L->nh_pos] == 1 || f[L->nh_pos] == 58))
            f[L->nh_pos] = f[L->nh_pos] == 1 ? 58 : 1;
        break;
    }
}

/* One mutation of a frame of len bytes (at most max); returns the new length. */
static uint32_t
fzm_frame(uint8_t *f, uint32_t len, uint32_t max)
{
    struct fzm_layers L;
    uint32_t r = fzm_below(32);

    if (max > FZM_FRAME_MAX)
        max = FZM_FRAME_MAX;
    if (len > max)
        len = max;
    fzm_layers(f, len, 0, &L);
    if (L.family == 0 || r < 2) {               /* no IP to work on (or now and then): a fresh valid frame */
        uint32_t n = fzm_build(f, max);

        return n ? n : len;
    }
    if (r < 4) {                                /* a VLAN tag in or out */
        if (L.l3 >= 18 && fzm_below(2)) {
            fzm_shift(f, &len, max, 12, -4);
        } else if (fzm_shift(f, &len, max, 12, 4) == 0) {
            fzm_put16(f + 12, fzm_below(4) ? 0x8100 : 0x88a8);
            fzm_put16(f + 14, fzm_rand() & 0x0fff);
        }
        return len;
    }
    if (r < 5) {                                /* the EtherType */
        fzm_put16(f + L.l3 - 2, fzm_pick(fzm_etypes, 8, 0xffff));
        return len;
    }
    if (r < 7 && len + 8 + 40 + 14 <= max && L.l3 > 0) {
        /* an ICMP error around the packet: the packet becomes the quote (as a router would send it back) */
        uint32_t ip = L.l3, qlen = len - ip, hl = L.family == 4 ? 20 : 40;

        if (qlen > 64 && fzm_below(2))
            qlen = 28 + fzm_below(36);
        memmove(f + ip + hl + 8, f + ip, qlen);
        memset(f + ip, 0, hl + 8);
        if (L.family == 4) {
            f[ip] = 0x45;
            f[ip + 8] = 64;
            f[ip + 9] = 1;
            memcpy(f + ip + 12, fzm_v4[5], 4);
            memcpy(f + ip + 16, f + ip + 28 + 12, 4);         /* to the quoted packet's source */
            f[ip + 20] = (uint8_t)(fzm_below(2) ? 3 : 11);
            f[ip + 21] = 4;
        } else {
            f[ip] = 0x60;
            f[ip + 6] = 58;
            f[ip + 7] = 64;
            memcpy(f + ip + 8, f + ip + 48 + 24, 16);
            memcpy(f + ip + 24, f + ip + 48 + 8, 16);
            f[ip + 40] = (uint8_t)(1 + fzm_below(4));
        }
        len = ip + hl + 8 + qlen;
        fzm_fix(f, ip, len);
        return len;
    }
    if (r < 11 && L.inner) {                    /* a field of the quoted packet */
        struct fzm_layers Q;
        uint32_t qlen = len;

        fzm_layers(f, len, L.inner, &Q);
        if (Q.family) {
            fzm_mutate_ip(f, &qlen, max, &Q);
            len = qlen;
            if (fzm_below(2))
                fzm_fix(f, L.l3, len);
            return len;
        }
    }
    fzm_mutate_ip(f, &len, max, &L);
    if (fzm_below(4) != 0) {                    /* most of the time the lengths agree again */
        fzm_layers(f, len, 0, &L);
        if (L.family)
            fzm_fix(f, L.l3, len);
    }
    return len;
}

#ifndef FZM_CLASSIFY

size_t
LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed)
{
    fzm_state = (uint64_t)seed * 0x9e3779b97f4a7c15ull + 1;
    if (fzm_below(4) == 0 || max_size < 14)
        return LLVMFuzzerMutate(data, size, max_size);
    return fzm_frame(data, (uint32_t)size, max_size > UINT32_MAX ? UINT32_MAX : (uint32_t)max_size);
}

#else /* the classify framing: a byte of clock steps, then frames, each after a 2-byte big-endian length */

#define FZM_FRAMES 32

size_t
LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed)
{
    static uint8_t tmp[FZM_FRAME_MAX * 2], work[FZM_FRAME_MAX];
    uint32_t off[FZM_FRAMES], len[FZM_FRAMES], n = 0, i, pick, pos, out, fl, r;
    size_t sz = size;

    fzm_state = (uint64_t)seed * 0x9e3779b97f4a7c15ull + 1;
    r = fzm_below(16);
    if (r < 3 || max_size < 64 || max_size > sizeof(tmp))
        return LLVMFuzzerMutate(data, size, max_size);
    if (sz == 0)
        data[sz++] = 0;
    if (r == 3) {                               /* the clock steps */
        data[0] = (uint8_t)fzm_rand();
        return sz;
    }
    pos = 1;
    while (pos < sz && n < FZM_FRAMES) {        /* the frames as fuzz_classify.c reads them */
        uint32_t m = sz - pos >= 2 ? fzm_get16(data + pos) : 0;

        if (sz - pos < 2 || m > sz - pos - 2) {
            m = (uint32_t)(sz - pos);
        } else {
            pos += 2;
        }
        off[n] = pos;
        len[n] = m;
        n++;
        pos += m;
    }
    out = 0;
    tmp[out++] = data[0];
    pick = n ? fzm_below(n) : 0;
    for (i = 0; i <= n; i++) {
        const uint8_t *src;

        if (i == n && !(n == 0 || (r < 6 && n < FZM_FRAMES)))
            break;                              /* r 4..5: one frame more, a mutation of the picked one */
        if (i < n) {
            src = data + off[i];
            fl = len[i];
        } else {
            src = n ? data + off[pick] : NULL;
            fl = n ? len[pick] : 0;
        }
        if (fl > sizeof(work))
            fl = sizeof(work);
        if (src)
            memcpy(work, src, fl);
        if (i == pick || i == n) {
            if (r == 6 && n > 1 && i == pick) {
                continue;                       /* r 6: the picked frame out */
            }
            if (src == NULL)
                fl = fzm_build(work, sizeof(work));
            else if (i == n && fl >= 14 && fzm_below(2)) {
                struct fzm_layers L;            /* the same flow again, other TCP flags: SYN, ACK, FIN, RST */

                fzm_layers(work, fl, 0, &L);
                if (L.l4 && L.proto == 6 && L.l4 + 14 <= fl)
                    work[L.l4 + 13] = (uint8_t)fzm_pick((const uint32_t[]){ 0x10, 0x11, 0x04, 0x18, 0x02 }, 5, 0xff);
                else
                    fl = fzm_frame(work, fl, sizeof(work));
            } else {
                fl = fzm_frame(work, fl, sizeof(work));
            }
        }
        if (out + 2 + fl > max_size)
            break;
        fzm_put16(tmp + out, fl);
        memcpy(tmp + out + 2, work, fl);
        out += 2 + fl;
    }
    memcpy(data, tmp, out);
    return out;
}

#endif /* FZM_CLASSIFY */
#endif /* PYDP_FUZZ_RAW */
#endif /* PYDP_FUZZ_MUTATOR_H */
