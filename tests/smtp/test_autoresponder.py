"""Out-of-office replies end to end (docs/behaviour.md §7, RFC 3834): mail delivered over
port 25 with smtplib, on SQLite and PostgreSQL, with a fake clock; replies to remote
senders are checked as outbound queue rows (null sender, the return path, the blob),
replies to hosted senders in their INBOX. Every never-reply rule has its own message,
and the log names the rule that held the reply back."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import smtplib
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from mailstack.app import App
from tests.conftest import add_mailbox

MONDAY_NOON = datetime(2026, 12, 21, 12, 0, tzinfo=UTC).timestamp()
DAY = 86400.0


class Clock:
    def __init__(self, now: float = MONDAY_NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Env:
    def __init__(self, app: App, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
        self.app, self.clock, self.caplog = app, clock, caplog
        self.n = 0

    @property
    def store(self) -> Any:
        assert self.app.store is not None
        return self.app.store

    async def send(self, rcpts: list[str], *, sender: str = "bob@remote.example",
                   to: str = "anna@example.com", extra: str = "", subject: str = "Lunch?",
                   wait: bool = True) -> None:
        """One message over port 25; then wait until its replies are done."""
        self.n += 1
        data = (f"From: Bob <bob@remote.example>\r\nTo: {to}\r\n{extra}Subject: {subject}\r\n"
                f"Message-ID: <m{self.n}@remote.example>\r\n\r\nHello Anna\r\n").encode()
        port = self.app.ports["smtp"]

        def go() -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
                s.ehlo("mx.remote.example")
                assert s.sendmail(sender, rcpts, data) == {}
        await asyncio.to_thread(go)
        if wait:
            await self.drain()

    async def drain(self) -> None:
        assert self.app.services is not None
        await self.app.services.autoreplies.drain()

    async def queued(self) -> list[tuple[str, str, email.message.EmailMessage]]:
        """(envelope sender, recipient, parsed message) of each queued reply."""
        out = []
        for q in await self.store.list_queue():
            data = await self.store.blobs.get(q.blob_id)
            out.append((q.sender, q.recipient, parse(data)))
        return out

    async def inbox(self, address: str) -> list[email.message.EmailMessage]:
        addr = await self.store.get_address(address)
        folder = await self.store.get_folder(addr.id, "INBOX")
        return [parse(await self.store.message_bytes(m))
                for m in await self.store.list_messages(folder.id)]

    async def responder(self, address: str, name: str = "holiday", *, activate: bool = True,
                        **fields: Any) -> Any:
        addr = await self.store.get_address(address)
        fields.setdefault("subject", "Out of office")
        fields.setdefault("body", "I am away until January. Grüße, Anna")
        r = await self.store.add_autoresponder(addr.id, name, **fields)
        if activate:
            r = await self.store.activate_autoresponder(addr.id, name)
        return r

    def reasons(self) -> list[str]:
        """The rule named by each "not sent" log line so far (then forgets them)."""
        out = [r.args[2] for r in self.caplog.records
               if r.name == "mailstack.autoreply" and "not sent (" in r.msg
               and isinstance(r.args, tuple)]
        self.caplog.clear()
        return [str(x) for x in out]


def parse(data: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


@pytest.fixture
async def env(app_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> Env:
    caplog.set_level(logging.INFO, logger="mailstack.autoreply")
    clock = Clock()
    app = await app_factory(clock=clock)
    for a in ("anna@example.com", "carl@example.com", "all@other.example"):
        await add_mailbox(app, a, kind="catchall" if a.startswith("all@") else "mailbox")
    await app.store.add_alias("a.alias", "example.com", ["anna@example.com"])
    return Env(app, clock, caplog)


async def test_reply_once_then_throttled_for_a_week_and_reset(env: Env) -> None:
    await env.responder("anna@example.com", html="<p>I am away</p>")
    await env.send(["anna@example.com"])
    [(sender, rcpt, msg)] = await env.queued()
    assert sender == "" and rcpt == "bob@remote.example"  # RFC 3834 §3.3, §4
    assert msg["To"] == "bob@remote.example"
    assert msg["From"].addresses[0].addr_spec == "anna@example.com"
    assert msg["Subject"] == "Out of office"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["In-Reply-To"] == "<m1@remote.example>"
    assert msg["References"] == "<m1@remote.example>"
    assert msg["Message-ID"].endswith("@mail.example.net>")
    assert msg.get_content_type() == "multipart/alternative"
    assert "Grüße, Anna" in msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    # a second message within 7 days: no reply
    env.clock.now += 7 * DAY - 1
    await env.send(["anna@example.com"])
    assert len(await env.queued()) == 1
    assert env.reasons() == ["throttled"]
    # 7 days after the reply: one again
    env.clock.now += 1
    await env.send(["anna@example.com"])
    assert len(await env.queued()) == 2
    await env.send(["anna@example.com"])
    assert len(await env.queued()) == 2
    # reset: one again at once
    anna = await env.store.get_address("anna@example.com")
    await env.store.reset_autoreply_throttle(anna.id)
    await env.send(["anna@example.com"], subject="After the reset")
    replies = await env.queued()
    assert len(replies) == 3
    assert replies[-1][2]["In-Reply-To"] == f"<m{env.n}@remote.example>"
    # the delivered messages themselves are all in Anna's INBOX
    assert len(await env.inbox("anna@example.com")) == 5


async def test_hosted_sender_gets_the_reply_in_its_inbox(env: Env) -> None:
    await env.responder("anna@example.com", subject="")
    await env.send(["anna@example.com"], sender="carl@example.com", subject="Grüezi")
    assert await env.queued() == []
    [reply] = await env.inbox("carl@example.com")
    assert reply["Return-Path"] == "<>"
    assert reply["Delivered-To"] == "carl@example.com"
    assert reply["Subject"] == "Auto: Grüezi"  # RFC 3834 §3.1.5
    assert reply["Auto-Submitted"] == "auto-replied"
    # the reply itself is never answered (Carl has a responder too)
    await env.responder("carl@example.com")
    await env.send(["anna@example.com"], sender="carl@example.com", subject="again")
    await env.drain()
    assert len(await env.inbox("carl@example.com")) == 1
    assert len(await env.inbox("anna@example.com")) == 2


NEVER = [
    # (what, envelope sender, To:, extra header lines, the rule)
    ("mailing list", "bob@remote.example", "anna@example.com",
     "List-Id: Friends <friends.lists.example>\r\n", "list"),
    ("list unsubscribe", "bob1@remote.example", "anna@example.com",
     "List-Unsubscribe: <mailto:x@lists.example>\r\n", "list"),
    ("list post", "bob2@remote.example", "anna@example.com",
     "List-Post: <mailto:x@lists.example>\r\n", "list"),
    ("auto-generated", "bob3@remote.example", "anna@example.com",
     "Auto-Submitted: auto-generated\r\n", "auto-submitted"),
    ("bulk", "bob4@remote.example", "anna@example.com", "Precedence: bulk\r\n",
     "precedence"),
    ("junk", "bob5@remote.example", "anna@example.com", "Precedence: junk\r\n",
     "precedence"),
    ("empty return path", "", "anna@example.com", "", "null-sender"),
    ("MAILER-DAEMON", "MAILER-DAEMON@remote.example", "anna@example.com", "",
     "system-sender"),
    ("owner-", "owner-friends@lists.example", "anna@example.com", "", "system-sender"),
    ("-request", "friends-request@lists.example", "anna@example.com", "", "system-sender"),
    ("Bcc only", "bob6@remote.example", "someone@remote.example", "", "not-addressed"),
    ("delivery report", "bob7@remote.example", "anna@example.com",
     "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; "
     "boundary=x\r\n", "report"),
    ("the address itself", "anna@example.com", "anna@example.com", "", "self"),
    ("its alias", "a.alias@example.com", "anna@example.com", "", "self"),
    ("excluded address", "boss@corp.example", "anna@example.com", "", "excluded"),
    ("excluded domain", "someone@partner.example", "anna@example.com", "", "excluded"),
]


async def test_never_reply(env: Env) -> None:
    await env.responder("anna@example.com",
                        exclusions=("boss@corp.example", "@partner.example"))
    env.reasons()
    for what, sender, to, extra, rule in NEVER:
        await env.send(["anna@example.com"], sender=sender, to=to, extra=extra)
        assert await env.queued() == [], what
        assert env.reasons() == [rule], what
    assert len(await env.inbox("anna@example.com")) == len(NEVER)  # all delivered
    # the controls: the same kinds of message that must be answered
    await env.send(["anna@example.com"], sender="bob@remote.example",
                   to="x@y.example", extra="Cc: Anna <ANNA@example.com>\r\n")
    await env.send(["anna@example.com"], sender="boss2@corp.example")
    await env.send(["anna@example.com"], sender="x@eu.partner.example")  # a subdomain
    await env.send(["a.alias@example.com"], sender="y@remote.example",
                   to="a.alias@example.com")  # To: one of its aliases
    await env.send(["anna@example.com"], sender="z@remote.example",
                   extra="Auto-Submitted: no\r\n")
    assert sorted(r for _, r, _ in await env.queued()) == [
        "bob@remote.example", "boss2@corp.example", "x@eu.partner.example",
        "y@remote.example", "z@remote.example"]
    assert env.reasons() == []


async def test_catchall_for_nonexistent_vs_written_directly(env: Env) -> None:
    await env.responder("all@other.example")
    # reached through the catchall (the To: even names the catchall): no reply
    await env.send(["nobody@other.example"], to="all@other.example")
    assert await env.queued() == []
    assert env.reasons() == ["catchall"]
    assert len(await env.inbox("all@other.example")) == 1
    # the catchall address written directly: a reply
    await env.send(["all@other.example"], to="all@other.example")
    [(_, rcpt, msg)] = await env.queued()
    assert rcpt == "bob@remote.example"
    assert msg["From"].addresses[0].addr_spec == "all@other.example"


async def test_schedule_edges(env: Env) -> None:
    start = MONDAY_NOON + DAY  # Tuesday noon UTC
    await env.responder("anna@example.com", starts_at=start, ends_at=start + DAY)
    env.clock.now = start - 1
    await env.send(["anna@example.com"], sender="early@remote.example")
    assert env.reasons() == ["schedule"]
    env.clock.now = start
    await env.send(["anna@example.com"], sender="first@remote.example")
    env.clock.now = start + DAY - 1
    await env.send(["anna@example.com"], sender="last@remote.example")
    env.clock.now = start + DAY
    await env.send(["anna@example.com"], sender="late@remote.example")
    assert env.reasons() == ["schedule"]
    assert [r for _, r, _ in await env.queued()] == ["first@remote.example",
                                                     "last@remote.example"]


async def test_weekdays_in_the_responders_zone_across_midnight_utc(env: Env) -> None:
    """Mondays only, in Zurich (UTC+1 in December)."""
    await env.responder("anna@example.com", weekdays={0}, timezone="Europe/Zurich")
    sunday_2330_utc = MONDAY_NOON - 12.5 * 3600  # Monday 00:30 in Zurich
    monday_2330_utc = MONDAY_NOON + 11.5 * 3600  # Tuesday 00:30 in Zurich
    monday_2230_utc = MONDAY_NOON + 10.5 * 3600  # Monday 23:30 in Zurich
    sunday_2230_utc = MONDAY_NOON - 13.5 * 3600  # Sunday 23:30 in Zurich
    for now, sender, answered in [(sunday_2230_utc, "a@remote.example", False),
                                  (sunday_2330_utc, "b@remote.example", True),
                                  (monday_2230_utc, "c@remote.example", True),
                                  (monday_2330_utc, "d@remote.example", False)]:
        env.clock.now = now
        await env.send(["anna@example.com"], sender=sender)
        assert (sender in [r for _, r, _ in await env.queued()]) is answered, sender


async def test_alternate_from_allowed_then_no_longer(env: Env) -> None:
    await env.responder("anna@example.com", from_address="a.alias@example.com")
    await env.send(["anna@example.com"], sender="one@remote.example")
    [(_, _, msg)] = await env.queued()
    assert msg["From"].addresses[0].addr_spec == "a.alias@example.com"
    # the alias goes away: checked again when sending, the reply comes from Anna herself
    await env.store.remove_alias("a.alias@example.com")
    await env.send(["anna@example.com"], sender="two@remote.example")
    msg = (await env.queued())[1][2]
    assert msg["From"].addresses[0].addr_spec == "anna@example.com"


async def test_activating_one_deactivates_the_other(env: Env) -> None:
    await env.responder("anna@example.com", "holiday", subject="On holiday")
    await env.responder("anna@example.com", "sick", subject="Ill today", activate=False)
    await env.send(["anna@example.com"], sender="one@remote.example")
    anna = await env.store.get_address("anna@example.com")
    await env.store.activate_autoresponder(anna.id, "sick")
    assert [r.name for r in await env.store.list_autoresponders(anna.id) if r.active] == [
        "sick"]
    await env.send(["anna@example.com"], sender="two@remote.example")
    await env.store.deactivate_autoresponder(anna.id)
    await env.send(["anna@example.com"], sender="three@remote.example")
    assert [(r, m["Subject"]) for _, r, m in await env.queued()] == [
        ("one@remote.example", "On holiday"), ("two@remote.example", "Ill today")]


async def test_two_simultaneous_deliveries_from_one_sender_one_reply(env: Env) -> None:
    await env.responder("anna@example.com")
    port = env.app.ports["smtp"]
    barrier = threading.Barrier(4)

    def deliver(i: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            s.ehlo("mx.remote.example")
            s.mail("bob@remote.example")
            s.rcpt("anna@example.com")
            barrier.wait()  # all four send their DATA together
            s.data(f"To: anna@example.com\r\nSubject: {i}\r\n\r\nhi\r\n".encode())

    await asyncio.gather(*(asyncio.to_thread(deliver, i) for i in range(4)))
    await env.drain()
    assert len(await env.inbox("anna@example.com")) == 4
    assert [r for _, r, _ in await env.queued()] == ["bob@remote.example"]
    assert env.reasons().count("throttled") == 3


async def test_hourly_cap(app_factory: Callable[..., Any],
                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailstack.autoreply")
    clock = Clock()
    app = await app_factory(clock=clock, autoresponder={"max_replies_per_hour": 2})
    await add_mailbox(app, "anna@example.com")
    env = Env(app, clock, caplog)
    await env.responder("anna@example.com")
    for i in range(3):
        await env.send(["anna@example.com"], sender=f"s{i}@remote.example")
    assert len(await env.queued()) == 2
    assert env.reasons() == ["hourly-cap"]
    clock.now += 3601
    await env.send(["anna@example.com"], sender="s2@remote.example")
    assert len(await env.queued()) == 3


async def test_disabled_by_the_operator(app_factory: Callable[..., Any],
                                        caplog: pytest.LogCaptureFixture) -> None:
    app = await app_factory(autoresponder={"enabled": False})
    await add_mailbox(app, "anna@example.com")
    env = Env(app, Clock(), caplog)
    await env.responder("anna@example.com")
    await env.send(["anna@example.com"])
    assert await env.queued() == []
    assert len(await env.inbox("anna@example.com")) == 1


async def test_submission_and_kept_forwarded_copies_are_answered(
        env: Env, client_ssl: Any) -> None:
    """Every final local delivery runs the responder: a message submitted on 587 to a
    hosted address, and the copy an address keeps while forwarding."""
    await env.responder("anna@example.com")
    port = env.app.ports["submission"]

    def submit() -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            s.starttls(context=client_ssl)
            s.login("carl@example.com", "secret")
            s.sendmail("carl@example.com", ["anna@example.com"],
                       b"From: carl@example.com\r\nTo: anna@example.com\r\n"
                       b"Subject: submitted\r\n\r\nhi\r\n")
    await asyncio.to_thread(submit)
    await env.drain()
    [reply] = await env.inbox("carl@example.com")
    assert reply["Subject"] == "Out of office" and reply["Return-Path"] == "<>"

    anna = await env.store.get_address("anna@example.com")
    await env.store.set_forwarding(anna.id, ["anna@elsewhere.example"], True)
    await env.send(["anna@example.com"], sender="dora@remote.example")
    rows = {(q.sender, q.recipient) for q in await env.store.list_queue()}
    assert rows == {("dora@remote.example", "anna@elsewhere.example"),  # the forward
                    ("", "dora@remote.example")}  # the reply to the kept copy


async def test_reply_never_delays_or_fails_the_delivery(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 250 is sent while the reply work is still blocked, and a reply that fails
    leaves the delivery as it was."""
    await env.responder("anna@example.com")
    store = env.store
    real_claim = store.claim_autoreply
    release = asyncio.Event()

    async def blocked_claim(*args: Any, **kw: Any) -> Any:
        await release.wait()
        return await real_claim(*args, **kw)

    monkeypatch.setattr(store, "claim_autoreply", blocked_claim)
    await env.send(["anna@example.com"], sender="one@remote.example", wait=False)
    assert len(await env.inbox("anna@example.com")) == 1  # delivered, 250 received
    assert await env.queued() == []  # the reply is still waiting
    release.set()
    await env.drain()
    assert [r for _, r, _ in await env.queued()] == ["one@remote.example"]

    async def broken_claim(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("database on fire")

    monkeypatch.setattr(store, "claim_autoreply", broken_claim)
    await env.send(["anna@example.com"], sender="two@remote.example")
    assert len(await env.inbox("anna@example.com")) == 2
    assert [r for _, r, _ in await env.queued()] == ["one@remote.example"]
    assert any("autoreply for anna@example.com failed" in r.getMessage()
               for r in env.caplog.records)


async def test_replies_to_the_internet_carry_the_signers_lines(env: Env) -> None:
    """The DKIM hook: ``signer(reply)`` lines go into the queued copy's prefix; a
    signer failure sends the reply unsigned rather than not at all."""
    signed: list[bytes] = []
    lines = b"DKIM-Signature: v=1; d=example.com; b=test\r\n"

    async def signer(message: bytes) -> bytes:
        signed.append(message)
        if b"two@" in message:
            raise RuntimeError("no key")
        return lines

    assert env.app.services is not None
    env.app.services.autoreplies.signer = signer
    await env.responder("anna@example.com")
    await env.send(["anna@example.com"], sender="one@remote.example")
    await env.send(["anna@example.com"], sender="two@remote.example")
    await env.send(["anna@example.com"], sender="carl@example.com")  # hosted: not signed
    one, two = await env.store.list_queue()
    assert [len(m) for m in signed] == [one.size - len(lines), two.size]
    assert signed[0] == await env.store.blobs.get(one.blob_id)
    assert len(await env.inbox("carl@example.com")) == 1
