// pydp admin page: plain JavaScript, no framework, no build step. It talks only to /api/v1/ of the server that
// served it. docs/web.md describes it.
"use strict";

const API = "/api/v1";
const COLUMNS = [
  // key, header, API sort column (null: sorted here, from the live status)
  ["name", "Name", "name"],
  ["status", "Status", "status"],
  ["service_edges", "Service Edges", "service-edges"],
  ["cluster_ip", "Cluster IP", "cluster-ip"],
  ["ipsec", "IPSec Local Termination", "ipsec-local-termination"],
  ["mode", "Mode", "mode"],
  ["carp", "CARP", null],
  ["health", "Health", null],
];
const COLUMNS_KEY = "pydp.columns";
const NOT_FOR_PRODUCTION = "standalone \u2014 not for production";

const S = { session: null, revision: null, status: null, sort: "name", desc: false, search: "", rows: [],
            timer: null, searchTimer: null, view: null };

// ---- helpers ----
function $(sel, root) { return (root || document).querySelector(sel); }
function $$(sel, root) { return Array.from((root || document).querySelectorAll(sel)); }
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}
function enc(s) { return encodeURIComponent(s); }
function isAdmin() { return S.session && S.session.role === "admin"; }

async function api(method, path, body, ifMatch) {
  const headers = { "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && S.session && S.session.csrf) headers["X-CSRF-Token"] = S.session.csrf;
  if (ifMatch !== undefined && ifMatch !== null) headers["If-Match"] = '"' + ifMatch + '"';
  let resp;
  try {
    resp = await fetch(API + path, { method, headers, credentials: "same-origin",
                                      body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    return { ok: false, status: 0, data: { error: { kind: "unavailable", message: "pydp-control does not answer: " + e,
                                                    field: "", errors: [] } } };
  }
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  const etag = resp.headers.get("ETag");
  if (etag) S.revision = parseInt(etag.replace(/\D/g, ""), 10);
  if (resp.status === 401 && path !== "/session") { showSignIn("Your session ended: sign in again."); }
  return { ok: resp.ok, status: resp.status, data, etag };
}

function errorText(r) {
  const e = r.data && r.data.error;
  return e ? e.message : "HTTP " + r.status;
}

function notice(text, isError) {
  const n = $("#notice");
  n.textContent = text;
  n.className = "notice" + (isError ? " error" : "");
  n.hidden = !text;
}

function modeCell(mode) {
  if (mode === "standalone") return el("span", { class: "badge not-prod", title: "evaluation only: one edge, no failover" },
                                      NOT_FOR_PRODUCTION);
  return el("span", {}, mode);
}

function stateSpan(text) {
  let cls = String(text).split(" ")[0];
  const m = String(text).match(/^(\d+)\/(\d+) up$/);
  if (m) cls = m[1] === m[2] ? "up" : "down";
  return el("span", { class: "state-" + cls }, text);
}

// ---- sign-in ----
function showSignIn(message) {
  S.session = null;
  clearInterval(S.timer);
  $("#nav").hidden = true;
  $("#who").hidden = true;
  $("#view").replaceChildren();
  $("#dp-banner").hidden = true;
  $("#signin").hidden = false;
  $("#signin-error").textContent = message || "";
}

async function signIn(ev) {
  ev.preventDefault();
  const r = await api("POST", "/session", { user: $("#signin-user").value, password: $("#signin-password").value });
  if (!r.ok) { $("#signin-error").textContent = errorText(r); return; }
  $("#signin-password").value = "";
  started(r.data);
}

function started(session) {
  S.session = session;
  $("#signin").hidden = true;
  $("#nav").hidden = false;
  $("#who").hidden = false;
  $("#who-name").textContent = session.user;
  $("#who-role").textContent = session.role;
  clearInterval(S.timer);
  S.timer = setInterval(refreshLive, 3000);
  route();
}

async function signOut() {
  await api("DELETE", "/session");
  showSignIn("Signed out.");
}

// ---- live status (data plane, CARP, health) ----
async function loadStatus() {
  const r = await api("GET", "/status");
  if (r.ok) S.status = r.data;
  const b = $("#dp-banner");
  if (S.status && !S.status.dataplane_up) {
    b.textContent = "The data plane is down: the configuration can still be changed; it is applied when the data "
                    + "plane runs again.";
    b.hidden = false;
  } else b.hidden = true;
  return S.status;
}
function liveOf(name) {
  return S.status ? S.status.clusters.find(c => c.name === name) : null;
}
function carpText(name) {
  const c = liveOf(name);
  if (!c) return "unknown";
  return c.carp.local + (c.carp.peer && c.carp.peer !== "unknown" ? " (peer " + c.carp.peer + ")" : "");
}
function healthText(name) {
  const c = liveOf(name);
  if (!c || !c.edges.length) return "unchecked";
  const checked = c.edges.filter(e => e.health === "up" || e.health === "down");
  if (!checked.length) return "unchecked";
  const up = c.edges.filter(e => e.health === "up").length;
  return up + "/" + c.edges.length + " up";
}
async function refreshLive() {
  if (!S.session) return;
  await loadStatus();
  if (S.view === "clusters") {
    for (const tr of $$("#clusters tbody tr")) {
      const name = tr.dataset.name;
      const c = $("td[data-col=carp]", tr), h = $("td[data-col=health]", tr);
      if (c) c.replaceChildren(stateSpan(carpText(name)));
      if (h) h.replaceChildren(stateSpan(healthText(name)));
    }
  } else if (S.view === "overview") renderOverview();
  else if (S.view === "edges") renderEdgesLive();
}

// ---- routing ----
function route() {
  if (!S.session) return;
  const h = location.hash || "#/clusters";
  for (const a of $$("#nav a")) a.classList.toggle("current", h.startsWith(a.getAttribute("href")));
  notice("");
  let m;
  if ((m = h.match(/^#\/clusters\/([^/]+)$/))) showEdges(decodeURIComponent(m[1]));
  else if (h.startsWith("#/overview")) showOverview();
  else if (h.startsWith("#/history")) showHistory();
  else showClusters();
}

// ---- Clusters page ----
function visibleColumns() {
  try {
    const v = JSON.parse(localStorage.getItem(COLUMNS_KEY));
    if (Array.isArray(v)) return COLUMNS.map(c => c[0]).filter(k => v.includes(k));
  } catch (e) { /* not set */ }
  return COLUMNS.map(c => c[0]);
}

async function showClusters() {
  S.view = "clusters";
  const view = $("#view");
  const search = el("input", { type: "search", id: "search", placeholder: "Search name, IP, edge\u2026",
                               value: S.search, "aria-label": "Search" });
  search.addEventListener("input", () => {
    clearTimeout(S.searchTimer);
    S.searchTimer = setTimeout(() => { S.search = search.value; loadClusters(); }, 150);
  });
  const colsButton = el("button", { id: "columns-button", type: "button", onclick: toggleColumns }, "Columns");
  const add = el("button", { id: "add-cluster", type: "button", class: "primary", disabled: !isAdmin(),
                             title: isAdmin() ? null : "read-only user", onclick: () => clusterForm(null) },
                 "Add cluster");
  view.replaceChildren(
    el("h1", {}, "Clusters"),
    el("div", { class: "toolbar" }, search, colsButton, add,
       el("span", { id: "count", class: "muted" })),
    el("div", { id: "columns-panel", hidden: true },
       COLUMNS.map(([k, label]) => el("label", {}, el("input", { type: "checkbox", "data-col": k,
         checked: visibleColumns().includes(k), onchange: chooseColumns }), " " + label))),
    el("table", { id: "clusters" }, el("thead"), el("tbody")));
  await loadStatus();
  await loadClusters();
}

function toggleColumns() { const p = $("#columns-panel"); p.hidden = !p.hidden; }

function chooseColumns() {
  const chosen = $$("#columns-panel input").filter(i => i.checked).map(i => i.dataset.col);
  if (!chosen.includes("name")) { chosen.unshift("name"); $("#columns-panel input[data-col=name]").checked = true; }
  localStorage.setItem(COLUMNS_KEY, JSON.stringify(chosen));
  renderClusters();
}

async function loadClusters() {
  const col = COLUMNS.find(c => c[0] === S.sort);
  const apiSort = col && col[2] ? col[2] : "name";
  const q = "?sort=" + enc(apiSort) + "&desc=" + (col && col[2] ? S.desc : false) + (S.search ? "&search=" + enc(S.search) : "");
  const r = await api("GET", "/clusters" + q);
  if (!r.ok) { notice(errorText(r), true); return; }
  let rows = r.data;
  if (col && !col[2]) {
    const key = S.sort === "carp" ? carpText : healthText;
    rows = rows.slice().sort((a, b) => key(a.name).localeCompare(key(b.name)) || a.name.localeCompare(b.name));
    if (S.desc) rows.reverse();
  }
  S.rows = rows;
  renderClusters();
}

function sortBy(key) {
  if (S.sort === key) S.desc = !S.desc; else { S.sort = key; S.desc = false; }
  loadClusters();
}

function renderClusters() {
  const table = $("#clusters");
  if (!table) return;
  const cols = COLUMNS.filter(c => visibleColumns().includes(c[0]));
  const head = el("tr", {}, cols.map(([k, label]) => el("th", {
      class: "sortable", "data-col": k, onclick: () => sortBy(k), title: "sort by " + label,
      "aria-sort": S.sort === k ? (S.desc ? "descending" : "ascending") : "none" },
    label, el("span", { class: "arrow" }, S.sort === k ? (S.desc ? "\u25bc" : "\u25b2") : ""))),
    el("th", {}, "Actions"));
  $("thead", table).replaceChildren(head);
  const body = S.rows.map(row => {
    const cells = {
      name: el("a", { href: "#/clusters/" + enc(row.name), class: "cluster-link" }, row.name),
      status: stateSpan(row.status),
      service_edges: row.service_edges.length + (row.service_edges.length ? " (" + row.service_edges.join(", ") + ")" : ""),
      cluster_ip: row.cluster_ip,
      ipsec: row.ipsec_local_termination ? "yes" : "no",
      mode: modeCell(row.mode),
      carp: stateSpan(carpText(row.name)),
      health: stateSpan(healthText(row.name)),
    };
    const dis = !isAdmin();
    return el("tr", { "data-name": row.name },
      cols.map(([k]) => el("td", { "data-col": k }, cells[k])),
      el("td", { class: "actions" },
        el("button", { type: "button", class: "edit", disabled: dis, onclick: () => clusterForm(row.name) }, "Edit"),
        el("button", { type: "button", class: "duplicate", disabled: dis, onclick: () => duplicateForm(row.name) },
           "Duplicate"),
        el("button", { type: "button", class: row.status === "enabled" ? "disable" : "enable", disabled: dis,
                       onclick: () => setEnabled(row.name, row.status !== "enabled") },
           row.status === "enabled" ? "Disable" : "Enable"),
        el("button", { type: "button", class: "delete danger", disabled: dis, onclick: () => deleteCluster(row) },
           "Delete")));
  });
  $("tbody", table).replaceChildren(...body);
  $("#count").textContent = S.rows.length + (S.rows.length === 1 ? " cluster" : " clusters");
}

// ---- dialogs ----
function openDialog(...children) {
  $("#dialog").replaceChildren(...children);
  $("#modal").hidden = false;
  const first = $("#dialog input, #dialog button");
  if (first) first.focus();
}
function closeDialog() { $("#modal").hidden = true; $("#dialog").replaceChildren(); }

function confirmDialog(text, yesLabel) {
  return new Promise(resolve => {
    openDialog(el("h2", {}, "Please confirm"), el("p", { id: "confirm-text" }, text),
      el("div", { class: "buttons" },
        el("button", { type: "button", id: "confirm-no", onclick: () => { closeDialog(); resolve(false); } }, "Cancel"),
        el("button", { type: "button", id: "confirm-yes", class: "primary danger",
                       onclick: () => { closeDialog(); resolve(true); } }, yesLabel)));
  });
}

function row(id, label, input, hint) {
  return el("div", { class: "row" }, el("label", { for: id }, label), el("div", {}, input,
    hint ? el("div", { class: "hint" }, hint) : null),
    el("div", { class: "field-error", "data-field": input.dataset.field || id.replace(/^f-/, "") }));
}

function showErrors(form, r) {
  for (const e of $$(".field-error", form)) e.textContent = "";
  for (const i of $$(".invalid", form)) i.classList.remove("invalid");
  const errors = (r.data && r.data.error && r.data.error.errors) || [];
  const general = [];
  for (const e of errors) {
    let f = e.field || "";
    let box = $(`.field-error[data-field="${f}"]`, form);
    if (!box && f.startsWith("edge")) box = $('.field-error[data-field="edge"]', form);
    if (!box && f.includes(".")) box = $(`.field-error[data-field="${f.split(".")[0]}"]`, form);
    if (box) {
      box.textContent = (box.textContent ? box.textContent + " " : "") + e.message;
      const input = box.parentElement.querySelector("input, select, textarea");
      if (input) input.classList.add("invalid");
    } else general.push(e.message);
  }
  if (r.status === 409) general.unshift("Someone changed the configuration since you opened this form: nothing was "
                                        + "saved. Close the form and open it again to see the current settings.");
  if (!errors.length && !r.ok) general.push(errorText(r));
  $(".form-error", form).textContent = general.join(" ");
}

function parseEdges(text) {
  const edges = [];
  const lines = text.split("\n").map(l => l.trim()).filter(l => l);
  lines.forEach((line, i) => {
    const [head, ...opts] = line.split(",");
    const m = head.match(/^([^=]+)=([^@]+)(?:@(.+))?$/);
    if (!m) throw new Error("edge: line " + (i + 1) + ": expected NAME=IP[@MAC][,weight=N]");
    const e = { name: m[1].trim(), ip: m[2].trim() };
    if (m[3]) e.mac = m[3].trim();
    for (const o of opts) {
      const [k, v] = o.split("=");
      if (k.trim() === "weight" && /^\d+$/.test((v || "").trim())) e.weight = parseInt(v, 10);
      else throw new Error("edge: line " + (i + 1) + ": unknown option " + JSON.stringify(o));
    }
    edges.push(e);
  });
  return edges;
}

async function clusterForm(name) {
  let c = { name: "", cluster_ip: "", mode: "cluster", enabled: true, ipsec_local_termination: false, dsr: "l2",
            carp: { vhid: "" }, health: { type: "tcp" }, edge: [] };
  let formRev = S.revision;
  if (name) {
    const r = await api("GET", "/clusters/" + enc(name));
    if (!r.ok) { notice(errorText(r), true); return; }
    c = r.data;
    formRev = S.revision;
  }
  const input = (id, value, attrs) => el("input", Object.assign({ id, type: "text", value }, attrs || {}));
  const select = (id, value, options) => {
    const s = el("select", { id }, options.map(([v, l]) => el("option", { value: v }, l)));
    s.value = value;
    return s;
  };
  const check = (id, value) => el("input", { id, type: "checkbox", checked: value });
  const f = el("form", { id: "cluster-form", novalidate: true },
    el("h2", {}, name ? "Edit cluster " + name : "Add cluster"),
    row("f-name", "Name", input("f-name", c.name)),
    row("f-cluster_ip", "Cluster IP", input("f-cluster_ip", c.cluster_ip), "the address clients connect to"),
    row("f-mode", "Mode", select("f-mode", c.mode, [["cluster", "cluster (production: CARP failover)"],
                                                    ["standalone", NOT_FOR_PRODUCTION]])),
    row("f-enabled", "Enabled", check("f-enabled", c.enabled)),
    row("f-ipsec_local_termination", "IPSec local termination", check("f-ipsec_local_termination",
                                                                      c.ipsec_local_termination)),
    row("f-dsr", "DSR", select("f-dsr", c.dsr, [["l2", "l2 (MAC rewrite)"], ["ipip", "ipip (IP-in-IP)"]])),
    row("f-carp.vhid", "CARP vhid", input("f-carp.vhid", c.carp.vhid === undefined ? "" : String(c.carp.vhid),
                                          { inputmode: "numeric" }), name ? null : "empty: the lowest free one"),
    row("f-carp.passphrase", "CARP passphrase", el("input", { id: "f-carp.passphrase", type: "password",
        autocomplete: "new-password", placeholder: c.carp.passphrase_set ? "(set; type to replace)" : "(not set)" })),
    row("f-health.type", "Health check", select("f-health.type", c.health.type,
        [["tcp", "tcp"], ["http", "http"], ["https", "https"], ["icmp", "icmp"], ["none", "none"]])),
    name ? null : row("f-edge", "Service edges", el("textarea", { id: "f-edge", placeholder: "e1=192.0.2.21\ne2=192.0.2.22" }),
                      "one per line: NAME=IP[@MAC][,weight=N]; 2 to 16 (standalone: 1)"),
    el("div", { class: "form-error field-error", role: "alert" }),
    el("div", { class: "buttons" },
      el("button", { type: "button", id: "form-cancel", onclick: closeDialog }, "Cancel"),
      el("button", { type: "submit", id: "form-save", class: "primary" }, name ? "Save" : "Add")));
  f.addEventListener("submit", async ev => {
    ev.preventDefault();
    const v = id => $("#" + CSS.escape(id), f);
    const body = { name: v("f-name").value.trim(), cluster_ip: v("f-cluster_ip").value.trim(), mode: v("f-mode").value,
                   enabled: v("f-enabled").checked, ipsec_local_termination: v("f-ipsec_local_termination").checked,
                   dsr: v("f-dsr").value, carp: {}, health: { type: v("f-health.type").value } };
    const vhid = v("f-carp.vhid").value.trim();
    if (vhid !== "") body.carp.vhid = /^\d+$/.test(vhid) ? parseInt(vhid, 10) : vhid;
    const pass = v("f-carp.passphrase").value;
    if (pass) body.carp.passphrase = pass;
    if (body.mode === "standalone") delete body.carp.vhid;
    let r;
    if (name) {
      r = await api("PATCH", "/clusters/" + enc(name), body, formRev);
    } else {
      try { body.edge = parseEdges(v("f-edge").value); } catch (e) {
        showErrors(f, { ok: false, status: 400, data: { error: { errors: [{ field: "edge", message: e.message }] } } });
        return;
      }
      r = await api("POST", "/clusters", body, S.revision);
    }
    if (!r.ok) { showErrors(f, r); return; }
    closeDialog();
    notice((name ? "Saved cluster " : "Added cluster ") + r.data.result.name + warningsText(r));
    loadClusters();
  });
  openDialog(f);
}

function warningsText(r) {
  const w = (r.data && r.data.warnings) || [];
  return w.length ? " (" + w.join("; ") + ")" : "";
}

function duplicateForm(name) {
  const f = el("form", { id: "duplicate-form", novalidate: true },
    el("h2", {}, "Duplicate cluster " + name),
    el("p", { class: "hint" }, "The copy gets the settings and edges of " + name + " and the lowest free CARP vhid."),
    row("d-new_name", "New name", el("input", { id: "d-new_name", type: "text", "data-field": "new_name" })),
    row("d-cluster_ip", "Cluster IP", el("input", { id: "d-cluster_ip", type: "text", "data-field": "cluster_ip" })),
    el("div", { class: "form-error field-error", role: "alert" }),
    el("div", { class: "buttons" },
      el("button", { type: "button", id: "form-cancel", onclick: closeDialog }, "Cancel"),
      el("button", { type: "submit", id: "form-save", class: "primary" }, "Duplicate")));
  f.addEventListener("submit", async ev => {
    ev.preventDefault();
    const newName = $("#d-new_name", f).value.trim();
    const r = await api("POST", "/clusters/" + enc(name) + "/duplicate",
                        { new_name: newName, cluster_ip: $("#d-cluster_ip", f).value.trim() }, S.revision);
    if (!r.ok) {
      // the store names the copy's fields "name" and "cluster_ip"
      for (const e of (r.data && r.data.error && r.data.error.errors) || []) if (e.field === "name") e.field = "new_name";
      showErrors(f, r);
      return;
    }
    closeDialog();
    notice("Duplicated " + name + " as " + newName + warningsText(r));
    loadClusters();
  });
  openDialog(f);
}

async function deleteCluster(row) {
  const n = row.service_edges.length;
  if (!await confirmDialog("Delete cluster " + row.name + " (" + row.cluster_ip + ") and its " + n + " service edge"
                           + (n === 1 ? "" : "s") + "? Its traffic stops at once.", "Delete")) return;
  const r = await api("DELETE", "/clusters/" + enc(row.name), undefined, S.revision);
  if (!r.ok) notice(errorText(r), true); else notice("Deleted cluster " + row.name + warningsText(r));
  loadClusters();
}

async function setEnabled(name, enabled) {
  const r = await api("POST", "/clusters/" + enc(name) + (enabled ? "/enable" : "/disable"), undefined, S.revision);
  if (!r.ok) notice(errorText(r), true); else notice((enabled ? "Enabled " : "Disabled ") + name + warningsText(r));
  loadClusters();
}

// ---- Service Edges page ----
async function showEdges(name) {
  S.view = "edges";
  S.edgesOf = name;
  const r = await api("GET", "/clusters/" + enc(name));
  if (!r.ok) { $("#view").replaceChildren(el("h1", {}, "Cluster " + name), el("p", {}, errorText(r))); return; }
  const c = r.data;
  S.cluster = c;
  await loadStatus();
  const dis = !isAdmin();
  const addForm = el("form", { id: "edge-form", novalidate: true },
    el("h2", {}, "Add a service edge"),
    row("e-name", "Name", el("input", { id: "e-name", type: "text", "data-field": "edge.name" })),
    row("e-ip", "IP", el("input", { id: "e-ip", type: "text", "data-field": "edge.ip" })),
    row("e-mac", "MAC", el("input", { id: "e-mac", type: "text", "data-field": "edge.mac", placeholder: "auto" }),
        "empty: resolved from the neighbour table"),
    row("e-weight", "Weight", el("input", { id: "e-weight", type: "text", "data-field": "edge.weight", value: "1" })),
    el("div", { class: "form-error field-error", role: "alert" }),
    el("div", { class: "buttons" }, el("button", { type: "submit", id: "edge-add", class: "primary", disabled: dis },
                                       "Add edge")));
  addForm.addEventListener("submit", async ev => {
    ev.preventDefault();
    const e = { name: $("#e-name").value.trim(), ip: $("#e-ip").value.trim() };
    if ($("#e-mac").value.trim()) e.mac = $("#e-mac").value.trim();
    const w = $("#e-weight").value.trim();
    e.weight = /^\d+$/.test(w) ? parseInt(w, 10) : w;
    const r = await api("POST", "/clusters/" + enc(name) + "/edges", e, S.revision);
    if (!r.ok) { showErrors(addForm, r); return; }
    notice("Added edge " + e.name + warningsText(r));
    showEdges(name);
  });
  $("#view").replaceChildren(
    el("p", {}, el("a", { href: "#/clusters" }, "\u2190 Clusters")),
    el("h1", {}, "Service Edges of " + c.name + " ", c.mode === "standalone" ? modeCell(c.mode) : null),
    el("p", { class: "muted", id: "cluster-summary" }, "Cluster IP " + c.cluster_ip + ", " + (c.enabled ? "enabled" : "disabled")
       + (c.mode === "cluster" ? ", CARP vhid " + c.carp.vhid : "")),
    el("table", { id: "edges" }, el("thead", {}, el("tr", {},
      ["Name", "IP", "MAC", "Weight", "Admin state", "State", "Health", "New flows", "Packets", "Bytes", "Actions"]
        .map(h => el("th", {}, h)))), el("tbody")),
    addForm);
  renderEdgesLive();
}

function renderEdgesLive() {
  const c = S.cluster;
  if (!c || !$("#edges")) return;
  const live = liveOf(c.name);
  const dis = !isAdmin();
  $("#edges tbody").replaceChildren(...c.edge.map(e => {
    const le = live ? live.edges.find(x => x.name === e.name) : null;
    const weight = el("input", { type: "text", class: "weight-input", value: String(e.weight), size: 5,
                                 "aria-label": "weight of " + e.name, disabled: dis });
    return el("tr", { "data-edge": e.name },
      el("td", {}, e.name), el("td", {}, e.ip),
      el("td", {}, e.mac || (le && le.mac ? le.mac + " (" + le.mac_source + ")" : "auto")),
      el("td", {}, weight, " ", el("button", { type: "button", class: "set-weight", disabled: dis,
                                              onclick: () => setWeight(e.name, weight.value) }, "Set")),
      el("td", { class: "admin-state" }, stateSpan(e.state)),
      el("td", {}, le ? le.state : "unknown"),
      el("td", { class: "health" }, stateSpan(le ? le.health : "unknown")),
      el("td", {}, le ? String(le.new_flows) : "0"), el("td", {}, le ? String(le.packets) : "0"),
      el("td", {}, le ? String(le.bytes) : "0"),
      el("td", { class: "actions" },
        e.state === "draining"
          ? el("button", { type: "button", class: "undrain", disabled: dis, onclick: () => edgeAction(e.name, "undrain") },
               "Undrain")
          : el("button", { type: "button", class: "drain", disabled: dis, onclick: () => edgeAction(e.name, "drain") },
               "Drain"),
        el("button", { type: "button", class: "remove danger", disabled: dis, onclick: () => removeEdge(e.name) },
           "Remove")));
  }));
}

async function edgeAction(edge, action) {
  const c = S.cluster.name;
  const r = await api("POST", "/clusters/" + enc(c) + "/edges/" + enc(edge) + "/" + action, undefined, S.revision);
  if (!r.ok) notice(errorText(r), true);
  else notice("Edge " + edge + (action === "drain" ? " is draining: it keeps its flows and gets no new ones"
                                                   : " is active again") + warningsText(r));
  showEdges(c);
}

async function setWeight(edge, value) {
  const c = S.cluster.name;
  const w = /^\d+$/.test(value.trim()) ? parseInt(value, 10) : value;
  const r = await api("PUT", "/clusters/" + enc(c) + "/edges/" + enc(edge) + "/weight", { weight: w }, S.revision);
  if (!r.ok) notice(errorText(r), true); else notice("Weight of " + edge + " set to " + w + warningsText(r));
  showEdges(c);
}

async function removeEdge(edge) {
  const c = S.cluster.name;
  if (!await confirmDialog("Remove edge " + edge + " from " + c + "? Its flows move to the other edges.", "Remove"))
    return;
  const r = await api("DELETE", "/clusters/" + enc(c) + "/edges/" + enc(edge), undefined, S.revision);
  if (!r.ok) notice(errorText(r), true); else notice("Removed edge " + edge + warningsText(r));
  showEdges(c);
}

// ---- Overview ----
async function showOverview() {
  S.view = "overview";
  $("#view").replaceChildren(el("h1", {}, "Overview"), el("div", { id: "overview" }));
  await loadStatus();
  renderOverview();
}

function renderOverview() {
  const st = S.status;
  const box = $("#overview");
  if (!st || !box) return;
  const sum = (k) => st.clusters.reduce((a, c) => a + (c[k] || 0), 0);
  const edges = st.clusters.reduce((a, c) => a + c.edges.length, 0);
  box.replaceChildren(
    el("div", { class: "cards" },
      el("div", { class: "card", id: "card-dataplane" }, el("div", { class: "muted" }, "Data plane"),
         el("div", { class: "big " + (st.dataplane_up ? "state-up" : "state-down") }, st.dataplane_up ? "up" : "down")),
      el("div", { class: "card" }, el("div", { class: "muted" }, "Clusters"), el("div", { class: "big" }, st.clusters.length)),
      el("div", { class: "card" }, el("div", { class: "muted" }, "Service edges"), el("div", { class: "big" }, edges)),
      el("div", { class: "card" }, el("div", { class: "muted" }, "Packets"), el("div", { class: "big" }, sum("packets"))),
      el("div", { class: "card" }, el("div", { class: "muted" }, "Bytes"), el("div", { class: "big" }, sum("bytes"))),
      st.flow_table ? el("div", { class: "card", id: "card-flows" }, el("div", { class: "muted" }, "Flow table"),
                         el("div", { class: "big" + (st.flow_table.alarm ? " state-down" : "") },
                            st.flow_table.live + " flows"),
                         el("div", { class: "muted" }, st.flow_table.occupancy_pct + "% of " + st.flow_table.capacity
                            + (st.flow_table.alarm ? " \u2014 alarm" : "")))
                    : null),
    el("h2", {}, "CARP per cluster"),
    el("table", { id: "carp" }, el("thead", {}, el("tr", {}, ["Cluster", "Cluster IP", "Mode", "This appliance",
                                                              "Peer", "Owned by", "Health", "Packets"].map(h => el("th", {}, h)))),
      el("tbody", {}, st.clusters.map(c => el("tr", { "data-name": c.name },
        el("td", {}, el("a", { href: "#/clusters/" + enc(c.name) }, c.name)), el("td", {}, c.cluster_ip),
        el("td", {}, modeCell(c.mode)), el("td", {}, stateSpan(c.carp.local)), el("td", {}, c.carp.peer),
        el("td", {}, c.carp.source), el("td", {}, stateSpan(healthText(c.name))), el("td", {}, String(c.packets)))))));
}

// ---- History ----
async function showHistory() {
  S.view = "history";
  const r = await api("GET", "/history?limit=200");
  const view = $("#view");
  if (!r.ok) { view.replaceChildren(el("h1", {}, "History"), el("p", {}, errorText(r))); return; }
  view.replaceChildren(el("h1", {}, "History"),
    el("table", { id: "history" }, el("thead", {}, el("tr", {}, ["Time", "Revision", "Via", "User", "Change"]
      .map(h => el("th", {}, h)))),
      el("tbody", {}, r.data.map(h => el("tr", {},
        el("td", {}, new Date(h.time * 1000).toLocaleString()), el("td", {}, String(h.revision)), el("td", {}, h.via),
        el("td", {}, h.user), el("td", {}, h.op + " " + JSON.stringify(h.args)))))));
}

// ---- start ----
async function boot() {
  $("#signin-form").addEventListener("submit", signIn);
  $("#signout").addEventListener("click", signOut);
  $("#modal").addEventListener("keydown", ev => { if (ev.key === "Escape") closeDialog(); });
  window.addEventListener("hashchange", route);
  const r = await api("GET", "/session");
  if (r.ok) started(r.data); else showSignIn("");
}
document.addEventListener("DOMContentLoaded", boot);
