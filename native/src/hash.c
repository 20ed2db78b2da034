/*
 * hash.c - the hashes of pydp: the name hash behind the Maglev permutations and the per-packet flow hash.
 *
 * Plain C on memory (no DPDK), so it unit-tests without EAL. Both hashes are fully specified here and do not depend
 * on the host: every load balancer of a cluster must compute the same permutation for an edge name and the same
 * hash for a flow, or two of them would send one flow to different edges.
 */
#include <stdint.h>
#include <string.h>

#include "pydp.h"

#ifdef __SSE4_2__
#include <nmmintrin.h>
#endif

/* Odd 64-bit multipliers with well-spread bits (golden ratio and friends). */
#define HN_K1 0x9e3779b97f4a7c15ULL
#define HN_K2 0xc2b2ae3d27d4eb4fULL
#define HN_K3 0x165667b19e3779f9ULL
#define HN_ADD 0x52dce729ULL
#define HN_F1 0xff51afd7ed558ccdULL
#define HN_F2 0xc4ceb9fe1a85ec53ULL

static inline uint64_t
hn_rotl(uint64_t x, unsigned r)
{
    return (x << r) | (x >> (64 - r));
}

/* Little-endian load of n (1..8) bytes, zero-padded: the same value on any host byte order. */
static inline uint64_t
hn_load(const unsigned char *p, size_t n)
{
    uint64_t w = 0;
    size_t i;

    for (i = 0; i < n; i++)
        w |= (uint64_t)p[i] << (8 * i);
    return w;
}

/* Absorbs one word: scramble the word, then fold it into the state. */
static inline uint64_t
hn_absorb(uint64_t h, uint64_t w)
{
    w *= HN_K2;
    w = hn_rotl(w, 31);
    w *= HN_K1;
    h ^= w;
    h = hn_rotl(h, 27);
    return h * 5 + HN_ADD;
}

/* Final avalanche: every input bit reaches every output bit. */
static inline uint64_t
hn_final(uint64_t h)
{
    h ^= h >> 33;
    h *= HN_F1;
    h ^= h >> 29;
    h *= HN_F2;
    h ^= h >> 32;
    return h;
}

/*
 * Seeded 64-bit hash of a NUL-terminated string. The state starts from the mixed seed and the length; the bytes are
 * absorbed as 8-byte little-endian words, the last one zero-padded; the seed is folded in again before the final
 * avalanche, so two seeds give unrelated hashes.
 */
uint64_t
pydp_hash_name(const char *name, uint64_t seed)
{
    const unsigned char *p = (const unsigned char *)name;
    size_t len = strlen(name);
    size_t rem = len;
    uint64_t h;

    h = hn_final(seed + HN_K3) ^ ((uint64_t)len * HN_K1);
    while (rem >= 8) {
        h = hn_absorb(h, hn_load(p, 8));
        p += 8;
        rem -= 8;
    }
    if (rem)
        h = hn_absorb(h, hn_load(p, rem));
    return hn_final(h ^ hn_rotl(seed, 23));
}

#ifndef __SSE4_2__
/* Portable CRC32C (Castagnoli, reflected 0x82f63b78) of one 64-bit word, no pre/post inversion: the same result as
 * the SSE4.2 crc32 instruction. Only for builds without -msse4.2; the data plane always has the instruction. */
static inline uint32_t
fh_crc32c_u64(uint32_t crc, uint64_t w)
{
    int i;

    for (i = 0; i < 64; i++) {
        uint32_t bit = (crc ^ (uint32_t)(w >> i)) & 1u;
        crc = (crc >> 1) ^ (0x82f63b78u & (0u - bit));
    }
    return crc;
}
#define FH_CRC(c, w) fh_crc32c_u64((c), (w))
#else
#define FH_CRC(c, w) ((uint32_t)_mm_crc32_u64((c), (w)))
#endif

/* 32-bit avalanche (CRC alone is linear and leaves poor high bits for the range reduction). */
static inline uint32_t
fh_mix(uint32_t x)
{
    x += 0x9e3779b9u;
    x ^= x >> 16;
    x *= 0x85ebca6bu;
    x ^= x >> 13;
    x *= 0xc2b2ae35u;
    x ^= x >> 16;
    return x;
}

/*
 * Hash of the 40-byte flow key: CRC32C of its five 64-bit words (host order; x86-64 is little-endian), seeded with
 * seed, then avalanched. The key's padding is zero, so equal flows hash equally.
 */
uint32_t
pydp_flow_hash(const struct pydp_flow_key *key, uint32_t seed)
{
    uint64_t w[5];
    uint32_t c;

    _Static_assert(sizeof(*key) == sizeof(w), "flow key is five 64-bit words");
    memcpy(w, key, sizeof(w));
    c = FH_CRC(seed, w[0]);
    c = FH_CRC(c, w[1]);
    c = FH_CRC(c, w[2]);
    c = FH_CRC(c, w[3]);
    c = FH_CRC(c, w[4]);
    return fh_mix(c);
}

/* Maps a 32-bit hash onto [0, size) by multiply-shift (uses the high bits of hash; no division). */
uint32_t
pydp_maglev_slot(uint32_t hash, uint32_t size)
{
    return (uint32_t)(((uint64_t)hash * size) >> 32);
}

/*
 * Signature of the 40-byte flow key: a second hash, independent of pydp_flow_hash (which is a function of one
 * 32-bit CRC; the bucket index takes its low bits, so a signature derived from it would add only the CRC's
 * remaining bits). Two multiply-accumulate pairs over the five words (NH-style, non-linear where the CRC is
 * linear), folded to 32 bits. A flow-table hit is decided on it (flow.c), so its 30 usable bits set the
 * false-match rate: 2^-30 per occupied way compared.
 */
uint32_t
pydp_flow_sig(const struct pydp_flow_key *key)
{
    uint64_t w[5], a;

    memcpy(w, key, sizeof(w));
    a = (w[0] + 0x9e3779b97f4a7c15ULL) * (w[1] + 0xc2b2ae3d27d4eb4fULL);
    a += (w[2] + 0x165667b19e3779f9ULL) * (w[3] + 0xd6e8feb86659fd93ULL);
    a += (w[4] + 0xff51afd7ed558ccdULL) * 0xc4ceb9fe1a85ec53ULL;
    a ^= a >> 29;
    a *= 0xbf58476d1ce4e5b9ULL;
    return (uint32_t)(a >> 32);
}
