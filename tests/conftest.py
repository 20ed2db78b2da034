"""Shared test setup.

Tests marked ``dpdk`` run the real fast path; tests marked ``netns`` build network namespaces; tests marked
``root`` need root for something else (chattr, mounts, switching to user nobody). All of them need root.
Tests marked ``browser`` drive Debian's headless chromium through Selenium and /usr/bin/chromedriver (no root).
With PYDP_REQUIRE_DPDK=1 (set by scripts/test.sh when CI=true) such a test that would be skipped fails instead,
so a CI run can never be green because the real thing did not run.
"""

import os
import shutil

import pytest

REQUIRE = os.environ.get("PYDP_REQUIRE_DPDK") == "1"


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


def _required(item) -> bool:
    return any(item.get_closest_marker(m) for m in ("dpdk", "netns", "root", "browser"))


def _missing_browser() -> str | None:
    if not (shutil.which("chromium") and os.path.exists("/usr/bin/chromedriver")):
        return "needs chromium and chromium-driver (scripts/setup.sh installs them)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium (pip install -e .[test])"
    return None


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
