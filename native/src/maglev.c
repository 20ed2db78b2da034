/*
 * maglev.c - Maglev lookup-table population (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
 * Balancer", NSDI 2016), with weights.
 *
 * Every edge owns a permutation of the table slots given by its name: it starts at offset = h1(name) % size and
 * steps by skip = h2(name) % (size - 1) + 1 (size is prime, so every skip visits every slot). The edges take turns;
 * on its turn an edge claims the next slot of its permutation that is still free. With weights, an edge earns its
 * weight in credit each round and takes a turn when its credit reaches the largest weight, so the shares follow the
 * weights. Edges take their turns in name order and the permutations depend only on the names, so the table depends
 * on the set of (name, weight) pairs, not on the order the caller lists them in.
 *
 * The build runs in three phases that claim exactly the same slots (the tests check the result against a plain
 * implementation, and the tables never change from one version to the next: load balancers must agree):
 *
 * 1. Until a fifth of the table is taken, a claim usually takes the first slot it looks at: one probe at a time.
 * 2. Then a claim walks past more and more taken slots (about size / free), and each step of a plain walk is a
 *    branch the CPU cannot predict: with many edges that cost more than half the build. So a claim looks at the
 *    next MG_GROUP slots of its permutation at once (positions p + j * skip mod size from a per-edge table of
 *    j * skip mod size, wrapped by a conditional subtract in SSE, the bytes gathered into one word) and takes the
 *    first free one; a group of 8 at 90 % fill finds one more often than not, so the branch mostly goes one way.
 *    With one or two edges a walk is short (an edge never looks at a slot twice, so all walks together take at
 *    most n * size probes) and its branches follow a pattern the CPU learns: those builds stay with phase 1.
 * 3. Once at most MG_TAIL slots are free, each edge lists the free slots in the order its permutation reaches
 *    them and walks that list instead. The index of slot q in the permutation, counted from the edge's current
 *    position p, is (q - p) * skip^-1 mod size.
 *
 * Plain C on memory (no DPDK, no malloc): n <= PYDP_MAX_EDGES, so the per-edge state lives on the stack.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <smmintrin.h>

#include "pydp.h"

/* The two fixed seeds of the permutation hashes: changing them reshuffles every table (and breaks agreement with
 * load balancers running the old code). */
#define MG_SEED_OFFSET 0x6d61676c65763031ULL /* "maglev01" */
#define MG_SEED_SKIP   0x736b697070793032ULL /* "skippy02" */

/* Free slots left when the build switches to sorted free lists. An entry packs the permutation index (bits 12..31)
 * and the place of the slot in the free list (bits 0..11). Stack: PYDP_MAX_EDGES * MG_TAIL * 4 bytes. */
#define MG_TAIL 256
#define MG_SLOT_BITS 12
#define MG_RADIX_BITS 7
#define MG_RADIX_PASSES 3

/* Phase 2: the share of the table taken (in %) when it starts, the edges needed for it, the slots of its
 * permutation a claim looks at together (8: their bytes fill one 64-bit word). Measured with pydp-bench-maglev. */
#define MG_GROUP_FROM_PCT 20
#define MG_GROUP_MIN_EDGES 3
#define MG_GROUP 8

_Static_assert(MG_TAIL <= (1u << MG_SLOT_BITS), "free-list place fits its bits");
_Static_assert(PYDP_MAGLEV_MAX_SIZE <= (1u << (32 - MG_SLOT_BITS)), "permutation index fits its bits");
_Static_assert(PYDP_MAGLEV_MAX_SIZE <= (1u << (MG_RADIX_BITS * MG_RADIX_PASSES)), "radix passes cover the index");

struct mg_tail {
    uint32_t slot[MG_TAIL];                  /* the free slots when the phase began */
    uint32_t ent[PYDP_MAX_EDGES][MG_TAIL];   /* per edge, sorted by permutation index */
    uint32_t next[PYDP_MAX_EDGES];           /* per edge, the first entry not yet looked at */
};

static void
mg_err(char *err, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL)
        return;
    va_start(ap, fmt);
    vsnprintf(err, PYDP_ERR_LEN, fmt, ap);
    va_end(ap);
}

int
pydp_is_prime(uint32_t n)
{
    uint32_t d;

    if (n < 2)
        return 0;
    if (n < 4)
        return 1;
    if (n % 2 == 0 || n % 3 == 0)
        return 0;
    for (d = 5; (uint64_t)d * d <= n; d += 6)
        if (n % d == 0 || n % (d + 2) == 0)
            return 0;
    return 1;
}

/* Sorts the indices 0..n-1 by name (insertion sort: n <= 16). */
static void
mg_sort_by_name(const char *const *names, uint8_t *order, uint32_t n)
{
    uint32_t i, j;

    for (i = 0; i < n; i++)
        order[i] = (uint8_t)i;
    for (i = 1; i < n; i++) {
        uint8_t cur = order[i];

        for (j = i; j > 0 && strcmp(names[order[j - 1]], names[cur]) > 0; j--)
            order[j] = order[j - 1];
        order[j] = cur;
    }
}

static int
mg_check(const char *const *names, uint32_t n, uint32_t size, const uint8_t *table, char *err)
{
    uint32_t i;

    if (table == NULL) {
        mg_err(err, "maglev: no table buffer");
        return -1;
    }
    if (n > PYDP_MAX_EDGES) {
        mg_err(err, "maglev: too many edges: %u (at most %d)", n, PYDP_MAX_EDGES);
        return -1;
    }
    if (size > PYDP_MAGLEV_MAX_SIZE) {
        mg_err(err, "maglev: table size %u is larger than the maximum %d", size, PYDP_MAGLEV_MAX_SIZE);
        return -1;
    }
    if (!pydp_is_prime(size)) {
        mg_err(err, "maglev: table size %u is not prime", size);
        return -1;
    }
    if (size < n) {
        mg_err(err, "maglev: table size %u is smaller than the number of edges (%u)", size, n);
        return -1;
    }
    if (n > 0 && names == NULL) {
        mg_err(err, "maglev: no names");
        return -1;
    }
    for (i = 0; i < n; i++) {
        size_t len;

        if (names[i] == NULL) {
            mg_err(err, "maglev: edge %u has no name", i);
            return -1;
        }
        len = strnlen(names[i], PYDP_NAME_LEN);
        if (len == 0) {
            mg_err(err, "maglev: edge %u has an empty name", i);
            return -1;
        }
        if (len >= PYDP_NAME_LEN) {
            mg_err(err, "maglev: edge %u name '%.*s...' is longer than %d bytes", i, PYDP_NAME_LEN - 1, names[i],
                   PYDP_NAME_LEN - 1);
            return -1;
        }
    }
    return 0;
}

/* s^-1 mod m, for a prime m and 0 < s < m (extended Euclid). */
static uint32_t
mg_inverse(uint32_t s, uint32_t m)
{
    int64_t r0 = m, r1 = s, t0 = 0, t1 = 1;

    while (r1 != 0) {
        int64_t q = r0 / r1, tmp;

        tmp = r0 - q * r1;
        r0 = r1;
        r1 = tmp;
        tmp = t0 - q * t1;
        t0 = t1;
        t1 = tmp;
    }
    return (uint32_t)(t0 < 0 ? t0 + m : t0);
}

/* Writes the free slots of table (at most MG_TAIL) to out; returns their number. */
static uint32_t
mg_free_slots(const uint8_t *table, uint32_t size, uint32_t *out)
{
    const __m128i none = _mm_set1_epi8((char)PYDP_MAGLEV_NONE);
    uint32_t i = 0, nb = 0;

    for (; i + 16 <= size; i += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(table + i));
        uint32_t mask = (uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(v, none));

        while (mask) {
            out[nb++] = i + (uint32_t)__builtin_ctz(mask);
            mask &= mask - 1;
        }
    }
    for (; i < size; i++)
        if (table[i] == PYDP_MAGLEV_NONE)
            out[nb++] = i;
    return nb;
}

/* LSD radix sort of a[0..nb) on bits MG_SLOT_BITS and up (the entries' indices are distinct). */
static void
mg_radix_sort(uint32_t *a, uint32_t nb)
{
    uint32_t buf[MG_TAIL];
    uint32_t count[1u << MG_RADIX_BITS];
    uint32_t *src = a, *dst = buf, *swap;
    uint32_t pass, i;

    for (pass = 0; pass < MG_RADIX_PASSES; pass++) {
        unsigned shift = MG_SLOT_BITS + pass * MG_RADIX_BITS;
        const uint32_t mask = (1u << MG_RADIX_BITS) - 1;
        uint32_t sum = 0;

        memset(count, 0, sizeof(count));
        for (i = 0; i < nb; i++)
            count[(src[i] >> shift) & mask]++;
        for (i = 0; i <= mask; i++) {
            uint32_t c = count[i];

            count[i] = sum;
            sum += c;
        }
        for (i = 0; i < nb; i++)
            dst[count[(src[i] >> shift) & mask]++] = src[i];
        swap = src;
        src = dst;
        dst = swap;
    }
    if (src != a)
        memcpy(a, src, nb * sizeof(*a));
}

/* Starts the end phase: each edge's list of the free slots, in the order of its permutation from pos. */
static void
mg_tail_init(struct mg_tail *t, const uint8_t *table, uint32_t size, const uint32_t *pos, const uint32_t *skip,
             uint32_t m)
{
    /* x mod size without a division: x < size^2 < 2^40 is exact in a double, and the quotient estimated with the
     * reciprocal is off by at most one either way */
    const double recip = 1.0 / size;
    uint32_t nb, k, i;

    nb = mg_free_slots(table, size, t->slot);
    for (k = 0; k < m; k++) {
        uint64_t inv = mg_inverse(skip[k], size);
        uint32_t p = pos[k];

        for (i = 0; i < nb; i++) {
            uint32_t q = t->slot[i];
            int64_t x = (int64_t)((uint64_t)(q >= p ? q - p : q + size - p) * inv);
            int64_t r = x - (int64_t)((double)x * recip) * size;

            if (r < 0)
                r += size;
            else if (r >= size)
                r -= size;
            t->ent[k][i] = (uint32_t)r << MG_SLOT_BITS | i;
        }
        mg_radix_sort(t->ent[k], nb);
        t->next[k] = 0;
    }
}

int
pydp_maglev_build(const char *const *names, const uint16_t *weights, uint32_t n, uint32_t size,
                  uint8_t *table, char *err)
{
    return pydp_maglev_build_labels(names, weights, NULL, n, size, table, err);
}

int
pydp_maglev_build_labels(const char *const *names, const uint16_t *weights, const uint8_t *labels, uint32_t n,
                         uint32_t size, uint8_t *table, char *err)
{
    uint8_t order[PYDP_MAX_EDGES];
    uint8_t idx[PYDP_MAX_EDGES];      /* what the k-th eligible edge (in name order) writes: its label or index */
    uint32_t pos[PYDP_MAX_EDGES];     /* next slot of its permutation to look at */
    uint32_t skip[PYDP_MAX_EDGES];
    uint32_t wt[PYDP_MAX_EDGES];
    uint32_t credit[PYDP_MAX_EDGES];
    uint32_t step[PYDP_MAX_EDGES][MG_GROUP + 1]; /* step[k][j] = j * skip[k] mod size */
    struct mg_tail tail;
    uint32_t i, k, m, max_w, filled, group_from, tail_from;

    if (mg_check(names, n, size, table, err) < 0)
        return -1;
    for (i = 0; labels != NULL && i < n; i++) {
        if (labels[i] == PYDP_MAGLEV_NONE) {
            mg_err(err, "maglev: edge %u has the label %u, which marks an empty slot", i, PYDP_MAGLEV_NONE);
            return -1;
        }
    }

    mg_sort_by_name(names, order, n);
    for (i = 1; i < n; i++) {
        if (strcmp(names[order[i - 1]], names[order[i]]) == 0) {
            mg_err(err, "maglev: duplicate edge name '%s'", names[order[i]]);
            return -1;
        }
    }

    m = 0;
    max_w = 0;
    for (i = 0; i < n; i++) {
        uint8_t e = order[i];
        uint32_t w = weights ? weights[e] : 1;

        if (w == 0)
            continue;
        idx[m] = labels ? labels[e] : e;
        wt[m] = w;
        credit[m] = 0;
        pos[m] = (uint32_t)(pydp_hash_name(names[e], MG_SEED_OFFSET) % size);
        skip[m] = (uint32_t)(pydp_hash_name(names[e], MG_SEED_SKIP) % (size - 1)) + 1;
        if (w > max_w)
            max_w = w;
        m++;
    }

    memset(table, PYDP_MAGLEV_NONE, size);
    if (m == 0)
        return 0;

    /* Turns go round the edges in name order: on each, the edge earns its weight and, when its credit reaches
     * max_w, claims one slot. k (the edge whose turn it is) carries over from phase to phase. */
    tail_from = size > MG_TAIL ? size - MG_TAIL : 0;
    group_from = m < MG_GROUP_MIN_EDGES ? tail_from : (uint32_t)((uint64_t)size * MG_GROUP_FROM_PCT / 100);
    if (group_from > tail_from)
        group_from = tail_from;
    filled = 0;
    k = 0;
    while (filled < group_from) {
        credit[k] += wt[k];
        if (__builtin_expect(credit[k] >= max_w, 1)) {
            uint32_t p = pos[k], s = skip[k];

            credit[k] -= max_w;
            while (table[p] != PYDP_MAGLEV_NONE) {
                p += s;
                if (p >= size)
                    p -= size;
            }
            table[p] = idx[k];
            p += s;
            if (p >= size)
                p -= size;
            pos[k] = p;
            filled++;
        }
        if (++k == m)
            k = 0;
    }

    if (filled < tail_from) {
        const __m128i vsize = _mm_set1_epi32((int)size);

        for (i = 0; i < m; i++) {
            uint32_t j;

            step[i][0] = 0;
            for (j = 1; j <= MG_GROUP; j++) {
                uint32_t x = step[i][j - 1] + skip[i];

                step[i][j] = x >= size ? x - size : x;
            }
        }
        while (filled < tail_from) {
            credit[k] += wt[k];
            if (__builtin_expect(credit[k] >= max_w, 1)) {
                const uint32_t *st = step[k];
                uint32_t p = pos[k], q[MG_GROUP], j;
                uint64_t free8;

                credit[k] -= max_w;
                for (;;) {
                    /* q[j] = (p + st[j]) mod size; both are below size, so one conditional subtract (an unsigned
                     * min with the difference) wraps it */
                    __m128i vp = _mm_set1_epi32((int)p);
                    __m128i lo = _mm_add_epi32(vp, _mm_loadu_si128((const __m128i *)st));
                    __m128i hi = _mm_add_epi32(vp, _mm_loadu_si128((const __m128i *)(st + 4)));
                    uint64_t bytes = 0;

                    lo = _mm_min_epu32(lo, _mm_sub_epi32(lo, vsize));
                    hi = _mm_min_epu32(hi, _mm_sub_epi32(hi, vsize));
                    _mm_storeu_si128((__m128i *)q, lo);
                    _mm_storeu_si128((__m128i *)(q + 4), hi);
                    for (j = 0; j < MG_GROUP; j++)
                        bytes |= (uint64_t)table[q[j]] << (8 * j);
                    /* the top bit of each free (0xff) byte: exact for the lowest one, which is all we need */
                    free8 = (~bytes - 0x0101010101010101ULL) & bytes & 0x8080808080808080ULL;
                    if (free8)
                        break;
                    p += st[MG_GROUP];
                    if (p >= size)
                        p -= size;
                }
                j = q[__builtin_ctzll(free8) >> 3];
                table[j] = idx[k];
                j += skip[k];
                pos[k] = j >= size ? j - size : j;
                filled++;
            }
            if (++k == m)
                k = 0;
        }
    }

    mg_tail_init(&tail, table, size, pos, skip, m);
    while (filled < size) {
        credit[k] += wt[k];
        if (credit[k] >= max_w) {
            const uint32_t *ent = tail.ent[k];
            uint32_t j = tail.next[k], q;

            credit[k] -= max_w;
            /* every free slot is on every list, and one is free: the walk ends inside the list */
            while (table[q = tail.slot[ent[j] & ((1u << MG_SLOT_BITS) - 1)]] != PYDP_MAGLEV_NONE)
                j++;
            table[q] = idx[k];
            tail.next[k] = j + 1;
            filled++;
        }
        if (++k == m)
            k = 0;
    }
    return 0;
}
