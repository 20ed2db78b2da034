/*
 * flow.c - the per-worker flow table: a bucketed, 6-way set-associative hash table in caller-provided memory.
 *
 * Layout (see pydp.h): struct pydp_flow_table (its counters, and what pins depend on: pin_since and ident), then
 * nb_buckets x struct pydp_flow_bucket, each 64-byte aligned. A bucket is one hot line and six cold ones:
 *
 *     line 0   sig[6], last_ms[6], pin[6], pkts[6]          which way holds a flow, when it last saw a packet, its
 *                                                           edge slot and state, packets not yet folded
 *     1..6     flows[6] (struct pydp_flow, 64 bytes)        the cold record: full key, hash, created, packets,
 *                                                           cluster and the uids it was pinned with, ...
 *
 * An established hit reads and writes line 0 only, one line from memory per packet: the worker prefetches it
 * for a whole pass before it looks. The cold record is written when a flow opens (whole, with non-temporal
 * stores: see flw_write), is re-pinned or changes state, and read by confirmations (a key before a state change,
 * a pin after its cluster slot changed), flow sync, flush and `pydpctl flows`. The worker prefetches it only for
 * a packet that will read it: a hit whose TCP flags change the flow's state (pydp_flow_prefetch_record).
 *
 * Pins: a hit forwards on line 0's edge slot when the edge there is up or draining and the pin is known to be
 * current: the flow was last seen after the last change of its cluster's slot (pydp_flow_pin_current). The owning
 * worker tells the table each config it starts using (pydp_flow_config); a cluster slot whose uid, family,
 * cluster IP or any edge uid changed gets pin_since = now, and each flow of it last seen at or before that
 * confirms its pin once against its record (cluster, cluster uid, edge uid: pin_checks) before it is forwarded
 * on it -- or is re-pinned by Maglev, as before. A cluster IP belongs to one slot at a time, so a packet classified
 * to an unchanged slot belongs to the flows that slot pinned. A flow installed by flow sync carries
 * PYDP_FLOW_PIN_CHECK in its pin byte: the peer's pin is confirmed the same way on its first hit here.
 * pydp_flow_tick keeps pin_since within 2^30 ms of now.
 *
 * Signatures: a way holds sig = pydp_flow_sig(key) | 1 (0 means "empty way"), bit 1 = PYDP_FLOW_SIG_SYN, set
 * while the flow is half-open (state TCP_SYN), so an insert into a full bucket finds the half-open ways from
 * line 0 alone. Matching ignores the bit. The bucket is hash & mask, where hash = pydp_flow_hash(key): the
 * signature is a second hash, independent of the bucket bits, so its 30 bits all tell ways apart.
 *
 * Hits on the signature alone (pydp_flow_find, the fast path): at most one way of a bucket holds a given
 * signature (an insert happens only when the lookup found none), so a packet of a stored flow always finds its
 * own way. A packet of a flow NOT stored matches a stored one with probability (occupied ways compared) x 2^-30:
 * with 1M flows in the default 2M entries (3.1M with six ways: about 2 occupied ways per bucket) 1.9e-9 per new
 * flow. Such a packet is forwarded to the edge in the other flow's slot of its own cluster (a new TCP connection
 * there is refused by that edge and retried by the client) and refreshes that flow's time; everything that would
 * change the stored flow -- a new state from TCP flags, a re-pin because its edge went away -- first compares the
 * full key (pydp_flow_confirm) and leaves the flow alone when it differs (counted in false_matches).
 * pydp_flow_lookup (flow sync, tests, the control plane) always compares the full key.
 *
 * Eviction: an insert into a full bucket takes the first expired way, else the least recently used half-open flow
 * (TCP SYN state), else the least recently used way of all: a SYN flood cannot push out established flows.
 *
 * Expiry: times are uint32 milliseconds that wrap; a way is expired when (int32_t)(now - last_ms) > timeout of its
 * state. Expired ways are reclaimed lazily: by a lookup that finds its key expired, or by an insert that needs room.
 * The fast path stores last_ms only when it changed (most packets of a busy flow arrive within its millisecond).
 *
 * Packets: pkts[w] counts the packets the fast path saw since the last fold; every PYDP_FLOW_PKTS_FOLD
 * packets it is added to the cold record's packets (one cold write per 256 packets). A flow's count is
 * packets + pkts (pydp_flow_packets; the control plane reads both).
 *
 * Per-packet use by the owning worker (native/src/verdict.c):
 *
 *     w = pydp_flow_find(t, hash, sig, now, cfg, &b);
 *     if (w >= 0) {
 *         pydp_flow_hit_at(t, b, w, &key, tcp_flags, now);     <- time, count, the next state (key confirmed first)
 *     } else {
 *         f = pydp_flow_open(t, &key, hash, sig, now, cfg,      <- the whole flow in one pass: key, pin, the state
 *                            cluster, cluster_uid, edge, edge_uid,    from this first packet, one packet
 *                            tcp_flags, &evicted);
 *     }
 *     ... pydp_flow_fence() once per burst
 *
 * TCP states are tracked from the client side only (DSR: the replies do not come through us):
 *     EMPTY --SYN without ACK--> SYN         EMPTY --anything else--> EST
 *     SYN --ACK without SYN--> EST           any --FIN or RST--> FIN (checked first)
 *     FIN --SYN without ACK--> SYN (port reuse)
 * UDP flows are UDP, every other protocol OTHER.
 *
 * Concurrency: only the owning worker writes the table; the control plane reads it at any time. A way is never
 * visible with a non-zero signature and a half-written flow: a way being reused is first unpublished (sig = 0),
 * then the flow, its pin, pkts and last_ms are written, then the signature is published last (release store; a
 * compiler barrier on x86). A reader should copy sig, then the flow, then re-read sig and keep the copy only if
 * both reads agree, are non-zero and match the record's sig (half-open bit aside). The one exception is the
 * fast path's new record (pydp_flow_open): its non-temporal stores may become visible to other cores after the
 * signature, until the worker's fence at the end of the burst (a few microseconds); a reader in that window sees
 * the previous record, whose sig does not match, and drops the copy as above.
 */
#include <stdint.h>
#include <stddef.h>
#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif
#ifdef __SSE4_1__
#include <smmintrin.h>
#endif

#include "pydp.h"

#define FLW_MIN_BUCKETS 8u

#define FLW_TCP_FIN 0x01
#define FLW_TCP_SYN 0x02
#define FLW_TCP_RST 0x04
#define FLW_TCP_ACK 0x10

#define FLW_PROTO_TCP 6
#define FLW_PROTO_UDP 17

#define flw_barrier() __asm__ volatile("" ::: "memory")

_Static_assert(sizeof(struct pydp_flow_key) == 40, "flow key must be 40 bytes");
_Static_assert(sizeof(struct pydp_flow) == 64, "flow must be 64 bytes");
_Static_assert(PYDP_FLOW_WAYS == 6, "line 0 holds six ways");
_Static_assert(sizeof(struct pydp_flow_bucket) == 448, "bucket must be 7 cache lines");
_Static_assert(offsetof(struct pydp_flow_bucket, flows) == 64, "the cold records must follow the hot line");
_Static_assert(sizeof(struct pydp_flow_ident) == 52, "an ident must be 52 bytes");
_Static_assert(sizeof(struct pydp_flow_table) % 64 == 0, "the buckets must start on a cache line");
_Static_assert(PYDP_MAX_EDGES <= 16 && PYDP_FLOW_OTHER < 8, "a pin byte holds an edge slot, a state and a flag");

#define FLW_ALL_WAYS ((1u << PYDP_FLOW_WAYS) - 1)

static inline struct pydp_flow_bucket *
flw_buckets(const struct pydp_flow_table *t)
{
    return (struct pydp_flow_bucket *)(uintptr_t)(t + 1);
}

static inline struct pydp_flow_bucket *
flw_bucket(const struct pydp_flow_table *t, uint32_t hash)
{
    return flw_buckets(t) + (hash & t->mask);
}

static inline uint32_t
flw_sig(uint32_t sig)
{
    return (sig | 1u) & ~(uint32_t)PYDP_FLOW_SIG_SYN;
}

static inline uint8_t
flw_state(const struct pydp_flow_bucket *b, unsigned w)
{
    return (uint8_t)((b->pin[w] >> 4) & 7);
}

static inline uint8_t
flw_edge(const struct pydp_flow_bucket *b, unsigned w)
{
    return (uint8_t)(b->pin[w] & 0x0f);
}

static inline uint8_t
flw_pin_byte(uint8_t edge, uint8_t state)
{
    return (uint8_t)((edge & 0x0f) | state << 4);
}

/* The bucket holding f, and f's way in it. */
static inline struct pydp_flow_bucket *
flw_bucket_of(const struct pydp_flow_table *t, const struct pydp_flow *f, unsigned *way)
{
    struct pydp_flow_bucket *base = flw_buckets(t);
    size_t idx = (size_t)((uintptr_t)f - (uintptr_t)base) / sizeof(struct pydp_flow_bucket);
    struct pydp_flow_bucket *b = base + idx;

    *way = (unsigned)(f - b->flows);
    return b;
}

static inline void
flw_publish(struct pydp_flow_bucket *b, unsigned way, uint32_t sig)
{
    flw_barrier();
    __atomic_store_n(&b->sig[way], sig, __ATOMIC_RELEASE);
}

static inline void
flw_unpublish(struct pydp_flow_bucket *b, unsigned way)
{
    __atomic_store_n(&b->sig[way], 0, __ATOMIC_RELAXED);
    flw_barrier();
}

/* Bit w set for every way whose signature, with the bits in ignore cleared, equals sig. */
static inline unsigned
flw_match_masked(const struct pydp_flow_bucket *b, uint32_t sig, uint32_t ignore)
{
#ifdef __SSE2__
    __m128i s = _mm_set1_epi32((int)sig);
    __m128i keep = _mm_set1_epi32((int)~ignore);
    /* ways 0..3 and 2..5: the overlap reports ways 2 and 3 twice, which an OR does not mind */
    __m128i lo = _mm_and_si128(_mm_loadu_si128((const __m128i *)(const void *)&b->sig[0]), keep);
    __m128i hi = _mm_and_si128(_mm_loadu_si128((const __m128i *)(const void *)&b->sig[2]), keep);
    unsigned mlo = (unsigned)_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(lo, s)));
    unsigned mhi = (unsigned)_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(hi, s)));

    return mlo | (mhi << 2);
#else
    unsigned m = 0, w;

    for (w = 0; w < PYDP_FLOW_WAYS; w++)
        m |= (unsigned)((b->sig[w] & ~ignore) == sig) << w;
    return m;
#endif
}

/* The ways whose signature is sig's (the half-open bit ignored). */
static inline unsigned
flw_match_sig(const struct pydp_flow_bucket *b, uint32_t sig)
{
    return flw_match_masked(b, flw_sig(sig), PYDP_FLOW_SIG_SYN);
}

/* The empty ways. */
static inline unsigned
flw_match_empty(const struct pydp_flow_bucket *b)
{
    return flw_match_masked(b, 0, 0);
}

/* The half-open ways. */
static inline unsigned
flw_match_syn(const struct pydp_flow_bucket *b)
{
    return flw_match_masked(b, PYDP_FLOW_SIG_SYN, ~(uint32_t)PYDP_FLOW_SIG_SYN);
}

/* Sets f's state (way w of b: the pin byte and the cold copy) and mirrors "half-open" into the way's signature:
 * state first, then the signature, so a reader that copies sig, flow, sig sees the change as a changed signature. */
static inline void
flw_set_state(struct pydp_flow_bucket *b, unsigned w, struct pydp_flow *f, uint8_t st)
{
    uint32_t sig = b->sig[w] & ~(uint32_t)PYDP_FLOW_SIG_SYN;

    b->pin[w] = (uint8_t)((b->pin[w] & (0x0f | PYDP_FLOW_PIN_CHECK)) | st << 4);
    f->state = st;
    flw_barrier();
    __atomic_store_n(&b->sig[w], st == PYDP_FLOW_TCP_SYN ? sig | PYDP_FLOW_SIG_SYN : sig, __ATOMIC_RELAXED);
}

static inline uint64_t
flw_load64(const void *p)
{
    uint64_t v;

    memcpy(&v, p, sizeof(v));
    return v;
}

static inline int
flw_key_eq(const struct pydp_flow_key *a, const struct pydp_flow_key *b)
{
    const uint8_t *pa = (const uint8_t *)a, *pb = (const uint8_t *)b;
    uint64_t d;

    d = flw_load64(pa) ^ flw_load64(pb);
    d |= flw_load64(pa + 8) ^ flw_load64(pb + 8);
    d |= flw_load64(pa + 16) ^ flw_load64(pb + 16);
    d |= flw_load64(pa + 24) ^ flw_load64(pb + 24);
    d |= flw_load64(pa + 32) ^ flw_load64(pb + 32);
    return d == 0;
}

/* Signed age of a way; negative if last is "in the future" (treated as fresh). */
static inline int32_t
flw_age(uint32_t now, uint32_t last)
{
    return (int32_t)(now - last);
}

static inline int
flw_expired_age(int32_t age, uint32_t timeout)
{
    return (int64_t)age > (int64_t)timeout;
}

static void
flw_timeout_range(const struct pydp_config *cfg, uint32_t *lo, uint32_t *hi)
{
    const uint32_t v[5] = {
        cfg->tcp_syn_timeout_ms, cfg->tcp_est_timeout_ms, cfg->tcp_fin_timeout_ms,
        cfg->udp_timeout_ms, cfg->other_timeout_ms,
    };
    uint32_t mn = v[0], mx = v[0];
    unsigned i;

    for (i = 1; i < 5; i++) {
        if (v[i] < mn)
            mn = v[i];
        if (v[i] > mx)
            mx = v[i];
    }
    *lo = mn;
    *hi = mx;
}

/* Is way w of b (occupied) expired at now? Reads the flow line only when its age alone cannot tell. */
static inline int
flw_way_expired(const struct pydp_flow_bucket *b, unsigned w, uint32_t now, const struct pydp_config *cfg,
                uint32_t tmin, uint32_t tmax)
{
    int32_t age = flw_age(now, b->last_ms[w]);

    if (!flw_expired_age(age, tmin))
        return 0;
    if (flw_expired_age(age, tmax))
        return 1;
    return flw_expired_age(age, pydp_flow_timeout(cfg, flw_state(b, w)));
}

/* TCP state after a packet with the given flags (client to server direction). */
static inline uint8_t
flw_tcp_next(uint8_t state, uint8_t flags)
{
    int syn_only = (flags & (FLW_TCP_SYN | FLW_TCP_ACK)) == FLW_TCP_SYN;

    if (flags & (FLW_TCP_FIN | FLW_TCP_RST))
        return PYDP_FLOW_TCP_FIN;
    switch (state) {
    case PYDP_FLOW_EMPTY:
        return syn_only ? PYDP_FLOW_TCP_SYN : PYDP_FLOW_TCP_EST;
    case PYDP_FLOW_TCP_SYN:
        return (flags & (FLW_TCP_SYN | FLW_TCP_ACK)) == FLW_TCP_ACK ? PYDP_FLOW_TCP_EST : PYDP_FLOW_TCP_SYN;
    case PYDP_FLOW_TCP_FIN:
        return syn_only ? PYDP_FLOW_TCP_SYN : PYDP_FLOW_TCP_FIN;
    case PYDP_FLOW_TCP_EST:
        return PYDP_FLOW_TCP_EST;
    default:
        /* a TCP flow in a non-TCP state (e.g. installed by flow sync): restart from the first-packet rule */
        return syn_only ? PYDP_FLOW_TCP_SYN : PYDP_FLOW_TCP_EST;
    }
}

/* The state of a flow of protocol proto in state st after a packet; also the initial state (st EMPTY). */
static inline uint8_t
flw_next_state(uint8_t proto, uint8_t st, uint8_t tcp_flags)
{
    if (proto == FLW_PROTO_TCP)
        return flw_tcp_next(st, tcp_flags);
    if (proto == FLW_PROTO_UDP)
        return PYDP_FLOW_UDP;
    return PYDP_FLOW_OTHER;
}

/* Adds the way's hot packet counter to the cold record. */
static inline void
flw_fold_pkts(struct pydp_flow_bucket *b, unsigned w)
{
    b->flows[w].packets += b->pkts[w];
    b->pkts[w] = 0;
}

/* The least recently used way of a full bucket, among its half-open ways if it has any (SYN-first eviction: a
 * flood of SYNs from random sources only pushes out its own kind, so established flows survive it however rarely
 * they send), ties to the lowest way. From line 0 alone, and without a branch on the data: the ages of a bucket
 * are as random as its flows, and a scan that branches on each comparison mispredicts several times an insert. */
static inline unsigned
flw_lru(const struct pydp_flow_bucket *b, uint32_t now)
{
#ifdef __SSE4_1__
    const __m128i synbit = _mm_set1_epi32(PYDP_FLOW_SIG_SYN);
    const __m128i n = _mm_set1_epi32((int)now);
    const __m128i lo = _mm_set1_epi32(INT32_MIN);
    /* ways 0..3 and 2..5 (the overlap changes neither the maximum nor the lowest way that has it) */
    __m128i s0 = _mm_loadu_si128((const __m128i *)(const void *)&b->sig[0]);
    __m128i s1 = _mm_loadu_si128((const __m128i *)(const void *)&b->sig[2]);
    __m128i a0 = _mm_sub_epi32(n, _mm_loadu_si128((const __m128i *)(const void *)&b->last_ms[0]));
    __m128i a1 = _mm_sub_epi32(n, _mm_loadu_si128((const __m128i *)(const void *)&b->last_ms[2]));
    __m128i c0 = _mm_cmpeq_epi32(_mm_and_si128(s0, synbit), synbit);
    __m128i c1 = _mm_cmpeq_epi32(_mm_and_si128(s1, synbit), synbit);
    __m128i all = _mm_cmpeq_epi32(_mm_or_si128(c0, c1), _mm_setzero_si128());
    __m128i m;
    unsigned eq;

    /* no half-open way: every way is a candidate (all = ~0 in every lane only when no lane of c0 | c1 is set) */
    all = _mm_and_si128(all, _mm_shuffle_epi32(all, 0x4e));
    all = _mm_and_si128(all, _mm_shuffle_epi32(all, 0xb1));
    c0 = _mm_or_si128(c0, all);
    c1 = _mm_or_si128(c1, all);
    a0 = _mm_or_si128(_mm_and_si128(c0, a0), _mm_andnot_si128(c0, lo));
    a1 = _mm_or_si128(_mm_and_si128(c1, a1), _mm_andnot_si128(c1, lo));
    m = _mm_max_epi32(a0, a1);
    m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0x4e));
    m = _mm_max_epi32(m, _mm_shuffle_epi32(m, 0xb1));
    eq = (unsigned)_mm_movemask_ps(_mm_castsi128_ps(_mm_and_si128(_mm_cmpeq_epi32(a0, m), c0))) |
         ((unsigned)_mm_movemask_ps(_mm_castsi128_ps(_mm_and_si128(_mm_cmpeq_epi32(a1, m), c1))) << 2);
    return (unsigned)__builtin_ctz(eq);
#else
    unsigned cand = flw_match_syn(b), i, lru;
    int32_t oldest;

    if (cand == 0)
        cand = FLW_ALL_WAYS;
    lru = (unsigned)__builtin_ctz(cand);
    oldest = flw_age(now, b->last_ms[lru]);
    for (i = lru + 1; i < PYDP_FLOW_WAYS; i++) {
        int32_t age = flw_age(now, b->last_ms[i]);

        if (((cand >> i) & 1) && age > oldest) {
            oldest = age;
            lru = i;
        }
    }
    return lru;
#endif
}

/* The ways of b that may have expired: age above the shortest timeout (most often none). */
static inline unsigned
flw_maybe_expired(const struct pydp_flow_bucket *b, uint32_t now, uint32_t tmin)
{
    int32_t t = tmin > (uint32_t)INT32_MAX ? INT32_MAX : (int32_t)tmin;
#ifdef __SSE2__
    const __m128i n = _mm_set1_epi32((int)now);
    const __m128i tv = _mm_set1_epi32(t);
    __m128i a0 = _mm_sub_epi32(n, _mm_loadu_si128((const __m128i *)(const void *)&b->last_ms[0]));
    __m128i a1 = _mm_sub_epi32(n, _mm_loadu_si128((const __m128i *)(const void *)&b->last_ms[2]));

    return (unsigned)_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpgt_epi32(a0, tv))) |
           ((unsigned)_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpgt_epi32(a1, tv))) << 2);
#else
    unsigned m = 0, i;

    for (i = 0; i < PYDP_FLOW_WAYS; i++)
        m |= (unsigned)(flw_age(now, b->last_ms[i]) > t) << i;
    return m;
#endif
}

uint64_t
pydp_flow_table_bytes(uint32_t capacity)
{
    uint64_t want = ((uint64_t)capacity + PYDP_FLOW_WAYS - 1) / PYDP_FLOW_WAYS;
    uint64_t n = FLW_MIN_BUCKETS;

    while (n < want)
        n <<= 1;
    return sizeof(struct pydp_flow_table) + n * sizeof(struct pydp_flow_bucket);
}

void
pydp_flow_table_init(struct pydp_flow_table *t, uint32_t capacity)
{
    uint64_t bytes = pydp_flow_table_bytes(capacity);
    uint64_t n = (bytes - sizeof(*t)) / sizeof(struct pydp_flow_bucket);

    memset(t, 0, (size_t)bytes);
    t->nb_buckets = (uint32_t)n;
    t->mask = (uint32_t)(n - 1);
}

uint32_t
pydp_flow_timeout(const struct pydp_config *cfg, uint8_t state)
{
    /* the five timeouts are consecutive in state order (SYN, EST, FIN, UDP, OTHER): a load, not a branch per
     * state; EMPTY and anything unknown take OTHER's */
    const uint32_t *t = &cfg->tcp_syn_timeout_ms;
    uint32_t i = (uint32_t)state - PYDP_FLOW_TCP_SYN;

    _Static_assert(offsetof(struct pydp_config, tcp_est_timeout_ms) == offsetof(struct pydp_config,
                   tcp_syn_timeout_ms) + 4 && offsetof(struct pydp_config, tcp_fin_timeout_ms) ==
                   offsetof(struct pydp_config, tcp_syn_timeout_ms) + 8 && offsetof(struct pydp_config,
                   udp_timeout_ms) == offsetof(struct pydp_config, tcp_syn_timeout_ms) + 12 &&
                   offsetof(struct pydp_config, other_timeout_ms) == offsetof(struct pydp_config,
                   tcp_syn_timeout_ms) + 16, "the timeouts in state order");
    _Static_assert(PYDP_FLOW_TCP_EST == PYDP_FLOW_TCP_SYN + 1 && PYDP_FLOW_TCP_FIN == PYDP_FLOW_TCP_SYN + 2 &&
                   PYDP_FLOW_UDP == PYDP_FLOW_TCP_SYN + 3 && PYDP_FLOW_OTHER == PYDP_FLOW_TCP_SYN + 4,
                   "the states in timeout order");
    return t[i < 5 ? i : 4];
}

void
pydp_flow_prefetch_bucket(const struct pydp_flow_table *t, uint32_t hash)
{
    const struct pydp_flow_bucket *b = flw_bucket(t, hash);

    __builtin_prefetch(&b->sig[0], 1, 3);
}

/* Second stage of a pipelined lookup, with the hot line in cache: fetch the cold record when the packet will read
 * it, that is when it matches a way whose state its TCP flags change (the state change first confirms the full
 * key). A hit that changes nothing reads no record, and a new flow writes its record whole without reading it
 * (flw_write). */
void
pydp_flow_prefetch_record(const struct pydp_flow_table *t, uint32_t hash, uint32_t sig, uint8_t proto,
                          uint8_t tcp_flags)
{
    const struct pydp_flow_bucket *b;
    unsigned m, w;

    if (proto != FLW_PROTO_TCP)
        return;
    b = flw_bucket(t, hash);
    m = flw_match_sig(b, sig);
    if (m == 0)
        return;
    w = (unsigned)__builtin_ctz(m);
    if (flw_tcp_next(flw_state(b, w), tcp_flags) != flw_state(b, w))
        __builtin_prefetch(&b->flows[w], 0, 3);
}

/* An expired way found by a lookup: reclaimed. */
static inline void
flw_reclaim(struct pydp_flow_table *t, struct pydp_flow_bucket *b, unsigned w)
{
    flw_unpublish(b, w);
    t->live--;
    t->expired++;
}

int
pydp_flow_find(struct pydp_flow_table *t, uint32_t hash, uint32_t sig, uint32_t now_ms, const struct pydp_config *cfg,
               struct pydp_flow_bucket **bucket)
{
    struct pydp_flow_bucket *b = flw_bucket(t, hash);
    unsigned m = flw_match_sig(b, sig), w;

    *bucket = b;
    if (m == 0)
        return -1;
    w = (unsigned)__builtin_ctz(m);         /* at most one way holds a signature */
    if (__builtin_expect(flw_expired_age(flw_age(now_ms, b->last_ms[w]),
                                         pydp_flow_timeout(cfg, flw_state(b, w))), 0)) {
        flw_reclaim(t, b, w);
        return -1;
    }
    return (int)w;
}

struct pydp_flow *
pydp_flow_lookup(struct pydp_flow_table *t, const struct pydp_flow_key *key, uint32_t hash, uint32_t now_ms,
                 const struct pydp_config *cfg)
{
    struct pydp_flow_bucket *b = flw_bucket(t, hash);
    unsigned m = flw_match_sig(b, pydp_flow_sig(key));

    while (m != 0) {
        unsigned w = (unsigned)__builtin_ctz(m);
        struct pydp_flow *f = &b->flows[w];

        m &= m - 1;
        if (!flw_key_eq(&f->key, key))
            continue;
        if (flw_expired_age(flw_age(now_ms, b->last_ms[w]), pydp_flow_timeout(cfg, flw_state(b, w)))) {
            flw_reclaim(t, b, w);
            return NULL;
        }
        return f;
    }
    return NULL;
}

int
pydp_flow_confirm(const struct pydp_flow *f, const struct pydp_flow_key *key)
{
    return flw_key_eq(&f->key, key);
}

uint8_t
pydp_flow_edge_at(const struct pydp_flow_bucket *b, unsigned w)
{
    return flw_edge(b, w);
}

uint8_t
pydp_flow_state_at(const struct pydp_flow_bucket *b, unsigned w)
{
    return flw_state(b, w);
}

uint8_t
pydp_flow_edge(const struct pydp_flow_table *t, const struct pydp_flow *f)
{
    unsigned w;
    const struct pydp_flow_bucket *b = flw_bucket_of(t, f, &w);

    return flw_edge(b, w);
}

uint8_t
pydp_flow_state(const struct pydp_flow_table *t, const struct pydp_flow *f)
{
    unsigned w;
    const struct pydp_flow_bucket *b = flw_bucket_of(t, f, &w);

    return flw_state(b, w);
}

int
pydp_flow_pin_current(const struct pydp_flow_table *t, const struct pydp_flow_bucket *b, unsigned w,
                      uint16_t cluster)
{
    return !(b->pin[w] & PYDP_FLOW_PIN_CHECK) &&
           (int32_t)(b->last_ms[w] - t->pin_since[cluster & (PYDP_MAX_CLUSTERS - 1)]) > 0;
}

void
pydp_flow_pin_confirmed(struct pydp_flow_table *t, struct pydp_flow_bucket *b, unsigned w)
{
    b->pin[w] &= (uint8_t)~PYDP_FLOW_PIN_CHECK;
    t->pin_checks++;
}

void
pydp_flow_config(struct pydp_flow_table *t, const struct pydp_config *cfg, uint32_t now_ms)
{
    unsigned c, e;

    for (c = 0; c < PYDP_MAX_CLUSTERS; c++) {
        const struct pydp_cluster *cl = &cfg->clusters[c];
        struct pydp_flow_ident id;

        memset(&id, 0, sizeof(id));
        if (c < cfg->nb_clusters && cl->family != PYDP_AF_NONE) {
            id.uid = cl->uid;
            id.family = cl->family;
            memcpy(id.vip, cl->vip, sizeof(id.vip));
            for (e = 0; e < PYDP_MAX_EDGES; e++)
                id.edge_uid[e] = cl->edges[e].uid;
        }
        if (memcmp(&id, &t->ident[c], sizeof(id)) != 0) {
            t->ident[c] = id;
            t->pin_since[c] = now_ms;
        }
    }
}

void
pydp_flow_tick(struct pydp_flow_table *t, uint32_t now_ms)
{
    unsigned c = now_ms & (PYDP_MAX_CLUSTERS - 1);

    if ((int32_t)(now_ms - t->pin_since[c]) > (int32_t)(1u << 30))
        t->pin_since[c] = now_ms - (1u << 30);
}

void
pydp_flow_pin(struct pydp_flow_table *t, struct pydp_flow *f, uint16_t cluster, uint16_t cluster_uid,
              uint8_t edge, uint16_t edge_uid)
{
    unsigned w;
    struct pydp_flow_bucket *b = flw_bucket_of(t, f, &w);

    b->pin[w] = flw_pin_byte(edge, flw_state(b, w));
    f->cluster = cluster;
    f->cluster_uid = cluster_uid;
    f->edge = edge;
    f->edge_uid = edge_uid;
}

/* The way a new flow of bucket b takes: the first empty way, else the first expired one, else the least recently
 * used (half-open first). The way is unpublished (signature 0) before it is rewritten. */
static inline unsigned
flw_take_way(struct pydp_flow_table *t, struct pydp_flow_bucket *b, uint32_t now_ms, const struct pydp_config *cfg,
             int *evicted)
{
    unsigned empty = flw_match_empty(b);
    unsigned w;

    *evicted = 0;
    if (__builtin_expect(empty != 0, 1)) {
        t->live++;
        return (unsigned)__builtin_ctz(empty);
    }
    {
        uint32_t tmin, tmax;
        unsigned old;

        flw_timeout_range(cfg, &tmin, &tmax);
        old = flw_maybe_expired(b, now_ms, tmin);
        w = PYDP_FLOW_WAYS;
        while (__builtin_expect(old != 0, 0)) {
            unsigned i = (unsigned)__builtin_ctz(old);

            old &= old - 1;
            if (flw_way_expired(b, i, now_ms, cfg, tmin, tmax)) {
                w = i;
                break;
            }
        }
        if (w < PYDP_FLOW_WAYS) {
            t->expired++;
        } else {
            w = flw_lru(b, now_ms);
            *evicted = 1;
            t->evicted++;
        }
    }
    flw_unpublish(b, w);
    return w;
}

/* What flw_write stores of a new flow besides its key. */
struct flw_new {
    uint16_t cluster;
    uint16_t cluster_uid;
    uint16_t edge_uid;
    uint8_t  edge;
    uint8_t  state;
};

/*
 * Writes a new flow into way w of b and publishes it: the cold record, the pin byte, packets and time, then the
 * signature (with the half-open bit for state TCP_SYN).
 *
 * The record is written whole, in place, as four 16-byte non-temporal stores: a new flow's line is almost never
 * in the cache (the way it replaces was chosen for being old), and a normal store would first read the line
 * from memory only to overwrite all 64 bytes of it. In a SYN flood that read, on top of the bucket's hot line, was
 * what kept the memory system from overlapping more inserts. (Building the record on the stack and copying it
 * would also read 16-byte words back from narrower stores: a store-forwarding failure that waits for every older
 * store to leave the store buffer.) The worker calls pydp_flow_fence() before it leaves a burst, so another
 * process never sees a published signature whose record is older than the burst; the worker itself always sees
 * its own stores.
 */
static inline void
flw_write(struct pydp_flow_bucket *b, unsigned w, const struct pydp_flow_key *key, uint32_t hash, uint32_t sig,
          uint32_t now_ms, const struct flw_new *h, uint8_t pkts)
{
    struct pydp_flow *f = &b->flows[w];
#ifdef __SSE2__
    const uint8_t *k = (const uint8_t *)key;
    __m128i x0 = _mm_loadu_si128((const __m128i *)(const void *)k);
    __m128i x1 = _mm_loadu_si128((const __m128i *)(const void *)(k + 16));
    __m128i x2 = _mm_set_epi64x((long long)(((uint64_t)now_ms << 32) | hash), (long long)flw_load64(k + 32));
    /* packets 0; cluster, cluster_uid; edge_uid, edge, state; sig */
    __m128i x3 = _mm_set_epi32((int)sig,
                               (int)((uint32_t)h->edge_uid | ((uint32_t)h->edge << 16) | ((uint32_t)h->state << 24)),
                               (int)((uint32_t)h->cluster | ((uint32_t)h->cluster_uid << 16)), 0);

    _Static_assert(offsetof(struct pydp_flow, hash) == 40 && offsetof(struct pydp_flow, created_ms) == 44 &&
                   offsetof(struct pydp_flow, packets) == 48 && offsetof(struct pydp_flow, cluster) == 52 &&
                   offsetof(struct pydp_flow, cluster_uid) == 54 && offsetof(struct pydp_flow, edge_uid) == 56 &&
                   offsetof(struct pydp_flow, edge) == 58 && offsetof(struct pydp_flow, state) == 59 &&
                   offsetof(struct pydp_flow, sig) == 60, "the record's layout as flw_write stores it");
    _mm_stream_si128((__m128i *)(void *)f, x0);
    _mm_stream_si128((__m128i *)(void *)((uint8_t *)f + 16), x1);
    _mm_stream_si128((__m128i *)(void *)((uint8_t *)f + 32), x2);
    _mm_stream_si128((__m128i *)(void *)((uint8_t *)f + 48), x3);
#else
    memcpy(&f->key, key, sizeof(f->key));
    f->hash = hash;
    f->created_ms = now_ms;
    f->packets = 0;
    f->cluster = h->cluster;
    f->cluster_uid = h->cluster_uid;
    f->edge_uid = h->edge_uid;
    f->edge = h->edge;
    f->state = h->state;
    f->sig = sig;
#endif
    b->pin[w] = flw_pin_byte(h->edge, h->state);
    b->pkts[w] = pkts;
    b->last_ms[w] = now_ms;
    flw_publish(b, w, h->state == PYDP_FLOW_TCP_SYN ? sig | PYDP_FLOW_SIG_SYN : sig);
}

void
pydp_flow_fence(void)
{
#ifdef __SSE2__
    _mm_sfence();
#endif
}

struct pydp_flow *
pydp_flow_insert(struct pydp_flow_table *t, const struct pydp_flow_key *key, uint32_t hash, uint32_t now_ms,
                 const struct pydp_config *cfg, int *evicted)
{
    struct pydp_flow_bucket *b = flw_bucket(t, hash);
    struct flw_new h = { .state = PYDP_FLOW_OTHER };
    int ev;
    unsigned w = flw_take_way(t, b, now_ms, cfg, &ev);

    flw_write(b, w, key, hash, flw_sig(pydp_flow_sig(key)), now_ms, &h, 0);
    pydp_flow_fence();
    if (evicted != NULL)
        *evicted = ev;
    return &b->flows[w];
}

struct pydp_flow *
pydp_flow_open(struct pydp_flow_table *t, const struct pydp_flow_key *key, uint32_t hash, uint32_t sig,
               uint32_t now_ms, const struct pydp_config *cfg, uint16_t cluster, uint16_t cluster_uid, uint8_t edge,
               uint16_t edge_uid, uint8_t tcp_flags, int *evicted)
{
    struct pydp_flow_bucket *b = flw_bucket(t, hash);
    struct flw_new h = {
        .cluster = cluster, .cluster_uid = cluster_uid, .edge_uid = edge_uid, .edge = edge,
        .state = flw_next_state(key->proto, PYDP_FLOW_EMPTY, tcp_flags),
    };
    unsigned w = flw_take_way(t, b, now_ms, cfg, evicted);

    flw_write(b, w, key, hash, flw_sig(sig), now_ms, &h, 1);
    return &b->flows[w];
}

/* The time and the packet count of way w: last_ms stored only when it changed; the hot counter folds into the
 * cold record every PYDP_FLOW_PKTS_FOLD packets. */
static inline void
flw_count(struct pydp_flow_bucket *b, unsigned w, uint32_t now_ms)
{
    if (b->last_ms[w] != now_ms)
        b->last_ms[w] = now_ms;
    if (__builtin_expect(++b->pkts[w] == 0, 0))
        b->flows[w].packets += PYDP_FLOW_PKTS_FOLD;
}

int
pydp_flow_hit_at(struct pydp_flow_table *t, struct pydp_flow_bucket *b, unsigned w, const struct pydp_flow_key *key,
                 uint8_t tcp_flags, uint32_t now_ms)
{
    uint8_t st = flw_state(b, w);
    uint8_t next = flw_next_state(key->proto, st, tcp_flags);

    if (__builtin_expect(next != st, 0)) {
        /* a change of the stored flow: only for its own key */
        if (!flw_key_eq(&b->flows[w].key, key)) {
            t->false_matches++;
            return -1;
        }
        flw_count(b, w, now_ms);
        flw_set_state(b, w, &b->flows[w], next);
        return 1;
    }
    flw_count(b, w, now_ms);
    return 0;
}

void
pydp_flow_touch(struct pydp_flow_table *t, struct pydp_flow *f, uint8_t tcp_flags, uint32_t now_ms)
{
    unsigned w;
    struct pydp_flow_bucket *b = flw_bucket_of(t, f, &w);
    uint8_t st = flw_next_state(f->key.proto, flw_state(b, w), tcp_flags);

    b->last_ms[w] = now_ms;
    flw_fold_pkts(b, w);
    f->packets++;
    if (st != flw_state(b, w) || st != f->state)
        flw_set_state(b, w, f, st);
}

uint32_t
pydp_flow_packets(const struct pydp_flow_table *t, const struct pydp_flow *f)
{
    unsigned w;
    const struct pydp_flow_bucket *b = flw_bucket_of(t, f, &w);

    return f->packets + b->pkts[w];
}

uint32_t
pydp_flow_last_ms(const struct pydp_flow_table *t, const struct pydp_flow *f)
{
    unsigned w;
    const struct pydp_flow_bucket *b = flw_bucket_of(t, f, &w);

    return b->last_ms[w];
}

uint64_t
pydp_flow_flush(struct pydp_flow_table *t, int cluster, int edge)
{
    struct pydp_flow_bucket *b = flw_buckets(t);
    uint64_t cleared = 0;
    uint32_t i;

    for (i = 0; i < t->nb_buckets; i++, b++) {
        unsigned m = ~flw_match_empty(b) & FLW_ALL_WAYS;

        while (m != 0) {
            unsigned w = (unsigned)__builtin_ctz(m);
            const struct pydp_flow *f = &b->flows[w];

            m &= m - 1;
            if (cluster >= 0) {
                if (f->cluster != (unsigned)cluster)
                    continue;
                if (edge >= 0 && f->edge != (unsigned)edge)
                    continue;
            }
            __atomic_store_n(&b->sig[w], 0, __ATOMIC_RELAXED);
            cleared++;
        }
    }
    flw_barrier();
    t->live -= cleared;
    return cleared;
}

uint64_t
pydp_flow_count(const struct pydp_flow_table *t, uint32_t now_ms, const struct pydp_config *cfg)
{
    const struct pydp_flow_bucket *b = flw_buckets(t);
    uint64_t live = 0;
    uint32_t tmin, tmax, i;

    flw_timeout_range(cfg, &tmin, &tmax);
    for (i = 0; i < t->nb_buckets; i++, b++) {
        unsigned m = ~flw_match_empty(b) & FLW_ALL_WAYS;

        while (m != 0) {
            unsigned w = (unsigned)__builtin_ctz(m);

            m &= m - 1;
            if (!flw_way_expired(b, w, now_ms, cfg, tmin, tmax))
                live++;
        }
    }
    return live;
}

/* ---- flow sync ---- */

struct pydp_flow *
pydp_flow_install(struct pydp_flow_table *t, const struct pydp_flow *in, uint32_t flags, uint32_t now_ms,
                  const struct pydp_config *cfg, int *evicted)
{
    struct pydp_flow_key key = in->key;
    struct pydp_flow_bucket *b;
    struct pydp_flow *f;
    uint32_t hash;
    unsigned w;

    if (evicted != NULL)
        *evicted = 0;
    /* a flow from the peer is data from the network: only what the fast path can use gets in */
    if (in->cluster >= PYDP_MAX_CLUSTERS || in->edge >= PYDP_MAX_EDGES || in->state > PYDP_FLOW_OTHER ||
        (key.family != PYDP_AF_INET && key.family != PYDP_AF_INET6))
        return NULL;
    key.pad0 = 0;
    hash = pydp_flow_hash(&key, cfg->hash_seed);
    f = pydp_flow_lookup(t, &key, hash, now_ms, cfg);
    if (f == NULL) {
        if (flags & PYDP_INSTALL_UPDATE_ONLY)
            return NULL;
        f = pydp_flow_insert(t, &key, hash, now_ms, cfg, evicted);
    }
    pydp_flow_pin(t, f, in->cluster, in->cluster_uid, in->edge, in->edge_uid);
    b = flw_bucket_of(t, f, &w);
    flw_set_state(b, w, f, in->state == PYDP_FLOW_EMPTY ? PYDP_FLOW_OTHER : in->state);
    /* pinned by the peer: its first hit here confirms the pin against this appliance's config */
    b->pin[w] |= PYDP_FLOW_PIN_CHECK;
    b->last_ms[w] = now_ms;
    return f;
}

int
pydp_event_push(struct pydp_event_ring *r, uint8_t type, const struct pydp_flow *f, uint32_t now_ms)
{
    uint32_t head = r->head;
    uint32_t tail = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
    struct pydp_flow_event *ev;

    if (__builtin_expect(head - tail >= PYDP_EVENT_RING_SIZE, 0)) {
        r->dropped++;
        return -1;
    }
    ev = &r->events[head & (PYDP_EVENT_RING_SIZE - 1)];
    ev->key = f->key;
    ev->hash = f->hash;
    ev->cluster = f->cluster;
    ev->cluster_uid = f->cluster_uid;
    ev->edge_uid = f->edge_uid;
    ev->edge = f->edge;
    ev->type = type;
    ev->state = f->state;
    ev->time_ms = now_ms;
    r->written++;
    __atomic_store_n(&r->head, head + 1, __ATOMIC_RELEASE);
    return 0;
}

uint32_t
pydp_event_pop(struct pydp_event_ring *r, struct pydp_flow_event *out, uint32_t max)
{
    uint32_t tail = r->tail;
    uint32_t head = __atomic_load_n(&r->head, __ATOMIC_ACQUIRE);
    uint32_t n = 0;

    if (head - tail > PYDP_EVENT_RING_SIZE)      /* a corrupt or foreign ring: skip to the present */
        tail = head;
    while (tail != head && n < max) {
        out[n++] = r->events[tail & (PYDP_EVENT_RING_SIZE - 1)];
        tail++;
    }
    __atomic_store_n(&r->tail, tail, __ATOMIC_RELEASE);
    return n;
}
