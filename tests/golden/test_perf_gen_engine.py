"""pydp-gen's field engine, byte for byte: a profile with every supported instruction runs through the real
generator on a net_pcap port, and the capture is read back with scapy.

The expected values follow the semantics documented in perf/trex/compile.py (first packet carries init_value,
inc wraps to min, dec to max, the tuple's address steps first, masked writes keep the template's other bits).
"""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
from scapy.layers.inet import IP, UDP
from scapy.utils import PcapWriter, rdpcap

from perfpaths import ROOT

import compile as gencompile  # noqa: E402
import engine  # noqa: E402
from trex_stl_lib import api  # noqa: E402

pytestmark = pytest.mark.dpdk

COUNT = 60
PAYLOAD = bytes(range(40))


@pytest.fixture(scope="module")
def gen_binary():
    path = ROOT / "build" / "perf" / "pydp-gen"
    engine.build_gen(str(path))
    return str(path)


def _stream_a():
    pkt = api.Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / api.IP(src="0.0.0.0",
        dst="198.51.100.10", tos=0, id=0) / api.UDP(sport=0, dport=8080, chksum=0) / PAYLOAD
    vm = [
        api.STLVmFlowVar(name="tos", min_value=10, max_value=14, init_value=12, step=2, size=1, op="inc"),
        api.STLVmWrFlowVar(fv_name="tos", pkt_offset=15),
        api.STLVmFlowVar(name="id", min_value=100, max_value=105, init_value=101, size=2, op="dec"),
        api.STLVmWrFlowVar(fv_name="id", pkt_offset=18, add_val=1000),
        api.STLVmFlowVar(name="r", min_value=5000, max_value=5999, size=4, op="random"),
        api.STLVmWrFlowVar(fv_name="r", pkt_offset=42),
        api.STLVmWrFlowVar(fv_name="r", pkt_offset=46, is_big=False),
        api.STLVmTupleGen(name="t", ip_min="198.18.0.1", ip_max="198.18.0.3", port_min=1000, port_max=1001,
                          limit_flows=5),
        api.STLVmWrFlowVar(fv_name="t.ip", pkt_offset=26),
        api.STLVmWrFlowVar(fv_name="t.port", pkt_offset=34),
        api.STLVmWrMaskFlowVar(fv_name="tos", pkt_offset=50, pkt_cast_size=1, mask=0x0F),
        api.STLVmFlowVarRepeatableRandom(name="rr", size=1, limit=3, seed=7, min_value=0, max_value=255),
        api.STLVmWrFlowVar(fv_name="rr", pkt_offset=51),
        api.STLVmFixIpv4(offset=14),
    ]
    return api.STLStream(name="a", packet=api.STLPktBuilder(pkt=pkt, vm=api.STLScVmRaw(vm)),
                         mode=api.STLTXCont(pps=2))


def _stream_b():
    pkt = api.Ether(dst="02:00:00:00:00:02") / api.IP(src="198.18.9.9", dst="198.51.100.10") / api.UDP(
        sport=7, dport=9) / (b"b" * 100)
    return api.STLStream(name="b", packet=api.STLPktBuilder(pkt=pkt), mode=api.STLTXCont(pps=1))


def _run(gen: str, tmp_path, spec_text: str, count: int) -> tuple[dict, list]:
    spec = tmp_path / "t.spec"
    spec.write_text(spec_text)
    rx, tx = tmp_path / "empty.pcap", tmp_path / "out.pcap"
    PcapWriter(str(rx), linktype=1).close()
    prefix = f"pydpt-gen-{uuid.uuid4().hex[:8]}"
    try:
        done = subprocess.run([gen, "--lcores", "0@0", "--no-pci", "--no-huge", "-m", "128", "--file-prefix", prefix,
                               "--no-telemetry", "--log-level", "lib.eal:warning",
                               "--vdev", f"net_pcap0,rx_pcap={rx},tx_pcap={tx}",
                               "--", "--spec", str(spec), "--count", str(count), "--warmup", "0", "--json",
                               "--link-timeout", "10"], capture_output=True, text=True, timeout=60)
    finally:
        engine.remove_eal_files(prefix)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), rdpcap(str(tx))


def test_field_engine_byte_for_byte(gen_binary, tmp_path):
    spec = gencompile.compile_streams([_stream_a(), _stream_b()], "engine")
    report, pkts = _run(gen_binary, tmp_path, spec.to_text(), COUNT)
    assert report["tx"] == COUNT and len(pkts) == COUNT
    # the spec's order (2:1) decides each packet's stream
    order = [spec.order[i % len(spec.order)] for i in range(COUNT)]
    assert [len(p) for p in pkts] == [len(spec.streams[s].frame) for s in order]
    assert [s["tx"] for s in report["streams"]] == [order.count(0), order.count(1)]

    a = [p for p, s in zip(pkts, order) if s == 0]
    b = [p for p, s in zip(pkts, order) if s == 1]
    assert all(bytes(p) == spec.streams[1].frame for p in b)          # no program: the template untouched
    template = spec.streams[0].frame
    tos, ident, rr = [], [], []
    for i, p in enumerate(a):
        raw = bytes(p)
        ip = p[IP]
        tos.append(ip.tos)
        ident.append(ip.id)
        r = int.from_bytes(raw[42:46], "big")
        assert 5000 <= r <= 5999 and int.from_bytes(raw[46:50], "little") == r
        k = i % 5
        assert ip.src == f"198.18.0.{1 + k % 3}" and p[UDP].sport == 1000 + (k // 3) % 2
        assert raw[50] == (template[50] & 0xF0) | (ip.tos & 0x0F)
        rr.append(raw[51])
        # checksum valid: the header sums to 0xffff
        words = sum(int.from_bytes(raw[14 + j:16 + j], "big") for j in range(0, 20, 2))
        while words > 0xFFFF:
            words = (words & 0xFFFF) + (words >> 16)
        assert words == 0xFFFF
        # everything else is the template
        changed = {15, 18, 19, 24, 25, 26, 27, 28, 29, 34, 35} | set(range(42, 52))
        assert all(raw[j] == template[j] for j in range(len(raw)) if j not in changed)
    assert tos[:7] == [12, 14, 10, 12, 14, 10, 12]
    assert ident[:8] == [1101, 1100, 1105, 1104, 1103, 1102, 1101, 1100]
    assert rr == [rr[i % 3] for i in range(len(rr))] and len(set(rr)) > 1


def test_profiles_run_on_the_generator(gen_binary, tmp_path):
    """The shipped profiles as perf/run compiles them: the frames leave as compiled, the flows vary."""
    spec = gencompile.compile_profile(str(ROOT / "perf" / "trex" / "ipsec.py"), flows=4)
    report, pkts = _run(gen_binary, tmp_path, spec.to_text(), 40)
    assert report["tx"] == 40
    esp = [p for p in pkts if p[IP].proto == 50]
    ike = [p for p in pkts if UDP in p and p[UDP].dport == 500]
    assert esp and ike
    assert {p[IP].src for p in esp} == {f"198.18.0.{i}" for i in range(4)}
    spis = [int.from_bytes(bytes(p[IP].payload)[:4], "big") for p in esp]
    assert len(set(spis)) > 1


def _refused(gen: str, spec) -> subprocess.CompletedProcess:
    prefix = f"pydpt-gen-{uuid.uuid4().hex[:8]}"
    try:
        return subprocess.run([gen, "--no-pci", "--no-huge", "-m", "64", "--file-prefix", prefix, "--vdev",
                               "net_null0", "--", "--spec", str(spec)], capture_output=True, text=True, timeout=60)
    finally:
        engine.remove_eal_files(prefix)


def test_bad_spec_is_refused(gen_binary, tmp_path):
    done = _refused(gen_binary, tmp_path / "missing.spec")
    assert done.returncode == 1 and "missing.spec" in done.stderr
    bad = tmp_path / "bad.spec"
    bad.write_text("pydp-gen-spec 1\nstream 1 " + "00" * 60 + "\nwrite 0 58 4 0 1\n")
    done = _refused(gen_binary, bad)
    assert done.returncode == 1 and "bad.spec:3: write: width or offset out of bounds" in done.stderr
