"""The configuration's limits are the C header's: pydp/config.py writes them (it loads without a build), and this
test checks each against native/include/pydp.h as written in the source tree, against the compiled module (a stale
build fails here) and against what the C code itself accepts."""

from __future__ import annotations

import os
import pathlib
import re
import uuid

import pytest

from pydp import config

try:
    from pydp._ffi import ffi, lib
    from pydp.shm import Region, ShmError
except ImportError as exc:  # a checkout without a build: skip, except in CI (see tests/conftest.py)
    if os.environ.get("PYDP_REQUIRE_DPDK") == "1":
        raise
    pytest.skip(f"pydp is not built: {exc}", allow_module_level=True)

HEADER = pathlib.Path(__file__).resolve().parents[2] / "native" / "include" / "pydp.h"


def header_defines() -> dict[str, int]:
    text = HEADER.read_text()
    return {m.group(1): int(m.group(2), 0) for m in re.finditer(r"^#define\s+(PYDP_\w+)\s+(0x[0-9A-Fa-f]+|\d+)\b",
                                                                 text, re.M)}


def member_len(struct: str, member: str) -> int:
    return dict(ffi.typeof(f"struct {struct}").fields)[member].type.length


@pytest.mark.parametrize("name,macro", [
    ("MAX_CLUSTERS", "PYDP_MAX_CLUSTERS"),
    ("MAX_EDGES", "PYDP_MAX_EDGES"),
    ("MAX_WORKERS", "PYDP_MAX_WORKERS"),
    ("MAX_PORTS", "PYDP_MAX_PORTS"),
    ("NAME_LEN", "PYDP_NAME_LEN"),
    ("MAGLEV_MAX_SIZE", "PYDP_MAGLEV_MAX_SIZE"),
    ("MAGLEV_DEFAULT_SIZE", "PYDP_MAGLEV_DEFAULT_SIZE"),
])
def test_config_limit_is_the_header_define(name, macro):
    defines = header_defines()
    assert getattr(config, name) == defines[macro] == getattr(lib, macro)


def test_array_sizes_follow_the_limits():
    """cffi needs literal array sizes in the header: they must agree with the #defines the config uses."""
    assert member_len("pydp_cluster", "name") == config.NAME_LEN
    assert member_len("pydp_edge", "name") == config.NAME_LEN
    assert member_len("pydp_cluster", "edges") == config.MAX_EDGES
    assert member_len("pydp_config", "clusters") == config.MAX_CLUSTERS
    assert member_len("pydp_dp_params", "port_names") == config.MAX_PORTS
    assert member_len("pydp_dp_params", "exc_names") == config.MAX_PORTS
    assert member_len("pydp_port_info", "name") == config.DEVICE_NAME_MAX + 1
    assert member_len("pydp_shm", "path") == config.SHM_PATH_MAX + 1
    assert config.NAME_MAX == config.NAME_LEN - 1


@pytest.fixture
def shm_path():
    path = f"/dev/shm/pydp-test-limits-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield path
    if os.path.exists(path):
        os.unlink(path)


def test_maglev_size_bounds_are_the_c_bounds(shm_path):
    with pytest.raises(ShmError, match="maglev_max"):
        Region.create(shm_path, maglev_max=config.MAGLEV_MIN_SIZE - 1, flow_capacity=1024)
    with pytest.raises(ShmError, match="maglev_max"):
        Region.create(shm_path, maglev_max=config.MAGLEV_MAX_SIZE + 1, flow_capacity=1024)
    assert not os.path.exists(shm_path)
    Region.create(shm_path, maglev_max=config.MAGLEV_MIN_SIZE, flow_capacity=1024).close()
    assert not os.path.exists(shm_path)


def test_workers_and_ports_bounds_are_the_c_bounds(shm_path):
    with pytest.raises(ShmError):
        Region.create(shm_path, workers=config.MAX_WORKERS + 1, maglev_max=17, flow_capacity=1024)
    with pytest.raises(ShmError):
        Region.create(shm_path, ports=config.MAX_PORTS + 1, maglev_max=17, flow_capacity=1024)
    assert not os.path.exists(shm_path)
    Region.create(shm_path, workers=config.MAX_WORKERS, ports=config.MAX_PORTS, maglev_max=17,
                  flow_capacity=1024).close()


def test_config_enforces_the_limits():
    lcores = f"0-{config.MAX_WORKERS}"
    assert len(config.DataplaneConfig(lcores=lcores).worker_lcores) == config.MAX_WORKERS
    config.loads(f'[dataplane]\nlcores = "{lcores}"\n', require_ports=False)
    with pytest.raises(config.ConfigError, match=f"at most {config.MAX_WORKERS} workers"):
        config.loads(f'[dataplane]\nlcores = "0-{config.MAX_WORKERS + 1}"\n', require_ports=False)
    name = "n" * config.NAME_MAX
    config.loads(f'[[cluster]]\nname = "{name}"\ncluster_ip = "192.0.2.1"\nmode = "standalone"\n'
                 '[[cluster.edge]]\nname = "e"\nip = "192.0.2.2"\n', require_ports=False)
    with pytest.raises(config.ConfigError, match=r"cluster\[0\]\.name"):
        config.loads(f'[[cluster]]\nname = "{name}x"\ncluster_ip = "192.0.2.1"\nmode = "standalone"\n'
                     '[[cluster.edge]]\nname = "e"\nip = "192.0.2.2"\n', require_ports=False)
