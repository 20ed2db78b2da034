"""Tests of pydp.maglev (the C Maglev build through cffi) against a plain Python model (maglev_model.py)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import maglev_model as model  # noqa: E402

try:
    from pydp._ffi import ffi, lib
except ImportError as exc:  # a checkout without a build: skip, except in CI (see tests/conftest.py)
    if os.environ.get("PYDP_REQUIRE_DPDK") == "1":
        raise
    pytest.skip(f"pydp is not built: {exc}", allow_module_level=True)
from pydp.maglev import build  # noqa: E402

# Measured with the C test (native/tests/test_maglev.c) and 1500 random name sets: removing one of N edges (N = 2..16,
# size 65537) moved on average 0.26% of the other edges' slots, at worst 1.49%. The tail is longer with few edges:
# over 6000 removals from random Unicode name sets of 3 and 4 edges, 4 moved more than 2% and the worst 3.41%
# (Hypothesis found one at 2.17%). So a single removal is held to 5%, and the design target of 1% is asserted on
# the mean over many removals (test_removal_mean_is_below_one_percent).
REMOVAL_BOUND = 0.05
REMOVAL_MEAN_BOUND = 0.01

SMALL_PRIMES = [2, 3, 5, 7, 11, 13, 17, 19, 23, 31, 53, 97, 101, 211, 251, 257, 263, 509, 521, 1009, 2003]

FAST = settings(max_examples=40, deadline=None)
SLOW = settings(max_examples=25, deadline=None)


def _name_ok(s: str) -> bool:
    return 0 < len(s.encode("utf-8")) <= 31


name_st = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1, max_size=12
).filter(_name_ok)
names_st = st.lists(name_st, min_size=1, max_size=16, unique=True)


def _by_name(table: np.ndarray, names: list[str]) -> list[str | None]:
    return [names[i] if i != model.NONE else None for i in table.tolist()]


# ---- the hashes ----

@FAST
@given(name=name_st, seed=st.integers(0, 2**64 - 1))
def test_hash_name_matches_model(name, seed):
    assert lib.pydp_hash_name(name.encode("utf-8"), seed) == model.hash_name(name, seed)


def test_hash_name_known_values():
    # the values pinned in native/tests/test_hash.c
    assert model.hash_name("", 0) == 0xF5BB240194133E5A
    assert model.hash_name("edge-1", 1) == 0xDD6D80B3E2957B50
    assert model.hash_name("0123456789abcdefghijklmnopqrstu", 7) == 0x0152663EB1309C3B


@FAST
@given(key=st.binary(min_size=40, max_size=40), seed=st.integers(0, 2**32 - 1))
def test_flow_hash_matches_model(key, seed):
    k = ffi.new("struct pydp_flow_key *")
    ffi.memmove(k, key, 40)
    assert lib.pydp_flow_hash(k, seed) == model.flow_hash(key, seed)


# ---- the table ----

@SLOW
@given(data=st.data(), names=names_st, size=st.sampled_from(SMALL_PRIMES), weighted=st.booleans())
def test_table_matches_model(data, names, size, weighted):
    assume(size >= len(names))
    weights = None
    if weighted:
        weights = data.draw(st.lists(st.integers(0, 65535) | st.integers(0, 5), min_size=len(names),
                                     max_size=len(names)))
        assume(any(weights))
    table = build(names, size=size, weights=weights)
    assert table.dtype == np.uint8 and table.shape == (size,)
    assert table.tolist() == model.build(names, size, weights)


def test_table_matches_model_default_size():
    names = ["edge-a", "edge-b", "edge-c", "edge-d", "edge-e"]
    weights = [3, 1, 0, 2, 2]
    assert build(names).tolist() == model.build(names, 65537)
    assert build(names, weights=weights).tolist() == model.build(names, 65537, weights)


def test_deterministic():
    names = [f"edge-{i}" for i in range(10)]
    a = build(names, size=65537)
    b = build(names, size=65537)
    assert a.tobytes() == b.tobytes()


@FAST
@given(n=st.integers(1, 16), size=st.sampled_from([65537, 131071, 17011, 1009]))
def test_equal_weights_balanced(n, size):
    names = [f"edge-{i:02d}.pop-{n}" for i in range(n)]
    counts = np.bincount(build(names, size=size), minlength=n)
    assert len(counts) == n and counts.sum() == size
    assert counts.max() - counts.min() <= 1
    assert counts.max() / counts.min() <= 1 + 1 / (size // n)
    if size >= 1000 * n:
        assert counts.max() / counts.min() <= 1.001


@FAST
@given(weights=st.lists(st.integers(0, 1000), min_size=1, max_size=16))
def test_weighted_shares(weights):
    assume(any(weights))
    size = 65537
    names = [f"e{i}" for i in range(len(weights))]
    counts = np.bincount(build(names, size=size, weights=weights), minlength=len(weights))
    assert counts.sum() == size
    eligible = sum(1 for w in weights if w)
    for w, c in zip(weights, counts):
        want = size * w / sum(weights)
        if w == 0:
            assert c == 0
        else:
            # the share is within 1% of the weight's share, or (for tiny shares) within one slot per edge
            assert abs(c - want) <= max(0.01 * want, eligible)


def test_weights_1234():
    counts = np.bincount(build(["a", "b", "c", "d"], size=65537, weights=[1, 2, 3, 4]))
    shares = counts / 65537
    assert np.all(np.abs(shares - np.array([0.1, 0.2, 0.3, 0.4])) <= 0.01 * np.array([0.1, 0.2, 0.3, 0.4]))


@SLOW
@given(names=st.lists(name_st, min_size=2, max_size=16, unique=True), data=st.data())
def test_removal_moves_few_slots(names, data):
    removed = data.draw(st.integers(0, len(names) - 1))
    rest = names[:removed] + names[removed + 1:]
    before = _by_name(build(names, size=65537), names)
    after = _by_name(build(rest, size=65537), rest)
    other = [(b, a) for b, a in zip(before, after) if b != names[removed]]
    moved = sum(1 for b, a in other if b != a)
    assert moved / len(other) <= REMOVAL_BOUND
    # the removed edge's slots all went to the others
    assert None not in after


def test_removal_mean_is_below_one_percent():
    rng = np.random.default_rng(20261124)
    fractions = []
    for _ in range(120):
        n = int(rng.integers(3, 17))
        names = [f"{rng.integers(1 << 40):x}-{i}" for i in range(n)]
        removed = int(rng.integers(n))
        rest = names[:removed] + names[removed + 1:]
        before = _by_name(build(names, size=65537), names)
        after = _by_name(build(rest, size=65537), rest)
        other = [(b, a) for b, a in zip(before, after) if b != names[removed]]
        fractions.append(sum(1 for b, a in other if b != a) / len(other))
    assert np.mean(fractions) <= REMOVAL_MEAN_BOUND


@FAST
@given(names=names_st, data=st.data(), size=st.sampled_from([1009, 65537]))
def test_order_independent(names, data, size):
    assume(size >= len(names))
    weights = data.draw(st.lists(st.integers(0, 9), min_size=len(names), max_size=len(names)))
    assume(any(weights))
    perm = data.draw(st.permutations(range(len(names))))
    shuffled = [names[i] for i in perm]
    sweights = [weights[i] for i in perm]
    a = _by_name(build(names, size=size, weights=weights), names)
    b = _by_name(build(shuffled, size=size, weights=sweights), shuffled)
    assert a == b


def test_weight_zero_is_left_out():
    names = ["a", "b", "c", "d"]
    with_zero = _by_name(build(names, size=1009, weights=[1, 0, 2, 1]), names)
    without = _by_name(build(["a", "c", "d"], size=1009, weights=[1, 2, 1]), ["a", "c", "d"])
    assert with_zero == without
    assert "b" not in with_zero


def test_same_table_in_another_process():
    names = ["edge-1", "edge-2", "edge-3", "λ-edge"]
    weights = [1, 2, 3, 1]
    here = build(names, size=65537, weights=weights).tobytes()
    code = (
        "import sys\n"
        "from pydp.maglev import build\n"
        f"sys.stdout.write(build({names!r}, size=65537, weights={weights!r}).tobytes().hex())\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-P", "-c", code], check=True, capture_output=True, text=True, env=env,
                         timeout=60).stdout
    assert bytes.fromhex(out) == here


# ---- bad input ----

@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(names=[]), "no edge has a weight"),
        (dict(names=["a", "b"], weights=[0, 0]), "no edge has a weight"),
        (dict(names=["a", "a"]), "duplicate"),
        (dict(names=["a", ""]), "empty"),
        (dict(names=["x" * 32]), "at most 31"),
        (dict(names=["é" * 16]), "at most 31"),
        (dict(names=["a\0b"]), "NUL"),
        (dict(names=[b"a"]), "must be a str"),
        (dict(names="abc"), "sequence"),
        (dict(names=[f"e{i}" for i in range(17)]), "too many edges"),
        (dict(names=["a"], size=65536), "not prime"),
        (dict(names=["a"], size=1), "not prime"),
        (dict(names=["a"], size=0), "out of range"),
        (dict(names=["a"], size=-7), "out of range"),
        (dict(names=["a"], size=655379), "out of range"),
        (dict(names=["a"], size=65537.0), "integer"),
        (dict(names=["a", "b", "c"], size=2), "smaller than the number of edges"),
        (dict(names=["a", "b"], weights=[1]), "1 weights for 2 edges"),
        (dict(names=["a"], weights=[65536]), "0..65535"),
        (dict(names=["a"], weights=[-1]), "0..65535"),
        (dict(names=["a"], weights=[1.5]), "integer"),
        (dict(names=["a"], weights=[True]), "bool"),
    ],
)
def test_bad_input(kwargs, words):
    with pytest.raises(ValueError, match=words):
        build(**kwargs)


def test_numpy_weights_and_31_byte_names():
    names = ["y" * 31, "é" * 15]
    table = build(names, size=1009, weights=np.array([2, 1], dtype=np.uint16))
    assert table.tolist() == model.build(names, 1009, [2, 1])
