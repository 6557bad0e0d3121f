"""Helpers for the self-service page tests: a user with grants, and a small HTTP
"browser" (aiohttp with a cookie jar) that reads CSRF tokens from the forms."""

from __future__ import annotations

import html
import re
import ssl
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from mailstack.app import App

CSRF = re.compile(r'name="csrf" value="([^"]*)"')
SECRET = re.compile(r'data-secret="([A-Z2-7]+)"')
CODES = re.compile(r"<li><code>([a-z0-9-]{14})</code></li>")
APP_PASSWORD = re.compile(r'id="new-app-password">([a-z-]+)<')


async def add_user(app: App, login: str, password: str, grants: dict[str, str]) -> int:
    """A user with ``grants`` (address -> comma list of permissions)."""
    assert app.store is not None and app.services is not None
    user_id = await app.store.add_user(login, await app.services.passwords.hash(password))
    for address, perms in grants.items():
        addr = await app.store.get_address(address)
        assert addr is not None
        await app.store.grant(user_id, addr.id, perms.split(","))
    return user_id


@dataclass
class Page:
    status: int
    text: str
    headers: Any
    url: str

    @property
    def csrf(self) -> str:
        m = CSRF.search(self.text)
        assert m, f"no csrf token on {self.url}"
        return html.unescape(m.group(1))

    def has(self, fragment: str) -> bool:
        return fragment in html.unescape(self.text)


@dataclass
class Browser:
    base: str
    ssl_ctx: ssl.SSLContext
    local_ip: str | None = None  # e.g. 127.0.1.5: another client network (/24)
    session: aiohttp.ClientSession = field(init=False)

    async def __aenter__(self) -> Browser:
        local = (self.local_ip, 0) if self.local_ip else None
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl_ctx, local_addr=local),
            cookie_jar=aiohttp.CookieJar(unsafe=True))  # cookies for 127.0.0.1
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def get(self, path: str, **kw: Any) -> Page:
        async with self.session.get(self.base + path, **kw) as r:
            return Page(r.status, await r.text(), r.headers, str(r.url))

    async def post(self, path: str, data: dict[str, str], *, csrf: str | None = "auto",
                   allow_redirects: bool = True) -> Page:
        """POST a form; ``csrf="auto"`` reads the token from a GET of ``path`` (or the
        sign-in page), None sends no token."""
        body = dict(data)
        if csrf == "auto":
            body["csrf"] = (await self.get(path)).csrf
        elif csrf is not None:
            body["csrf"] = csrf
        async with self.session.post(self.base + path, data=body,
                                     allow_redirects=allow_redirects) as r:
            return Page(r.status, await r.text(), r.headers, str(r.url))

    async def sign_in(self, login: str, password: str) -> Page:
        return await self.post("/account/signin", {"login": login, "password": password})

    def cookie(self, name: str) -> str | None:
        for c in self.session.cookie_jar:
            if c.key == name:
                return c.value
        return None


def browser(app: App, client_ssl: ssl.SSLContext, local_ip: str | None = None) -> Browser:
    return Browser(f"https://127.0.0.1:{app.ports['https']}", client_ssl, local_ip)
