"""The admin page and its versioned JSON API (/api/v1/), served by pydp-control on its own asyncio loop.

    app = make_app(backend, users_file="/etc/pydp/http-users")      # an aiohttp Application, nothing running
    server = await start(backend, "127.0.0.1", 8470, users_file=..., tls_cert=None, tls_key=None)
    ...
    await server.close()

backend: see control.http.backend (op dispatch through control.ops, status, stats, flows, flush). The app has no
event loop, thread or signal handler of its own. docs/web.md describes the page and the API; openapi.document() is
the OpenAPI description of exactly the routes make_app() serves (a test holds the two together).
"""

from __future__ import annotations

import ipaddress
import os
import logging
import ssl
from dataclasses import dataclass

from aiohttp import web

from control.http.api import make_app, ROUTES
from control.http.auth import DEFAULT_USERS_FILE

__all__ = ["make_app", "start", "HttpServer", "parse_listen", "settings", "Settings", "DEFAULT_LISTEN", "DEFAULT_USERS_FILE",
           "CONTROL_CONFIG", "ROUTES"]

DEFAULT_LISTEN = "127.0.0.1:8470"
log = logging.getLogger("pydp.control.http")


def parse_listen(text: str | None) -> tuple[str, int] | None:
    """"HOST:PORT" (IPv6 as [ADDR]:PORT) -> (host, port); "" or None -> None (HTTP disabled); "fd:N" -> ("fd", N):
    a listening TCP socket inherited as file descriptor N (pydp-lab binds it on the host's loopback and starts
    pydp-control in a namespace with it). ValueError if bad."""
    if text is None or text.strip() == "":
        return None
    text = text.strip()
    if text.startswith("fd:"):
        if not text[3:].isdigit():
            raise ValueError(f"{text!r}: expected fd:N (an inherited listening socket)")
        return "fd", int(text[3:])
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r}: expected [IPV6]:PORT")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r}: expected HOST:PORT (e.g. {DEFAULT_LISTEN})")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"{text!r}: the host must be an IP address (or localhost), got {host!r}") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port must be 1..65535, got {port!r}")
    return host, int(port)


def ssl_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


@dataclass
class HttpServer:
    runner: web.AppRunner
    site: web.TCPSite
    url: str

    async def close(self) -> None:
        await self.runner.cleanup()


async def start(backend, host: str, port: int, *, users_file: str | None = DEFAULT_USERS_FILE,
                tls_cert: str | None = None, tls_key: str | None = None) -> HttpServer:
    """Serves the app on host:port on the running loop (TLS when tls_cert and tls_key are given). OSError if the
    address cannot be bound; ValueError for a certificate that cannot be loaded."""
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("TLS needs both a certificate and a key (http_tls_cert, http_tls_key)")
    ctx = None
    if tls_cert:
        try:
            ctx = ssl_context(tls_cert, tls_key)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"cannot load the TLS certificate {tls_cert} / key {tls_key}: {e}") from None
    app = make_app(backend, users_file=users_file, tls=ctx is not None)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    if host == "fd":
        import socket
        try:
            sock = socket.socket(fileno=port)
        except OSError as e:
            await runner.cleanup()
            raise OSError(f"fd {port} is not an inherited listening socket: {e.strerror or e}") from None
        host, port = sock.getsockname()[:2]
        site = web.SockSite(runner, sock, ssl_context=ctx)
    else:
        site = web.TCPSite(runner, host, port, ssl_context=ctx, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = port
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        bound = server.sockets[0].getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return HttpServer(runner, site, f"{'https' if ctx else 'http'}://{shown}:{bound}/")


CONTROL_CONFIG = "/etc/pydp/control.toml"


@dataclass
class Settings:
    listen: tuple[str, int] | None          # None: HTTP disabled
    users: str
    tls_cert: str | None
    tls_key: str | None
    explicit: bool = False                  # the address was given (command line or config), not the default


def settings(*, listen: str | None = None, users: str | None = None, tls_cert: str | None = None,
             tls_key: str | None = None, config_path: str | None = CONTROL_CONFIG) -> Settings:
    """pydp-control's HTTP settings: the command line's values (None: not given) over the [http] table of its
    config file (listen, users, tls_cert, tls_key; a missing file is no error) over the defaults
    (127.0.0.1:8470, /etc/pydp/http-users, no TLS). ValueError naming the bad key."""
    import tomllib
    table: dict = {}
    if config_path and os.path.exists(config_path):
        try:
            with open(config_path, "rb") as f:
                doc = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ValueError(f"{config_path}: {e}") from None
        unknown = set(doc) - {"http"}
        if unknown:
            raise ValueError(f"{config_path}: unknown table or key {sorted(unknown)[0]!r} (known: [http])")
        table = doc.get("http", {})
        if not isinstance(table, dict):
            raise ValueError(f"{config_path}: http must be a table ([http])")
        for k, v in table.items():
            if k not in ("listen", "users", "tls_cert", "tls_key"):
                raise ValueError(f"{config_path}: http.{k}: unknown key (known: listen, users, tls_cert, tls_key)")
            if not isinstance(v, str):
                raise ValueError(f"{config_path}: http.{k}: must be a string")
    where = "--http" if listen is not None else f"{config_path}: http.listen"
    text = listen if listen is not None else table.get("listen", DEFAULT_LISTEN)
    try:
        addr = parse_listen(text)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    cert = tls_cert if tls_cert is not None else table.get("tls_cert") or None
    key = tls_key if tls_key is not None else table.get("tls_key") or None
    if bool(cert) != bool(key):
        raise ValueError("TLS needs both a certificate and a key (--http-cert and --http-key, or http.tls_cert and "
                         "http.tls_key)")
    return Settings(addr, users if users is not None else table.get("users", DEFAULT_USERS_FILE), cert, key,
                    explicit=listen is not None or "listen" in table)
