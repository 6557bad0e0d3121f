"""One SMTP session: aiosmtpd's protocol class with our commands (RFC 5321, 3207, 4954).

aiosmtpd gives the connection plumbing (command loop, timeouts, the STARTTLS
transport switch). Every command whose meaning is policy is replaced here and asks
``mailstack.policy`` for the verdict; nothing here decides who may send what.

Implementation notes (invariants):
- STARTTLS (RFC 3207 §4.2): whatever the client pipelined after the STARTTLS line is
  dropped before the first command under TLS, and the session is reset (new
  ``Session``: no EHLO name, no AUTH; new ``Envelope``). aiosmtpd clears the reader
  buffer in ``connection_made``; ``_after_tls`` does it again explicitly, so the
  guarantee does not rest on a library detail (tests/smtp/test_hostile.py, STARTTLS injection).
- Per-state rules are checked once per command in ``_gate``: 587 refuses everything
  but EHLO/NOOP/STARTTLS/QUIT before TLS (530 5.7.0); submission refuses MAIL before
  AUTH (530 5.7.0, RFC 6409 §4.3); MAIL/RCPT/DATA need EHLO/HELO first.
- Transaction state lives on the ``Envelope`` (reset by RSET, EHLO, HELO, after DATA
  and after STARTTLS); login state lives on the ``Session`` (reset by STARTTLS only).
- No password is read unless ``may_send_password`` allows it on this connection.
- BDAT (RFC 3030): length-framed, so there is no end marker to smuggle; the chunk
  octets are always consumed, also when the chunk is refused (no MAIL/RCPT, past the
  size limit, after a failed chunk), so message bytes are never read as commands; the
  size limit is checked on the announced chunk size before reading; a BDAT whose size
  cannot be parsed ends the session (the framing is lost). DATA after BDAT in one
  transaction is 503. The content goes through the same checks as DATA (bare CR/LF,
  line length, headers, MIME depth, From: on submission). Exception: on 587 before
  STARTTLS aiosmtpd refuses BDAT itself (530) without consuming its chunk.
- A password change (``CredentialsChanged`` with a newer epoch), the deletion of the
  logged-in address or the revocation of the credential the session used (its app
  password; the password when "app passwords only" is turned on) ends the session with
  ``421 4.7.0`` (docs/behaviour.md §2), via a watcher task on its own event
  subscription, so an idle connection is cut too; a message being stored at that
  moment still gets its reply first. A grant change (``SendersChanged``) makes the
  session read what it may send as again.
- Three kinds of error per command: syntax (5xx from the parsers), a policy refusal
  (the verdict's reply), a server error (logged, ``451 4.3.0``; see ``handle_exception``).
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import logging
import re
import secrets
from base64 import b64decode
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from .. import metrics
from ..logs import conn_event, new_session_id
from ..mime import exceeds_depth
from ..policy.auth import credential_holds, may_send_password, session_ended_by
from ..policy.envelope import (
    AddressError,
    EnvelopeAddress,
    MailFrom,
    RcptParams,
    check_helo_name,
    parse_mail_from,
    parse_rcpt_to,
)
from ..policy.headers import (
    HeaderError,
    MessageLimits,
    TlsInfo,
    check_message,
    extract_from_addresses,
)
from ..policy.limits import check_daily_limit, check_recipient_cap
from ..policy.quota import rcpt_reply
from ..policy.relay import (
    RcptVerdict,
    check_envelope_sender,
    check_header_senders,
    route_recipient,
)
from ..policy.submission import msa_additions
from ..store import Address, Resync, SendersChanged, Subscription, Unavailable
from . import replies
from .data import DataState, read_data
from .delivery import Transaction, accept
from .directory import StoreDirectory, allowed_senders, postmaster_domain
from .spool import BIG_WORK, MessageContent, MessageSink

if TYPE_CHECKING:
    from .server import SmtpFrontEnd

log = logging.getLogger("mailstack.smtp")

DAY = 86400.0
# RFC 3207 §4: before TLS on a STARTTLS-required port only these may run.
BEFORE_STARTTLS = frozenset({"EHLO", "NOOP", "STARTTLS", "QUIT"})
NEEDS_HELO = frozenset({"MAIL", "RCPT", "DATA", "BDAT", "AUTH"})
INLINE_MIME_CHECK = 256 * 1024  # octets; larger messages are MIME-checked in a thread


class MSession(Session):
    """Login state; survives RSET, dropped by STARTTLS (a new MSession is made)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.address_id: int | None = None
        self.email: str = ""
        self.plan: str = ""
        self.allowed: tuple[str, ...] = ()
        self.auth_failures = 0


class MEnvelope(Envelope):
    """One mail transaction (RFC 5321 §3.3)."""

    def __init__(self) -> None:
        super().__init__()
        self.mail: MailFrom | None = None
        self.recipients: list[EnvelopeAddress] = []
        self.verdicts: list[RcptVerdict] = []
        self.rcpt_params: list[RcptParams] = []  # DSN NOTIFY/ORCPT per recipient
        self.size_limit: int = 0
        self.directory: StoreDirectory | None = None  # per transaction: domain cache
        self.sink: MessageSink | None = None  # BDAT chunks received so far (RFC 3030 §2)
        self.chunked_size = 0
        self.chunking = False  # a BDAT was seen: DATA is refused in this transaction


class _NoHooks:
    """aiosmtpd wants a handler object; every hook is a method of MailstackSMTP."""


class MailstackSMTP(SMTP):
    def __init__(self, fe: SmtpFrontEnd, counted_ip: str | None = None) -> None:
        """``counted_ip``: the TLS gate of an implicit-TLS listener already counted
        this connection (at accept time); it is released when the connection ends."""
        self.fe = fe
        s = fe.services.settings.smtp
        # Read by SMTP.__init__ for its StreamReader limit: the longest line (CRLF
        # included) plus the transparency dot (RFC 5321 §4.5.3.1.6, §4.5.2).
        self.line_length_limit = s.max_line_length + 1
        super().__init__(
            _NoHooks(), data_size_limit=fe.max_size, enable_SMTPUTF8=True,
            decode_data=False, hostname=fe.services.hostname,
            ident=replies.GREETING_IDENT,
            tls_context=fe.services.server_ssl if fe.listener.tls == "starttls" else None,
            require_starttls=fe.starttls_required, timeout=s.command_timeout,
            auth_required=False, auth_require_tls=False, loop=asyncio.get_running_loop())
        # aiosmtpd keeps these limits in a class-level dict that EHLO grows forever;
        # ours are per instance and fixed (RFC 5321 §4.5.3.1.4, raised for ESMTP params).
        self.command_size_limit = s.max_line_length - 2
        self.command_size_limits = defaultdict(lambda: s.max_line_length - 2)
        self.session: MSession | None = None
        self.envelope: MEnvelope | None = None
        self._counted_ip: str | None = counted_ip
        self._refused = False
        self._watcher: asyncio.Task[None] | None = None
        self._watch_sub: Subscription | None = None
        self._storing: asyncio.Future[None] | None = None
        # the connection's log lines (mailstack.logs.conn_event)
        self.session_id = new_session_id()
        self.end_reason = "lost"  # QUIT, timeout or shutdown say otherwise
        self.login = ""
        self.tls_version = ""  # set when TLS is up (implicit, or after STARTTLS)

    # --- plumbing ---------------------------------------------------------------------
    def _create_session(self) -> MSession:
        return MSession(self.loop)

    def _create_envelope(self) -> MEnvelope:
        return MEnvelope()

    @property
    def sess(self) -> MSession:
        if self.session is None:  # AttributeError: inspect.getmembers() skips it
            raise AttributeError("no session yet")
        return self.session

    @property
    def env(self) -> MEnvelope:
        if self.envelope is None:
            raise AttributeError("no envelope yet")
        return self.envelope

    @property
    def client_ip(self) -> str:
        peer = self.sess.peer
        return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)

    def _ssl_object(self) -> Any:
        return self.transport.get_extra_info("ssl_object") if self.transport else None

    @property
    def tls_active(self) -> bool:
        return self._tls_protocol is not None or self._ssl_object() is not None

    def tls_info(self) -> TlsInfo | None:
        obj = self._ssl_object()
        if obj is None:
            return None
        cipher = obj.cipher()
        return TlsInfo(obj.version() or "", cipher[0] if cipher else "",
                       cipher[2] if cipher else None)

    @property
    def password_allowed(self) -> bool:
        if self.fe.starttls_required and not self.tls_active:
            return False
        return may_send_password(self.tls_active, self.client_ip,
                                 self.fe.services.settings.server.allow_plaintext_auth_on_loopback)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None and self._original_transport is None
        if first:
            if self._counted_ip is None:  # implicit TLS (465) was counted before TLS
                peer = transport.get_extra_info("peername")
                ip = str(peer[0]) if peer else "?"
                verdict = self.fe.connections.acquire(ip)
                if not verdict.allowed:  # RFC 5321 §3.8: 421 and close
                    self._refused = True
                    conn_event(self.fe.name, self.session_id, ip, "refused",
                               result="too many connections")
                    transport.write(f"{verdict.reply}\r\n".encode())  # type: ignore[attr-defined]
                    transport.close()
                    return
                self._counted_ip = ip
            self.fe.sessions.add(self)
            metrics.connection_opened(self.fe.name)
            self.tls_version = _tls_version(transport)
            conn_event(self.fe.name, self.session_id, self._counted_ip, "connect",
                       tls=self.tls_version)
        super().connection_made(transport)
        if not first:
            self.tls_version = _tls_version(transport)
            self._after_tls()

    def _set_post_data_state(self) -> None:
        """A transaction ends (RSET, EHLO, DATA done, STARTTLS, connection lost): the
        BDAT chunks it held go (memory and spool file), and so does their share of the
        message budget."""
        self._drop_chunks()
        super()._set_post_data_state()

    def _drop_chunks(self) -> None:
        env = self.envelope
        if isinstance(env, MEnvelope) and env.sink is not None:
            env.sink.abort()
            env.sink = None

    def _new_sink(self, max_size: int) -> MessageSink:
        """Where one message's octets go (smtp/spool.py): memory, then a spool file."""
        s = self.fe.services.settings.smtp
        return MessageSink(self.fe.services.message_budget, max_size=max_size,
                           max_line=s.max_line_length, threshold=s.spool_threshold_bytes,
                           spool_dir=self.fe.services.store.spool_dir(),
                           head_limit=s.max_header_bytes + 2 * s.max_line_length)

    def _after_tls(self) -> None:
        # RFC 3207 §4.2: discard pipelined plaintext; the session starts over.
        self._reader._buffer.clear()  # type: ignore[attr-defined]
        self._set_rset_state()
        self._stop_watcher()  # a new session: any earlier login is gone

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._counted_ip is not None:
            self.fe.connections.release(self._counted_ip)
            conn_event(self.fe.name, self.session_id, self._counted_ip, "close",
                       tls=self.tls_version, login=self.login, result=self.end_reason)
            self._counted_ip = None
            metrics.connection_closed(self.fe.name)
            self.fe.services.handshakes.trimmer.note_closed()
        self.fe.sessions.discard(self)
        self._stop_watcher()
        self._drop_chunks()
        super().connection_lost(error)

    # --- the login's credentials (docs/behaviour.md §2) -------------------------------
    def _stop_watcher(self) -> None:
        if self._watcher is not None and self._watcher is not asyncio.current_task():
            self._watcher.cancel()
        self._watcher = None
        if self._watch_sub is not None:
            self._watch_sub.close()
            self._watch_sub = None

    async def _watch_credentials(self, sub: Subscription, epoch: int,
                                 credential: int) -> None:
        """End the session when the credential it logged in with stops working (a new
        password, the address gone, its app password revoked, "app passwords only" for
        a password login); read what it may send as again when a grant changes."""
        store = self.fe.services.store
        while True:
            ev = await sub.queue.get()
            if session_ended_by(ev, epoch, credential):
                break
            try:
                if isinstance(ev, Resync):  # events may have been missed: read again
                    addr = await store.get_address_by_id(self.sess.address_id or 0)
                    if not await credential_holds(store, addr, epoch, credential):
                        break
                if isinstance(ev, SendersChanged | Resync) and self.sess.email:
                    self.sess.allowed = await allowed_senders(store, self.sess.email)
            except Unavailable as exc:
                log.warning("smtp %s: cannot re-read %s: %s", self.client_ip,
                            self.sess.email, exc)
        sub.close()
        log.info("smtp %s: credentials of %s changed; closing the session",
                 self.client_ip, self.sess.email)
        if self._storing is not None:  # a message being stored gets its reply first
            await asyncio.shield(self._storing)
            await asyncio.sleep(0)
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.write(  # type: ignore[attr-defined]
                    f"{replies.CREDENTIALS_CHANGED}\r\n".encode())
                self.transport.close()

    def _timeout_cb(self) -> None:
        self.end_reason = "timeout"
        if self.transport is not None:
            self.transport.write(f"{replies.TIMEOUT}\r\n".encode())  # type: ignore[attr-defined]
        super()._timeout_cb()

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            status = replies.sanitize(status)
            if not status.startswith(f"220 {self.hostname} "):  # the greeting stays bare
                status = replies.with_enhanced(status)
        metrics.smtp_reply(status)
        await super().push(status)

    async def _push_raw(self, lines: list[str]) -> None:
        """Lines that must not get an enhanced code (EHLO/HELO replies, RFC 2034 §3)."""
        for line in lines:
            await super().push(replies.sanitize(line))

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, Unavailable):  # one line per failure, no traceback
            log.error("smtp %s: store unavailable: %s", self.client_ip, error)
            self._set_rset_state()
            return replies.store_failure(error)
        log.exception("smtp %s: server error", self.client_ip)
        self._set_rset_state()
        return replies.TEMP_FAILURE

    async def _gate(self, command: str) -> bool:
        """Per-state check, once per command; True if the command may run."""
        if command in NEEDS_HELO and not self.sess.host_name:
            await self.push(replies.NEED_EHLO)
            return False
        return True

    # --- greeting commands (RFC 5321 §4.1.1.1) ----------------------------------------
    async def _helo(self, arg: str | None, extended: bool) -> bool:
        try:
            name = check_helo_name(arg or "")
        except AddressError as exc:
            await self.push(exc.reply)
            return False
        self._set_rset_state()
        self.sess.extended_smtp = extended
        self.sess.host_name = name.name
        return True

    async def smtp_HELO(self, arg: str | None) -> None:
        if await self._helo(arg, False):
            await self._push_raw([f"250 {self.hostname}"])

    async def smtp_EHLO(self, arg: str | None) -> None:
        if not await self._helo(arg, True):
            return
        caps = [self.hostname, "PIPELINING", f"SIZE {self.fe.max_size}", "8BITMIME",
                "ENHANCEDSTATUSCODES", "SMTPUTF8", "CHUNKING", "DSN"]
        if self.tls_context is not None and not self.tls_active:
            caps.append("STARTTLS")  # RFC 3207 §4: only before TLS
        if self.password_allowed:
            caps.append("AUTH PLAIN LOGIN")  # RFC 4954 §4: only where a password may go
        caps.append("HELP")
        await self._push_raw([f"250-{c}" for c in caps[:-1]] + [f"250 {caps[-1]}"])

    async def smtp_STARTTLS(self, arg: str | None) -> None:
        if arg:
            await self.push("501 5.5.4 Syntax: STARTTLS")
        elif self.tls_active:
            await self.push(replies.TLS_ACTIVE)
        elif self.tls_context is None:
            await self.push(replies.TLS_UNAVAILABLE)
        else:
            await super().smtp_STARTTLS(arg)

    async def smtp_NOOP(self, arg: str | None) -> None:
        await self.push(replies.OK)

    async def smtp_RSET(self, arg: str | None) -> None:
        if arg:
            await self.push("501 5.5.4 Syntax: RSET")
            return
        self._set_rset_state()
        await self.push(replies.OK)

    async def smtp_QUIT(self, arg: str | None) -> None:
        self.end_reason = "quit"
        await super().smtp_QUIT(None)  # RFC 5321 §4.1.1.10: arguments are ignored

    async def smtp_VRFY(self, arg: str | None) -> None:
        # RFC 5321 §3.5.3: 252 without revealing whether the address exists.
        await self.push("252 2.5.0 Cannot VRFY user, but will accept message for delivery")

    async def smtp_EXPN(self, arg: str | None) -> None:
        await self.push("502 5.5.1 EXPN not available")

    async def smtp_HELP(self, arg: str | None) -> None:
        await self.push("214 2.0.0 See RFC 5321; commands: EHLO HELO STARTTLS AUTH MAIL "
                        "RCPT DATA BDAT RSET NOOP QUIT")

    # --- AUTH (RFC 4954; PLAIN RFC 4616; LOGIN) ---------------------------------------
    async def smtp_AUTH(self, arg: str | None) -> None:
        if not await self._gate("AUTH"):
            return
        if not self.sess.extended_smtp:
            await self.push(replies.NEED_EHLO)
            return
        if not self.password_allowed:
            await self.push(replies.AUTH_ENCRYPTION)
            return
        if self.sess.address_id is not None:
            await self.push(replies.AUTH_ALREADY)
            return
        if self.env.mail is not None:
            await self.push(replies.AUTH_IN_TRANSACTION)
            return
        args = (arg or "").split()
        if not args or len(args) > 2:
            await self.push("501 5.5.4 Syntax: AUTH mechanism [initial-response]")
            return
        mechanism, initial = args[0].upper(), (args[1] if len(args) == 2 else None)
        reader = AUTH_MECHANISMS.get(mechanism)
        if reader is None:
            await self.push(replies.AUTH_MECHANISM)
            return
        creds = await reader(self, initial)
        if creds is None:
            return  # the reader already answered (abort, bad base64, ...)
        authzid, user, secret = creds
        result = await self.fe.services.auth.authenticate(
            user, secret, client_ip=self.client_ip, protocol="smtp", authzid=authzid or None)
        if result.status == "refused":
            await self.push(f"454 4.7.0 {result.refusal_text()}")
            return
        if not result.ok:
            self.sess.auth_failures += 1
            if self.sess.auth_failures >= self.fe.max_auth_failures:
                await self.push(replies.AUTH_TOO_MANY)
                if self.transport is not None:
                    self.transport.close()
                return
            await self.push(replies.AUTH_INVALID)
            return
        store = self.fe.services.store
        sub = store.events.subscribe(result.address_id)
        # read after subscribing: a password change in between is not missed
        addr = await store.get_address_by_id(result.address_id)
        if addr is None or not await credential_holds(store, addr, result.credential_epoch,
                                                      result.credential):
            sub.close()
            await self.push(replies.AUTH_INVALID)
            return
        self._stop_watcher()
        self._watch_sub = sub
        self._watcher = asyncio.create_task(
            self._watch_credentials(sub, addr.credential_epoch, result.credential))
        self.sess.address_id = addr.id
        self.sess.email = self.login = addr.email
        self.sess.plan = addr.plan
        self.sess.allowed = await allowed_senders(self.fe.services.store, addr.email)
        self.sess.authenticated = True
        await self.push(replies.AUTH_OK)

    async def _sasl_line(self, challenge: str) -> bytes | None:
        """Send ``334 challenge``, read one response line, base64-decode it."""
        await super().push(f"334 {challenge}")
        try:
            line = await self._reader.readline()
        except ValueError:  # longer than the stream limit (asyncio drops it)
            await self.push(replies.LINE_TOO_LONG)
            return None
        return await self._decode_b64(line.strip())

    async def _decode_b64(self, blob: bytes) -> bytes | None:
        if blob == b"*":  # RFC 4954 §4: the client cancels
            await self.push(replies.AUTH_ABORTED)
            return None
        if blob == b"=":  # RFC 4954 §4: an empty initial response
            return b""
        try:
            return b64decode(blob, validate=True)
        except (binascii.Error, ValueError):
            await self.push(replies.AUTH_BAD_BASE64)
            return None

    async def _auth_plain(self, initial: str | None) -> tuple[str, str, str] | None:
        if initial is None:
            raw = await self._sasl_line("")
        else:
            raw = await self._decode_b64(initial.encode("ascii", "replace"))
        if raw is None:
            return None
        parts = raw.split(b"\0")
        if len(parts) != 3:  # RFC 4616 §2: [authzid] NUL authcid NUL passwd
            await self.push(replies.AUTH_MALFORMED)
            return None
        try:
            authzid, user, secret = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError:
            await self.push(replies.AUTH_MALFORMED)
            return None
        return authzid, user, secret

    async def _auth_login(self, initial: str | None) -> tuple[str, str, str] | None:
        if initial is None:
            user_b = await self._sasl_line("VXNlcm5hbWU6")  # "Username:"
        else:
            user_b = await self._decode_b64(initial.encode("ascii", "replace"))
        if user_b is None:
            return None
        secret_b = await self._sasl_line("UGFzc3dvcmQ6")  # "Password:"
        if secret_b is None:
            return None
        try:
            return "", user_b.decode("utf-8"), secret_b.decode("utf-8")
        except UnicodeDecodeError:
            await self.push(replies.AUTH_MALFORMED)
            return None

    # --- the mail transaction (RFC 5321 §3.3) -----------------------------------------
    def _plan_size(self) -> int:
        if self.sess.address_id is not None:
            return min(self.fe.max_size,
                       self.fe.services.settings.plan(self.sess.plan).max_message_size)
        return self.fe.max_size

    def _room_for(self, size: int) -> bool:
        """Enough free disk for a new message (docs/behaviour.md §12: like Postfix's
        queue_minfree, the check happens at MAIL, before any data is sent)."""
        minimum = self.fe.services.settings.smtp.min_free_bytes
        if minimum <= 0:
            return True
        try:
            free = self.fe.services.store.free_bytes()
        except OSError as exc:
            log.warning("smtp: cannot check free space: %s", exc)
            return True
        if free < minimum + size:
            log.warning("smtp %s: refusing mail, %d bytes free (minimum %d + size %d)",
                        self.client_ip, free, minimum, size)
            return False
        return True

    async def smtp_MAIL(self, arg: str | None) -> None:
        if not await self._gate("MAIL"):
            return
        if self.env.mail is not None:
            await self.push(replies.NESTED_MAIL)
            return
        if self.fe.role == "submission" and self.sess.address_id is None:
            await self.push(replies.AUTH_REQUIRED)  # RFC 6409 §4.3
            return
        limit = self._plan_size()
        try:
            mail = parse_mail_from(arg or "", max_size=limit, dsn_enabled=True)
        except AddressError as exc:
            await self.push(exc.reply)
            return
        if self.sess.address_id is not None:
            verdict = check_envelope_sender(mail.sender, self.sess.allowed)
            if not verdict.allowed:
                await self.push(verdict.reply)
                return
        if not self._room_for(mail.params.size or 0):
            await self.push(replies.NO_STORAGE)  # RFC 3463 §3.4 X.3.1, early
            return
        self.env.mail = mail
        self.env.mail_from = str(mail.sender) if mail.sender else "<>"
        self.env.smtp_utf8 = mail.params.smtputf8
        self.env.size_limit = limit
        await self.push("250 2.1.0 Sender OK")

    async def smtp_RCPT(self, arg: str | None) -> None:
        if not await self._gate("RCPT"):
            return
        mail = self.env.mail
        if mail is None:
            await self.push(replies.NEED_MAIL)
            return
        try:
            postmaster = None
            if "@" not in (arg or ""):  # RFC 5321 §4.1.1.3: <Postmaster> without domain
                postmaster = await postmaster_domain(self.fe.services.store,
                                                     self.fe.services.hostname)
            parsed = parse_rcpt_to(arg or "", smtputf8=mail.params.smtputf8,
                                   dsn_enabled=True, postmaster_domain=postmaster)
            rcpt = parsed.recipient
        except AddressError as exc:
            await self.push(exc.reply)
            return
        settings = self.fe.services.settings
        authed = self.sess.address_id is not None
        plan = settings.plan(self.sess.plan if authed else settings.smtp.default_plan)
        n = len(self.env.recipients) + 1
        cap = check_recipient_cap(n, plan.max_recipients_per_message)
        if not cap.allowed:  # RFC 5321 §4.5.3.1.10
            await self.push(cap.reply)
            return
        store = self.fe.services.store
        if authed:
            assert self.sess.address_id is not None
            now = self.fe.services.clock()
            history = await store.sends_since(self.sess.address_id, now - DAY)
            daily = check_daily_limit(history, plan.daily_recipients, now, 1,
                                      pending=len(self.env.recipients))
            if not daily.ok:
                await self.push(daily.reply)
                return
        directory = self.env.directory
        if directory is None:
            directory = self.env.directory = StoreDirectory(store)
        if not rcpt.is_literal:
            await directory.prefetch(rcpt.domain, rcpt.key)
        verdict = await route_recipient(rcpt, authed, directory)
        if not verdict.accepted:
            await self.push(verdict.reply)
            return
        full = await self._mailbox_full(verdict.mailboxes, directory)  # RFC 9208 quotas
        if full is not None:
            await self.push(full)
            return
        if not authed:
            # Mail from the internet: the recipient domain's plan bounds the size.
            domain = await directory.domain(rcpt.domain)
            if domain is not None:
                size = settings.plan(domain.plan).max_message_size
                if mail.params.size is not None and mail.params.size > size:
                    await self.push(f"552 5.3.4 Message size exceeds the maximum of {size} "
                                    f"octets for <{rcpt}>")
                    return
                self.env.size_limit = min(self.env.size_limit, size)
        self.env.recipients.append(rcpt)
        self.env.verdicts.append(verdict)
        self.env.rcpt_params.append(parsed.params)
        self.env.rcpt_tos.append(str(rcpt))
        await self.push("250 2.1.5 Recipient OK")

    async def _mailbox_full(self, keys: tuple[str, ...], directory: StoreDirectory
                            ) -> str | None:
        """452 4.2.2 (or 552 5.2.2) when a hosted mailbox of this recipient is at or
        over its plan's storage quota (RFC 3463 §3.3)."""
        settings = self.fe.services.settings
        for key in keys:
            addr = await directory.get_address(key)
            if not isinstance(addr, Address):
                continue
            plan = settings.plan(addr.plan)
            if not plan.storage_quota and not plan.message_quota:
                continue
            used_bytes, used_msgs = await directory.quota_usage(addr.id)
            reply = rcpt_reply(key, used_bytes, used_msgs, plan.storage_quota,
                               plan.message_quota, settings.quota.over_quota_permanent)
            if reply is not None:
                return reply
        return None

    async def smtp_DATA(self, arg: str | None) -> None:
        if not await self._gate("DATA"):
            return
        if self.env.mail is None:
            await self.push(replies.NEED_MAIL)
            return
        if not self.env.recipients:
            await self.push(replies.NEED_RCPT)
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        if self.env.chunking:  # RFC 3030 §2: DATA and BDAT never in one transaction
            await self.push(replies.DATA_AFTER_BDAT)
            return
        s = self.fe.services.settings.smtp
        await self.push(replies.DATA_START)
        self._reset_timeout(s.data_timeout)
        sink = self._new_sink(self.fe.max_size)
        result = await read_data(self._reader, self.fe.max_size, s.max_line_length,
                                 sink=sink)
        self._reset_timeout()
        try:
            reply = await self._finish_data(result.state, result.message, result.size)
        finally:
            sink.release()
            result.message.discard()  # a spool file not taken by the store
        self._set_rset_state()
        await self.push(reply)

    async def smtp_BDAT(self, arg: str | None) -> None:
        """RFC 3030 §2: ``BDAT <chunk-size> [LAST]`` followed by exactly chunk-size
        octets. The octets are always consumed (refused chunks are read and dropped in
        bounded pieces), so the byte stream never gets out of step; a chunk that would
        take the message past its size limit is refused before any of it is kept."""
        match = BDAT_ARG.fullmatch(arg or "")
        if match is None:
            # Without a size the framing is lost: what follows cannot be told apart
            # from commands, so the session ends (never run message bytes as commands).
            await self.push("501 5.5.4 Syntax: BDAT chunk-size [LAST]")
            if self.transport is not None:
                self.transport.close()
            return
        size, last = int(match.group(1)), match.group(2) is not None
        s = self.fe.services.settings.smtp
        env = self.env
        refusal: str | None = None
        if not self.sess.host_name or not self.sess.extended_smtp:
            refusal = replies.NEED_EHLO  # an ESMTP extension: EHLO, not HELO
        elif env.mail is None:
            refusal = replies.NEED_MAIL
        elif not env.recipients:
            refusal = replies.NEED_RCPT
        elif env.chunked_size + size > min(env.size_limit, self.fe.max_size):
            refusal = (f"552 5.3.4 Message exceeds the maximum size of {env.size_limit} "
                       "octets")
        self._reset_timeout(s.data_timeout)
        if refusal is not None:
            await _discard(self._reader, size)
            self._reset_timeout()
            # RFC 3030 §2: after a failed chunk the transaction is over; later chunks
            # already in the pipeline are read and refused (no MAIL any more).
            self._set_rset_state()
            await self.push(refusal)
            return
        # Released with the transaction (_set_post_data_state); read in pieces, so a
        # big chunk goes to the spool file as it arrives (smtp/spool.py).
        sink = env.sink
        if sink is None:
            sink = env.sink = self._new_sink(min(env.size_limit, self.fe.max_size))
        left = size
        while left > 0:
            piece = await self._reader.read(min(left, DISCARD_PIECE))
            if not piece:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(piece)
            await sink.feed(piece)
        self._reset_timeout()
        env.chunking = True
        env.chunked_size += size
        if not sink.ok:
            # RFC 3030 §2: after a failed chunk the transaction is over.
            state = sink.state
            self._set_rset_state()
            await self.push(replies.NO_STORAGE if state is DataState.NO_MEMORY else
                            f"552 5.3.4 Message exceeds the maximum size of "
                            f"{self.fe.max_size} octets")
            return
        if not last:
            await self.push(f"250 2.0.0 {size} octets received")
            return
        message = await sink.finish()
        try:
            reply = await self._finish_data(sink.state, message, env.chunked_size)
        finally:
            sink.release()
            message.discard()
        self._set_rset_state()
        await self.push(reply)

    async def _finish_data(self, state: DataState, message: MessageContent, size: int
                           ) -> str:
        """The end of DATA/BDAT: refusals by how the transfer went, the content checks,
        the sender checks, then ``accept`` (durable store, then the reply). ``message``
        is in memory or spooled (smtp/spool.py); the caller removes a spool file that
        was not taken over by the store."""
        env, sess = self.env, self.sess
        s = self.fe.services.settings.smtp
        if state is DataState.TOO_BIG or size > env.size_limit:
            return f"552 5.3.4 Message exceeds the maximum size of {env.size_limit} octets"
        if state is DataState.NO_MEMORY:
            return replies.NO_STORAGE
        if state is DataState.LINE_TOO_LONG:
            return f"554 5.6.0 Line longer than {s.max_line_length} octets (RFC 5321 §4.5.3.1.6)"
        refusal = await self._check_content(message)
        if refusal is not None:
            return refusal
        content = message.data if message.data is not None else b""
        extra = b""  # header lines the server adds in front (submission, RFC 6409 §8)
        if sess.address_id is not None:  # docs/behaviour.md §4: From: must be a sendable address
            if self.fe.role == "submission":
                # RFC 6409 §8: Date, Message-ID and (for a minimal client) From are added.
                extra = msa_additions(
                    message.head, login=sess.email, hostname=self.hostname,
                    now=self.fe.services.clock(),
                    unique=f"{self.fe.make_id()}.{secrets.token_hex(6)}")
            if extra and not message.spooled:
                content, extra = extra + content, b""
            try:
                froms = extract_from_addresses(
                    content if not message.spooled else extra + message.head)
            except HeaderError as exc:
                return exc.reply
            verdict = check_header_senders([f.address for f in froms], sess.allowed)
            if not verdict.allowed:
                return verdict.reply
        assert env.mail is not None
        queue_id = self.fe.make_id()
        auth = None
        if self.fe.sender_auth is not None and sess.address_id is None:
            # docs/behaviour.md §5 "sender authentication" (smtp/senderauth.py). A spooled
            # message is read whole for DKIM, one big message at a time; its forged
            # results are removed when its header is rewritten (delivery.accept).
            if message.spooled:
                async with BIG_WORK:
                    auth = await self.fe.sender_auth.check(
                        content=await message.read(), client_ip=self.client_ip,
                        helo=sess.host_name, sender=env.mail.sender, verdicts=env.verdicts,
                        queue_id=queue_id)
            else:
                auth = await self.fe.sender_auth.check(
                    content=content, client_ip=self.client_ip, helo=sess.host_name,
                    sender=env.mail.sender, verdicts=env.verdicts, queue_id=queue_id)
                content = auth.content
            if auth.reply is not None:
                return auth.reply
        tx = Transaction(
            queue_id=queue_id, helo=sess.host_name, esmtp=sess.extended_smtp,
            client_ip=self.client_ip, tls=self.tls_info(), sender=env.mail.sender,
            smtputf8=env.mail.params.smtputf8, recipients=list(env.recipients),
            verdicts=list(env.verdicts), content=content, auth_address_id=sess.address_id,
            mail_params=env.mail.params, rcpt_params=list(env.rcpt_params),
            trace=auth.trace if auth else b"", client_host=auth.client_host if auth else None,
            junk=auth.junk if auth else frozenset(),
            strip_forged=auth is not None,
            spooled=message if message.spooled else None, added_header=extra)
        done: asyncio.Future[None] = self.loop.create_future()
        self.fe.in_flight.add(done)
        self._storing = done
        try:
            return await accept(self.fe.services, tx, self.fe.signer)
        finally:
            done.set_result(None)
            self.fe.in_flight.discard(done)
            self._storing = None

    async def _check_content(self, message: MessageContent) -> str | None:
        """The refusal for content that breaks the rules (RFC 5321 §2.3.8, §4.5.3.1.6,
        header limits, MIME depth), or None. A spooled message was checked piece by
        piece while it arrived; its header limits are checked on the head."""
        s = self.fe.services.settings.smtp
        limits = MessageLimits(max_line=s.max_line_length, max_header_fields=s.max_header_lines,
                               max_header_bytes=s.max_header_bytes)
        if message.data is not None:
            content = message.data
            check = check_message(content, limits)
            if not check.ok:
                return check.reply
            # Linear, ~1 µs per KiB: small messages are checked on the loop (a thread hop
            # costs more than the check); big ones in a thread, so the loop never stalls.
            if (exceeds_depth(content, s.max_mime_depth) if len(content) <= INLINE_MIME_CHECK
                    else await asyncio.to_thread(exceeds_depth, content, s.max_mime_depth)):
                return f"554 5.6.0 MIME parts nested deeper than {s.max_mime_depth} levels"
            return None
        if message.defect is not None:
            return message.defect.reply
        head = message.head
        if len(head) < message.size:  # only whole lines: the cut is not a line of its own
            head = head[:head.rfind(b"\r\n") + 2]
        check = check_message(head, limits)
        if not check.ok:
            return check.reply
        if message.content_types * 2 + 2 >= s.max_mime_depth:
            # Enough Content-Type fields to reach the limit: parse the whole message,
            # one such message at a time (smtp/spool.py, BIG_WORK).
            async with BIG_WORK:
                data = await message.read()
                deep = await asyncio.to_thread(exceeds_depth, data, s.max_mime_depth)
                del data
            if deep:
                return f"554 5.6.0 MIME parts nested deeper than {s.max_mime_depth} levels"
        return None


BDAT_ARG = re.compile(r"([0-9]{1,18})(?: +(LAST))?", re.IGNORECASE)
DISCARD_PIECE = 64 * 1024


async def _discard(reader: asyncio.StreamReader, size: int) -> None:
    """Read and drop ``size`` octets without holding more than one piece."""
    while size > 0:
        piece = await reader.read(min(size, DISCARD_PIECE))
        if not piece:
            raise asyncio.IncompleteReadError(b"", size)
        size -= len(piece)


AUTH_MECHANISMS = {
    "PLAIN": MailstackSMTP._auth_plain,
    "LOGIN": MailstackSMTP._auth_login,
}


def _tls_version(transport: Any) -> str:
    """'TLSv1.3' while the transport is open with TLS, else ''."""
    try:
        obj = transport.get_extra_info("ssl_object") if transport is not None else None
        return str(obj.version() or "") if obj is not None else ""
    except Exception:  # a transport already torn down
        return ""


def new_queue_id() -> str:
    return secrets.token_hex(8).upper()
