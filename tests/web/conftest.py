"""Browser tests of the admin page: Selenium drives Debian's headless chromium through the system chromedriver
(/usr/bin/chromedriver; SE_OFFLINE=true, so Selenium Manager never reaches the network)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))     # tests/ (webapp.py)


@pytest.fixture(scope="module")
def browser():
    from webapp import chromium
    with chromium() as driver:
        yield driver


@pytest.fixture
def shots(tmp_path):
    """Where screenshots go: $PYDP_SCREENSHOTS (docs/img when refreshing the docs), else the test's tmp dir."""
    d = os.environ.get("PYDP_SCREENSHOTS") or str(tmp_path)
    os.makedirs(d, exist_ok=True)
    return d
