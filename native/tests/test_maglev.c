/* test_maglev.c - Maglev table population: validation, agreement with a plain implementation, balance, weights,
 * order independence, disruption on edge removal, build time. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "pydp.h"
#include "check.h"

/* The permutation seeds of maglev.c: part of the table's definition (load balancers must agree on it). */
#define TM_SEED_OFFSET 0x6d61676c65763031ULL
#define TM_SEED_SKIP   0x736b697070793032ULL

static uint8_t tm_a[PYDP_MAGLEV_MAX_SIZE];
static uint8_t tm_b[PYDP_MAGLEV_MAX_SIZE];
static uint64_t tm_state = 0x13198a2e03707344ULL;

static uint64_t
tm_rand(void)
{
    uint64_t z = (tm_state += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* The algorithm as the paper states it, written plainly: the edges take turns in name order, each claiming the
 * first free slot of its permutation; weights by credit. Assumes valid input. */
static void
tm_reference(const char *const *names, const uint16_t *weights, uint32_t n, uint32_t size, uint8_t *table)
{
    uint32_t order[PYDP_MAX_EDGES], next[PYDP_MAX_EDGES], credit[PYDP_MAX_EDGES] = { 0 };
    uint64_t offset[PYDP_MAX_EDGES], skip[PYDP_MAX_EDGES];
    uint32_t i, j, filled = 0, max_w = 0;

    for (i = 0; i < n; i++)
        order[i] = i;
    for (i = 0; i < n; i++)             /* selection sort by name */
        for (j = i + 1; j < n; j++)
            if (strcmp(names[order[j]], names[order[i]]) < 0) {
                uint32_t t = order[i];

                order[i] = order[j];
                order[j] = t;
            }
    for (i = 0; i < n; i++) {
        uint32_t w = weights ? weights[i] : 1;

        if (w > max_w)
            max_w = w;
        offset[i] = pydp_hash_name(names[i], TM_SEED_OFFSET) % size;
        skip[i] = pydp_hash_name(names[i], TM_SEED_SKIP) % (size - 1) + 1;
        next[i] = 0;
    }
    memset(table, PYDP_MAGLEV_NONE, size);
    if (max_w == 0)
        return;
    while (filled < size) {
        for (j = 0; j < n && filled < size; j++) {
            uint32_t e = order[j];
            uint64_t slot;

            credit[e] += weights ? weights[e] : 1;
            if (credit[e] < max_w)
                continue;
            credit[e] -= max_w;
            do {
                slot = (offset[e] + next[e] * skip[e]) % size;
                next[e]++;
            } while (table[slot] != PYDP_MAGLEV_NONE);
            table[slot] = (uint8_t)e;
            filled++;
        }
    }
}

static void
tm_counts(const uint8_t *table, uint32_t size, uint32_t *cnt)
{
    uint32_t i;

    memset(cnt, 0, 256 * sizeof(*cnt));
    for (i = 0; i < size; i++)
        cnt[table[i]]++;
}

static void
tm_random_names(char (*buf)[PYDP_NAME_LEN], const char **names, uint32_t n)
{
    uint32_t i, j, len;

    for (i = 0; i < n; i++) {
        do {
            len = 1 + (uint32_t)(tm_rand() % (PYDP_NAME_LEN - 1));
            for (j = 0; j < len; j++)
                buf[i][j] = (char)(0x21 + tm_rand() % 94);
            buf[i][len] = 0;
            for (j = 0; j < i; j++)
                if (strcmp(buf[i], buf[j]) == 0)
                    break;
        } while (j < i);
        names[i] = buf[i];
    }
}

static void
tm_fixed_names(char (*buf)[PYDP_NAME_LEN], const char **names, uint32_t n)
{
    uint32_t i;

    for (i = 0; i < n; i++) {
        snprintf(buf[i], PYDP_NAME_LEN, "edge-%02u", i);
        names[i] = buf[i];
    }
}

static int
tm_trial_prime(uint32_t n)
{
    uint32_t d;

    if (n < 2)
        return 0;
    for (d = 2; d * d <= n; d++)
        if (n % d == 0)
            return 0;
    return 1;
}

static void
test_is_prime(void)
{
    uint32_t i;
    int agree = 1;

    for (i = 0; i < 20000; i++)
        if (pydp_is_prime(i) != tm_trial_prime(i))
            agree = 0;
    CHECK(agree);
    CHECK(pydp_is_prime(65537));
    CHECK(pydp_is_prime(PYDP_MAGLEV_MAX_SIZE));
    CHECK(!pydp_is_prime(65535));
    CHECK(!pydp_is_prime(655371));
    CHECK(pydp_is_prime(4294967291u));
    CHECK(!pydp_is_prime(4294967295u));
    CHECK(!pydp_is_prime(4292870399u)); /* 65519 * 65521 */
}

static int
tm_fails(const char *const *names, const uint16_t *w, uint32_t n, uint32_t size, const char *word)
{
    char err[PYDP_ERR_LEN];

    err[0] = 0;
    if (pydp_maglev_build(names, w, n, size, tm_a, err) != -1)
        return 0;
    if (strstr(err, word) == NULL) {
        fprintf(stderr, "error text '%s' lacks '%s'\n", err, word);
        return 0;
    }
    return pydp_maglev_build(names, w, n, size, tm_a, NULL) == -1; /* err may be NULL */
}

static void
test_errors(void)
{
    char buf[PYDP_MAX_EDGES + 1][PYDP_NAME_LEN];
    const char *names[PYDP_MAX_EDGES + 1];
    char long_name[PYDP_NAME_LEN + 8];
    char max_name[PYDP_NAME_LEN];
    uint32_t above_max = PYDP_MAGLEV_MAX_SIZE + 1;
    char err[PYDP_ERR_LEN];

    tm_fixed_names(buf, names, PYDP_MAX_EDGES + 1);
    while (!pydp_is_prime(above_max))
        above_max++;

    CHECK(tm_fails(names, NULL, PYDP_MAX_EDGES + 1, 65537, "too many edges"));
    CHECK(tm_fails(names, NULL, 4, 65536, "not prime"));
    CHECK(tm_fails(names, NULL, 4, 0, "not prime"));
    CHECK(tm_fails(names, NULL, 4, 1, "not prime"));
    CHECK(tm_fails(names, NULL, 4, above_max, "maximum"));
    CHECK(tm_fails(names, NULL, 16, 13, "smaller than the number of edges"));
    CHECK(tm_fails(names, NULL, 3, 2, "smaller than the number of edges"));
    CHECK(tm_fails(NULL, NULL, 3, 17, "no names"));

    names[2] = "edge-00";
    CHECK(tm_fails(names, NULL, 4, 17, "duplicate edge name 'edge-00'"));
    names[2] = "";
    CHECK(tm_fails(names, NULL, 4, 17, "empty name"));
    names[2] = NULL;
    CHECK(tm_fails(names, NULL, 4, 17, "no name"));
    memset(long_name, 'x', PYDP_NAME_LEN);
    long_name[PYDP_NAME_LEN] = 0;
    names[2] = long_name;
    CHECK(tm_fails(names, NULL, 4, 17, "longer than 31 bytes"));
    long_name[PYDP_NAME_LEN - 1] = 0;  /* exactly 31 bytes: fine */
    CHECK_EQ(pydp_maglev_build(names, NULL, 4, 17, tm_a, err), 0);
    memset(max_name, 'y', sizeof(max_name) - 1);
    max_name[sizeof(max_name) - 1] = 0;
    names[2] = max_name;
    CHECK_EQ(pydp_maglev_build(names, NULL, 4, 17, tm_a, err), 0);
    names[2] = buf[2];

    /* duplicates are an error even with weight 0 */
    {
        uint16_t w[3] = { 1, 0, 1 };
        const char *dup[3] = { "a", "b", "b" };

        CHECK(tm_fails(dup, w, 3, 17, "duplicate"));
    }
    err[0] = 0;
    CHECK_EQ(pydp_maglev_build(names, NULL, 4, 17, NULL, err), -1);
    CHECK(strstr(err, "table") != NULL);

    /* edge cases that are valid: the smallest prime, size == n */
    CHECK_EQ(pydp_maglev_build(names, NULL, 2, 2, tm_a, NULL), 0);
    CHECK(tm_a[0] != tm_a[1] && tm_a[0] < 2 && tm_a[1] < 2);
    CHECK_EQ(pydp_maglev_build(names, NULL, 13, 13, tm_a, NULL), 0);
    {
        uint32_t cnt[256], i;
        int ok = 1;

        tm_counts(tm_a, 13, cnt);
        for (i = 0; i < 13; i++)
            ok &= cnt[i] == 1;
        CHECK(ok);
    }
}

static void
test_no_weight(void)
{
    char buf[4][PYDP_NAME_LEN];
    const char *names[4];
    uint16_t zero[4] = { 0, 0, 0, 0 };
    uint32_t cnt[256];

    tm_fixed_names(buf, names, 4);
    memset(tm_a, 7, 65537);
    CHECK_EQ(pydp_maglev_build(names, zero, 4, 65537, tm_a, NULL), 0);
    tm_counts(tm_a, 65537, cnt);
    CHECK_EQ(cnt[PYDP_MAGLEV_NONE], 65537);
    memset(tm_a, 7, 65537);
    CHECK_EQ(pydp_maglev_build(NULL, NULL, 0, 65537, tm_a, NULL), 0);
    tm_counts(tm_a, 65537, cnt);
    CHECK_EQ(cnt[PYDP_MAGLEV_NONE], 65537);
    CHECK_EQ(tm_a[65537], 0); /* nothing written past size */
}

/* The result equals the plain algorithm's for random names, weights and sizes (covers the end phase, which uses
 * sorted free lists, and tables small enough to start in it). */
static void
test_reference(void)
{
    static const uint32_t sizes[] = { 2, 3, 5, 17, 101, 251, 257, 263, 269, 509, 1021, 4099, 65537 };
    char buf[PYDP_MAX_EDGES][PYDP_NAME_LEN];
    const char *names[PYDP_MAX_EDGES];
    uint16_t w[PYDP_MAX_EDGES];
    uint32_t t, i, mismatch = 0, runs = 0;

    for (t = 0; t < 300; t++) {
        uint32_t size = sizes[t % (sizeof(sizes) / sizeof(sizes[0]))];
        uint32_t n = 1 + (uint32_t)(tm_rand() % PYDP_MAX_EDGES);
        int weighted = t % 3 != 0;

        if (n > size)
            n = size;
        tm_random_names(buf, names, n);
        for (i = 0; i < n; i++) {
            uint64_t r = tm_rand();

            /* mostly small weights, some zeros, some huge ones */
            w[i] = (uint16_t)(r % 8 == 0 ? 0 : r % 8 == 1 ? 65535 - (r >> 8) % 3 : 1 + (r >> 8) % 10);
        }
        memset(tm_b, 0xaa, size);
        CHECK_EQ(pydp_maglev_build(names, weighted ? w : NULL, n, size, tm_a, NULL), 0);
        tm_reference(names, weighted ? w : NULL, n, size, tm_b);
        if (memcmp(tm_a, tm_b, size) != 0) {
            mismatch++;
            fprintf(stderr, "mismatch: size %u, n %u, weighted %d\n", size, n, weighted);
        }
        runs++;
    }
    CHECK_EQ(mismatch, 0);

    /* and once at the largest size */
    tm_fixed_names(buf, names, 16);
    CHECK_EQ(pydp_maglev_build(names, NULL, 16, PYDP_MAGLEV_MAX_SIZE, tm_a, NULL), 0);
    tm_reference(names, NULL, 16, PYDP_MAGLEV_MAX_SIZE, tm_b);
    CHECK_MEM(tm_a, tm_b, PYDP_MAGLEV_MAX_SIZE);
    printf("maglev: %u random tables equal the plain implementation's\n", runs);
}

/* pydp_maglev_build_labels (what the shared-memory publish uses): the same table with each edge's label. */
static void
test_labels(void)
{
    char buf[PYDP_MAX_EDGES][PYDP_NAME_LEN];
    const char *names[PYDP_MAX_EDGES];
    uint16_t w[PYDP_MAX_EDGES];
    uint8_t labels[PYDP_MAX_EDGES];
    char err[PYDP_ERR_LEN];
    uint32_t n, i, bad;

    for (n = 1; n <= PYDP_MAX_EDGES; n++) {
        tm_fixed_names(buf, names, n);   /* not random: the other tests' random draws stay as they were */
        for (i = 0; i < n; i++) {
            w[i] = (uint16_t)(1 + i % 3);
            labels[i] = (uint8_t)(PYDP_MAX_EDGES - 1 - i);
        }
        CHECK_EQ(pydp_maglev_build(names, w, n, 65537, tm_a, NULL), 0);
        CHECK_EQ(pydp_maglev_build_labels(names, w, labels, n, 65537, tm_b, NULL), 0);
        for (bad = 0, i = 0; i < 65537; i++)
            bad += tm_b[i] != labels[tm_a[i]];
        CHECK_EQ(bad, 0);
    }
    labels[2] = PYDP_MAGLEV_NONE;
    memset(tm_b, 0xaa, 17);
    CHECK_EQ(pydp_maglev_build_labels(names, NULL, labels, 3, 17, tm_b, err), -1);
    CHECK(strstr(err, "label") != NULL);
    CHECK_EQ(tm_b[0], 0xaa);
}

static void
test_determinism_and_order(void)
{
    char buf[PYDP_MAX_EDGES][PYDP_NAME_LEN];
    const char *names[PYDP_MAX_EDGES], *shuffled[PYDP_MAX_EDGES];
    uint16_t w[PYDP_MAX_EDGES], sw[PYDP_MAX_EDGES];
    uint32_t t, i;

    for (t = 0; t < 20; t++) {
        uint32_t n = 2 + (uint32_t)(tm_rand() % (PYDP_MAX_EDGES - 1));
        uint32_t size = t & 1 ? 65537 : 1021;
        int same = 1;

        tm_random_names(buf, names, n);
        for (i = 0; i < n; i++) {
            w[i] = (uint16_t)(tm_rand() % 5);
            shuffled[i] = names[i];
            sw[i] = w[i];
        }
        w[0] = sw[0] = 3;
        for (i = n - 1; i > 0; i--) {    /* Fisher-Yates */
            uint32_t j = (uint32_t)(tm_rand() % (i + 1));
            const char *tn = shuffled[i];
            uint16_t tw = sw[i];

            shuffled[i] = shuffled[j];
            sw[i] = sw[j];
            shuffled[j] = tn;
            sw[j] = tw;
        }
        CHECK_EQ(pydp_maglev_build(names, w, n, size, tm_a, NULL), 0);
        CHECK_EQ(pydp_maglev_build(names, w, n, size, tm_b, NULL), 0);
        CHECK_MEM(tm_a, tm_b, size);
        CHECK_EQ(pydp_maglev_build(shuffled, sw, n, size, tm_b, NULL), 0);
        for (i = 0; i < size; i++)
            if (tm_a[i] == PYDP_MAGLEV_NONE || tm_b[i] == PYDP_MAGLEV_NONE ||
                strcmp(names[tm_a[i]], shuffled[tm_b[i]]) != 0)
                same = 0;
        CHECK(same);
    }
}

static void
test_equal_weights(void)
{
    static const uint32_t sizes[] = { 17, 257, 1021, 65537, PYDP_MAGLEV_MAX_SIZE };
    char buf[PYDP_MAX_EDGES][PYDP_NAME_LEN];
    const char *names[PYDP_MAX_EDGES];
    uint16_t ones[PYDP_MAX_EDGES], sevens[PYDP_MAX_EDGES];
    uint32_t cnt[256], s, n, i;

    for (i = 0; i < PYDP_MAX_EDGES; i++) {
        ones[i] = 1;
        sevens[i] = 7;
    }
    for (s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        uint32_t size = sizes[s];

        for (n = 1; n <= PYDP_MAX_EDGES; n++) {
            uint32_t lo = size / n;
            int ok = 1;

            if (size == PYDP_MAGLEV_MAX_SIZE && n % 5 != 1)
                continue;  /* a few are enough at the largest size */
            tm_random_names(buf, names, n);
            CHECK_EQ(pydp_maglev_build(names, NULL, n, size, tm_a, NULL), 0);
            tm_counts(tm_a, size, cnt);
            for (i = 0; i < n; i++)
                ok &= cnt[i] == lo || cnt[i] == lo + 1;
            CHECK_EQ(cnt[PYDP_MAGLEV_NONE], 0);
            CHECK(ok);
            /* weights NULL, all 1 and all 7 are the same thing */
            CHECK_EQ(pydp_maglev_build(names, ones, n, size, tm_b, NULL), 0);
            CHECK_MEM(tm_a, tm_b, size);
            CHECK_EQ(pydp_maglev_build(names, sevens, n, size, tm_b, NULL), 0);
            CHECK_MEM(tm_a, tm_b, size);
        }
    }
}

static void
test_weights(void)
{
    char buf[PYDP_MAX_EDGES][PYDP_NAME_LEN];
    const char *names[PYDP_MAX_EDGES], *sub[PYDP_MAX_EDGES];
    static const uint16_t w1234[4] = { 1, 2, 3, 4 };
    static const uint16_t wmix[6] = { 100, 0, 250, 65535, 1, 0 };
    uint32_t cnt[256], i;
    const uint32_t size = 65537;

    tm_fixed_names(buf, names, PYDP_MAX_EDGES);

    CHECK_EQ(pydp_maglev_build(names, w1234, 4, size, tm_a, NULL), 0);
    tm_counts(tm_a, size, cnt);
    for (i = 0; i < 4; i++) {
        double share = (double)cnt[i] / size, want = w1234[i] / 10.0;

        printf("maglev: weights 1,2,3,4: edge %u share %.5f (want %.5f)\n", i, share, want);
        CHECK(share > want * 0.99 && share < want * 1.01);
    }

    /* extreme weights: each count is the proportional share to within the number of edges (the lighter edges'
     * shares are rounded down, the heaviest edge takes the remainder) */
    CHECK_EQ(pydp_maglev_build(names, wmix, 6, size, tm_a, NULL), 0);
    tm_counts(tm_a, size, cnt);
    for (i = 0; i < 6; i++) {
        double want = (double)size * wmix[i] / (100 + 250 + 65535 + 1);

        CHECK(cnt[i] + 6.0 >= want && cnt[i] <= want + 6.0);
        if (wmix[i] != 65535)
            CHECK(cnt[i] + 1.0 >= want && cnt[i] <= want + 1.0);
    }
    CHECK_EQ(cnt[1], 0);
    CHECK_EQ(cnt[5], 0);
    CHECK_EQ(cnt[PYDP_MAGLEV_NONE], 0);

    /* weight 0 is the same as leaving the edge out (compared by name) */
    {
        uint16_t w[5] = { 2, 0, 5, 1, 0 };
        uint16_t wsub[3] = { 2, 5, 1 };
        int same = 1;

        sub[0] = names[0];
        sub[1] = names[2];
        sub[2] = names[3];
        CHECK_EQ(pydp_maglev_build(names, w, 5, size, tm_a, NULL), 0);
        CHECK_EQ(pydp_maglev_build(sub, wsub, 3, size, tm_b, NULL), 0);
        for (i = 0; i < size; i++)
            same &= tm_a[i] < 5 && w[tm_a[i]] > 0 && strcmp(names[tm_a[i]], sub[tm_b[i]]) == 0;
        CHECK(same);
    }
}

/* Fraction of the slots not held by edge r that change edge when r is removed. */
static double
tm_disruption(const char *const *names, uint32_t n, uint32_t r, uint32_t size)
{
    const char *rest[PYDP_MAX_EDGES];
    uint32_t i, j = 0, other = 0, moved = 0;

    for (i = 0; i < n; i++)
        if (i != r)
            rest[j++] = names[i];
    if (pydp_maglev_build(names, NULL, n, size, tm_a, NULL) != 0 ||
        pydp_maglev_build(rest, NULL, n - 1, size, tm_b, NULL) != 0)
        return 1.0;
    for (i = 0; i < size; i++) {
        if (tm_a[i] == r)
            continue;
        other++;
        moved += strcmp(names[tm_a[i]], rest[tm_b[i]]) != 0;
    }
    return (double)moved / other;
}

static void
test_disruption(void)
{
    char buf[PYDP_MAX_EDGES][PYDP_NAME_LEN];
    const char *names[PYDP_MAX_EDGES];
    const uint32_t size = 65537;
    double worst_fixed = 0, worst_random = 0;
    uint32_t n, r, t;

    printf("maglev: removing one of N edges at size %u, fraction of the other slots that change edge:\n", size);
    for (n = 2; n <= PYDP_MAX_EDGES; n++) {
        double worst = 0, sum = 0, rworst = 0;

        tm_fixed_names(buf, names, n);
        for (r = 0; r < n; r++) {
            double f = tm_disruption(names, n, r, size);

            sum += f;
            if (f > worst)
                worst = f;
        }
        /* a few random name sets too: the worst case depends on the names */
        for (t = 0; t < 4; t++) {
            tm_random_names(buf, names, n);
            for (r = 0; r < n; r++) {
                double f = tm_disruption(names, n, r, size);

                if (f > rworst)
                    rworst = f;
            }
        }
        printf("  N=%2u  edge-NN names: mean %.3f%% worst %.3f%%   random names: worst %.3f%%\n", n,
               100 * sum / n, 100 * worst, 100 * rworst);
        if (worst > worst_fixed)
            worst_fixed = worst;
        if (rworst > worst_random)
            worst_random = rworst;
    }
    /* Measured: at most 0.43% with edge-00.. names; over 1500 random name sets (every removal) the mean was 0.26%
     * and the worst 1.49%, above the 1% design target in 0.2% of the cases. */
    CHECK(worst_fixed <= 0.005);
    CHECK(worst_random <= 0.02);
}

static double
tm_best_ms(const char *const *names, uint32_t n, uint32_t size)
{
    double best = 1e9;
    int i;

    for (i = 0; i < 20; i++) {
        struct timespec t0, t1;
        double ms;

        clock_gettime(CLOCK_MONOTONIC, &t0);
        pydp_maglev_build(names, NULL, n, size, tm_a, NULL);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
        if (ms < best)
            best = ms;
    }
    return best;
}

static void
print_build_time(void)
{
    char buf[PYDP_MAX_EDGES][PYDP_NAME_LEN];
    const char *names[PYDP_MAX_EDGES];

    tm_fixed_names(buf, names, PYDP_MAX_EDGES);
    printf("maglev: build of 16 edges, best of 20: %.3f ms at 65537, %.3f ms at %d\n",
           tm_best_ms(names, 16, 65537), tm_best_ms(names, 16, PYDP_MAGLEV_MAX_SIZE), PYDP_MAGLEV_MAX_SIZE);
}

int
main(void)
{
    test_is_prime();
    test_errors();
    test_no_weight();
    test_reference();
    test_labels();
    test_determinism_and_order();
    test_equal_weights();
    test_weights();
    test_disruption();
    print_build_time();
    return check_report("maglev");
}
