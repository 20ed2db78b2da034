"""The admin page in a real browser (headless chromium via Selenium) against a real store behind the real HTTP API
(tests/webapp.py): sign-in, the Clusters page (sort, columns, search, add, edit, duplicate, delete, stale edit),
the read-only role, the Service Edges page and the overview. Screenshots go to $PYDP_SCREENSHOTS (docs/img)."""

from __future__ import annotations

import os

import pytest
try:
    from selenium.webdriver.common.by import By
except ImportError:             # the browser marker skips each test then (and fails it under CI=true)
    By = None

from control import ops
from webapp import PASSWORDS, WebApp, add_sample, wait

pytestmark = pytest.mark.browser

API_COLUMNS = {"name": "name", "status": "status", "service_edges": "service-edges", "cluster_ip": "cluster-ip",
               "ipsec": "ipsec-local-termination", "mode": "mode"}


@pytest.fixture
def app(tmp_path):
    with WebApp(tmp_path) as a:
        add_sample(a.store)
        yield a


def find(driver, css):
    return driver.find_element(By.CSS_SELECTOR, css)


def finds(driver, css):
    return driver.find_elements(By.CSS_SELECTOR, css)


def sign_in(driver, app, user="admin"):
    driver.get(app.url)
    driver.execute_script("localStorage.clear()")
    wait(driver, lambda d: find(d, "#signin").is_displayed(), "the sign-in form")
    find(driver, "#signin-user").send_keys(user)
    find(driver, "#signin-password").send_keys(PASSWORDS[user])
    find(driver, "#signin-submit").click()
    wait(driver, lambda d: len(finds(d, "#clusters tbody tr")) > 0, "the clusters table")


def names(driver) -> list[str]:
    return [tr.get_attribute("data-name") for tr in finds(driver, "#clusters tbody tr")]


def headers(driver) -> list[str]:
    return [th.get_attribute("data-col") for th in finds(driver, "#clusters thead th[data-col]")]


def cell(driver, name, col) -> str:
    return find(driver, f'#clusters tbody tr[data-name="{name}"] td[data-col="{col}"]').text


def shot(driver, shots, name):
    driver.save_screenshot(os.path.join(shots, name))


def test_sign_in_is_required(browser, app, shots):
    browser.get(app.url)
    wait(browser, lambda d: find(d, "#signin").is_displayed(), "the sign-in form")
    assert not finds(browser, "#clusters") and not find(browser, "#nav").is_displayed()
    find(browser, "#signin-user").send_keys("admin")
    find(browser, "#signin-password").send_keys("wrong password")
    find(browser, "#signin-submit").click()
    wait(browser, lambda d: "wrong user name or password" in find(d, "#signin-error").text, "the refusal")
    shot(browser, shots, "web-signin.png")
    assert not finds(browser, "#clusters")
    # the cookie is HttpOnly: the page's scripts cannot read it
    sign_in(browser, app)
    assert "pydp_session" not in browser.execute_script("return document.cookie")
    find(browser, "#signout").click()
    wait(browser, lambda d: find(d, "#signin").is_displayed(), "signed out")


def test_sort_every_column_both_ways(browser, app, shots):
    sign_in(browser, app)
    clusters = app.store.list_clusters()
    for col in headers(browser):
        th = f'#clusters thead th[data-col="{col}"]'
        first = "descending" if find(browser, th).get_attribute("aria-sort") == "ascending" else "ascending"
        for order in (first, "ascending" if first == "descending" else "descending"):
            find(browser, th).click()
            wait(browser, lambda d: find(d, th).get_attribute("aria-sort") == order, f"{col} {order}")
            desc = order == "descending"
            if col in API_COLUMNS:
                want = [c["name"] for c in ops.cluster_list(clusters, API_COLUMNS[col], desc)]
            else:   # the live columns: by their text, then by name
                texts = {n: cell(browser, n, col) for n in names(browser)}
                want = sorted(texts, key=lambda n: (texts[n], n), reverse=desc)
            wait(browser, lambda d: names(d) == want, f"rows sorted by {col} {order}: {want}")
            assert find(browser, th + " .arrow").text == ("\u25bc" if desc else "\u25b2")
    find(browser, 'th[data-col="cluster_ip"]').click()
    wait(browser, lambda d: names(d) == ["lab", "Api", "web", "vpn"], "sorted by cluster IP")
    shot(browser, shots, "web-clusters.png")


def test_choose_columns_is_remembered(browser, app):
    sign_in(browser, app)
    assert headers(browser) == ["name", "status", "service_edges", "cluster_ip", "ipsec", "mode", "carp", "health"]
    find(browser, "#columns-button").click()
    for col in ("ipsec", "health"):
        find(browser, f'#columns-panel input[data-col="{col}"]').click()
    wait(browser, lambda d: "ipsec" not in headers(d) and "health" not in headers(d), "columns hidden")
    assert not finds(browser, '#clusters td[data-col="ipsec"]')
    browser.refresh()
    wait(browser, lambda d: len(finds(d, "#clusters tbody tr")) == 4, "reloaded")
    assert headers(browser) == ["name", "status", "service_edges", "cluster_ip", "mode", "carp"]
    find(browser, "#columns-button").click()
    find(browser, '#columns-panel input[data-col="ipsec"]').click()
    wait(browser, lambda d: "ipsec" in headers(d), "column shown again")


def test_search_as_you_type(browser, app):
    sign_in(browser, app)
    box = find(browser, "#search")
    box.send_keys("203.0")
    wait(browser, lambda d: names(d) == ["vpn"], "only vpn matches")
    box.send_keys(".113.99")
    wait(browser, lambda d: names(d) == [], "nothing matches")
    for _ in range(len("203.0.113.99")):
        box.send_keys("\b")
    box.send_keys("a")                                   # Api (name), lab (name), a1.. (edges of Api)
    wait(browser, lambda d: sorted(names(d)) == ["Api", "lab"], "search by name")
    assert "standalone" in cell(browser, "lab", "mode") and "not for production" in cell(browser, "lab", "mode")


def _open_add(browser):
    find(browser, "#add-cluster").click()
    wait(browser, lambda d: find(d, "#cluster-form").is_displayed(), "the add form")


def test_add_with_a_bad_cluster_ip_then_add(browser, app, shots):
    sign_in(browser, app)
    rev = app.revision()
    before = app.store.list_clusters()
    _open_add(browser)
    find(browser, "#f-name").send_keys("shop")
    find(browser, "#f-cluster_ip").send_keys("198.51.100.300")
    find(browser, "#f-edge").send_keys("s1=198.51.100.71\ns2=198.51.100.72")
    find(browser, "#form-save").click()
    box = '#cluster-form .field-error[data-field="cluster_ip"]'
    wait(browser, lambda d: "is not an IP address" in find(d, box).text, "the error next to Cluster IP")
    assert "198.51.100.300" in find(browser, box).text
    assert "invalid" in find(browser, "#f-cluster_ip").get_attribute("class")
    shot(browser, shots, "web-add-error.png")
    assert app.revision() == rev and app.store.list_clusters() == before
    field = find(browser, "#f-cluster_ip")
    field.clear()
    field.send_keys("198.51.100.70")
    find(browser, "#form-save").click()
    wait(browser, lambda d: "shop" in names(d), "the new row")
    c = app.store.get_cluster("shop")
    assert c["cluster_ip"] == "198.51.100.70" and [e["name"] for e in c["edge"]] == ["s1", "s2"]
    assert app.store.history(limit=1)[0]["via"] == "http" and app.store.history(limit=1)[0]["user"] == "admin"
    # an edge list the page itself cannot read: its message next to the edges
    _open_add(browser)
    find(browser, "#f-name").send_keys("x")
    find(browser, "#f-edge").send_keys("garbage")
    find(browser, "#form-save").click()
    wait(browser, lambda d: "expected NAME=IP" in find(d, '#cluster-form .field-error[data-field="edge"]').text,
         "the edges error")
    find(browser, "#form-cancel").click()


def test_edit_and_a_stale_edit(browser, app, shots):
    sign_in(browser, app)
    find(browser, '#clusters tr[data-name="web"] button.edit').click()
    wait(browser, lambda d: find(d, "#cluster-form").is_displayed(), "the edit form")
    assert find(browser, "#f-cluster_ip").get_attribute("value") == "198.51.100.10"
    find(browser, "#f-cluster_ip").clear()
    find(browser, "#f-cluster_ip").send_keys("198.51.100.11")
    find(browser, "#f-ipsec_local_termination").click()
    shot(browser, shots, "web-edit.png")
    find(browser, "#form-save").click()
    wait(browser, lambda d: cell(d, "web", "cluster_ip") == "198.51.100.11", "the edited row")
    assert app.store.get_cluster("web")["ipsec_local_termination"] is True
    # stale: another writer changes the store while the form is open
    find(browser, '#clusters tr[data-name="web"] button.edit').click()
    wait(browser, lambda d: find(d, "#cluster-form").is_displayed(), "the edit form")
    app.store.set_edge_state("web", "e1", "draining")
    rev = app.revision()
    find(browser, "#f-cluster_ip").clear()
    find(browser, "#f-cluster_ip").send_keys("198.51.100.12")
    find(browser, "#form-save").click()
    wait(browser, lambda d: "Someone changed the configuration" in find(d, "#cluster-form .form-error").text,
         "the conflict message")
    assert "since revision" in find(browser, "#cluster-form .form-error").text
    shot(browser, shots, "web-stale.png")
    assert app.revision() == rev and app.store.get_cluster("web")["cluster_ip"] == "198.51.100.11"
    find(browser, "#form-cancel").click()


def test_duplicate_asks_for_name_and_ip(browser, app):
    sign_in(browser, app)
    find(browser, '#clusters tr[data-name="vpn"] button.duplicate').click()
    wait(browser, lambda d: find(d, "#duplicate-form").is_displayed(), "the duplicate form")
    find(browser, "#d-new_name").send_keys("vpn2")
    find(browser, "#d-cluster_ip").send_keys("203.0.113.5")            # taken: the error shows by the field
    find(browser, "#form-save").click()
    wait(browser, lambda d: "duplicate cluster_ip" in
         find(d, '#duplicate-form .field-error[data-field="cluster_ip"]').text, "the duplicate IP error")
    assert "vpn2" not in [c["name"] for c in app.store.list_clusters()]
    find(browser, "#d-cluster_ip").clear()
    find(browser, "#d-cluster_ip").send_keys("203.0.113.6")
    find(browser, "#form-save").click()
    wait(browser, lambda d: "vpn2" in names(d), "the copy's row")
    copy, orig = app.store.get_cluster("vpn2"), app.store.get_cluster("vpn")
    assert copy["cluster_ip"] == "203.0.113.6" and copy["edge"] == orig["edge"]
    assert copy["carp"]["vhid"] != orig["carp"]["vhid"] and copy["carp"]["passphrase_set"]


def test_delete_asks_first(browser, app, shots):
    sign_in(browser, app)
    find(browser, '#clusters tr[data-name="Api"] button.delete').click()
    wait(browser, lambda d: find(d, "#confirm-text").is_displayed(), "the confirmation")
    assert "Delete cluster Api" in find(browser, "#confirm-text").text
    shot(browser, shots, "web-delete-confirm.png")
    find(browser, "#confirm-no").click()
    assert "Api" in [c["name"] for c in app.store.list_clusters()] and "Api" in names(browser)
    find(browser, '#clusters tr[data-name="Api"] button.delete').click()
    wait(browser, lambda d: find(d, "#confirm-yes").is_displayed(), "the confirmation")
    find(browser, "#confirm-yes").click()
    wait(browser, lambda d: "Api" not in names(d), "the row gone")
    assert "Api" not in [c["name"] for c in app.store.list_clusters()]


def test_read_only_user_is_refused(browser, app):
    sign_in(browser, app, "viewer")
    assert find(browser, "#who-role").text == "read-only"
    for css in ("#add-cluster", "#clusters button.edit", "#clusters button.delete", "#clusters button.duplicate"):
        assert all(not b.is_enabled() for b in finds(browser, css)), css
    rev = app.revision()
    # the page's own request, with the session's CSRF token, is refused by the server too
    status = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch('/api/v1/session').then(r => r.json()).then(s =>
          fetch('/api/v1/clusters/web/edges/e1/drain', {method: 'POST', headers: {'X-CSRF-Token': s.csrf,
                'If-Match': '*'}})).then(r => r.json().then(j => done([r.status, j.error.kind])));""")
    assert status == [403, "forbidden"] and app.revision() == rev
    browser.get(app.url + "#/clusters/web")
    wait(browser, lambda d: len(finds(d, "#edges tbody tr")) == 2, "the edges page")
    assert not find(browser, '#edges tr[data-edge="e1"] button.drain').is_enabled()


def test_service_edges_page(browser, app, shots):
    sign_in(browser, app)
    find(browser, '#clusters tr[data-name="web"] a.cluster-link').click()
    wait(browser, lambda d: len(finds(d, "#edges tbody tr")) == 2, "the edges page")
    find(browser, '#edges tr[data-edge="e1"] button.drain').click()
    wait(browser, lambda d: find(d, '#edges tr[data-edge="e1"] .admin-state').text == "draining", "drained")
    assert app.store.get_cluster("web")["edge"][0]["state"] == "draining"
    find(browser, "#e-name").send_keys("e3")
    find(browser, "#e-ip").send_keys("not-an-ip")
    find(browser, "#edge-add").click()
    wait(browser, lambda d: "is not an IP address" in find(d, '#edge-form .field-error[data-field="edge.ip"]').text,
         "the IP error")
    find(browser, "#e-ip").clear()
    find(browser, "#e-ip").send_keys("198.51.100.23")
    find(browser, "#edge-add").click()
    wait(browser, lambda d: len(finds(d, "#edges tbody tr")) == 3, "the new edge")
    w = find(browser, '#edges tr[data-edge="e3"] input.weight-input')
    w.clear()
    w.send_keys("5")
    find(browser, '#edges tr[data-edge="e3"] button.set-weight').click()
    wait(browser, lambda d: {e["name"]: e["weight"] for e in app.store.get_cluster("web")["edge"]}["e3"] == 5,
         "weight 5")
    shot(browser, shots, "web-edges.png")
    find(browser, '#edges tr[data-edge="e3"] button.remove').click()
    wait(browser, lambda d: find(d, "#confirm-yes").is_displayed(), "the confirmation")
    find(browser, "#confirm-yes").click()
    wait(browser, lambda d: len(finds(d, "#edges tbody tr")) == 2, "e3 removed")
    find(browser, '#edges tr[data-edge="e1"] button.undrain').click()
    wait(browser, lambda d: find(d, '#edges tr[data-edge="e1"] .admin-state').text == "active", "undrained")
    assert [e["state"] for e in app.store.get_cluster("web")["edge"]] == ["active", "active"]
    browser.get(app.url + "#/clusters/lab")
    wait(browser, lambda d: "not for production" in find(d, "#view h1").text, "standalone marked on its page")


def test_overview_and_history_while_the_data_plane_is_down(browser, app, shots):
    sign_in(browser, app)
    wait(browser, lambda d: find(d, "#dp-banner").is_displayed(), "the data plane banner")
    assert "data plane is down" in find(browser, "#dp-banner").text
    find(browser, "#nav-overview").click()
    wait(browser, lambda d: find(d, "#card-dataplane").is_displayed(), "the overview")
    assert "down" in find(browser, "#card-dataplane").text
    assert len(finds(browser, "#carp tbody tr")) == 4
    assert "not for production" in find(browser, '#carp tr[data-name="lab"]').text
    shot(browser, shots, "web-overview.png")
    find(browser, "#nav-history").click()
    wait(browser, lambda d: len(finds(d, "#history tbody tr")) == 4, "the history")
    assert "add_cluster" in find(browser, "#history tbody tr").text
