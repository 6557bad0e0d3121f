"""The self-service pages over HTTPS with a plain HTTP client: sign-in, two-factor,
sessions, CSRF, permissions, unification, and every refusal with its status code AND
the stored state afterwards (docs/behaviour.md §2)."""

from __future__ import annotations

import contextlib
import imaplib
import ssl
import time
from collections.abc import Callable
from typing import Any

import pyotp
import pytest

from mailstack.app import App
from mailstack.policy import totp
from tests.conftest import add_mailbox

from .accounts import APP_PASSWORD, CODES, SECRET, Browser, add_user, browser

ANNA = "anna@example.com"
BOB = "bob@example.com"


class Clock:
    """A clock the test moves (TOTP steps, session expiry)."""

    def __init__(self) -> None:
        self.t = float(int(time.time()) // 30 * 30)

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def site(app_factory: Callable[..., Any], clock: Clock) -> App:
    app: App = await app_factory(clock=clock, auth={"lock_after_failures": 4})
    await add_mailbox(app, ANNA, "anna-mail-1")
    await add_mailbox(app, BOB, "bob-mail-1")
    return app


async def password_ok(app: App, address: str, password: str) -> bool:
    assert app.store is not None and app.services is not None
    addr = await app.store.get_address(address)
    assert addr is not None
    return await app.services.passwords.verify(addr.password_hash, password)


async def user_password_ok(app: App, login: str, password: str) -> bool:
    assert app.store is not None and app.services is not None
    user = await app.store.get_user(login)
    assert user is not None
    return await app.services.passwords.verify(user.password_hash, password)


async def session_rows(app: App, login: str) -> int:
    assert app.store is not None
    user = await app.store.get_user(login)
    assert user is not None
    return await app.store.web_session_count(user.id)


# --- sign-in -----------------------------------------------------------------------------


async def test_sign_in_sets_a_secure_session_cookie(site: App, client_ssl: ssl.SSLContext
                                                    ) -> None:
    await add_user(site, "carol@elsewhere.org", "carol-pass-1", {ANNA: "read"})
    async with browser(site, client_ssl) as b:
        form = await b.get("/account/signin")
        assert form.status == 200
        async with b.session.post(b.base + "/account/signin", allow_redirects=False, data={
                "login": "Carol@Elsewhere.org", "password": "carol-pass-1",
                "csrf": form.csrf}) as r:
            assert r.status == 303 and r.headers["Location"] == "/account"
            cookie = next(v for k, v in r.headers.items()
                          if k.lower() == "set-cookie" and "__Host-mailstack=" in v)
        assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Strict" in cookie
        assert "Path=/" in cookie and "Domain" not in cookie
        home = await b.get("/account/")
        assert home.status == 200 and home.has(ANNA) and home.has("carol@elsewhere.org")
        assert home.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert await session_rows(site, "carol@elsewhere.org") == 1
    assert site.store is not None
    [entry] = [e for e in await site.store.list_activity("carol@elsewhere.org")
               if e.event == "login_ok"]
    assert entry.protocol == "web" and entry.client_ip == "127.0.0.1"


async def test_wrong_password_and_unknown_login_get_the_same_refusal(
        site: App, client_ssl: ssl.SSLContext) -> None:
    await add_user(site, "carol@elsewhere.org", "carol-pass-1", {ANNA: "read"})
    async with browser(site, client_ssl) as b:
        wrong = await b.sign_in("carol@elsewhere.org", "not-her-password")
        unknown = await b.sign_in("nobody@elsewhere.org", "carol-pass-1")
        assert wrong.status == unknown.status == 401
        assert wrong.has("Wrong login or password.") and unknown.has("Wrong login or password.")
        assert b.cookie("__Host-mailstack") is None
        assert (await b.get("/account/", allow_redirects=False)).status == 303
    assert await session_rows(site, "carol@elsewhere.org") == 0
    assert site.store is not None
    events = [e.event for e in await site.store.list_activity("carol@elsewhere.org")]
    assert events == ["login_fail"]


async def test_a_sign_in_from_a_new_network_mails_the_login_address(
        site: App, client_ssl: ssl.SSLContext) -> None:
    assert site.store is not None and site.services is not None
    from tests.test_notices import inbox_subjects

    await add_user(site, ANNA, "anna-user-1", {ANNA: "read"})
    addr = await site.store.get_address(ANNA)
    assert addr is not None
    inbox = await site.store.get_folder(addr.id, "INBOX")
    assert inbox is not None
    for ip in ("127.0.0.1", "127.0.0.9"):  # the first sets the baseline; same /24
        async with browser(site, client_ssl, ip) as b:
            assert (await b.sign_in(ANNA, "anna-user-1")).has("My addresses")
    await site.services.notifier.drain()
    assert await inbox_subjects(site.store, inbox.id) == []
    async with browser(site, client_ssl, "127.0.1.5") as b:
        assert (await b.sign_in(ANNA, "anna-user-1")).has("My addresses")
    await site.services.notifier.drain()
    assert await inbox_subjects(site.store, inbox.id) == ["New sign-in to your mail account"]
    [last, *_] = [e for e in await site.store.list_activity(ANNA) if e.event == "login_ok"]
    assert last.client_ip == "127.0.1.5" and "new network" in last.detail


async def test_sign_in_without_csrf_token_is_refused(site: App, client_ssl: ssl.SSLContext
                                                    ) -> None:
    await add_user(site, "carol@elsewhere.org", "carol-pass-1", {ANNA: "read"})
    async with browser(site, client_ssl) as b:
        await b.get("/account/signin")  # the double-submit cookie is set
        page = await b.post("/account/signin", {"login": "carol@elsewhere.org",
                                                "password": "carol-pass-1"}, csrf=None)
        assert page.status == 403
        forged = await b.post("/account/signin", {"login": "carol@elsewhere.org",
                                                  "password": "carol-pass-1"}, csrf="forged")
        assert forged.status == 403
    assert await session_rows(site, "carol@elsewhere.org") == 0


async def test_brute_force_on_sign_in_is_refused_by_the_login_guard(
        site: App, client_ssl: ssl.SSLContext) -> None:
    await add_user(site, "carol@elsewhere.org", "carol-pass-1", {ANNA: "read"})
    async with browser(site, client_ssl) as b:
        statuses = [(await b.sign_in("carol@elsewhere.org", f"guess-{i}")).status
                    for i in range(5)]
        assert statuses[:4] == [401] * 4 and statuses[4] == 429
        right = await b.sign_in("carol@elsewhere.org", "carol-pass-1")
        assert right.status == 429 and right.has("Too many failed sign-ins")
    assert await session_rows(site, "carol@elsewhere.org") == 0


async def test_session_ends_after_idle_time(site: App, clock: Clock,
                                            client_ssl: ssl.SSLContext) -> None:
    await add_user(site, "carol@elsewhere.org", "carol-pass-1", {ANNA: "read"})
    async with browser(site, client_ssl) as b:
        assert (await b.sign_in("carol@elsewhere.org", "carol-pass-1")).status == 200
        clock.t += 1000
        assert (await b.get("/account/")).has(ANNA)  # still in, and touched
        clock.t += site.settings.web.session_idle_seconds + 1
        gone = await b.get("/account/", allow_redirects=False)
        assert gone.status == 303 and gone.headers["Location"] == "/account/signin"
    assert await session_rows(site, "carol@elsewhere.org") == 0


async def test_session_ends_after_its_absolute_lifetime(site: App, clock: Clock,
                                                        client_ssl: ssl.SSLContext) -> None:
    await add_user(site, "carol@elsewhere.org", "carol-pass-1", {ANNA: "read"})
    async with browser(site, client_ssl) as b:
        assert (await b.sign_in("carol@elsewhere.org", "carol-pass-1")).status == 200
        step = site.settings.web.session_idle_seconds / 2
        while clock.t < time.time() + site.settings.web.session_max_seconds - step:
            clock.t += step
            assert (await b.get("/account/")).has(ANNA)
        clock.t += step * 1.5
        assert (await b.get("/account/", allow_redirects=False)).status == 303


# --- two-factor ---------------------------------------------------------------------------


async def enable_two_factor(b: Browser, clock: Clock) -> tuple[str, list[str]]:
    start = await b.post("/account/me/2fa", {"action": "start"})
    m = SECRET.search(start.text)
    assert start.status == 200 and m and 'src="data:image/svg+xml' in start.text
    secret = m.group(1)
    wrong = await b.post("/account/me/2fa", {"action": "confirm", "code": "000000"
                         if pyotp.TOTP(secret).at(clock.t) != "000000" else "111111"})
    assert wrong.status == 400
    done = await b.post("/account/me/2fa", {"action": "confirm",
                                            "code": pyotp.TOTP(secret).at(clock.t)})
    codes = CODES.findall(done.text)
    assert done.status == 200 and len(codes) == 10 and len(set(codes)) == 10
    return secret, codes


async def second_factor(b: Browser, login: str, password: str, code: str) -> int:
    first = await b.sign_in(login, password)
    assert first.status == 200 and "/account/2fa" in first.url
    return (await b.post("/account/2fa", {"code": code})).status


async def test_two_factor_codes_are_checked_and_never_accepted_twice(
        site: App, clock: Clock, client_ssl: ssl.SSLContext) -> None:
    assert site.store is not None
    login = "carol@elsewhere.org"
    await add_user(site, login, "carol-pass-1", {ANNA: "read"})
    async with browser(site, client_ssl) as b:
        await b.sign_in(login, "carol-pass-1")
        secret, _codes = await enable_two_factor(b, clock)
    user = await site.store.get_user(login)
    assert user is not None and user.totp_secret == secret
    assert await site.store.emergency_codes_left(user.id) == 10
    async with browser(site, client_ssl) as b:
        # the code that confirmed the set-up is used up (same 30 s step)
        assert await second_factor(b, login, "carol-pass-1",
                                   pyotp.TOTP(secret).at(clock.t)) == 401
        # a password alone does not sign in: the half-way session reaches no page
        assert (await b.get("/account/", allow_redirects=False)).status == 303
        clock.t += 30
        code = pyotp.TOTP(secret).at(clock.t)
        assert (await b.post("/account/2fa", {"code": code})).status == 200
        assert (await b.get("/account/")).has(ANNA)
    async with browser(site, client_ssl) as b:  # replay of the accepted code
        assert await second_factor(b, login, "carol-pass-1", code) == 401
        # codes of the last step are refused too (clock drift goes one way only)
        assert (await b.post("/account/2fa", {"code": pyotp.TOTP(secret).at(clock.t - 30)})
                ).status == 401
        assert (await b.post("/account/2fa", {"code": "12345"})).status == 401
        clock.t += 30  # the next step's code is accepted, also a step early/late
        assert (await b.post("/account/2fa", {"code": pyotp.TOTP(secret).at(clock.t + 30)})
                ).status == 200
    events = [e.event for e in await site.store.list_activity(login)]
    assert events.count("login_ok") == 3 and events.count("login_fail") == 4


async def test_enabling_two_factor_signs_out_the_other_browsers(
        site: App, clock: Clock, client_ssl: ssl.SSLContext) -> None:
    login = "carol@elsewhere.org"
    await add_user(site, login, "carol-pass-1", {ANNA: "read"})
    async with browser(site, client_ssl) as a, browser(site, client_ssl) as other:
        await a.sign_in(login, "carol-pass-1")
        await other.sign_in(login, "carol-pass-1")
        await enable_two_factor(a, clock)
        assert (await a.get("/account/")).has(ANNA)
        assert (await other.get("/account/", allow_redirects=False)).status == 303
    assert await session_rows(site, login) == 1


async def test_expired_sessions_are_deleted_at_a_later_sign_in(
        site: App, clock: Clock, client_ssl: ssl.SSLContext) -> None:
    login = "carol@elsewhere.org"
    await add_user(site, login, "carol-pass-1", {ANNA: "read"})
    async with browser(site, client_ssl) as b:
        await b.sign_in(login, "carol-pass-1")
    clock.t += site.settings.web.session_max_seconds + 1
    async with browser(site, client_ssl) as b:
        await b.sign_in(login, "carol-pass-1")
    assert await session_rows(site, login) == 1


async def test_emergency_code_works_once_and_sends_a_notice(
        site: App, clock: Clock, client_ssl: ssl.SSLContext) -> None:
    assert site.store is not None and site.services is not None
    await add_user(site, ANNA, "anna-user-1", {ANNA: "read,passwd"})
    async with browser(site, client_ssl) as b:
        await b.sign_in(ANNA, "anna-user-1")
        _secret, codes = await enable_two_factor(b, clock)
    async with browser(site, client_ssl) as b:
        assert await second_factor(b, ANNA, "anna-user-1", codes[3].upper()) == 200
    async with browser(site, client_ssl) as b:
        assert await second_factor(b, ANNA, "anna-user-1", codes[3]) == 401
    user = await site.store.get_user(ANNA)
    assert user is not None and await site.store.emergency_codes_left(user.id) == 9
    events = [e.event for e in await site.store.list_activity(ANNA)]
    assert "emergency_code_used" in events and "notice_emergency_code" in events
    await site.services.notifier.drain()
    addr = await site.store.get_address(ANNA)
    assert addr is not None
    inbox = await site.store.get_folder(addr.id, "INBOX")
    assert inbox is not None
    from tests.test_notices import inbox_subjects

    assert "An emergency code was used to sign in" in await inbox_subjects(site.store,
                                                                           inbox.id)


async def test_2fa_reset_from_the_command_line_signs_out_everywhere(
        site: App, clock: Clock, client_ssl: ssl.SSLContext, tmp_path: Any) -> None:
    import asyncio
    import sys

    from tests.cli.conftest import cli_env, write_config

    assert site.store is not None
    login = "carol@elsewhere.org"
    await add_user(site, login, "carol-pass-1", {ANNA: "read"})
    async with browser(site, client_ssl) as b:
        await b.sign_in(login, "carol-pass-1")
        await enable_two_factor(b, clock)
        clock.t += 30
        cfg = write_config(tmp_path / "cli.toml", site.settings.server.data_dir,
                           site.settings.server.database_url)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mailstack",
            "--config", str(cfg), "user", "2fa", "reset", login, env=cli_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err
        assert b"two-factor of carol@elsewhere.org is off" in out
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mailstack", "--config", str(cfg), "user", "2fa",
            "reset", "nobody@elsewhere.org", env=cli_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 1 and b"no user nobody@elsewhere.org" in err
        assert (await b.get("/account/", allow_redirects=False)).status == 303
    user = await site.store.get_user(login)
    assert user is not None and user.totp_secret is None
    assert await site.store.emergency_codes_left(user.id) == 0
    async with browser(site, client_ssl) as b:  # the password alone signs in again
        assert (await b.sign_in(login, "carol-pass-1")).has(ANNA)


async def test_user_passwd_from_the_command_line_signs_out_everywhere(
        site: App, client_ssl: ssl.SSLContext, tmp_path: Any) -> None:
    """`mailstack user passwd` (another process) ends the user's browser sessions; the
    old password no longer signs in, the new one does."""
    import asyncio
    import sys

    from tests.cli.conftest import cli_env, write_config

    assert site.store is not None
    login = "carol@elsewhere.org"
    await add_user(site, login, "carol-pass-1", {ANNA: "read"})
    async with browser(site, client_ssl) as b:
        await b.sign_in(login, "carol-pass-1")
        assert (await b.get("/account/", allow_redirects=False)).status == 200
        cfg = write_config(tmp_path / "cli.toml", site.settings.server.data_dir,
                           site.settings.server.database_url)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mailstack", "--config", str(cfg), "user", "passwd",
            login, "--password-stdin", env=cli_env(), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate(b"carol-pass-2\n")
        assert proc.returncode == 0, err
        assert (await b.get("/account/", allow_redirects=False)).status == 303
    async with browser(site, client_ssl) as b:
        assert (await b.sign_in(login, "carol-pass-2")).has(ANNA)


# --- CSRF and permissions on address pages ---------------------------------------------------


async def test_address_password_change_without_csrf_changes_nothing(
        site: App, client_ssl: ssl.SSLContext) -> None:
    await add_user(site, "carol@elsewhere.org", "carol-pass-1", {ANNA: "read,passwd"})
    async with browser(site, client_ssl) as b:
        await b.sign_in("carol@elsewhere.org", "carol-pass-1")
        path = f"/account/a/{ANNA}/password"
        for token in (None, "forged"):
            page = await b.post(path, {"new": "anna-mail-2", "repeat": "anna-mail-2"},
                                csrf=token)
            assert page.status == 403
        signout = await b.post("/account/signout", {}, csrf=None)
        assert signout.status == 403 and (await b.get("/account/")).has(ANNA)
    assert await password_ok(site, ANNA, "anna-mail-1")


@pytest.mark.parametrize(("perms", "path", "data"), [
    ("read", "password", {"new": "anna-mail-2", "repeat": "anna-mail-2"}),
    ("read,autoresponder", "app-passwords", {"action": "create", "name": "phone"}),
    ("read,passwd", "autoresponder", {"action": "save", "name": "away", "body": "Away."}),
    ("passwd", "activity", {}),
    ("passwd", "", {}),
])
async def test_an_action_without_its_permission_is_403_and_changes_nothing(
        site: App, client_ssl: ssl.SSLContext, perms: str, path: str,
        data: dict[str, str]) -> None:
    assert site.store is not None
    await add_user(site, "carol@elsewhere.org", "carol-pass-1", {ANNA: perms})
    async with browser(site, client_ssl) as b:
        await b.sign_in("carol@elsewhere.org", "carol-pass-1")
        url = f"/account/a/{ANNA}/{path}"
        assert (await b.get(url)).status == 403
        home = (await b.get("/account/")).csrf
        if data:
            page = await b.post(url, data, csrf=home)
            assert page.status == 403 and page.has("nothing was changed")
    addr = await site.store.get_address(ANNA)
    assert addr is not None
    assert await password_ok(site, ANNA, "anna-mail-1")
    assert await site.store.list_app_passwords(addr.id) == []
    assert await site.store.list_autoresponders(addr.id) == []


async def test_an_address_not_granted_looks_like_one_that_does_not_exist(
        site: App, client_ssl: ssl.SSLContext) -> None:
    await add_user(site, "carol@elsewhere.org", "carol-pass-1", {ANNA: "read,passwd"})
    async with browser(site, client_ssl) as b:
        await b.sign_in("carol@elsewhere.org", "carol-pass-1")
        csrf = (await b.get("/account/")).csrf
        other = await b.post(f"/account/a/{BOB}/password",
                             {"new": "bob-mail-2", "repeat": "bob-mail-2"}, csrf=csrf)
        missing = await b.get("/account/a/nobody@example.com/")
        assert other.status == missing.status == 403
        assert other.has(f"You have no access to {BOB}.")
    assert await password_ok(site, BOB, "bob-mail-1")


async def test_permitted_pages_work(site: App, client_ssl: ssl.SSLContext) -> None:
    assert site.store is not None and site.services is not None
    await add_user(site, "carol@elsewhere.org", "carol-pass-1",
                   {ANNA: "read,passwd,autoresponder"})
    async with browser(site, client_ssl) as b:
        await b.sign_in("carol@elsewhere.org", "carol-pass-1")
        base = f"/account/a/{ANNA}"
        short = await b.post(base + "/password", {"new": "short", "repeat": "short"})
        assert short.status == 400 and await password_ok(site, ANNA, "anna-mail-1")
        changed = await b.post(base + "/password", {"new": "anna-mail-2",
                                                    "repeat": "anna-mail-2"})
        assert changed.status == 200 and await password_ok(site, ANNA, "anna-mail-2")
        created = await b.post(base + "/app-passwords", {"action": "create", "name": "phone"})
        m = APP_PASSWORD.search(created.text)
        assert created.status == 200 and m
        assert (await site.services.auth.authenticate(ANNA, m.group(1), client_ip="127.0.0.1",
                                                      protocol="imap")).ok
        again = await b.get(base + "/app-passwords")
        assert m.group(1) not in again.text  # shown once
        only = await b.post(base + "/app-passwords", {"action": "app-only", "value": "on"})
        assert only.status == 200
        addr = await site.store.get_address(ANNA)
        assert addr is not None and addr.app_passwords_only
        assert not (await site.services.auth.authenticate(
            ANNA, "anna-mail-2", client_ip="127.0.0.1", protocol="imap")).ok
        revoked = await b.post(base + "/app-passwords", {"action": "revoke", "name": "phone"})
        assert revoked.status == 200 and await site.store.list_app_passwords(addr.id) == []
        bad = await b.post(base + "/autoresponder", {
            "action": "save", "name": "away", "body": "Away.", "exclusions": "not an address"})
        assert bad.status == 400 and await site.store.list_autoresponders(addr.id) == []
        saved = await b.post(base + "/autoresponder", {
            "action": "save", "name": "away", "subject": "Out", "body": "Away until Monday.",
            "start": "2026-12-20T08:00", "end": "2026-12-31T18:00", "timezone": "Europe/Paris",
            "day_mon": "1", "day_fri": "1", "exclusions": "@example.org\nboss@example.net"})
        assert saved.status == 200, saved.text
        [r] = await site.store.list_autoresponders(addr.id)
        assert (r.subject, r.body, r.timezone, r.weekdays) == (
            "Out", "Away until Monday.", "Europe/Paris", frozenset({0, 4}))
        assert r.exclusions == ("@example.org", "boss@example.net") and not r.active
        edit = await b.get(base + "/autoresponder?edit=away")
        assert edit.has('value="2026-12-20T08:00"') and edit.has("checked")
        act = await b.post(base + "/autoresponder", {"action": "activate", "name": "away"})
        assert act.status == 200 and (await site.store.list_autoresponders(addr.id))[0].active
        generation = (await site.store.list_autoresponders(addr.id))[0].generation
        reset = await b.post(base + "/autoresponder", {"action": "reset"})
        assert reset.status == 200 and reset.has("Every sender may get a reply again")
        assert (await site.store.list_autoresponders(addr.id))[0].generation == generation + 1
        rename = await b.post(base + "/autoresponder", {
            "action": "save", "original": "away", "name": "other", "body": "x"})
        assert rename.status == 400
        assert [r.name for r in await site.store.list_autoresponders(addr.id)] == ["away"]
        off = await b.post(base + "/autoresponder", {"action": "deactivate", "name": "away"})
        assert off.status == 200
        assert not (await site.store.list_autoresponders(addr.id))[0].active
        activity = await b.get(base + "/activity")
        assert activity.status == 200 and activity.has("password_changed")
        assert activity.has("127.0.0.0/24")


async def test_user_password_change_signs_out_every_other_browser(
        site: App, client_ssl: ssl.SSLContext) -> None:
    login = "carol@elsewhere.org"
    await add_user(site, login, "carol-pass-1", {ANNA: "read"})
    async with browser(site, client_ssl) as a, browser(site, client_ssl) as other:
        await a.sign_in(login, "carol-pass-1")
        await other.sign_in(login, "carol-pass-1")
        wrong = await a.post("/account/me/password", {
            "current": "nope-nope", "new": "carol-pass-2", "repeat": "carol-pass-2"})
        assert wrong.status == 403 and await user_password_ok(site, login, "carol-pass-1")
        assert (await other.get("/account/")).has(ANNA)
        done = await a.post("/account/me/password", {
            "current": "carol-pass-1", "new": "carol-pass-2", "repeat": "carol-pass-2"})
        assert done.status == 200 and await user_password_ok(site, login, "carol-pass-2")
        assert (await a.get("/account/")).has(ANNA)  # this browser goes on
        assert (await other.get("/account/", allow_redirects=False)).status == 303
    assert await session_rows(site, login) == 1
    assert await password_ok(site, ANNA, "anna-mail-1")  # not unified: independent


# --- unification --------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["login-differs", "second-user", "no-passwd-for-other"])
async def test_unification_is_refused_unless_the_rule_holds(
        site: App, client_ssl: ssl.SSLContext, case: str) -> None:
    assert site.store is not None
    if case == "login-differs":
        login = "carol@elsewhere.org"
        await add_user(site, login, "user-pass-1", {ANNA: "read,passwd"})
        reason = "your login is not this address"
    else:
        login = ANNA
        await add_user(site, ANNA, "user-pass-1", {ANNA: "read,passwd"})
        await add_user(site, "dave@elsewhere.org", "dave-pass-1",
                       {ANNA: "read" if case == "no-passwd-for-other" else "read,passwd"})
        reason = "other users also have access to this address"
    async with browser(site, client_ssl) as b:
        await b.sign_in(login, "user-pass-1")
        page = await b.get(f"/account/a/{ANNA}/password")
        assert page.status == 200 and page.has(f"Unification is not offered: {reason}")
        assert 'name="unify"' not in page.text
        tried = await b.post(f"/account/a/{ANNA}/password", {
            "new": "joint-pass-1", "repeat": "joint-pass-1", "unify": "1"})
        assert tried.status == 403
    assert await password_ok(site, ANNA, "anna-mail-1")
    assert await user_password_ok(site, login, "user-pass-1")
    user = await site.store.get_user(login)
    assert user is not None and user.unified_address_id is None


async def test_unification_is_refused_without_passwd(site: App,
                                                     client_ssl: ssl.SSLContext) -> None:
    """The rule's third condition: the user holds ``passwd`` (without it the password
    page itself is refused)."""
    assert site.store is not None
    await add_user(site, ANNA, "user-pass-1", {ANNA: "read"})
    async with browser(site, client_ssl) as b:
        await b.sign_in(ANNA, "user-pass-1")
        csrf = (await b.get("/account/")).csrf
        tried = await b.post(f"/account/a/{ANNA}/password", {
            "new": "joint-pass-1", "repeat": "joint-pass-1", "unify": "1"}, csrf=csrf)
        assert tried.status == 403
    assert await password_ok(site, ANNA, "anna-mail-1")
    user = await site.store.get_user(ANNA)
    assert user is not None and user.unified_address_id is None


async def test_unified_passwords_change_together_until_a_second_user_is_granted(
        site: App, client_ssl: ssl.SSLContext) -> None:
    assert site.store is not None
    await add_user(site, ANNA, "user-pass-1", {ANNA: "read,passwd"})
    async with browser(site, client_ssl) as b:
        await b.sign_in(ANNA, "user-pass-1")
        page = await b.get(f"/account/a/{ANNA}/password")
        assert page.has("You may unify this password with your own.")
        assert 'name="unify"' in page.text
        done = await b.post(f"/account/a/{ANNA}/password", {
            "new": "joint-pass-1", "repeat": "joint-pass-1", "unify": "1"})
        assert done.status == 200 and done.has("unified")
        assert await password_ok(site, ANNA, "joint-pass-1")
        assert await user_password_ok(site, ANNA, "joint-pass-1")
        # the user's own password page changes both
        await b.post("/account/me/password", {
            "current": "joint-pass-1", "new": "joint-pass-2", "repeat": "joint-pass-2"})
        assert await password_ok(site, ANNA, "joint-pass-2")
        assert await user_password_ok(site, ANNA, "joint-pass-2")
        # and the address's page too (no box to tick again)
        page = await b.get(f"/account/a/{ANNA}/password")
        assert page.has("with your own: changing either one changes both")
        await b.post(f"/account/a/{ANNA}/password", {"new": "joint-pass-3",
                                                     "repeat": "joint-pass-3"})
        assert await password_ok(site, ANNA, "joint-pass-3")
        assert await user_password_ok(site, ANNA, "joint-pass-3")
        # a second user gets access: unification ends, the page says so
        await add_user(site, "dave@elsewhere.org", "dave-pass-1", {ANNA: "read"})
        page = await b.get(f"/account/a/{ANNA}/password")
        assert page.has("Unification ended on") and 'name="unify"' not in page.text
        await b.post(f"/account/a/{ANNA}/password", {"new": "mail-only-3",
                                                     "repeat": "mail-only-3"})
        assert await password_ok(site, ANNA, "mail-only-3")
        assert await user_password_ok(site, ANNA, "joint-pass-3")  # diverged
    user = await site.store.get_user(ANNA)
    assert user is not None and user.unified_address_id is None


async def test_removing_passwd_ends_unification(site: App,
                                                client_ssl: ssl.SSLContext) -> None:
    assert site.store is not None
    user_id = await add_user(site, ANNA, "user-pass-1", {ANNA: "read,passwd"})
    async with browser(site, client_ssl) as b:
        await b.sign_in(ANNA, "user-pass-1")
        await b.post(f"/account/a/{ANNA}/password", {
            "new": "joint-pass-1", "repeat": "joint-pass-1", "unify": "1"})
    addr = await site.store.get_address(ANNA)
    assert addr is not None
    user = await site.store.get_user(ANNA)
    assert user is not None and user.unified_address_id == addr.id
    await site.store.grant(user_id, addr.id, ["read"])
    user = await site.store.get_user(ANNA)
    assert user is not None and user.unified_address_id is None
    assert "unification_ended" in [e.event for e in await site.store.list_activity(ANNA)]


async def test_a_web_password_change_cuts_an_open_imap_session(
        site: App, client_ssl: ssl.SSLContext) -> None:
    """The store's credential epoch: an IMAP session logged in with the old password
    ends when the page changes it."""
    import asyncio

    await add_user(site, "carol@elsewhere.org", "carol-pass-1", {ANNA: "passwd"})
    imap = await asyncio.to_thread(imaplib.IMAP4, "127.0.0.1", site.ports["imap"])
    try:
        await asyncio.to_thread(imap.login, ANNA, "anna-mail-1")
        await asyncio.to_thread(imap.select, "INBOX")
        async with browser(site, client_ssl) as b:
            await b.sign_in("carol@elsewhere.org", "carol-pass-1")
            await b.post(f"/account/a/{ANNA}/password", {"new": "anna-mail-2",
                                                         "repeat": "anna-mail-2"})
        with pytest.raises((imaplib.IMAP4.abort, imaplib.IMAP4.error, OSError)):
            for _ in range(50):
                await asyncio.to_thread(imap.noop)
                await asyncio.sleep(0.05)
    finally:
        with contextlib.suppress(OSError):
            imap.shutdown()


async def test_emergency_codes_are_single_use_at_the_store(site: App) -> None:
    assert site.store is not None
    user_id = await add_user(site, "carol@elsewhere.org", "carol-pass-1", {})
    codes = totp.new_emergency_codes()
    await site.store.enable_totp(user_id, totp.new_secret(), 1,
                                 [totp.hash_emergency_code(c) for c in codes])
    import asyncio

    results = await asyncio.gather(*[site.store.use_emergency_code(
        user_id, totp.hash_emergency_code(codes[0])) for _ in range(5)])
    assert sorted(results) == [False] * 4 + [True]


async def test_new_codes_and_switching_off_need_the_password(
        site: App, clock: Clock, client_ssl: ssl.SSLContext) -> None:
    assert site.store is not None
    login = "carol@elsewhere.org"
    await add_user(site, login, "carol-pass-1", {ANNA: "read"})
    async with browser(site, client_ssl) as b:
        await b.sign_in(login, "carol-pass-1")
        _secret, old_codes = await enable_two_factor(b, clock)
        user = await site.store.get_user(login)
        assert user is not None
        for action in ("codes", "disable"):
            wrong = await b.post("/account/me/2fa", {"action": action, "current": "nope"})
            assert wrong.status == 403 and wrong.has("your current password is wrong")
        user = await site.store.get_user(login)
        assert user is not None and user.two_factor
        assert await site.store.emergency_codes_left(user.id) == 10
        renewed = await b.post("/account/me/2fa", {"action": "codes",
                                                   "current": "carol-pass-1"})
        new_codes = CODES.findall(renewed.text)
        assert len(new_codes) == 10 and not set(new_codes) & set(old_codes)
        assert not await site.store.use_emergency_code(
            user.id, totp.hash_emergency_code(old_codes[0]))
        off = await b.post("/account/me/2fa", {"action": "disable",
                                               "current": "carol-pass-1"})
        assert off.status == 200 and off.has("Two-factor is off")
        assert (await b.get("/account/")).has(ANNA)  # this browser goes on
    user = await site.store.get_user(login)
    assert user is not None and not user.two_factor
    assert await site.store.emergency_codes_left(user.id) == 0
