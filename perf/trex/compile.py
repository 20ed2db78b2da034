#!/usr/bin/env python3
"""Compiles a TRex stateless profile into pydp-gen's spec: packet templates and their field-engine programs.

The streams come from the profile through the TRex client (``trex.stl.api`` of a TRex release, else
``trex_stl_lib`` from PyPI), as the client would send them to a TRex server (each stream's JSON: packet bytes,
rate, VM instructions). pydp-gen runs the subset of TRex's field engine that perf/trex/ uses:

* ``flow_var`` inc/dec/random over [min, max] with a step, 1/2/4/8 bytes (the first packet carries init_value;
  inc wraps to min, dec to max); ``flow_var_rand_limit`` (a random sequence of `limit` values, repeated);
* ``tuple_flow_var`` (address walks [ip_min, ip_max], the port steps when it wraps, limit_flows tuples, then
  again from the start);
* ``write_flow_var`` (big or little endian, add_value) and ``write_mask_flow_var`` (cast 1/2/4, mask, shift,
  add_value) at an offset;
* ``fix_checksum_ipv4`` at an offset.

Continuous streams only; their rates become packet weights (perf/run sets the total rate). Anything else (bursts,
stream chains, latency streams, packet trimming, hardware checksum offload, ...) is refused with an error naming
the stream and the instruction, never silently dropped.

The spec is text, one record a line::

    pydp-gen-spec 1
    stream WEIGHT HEX-FRAME
    var SLOT SIZE inc|dec|random INIT MIN MAX STEP
    rvar SLOT SIZE LIMIT SEED MIN MAX
    tuple SLOT IP_MIN IP_MAX PORT_MIN PORT_MAX LIMIT      (address in SLOT, port in SLOT + 1)
    write SLOT OFFSET WIDTH ADD BIG
    wmask SLOT OFFSET CAST MASK SHIFT ADD BIG
    fixv4 OFFSET
    order STREAM STREAM ...                               (the stream of each packet, repeated)

A ``var``/``rvar``/``tuple``/``write``/``wmask``/``fixv4`` line belongs to the ``stream`` line above it; the
instructions run in that order for every packet.
"""

from __future__ import annotations

import argparse
import base64
import math
import os
import sys
from dataclasses import dataclass, field

MAX_STREAMS = 8                        # as in native/tools/gen_engine.h
MAX_SLOTS = 16
MAX_INSNS = 32
MAX_ORDER = 1024
FRAME_MIN, FRAME_MAX = 60, 1514
VAR_SIZES = (1, 2, 4, 8)


class CompileError(ValueError):
    """The profile uses something pydp-gen cannot run; the message names the stream and the instruction."""


def trex_api():
    """The TRex client module: a TRex release's trex.stl.api, else trex_stl_lib.api (PyPI)."""
    try:
        from trex.stl import api
    except ImportError:
        try:
            from trex_stl_lib import api
        except ImportError:
            raise CompileError("no TRex client: install trex_stl_lib (pip install trex_stl_lib) or put a TRex "
                               "release's automation/trex_control_plane/interactive on PYTHONPATH") from None
    return api


@dataclass
class Stream:
    name: str
    frame: bytes
    weight: float
    lines: list[str] = field(default_factory=list)


@dataclass
class Spec:
    profile: str
    streams: list[Stream]
    order: list[int]

    def to_text(self) -> str:
        out = ["pydp-gen-spec 1", f"# profile {self.profile}"]
        for s in self.streams:
            out.append(f"# stream {s.name}: {len(s.frame)} bytes, weight {s.weight:g}")
            out.append(f"stream {s.weight:g} {s.frame.hex()}")
            out += s.lines
        out.append("order " + " ".join(map(str, self.order)))
        return "\n".join(out) + "\n"

    def frame_sizes(self) -> dict[str, int]:
        return {s.name: len(s.frame) for s in self.streams}


def load_streams(path: str, tunables: dict):
    """The profile's streams, loaded the way the TRex console loads a .py profile."""
    api = trex_api()
    if not os.path.isfile(path):
        raise CompileError(f"{path}: no such profile")
    try:
        profile = api.STLProfile.load_py(os.path.abspath(path), **tunables)
    except api.STLError as exc:
        raise CompileError(f"{path}: the profile did not load: {getattr(exc, 'msg', exc)}") from None
    return profile.get_streams()


def _rate_weight(name: str, mode: dict, length: int) -> float:
    """A stream's packets-per-second share, whatever unit its rate is in."""
    if mode.get("type") != "continuous":
        raise CompileError(f"stream {name}: mode '{mode.get('type')}' is not supported (continuous only)")
    rate = mode.get("rate", {})
    kind, value = rate.get("type"), float(rate.get("value", 0))
    l1, l2 = 8 * (length + 24), 8 * (length + 4)       # bits on the wire: + FCS, preamble and gap
    weights = {"pps": value, "bps_L1": value / l1, "bps_L2": value / l2, "percentage": value / l1}
    if kind not in weights:
        raise CompileError(f"stream {name}: rate type '{kind}' is not supported")
    if not weights[kind] > 0:
        raise CompileError(f"stream {name}: its rate is {value} {kind}")
    return weights[kind]


class _Program:
    """One stream's instructions as spec lines, with the variable names mapped to slots."""

    def __init__(self, name: str, frame_len: int):
        self.name, self.frame_len = name, frame_len
        self.slots: dict[str, tuple[int, int]] = {}      # variable -> (slot, size)
        self.lines: list[str] = []

    def _fail(self, ins: dict, why: str):
        raise CompileError(f"stream {self.name}: instruction {ins.get('type')} ({ins.get('name', '')}): {why}")

    def _new_slot(self, ins: dict, name: str, size: int) -> int:
        if name in self.slots:
            self._fail(ins, f"variable '{name}' is defined twice")
        slot = len(self.slots)
        if slot >= MAX_SLOTS:
            self._fail(ins, f"more than {MAX_SLOTS} variables")
        self.slots[name] = (slot, size)
        return slot

    def _var(self, ins: dict, name: str) -> tuple[int, int]:
        if name not in self.slots:
            self._fail(ins, f"variable '{name}' is not defined before it is written")
        return self.slots[name]

    def _offset(self, ins: dict, offset: int, width: int) -> int:
        if not isinstance(offset, int) or offset < 0 or offset + width > self.frame_len:
            self._fail(ins, f"offset {offset} (+{width} bytes) is outside the {self.frame_len}-byte frame")
        return offset

    def add(self, ins: dict) -> None:
        kind = ins.get("type")
        handler = getattr(self, "_" + str(kind), None)
        if handler is None:
            self._fail(ins, "not supported by pydp-gen")
        handler(ins)
        if len(self.lines) > MAX_INSNS:
            self._fail(ins, f"more than {MAX_INSNS} instructions")

    def _flow_var(self, ins):
        size, op = ins["size"], ins["op"]
        lo, hi, init, step = ins["min_value"], ins["max_value"], ins["init_value"], ins["step"]
        if size not in VAR_SIZES:
            self._fail(ins, f"size {size} (1, 2, 4 or 8)")
        if op not in ("inc", "dec", "random"):
            self._fail(ins, f"operation '{op}'")
        if not 0 <= lo <= hi < 256 ** size or not lo <= init <= hi:
            self._fail(ins, f"range [{lo}, {hi}] with init {init} does not fit {size} bytes")
        if op != "random" and not 0 < step <= hi - lo + 1 and hi > lo:
            self._fail(ins, f"step {step} for the range [{lo}, {hi}]")
        slot = self._new_slot(ins, ins["name"], size)
        self.lines.append(f"var {slot} {size} {op} {init} {lo} {hi} {max(step, 1)}")

    def _flow_var_rand_limit(self, ins):
        size, lo, hi, limit = ins["size"], ins["min_value"], ins["max_value"], ins["limit"]
        if size not in VAR_SIZES or not 0 <= lo <= hi < 256 ** size:
            self._fail(ins, f"range [{lo}, {hi}] does not fit {size} bytes")
        if limit < 1:
            self._fail(ins, f"limit {limit}")
        slot = self._new_slot(ins, ins["name"], size)
        self.lines.append(f"rvar {slot} {size} {limit} {ins['seed'] & (2 ** 64 - 1)} {lo} {hi}")

    def _tuple_flow_var(self, ins):
        if ins.get("flags", 0):
            self._fail(ins, f"flags {ins['flags']} are not supported")
        ip_lo, ip_hi, p_lo, p_hi, limit = (ins["ip_min"], ins["ip_max"], ins["port_min"], ins["port_max"],
                                           ins["limit_flows"])
        if not 0 <= ip_lo <= ip_hi < 2 ** 32 or not 0 <= p_lo <= p_hi < 2 ** 16 or not 1 <= limit < 2 ** 32:
            self._fail(ins, "address, port or flow limit out of range")
        slot = self._new_slot(ins, ins["name"] + ".ip", 4)
        self._new_slot(ins, ins["name"] + ".port", 2)
        self.lines.append(f"tuple {slot} {ip_lo} {ip_hi} {p_lo} {p_hi} {limit}")

    def _write_flow_var(self, ins):
        slot, size = self._var(ins, ins["name"])
        off = self._offset(ins, ins["pkt_offset"], size)
        add = ins.get("add_value", 0) % 256 ** size
        self.lines.append(f"write {slot} {off} {size} {add} {int(bool(ins.get('is_big_endian', True)))}")

    def _write_mask_flow_var(self, ins):
        slot, _ = self._var(ins, ins["name"])
        cast = ins["pkt_cast_size"]
        if cast not in (1, 2, 4):
            self._fail(ins, f"cast size {cast} (1, 2 or 4)")
        off = self._offset(ins, ins["pkt_offset"], cast)
        mask, shift = ins["mask"] % 256 ** cast, ins["shift"]
        if not -63 <= shift <= 63:
            self._fail(ins, f"shift {shift}")
        add = ins.get("add_value", 0) % 2 ** 64
        self.lines.append(f"wmask {slot} {off} {cast} {mask} {shift} {add} {int(bool(ins.get('is_big_endian', True)))}")

    def _fix_checksum_ipv4(self, ins):
        off = self._offset(ins, ins["pkt_offset"], 20)
        self.lines.append(f"fixv4 {off}")


def _order(weights: list[float]) -> list[int]:
    """The stream of each packet in one round: smooth weighted round-robin over integer weights (at most
    MAX_ORDER packets a round), so a mix is spread evenly and not sent in clumps."""
    if all(w == int(w) for w in weights) and sum(weights) <= MAX_ORDER:
        ints = [int(w) for w in weights]
    else:
        top = max(weights)
        ints = [max(1, round(w / top * 1000)) for w in weights]
    g = 0
    for w in ints:
        g = math.gcd(g, w)
    ints = [w // g for w in ints]
    while sum(ints) > MAX_ORDER:
        ints = [max(1, round(w / 2)) for w in ints]
    cur, out = [0] * len(ints), []
    for _ in range(sum(ints)):
        for i, w in enumerate(ints):
            cur[i] += w
        best = max(range(len(ints)), key=lambda i: cur[i])
        cur[best] -= sum(ints)
        out.append(best)
    return out


def compile_streams(streams, profile: str = "profile") -> Spec:
    out = []
    for i, st in enumerate(streams):
        j = st.to_json()
        name = getattr(st, "name", None) or f"stream{i}"
        if not j.get("enabled", True):
            continue
        if not j.get("self_start", True) or j.get("next"):
            raise CompileError(f"stream {name}: stream chains (self_start=False, next) are not supported")
        if j.get("flow_stats", {}).get("enabled"):
            raise CompileError(f"stream {name}: flow statistics and latency streams need a TRex server "
                               "(perf/run --trex HOST)")
        if j.get("action_count", 0):
            raise CompileError(f"stream {name}: action_count is not supported")
        frame = base64.b64decode(j["packet"]["binary"])
        if not FRAME_MIN <= len(frame) <= FRAME_MAX:
            raise CompileError(f"stream {name}: a {len(frame)}-byte frame ({FRAME_MIN}..{FRAME_MAX} without FCS)")
        prog = _Program(name, len(frame))
        for ins in j.get("vm", {}).get("instructions", []):
            prog.add(ins)
        out.append(Stream(name, frame, _rate_weight(name, j["mode"], len(frame)), prog.lines))
    if not out:
        raise CompileError(f"{profile}: no enabled stream")
    if len(out) > MAX_STREAMS:
        raise CompileError(f"{profile}: {len(out)} streams (pydp-gen runs at most {MAX_STREAMS})")
    return Spec(profile, out, _order([s.weight for s in out]))


def compile_profile(path: str, **tunables) -> Spec:
    """The spec of the profile at path, with these tunables passed to its get_streams()."""
    return compile_streams(load_streams(path, tunables), os.path.basename(path))


def parse_tunables(items: list[str]) -> dict:
    """-t key=value pairs; numbers become numbers (as the TRex console does)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CompileError(f"tunable '{item}' is not key=value")
        for conv in (int, float):
            try:
                value = conv(value)
                break
            except ValueError:
                pass
        out[key] = value
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="example: perf/trex/compile.py perf/trex/udp_flows.py -t flows=10000 "
                                        "-o /tmp/udp.spec")
    ap.add_argument("profile", help="a TRex stateless profile (.py)")
    ap.add_argument("-t", "--tunable", action="append", metavar="KEY=VALUE", help="passed to get_streams()")
    ap.add_argument("-o", "--output", metavar="FILE", help="write the spec here (default stdout)")
    args = ap.parse_args(argv)
    try:
        text = compile_profile(args.profile, **parse_tunables(args.tunable)).to_text()
    except CompileError as exc:
        print(f"compile: {exc}", file=sys.stderr)
        return 1
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
