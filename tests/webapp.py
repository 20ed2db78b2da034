"""A real admin page server for tests: a Store in a temporary SQLite file, the HTTP app of control.http on an event
loop in a thread (as pydp-control runs it on its own loop), a users file with an admin, a read-only user and
tokens. No fake data: every answer comes from the store through control.ops.

    with WebApp(tmp_path) as app:
        s = app.signed_in("admin")              # a requests.Session with the cookie; s.csrf for changes
        r = s.get(app.api("clusters"))
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading

import requests

from control.http import auth, start
from control.http.backend import StoreOnlyBackend
from control.store import Store

PASSWORDS = {"admin": "admin-password-1", "viewer": "viewer-password-1"}


class WebApp:
    def __init__(self, tmp_path, *, backend_factory=None, tls: tuple[str, str] | None = None,
                 users_mode: int = 0o600):
        self.dir = str(tmp_path)
        self.store = Store(os.path.join(self.dir, "pydp.db"))
        self.users_file = os.path.join(self.dir, "http-users")
        auth.set_entry(self.users_file, "admin", "admin", auth.hash_password(PASSWORDS["admin"], n=1 << 10))
        auth.set_entry(self.users_file, "viewer", "read-only", auth.hash_password(PASSWORDS["viewer"], n=1 << 10))
        self.admin_token, secret = auth.new_token()
        auth.set_entry(self.users_file, "robot", "admin", secret)
        self.viewer_token, secret = auth.new_token()
        auth.set_entry(self.users_file, "monitor", "read-only", secret)
        os.chmod(self.users_file, users_mode)
        self.backend = (backend_factory or StoreOnlyBackend)(self.store)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="webapp-loop", daemon=True)
        self.thread.start()
        cert, key = tls if tls else (None, None)
        self.server = self.run(start(self.backend, "127.0.0.1", 0, users_file=self.users_file, tls_cert=cert,
                                     tls_key=key))
        self.url = self.server.url

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def api(self, path: str) -> str:
        return self.url + "api/v1/" + path.lstrip("/")

    def signed_in(self, user: str = "admin", verify=True) -> requests.Session:
        s = requests.Session()
        s.verify = verify
        r = s.post(self.api("session"), json={"user": user, "password": PASSWORDS[user]}, timeout=10)
        assert r.status_code == 200, r.text
        s.csrf = r.json()["csrf"]
        s.headers["X-CSRF-Token"] = s.csrf
        return s

    def revision(self) -> int:
        return self.store.revision()

    def close(self) -> None:
        try:
            self.run(self.server.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
            close = getattr(self.backend, "close", None)
            if close:
                close()
            self.store.close()

    def __enter__(self) -> "WebApp":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def add_sample(store: Store) -> None:
    """Four clusters that sort differently on every column (one standalone, one disabled, one with IPsec)."""
    store.add_cluster({"name": "web", "cluster_ip": "198.51.100.10",
                       "edge": [{"name": "e1", "ip": "198.51.100.21"}, {"name": "e2", "ip": "198.51.100.22"}]})
    store.add_cluster({"name": "Api", "cluster_ip": "198.51.100.9", "enabled": False,
                       "edge": [{"name": "a1", "ip": "198.51.100.31"}, {"name": "a2", "ip": "198.51.100.32"},
                                {"name": "a3", "ip": "198.51.100.33"}]})
    store.add_cluster({"name": "vpn", "cluster_ip": "203.0.113.5", "ipsec_local_termination": True,
                       "carp": {"passphrase": "carp-secret"},
                       "edge": [{"name": "v1", "ip": "203.0.113.21"}, {"name": "v2", "ip": "203.0.113.22"},
                                {"name": "v3", "ip": "203.0.113.23"}, {"name": "v4", "ip": "203.0.113.24"}]})
    store.add_cluster({"name": "lab", "cluster_ip": "192.0.2.50", "mode": "standalone",
                       "edge": [{"name": "only", "ip": "192.0.2.51"}]})


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@contextlib.contextmanager
def chromium():
    """Headless Debian chromium driven by Selenium through the system chromedriver; SE_OFFLINE=true keeps
    Selenium Manager from reaching the network. Quit at the end."""
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
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


def wait(driver, cond, what: str, timeout: float = 15.0):
    """Polls cond(driver) every 50 ms until it is true (at most timeout seconds); re-rendered elements are
    retried."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05,
                         ignored_exceptions=(StaleElementReferenceException, NoSuchElementException)).until(
        lambda d: cond(d), message=what)


def css(driver, selector):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, selector)


def sign_in_page(driver, url: str, user: str, password: str) -> None:
    driver.get(url)
    driver.execute_script("localStorage.clear()")
    wait(driver, lambda d: css(d, "#signin").is_displayed(), "the sign-in form")
    css(driver, "#signin-user").send_keys(user)
    css(driver, "#signin-password").send_keys(password)
    css(driver, "#signin-submit").click()
    wait(driver, lambda d: d.find_elements("css selector", "#clusters tbody tr"), "the clusters table")
