"""Every TRex profile of perf/trex/ loads through the TRex client (trex_stl_lib) and compiles for pydp-gen; what
pydp-gen cannot run is refused with an error naming the stream and the instruction."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest

from perfpaths import PROFILES, TREX

import compile as gencompile  # noqa: E402  (perf/trex/compile.py)
from trex_stl_lib import api  # noqa: E402

EXPECTED = {"udp_flows", "imix", "syn_flood", "mixed", "ipv6", "ipsec"}


def test_all_profiles_are_there():
    assert EXPECTED <= set(PROFILES)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_profile_loads_with_trex_stl_lib_and_compiles(name):
    path = str(TREX / f"{name}.py")
    streams = api.STLProfile.load_py(path).get_streams()
    assert streams and all(isinstance(s, api.STLStream) for s in streams)
    spec = gencompile.compile_streams(streams, name)
    text = spec.to_text()
    assert text.startswith("pydp-gen-spec 1\n")
    assert len(spec.streams) == len(streams)
    for s, st in zip(spec.streams, streams):
        frame = st.to_json()["packet"]["binary"]
        assert s.frame == base64.b64decode(frame)
        assert f"stream {s.weight:g} {s.frame.hex()}" in text
    assert set(spec.order) == set(range(len(spec.streams)))


def test_tunables_reach_the_program():
    spec = gencompile.compile_profile(str(TREX / "udp_flows.py"), flows=12345, size=128)
    (stream,) = spec.streams
    assert len(stream.frame) == 128
    assert stream.lines[0].split()[0] == "tuple" and stream.lines[0].split()[-1] == "12345"
    assert stream.lines[1:] == ["write 0 26 4 0 1", "fixv4 14", "write 1 34 2 0 1"]


def test_imix_mix_is_7_4_1_and_interleaved():
    spec = gencompile.compile_profile(str(TREX / "imix.py"))
    assert [len(s.frame) for s in spec.streams] == [60, 590, 1514]
    assert [spec.order.count(i) for i in range(3)] == [7, 4, 1]
    # smooth: the small frames are never sent more than twice in a row
    assert "0 0 0" not in " ".join(map(str, spec.order))


def test_mixed_share_is_a_tunable():
    spec = gencompile.compile_profile(str(TREX / "mixed.py"), new_share=0.25)
    assert [spec.order.count(i) for i in range(2)] == [3, 1]


def _udp():
    return api.Ether() / api.IP(src="198.18.0.1", dst="198.51.100.10") / api.UDP(sport=1, dport=2) / (b"x" * 30)


def _stream(vm=None, **kw):
    return api.STLStream(packet=api.STLPktBuilder(pkt=_udp(), vm=api.STLScVmRaw(vm or [])),
                         mode=kw.pop("mode", api.STLTXCont(pps=10)), **kw)


@pytest.mark.parametrize("vm, words", [
    ([api.STLVmFlowVar(name="len", min_value=60, max_value=72, size=2), api.STLVmTrimPktSize("len")],
     "trim_pkt_size"),
    ([api.STLVmFixChecksumHw(l3_offset=14, l4_offset=34, l4_type=api.CTRexVmInsFixHwCs.L4_TYPE_UDP)],
     "fix_checksum_hw"),
    ([api.STLVmFlowVar(name="a", min_value=0, max_value=10, size=1), api.STLVmWrFlowVar(fv_name="a", pkt_offset=72)],
     "outside"),
])
def test_unsupported_instruction_is_refused(vm, words):
    with pytest.raises(gencompile.CompileError) as err:
        gencompile.compile_streams([_stream(vm, name="s1")])
    assert "stream s1" in str(err.value) and words in str(err.value)


def test_burst_and_latency_streams_are_refused():
    with pytest.raises(gencompile.CompileError, match="continuous only"):
        gencompile.compile_streams([_stream(mode=api.STLTXSingleBurst(total_pkts=10))])
    with pytest.raises(gencompile.CompileError, match="TRex server"):
        gencompile.compile_streams([_stream(flow_stats=api.STLFlowLatencyStats(pg_id=1))])


def test_compile_cli_writes_a_spec_and_refuses_a_bad_tunable(tmp_path):
    out = tmp_path / "u.spec"
    cli = [sys.executable, str(TREX / "compile.py")]
    done = subprocess.run(cli + [str(TREX / "udp_flows.py"), "-t", "flows=10", "-o", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert out.read_text().startswith("pydp-gen-spec 1")
    bad = subprocess.run(cli + [str(TREX / "udp_flows.py"), "-t", "flows=0"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 1 and "flows must be in" in bad.stderr
