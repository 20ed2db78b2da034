"""perf/run --trex HOST: a profile from perf/trex/ through a real TRex server (STLClient) against an appliance.

TRex's ports are cabled to the appliance's data port(s): the appliance forwards the profile's traffic to its
edges (L2 DSR), so what a TRex port receives back depends on the lab (a loop-back edge, a mirror). The figures
are TRex's own: opackets/ipackets and rates per port, and, with --trex-latency, the latency of a small
flow-statistics stream (min/average/max/jitter in microseconds).
"""

from __future__ import annotations

import base64
import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LATENCY_PG_ID = 7


class TrexError(RuntimeError):
    pass


def stl_api():
    """The TRex client: a TRex release's trex.stl.api (what --trex needs), else trex_stl_lib from PyPI."""
    try:
        from trex.stl import api
        return api
    except ImportError:
        pass
    try:
        from trex_stl_lib import api
        return api
    except ImportError:
        raise TrexError("--trex needs the TRex client: put a TRex release's automation/trex_control_plane/"
                        "interactive directory on PYTHONPATH (trex.stl.api), or pip install trex_stl_lib") from None


def _msg(exc) -> str:
    return getattr(exc, "msg", None) or repr(exc)


def latency_stream(api, streams):
    """A 1000 pps copy of the profile's first packet with latency statistics (TRex's flow-stats pg_id)."""
    pkt = streams[0].to_json()["packet"]["binary"]
    return api.STLStream(packet=api.STLPktBuilder(pkt_buffer=base64.b64decode(pkt)),
                         mode=api.STLTXCont(pps=1000), flow_stats=api.STLFlowLatencyStats(pg_id=LATENCY_PG_ID))


def run(host: str, profile: str, tunables: dict, ports: list[int], mult: str, duration: float,
        latency: bool, sync_port: int = 4501, async_port: int = 4500) -> dict:
    """Connects, resets the ports, loads the profile on each port, runs it, returns TRex's counters."""
    api = stl_api()
    client = api.STLClient(server=host, sync_port=sync_port, async_port=async_port)
    try:
        client.connect()
    except api.STLError as exc:
        raise TrexError(f"cannot reach the TRex server at {host} (ports {sync_port}/{async_port}): "
                        f"{_msg(exc)}") from None
    try:
        client.reset(ports=ports)
        for direction, port in enumerate(ports):
            streams = api.STLProfile.load_py(profile, direction=direction % 2, port_id=port, **tunables).get_streams()
            if latency:
                streams = streams + [latency_stream(api, streams)] if direction == 0 else streams
            client.add_streams(streams, ports=[port])
        client.clear_stats()
        started = time.monotonic()
        client.start(ports=ports, mult=mult, duration=duration)
        client.wait_on_traffic(ports=ports, timeout=duration + 60)
        elapsed = time.monotonic() - started
        stats = client.get_stats()
    except api.STLError as exc:
        raise TrexError(f"TRex at {host}: {_msg(exc)}") from None
    finally:
        try:
            client.disconnect()
        except Exception:
            pass
    out = {"server": host, "profile": os.path.basename(profile), "tunables": tunables, "ports": {},
           "multiplier": mult, "duration_s": duration, "elapsed_s": round(elapsed, 2)}
    for port in ports:
        st = stats.get(port, {})
        out["ports"][str(port)] = {k: st.get(k) for k in ("opackets", "ipackets", "obytes", "ibytes", "tx_pps",
                                                          "rx_pps", "ierrors", "oerrors")}
    total = stats.get("total", {})
    out["opackets"], out["ipackets"] = total.get("opackets"), total.get("ipackets")
    if latency:
        lat = stats.get("latency", {}).get(LATENCY_PG_ID, {}).get("latency", {})
        out["latency_us"] = {"min": lat.get("total_min"), "average": lat.get("average"),
                             "max": lat.get("total_max"), "jitter": lat.get("jitter")}
    return out
