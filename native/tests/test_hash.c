/* test_hash.c - the name hash, the flow hash and the Maglev slot reduction. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "pydp.h"
#include "check.h"

static uint64_t th_state = 0x243f6a8885a308d3ULL;

/* splitmix64: a small deterministic generator for test inputs */
static uint64_t
th_rand(void)
{
    uint64_t z = (th_state += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void
th_key(struct pydp_flow_key *k, uint32_t src4, uint32_t dst4, uint16_t sport, uint16_t dport, uint8_t proto)
{
    memset(k, 0, sizeof(*k));
    memcpy(k->src, &src4, 4);
    memcpy(k->dst, &dst4, 4);
    k->sport = sport;
    k->dport = dport;
    k->proto = proto;
    k->family = PYDP_AF_INET;
}

/* Pinned values: if one of these changes, tables and flow placement change, and load balancers running different
 * versions no longer agree. Change them only on purpose. */
static void
test_known_answers(void)
{
    struct pydp_flow_key k;

    CHECK(pydp_hash_name("", 0) == 0xf5bb240194133e5aULL);
    CHECK(pydp_hash_name("edge-1", 0) == 0xe20530858175a538ULL);
    CHECK(pydp_hash_name("edge-1", 1) == 0xdd6d80b3e2957b50ULL);
    CHECK(pydp_hash_name("edge-01.example.net", 42) == 0xe8a47d099777d75eULL);
    CHECK(pydp_hash_name("0123456789abcdefghijklmnopqrstu", 7) == 0x0152663eb1309c3bULL);

    memset(&k, 0, sizeof(k));
    CHECK_EQ(pydp_flow_hash(&k, 0), 0x92ca2f0eu);
    th_key(&k, 0x0100000a, 0x0201a8c0, 0x3930, 0x5000, 6);
    CHECK_EQ(pydp_flow_hash(&k, 0), 0x4fefb213u);
    CHECK_EQ(pydp_flow_hash(&k, 0x5eed), 0x315a0fc0u);
}

static void
print_known_answers(void)
{
    struct pydp_flow_key k;

    printf("kat: name '' 0 %016llx\n", (unsigned long long)pydp_hash_name("", 0));
    printf("kat: name edge-1 0 %016llx\n", (unsigned long long)pydp_hash_name("edge-1", 0));
    printf("kat: name edge-1 1 %016llx\n", (unsigned long long)pydp_hash_name("edge-1", 1));
    printf("kat: name edge-01.example.net 42 %016llx\n",
           (unsigned long long)pydp_hash_name("edge-01.example.net", 42));
    printf("kat: name 31 chars 7 %016llx\n", (unsigned long long)pydp_hash_name("0123456789abcdefghijklmnopqrstu", 7));
    memset(&k, 0, sizeof(k));
    printf("kat: flow zero 0 %08x\n", pydp_flow_hash(&k, 0));
    th_key(&k, 0x0100000a, 0x0201a8c0, 0x3930, 0x5000, 6);
    printf("kat: flow tcp 0 %08x\n", pydp_flow_hash(&k, 0));
    printf("kat: flow tcp 5eed %08x\n", pydp_flow_hash(&k, 0x5eed));
}

static void
test_name_hash(void)
{
    char buf[64];
    uint64_t seen[64];
    double flips = 0;
    int i, j, trials = 0, distinct = 1;

    /* every prefix length (word boundaries, partial tails) gives a different value, and a different seed too */
    memset(buf, 0, sizeof(buf));
    for (i = 0; i < 40; i++) {
        buf[i] = (char)('a' + i % 26);
        seen[i] = pydp_hash_name(buf, 3);
        CHECK(seen[i] == pydp_hash_name(buf, 3));
        CHECK(seen[i] != pydp_hash_name(buf, 4));
        for (j = 0; j < i; j++)
            if (seen[j] == seen[i])
                distinct = 0;
    }
    CHECK(distinct);

    /* avalanche: flipping one input bit flips about half the output bits */
    for (i = 0; i < 200; i++) {
        int len = 1 + (int)(th_rand() % 31), bit;
        uint64_t h;

        for (j = 0; j < len; j++)
            buf[j] = (char)(1 + th_rand() % 127);
        buf[len] = 0;
        h = pydp_hash_name(buf, 0);
        for (bit = 0; bit < 7; bit++) {
            int pos = (int)(th_rand() % (uint64_t)len);
            char save = buf[pos];

            buf[pos] ^= (char)(1 << bit);
            if (buf[pos] != 0) {
                flips += __builtin_popcountll(h ^ pydp_hash_name(buf, 0));
                trials++;
            }
            buf[pos] = save;
        }
        /* and a one-bit seed change */
        flips += __builtin_popcountll(h ^ pydp_hash_name(buf, 1ULL << (th_rand() % 64)));
        trials++;
    }
    printf("name hash: %.2f of 64 bits flip per input bit\n", flips / trials);
    CHECK(flips / trials > 30.0 && flips / trials < 34.0);

    /* similar names spread evenly over a prime number of buckets */
    {
        enum { BUCKETS = 101, NAMES = 20200 };
        static uint32_t cnt[BUCKETS];
        double chi = 0, expect = (double)NAMES / BUCKETS;

        for (i = 0; i < NAMES; i++) {
            snprintf(buf, sizeof(buf), "edge-%d", i);
            cnt[pydp_hash_name(buf, 0x1234) % BUCKETS]++;
        }
        for (i = 0; i < BUCKETS; i++)
            chi += (cnt[i] - expect) * (cnt[i] - expect) / expect;
        printf("name hash: chi-square %.1f over %d buckets\n", chi, BUCKETS);
        CHECK(chi < 100 + 6 * 14.2); /* 100 degrees of freedom: standard deviation sqrt(200) */
    }
}

/* chi-square of hashes over 1024 buckets, by the low bits and by the high bits (multiply-shift) */
static void
th_chi(const char *what, const uint32_t *h, int nb, double *lo, double *hi)
{
    enum { BUCKETS = 1024 };
    static uint32_t cl[BUCKETS], ch[BUCKETS];
    double expect = (double)nb / BUCKETS;
    int i;

    memset(cl, 0, sizeof(cl));
    memset(ch, 0, sizeof(ch));
    for (i = 0; i < nb; i++) {
        cl[h[i] & (BUCKETS - 1)]++;
        ch[pydp_maglev_slot(h[i], BUCKETS)]++;
    }
    *lo = *hi = 0;
    for (i = 0; i < BUCKETS; i++) {
        *lo += (cl[i] - expect) * (cl[i] - expect) / expect;
        *hi += (ch[i] - expect) * (ch[i] - expect) / expect;
    }
    printf("flow hash %s: chi-square low bits %.1f, high bits %.1f (1023 degrees of freedom)\n", what, *lo, *hi);
}

static void
test_flow_hash(void)
{
    enum { NB = 1 << 17 };
    static uint32_t h[NB];
    struct pydp_flow_key k, k2;
    double lo, hi;
    /* 1023 degrees of freedom: mean 1023, standard deviation about 45 */
    const double max_chi = 1023 + 6 * 45.2;
    int i, same = 0;

    /* random IPv4 and IPv6 keys */
    for (i = 0; i < NB; i++) {
        uint64_t r = th_rand();

        memset(&k, 0, sizeof(k));
        if (i & 1) {
            uint64_t r2 = th_rand();

            memcpy(k.src, &r, 8);
            memcpy(k.src + 8, &r2, 8);
            k.family = PYDP_AF_INET6;
        } else {
            memcpy(k.src, &r, 4);
            k.family = PYDP_AF_INET;
        }
        memcpy(k.dst, "\x0a\x00\x00\x01", 4);
        k.sport = (uint16_t)(r >> 40);
        k.dport = 0xbb01; /* 443, network order */
        k.proto = 6;
        h[i] = pydp_flow_hash(&k, 0xabcdef);
    }
    th_chi("random keys", h, NB, &lo, &hi);
    CHECK(lo < max_chi && hi < max_chi);

    /* structured keys: one client, consecutive source ports, several clients */
    for (i = 0; i < NB; i++) {
        th_key(&k, 0x0200000a + (uint32_t)((i >> 14) << 24), 0x0101a8c0, (uint16_t)(i & 0x3fff), 0x5000, 17);
        h[i] = pydp_flow_hash(&k, 0);
    }
    th_chi("sequential ports", h, NB, &lo, &hi);
    CHECK(lo < max_chi && hi < max_chi);

    /* seed changes the output; the same key and seed give the same value */
    th_key(&k, 0x0100000a, 0x0201a8c0, 1234, 80, 6);
    memcpy(&k2, &k, sizeof(k));
    CHECK_EQ(pydp_flow_hash(&k, 99), pydp_flow_hash(&k2, 99));
    for (i = 0; i < 1000; i++)
        same += pydp_flow_hash(&k, (uint32_t)i) == pydp_flow_hash(&k, (uint32_t)i + 1);
    CHECK(same <= 1);
    /* every field matters */
    k2.proto = 17;
    CHECK(pydp_flow_hash(&k, 0) != pydp_flow_hash(&k2, 0));
    k2 = k;
    k2.dport++;
    CHECK(pydp_flow_hash(&k, 0) != pydp_flow_hash(&k2, 0));
    k2 = k;
    k2.src[15] = 1;
    CHECK(pydp_flow_hash(&k, 0) != pydp_flow_hash(&k2, 0));
    k2 = k;
    k2.family = PYDP_AF_INET6;
    CHECK(pydp_flow_hash(&k, 0) != pydp_flow_hash(&k2, 0));
}

static void
test_slot(void)
{
    uint32_t cnt[7] = { 0 };
    uint64_t x;
    int i;

    CHECK_EQ(pydp_maglev_slot(0, 65537), 0);
    CHECK_EQ(pydp_maglev_slot(UINT32_MAX, 65537), 65536);
    CHECK_EQ(pydp_maglev_slot(UINT32_MAX, PYDP_MAGLEV_MAX_SIZE), PYDP_MAGLEV_MAX_SIZE - 1);
    CHECK_EQ(pydp_maglev_slot(0x80000000u, 65537), 32768);
    CHECK_EQ(pydp_maglev_slot(12345, 1), 0);
    /* monotone, and each of 7 slots gets floor or ceil of 2^32 / 7 hashes (checked on a sample) */
    for (x = 0; x <= UINT32_MAX; x += 65521)
        cnt[pydp_maglev_slot((uint32_t)x, 7)]++;
    for (i = 0; i < 7; i++)
        CHECK(cnt[i] >= 9362 && cnt[i] <= 9365);
    for (i = 0; i < 100000; i++) {
        uint32_t a = (uint32_t)th_rand(), b = (uint32_t)th_rand();
        uint32_t sa = pydp_maglev_slot(a, 65537), sb = pydp_maglev_slot(b, 65537);

        CHECK(sa < 65537);
        if (a <= b && sa > sb)
            CHECK(0);
    }
}

int
main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--print") == 0) {
        print_known_answers();
        return 0;
    }
    test_known_answers();
    test_name_hash();
    test_flow_hash();
    test_slot();
    return check_report("hash");
}
