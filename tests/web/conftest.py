"""Browser tests of the admin page: Selenium drives Debian's headless chromium through the system chromedriver
(/usr/bin/chromedriver; SE_OFFLINE=true, so Selenium Manager never reaches the network)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))     # tests/ (webapp.py)

CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,900", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-default-apps", "--disable-sync", "--lang=en-US"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def shots(tmp_path):
    """Where screenshots go: $PYDP_SCREENSHOTS (docs/img when refreshing the docs), else the test's tmp dir."""
    d = os.environ.get("PYDP_SCREENSHOTS") or str(tmp_path)
    os.makedirs(d, exist_ok=True)
    return d
