"""A plain Python model of pydp's hashes and Maglev table population, for checking the C code.

Written for clarity, not speed: the permutation of an edge is computed as (offset + j * skip) % size for its j-th
position, exactly as the Maglev paper (Eisenbud et al., NSDI 2016) states it, and weights are applied by credit.
"""

from __future__ import annotations

from collections.abc import Sequence

MASK64 = (1 << 64) - 1
MASK32 = (1 << 32) - 1

NONE = 255

# The fixed seeds of the two permutation hashes (must match native/src/maglev.c).
SEED_OFFSET = 0x6D61676C65763031
SEED_SKIP = 0x736B697070793032


def _rotl64(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & MASK64


def _final64(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & MASK64
    h ^= h >> 29
    h = (h * 0xC4CEB9FE1A85EC53) & MASK64
    h ^= h >> 32
    return h


def _absorb(h: int, word: int) -> int:
    word = (word * 0xC2B2AE3D27D4EB4F) & MASK64
    word = _rotl64(word, 31)
    word = (word * 0x9E3779B97F4A7C15) & MASK64
    h ^= word
    h = _rotl64(h, 27)
    return (h * 5 + 0x52DCE729) & MASK64


def hash_name(name: str | bytes, seed: int) -> int:
    """pydp_hash_name: 64-bit seeded hash of a name (its UTF-8 bytes)."""
    data = name.encode("utf-8") if isinstance(name, str) else bytes(name)
    seed &= MASK64
    h = _final64((seed + 0x165667B19E3779F9) & MASK64) ^ ((len(data) * 0x9E3779B97F4A7C15) & MASK64)
    for start in range(0, len(data), 8):
        chunk = data[start:start + 8]  # the last one may be short: zero-padded
        h = _absorb(h, int.from_bytes(chunk, "little"))
    return _final64(h ^ _rotl64(seed, 23))


def _crc32c(crc: int, data: bytes) -> int:
    """CRC32C (Castagnoli), reflected, without the usual pre- and post-inversion (like the SSE4.2 instruction)."""
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc


def flow_hash(key: bytes, seed: int) -> int:
    """pydp_flow_hash of a 40-byte struct pydp_flow_key (as laid out in memory)."""
    assert len(key) == 40
    x = (_crc32c(seed & MASK32, key) + 0x9E3779B9) & MASK32
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & MASK32
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & MASK32
    x ^= x >> 16
    return x


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    d = 2
    while d * d <= n:
        if n % d == 0:
            return False
        d += 1
    return True


def build(names: Sequence[str], size: int, weights: Sequence[int] | None = None) -> list[int]:
    """The Maglev table: for every slot, the index into names of its edge (NONE if no edge has weight).

    Assumes valid input (unique non-empty names, prime size >= len(names)).
    """
    n = len(names)
    if weights is None:
        weights = [1] * n
    encoded = [name.encode("utf-8") for name in names]
    # Turns go in name order (byte order, as strcmp compares); weight-0 edges take no part.
    turn_order = [i for i in sorted(range(n), key=lambda i: encoded[i]) if weights[i] > 0]
    table = [NONE] * size
    if not turn_order:
        return table
    max_weight = max(weights)
    offset = {i: hash_name(encoded[i], SEED_OFFSET) % size for i in turn_order}
    skip = {i: hash_name(encoded[i], SEED_SKIP) % (size - 1) + 1 for i in turn_order}
    position = {i: 0 for i in turn_order}  # j: how far along its permutation the edge has looked
    credit = {i: 0 for i in turn_order}
    filled = 0
    while True:
        for i in turn_order:
            credit[i] += weights[i]
            if credit[i] < max_weight:
                continue
            credit[i] -= max_weight
            while True:
                slot = (offset[i] + position[i] * skip[i]) % size
                position[i] += 1
                if table[slot] == NONE:
                    break
            table[slot] = i
            filled += 1
            if filled == size:
                return table
