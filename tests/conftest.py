"""Shared test setup: the tiers, the skip-or-fail rule, and the fixtures every tier may use.

Tiers are folders (tests/README.md): ``unit`` needs neither root nor DPDK nor namespaces nor a browser; ``golden``
runs the real DPDK fast path (marker ``dpdk``); ``netns`` builds network namespaces or needs root for something else
(markers ``netns``, ``root``); ``lab`` runs the virtual lab end to end (``dpdk`` and ``netns``); ``web`` drives
Debian's headless chromium through Selenium and /usr/bin/chromedriver (``browser``, no root). A test in one of the
other folders carries its folder's marker even if its module forgot it, a test in tests/unit may carry none of
them, and a test outside the folders is refused: collection fails with the list.

Tests marked ``dpdk`` or ``netns`` need root, the compiled module and iproute2; ``root`` needs root; ``browser``
needs chromium, chromium-driver and selenium. With PYDP_REQUIRE_DPDK=1 (set by scripts/test.sh when CI=true) such
a test that would be skipped fails instead, so a CI run can never be green because the real thing did not run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

import pytest

REQUIRE = os.environ.get("PYDP_REQUIRE_DPDK") == "1"
HEAVY = ("dpdk", "netns", "root", "browser")
TIERS = {"unit": (), "golden": ("dpdk",), "netns": ("netns",), "lab": ("dpdk", "netns"), "web": ("browser",),
         "install": ("root",)}
HERE = Path(__file__).resolve().parent


def _missing_prerequisite() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    try:
        import pydp._pydp  # noqa: F401
    except ImportError as exc:
        return f"pydp is not built: {exc}"
    if shutil.which("ip") is None:
        return "needs iproute2"
    return None


def _missing_browser() -> str | None:
    if not (shutil.which("chromium") and os.path.exists("/usr/bin/chromedriver")):
        return "needs chromium and chromium-driver (scripts/setup.sh installs them)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium (pip install -e .[test])"
    return None


def _required(item) -> bool:
    return any(item.get_closest_marker(m) for m in HEAVY)


def _tier(item) -> str | None:
    try:
        rel = Path(str(item.path)).resolve().relative_to(HERE)
    except ValueError:
        return None
    return rel.parts[0] if len(rel.parts) > 1 and rel.parts[0] in TIERS else None


def pytest_collection_modifyitems(config, items):
    """Each test's tier from its folder: heavy folders add their marker, tests/unit refuses heavy markers."""
    wrong = []
    for item in items:
        tier = _tier(item)
        if tier is None:
            wrong.append(f"{item.nodeid}: not in a tier folder ({', '.join(f'tests/{t}' for t in TIERS)})")
        elif tier == "unit":
            heavy = [m for m in HEAVY if item.get_closest_marker(m)]
            if heavy:
                wrong.append(f"{item.nodeid}: marked {', '.join(heavy)} but in tests/unit (move it to its tier)")
        elif not _required(item):
            for m in TIERS[tier]:
                item.add_marker(m)
    if wrong:
        raise pytest.UsageError("tests in the wrong tier:\n  " + "\n  ".join(wrong))


def pytest_runtest_setup(item):
    if item.get_closest_marker("root") and os.geteuid() != 0:
        pytest.skip("needs root")
    if item.get_closest_marker("browser"):
        why = _missing_browser()
        if why:
            pytest.skip(why)
    if item.get_closest_marker("dpdk") or item.get_closest_marker("netns"):
        why = _missing_prerequisite()
        if why:
            pytest.skip(why)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE and report.skipped and _required(item):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"PYDP_REQUIRE_DPDK=1 and this DPDK/netns/root/browser test was skipped: {reason}"


# ---- fixtures --------------------------------------------------------------------------------------------------

@pytest.fixture
def shm_path():
    """A fresh name in /dev/shm; whatever is left under it (and under NAME.other) is removed afterwards."""
    path = f"/dev/shm/pydp-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield path
    for p in (path, path + ".other"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


REGION_DEFAULTS = {"workers": 2, "ports": 1, "maglev_max": 1021, "flow_capacity": 1024}


@pytest.fixture
def region(request, shm_path):
    """A region of our own (Region.create in /dev/shm, no data plane): 2 workers, 1 port, maglev_max 1021, 1024
    flows, or what ``@pytest.mark.region(workers=..., ...)`` on the test or its module says. Closed at the end:
    closing the creator must remove the file (checked)."""
    from pydp.shm import Region

    mark = request.node.get_closest_marker("region")
    r = Region.create(shm_path, **{**REGION_DEFAULTS, **(mark.kwargs if mark else {})})
    try:
        yield r
    finally:
        r.close()
    assert not os.path.exists(shm_path), "closing the creator must unlink the region"
