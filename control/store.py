"""The configuration of record: clusters, their edges and the appliance sections, in an SQLite file.

    store = Store("/var/lib/pydp/pydp.db")           # creates or migrates the file
    store.add_cluster({"name": "web", "cluster_ip": "198.51.100.10",
                       "edge": [{"name": "e1", "ip": "198.51.100.21"}, {"name": "e2", "ip": "198.51.100.22"}]})
    store.set_edge_state("web", "e1", "draining")
    text = store.export_text()                        # the pydp-dataplane TOML format (docs/config.md)

Clusters go in and come out as plain dicts (msgpack-able) shaped like one ``[[cluster]]`` of
``pydp.config.to_dict()``: name, cluster_ip, enabled, mode, dsr, ipsec_local_termination, maglev_size, carp{...},
health{...}, edge[{name, ip, mac, weight, state}]. CARP passphrases are stored (CARP needs them) but never given
out unless include_secrets: ``carp.passphrase`` is then left out and ``carp.passphrase_set`` says whether one is
set.

Every change is one transaction: BEGIN IMMEDIATE (one writer at a time; others wait up to the busy timeout), read
the whole configuration, apply the change to it in memory, validate all of it with pydp.config's rules (each
cluster, and across clusters: unique names, cluster IPs and CARP vhids), write it, bump the revision, COMMIT. Any
error rolls back: nothing changes, and StoreError says which field broke which rule. A change that changes nothing
commits nothing and keeps the revision.

Every committed change also writes a row of the ``history`` table in the same transaction: when, the revision it
made, the operation and its arguments (secrets as '***'), the interface it came through and the user. Callers say
those with ``with store.recording(op=..., args=..., via=..., user=..., expect_revision=N):`` (control.ops does);
a change method called without it is recorded as via "store". expect_revision: if the store's revision is not N
when the change runs, Conflict and nothing changes (the HTTP API's If-Match). history() reads them back.

The schema is versioned in the ``meta`` table; MIGRATIONS lists the steps from an empty file to the current
layout. Opening an older store applies the missing steps in one transaction; a store written by a newer pydp is
refused.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import os
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from pydp import config

__all__ = [
    "Store", "StoreError", "NotFound", "Conflict", "DEFAULT_PATH", "SCHEMA_VERSION", "MIGRATIONS", "MUTATING", "READ_ONLY",
]

DEFAULT_PATH = "/var/lib/pydp/pydp.db"
DEFAULT_TIMEOUT = 5.0           # seconds a change waits for another process's change (SQLite busy timeout)
SOURCE = "<store>"

# Each step: (what it does, SQL statements or a callable taking the connection). Step i takes a store from schema
# version i to i + 1. Append new steps; never edit a released one.
MIGRATIONS: list[tuple[str, tuple[str, ...] | Callable[[sqlite3.Connection], None]]] = [
    ("clusters, edges and the appliance sections", (
        """CREATE TABLE appliance (
               id        INTEGER PRIMARY KEY CHECK (id = 1),
               dataplane TEXT NOT NULL,                    -- JSON: the [dataplane] table
               ports     TEXT NOT NULL                     -- JSON: the [[port]] array
           )""",
        """CREATE TABLE clusters (
               id                      INTEGER PRIMARY KEY,
               position                INTEGER NOT NULL,   -- order in the exported file
               name                    TEXT NOT NULL UNIQUE,
               cluster_ip              TEXT NOT NULL UNIQUE,
               enabled                 INTEGER NOT NULL,
               mode                    TEXT NOT NULL,
               dsr                     TEXT NOT NULL,
               ipsec_local_termination INTEGER NOT NULL,
               maglev_size             INTEGER,
               carp                    TEXT NOT NULL,      -- JSON: [cluster.carp], passphrase included
               health                  TEXT NOT NULL       -- JSON: [cluster.health]
           )""",
        """CREATE TABLE edges (
               id         INTEGER PRIMARY KEY,
               cluster_id INTEGER NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
               position   INTEGER NOT NULL,
               name       TEXT NOT NULL,
               ip         TEXT NOT NULL,
               mac        TEXT NOT NULL,                   -- '' = resolved from the neighbour table
               weight     INTEGER NOT NULL,
               state      TEXT NOT NULL,
               UNIQUE (cluster_id, name),
               UNIQUE (cluster_id, ip)
           )""",
        "CREATE INDEX edges_by_cluster ON edges (cluster_id, position)",
    )),
    ("the [sync] section (flow sync)", (
        "ALTER TABLE appliance ADD COLUMN sync TEXT NOT NULL DEFAULT '{}'",   # JSON: the [sync] table ({} = defaults)
    )),
    ("drain_timeout of clusters, and when each draining edge started draining", lambda c: _migrate_drain(c)),
    ("the history of changes (when, what, through which interface, by whom)", (
        """CREATE TABLE history (
               id       INTEGER PRIMARY KEY,
               time     REAL NOT NULL,                     -- Unix time of the commit
               revision INTEGER NOT NULL,                  -- the revision the change made
               op       TEXT NOT NULL,                     -- the operation (control.ops), e.g. 'add_edge'
               args     TEXT NOT NULL,                     -- JSON: its arguments, secrets replaced by '***'
               via      TEXT NOT NULL,                     -- cli (store file), rpc, http, store (direct)
               user     TEXT NOT NULL
           )""",
        "CREATE INDEX history_by_revision ON history (revision)",
    )),
    ("failover of clusters (carp or bgp) and the [bgp] section", (
        "ALTER TABLE clusters ADD COLUMN failover TEXT NOT NULL DEFAULT 'carp'",
        "ALTER TABLE appliance ADD COLUMN bgp TEXT NOT NULL DEFAULT '{}'",   # JSON: the [bgp] table ({} = none)
    )),
]
SCHEMA_VERSION = len(MIGRATIONS)

MUTATING = frozenset({
    "add_cluster", "edit_cluster", "delete_cluster", "duplicate_cluster", "set_cluster_enabled",
    "add_edge", "edit_edge", "remove_edge", "set_edge_state", "import_text", "set_bgp", "remove_bgp",
})
READ_ONLY = frozenset({"list_clusters", "get_cluster", "export_text", "revision", "drain_times", "history",
                       "get_bgp"})
HISTORY_KEEP = 10000            # history rows kept (the oldest go first)
SECRET_KEYS = frozenset({"passphrase", "key", "secret", "password", "token", "sync_key"})


class StoreError(ValueError):
    """A refused change or an unusable store. str(): one line naming the field and the rule; errors: every problem
    found (a change can break several rules at once)."""

    def __init__(self, message: str, errors: list[str] | None = None):
        super().__init__(message)
        self.errors = list(errors) if errors else [message]


class NotFound(StoreError):
    """No cluster (or edge) of that name."""


class Conflict(StoreError):
    """The change was made against a revision that is no longer the store's: nothing changed."""


def redact(value: Any) -> Any:
    """value with every secret (a key of SECRET_KEYS holding a non-empty value) replaced by '***'."""
    if isinstance(value, dict):
        return {k: ("***" if k in SECRET_KEYS and v not in ("", None) else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def default_user() -> str:
    """Who runs this process: the sudo user if any, else the login name of the effective uid."""
    sudo = os.environ.get("SUDO_USER")
    if sudo:
        return sudo
    try:
        import pwd
        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return f"uid {os.geteuid()}"


def _recorded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A change method: unless a caller already described the change (Store.recording, as control.ops does), it
    is recorded in the history as op=the method's name, via='store', user=default_user()."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(self: "Store", *args: Any, **kwargs: Any) -> Any:
        if getattr(self._tls, "change", None) is not None:
            return fn(self, *args, **kwargs)
        try:
            bound = signature.bind(self, *args, **kwargs)
            given = {k: v for k, v in bound.arguments.items() if k != "self"}
        except TypeError:
            given = {}
        if fn.__name__ == "import_text" and isinstance(given.get("text"), str):
            given["text"] = f"<{len(given['text'])} characters>"
        with self.recording(op=fn.__name__, args=given, via="store", user=default_user()):
            return fn(self, *args, **kwargs)
    return wrapper


def _migrate_drain(c: sqlite3.Connection) -> None:
    """Schema step 3: clusters.drain_timeout (0 = wait for the flows to end), and the drain_started table. Edges
    already draining start their clock at the migration (their real start was not recorded)."""
    c.execute("ALTER TABLE clusters ADD COLUMN drain_timeout REAL NOT NULL DEFAULT 0")
    c.execute("""CREATE TABLE drain_started (
                     cluster TEXT NOT NULL,
                     edge    TEXT NOT NULL,
                     since   REAL NOT NULL,                -- Unix time the edge's state became 'draining'
                     PRIMARY KEY (cluster, edge)
                 )""")
    c.execute("INSERT INTO drain_started (cluster, edge, since) SELECT clusters.name, edges.name, ? FROM edges "
              "JOIN clusters ON clusters.id = edges.cluster_id WHERE edges.state = 'draining'", (time.time(),))


def _record_drains(c: sqlite3.Connection, doc: dict) -> None:
    """Keeps drain_started in line with the edges' states: an edge that became draining gets the time now, one
    that is no longer draining (or is gone) loses its row. Renaming a draining edge restarts its clock."""
    draining = {(cd["name"], e["name"]) for cd in doc["cluster"] for e in cd["edge"] if e["state"] == "draining"}
    known = {(cl, e) for cl, e in c.execute("SELECT cluster, edge FROM drain_started")}
    c.executemany("DELETE FROM drain_started WHERE cluster = ? AND edge = ?", sorted(known - draining))
    now = time.time()
    c.executemany("INSERT INTO drain_started (cluster, edge, since) VALUES (?, ?, ?)",
                  [(cl, e, now) for cl, e in sorted(draining - known)])


# ---- error messages ----

_REF_RE = re.compile(r"cluster\[(\d+)\](?:\.edge\[(\d+)\])?(?: '[^']*')?(\.)?")


def _humanize(error: str, doc: dict) -> str:
    """A pydp.config key path names clusters and edges by position in the file ("cluster[2].edge[0].ip"); a store
    has no file, so name them ("cluster 'web' edge 'e1' ip"). An edge whose name is not unique is named by its
    position from 1 ("edge #2")."""
    clusters = doc.get("cluster") if isinstance(doc.get("cluster"), list) else []

    def label(m: re.Match[str]) -> str:
        i = int(m[1])
        c = clusters[i] if i < len(clusters) and isinstance(clusters[i], dict) else {}
        name = c.get("name")
        out = f"cluster {name!r}" if isinstance(name, str) and name else f"cluster #{i + 1}"
        if m[2] is not None:
            j = int(m[2])
            edges = c.get("edge") if isinstance(c.get("edge"), list) else []
            e = edges[j] if j < len(edges) and isinstance(edges[j], dict) else {}
            en = e.get("name")
            same = sum(1 for x in edges if isinstance(x, dict) and x.get("name") == en)
            out += f" edge {en!r}" if isinstance(en, str) and en and same == 1 else f" edge #{j + 1}"
        return out + (" " if m[3] else "")

    return _REF_RE.sub(label, error)


def _config_error(e: config.ConfigError, doc: dict | None) -> StoreError:
    errors = [_humanize(x, doc) if doc is not None else f"{e.source}: {x}" for x in e.errors]
    return StoreError("; ".join(errors), errors)


# ---- helpers on the document (the TOML-shaped dict of the whole appliance) ----

def _find(doc: dict, name: Any) -> dict:
    for c in doc["cluster"]:
        if c["name"] == name:
            return c
    raise NotFound(f"cluster {name!r} not found")


def _find_edge(cluster: dict, name: Any) -> dict:
    for e in cluster["edge"]:
        if e["name"] == name:
            return e
    raise NotFound(f"edge {name!r} not found in cluster {cluster['name']!r}")


def _free_vhid(doc: dict, exclude: dict | None = None) -> int:
    """The lowest CARP vhid no other cluster in mode 'cluster' uses."""
    used = {c["carp"].get("vhid") for c in doc["cluster"]
            if c is not exclude and c.get("mode") == "cluster" and c.get("failover", "carp") != "bgp"
            and isinstance(c.get("carp"), dict)}
    return next((v for v in range(1, 256) if v not in used), 1)


def _require_dict(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise StoreError(f"{what}: must be a table of settings (a dict), got {type(value).__name__}")
    return copy.deepcopy(value)


def _clean_carp(cluster: dict) -> None:
    carp = cluster.get("carp")
    if isinstance(carp, dict):
        carp.pop("passphrase_set", None)        # an output-only key: a dict read back out can be written back in


def _check_new_name(doc: dict, name: Any, what: str = "cluster") -> None:
    if isinstance(name, str) and any(c["name"] == name for c in doc["cluster"]):
        raise StoreError(f"name: duplicate {what} name {name!r} (a cluster of that name already exists)")


def _named_clusters(args: dict) -> set:
    """The cluster names a change's arguments mention (for history(cluster=))."""
    names = set()
    for k in ("name", "cluster", "new_name"):
        v = args.get(k)
        if isinstance(v, str):
            names.add(v)
        elif isinstance(v, dict) and isinstance(v.get("name"), str) and k == "cluster":
            names.add(v["name"])
    changes = args.get("changes")
    if isinstance(changes, dict) and isinstance(changes.get("name"), str) and "edge" not in args:
        names.add(changes["name"])
    return names


def _public(cluster: dict, include_secrets: bool) -> dict:
    out = copy.deepcopy(cluster)
    carp = out["carp"]
    carp["passphrase_set"] = bool(carp.get("passphrase") or carp.get("passphrase_file"))
    if not include_secrets:
        carp.pop("passphrase", None)
    return out


class Store:
    """The SQLite configuration store (see the module documentation). Safe to share between threads; any number
    of processes may open the same file."""

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_PATH, *, timeout: float = DEFAULT_TIMEOUT):
        self.path = os.fspath(path)
        self.timeout = timeout
        self._lock = threading.RLock()
        self._tls = threading.local()       # .change: the description of the change under way (recording())
        self._prepare_file()
        try:
            self._conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the store {self.path}: {e}") from None
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    # -- opening --

    def _prepare_file(self) -> None:
        """The directory (0700) and the file (0600: it holds CARP passphrases) are created if missing."""
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            if not os.path.isdir(directory):
                os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the store's directory {directory}: {e.strerror or e}") from None
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
            os.close(fd)
        except FileExistsError:
            pass
        except OSError as e:
            raise StoreError(f"cannot create the store {self.path}: {e.strerror or e}") from None
        if os.path.isdir(self.path):
            raise StoreError(f"cannot open the store {self.path}: it is a directory")

    def _read_version(self) -> int:
        c = self._conn
        if not c.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone():
            return 0
        row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        try:
            return int(row[0]) if row else 0
        except (TypeError, ValueError):
            raise StoreError(f"{self.path}: not a pydp store (schema_version is {row[0]!r})") from None

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: the store has schema version {version}, newer than this pydp "
                             f"understands ({SCHEMA_VERSION}); use the pydp release that wrote it, or a newer one")

    def _migrate(self) -> None:
        with self._lock:
            try:
                version = self._read_version()
            except sqlite3.DatabaseError as e:
                raise self._db_error(e, "open") from None
            self._check_version(version)
            if version == SCHEMA_VERSION:
                return
            with self._transaction(write=True) as c:
                version = self._read_version()      # another process may have migrated it meanwhile
                self._check_version(version)
                if version == 0:
                    foreign = [r[0] for r in c.execute(
                        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
                        "AND name != 'meta'")]
                    if foreign:
                        raise StoreError(f"{self.path}: not a pydp store (it has other tables: "
                                         f"{', '.join(sorted(foreign))})")
                    c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                for number, (what, step) in enumerate(MIGRATIONS[version:], start=version + 1):
                    try:
                        if callable(step):
                            step(c)
                        else:
                            for statement in step:
                                c.execute(statement)
                    except sqlite3.Error as e:
                        raise StoreError(f"{self.path}: migrating the store from schema version {version} to "
                                         f"{SCHEMA_VERSION} failed at step {number} ({what}): {e}; the store was "
                                         "not changed") from None
                c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                          (str(SCHEMA_VERSION),))
                c.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', '0')")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        with self._transaction(write=False):
            return self._read_version()

    # -- transactions --

    def _db_error(self, e: sqlite3.Error, doing: str) -> StoreError:
        text = str(e)
        if "locked" in text or "busy" in text:
            return StoreError(f"the store {self.path} is busy (another change held it for more than "
                              f"{self.timeout:g} s); nothing was changed, try again")
        if isinstance(e, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text):
            return StoreError(f"{self.path}: not a usable pydp store ({text})")
        return StoreError(f"the store {self.path}: cannot {doing}: {text}")

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[sqlite3.Connection]:
        """One SQLite transaction: IMMEDIATE for a change (the write lock is taken at the start, so the data read
        is the data changed), DEFERRED for a read (one consistent snapshot of both tables)."""
        with self._lock:
            c = self._conn
            try:
                c.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as e:
                raise self._db_error(e, "start a transaction") from None
            try:
                yield c
            except BaseException as exc:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._db_error(exc, "change it" if write else "read it") from None
                raise
            try:
                c.execute("COMMIT")
            except sqlite3.Error as e:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise self._db_error(e, "commit") from None

    def _load(self, c: sqlite3.Connection) -> dict:
        """The whole stored configuration as a pydp.config.to_dict()-shaped dict, secrets included."""
        row = c.execute("SELECT dataplane, ports, sync, bgp FROM appliance WHERE id = 1").fetchone()
        defaults = config.to_dict(config.ApplianceConfig())
        if row:
            dataplane, ports, sync = json.loads(row[0]), json.loads(row[1]), json.loads(row[2]) or defaults["sync"]
            bgp = json.loads(row[3])
        else:
            dataplane, ports, sync, bgp = defaults["dataplane"], [], defaults["sync"], {}
        clusters: list[dict] = []
        by_id: dict[int, dict] = {}
        for (cid, name, cluster_ip, enabled, mode, dsr, ipsec, maglev_size, drain_timeout, failover, carp,
             health) in c.execute(
                "SELECT id, name, cluster_ip, enabled, mode, dsr, ipsec_local_termination, maglev_size, "
                "drain_timeout, failover, carp, health FROM clusters ORDER BY position, id"):
            cd: dict[str, Any] = {"name": name, "cluster_ip": cluster_ip, "enabled": bool(enabled), "mode": mode,
                                  "dsr": dsr, "ipsec_local_termination": bool(ipsec)}
            if maglev_size is not None:
                cd["maglev_size"] = maglev_size
            cd["drain_timeout"] = drain_timeout
            cd["failover"] = failover
            cd["carp"] = json.loads(carp)
            cd["health"] = json.loads(health)
            cd["edge"] = []
            by_id[cid] = cd
            clusters.append(cd)
        for (cid, name, ip, mac, weight, state) in c.execute(
                "SELECT cluster_id, name, ip, mac, weight, state FROM edges ORDER BY cluster_id, position, id"):
            by_id[cid]["edge"].append({"name": name, "ip": ip, "mac": mac, "weight": weight, "state": state})
        doc = {"dataplane": dataplane, "port": ports, "cluster": clusters, "sync": sync}
        if bgp:
            doc["bgp"] = bgp
        return doc

    def _save(self, c: sqlite3.Connection, doc: dict) -> None:
        c.execute("INSERT OR REPLACE INTO appliance (id, dataplane, ports, sync, bgp) VALUES (1, ?, ?, ?, ?)",
                  (json.dumps(doc["dataplane"]), json.dumps(doc["port"]), json.dumps(doc.get("sync") or {}),
                   json.dumps(doc.get("bgp") or {})))
        c.execute("DELETE FROM edges")
        c.execute("DELETE FROM clusters")
        for i, cd in enumerate(doc["cluster"]):
            cid = c.execute(
                "INSERT INTO clusters (position, name, cluster_ip, enabled, mode, dsr, ipsec_local_termination, "
                "maglev_size, drain_timeout, failover, carp, health) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (i, cd["name"], cd["cluster_ip"], int(cd["enabled"]), cd["mode"], cd["dsr"],
                 int(cd["ipsec_local_termination"]), cd.get("maglev_size"), cd.get("drain_timeout", 0),
                 cd.get("failover", "carp"), json.dumps(cd["carp"]), json.dumps(cd["health"]))).lastrowid
            c.executemany(
                "INSERT INTO edges (cluster_id, position, name, ip, mac, weight, state) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(cid, j, e["name"], e["ip"], e["mac"], e["weight"], e["state"]) for j, e in enumerate(cd["edge"])])

    def _revision(self, c: sqlite3.Connection) -> int:
        row = c.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _validate(doc: dict, source: str | None = None) -> tuple[config.ApplianceConfig, dict]:
        """(config, normalized document) or StoreError. source: name errors by file position (an import) instead
        of by cluster and edge names."""
        try:
            cfg = config.from_dict(doc, source or SOURCE, require_ports=False)
        except config.ConfigError as e:
            raise _config_error(e, None if source else doc) from None
        return cfg, config.to_dict(cfg, include_secrets=True)

    @contextmanager
    def recording(self, *, op: str, args: dict, via: str, user: str,
                  expect_revision: int | None = None) -> Iterator[dict]:
        """Describes the changes this thread makes inside the block, for the history: op, its args (secrets are
        redacted here), via (the interface: cli, rpc, http, store) and user. expect_revision: the revision the
        change was made against; if the store's revision differs when the change runs, Conflict (nothing
        changes). Yields a dict whose "revision" is set to the store's revision after the change and "changed"
        to whether it changed anything."""
        info = {"op": op, "args": redact(args), "via": via, "user": user, "expect": expect_revision,
                "revision": None, "changed": False}
        previous = getattr(self._tls, "change", None)
        self._tls.change = info
        try:
            yield info
        finally:
            self._tls.change = previous

    def _mutate(self, change: Callable[[dict], Any], source: str | None = None) -> tuple[dict, Any, int]:
        """Runs change(doc) on the whole configuration inside one write transaction, validates the result and
        writes it with its history row. Returns (normalized document, what change returned, revision)."""
        info = getattr(self._tls, "change", None)
        with self._transaction(write=True) as c:
            revision = self._revision(c)
            expect = info.get("expect") if info else None
            if expect is not None and expect != revision:
                raise Conflict(f"revision: the configuration changed since revision {expect} (it is now revision "
                               f"{revision}); reload it and try again; nothing was changed")
            before = self._load(c)
            doc = copy.deepcopy(before)
            result = change(doc)
            _, after = self._validate(doc, source)
            if after != before:
                self._save(c, after)
                _record_drains(c, after)
                c.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'revision'")
                revision = self._revision(c)
                if info is not None:
                    c.execute("INSERT INTO history (time, revision, op, args, via, user) VALUES (?, ?, ?, ?, ?, ?)",
                              (time.time(), revision, info["op"], json.dumps(info["args"], default=str),
                               info["via"], info["user"]))
                    c.execute("DELETE FROM history WHERE id <= (SELECT MAX(id) FROM history) - ?", (HISTORY_KEEP,))
                    info["changed"] = True
            if info is not None:
                info["revision"] = revision
            return after, result, revision

    def _mutate_cluster(self, change: Callable[[dict], Any]) -> dict:
        """A change of one cluster: change(doc) returns that cluster's name (after the change)."""
        after, name, _ = self._mutate(change)
        return _public(_find(after, name), include_secrets=False)

    def _read(self) -> dict:
        with self._transaction(write=False) as c:
            return self._load(c)

    # -- reading --

    def list_clusters(self, include_secrets: bool = False) -> list[dict]:
        """Every cluster, in store order (the order of the exported file)."""
        return [_public(c, include_secrets) for c in self._read()["cluster"]]

    def get_cluster(self, name: str, include_secrets: bool = False) -> dict:
        return _public(_find(self._read(), name), include_secrets)

    def revision(self) -> int:
        """A counter bumped by every committed change (0 for a new store)."""
        with self._transaction(write=False) as c:
            return self._revision(c)

    def history(self, limit: int = 100, cluster: str | None = None) -> list[dict]:
        """The latest changes, newest first: [{"id", "time" (Unix), "revision", "op", "args" (secrets as '***'),
        "via", "user"}]. cluster: only changes whose arguments name that cluster."""
        with self._transaction(write=False) as c:
            rows = c.execute("SELECT id, time, revision, op, args, via, user FROM history ORDER BY id DESC")
            out: list[dict] = []
            for hid, t, rev, op, args, via, user in rows:
                try:
                    a = json.loads(args)
                except ValueError:
                    a = {}
                if cluster is not None and cluster not in _named_clusters(a):
                    continue
                out.append({"id": hid, "time": t, "revision": rev, "op": op, "args": a, "via": via, "user": user})
                if len(out) >= limit:
                    break
            return out

    def drain_times(self) -> list[dict]:
        """When each draining edge started draining: [{"cluster", "edge", "since" (Unix time)}]. Recorded by the
        change that set the state (by whichever writer), so a restarted pydp-control keeps counting a drain
        timeout from the drain's real start."""
        with self._transaction(write=False) as c:
            return [{"cluster": cl, "edge": e, "since": since}
                    for cl, e, since in c.execute("SELECT cluster, edge, since FROM drain_started ORDER BY since")]

    def appliance(self) -> config.ApplianceConfig:
        """The whole configuration as pydp.config objects (validated; passphrase files read). It may have no
        ports: the store accepts clusters before the appliance's ports are set (by import)."""
        return self._validate(self._read())[0]

    def export_text(self, include_secrets: bool = False) -> str:
        """The whole configuration in the pydp-dataplane TOML format (docs/config.md). CARP passphrases are
        written as "" unless include_secrets."""
        return config.dumps(self.appliance(), include_secrets=include_secrets)

    # -- clusters --

    @_recorded
    def add_cluster(self, cluster: dict) -> dict:
        """Adds a cluster (absent keys take pydp.config's defaults). Without carp.vhid, a cluster in mode
        'cluster' gets the lowest vhid no other cluster uses."""
        new = _require_dict(cluster, "cluster")
        _clean_carp(new)

        def change(doc: dict) -> Any:
            _check_new_name(doc, new.get("name"))
            if new.get("mode", "cluster") == "cluster" and new.get("failover", "carp") != "bgp":
                carp = new.setdefault("carp", {})
                if isinstance(carp, dict) and "vhid" not in carp:
                    carp["vhid"] = _free_vhid(doc)
            doc["cluster"].append(new)
            return new.get("name")
        return self._mutate_cluster(change)

    @_recorded
    def edit_cluster(self, name: str, changes: dict) -> dict:
        """Changes some settings of a cluster: each top-level key given replaces the stored value, except carp and
        health whose keys are merged into the stored ones; "name" renames; "edge" replaces the list of edges.
        Setting carp.passphrase drops a carp.passphrase_file and the reverse. Changing health.type while
        health.port is the old type's default port moves it to the new type's default."""
        changes = _require_dict(changes, "changes")
        _clean_carp(changes)

        def change(doc: dict) -> Any:
            cur = _find(doc, name)
            old_mode = cur["mode"]
            old_failover = cur.get("failover", "carp")
            for key, value in changes.items():
                if key == "carp" and isinstance(value, dict):
                    if value.get("passphrase") and "passphrase_file" not in value:
                        cur["carp"]["passphrase_file"] = ""
                    if value.get("passphrase_file") and "passphrase" not in value:
                        cur["carp"]["passphrase"] = ""
                    cur["carp"].update(value)
                elif key == "health" and isinstance(value, dict):
                    h = cur["health"]
                    if "type" in value and "port" not in value and value["type"] != h["type"]:
                        if h["port"] == (443 if h["type"] == "https" else 80):
                            h.pop("port")
                    h.update(value)
                else:
                    if key == "name" and value != name:
                        _check_new_name(doc, value)
                    cur[key] = value
            # A standalone cluster made a production one: give it a free vhid unless one was chosen.
            carp = cur.get("carp")
            vhid_given = isinstance(changes.get("carp"), dict) and "vhid" in changes["carp"]
            to_carp = (old_mode == "standalone" or old_failover == "bgp") and cur.get("mode") == "cluster" \
                and cur.get("failover", "carp") != "bgp"
            if to_carp and isinstance(carp, dict) and not vhid_given:
                taken = any(c is not cur and c["mode"] == "cluster" and c.get("failover", "carp") != "bgp"
                            and c["carp"]["vhid"] == carp.get("vhid") for c in doc["cluster"])
                if taken:
                    carp["vhid"] = _free_vhid(doc, exclude=cur)
            return cur.get("name")
        return self._mutate_cluster(change)

    @_recorded
    def delete_cluster(self, name: str) -> None:
        def change(doc: dict) -> None:
            doc["cluster"].remove(_find(doc, name))
        self._mutate(change)

    @_recorded
    def duplicate_cluster(self, name: str, new_name: str, cluster_ip: str, vhid: int | None = None) -> dict:
        """A copy of a cluster (settings, edges, passphrase) under a new name and cluster IP. Without vhid, the
        copy gets the lowest CARP vhid no other cluster uses."""
        def change(doc: dict) -> Any:
            new = copy.deepcopy(_find(doc, name))
            _check_new_name(doc, new_name)
            new["name"] = new_name
            new["cluster_ip"] = cluster_ip
            if vhid is not None:
                new["carp"]["vhid"] = vhid
            elif new["mode"] == "cluster" and new.get("failover", "carp") != "bgp":
                new["carp"]["vhid"] = _free_vhid(doc)
            doc["cluster"].append(new)
            return new_name
        return self._mutate_cluster(change)

    @_recorded
    def set_cluster_enabled(self, name: str, enabled: bool) -> dict:
        return self.edit_cluster(name, {"enabled": enabled})

    # -- edges --

    @_recorded
    def add_edge(self, cluster: str, edge: dict) -> dict:
        """Adds an edge (absent keys take their defaults); returns the cluster."""
        new = _require_dict(edge, "edge")

        def change(doc: dict) -> Any:
            cur = _find(doc, cluster)
            ename = new.get("name")
            if isinstance(ename, str) and any(e["name"] == ename for e in cur["edge"]):
                raise StoreError(f"cluster {cluster!r} edge name: duplicate edge name {ename!r} (the cluster "
                                 f"already has an edge of that name)")
            cur["edge"].append(new)
            return cur["name"]
        return self._mutate_cluster(change)

    @_recorded
    def edit_edge(self, cluster: str, edge: str, changes: dict) -> dict:
        """Changes some settings of an edge (name, ip, mac, weight, state); returns the cluster."""
        changes = _require_dict(changes, "changes")

        def change(doc: dict) -> Any:
            cur = _find(doc, cluster)
            e = _find_edge(cur, edge)
            new_name = changes.get("name", edge)
            if new_name != edge and any(x["name"] == new_name for x in cur["edge"]):
                raise StoreError(f"cluster {cluster!r} edge name: duplicate edge name {new_name!r} (the cluster "
                                 f"already has an edge of that name)")
            e.update(changes)
            return cur["name"]
        return self._mutate_cluster(change)

    @_recorded
    def remove_edge(self, cluster: str, edge: str) -> dict:
        def change(doc: dict) -> Any:
            cur = _find(doc, cluster)
            cur["edge"].remove(_find_edge(cur, edge))
            return cur["name"]
        return self._mutate_cluster(change)

    @_recorded
    def set_edge_state(self, cluster: str, edge: str, state: str) -> dict:
        """active: gets new flows; draining: keeps its flows, gets no new ones; disabled: no traffic."""
        return self.edit_edge(cluster, edge, {"state": state})

    # -- the [bgp] section --

    def get_bgp(self, include_secrets: bool = False) -> dict:
        """The [bgp] section as a dict ({} when there is none). Peer passwords are left out unless include_secrets;
        each peer's "password_set" says whether one is set."""
        bgp = copy.deepcopy(self._read().get("bgp") or {})
        for p in bgp.get("peer", []):
            p["password_set"] = bool(p.get("password"))
            if not include_secrets:
                p.pop("password", None)
        return bgp

    @_recorded
    def set_bgp(self, bgp: dict) -> dict:
        """Creates or changes the [bgp] section: each key given replaces the stored value ("peer" replaces the
        whole list of peers; a peer given without a password keeps the one stored for the same address).
        Returns the section as get_bgp() does."""
        changes = _require_dict(bgp, "bgp")

        def change(doc: dict) -> None:
            cur = doc.get("bgp") or {}
            if "peer" in changes and isinstance(changes["peer"], list):
                old = {p.get("address"): p for p in cur.get("peer", [])}
                for p in changes["peer"]:
                    if isinstance(p, dict):
                        p.pop("password_set", None)
                        was = old.get(p.get("address"))
                        if "password" not in p and was and was.get("password"):
                            p["password"] = was["password"]
            cur.update(changes)
            doc["bgp"] = cur
        self._mutate(change)
        return self.get_bgp()

    @_recorded
    def remove_bgp(self) -> None:
        """Removes the [bgp] section (refused while a cluster has failover = "bgp")."""
        def change(doc: dict) -> None:
            doc.pop("bgp", None)
        self._mutate(change)

    # -- the whole configuration --

    @_recorded
    def import_text(self, text: str, source: str = "<import>", keep_passphrases: bool = True) -> dict:
        """Replaces the whole configuration (dataplane, ports, clusters) by a file in the pydp-dataplane format.
        All of it is validated before anything changes. keep_passphrases: a cluster imported without a CARP
        passphrase (an export leaves them out) keeps the one stored for the cluster of the same name.
        Returns {"clusters", "ports", "passphrases_kept", "revision"}."""
        if not isinstance(text, str):
            raise StoreError(f"{source}: the configuration must be text, got {type(text).__name__}")
        try:
            cfg = config.loads(text, source, require_ports=False)
        except config.ConfigError as e:
            raise _config_error(e, None) from None
        new = config.to_dict(cfg, include_secrets=True)
        kept = 0

        def change(doc: dict) -> None:
            nonlocal kept
            old_peers = {p["address"]: p for p in (doc.get("bgp") or {}).get("peer", [])}
            for p in (new.get("bgp") or {}).get("peer", []):
                was = old_peers.get(p["address"])
                if keep_passphrases and was and not p["password"] and was.get("password"):
                    p["password"] = was["password"]
                    kept += 1
            old = {c["name"]: c["carp"] for c in doc["cluster"]}
            for c in new["cluster"]:
                carp, was = c["carp"], old.get(c["name"])
                if keep_passphrases and was and not (carp["passphrase"] or carp["passphrase_file"]) and (
                        was.get("passphrase") or was.get("passphrase_file")):
                    carp["passphrase"] = was.get("passphrase", "")
                    carp["passphrase_file"] = was.get("passphrase_file", "")
                    kept += 1
            doc.clear()
            doc.update(new)
        after, _, revision = self._mutate(change, source)
        return {"clusters": len(after["cluster"]), "ports": len(after["port"]), "passphrases_kept": kept,
                "revision": revision}
