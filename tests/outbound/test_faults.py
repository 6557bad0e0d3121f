"""A remote server that misbehaves (docs/behaviour.md §12 "Faults"): garbage replies, a
connection closed mid-DATA, a stalled server (RFC 5321 §4.5.3.2 timeouts, small in these
tests), a response injected before the TLS handshake, TLS required but not offered, a
verifier that rejects the peer. Each time: the row waits for a retry, nothing crashes,
and the next attempt delivers it exactly once."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiosmtpd.smtp import AuthResult, LoginPassword

from mailstack.outbound.transport import TlsRequirement

from .conftest import Outbound, message, start_script, start_sink

Factory = Callable[..., Awaitable[Outbound]]
FAST = {"greeting_timeout_seconds": 0.5, "command_timeout_seconds": 0.5,
        "data_init_timeout_seconds": 0.5, "data_block_timeout_seconds": 0.5,
        "data_end_timeout_seconds": 0.5, "connect_timeout_seconds": 2.0}


class Remote:
    """A scripted server: connection N runs ``faults[N]`` (a coroutine that misbehaves at
    some point) or, past the list, a correct minimal SMTP exchange."""

    def __init__(self, faults: list[str], tls: ssl.SSLContext | None = None,
                 ehlo: tuple[str, ...] = ("8BITMIME",)) -> None:
        self.faults = faults
        self.tls = tls
        self.ehlo = ehlo
        self.connections = 0
        self.delivered: list[bytes] = []
        self.commands: list[str] = []
        self.port = 0

    async def start(self) -> Remote:
        self.server, self.port = await start_script(self.session)
        return self

    async def session(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        fault = self.faults[self.connections] if self.connections < len(self.faults) else ""
        self.connections += 1

        async def send(text: str) -> None:
            w.write(text.encode())
            await w.drain()

        if fault == "greeting-stall":
            await asyncio.sleep(5)
            return
        await send("220 mx.remote.example ESMTP\r\n")
        while True:
            line = (await r.readline()).decode()
            if not line:
                return
            self.commands.append(line.strip())
            verb = line[:4].upper()
            if verb in ("EHLO", "HELO"):
                if fault == "garbage":
                    await send("HTTP/1.1 400 Bad Request\r\n\r\n")
                    continue
                if fault == "stall-ehlo":
                    await asyncio.sleep(5)
                    return
                caps = list(self.ehlo)
                if self.tls is not None and w.get_extra_info("sslcontext") is None:
                    caps.append("STARTTLS")
                await send("".join(f"250-{c}\r\n" for c in ["mx.remote.example", *caps[:-1]])
                           + f"250 {caps[-1]}\r\n" if caps else "250 mx\r\n")
            elif verb == "STAR":
                assert self.tls is not None
                # injected: a reply the client must throw away, sent before the handshake
                extra = "250 2.0.0 injected\r\n" if fault == "inject" else ""
                await send("220 2.0.0 ready\r\n" + extra)
                await w.start_tls(self.tls)
            elif verb in ("MAIL", "RCPT", "RSET"):
                await send("250 2.1.0 ok\r\n")
            elif verb == "DATA":
                await send("354 go\r\n")
                data = b""
                while not data.endswith(b"\r\n.\r\n"):
                    chunk = await r.read(65536)
                    if not chunk:
                        return
                    data += chunk
                    if fault == "close-mid-data" and len(data) > 20:
                        w.transport.abort()
                        return
                if fault == "stall-dot":
                    await asyncio.sleep(5)
                    return
                self.delivered.append(data)
                await send("250 2.0.0 real-final-reply\r\n")
            elif verb == "QUIT":
                await send("221 bye\r\n")
                return
            else:
                await send("502 5.5.2 what\r\n")


async def one_message(ob: Outbound, to: str = "x@remote.example") -> None:
    await ob.submit("anna@example.com", [to],
                    message("anna@example.com", to, "fault", "line\r\n.dot line"))


async def check_retried_then_delivered(ob: Outbound, remote: Remote, error: str) -> None:
    await ob.run()
    (row,) = await ob.rows()
    assert row.state == "queued" and row.attempts == 1, row
    assert error in row.last_error, row.last_error
    assert remote.delivered == []
    await ob.advance_to_next()
    (row,) = await ob.rows()
    assert row.state == "delivered", row
    assert len(remote.delivered) == 1
    assert b"\r\n..dot line\r\n" in remote.delivered[0]  # stuffed on the wire


async def test_garbage_reply(outbound_factory: Factory) -> None:
    remote = await Remote(["garbage"]).start()
    ob = await outbound_factory({"remote.example": f"127.0.0.1:{remote.port}"}, **FAST)
    await one_message(ob)
    await check_retried_then_delivered(ob, remote, "protocol error")


async def test_connection_closed_mid_data(outbound_factory: Factory) -> None:
    remote = await Remote(["close-mid-data"]).start()
    ob = await outbound_factory({"remote.example": f"127.0.0.1:{remote.port}"}, **FAST)
    await one_message(ob)
    await check_retried_then_delivered(ob, remote, "connection")


async def test_stalled_server_times_out(outbound_factory: Factory) -> None:
    for fault, text in (("greeting-stall", "timeout"), ("stall-ehlo", "timeout"),
                        ("stall-dot", "timeout")):
        remote = await Remote([fault]).start()
        ob = await outbound_factory({"remote.example": f"127.0.0.1:{remote.port}"}, **FAST)
        await one_message(ob, f"{fault}@remote.example")
        await ob.run()
        (row,) = [r for r in await ob.rows() if r.recipient.startswith(fault)]
        assert row.state == "queued" and text in row.last_error, (fault, row.last_error)
        await ob.app.stop(grace=0)


async def test_response_injected_before_tls_is_discarded(
        outbound_factory: Factory, server_tls: ssl.SSLContext) -> None:
    remote = await Remote(["inject"], tls=server_tls).start()
    ob = await outbound_factory({"remote.example": f"127.0.0.1:{remote.port}"}, **FAST)
    await one_message(ob)
    await ob.run()
    (row,) = await ob.rows()
    assert row.state == "delivered", row.last_error
    assert "real-final-reply" in row.history[-1]["reply"]  # replies stayed in step
    assert row.history[-1]["tls"].startswith("TLS")
    assert len(remote.delivered) == 1
    # after the handshake the client said EHLO again before anything else
    after = remote.commands[remote.commands.index("STARTTLS") + 1]
    assert after.startswith("EHLO")


async def test_tls_required_but_not_offered_waits(outbound_factory: Factory) -> None:
    sink = await start_sink()  # no STARTTLS
    ob = await outbound_factory({"remote.example": {"host": f"127.0.0.1:{sink.port}",
                                                    "require_tls": True}}, **FAST)
    await one_message(ob)
    await ob.run()
    (row,) = await ob.rows()
    assert row.state == "queued" and row.status == "4.7.4"
    assert sink.messages == []  # never in plaintext


async def test_verifier_rejecting_the_peer_defers(outbound_factory: Factory,
                                                   server_tls: ssl.SSLContext) -> None:
    sink = await start_sink(server_tls)
    ob = await outbound_factory({"remote.example": f"127.0.0.1:{sink.port}"}, **FAST)
    seen: list[tuple[int, str]] = []

    def verify(chain: object, host: str) -> str | None:
        assert isinstance(chain, list) and chain and isinstance(chain[0], bytes)
        seen.append((len(chain), host))
        return "no TLSA record matches"

    async def policy(domain: str, mx_host: str, secure: bool) -> TlsRequirement:
        return TlsRequirement("dane", require_tls=True, verify=verify)

    assert ob.app.runner is not None
    ob.app.runner.tls_policy = policy
    await one_message(ob)
    await ob.run()
    (row,) = await ob.rows()
    assert row.state == "queued" and row.status == "4.7.5"
    assert "no TLSA record matches" in row.last_error
    assert seen == [(1, "127.0.0.1")] and sink.messages == []


async def test_smarthost_with_auth_over_tls(outbound_factory: Factory, tmp_path: Path,
                                            server_tls: ssl.SSLContext) -> None:
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server: object, session: object, envelope: object, mechanism: str,
                      data: object) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"relay-pass")

    from aiosmtpd.smtp import SMTP as AioSMTP

    from .conftest import Sink
    sink = Sink()

    def factory() -> AioSMTP:
        return AioSMTP(sink, tls_context=server_tls, authenticator=authenticator,
                       auth_required=True, auth_require_tls=True)

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pw = tmp_path / "relay.pw"
    pw.write_text("relay-pass\n")
    ob = await outbound_factory({"*": {"host": f"127.0.0.1:{port}", "auth_user": "me",
                                       "auth_password_file": str(pw)}})
    await ob.submit("anna@example.com", ["a@one.example", "b@two.example"],
                    message("anna@example.com", "a@one.example"))
    await ob.run()
    assert logins == [(b"me", b"relay-pass")]  # one connection for both domains
    assert sorted(r for m in sink.messages for r in m.rcpt_tos) == [
        "a@one.example", "b@two.example"]
    assert ob.resolver.queries == []  # the smarthost needs no MX lookups
    server.close()


async def test_dsn_parameters_relayed_to_a_dsn_server(outbound_factory: Factory) -> None:
    from mailstack.store import DsnRequest

    remote = await Remote([], ehlo=("PIPELINING", "DSN", "8BITMIME", "SIZE 1000000")).start()
    ob = await outbound_factory({"remote.example": f"127.0.0.1:{remote.port}"})
    blob = await ob.store.put_blob(message("anna@example.com", "x@remote.example"))
    await ob.store.enqueue("anna@example.com", ["x@remote.example"], blob, 100, dsn=DsnRequest(
        ret="HDRS", envid="env 1", rcpt={"x@remote.example": ("SUCCESS,FAILURE",
                                                               "rfc822;x@remote.example")}))
    await ob.run()
    mail = next(c for c in remote.commands if c.startswith("MAIL"))
    rcpt = next(c for c in remote.commands if c.startswith("RCPT"))
    assert "RET=HDRS" in mail and "ENVID=env+201" in mail and "SIZE=" in mail
    assert "NOTIFY=SUCCESS,FAILURE" in rcpt and "ORCPT=rfc822;x@remote.example" in rcpt
    (row,) = await ob.rows()
    assert row.state == "delivered" and row.report_action == ""
    await ob.run()
    assert await ob.inbox("anna@example.com") == []  # the DSN server reports, not us


async def test_connection_reuse_and_caps(outbound_factory: Factory) -> None:
    sink = await start_sink()
    ob = await outbound_factory({"remote.example": f"127.0.0.1:{sink.port}"},
                                max_connections_per_destination=1,
                                max_messages_per_connection=2)
    assert ob.app.runner is not None
    await ob.app.runner.stop()  # only the pass below: all five rows in one claim
    blob_ids = []
    for n in range(5):
        blob_ids.append(await ob.store.put_blob(message(
            "anna@example.com", "x@remote.example", f"m{n}")))
    for b in blob_ids:
        await ob.store.enqueue("anna@example.com", ["x@remote.example"], b, 100)
    await ob.run()
    assert len(sink.messages) == 5
    assert sink.connections == 3  # 2 + 2 + 1 messages, RSET between


async def test_message_larger_than_the_next_hops_size_fails_5_3_4(
        outbound_factory: Factory) -> None:
    remote = await Remote([], ehlo=("SIZE 50", "8BITMIME")).start()
    ob = await outbound_factory({"remote.example": f"127.0.0.1:{remote.port}"})
    await one_message(ob)
    await ob.run()
    rows = [r for r in await ob.rows() if r.recipient == "x@remote.example"]
    assert [(r.state, r.status) for r in rows] == [("failed", "5.3.4")]
    assert not any(c.startswith("MAIL") for c in remote.commands)  # not even tried
    (report,) = await ob.inbox("anna@example.com")
    assert "exceeds the limit 50" in report.as_string()


async def test_queue_stats_for_metrics(outbound_factory: Factory) -> None:
    remote = await Remote(["garbage"]).start()
    ob = await outbound_factory({"remote.example": f"127.0.0.1:{remote.port}"}, **FAST)
    await one_message(ob)
    await ob.run()
    ob.clock.now += 120
    stats = await ob.store.queue_stats()
    assert stats.waiting == 1 and stats.oldest_age == 120
    assert ob.app.runner is not None
    assert ob.app.runner.counters["deferred"] == 1
    assert ob.app.runner.counters["attempts"] == 1


async def test_control_characters_in_a_queued_address_are_never_sent(
        outbound_factory: Factory) -> None:
    remote = await Remote([]).start()
    ob = await outbound_factory({"remote.example": f"127.0.0.1:{remote.port}"})
    blob = await ob.store.put_blob(message("anna@example.com", "x@remote.example"))
    evil = "x>\r\nRCPT TO:<evil@remote.example"
    await ob.store.enqueue("anna@example.com", [evil, "ok@remote.example"], blob, 100)
    await ob.run()
    rows = {r.recipient: r for r in await ob.rows()}
    assert rows["ok@remote.example"].state == "delivered"
    bad = rows[evil]
    assert bad.state == "failed" and bad.status == "5.1.3"
    assert not any("evil" in c for c in remote.commands)
