"""Who may use the admin page and the HTTP API: the users file, password hashes, tokens, sessions, and the brake on
repeated failed sign-ins.

The users file (default /etc/pydp/http-users) has one line per user or token, ``#`` starts a comment:

    NAME:ROLE:scrypt$N$r$p$SALT$HASH      a user who signs in with a password (SALT, HASH: base64)
    NAME:ROLE:token$SHA256                a token (sent as "Authorization: Bearer TOKEN"); only its SHA-256 is kept

ROLE is ``admin`` (may change the configuration) or ``read-only``. The file must be a regular file owned by root
(or by the user pydp-control runs as) and readable by its owner only (mode 0600 or stricter): any other file is
refused, and then nobody can sign in (the reason is logged and the sign-in answer says so). It is re-read when it
changes (by mtime), so ``pydpctl http-user`` works on a running daemon.

Sessions live in memory (a restart signs everyone out): a random id in a cookie (HttpOnly, SameSite=Strict,
Secure under TLS) and a random CSRF token the page sends back in the X-CSRF-Token header with every change.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import stat
import time
from dataclasses import dataclass

__all__ = ["ROLES", "DEFAULT_USERS_FILE", "UsersFile", "Session", "Sessions", "SignInBrake", "hash_password",
           "verify_password", "new_token", "AuthError"]

ROLES = ("admin", "read-only")
DEFAULT_USERS_FILE = "/etc/pydp/http-users"
SESSION_TTL = 8 * 3600.0          # seconds a session lives without use
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
log = logging.getLogger("pydp.control.http")


class AuthError(ValueError):
    """A users file that cannot be used, or a bad entry."""


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    salt = os.urandom(16)
    h = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${base64.b64encode(salt).decode()}${base64.b64encode(h).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, want = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(base64.b64decode(want)), maxmem=256 << 20)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(want))


def new_token() -> tuple[str, str]:
    """(token to give the user, the entry's hash field)."""
    token = secrets.token_urlsafe(32)
    return token, "token$" + hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Entry:
    name: str
    role: str
    secret: str          # scrypt$... or token$...


def parse(text: str, where: str) -> list[Entry]:
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != 3:
            raise AuthError(f"{where} line {i}: expected NAME:ROLE:HASH")
        name, role, secret = parts
        if not name or not all(ch.isalnum() or ch in "_.-@" for ch in name):
            raise AuthError(f"{where} line {i}: bad name {name!r} (letters, digits, _ . - @)")
        if role not in ROLES:
            raise AuthError(f"{where} line {i}: role must be {' or '.join(ROLES)}, got {role!r}")
        if not (secret.startswith("scrypt$") or secret.startswith("token$")):
            raise AuthError(f"{where} line {i}: the hash must start with scrypt$ or token$")
        out.append(Entry(name, role, secret))
    return out


def check_private(path: str, st: os.stat_result | None = None) -> None:
    """AuthError unless path is a regular file owned by root or by us, with no permissions for group or others."""
    st = st or os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise AuthError(f"{path} is not a regular file")
    if st.st_uid not in (0, os.geteuid()):
        raise AuthError(f"{path} is owned by uid {st.st_uid}, not root: refused")
    if st.st_mode & 0o077:
        raise AuthError(f"{path} has mode {stat.S_IMODE(st.st_mode):04o}: group and others must have no access "
                        f"(chmod 600 {path})")


class UsersFile:
    """The users file, re-read when its mtime or size changes. problem: why nobody can sign in (or None)."""

    def __init__(self, path: str | None):
        self.path = path
        self.entries: list[Entry] = []
        self.problem: str | None = None
        self._key = None

    def _load(self) -> None:
        if not self.path:
            self.entries, self.problem = [], "no users file is configured"
            return
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.entries, self.problem, self._key = [], f"no users file at {self.path} (add a user with " \
                                                         f"'pydpctl http-user add NAME')", None
            return
        except OSError as e:
            self.entries, self.problem, self._key = [], f"cannot read {self.path}: {e.strerror}", None
            return
        key = (st.st_mtime_ns, st.st_size, st.st_mode, st.st_uid, st.st_ino)
        if key == self._key:
            return
        self._key = key
        try:
            check_private(self.path, st)
            with open(self.path, encoding="utf-8") as f:
                self.entries = parse(f.read(), self.path)
            self.problem = None
        except (AuthError, OSError, UnicodeDecodeError) as e:
            self.entries, self.problem = [], str(e)
            log.error("http_users_refused", extra={"fields": {"path": self.path, "error": str(e)}})

    def password(self, name: str, password: str) -> Entry | None:
        self._load()
        for e in self.entries:
            if e.name == name and e.secret.startswith("scrypt$"):
                return e if verify_password(password, e.secret) else None
        # the same work for an unknown name, so timing does not tell which names exist
        verify_password(password, "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        return None

    def user(self, name: str) -> Entry | None:
        """The password user of that name as the file says now (None if removed, or the file is unusable)."""
        self._load()
        return next((e for e in self.entries if e.name == name and e.secret.startswith("scrypt$")), None)

    def token(self, token: str) -> Entry | None:
        self._load()
        digest = "token$" + hashlib.sha256(token.encode()).hexdigest()
        for e in self.entries:
            if e.secret.startswith("token$") and hmac.compare_digest(e.secret, digest):
                return e
        return None


@dataclass
class Session:
    id: str
    user: str
    role: str
    csrf: str
    expires: float


class Sessions:
    def __init__(self, ttl: float = SESSION_TTL):
        self.ttl = ttl
        self._by_id: dict[str, Session] = {}

    def create(self, user: str, role: str) -> Session:
        now = time.monotonic()
        for sid in [k for k, s in self._by_id.items() if s.expires < now]:
            del self._by_id[sid]
        s = Session(secrets.token_urlsafe(32), user, role, secrets.token_urlsafe(24), now + self.ttl)
        self._by_id[s.id] = s
        return s

    def get(self, sid: str | None) -> Session | None:
        s = self._by_id.get(sid or "")
        if s is None:
            return None
        now = time.monotonic()
        if s.expires < now:
            del self._by_id[s.id]
            return None
        s.expires = now + self.ttl
        return s

    def drop(self, sid: str | None) -> None:
        self._by_id.pop(sid or "", None)

    def drop_user(self, user: str) -> None:
        for sid in [k for k, s in self._by_id.items() if s.user == user]:
            del self._by_id[sid]


class SignInBrake:
    """Slows repeated failed sign-ins, per client address and per user name: after FREE failures, each further
    attempt must wait 2**(failures - FREE) seconds (at most MAX_WAIT) after the last failure; a success clears
    the count of that user and address."""

    FREE = 3
    MAX_WAIT = 300.0
    FORGET = 3600.0

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._fails: dict[str, tuple[int, float]] = {}

    def wait(self, keys: list[str]) -> float:
        """Seconds to wait before the next attempt may be tried (0: now)."""
        now = self.clock()
        worst = 0.0
        for k in keys:
            n, last = self._fails.get(k, (0, 0.0))
            if now - last > self.FORGET:
                continue
            if n >= self.FREE:
                worst = max(worst, last + min(2.0 ** (n - self.FREE + 1), self.MAX_WAIT) - now)
        return max(0.0, worst)

    def failed(self, keys: list[str]) -> None:
        now = self.clock()
        for k in keys:
            n, last = self._fails.get(k, (0, 0.0))
            self._fails[k] = (0 if now - last > self.FORGET else n) + 1, now

    def succeeded(self, keys: list[str]) -> None:
        for k in keys:
            self._fails.pop(k, None)


# ---- editing the file (pydpctl http-user) ----

def write_entries(path: str, entries: list[Entry]) -> None:
    """Replaces the users file atomically, mode 0600 (its directory is created 0700)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("# pydp admin page users: NAME:ROLE:HASH (see docs/web.md); edit with 'pydpctl http-user'\n")
            for e in entries:
                f.write(f"{e.name}:{e.role}:{e.secret}\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_entries(path: str) -> list[Entry]:
    try:
        check_private(path)
        with open(path, encoding="utf-8") as f:
            return parse(f.read(), path)
    except FileNotFoundError:
        return []


def set_entry(path: str, name: str, role: str, secret: str) -> None:
    entries = [e for e in read_entries(path) if e.name != name]
    new = Entry(name, role, secret)
    parse(f"{new.name}:{new.role}:{new.secret}", "the new entry")       # same rules as reading
    write_entries(path, entries + [new])


def remove_entry(path: str, name: str) -> bool:
    entries = read_entries(path)
    kept = [e for e in entries if e.name != name]
    if len(kept) == len(entries):
        return False
    write_entries(path, kept)
    return True
