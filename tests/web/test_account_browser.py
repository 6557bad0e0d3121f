"""The self-service pages in a real browser: Debian's chromium driven by selenium
(headless), against the https listener with the test certificate. One user's whole
story: sign in, turn on two-factor (secret read from the page, code from pyotp), sign
out, sign in with a code, an emergency code that works once, an address password
changed while an IMAP session is open (the session is cut), an app password that logs
in to IMAP, and an autoresponder edited on the page and triggered by an SMTP delivery.

Selenium is synchronous: the browser story runs in a thread while the event loop keeps
serving. Never skipped: scripts/test installs chromium and chromium-driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import imaplib
import os
import smtplib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyotp
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from mailstack.app import App
from tests.conftest import add_mailbox

from .accounts import add_user

ANNA = "anna@example.com"
LOGIN = "carol@elsewhere.org"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

pytestmark = pytest.mark.timeout(300)


class Clock:
    def __init__(self) -> None:
        self.t = float(int(time.time()) // 30 * 30)

    def __call__(self) -> float:
        return self.t


@contextlib.contextmanager
def chromium() -> Iterator[WebDriver]:
    os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium fetch a driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--no-first-run", "--disable-extensions",
                "--password-store=basic"):
        opts.add_argument(arg)
    opts.accept_insecure_certs = True  # the test certificate
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


class Story:
    def __init__(self, driver: WebDriver, app: App, clock: Clock) -> None:
        self.d = driver
        self.app = app
        self.clock = clock
        self.base = f"https://127.0.0.1:{app.ports['https']}/account"

    def go(self, path: str) -> None:
        self.d.get(self.base + path)

    def find(self, css: str) -> Any:
        return WebDriverWait(self.d, 20).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, css)))

    def fill(self, css: str, text: str) -> None:
        el = self.find(css)
        el.clear()
        el.send_keys(text)

    def click(self, css: str) -> None:
        """Click a link or a submit button and wait for the next page."""
        page = self.find("html")
        self.find(css).click()

        def replaced(_d: WebDriver) -> bool:
            try:
                page.is_enabled()
            except WebDriverException:  # stale: the old document is gone
                return True
            return False

        WebDriverWait(self.d, 20).until(replaced)

    def heading(self) -> str:
        return str(self.find("h1").text)

    def sign_in(self, password: str = "carol-pass-1") -> None:
        self.go("/signin")
        self.fill("#login", LOGIN)
        self.fill("#password", password)
        self.click("#signin")

    def code(self, secret: str) -> str:
        self.clock.t += 30  # the next 30 s step: a code is never accepted twice
        return str(pyotp.TOTP(secret).at(self.clock.t))

    def second_factor(self, code: str) -> None:
        assert self.heading() == "Two-factor code"
        self.fill("#code", code)
        self.click("#verify")

    def sign_out(self) -> None:
        self.click("#signout")
        assert self.heading() == "Sign in"

    # --- the story --------------------------------------------------------------------
    def run(self, imap_port: int, smtp_port: int) -> None:
        self.sign_in()
        assert self.heading() == "My addresses"
        assert ANNA in self.d.page_source

        # two-factor: secret from the page, code from pyotp, 10 emergency codes once
        self.click("nav a[href$='/me/2fa']")
        self.click("#start")
        secret = self.find("#totp-secret").get_attribute("data-secret")
        assert self.find("#qr").get_attribute("src").startswith("data:image/svg+xml")
        self.fill("#code", self.code(secret))
        self.click("#confirm")
        codes = [li.text for li in self.find("#emergency-codes").find_elements(
            By.TAG_NAME, "li")]
        assert len(codes) == 10
        self.click("#continue")
        assert "on (10 emergency codes left)" in self.d.page_source
        self.sign_out()

        # password, then a code
        self.sign_in()
        self.second_factor(self.code(secret))
        assert self.heading() == "My addresses"
        self.sign_out()

        # an emergency code works once
        self.sign_in()
        self.second_factor(codes[0])
        assert self.heading() == "My addresses"
        assert "9 emergency codes left" in self.d.page_source
        self.sign_out()
        self.sign_in()
        self.second_factor(codes[0])
        assert "already used" in self.find("#message").text
        self.second_factor(self.code(secret))
        assert self.heading() == "My addresses"

        # change the address's password while an IMAP session is open: it is cut
        imap = imaplib.IMAP4("127.0.0.1", imap_port)
        try:
            imap.login(ANNA, "anna-mail-1")
            imap.select("INBOX")
            self.go(f"/a/{ANNA}/password")
            self.fill("#new", "anna-mail-2")
            self.fill("#repeat", "anna-mail-2")
            self.click("#change")
            assert "open mail sessions were closed" in self.find("#done").text
            with pytest.raises((imaplib.IMAP4.abort, imaplib.IMAP4.error, OSError)):
                for _ in range(100):
                    imap.noop()
                    time.sleep(0.05)
        finally:
            with contextlib.suppress(OSError):
                imap.shutdown()
        with imaplib.IMAP4("127.0.0.1", imap_port) as old:
            with pytest.raises(imaplib.IMAP4.error):
                old.login(ANNA, "anna-mail-1")
        with imaplib.IMAP4("127.0.0.1", imap_port) as new:
            assert new.login(ANNA, "anna-mail-2")[0] == "OK"

        # an app password, shown once, logs in to IMAP
        self.click("nav.tabs a[href$='/app-passwords']")
        self.fill("#app-name", "phone")
        self.click("#create-app")
        app_password = self.find("#new-app-password").text
        with imaplib.IMAP4("127.0.0.1", imap_port) as phone:
            assert phone.login(ANNA, app_password)[0] == "OK"

        # an autoresponder: created, edited, activated on the page
        self.click("nav.tabs a[href$='/autoresponder']")
        self.fill("#r-name", "away")
        self.fill("#r-subject", "Away")
        self.fill("#r-body", "First text.")
        self.click("#save-responder")
        assert "saved" in self.find("#done").text
        self.click("#responders a[href*='edit=away']")
        self.fill("#r-subject", "Out of office")
        self.fill("#r-body", "Back on Monday.")
        self.fill("#r-excl", "@blocked.example")
        self.click("#save-responder")
        self.click("button[aria-label='Activate away']")
        assert "is now the active one" in self.find("#done").text

        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as s:
            s.sendmail("dan@remote.example", [ANNA],
                       b"From: Dan <dan@remote.example>\r\nTo: <anna@example.com>\r\n"
                       b"Subject: Lunch?\r\nMessage-ID: <lunch@remote.example>\r\n\r\n"
                       b"Are you free?\r\n")

        self.click("nav.tabs a[href$='/activity']")
        text = self.find("#activity").text
        assert "password_changed" in text and "app_password_added" in text


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_a_user_in_a_real_browser(app_factory: Callable[..., Any], clock: Clock
                                        ) -> None:
    app: App = await app_factory(clock=clock)
    assert app.store is not None and app.services is not None
    await add_mailbox(app, ANNA, "anna-mail-1")
    await add_user(app, LOGIN, "carol-pass-1", {ANNA: "read,passwd,autoresponder"})

    def story() -> None:
        try:
            with chromium() as driver:
                Story(driver, app, clock).run(app.ports["imap"], app.ports["smtp"])
        except WebDriverException as exc:
            raise AssertionError(f"browser failure: {exc.msg}") from exc

    await asyncio.to_thread(story)
    await app.services.autoreplies.drain()
    replies = []
    for q in await app.store.list_queue():
        msg = email.message_from_bytes(await app.store.blobs.get(q.blob_id),
                                       policy=email.policy.default)
        replies.append((q.sender, q.recipient, str(msg["Subject"]), msg))
    [(sender, _rcpt, subject, msg)] = [r for r in replies if r[1] == "dan@remote.example"]
    assert sender == "" and subject == "Out of office"
    assert b"Back on Monday." in msg.as_bytes()
