"""The DSN extension on the SMTP listeners (RFC 3461 §4): RET, ENVID, NOTIFY and ORCPT
are accepted, decoded strictly and kept on the queued rows; every malformed variant is
refused with 501 5.5.4 and nothing is stored (docs/behaviour.md §6, §12)."""

from __future__ import annotations

import asyncio
import smtplib
from typing import Any

import pytest
from sqlalchemy import select

from mailstack.store import schema as t

from .conftest import PASSWORD, Env, Raw, message, plain_auth


async def queue_rows(env: Env) -> dict[str, Any]:
    """recipient -> the row's DSN columns, read straight from the database."""
    q = t.outbound_queue.c
    async with env.store.engine.connect() as conn:
        rows = (await conn.execute(select(q.recipient, q.dsn_ret, q.dsn_envid, q.dsn_notify,
                                          q.dsn_orcpt))).all()
    return {r.recipient: (r.dsn_ret, r.dsn_envid, r.dsn_notify, r.dsn_orcpt) for r in rows}


@pytest.mark.parametrize("port_name", ["smtp", "submissions", "submission"])
async def test_dsn_advertised(env: Env, port_name: str) -> None:
    def run() -> bool:
        if port_name == "submissions":
            s: smtplib.SMTP = smtplib.SMTP_SSL("127.0.0.1", env.port(port_name),
                                               context=env.client_ssl, timeout=30)
        else:
            s = smtplib.SMTP("127.0.0.1", env.port(port_name), timeout=30)
        with s:
            s.ehlo("client.example")
            return s.has_extn("dsn")
    assert await asyncio.to_thread(run)


async def test_dsn_parameters_kept_on_queue_rows(env: Env) -> None:
    """One message, three remote recipients with different NOTIFY/ORCPT, one local:
    the queue rows hold the decoded values; the local copy is delivered as usual."""
    def run() -> None:
        with smtplib.SMTP_SSL("127.0.0.1", env.port("submissions"), context=env.client_ssl,
                              timeout=30) as s:
            s.login("anna@example.com", PASSWORD)
            code, text = s.mail("anna@example.com", ["RET=HDRS", "ENVID=QQ+2B314+3Dx"])
            assert code == 250, text
            for rcpt, opts in [
                ("one@remote.example", ["NOTIFY=SUCCESS,delay",
                                        "ORCPT=rfc822;One+2Bfilter@remote.example"]),
                ("two@remote.example", ["NOTIFY=NEVER"]),
                ("three@remote.example", []),
                ("bob@example.com", ["NOTIFY=FAILURE"]),
            ]:
                code, text = s.rcpt(rcpt, opts)
                assert code == 250, (rcpt, text)
            code, text = s.data(message("anna@example.com", "one@remote.example", "dsn"))
            assert code == 250, text
    await asyncio.to_thread(run)
    rows = await queue_rows(env)
    assert rows == {
        "one@remote.example": ("HDRS", "QQ+314=x", "SUCCESS,DELAY",
                               "rfc822;One+filter@remote.example"),
        "two@remote.example": ("HDRS", "QQ+314=x", "NEVER", ""),
        "three@remote.example": ("HDRS", "QQ+314=x", "", ""),
    }
    assert len(await env.inbox("bob@example.com")) == 1


async def test_no_dsn_parameters_stores_empty_columns(env: Env) -> None:
    def run() -> None:
        with smtplib.SMTP_SSL("127.0.0.1", env.port("submissions"), context=env.client_ssl,
                              timeout=30) as s:
            s.login("anna@example.com", PASSWORD)
            s.sendmail("anna@example.com", ["x@remote.example"],
                       message("anna@example.com", "x@remote.example"))
    await asyncio.to_thread(run)
    assert await queue_rows(env) == {"x@remote.example": ("", "", "", "")}


async def test_forward_to_remote_gets_orcpt_of_the_rcpt(env: Env) -> None:
    """Mail from the internet (port 25) to a hosted address forwarded elsewhere: the
    queued row keeps NOTIFY and names the original recipient in ORCPT."""
    addr = await env.store.get_address("carl@example.com")
    await env.store.set_forwarding(addr.id, ["carl@elsewhere.example"], keep_copy=True)
    raw = await Raw.open(env.port("smtp"))
    try:
        assert (await raw.cmd("EHLO sender.example"))[0] == 250
        assert (await raw.cmd("MAIL FROM:<x@sender.example> RET=FULL ENVID=e1"))[0] == 250
        assert (await raw.cmd("RCPT TO:<carl@example.com> NOTIFY=FAILURE,DELAY"))[0] == 250
        assert (await raw.cmd("DATA"))[0] == 354
        await raw.send(message("x@sender.example", "carl@example.com") + b".\r\n")
        assert (await raw.reply())[0] == 250
    finally:
        await raw.close()
    assert await queue_rows(env) == {
        "carl@elsewhere.example": ("FULL", "e1", "FAILURE,DELAY", "rfc822;carl@example.com")}


MAIL_REFUSED = [
    "RET=FULL RET=HDRS",  # duplicate parameter
    "RET=NONE",
    "RET=",
    "RET",
    "ENVID=a+0Db",  # CR
    "ENVID=a+0Ab",  # LF
    "ENVID=a+00b",  # NUL
    "ENVID=a+1Bb",  # ESC
    "ENVID=a+7Fb",  # DEL
    "ENVID=a+C3+A9",  # 8-bit
    "ENVID=a+0",  # truncated hexchar
    "ENVID=a+",
    "ENVID=a+zz",
    "ENVID=a+0d",  # hexchar is upper-case only
    "ENVID=x ENVID=y",
    "ENVID=" + "a" * 101,
]

RCPT_REFUSED = [
    "NOTIFY=NEVER,SUCCESS",
    "NOTIFY=FAILURE,NEVER",
    "NOTIFY=SOMETIMES",
    "NOTIFY=SUCCESS,",
    "NOTIFY=",
    "NOTIFY",
    "NOTIFY=SUCCESS NOTIFY=FAILURE",
    "ORCPT=rfc822;a+0D+0Ab@x.example",
    "ORCPT=rfc822;a+00@x.example",
    "ORCPT=rfc822;a+09@x.example",
    "ORCPT=rfc822;a+4@x.example",
    "ORCPT=rfc822;a+@x.example",
    "ORCPT=rfc822",
    "ORCPT=;a@x.example",
    "ORCPT=rfc822;a@x.example ORCPT=rfc822;b@x.example",
    "ORCPT=utf-8;a\\x{0A}@x.example",
]


async def _submission_session(env: Env) -> Raw:
    raw = await Raw.open(env.port("submissions"), env.client_ssl)
    assert (await raw.cmd("EHLO client.example"))[0] == 250
    assert (await raw.cmd("AUTH PLAIN " + plain_auth("anna@example.com", PASSWORD)))[0] == 235
    return raw


async def _try_data(raw: Raw) -> int:
    code, _ = await raw.cmd("DATA")
    if code == 354:  # never expected: finish the transaction to see what happens
        await raw.send(message("anna@example.com", "x@remote.example") + b".\r\n")
        code, _ = await raw.reply()
    return code


@pytest.mark.parametrize("params", MAIL_REFUSED)
async def test_malformed_mail_parameters_refused(env: Env, params: str) -> None:
    raw = await _submission_session(env)
    try:
        code, text = await raw.cmd(f"MAIL FROM:<anna@example.com> {params}")
        assert (code, text[:5]) == (501, "5.5.4"), text
        # The transaction never started: RCPT and DATA are refused, nothing is queued.
        assert (await raw.cmd("RCPT TO:<x@remote.example>"))[0] == 503
        assert await _try_data(raw) == 503
        assert (await raw.cmd("NOOP"))[0] == 250  # the session goes on
    finally:
        await raw.close()
    assert await env.total_stored() == 0


@pytest.mark.parametrize("params", RCPT_REFUSED)
async def test_malformed_rcpt_parameters_refused(env: Env, params: str) -> None:
    raw = await _submission_session(env)
    try:
        assert (await raw.cmd("MAIL FROM:<anna@example.com> RET=FULL"))[0] == 250
        code, text = await raw.cmd(f"RCPT TO:<x@remote.example> {params}")
        assert (code, text[:5]) == (501, "5.5.4"), text
        assert await _try_data(raw) in (503, 554)  # no valid recipient
    finally:
        await raw.close()
    assert await env.total_stored() == 0
