"""Users' self-service pages (docs/behaviour.md §2, §10): sign-in with the user's own
password and TOTP two-factor (RFC 6238), emergency codes, the user's password, and the
router for the per-address pages (``account_address.py``). Served only on the https
listener, under ``/account``; server-rendered, no JavaScript, one stylesheet.

Invariants:
- The session cookie (``__Host-`` prefix: Secure, Path=/, no Domain) is HttpOnly and
  SameSite=Strict and holds a random token; the store keeps only its SHA-256, so a
  stolen database does not sign anyone in. Each request re-reads the row: deleting a
  user's rows (password change, two-factor reset) signs it out everywhere at once.
- Sessions end after ``web.session_idle_seconds`` without a request and
  ``web.session_max_seconds`` after sign-in. The token changes when the stage changes
  (password accepted -> code accepted), so a token seen before sign-in is worthless.
- Every POST carries a CSRF token: the session's (``csrf`` field), or before sign-in a
  double-submit value (a cookie and the same value in the form). A POST without it is
  403 and changes nothing; the check comes before anything is read from the form's
  other fields.
- The sign-in goes through the same ``LoginGuard`` as IMAP/SMTP (key ``user:<login>``,
  the client's network): slowed, then refused with a clear temporary error. An unknown
  login costs one Argon2 computation like a wrong password and gets the same answer.
- Every decision about what a user may do with an address is
  ``policy.permissions.allowed`` (in ``account_address.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import segno
from aiohttp import web
from jinja2 import Environment, FileSystemLoader, select_autoescape

from ..notices import UserNotices
from ..policy import totp
from ..policy.auth import client_network
from ..policy.passwords import password_problem
from ..services import Services
from ..store import User, WebSession

log = logging.getLogger("mailstack.web.account")

PREFIX = "/account"
COOKIE = "__Host-mailstack"
PRE_COOKIE = "__Host-mailstack-pre"  # double-submit CSRF value of the sign-in form
SECOND_FACTOR_SECONDS = 300.0  # time to type the code after the password
TOUCH_EVERY = 30.0  # seconds between writes of a session's last_seen
PRUNE_EVERY = 600.0  # seconds between deletions of expired sessions (at a sign-in)
MAX_FORM = 64 * 1024  # as client_max_size in server.py
HERE = Path(__file__).parent
STYLESHEET = (HERE / "static" / "account.css").read_bytes()

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Visit:
    """One signed-in request: the session, its user, the client address."""

    session: WebSession
    user: User
    token: str
    client_ip: str
    new_token: str | None = None  # set when this response must carry a new cookie


Page = Callable[["AccountSite", web.Request, Visit], Awaitable[web.StreamResponse]]


class Forbidden(Exception):
    """A refusal answered 403; nothing was changed."""


class AccountSite:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.store = services.store
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"),
                               autoescape=select_autoescape(default=True),
                               trim_blocks=True, lstrip_blocks=True)
        self.env.filters["when"] = _when
        a = services.settings.auth
        self.env.filters["network"] = (
            lambda ip: client_network(ip, a.ipv4_prefix, a.ipv6_prefix) if ip else "")
        self.env.globals["quote"] = lambda s: quote(s, safe="@")
        self.user_notices = UserNotices(services.notifier)
        self._pruned_at = float("-inf")
        from . import account_address

        self.address_pages = account_address.PAGES
        self.user_pages: dict[str, Page] = {
            "": AccountSite.home,
            "/me/password": AccountSite.my_password,
            "/me/2fa": AccountSite.my_two_factor,
        }

    # --- rendering ------------------------------------------------------------------
    def render(self, name: str, status: int = 200, *, visit: Visit | None = None,
               **values: Any) -> web.Response:
        tpl = self.env.get_template(name)
        values.setdefault("user", visit.user if visit else None)
        values.setdefault("csrf", visit.session.csrf if visit else "")
        html = tpl.render(prefix=PREFIX, hostname=self.services.hostname, **values)
        resp = web.Response(status=status, text=html, content_type="text/html",
                            charset="utf-8", headers=SECURITY_HEADERS)
        if visit is not None and visit.new_token:
            self._set_cookie(resp, visit.new_token)
        return resp

    def refuse(self, visit: Visit | None, why: str, status: int = 403) -> web.Response:
        return self.render("error.html", status, visit=visit, message=why)

    def redirect(self, path: str, visit: Visit | None = None) -> web.Response:
        resp = web.Response(status=303, headers={"Location": PREFIX + path,
                                                 **SECURITY_HEADERS})
        if visit is not None and visit.new_token:
            self._set_cookie(resp, visit.new_token)
        return resp

    def _set_cookie(self, resp: web.StreamResponse, token: str) -> None:
        resp.set_cookie(COOKIE, token, path="/", secure=True, httponly=True,
                        samesite="Strict")

    # --- sessions -------------------------------------------------------------------
    def now(self) -> float:
        return self.services.clock()

    async def _load(self, request: web.Request) -> tuple[WebSession, str] | None:
        token = request.cookies.get(COOKIE, "")
        if not token or len(token) > 100:
            return None
        session = await self.store.get_web_session(token_hash(token))
        if session is None:
            return None
        w = self.services.settings.web
        now = self.now()
        limit = SECOND_FACTOR_SECONDS if session.stage != "in" else w.session_max_seconds
        if now - session.last_seen > w.session_idle_seconds or now - session.created_at > limit:
            await self.store.delete_web_session(session.token_hash)
            return None
        if now - session.last_seen > TOUCH_EVERY:
            await self.store.update_web_session(session.token_hash, last_seen=now)
        return session, token

    async def _new_session(self, user_id: int, stage: str) -> str:
        w = self.services.settings.web
        now = self.now()
        if now - self._pruned_at > PRUNE_EVERY:  # sessions of browsers that never came back
            self._pruned_at = now
            await self.store.prune_web_sessions(now - w.session_idle_seconds,
                                                now - w.session_max_seconds)
        token = secrets.token_urlsafe(32)
        await self.store.create_web_session(token_hash(token), user_id, stage,
                                            secrets.token_urlsafe(24))
        return token

    async def reissue(self, visit: Visit) -> None:
        """After the user's other browsers were signed out (password change, two-factor
        switched): this browser keeps going with a fresh session."""
        token = await self._new_session(visit.user.id, "in")
        session = await self.store.get_web_session(token_hash(token))
        user = await self.store.get_user_by_id(visit.user.id)
        assert session is not None and user is not None
        visit.session, visit.user, visit.token, visit.new_token = session, user, token, token

    @staticmethod
    def client_ip(request: web.Request) -> str:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        return str(peer[0]) if peer else "unknown"

    async def form(self, request: web.Request) -> dict[str, str] | None:
        """The POSTed form fields (the last value of each), or None if it is too big."""
        if (request.content_length or 0) > MAX_FORM:
            return None
        try:
            data = await request.post()
        except (ValueError, web.HTTPException):
            return None
        return {k: v for k, v in data.items() if isinstance(v, str)}

    @staticmethod
    def csrf_ok(expected: str, form: dict[str, str]) -> bool:
        given = form.get("csrf", "")
        return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())

    # --- dispatch -------------------------------------------------------------------
    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        rest = path[len(PREFIX):].rstrip("/") if path != PREFIX else ""
        if rest == "/style.css":
            return web.Response(body=STYLESHEET, content_type="text/css",
                                headers={"Cache-Control": "max-age=3600"})
        if rest == "/signin":
            return await self.signin(request)
        if rest == "/2fa":
            return await self.second_factor(request)
        loaded = await self._load(request)
        if loaded is None or loaded[0].stage != "in":
            if request.method == "POST":
                return self.refuse(None, "You are not signed in (or your session ended).")
            return self.redirect("/signin")
        session, token = loaded
        user = await self.store.get_user_by_id(session.user_id)
        if user is None:
            return self.redirect("/signin")
        visit = Visit(session, user, token, self.client_ip(request))
        form: dict[str, str] = {}
        if request.method == "POST":
            got = await self.form(request)
            if got is None:
                return self.refuse(visit, "The form is too large.", 400)
            if not self.csrf_ok(session.csrf, got):
                return self.refuse(visit, "The form's security token is missing or "
                                   "wrong; reload the page and try again.")
            form = got
        elif request.method not in ("GET", "HEAD"):
            return self.refuse(visit, "Method not allowed.", 405)
        if rest == "/signout":
            if request.method != "POST":
                return self.refuse(visit, "Sign out with the button.", 405)
            return await self.signout(visit, form)
        try:
            page = self.user_pages.get(rest)
            if page is not None:
                return await page(self, request, visit)
            if rest.startswith("/a/"):
                email, _, sub = rest[3:].partition("/")
                handler = self.address_pages.get(sub)
                if handler is not None:
                    return await handler(self, request, visit, email, form)
        except Forbidden as exc:
            return self.refuse(visit, str(exc))
        return self.refuse(visit, "No such page.", 404)

    # --- sign-in --------------------------------------------------------------------
    def _signin_form(self, status: int = 200, message: str = "",
                     login: str = "") -> web.Response:
        pre = secrets.token_urlsafe(24)
        resp = self.render("signin.html", status, csrf=pre, message=message, login=login)
        resp.set_cookie(PRE_COOKIE, pre, path="/", secure=True, httponly=True,
                        samesite="Strict", max_age=3600)
        return resp

    async def signin(self, request: web.Request) -> web.StreamResponse:
        if request.method in ("GET", "HEAD"):
            return self._signin_form()
        if request.method != "POST":
            return self.refuse(None, "Method not allowed.", 405)
        form = await self.form(request)
        if form is None:
            return self.refuse(None, "The form is too large.", 400)
        if not self.csrf_ok(request.cookies.get(PRE_COOKIE, ""), form):
            return self.refuse(None, "The form's security token is missing or wrong; "
                               "reload the page and try again.")
        login = form.get("login", "").strip().lower()
        password = form.get("password", "")
        if not login or len(login) > 320:
            return self._signin_form(400, "Enter your login and password.", login)
        ip = self.client_ip(request)
        a = self.services.settings.auth
        net = client_network(ip, a.ipv4_prefix, a.ipv6_prefix)
        key = f"user:{login}"
        verdict = await self.services.guard.check(net, key)
        if not verdict.allowed:
            await self.store.log_attempt("login_refused", address=login, network=net,
                                         client_ip=ip, protocol="web", detail="throttled")
            when = time.strftime("%H:%M:%S UTC", time.gmtime(verdict.retry_at))
            return self._signin_form(429, f"Too many failed sign-ins; try again after "
                                     f"{when}.", login)
        user = await self.store.get_user(login)
        ok = await self.services.passwords.verify(user.password_hash if user else None,
                                                  password)
        if verdict.delay:
            await asyncio.sleep(verdict.delay)
        if not ok or user is None:
            await self.services.guard.failure(net, key)
            await self.store.log_activity("login_fail", address=login, client_ip=ip,
                                          protocol="web", detail="password")
            return self._signin_form(401, "Wrong login or password.", login)
        if user.two_factor:
            token = await self._new_session(user.id, "second-factor")
            resp = self.redirect("/2fa")
            self._set_cookie(resp, token)
            return resp
        return await self._signed_in(user, ip, net, key, "password")

    async def _signed_in(self, user: User, ip: str, net: str, key: str, how: str
                         ) -> web.StreamResponse:
        await self.services.guard.success(net, key)
        new_net = await self.store.note_user_network(user.id, net)
        await self.store.log_activity("login_ok", address=user.login, client_ip=ip,
                                      protocol="web",
                                      detail=how + ("; new network" if new_net else ""))
        if new_net:
            self.user_notices.signin_from_new_network(user.login, ip)
        token = await self._new_session(user.id, "in")
        resp = self.redirect("")
        self._set_cookie(resp, token)
        return resp

    async def second_factor(self, request: web.Request) -> web.StreamResponse:
        loaded = await self._load(request)
        if loaded is None or loaded[0].stage != "second-factor":
            return self.redirect("/signin")
        session, _token = loaded
        user = await self.store.get_user_by_id(session.user_id)
        if user is None or not user.totp_secret:
            await self.store.delete_web_session(session.token_hash)
            return self.redirect("/signin")
        if request.method in ("GET", "HEAD"):
            return self.render("second_factor.html", csrf=session.csrf)
        if request.method != "POST":
            return self.refuse(None, "Method not allowed.", 405)
        form = await self.form(request)
        if form is None:
            return self.refuse(None, "The form is too large.", 400)
        if not self.csrf_ok(session.csrf, form):
            return self.refuse(None, "The form's security token is missing or wrong; "
                               "reload the page and try again.")
        ip = self.client_ip(request)
        a = self.services.settings.auth
        net = client_network(ip, a.ipv4_prefix, a.ipv6_prefix)
        key = f"user:{user.login}"
        verdict = await self.services.guard.check(net, key)
        if not verdict.allowed:
            when = time.strftime("%H:%M:%S UTC", time.gmtime(verdict.retry_at))
            return self.render("second_factor.html", 429, csrf=session.csrf,
                               message=f"Too many failed attempts; try again after {when}.")
        code = form.get("code", "").strip()
        how = ""
        if totp.looks_like_emergency_code(code):
            if await self.store.use_emergency_code(user.id, totp.hash_emergency_code(code)):
                how = "password + emergency code"
        else:
            step = totp.matching_step(user.totp_secret, code, self.now(), user.totp_last_step)
            if step is not None and await self.store.claim_totp_step(user.id, step):
                how = "password + code"
        if verdict.delay:
            await asyncio.sleep(verdict.delay)
        if not how:
            await self.services.guard.failure(net, key)
            await self.store.log_activity("login_fail", address=user.login, client_ip=ip,
                                          protocol="web", detail="second factor")
            return self.render("second_factor.html", 401, csrf=session.csrf,
                               message="That code is wrong, expired or already used.")
        await self.store.delete_web_session(session.token_hash)  # a new token from here on
        if how == "password + emergency code":
            left = await self.store.emergency_codes_left(user.id)
            await self.store.log_activity("emergency_code_used", address=user.login,
                                          client_ip=ip, protocol="web",
                                          detail=f"{left} left")
            self.user_notices.emergency_code_used(user.login, ip, left)
        return await self._signed_in(user, ip, net, key, how)

    async def signout(self, visit: Visit, form: dict[str, str]) -> web.StreamResponse:
        if form.get("everywhere"):
            await self.store.delete_user_web_sessions(visit.user.id)
        else:
            await self.store.delete_web_session(visit.session.token_hash)
        await self.store.log_activity("logout", address=visit.user.login,
                                      client_ip=visit.client_ip, protocol="web",
                                      detail="everywhere" if form.get("everywhere") else "")
        resp = self.redirect("/signin")
        resp.del_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
        return resp

    # --- the user's own pages -------------------------------------------------------
    async def home(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        from ..policy.permissions import allowed

        grants = await self.store.user_grants(visit.user.id)
        rows = [(g, {a: allowed(g.permissions, a) for a in
                     ("view", "activity", "password", "app-passwords", "autoresponder")})
                for g in grants]
        return self.render("home.html", visit=visit, rows=rows,
                           codes_left=await self.store.emergency_codes_left(visit.user.id))

    async def _check_own_password(self, visit: Visit, password: str) -> str | None:
        """Why the user's current password was not accepted, or None when it was. It
        goes through the login guard: a stolen session cannot guess it faster than the
        sign-in form."""
        a = self.services.settings.auth
        net = client_network(visit.client_ip, a.ipv4_prefix, a.ipv6_prefix)
        key = f"user:{visit.user.login}"
        verdict = await self.services.guard.check(net, key)
        if not verdict.allowed:
            when = time.strftime("%H:%M:%S UTC", time.gmtime(verdict.retry_at))
            return f"too many wrong passwords; try again after {when}"
        ok = await self.services.passwords.verify(visit.user.password_hash, password)
        if verdict.delay:
            await asyncio.sleep(verdict.delay)
        if ok:
            return None
        await self.services.guard.failure(net, key)
        await self.store.log_activity("password_check_fail", address=visit.user.login,
                                      client_ip=visit.client_ip, protocol="web")
        return "your current password is wrong"

    async def my_password(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        unified = None
        if visit.user.unified_address_id is not None:
            addr = await self.store.get_address_by_id(visit.user.unified_address_id)
            unified = addr.email if addr else None
        if request.method != "POST":
            return self.render("my_password.html", visit=visit, unified=unified)
        form = await self.form(request) or {}
        new, repeat = form.get("new", ""), form.get("repeat", "")
        problem = password_problem(new) or ("the two new passwords differ"
                                            if new != repeat else None)
        if problem:
            return self.render("my_password.html", 400, visit=visit, unified=unified,
                               message=f"Not changed: {problem}.")
        refused = await self._check_own_password(visit, form.get("current", ""))
        if refused:
            return self.render("my_password.html", 403, visit=visit, unified=unified,
                               message=f"Not changed: {refused}.")
        await self.store.set_user_password(visit.user.id,
                                           await self.services.passwords.hash(new))
        await self.store.log_activity("password_changed", address=visit.user.login,
                                      client_ip=visit.client_ip, protocol="web",
                                      detail="user password" + (f"; unified with {unified}"
                                                                if unified else ""))
        if unified:
            await self.store.log_activity("password_changed", address=unified,
                                          client_ip=visit.client_ip, protocol="web",
                                          detail=f"unified with user {visit.user.login}")
        await self.reissue(visit)
        return self.render("my_password.html", visit=visit, unified=unified,
                           done="Your password was changed. Every other browser signed "
                           "in to your account was signed out." + (
                               f" The password of {unified} changed with it; its open "
                               "mail sessions were closed." if unified else ""))

    async def my_two_factor(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        user = visit.user
        codes_left = await self.store.emergency_codes_left(user.id)
        if request.method != "POST":
            return self.render("two_factor.html", visit=visit, codes_left=codes_left)
        form = await self.form(request) or {}
        action = form.get("action", "")
        if action == "start" and not user.two_factor:
            secret = totp.new_secret()
            await self.store.update_web_session(visit.session.token_hash,
                                                pending_totp=secret)
            return self._setup_page(visit, secret)
        if action == "confirm" and not user.two_factor:
            pending = visit.session.pending_totp
            if not pending:
                return self.render("two_factor.html", 400, visit=visit,
                                   codes_left=codes_left,
                                   message="Start the set-up again.")
            secret = pending
            step = totp.matching_step(secret, form.get("code", ""), self.now(), 0)
            if step is None:
                return self._setup_page(visit, secret, 400, "That code is wrong or "
                                        "expired; type the code your app shows now.")
            codes = totp.new_emergency_codes()
            await self.store.enable_totp(user.id, secret, step,
                                         [totp.hash_emergency_code(c) for c in codes],
                                         keep_session=visit.session.token_hash)
            await self.store.update_web_session(visit.session.token_hash, pending_totp=None)
            await self.store.log_activity("2fa_enabled", address=user.login,
                                          client_ip=visit.client_ip, protocol="web")
            return self.render("codes.html", visit=visit, codes=codes, enabled=True)
        if action == "codes" and user.two_factor:
            refused = await self._check_own_password(visit, form.get("current", ""))
            if refused:
                return self.render("two_factor.html", 403, visit=visit,
                                   codes_left=codes_left, message=f"Nothing changed: {refused}.")
            codes = totp.new_emergency_codes()
            await self.store.replace_emergency_codes(
                user.id, [totp.hash_emergency_code(c) for c in codes])
            await self.store.log_activity("emergency_codes_replaced", address=user.login,
                                          client_ip=visit.client_ip, protocol="web")
            return self.render("codes.html", visit=visit, codes=codes, enabled=False)
        if action == "disable" and user.two_factor:
            refused = await self._check_own_password(visit, form.get("current", ""))
            if refused:
                return self.render("two_factor.html", 403, visit=visit,
                                   codes_left=codes_left, message=f"Nothing changed: {refused}.")
            await self.store.reset_totp(user.id)
            await self.store.log_activity("2fa_disabled", address=user.login,
                                          client_ip=visit.client_ip, protocol="web")
            await self.reissue(visit)
            return self.render("two_factor.html", visit=visit, codes_left=0,
                               done="Two-factor is off; every other browser was "
                               "signed out.")
        return self.render("two_factor.html", 400, visit=visit, codes_left=codes_left,
                           message="Nothing changed (that action does not apply now).")

    def _setup_page(self, visit: Visit, secret: str, status: int = 200,
                    message: str = "") -> web.Response:
        uri = totp.provisioning_uri(secret, visit.user.login, self.services.hostname)
        qr = segno.make(uri, error="m").svg_data_uri(scale=4)
        grouped = " ".join(secret[i:i + 4] for i in range(0, len(secret), 4))
        return self.render("two_factor_setup.html", status, visit=visit, qr=qr,
                           secret=secret, grouped=grouped, uri=uri, message=message)


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))
