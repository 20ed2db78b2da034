"""Classic pcap files of raw frames (for pcap mode inputs; scapy will not write frames shorter than an Ethernet
header, which the malformed-packet tests need)."""

from __future__ import annotations

import struct
from pathlib import Path

PCAP_MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1


def write_pcap(path: str | Path, frames: list[bytes], start: int = 1700000000) -> None:
    """Writes frames one per microsecond from ``start`` (seconds), each captured whole."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET))
        for i, frame in enumerate(frames):
            f.write(struct.pack("<IIII", start + i // 1000000, i % 1000000, len(frame), len(frame)))
            f.write(frame)
