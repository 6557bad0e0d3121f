"""The HTTP listeners (docs/behaviour.md §10, §11): aiohttp's web server on our own event
loop, served with ``loop.create_server`` so TLS uses the same live ``SSLContext`` and
handshake timeout as the mail listeners (a certificate renewed by ACME reaches new HTTPS
connections at once).

Roles, one per listener:
- ``https``: client auto-configuration (Thunderbird, Outlook, Apple), the MTA-STS policy
  for ``mta-sts.<hosted domain>``, ``/metrics`` when a bearer token is configured, and
  the users' self-service pages under ``/account`` (``account.py``).
- ``http``: auto-configuration (Thunderbird asks over plain HTTP first), ACME HTTP-01
  challenges (RFC 8555 §8.3); every other request is redirected to https.
- ``metrics``: ``/metrics`` in the Prometheus text format.

Invariants:
- Paths are matched case-insensitively through one explicit table per role.
- Only hosted domains get an answer; for those, the answer never depends on whether the
  local part exists (no enumeration). Everything else is 404 with the same text.
- Request bodies are read up to a cap; a bigger or malformed body is 400. A handler's
  unexpected error is logged and answered 500 without details.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import metrics
from ..config import ListenerSettings, acme_methods
from ..services import Services
from ..tls import sign_profile
from . import clientconfig as cc
from .tlsalpn import AlpnRouter

log = logging.getLogger("mailstack.web")

Handler = Callable[["WebFrontEnd", web.Request], Awaitable[web.StreamResponse]]

THUNDERBIRD_PATHS = ("/.well-known/autoconfig/mail/config-v1.1.xml",
                     "/mail/config-v1.1.xml")
AUTODISCOVER_PATH = "/autodiscover/autodiscover.xml"
MTA_STS_PATH = "/.well-known/mta-sts.txt"
ACME_PREFIX = "/.well-known/acme-challenge/"
NOT_FOUND = "not found\n"
KEEPALIVE = 15.0  # seconds an idle keep-alive connection stays open
BODY_TIMEOUT = 30.0  # seconds a request body may take to arrive


def _host(request: web.Request) -> str:
    """The request's host name without port, lower case, no trailing dot."""
    host = (request.host or "").strip().lower()
    if host.startswith("["):  # IPv6 literal
        return host.partition("]")[0] + "]"
    if host.count(":") == 1:
        host = host.rpartition(":")[0]
    return host.rstrip(".")


async def _read_capped(request: web.Request, cap: int) -> bytes | None:
    """The request body, or None if it is longer than ``cap`` (the rest is not read)."""
    if (request.content_length or 0) > cap:
        return None
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(cap + 1 - size)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        size += len(chunk)
        if size > cap:
            return None


def _not_found() -> web.Response:
    return web.Response(status=404, text=NOT_FOUND)


def _bad_request(why: str) -> web.Response:
    return web.Response(status=400, text=f"bad request: {why}\n")


class WebFrontEnd:
    def __init__(self, services: Services, name: str, role: str,
                 listener: ListenerSettings) -> None:
        if role not in ("https", "http", "metrics"):
            raise ValueError(f"unknown web role {role!r}")
        self.services = services
        self.name = name
        self.role = role
        self.listener = listener
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._unregister: list[Callable[[], None]] = []
        self._blob_size: float | None = None
        self._blob_size_at = float("-inf")
        self._blob_lock = asyncio.Lock()
        self.routes = self._routes()
        self.account: Any = None
        if role == "https":  # users' self-service pages (web/account.py)
            from .account import AccountSite

            self.account = AccountSite(services)

    # --- routing --------------------------------------------------------------------
    def _routes(self) -> dict[str, Handler]:
        """Lower-case path -> handler, for this listener's role."""
        routes: dict[str, Handler] = {}
        if self.role in ("https", "http"):
            for p in THUNDERBIRD_PATHS:
                routes[p] = WebFrontEnd.thunderbird
            routes[AUTODISCOVER_PATH] = WebFrontEnd.autodiscover
        if self.role == "https":
            routes["/mobileconfig"] = WebFrontEnd.apple_profile
            routes[MTA_STS_PATH] = WebFrontEnd.mta_sts
            if self.services.settings.web.metrics_token:
                routes["/metrics"] = WebFrontEnd.metrics
        if self.role == "metrics":
            routes["/metrics"] = WebFrontEnd.metrics
        return routes

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.lower()
        handler = self.routes.get(path)
        try:
            if handler is not None:
                return await handler(self, request)
            if self.account is not None and (path == "/account"
                                             or path.startswith("/account/")):
                return await self.account.dispatch(request)
            if self.role == "http" and path.startswith(ACME_PREFIX):
                return self.acme_challenge(request)
            if self.role == "http":
                return self.redirect_to_https(request)
            return _not_found()
        except web.HTTPException:
            raise
        except Exception:
            log.exception("%s: %s %s failed", self.name, request.method, request.path)
            return web.Response(status=500, text="internal error\n")

    # --- hosted domains ---------------------------------------------------------------
    async def hosted(self, domain: str) -> bool:
        return await self.services.store.get_domain(domain) is not None

    def config(self) -> cc.ClientConfig:
        return cc.client_config(self.services.settings, self.services.bound_ports)

    async def _domain_of(self, request: web.Request, address: str | None
                         ) -> tuple[str | None, str | None]:
        """``(address, domain)`` if the request names a hosted domain (by the address,
        else by an ``autoconfig.``/``autodiscover.`` host name), else ``(None, None)``;
        a malformed address raises ``BadRequest``."""
        if address:
            _, domain = cc.split_address(address)
        else:
            host = _host(request)
            domain = next((host.partition(".")[2] for prefix in ("autoconfig.",
                           "autodiscover.") if host.startswith(prefix)), "")
            if not domain:
                return None, None
        if not await self.hosted(domain):
            return None, None
        return address, domain

    # --- handlers ---------------------------------------------------------------------
    async def thunderbird(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, text="use GET\n")
        try:
            _, domain = await self._domain_of(request, request.query.get("emailaddress"))
        except cc.BadRequest as exc:
            return _bad_request(str(exc))
        if domain is None:
            return _not_found()
        return web.Response(body=cc.thunderbird_xml(domain, self.config()),
                            content_type="application/xml", charset="utf-8")

    async def autodiscover(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return web.Response(status=405, text="use POST\n")
        try:
            body = await asyncio.wait_for(_read_capped(request, cc.MAX_REQUEST_XML),
                                          BODY_TIMEOUT)
        except TimeoutError:
            return web.Response(status=408, text="request body too slow\n")
        if body is None:
            return _bad_request("request too large")
        try:
            address, domain = await self._domain_of(request, cc.parse_autodiscover_request(body))
        except cc.BadRequest as exc:
            return _bad_request(str(exc))
        if domain is None or address is None:
            return _not_found()
        return web.Response(body=cc.autodiscover_xml(address, self.config()),
                            content_type="application/xml", charset="utf-8")

    async def apple_profile(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, text="use GET\n")
        raw = request.query.get("address") or request.query.get("emailaddress") or ""
        try:
            address, domain = await self._domain_of(request, raw or None)
            if domain is None or address is None:
                return _not_found()
            body = cc.mobileconfig(address.strip(), self.config())
        except cc.BadRequest as exc:
            return _bad_request(str(exc))
        s = self.services.settings
        if s.web.mobileconfig_sign:
            body = await asyncio.to_thread(sign_profile, body, s.cert_path, s.key_path)
        filename = "".join(c if c.isalnum() or c in "._-" else "_" for c in domain)
        return web.Response(body=body, content_type="application/x-apple-aspen-config",
                            headers={"Content-Disposition":
                                     f'attachment; filename="mail-{filename}.mobileconfig"'})

    async def mta_sts(self, request: web.Request) -> web.StreamResponse:
        """RFC 8461 §3.3: served only as https://mta-sts.<domain>/.well-known/mta-sts.txt."""
        host = _host(request)
        if not host.startswith("mta-sts.") or not await self.hosted(host[len("mta-sts."):]):
            return _not_found()
        return web.Response(body=cc.mta_sts_policy(self.services.settings),
                            content_type="text/plain", charset="utf-8")

    def acme_challenge(self, request: web.Request) -> web.StreamResponse:
        token = request.path[len(ACME_PREFIX):]  # tokens are case-sensitive
        answer = self.services.acme_challenges.get(token)
        if answer is None:
            return _not_found()
        return web.Response(text=answer, content_type="application/octet-stream")

    def redirect_to_https(self, request: web.Request) -> web.StreamResponse:
        s = self.services.settings
        ls = s.listeners.https
        if not ls.enabled:
            return _not_found()
        port = ls.port or self.services.bound_ports.get("https", 443)
        host = _host(request) or s.server.hostname
        if any(c in host for c in "/\\@?#"):  # never build an open redirect
            host = s.server.hostname
        netloc = host if port == 443 else f"{host}:{port}"
        raise web.HTTPPermanentRedirect(f"https://{netloc}{request.rel_url}")

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        token = self.services.settings.web.metrics_token
        if token:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return web.Response(status=401, text="bearer token required\n",
                                    headers={"WWW-Authenticate": "Bearer"})
        await self._refresh_blob_size()
        body = await asyncio.to_thread(generate_latest, metrics.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _refresh_blob_size(self) -> None:
        """Walk the blob directory in a thread when the cached size is older than
        ``web.metrics_blob_size_interval_seconds``."""
        interval = self.services.settings.web.metrics_blob_size_interval_seconds
        async with self._blob_lock:
            now = asyncio.get_running_loop().time()
            if now - self._blob_size_at < interval and self._blob_size is not None:
                return
            root = self.services.store.blobs.root
            self._blob_size = await asyncio.to_thread(_tree_size, root)
            self._blob_size_at = now

    # --- life cycle -----------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(client_max_size=cc.MAX_REQUEST_XML)

        async def handle(request: web.Request) -> web.StreamResponse:
            return await self.dispatch(request)

        app.router.add_route("*", "/{tail:.*}", handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0, keepalive_timeout=KEEPALIVE,
                                     max_line_size=8190, max_field_size=8190, max_headers=64)
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        implicit = self.listener.tls == "implicit"
        ctx = self.services.server_ssl if implicit else None
        if implicit and ctx is None:
            raise RuntimeError(f"listener {self.name} needs a TLS certificate")
        timeout = self.services.settings.server.tls_handshake_timeout_seconds
        server = self._runner.server
        assert server is not None
        factory: Callable[[], asyncio.BaseProtocol] = server
        s = self.services.settings
        if ctx is not None and self.role == "https" and s.tls.acme \
                and "tls-alpn-01" in acme_methods(s):
            # ACME TLS-ALPN-01 (RFC 8737): TLS is started per connection (tlsalpn.py)
            factory = partial(AlpnRouter, server, ctx, self.services.acme_alpn, timeout)
            ctx = None
        self._server = await loop.create_server(
            factory, **self.services.bind_args(self.name, self.listener.address,
                                               self.listener.port), ssl=ctx,
            ssl_handshake_timeout=timeout if ctx is not None else None)
        self.port = int(self._server.sockets[0].getsockname()[1])
        if self.role == "metrics":
            self._tasks.append(asyncio.create_task(metrics.watch_loop_lag()))
            self._unregister.append(metrics.register_gauge(
                "mailstack_blob_store_bytes", "Octets of message files in the blob store "
                "(recomputed at most every web.metrics_blob_size_interval_seconds).",
                lambda: self._blob_size))

    async def close(self, grace: float = 0.0) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for remove in self._unregister:
            remove()
        self._unregister.clear()
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(dirpath, f)).st_size
    return total


def build(services: Services, name: str, role: str, listener: ListenerSettings
          ) -> WebFrontEnd:
    return WebFrontEnd(services, name, role, listener)
