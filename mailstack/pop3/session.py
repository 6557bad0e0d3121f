"""One POP3 session: the AUTHORIZATION / TRANSACTION / UPDATE state machine (RFC 1939 §3).

Implementation notes (invariants):
- Only the session's main loop writes to the socket. Everything else that must end the
  session (server shutdown, password change, address deleted, maildrop lock lost, idle
  timeout) sets ``_stop`` with a reason; the main loop notices it while waiting for the
  next command, writes one ``-ERR`` line and ends. A command that is running finishes.
- Credentials only over TLS, or from loopback when the operator allows it (docs/behaviour.md §1,
  RFC 2595 §4). STLS discards pipelined plaintext (``Conn.start_tls``) and resets the
  AUTHORIZATION state (a USER given before STLS is forgotten).
- The maildrop lock (RFC 1939 §8) is taken after the credentials are accepted and
  before the snapshot; it is refreshed every third of ``pop3.lock_stale_seconds`` and
  released when the session ends, however it ends.
- Nothing changes in the store before QUIT: DELE only marks. At QUIT (UPDATE state) the
  marked messages are expunged in one store call, so IMAP sessions see them go, and the
  messages retrieved with RETR get ``\\Seen``. A dropped connection or an auto-logout
  changes nothing (RFC 1939 §6).
- Errors, caught once per command: a syntax error or a user error is ``-ERR`` with an
  optional RFC 2449/3206 response code; a store outage is ``-ERR [SYS/TEMP]``; anything
  else is logged with context and answered with a generic ``-ERR [SYS/TEMP]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..netio import Conn, LineTooLong
from ..policy.auth import credential_holds, may_send_password, session_ended_by
from ..store import (
    AddressDeleted,
    InsufficientStorage,
    Resync,
    Subscription,
    Unavailable,
)
from .commands import (
    Command,
    Pop3Error,
    SyntaxErr,
    arity,
    decode_plain,
    number,
    parse,
    status_line,
)
from .maildrop import Entry, Maildrop, stuffed, top_of

if TYPE_CHECKING:
    from .server import Pop3Server

log = logging.getLogger("mailstack.pop3")

AUTHORIZATION, TRANSACTION, UPDATE = "AUTHORIZATION", "TRANSACTION", "UPDATE"
MAX_LINE = 2048  # RFC 2449 §4 allows 255 octets; AUTH responses with long passwords need more
MAX_BAD_COMMANDS = 10
WRITE_CHUNK = 256 * 1024
# (id of the store, address id) -> holder: maildrop locks taken while the database
# could not be written (disk full); one process's sessions still exclude each other.
LOCAL_LOCKS: dict[tuple[int, int], str] = {}


class _EndSession(Exception):
    """The session is over (the goodbye, if any, is written)."""


class Session:
    def __init__(self, server: Pop3Server, conn: Conn) -> None:
        self.server = server
        self.services = server.services
        self.store = server.services.store
        self.settings = server.services.settings
        self.conn = conn
        self.state = AUTHORIZATION
        self.user: str | None = None
        self.address_id = 0
        self.email = ""
        self.epoch = 0
        self.credential = 0  # 0: the address's password, else the app password id
        # node / instance / session: a restarted node drops its previous instance's locks
        self.holder = f"{server.holder_prefix}{secrets.token_hex(8)}"
        self.locked = False
        self.local_lock = False  # held in LOCAL_LOCKS, not in the database (disk full)
        self.lock_lost = False
        self.drop: Maildrop | None = None
        self.finished = False
        self.bad_commands = 0
        self.done = asyncio.Event()
        self._stop = asyncio.Event()
        self._stop_line = b""
        self._sub: Subscription | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._watching = False
        self._stop_task: asyncio.Future[Any] | None = None

    # --- life cycle -------------------------------------------------------------------
    async def run(self) -> None:
        self.conn.on_shutdown = self._on_shutdown
        stop_task: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
        self._stop_task = stop_task
        try:
            self.reply(True, f"{self.services.hostname} POP3 server ready")
            while not self.finished:
                try:
                    line = await self.read_line()
                except LineTooLong:
                    self._bad(SyntaxErr("line too long"))
                    continue
                await self._dispatch(line)
        except _EndSession:
            pass
        finally:
            stop_task.cancel()
            await self.release()
            await self.conn.drain()
            self.done.set()

    def stop(self, text: str, code: str | None = None) -> None:
        """Ask the main loop to say ``-ERR`` and end the session (any task may call)."""
        if not self._stop.is_set():
            self._stop_line = status_line(False, text, code)
            self._stop.set()

    async def _on_shutdown(self) -> None:
        self.stop("server shutting down; try again shortly", "SYS/TEMP")
        await self.done.wait()

    async def release(self) -> None:
        """Stop watching and release the maildrop lock (idempotent)."""
        self._watching = False
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(BaseException):
                await self._watcher
        if self._sub is not None:
            self._sub.close()
            self._sub = None
        if self.locked and self.local_lock:
            self.locked = self.local_lock = False
            LOCAL_LOCKS.pop((id(self.store), self.address_id), None)
        if self.locked:
            self.locked = False
            try:
                await self.store.release_pop3_lock(self.address_id, self.holder)
            except Unavailable as exc:  # released as soon as the database is back
                log.warning("pop3: could not release the lock of %s (%s); retrying later",
                            self.email, exc)
                self.server.release_later(self.address_id, self.holder)

    async def read_line(self) -> bytes:
        """The next command (or AUTH continuation) line. Ends the session at EOF, on
        idle timeout (RFC 1939 §3 autologout: no UPDATE) and when ``stop`` was called."""
        stop_task = self._stop_task
        assert stop_task is not None
        await self.conn.drain()
        read: asyncio.Future[Any] = asyncio.ensure_future(self.conn.readline(MAX_LINE))
        try:
            done, _ = await asyncio.wait({read, stop_task},
                                         timeout=self.settings.pop3.idle_timeout_seconds,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not read.done():
                read.cancel()
                with contextlib.suppress(BaseException):
                    await read
        if stop_task in done:
            self.conn.write(self._stop_line)
            raise _EndSession
        if not done:
            log.info("pop3: autologout %s (%s)", self.conn.client_ip, self.email or "-")
            self.conn.write(status_line(False, "autologout: idle for too long"))
            raise _EndSession
        line = read.result()  # LineTooLong propagates
        if not line:
            raise _EndSession  # the client went away; nothing is deleted
        return line

    # --- output -----------------------------------------------------------------------
    def reply(self, ok: bool, text: str, code: str | None = None) -> None:
        self.conn.write(status_line(ok, text, code))

    async def multiline(self, first: str, body: bytes) -> None:
        """``+OK first`` then ``body`` (already stuffed and terminated)."""
        self.conn.write(status_line(True, first))
        for i in range(0, len(body), WRITE_CHUNK):
            self.conn.write(body[i:i + WRITE_CHUNK])
            try:  # a client that stops reading is idle too
                await asyncio.wait_for(self.conn.drain(),
                                       self.settings.pop3.idle_timeout_seconds)
            except TimeoutError:
                log.info("pop3: %s stopped reading; closing", self.conn.client_ip)
                raise _EndSession from None

    # --- dispatch ---------------------------------------------------------------------
    async def _dispatch(self, line: bytes) -> None:
        try:
            cmd = parse(line)
            handler = COMMANDS[self.state].get(cmd.keyword)
            if handler is None:
                if cmd.keyword in KNOWN:
                    raise Pop3Error(f"{cmd.keyword.decode()} is not allowed "
                                    f"{'before' if self.state == AUTHORIZATION else 'after'}"
                                    " login")
                raise SyntaxErr("unknown command")
            await handler(self, cmd)
            self.bad_commands = 0
        except SyntaxErr as exc:
            self._bad(exc)
        except Pop3Error as exc:
            self.conn.write(exc.line())
        except Unavailable as exc:
            log.warning("pop3: store unavailable for %s: %s", self.email or "-", exc)
            self.reply(False, "mail storage temporarily unavailable; try again later",
                       "SYS/TEMP")
        except LineTooLong:
            self._bad(SyntaxErr("line too long"))
        except (_EndSession, ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("pop3: command failed for %s from %s", self.email or "-",
                          self.conn.client_ip)
            self.reply(False, "internal server error", "SYS/TEMP")

    def _bad(self, exc: Pop3Error) -> None:
        self.bad_commands += 1
        self.conn.write(exc.line())
        if self.bad_commands >= MAX_BAD_COMMANDS:
            self.stop("too many bad commands; closing")

    # --- authentication ---------------------------------------------------------------
    def password_allowed(self) -> bool:
        return may_send_password(self.conn.tls, self.conn.client_ip,
                                 self.settings.server.allow_plaintext_auth_on_loopback)

    def require_password_allowed(self) -> None:
        if not self.password_allowed():
            raise Pop3Error("plaintext authentication is not allowed on an unencrypted "
                            "connection; use STLS first (or port 995)")

    async def login(self, username: str, password: str, authzid: str | None = None) -> None:
        result = await self.services.auth.authenticate(
            username, password, client_ip=self.conn.client_ip, protocol="pop3",
            authzid=authzid or None)
        if result.status == "refused":
            log.info("pop3: login refused (throttled) from %s", self.conn.client_ip)
            raise Pop3Error(result.refusal_text(), "SYS/TEMP")
        if not result.ok:
            log.info("pop3: login failed from %s", self.conn.client_ip)
            raise Pop3Error("authentication failed", "AUTH")
        stale = self.settings.pop3.lock_stale_seconds
        # RFC 1939 §8 / RFC 2449 §8.1.2: one session per maildrop.
        try:
            got = await self.store.acquire_pop3_lock(result.address_id, self.holder, stale)
        except InsufficientStorage as exc:
            # Disk full: reading mail goes on (docs/behaviour.md §12) under a lock this
            # process keeps in memory (enough on the one-box SQLite setup).
            log.warning("pop3: lock of %s kept in memory only, storage full: %s",
                        result.email, exc)
            got = LOCAL_LOCKS.setdefault((id(self.store), result.address_id),
                                         self.holder) == self.holder
            self.local_lock = got
        if not got:
            log.info("pop3: %s in use, refused %s", result.email, self.conn.client_ip)
            raise Pop3Error("maildrop already in use by another session", "IN-USE")
        self.locked, self.address_id, self.email = True, result.address_id, result.email
        self.conn.login = result.email  # for the connection's close line (mailstack.logs)
        try:
            inbox = await self.store.get_folder(result.address_id, "INBOX")
            if inbox is None:
                raise Pop3Error("this address has no maildrop", "SYS/PERM")
            self._sub = self.store.events.subscribe(result.address_id)
            # re-check after subscribing: a password change in between is not missed
            addr = await self.store.get_address_by_id(result.address_id)
            if not await credential_holds(self.store, addr, result.credential_epoch,
                                          result.credential):
                raise Pop3Error("credentials changed; log in again", "AUTH")
            self.drop = await Maildrop.load(self.store, inbox.id, self.server.shapes)
        except BaseException:
            await self.release()
            raise
        self.epoch = result.credential_epoch
        self.credential = result.credential
        self.state = TRANSACTION
        self._watching = True
        self._watcher = asyncio.create_task(self._watch())
        count, size = self.drop.totals()
        log.info("pop3: login %s from %s (%d messages)", self.email, self.conn.client_ip,
                 count)
        self.reply(True, f"maildrop has {count} message{'s' if count != 1 else ''} "
                         f"({size} octets)")

    async def _watch(self) -> None:
        """Refresh the lock; end the session when the credentials change (docs/behaviour.md §2),
        the address goes away or another node took the lock over."""
        assert self._sub is not None
        interval = max(1.0, self.settings.pop3.lock_stale_seconds / 3)
        # the flag, not only cancel(): Python 3.11's wait_for can swallow a cancellation
        # that arrives just as the queue delivers an event
        while self._watching:
            try:
                event = await asyncio.wait_for(self._sub.queue.get(), interval)
            except TimeoutError:
                event = None
            if isinstance(event, AddressDeleted):
                self.stop("this address was deleted", "SYS/PERM")
                return
            if event is not None and session_ended_by(event, self.epoch, self.credential):
                self.stop("credentials changed; log in again", "AUTH")
                return
            if event is not None and not isinstance(event, Resync):
                continue
            # the periodic check, and at once after a Resync (events may have been missed)
            try:
                still_ours = self.local_lock or await self.store.refresh_pop3_lock(
                    self.address_id, self.holder)
                addr = await self.store.get_address_by_id(self.address_id)
            except Unavailable as exc:
                log.warning("pop3: cannot refresh the lock of %s: %s", self.email, exc)
                continue
            if not still_ours:
                self.lock_lost = True
                self.stop("maildrop lock lost; log in again", "SYS/TEMP")
                return
            try:
                holds = await credential_holds(self.store, addr, self.epoch, self.credential)
            except Unavailable as exc:
                log.warning("pop3: cannot re-check %s: %s", self.email, exc)
                continue
            if not holds:
                self.stop("credentials changed; log in again", "AUTH")
                return

    def entry(self, arg: bytes) -> Entry:
        assert self.drop is not None
        n = number(arg)
        found = self.drop.entry(n)
        if found is None:
            if self.drop.exists(n):
                raise Pop3Error(f"message {n} already deleted")
            raise Pop3Error("no such message")
        return found

    async def wire(self, entry: Entry) -> bytes:
        assert self.drop is not None
        data = await self.drop.wire_bytes(self.store, entry)
        if data is None:
            raise Pop3Error(f"message {entry.number} was removed by another session")
        return data


# --- command handlers ------------------------------------------------------------------
Handler = Callable[[Session, Command], Awaitable[None]]


async def cmd_capa(s: Session, cmd: Command) -> None:
    """RFC 2449 §5; AUTHORIZATION capabilities are announced in both states."""
    arity(cmd, 0, 0)
    caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
    if s.password_allowed():
        caps += ["USER", "SASL PLAIN"]
    if (s.state == AUTHORIZATION and s.server.listener_settings.tls == "starttls"
            and not s.conn.tls):
        caps.append("STLS")  # RFC 2595 §4
    caps.append("IMPLEMENTATION mailstack")
    await s.multiline("capability list follows",
                      b"".join(c.encode() + b"\r\n" for c in caps) + b".\r\n")


async def cmd_stls(s: Session, cmd: Command) -> None:
    """RFC 2595 §4: only in AUTHORIZATION, only on the STLS listener, only once."""
    arity(cmd, 0, 0)
    ctx = s.services.server_ssl
    if s.server.listener_settings.tls != "starttls" or ctx is None:
        raise Pop3Error("STLS is not available on this port")
    if s.conn.tls:
        raise Pop3Error("TLS is already active")
    s.reply(True, "begin TLS negotiation")
    await s.conn.start_tls(ctx)  # discards anything pipelined after STLS
    s.user = None


async def cmd_user(s: Session, cmd: Command) -> None:
    arity(cmd, 1, 1)
    s.require_password_allowed()
    try:
        s.user = cmd.args[0].decode("utf-8")
    except UnicodeDecodeError:
        raise SyntaxErr("user name is not UTF-8") from None
    # the same answer whether or not the address exists (no enumeration)
    s.reply(True, "send your password")


async def cmd_pass(s: Session, cmd: Command) -> None:
    s.require_password_allowed()
    if s.user is None:
        raise Pop3Error("send USER first")
    if not cmd.rest:
        raise SyntaxErr("PASS takes the password")
    user, s.user = s.user, None  # RFC 1939 §7: a failed PASS starts over at USER
    try:
        password = cmd.rest.decode("utf-8")
    except UnicodeDecodeError:
        raise Pop3Error("authentication failed", "AUTH") from None
    await s.login(user, password)


async def cmd_auth(s: Session, cmd: Command) -> None:
    """RFC 5034: SASL PLAIN, with an initial response or after a ``+ `` continuation."""
    arity(cmd, 0, 2)
    if not cmd.args:
        await s.multiline("methods supported", b"PLAIN\r\n.\r\n")
        return
    if cmd.args[0].upper() != b"PLAIN":
        raise Pop3Error("unsupported authentication mechanism (PLAIN only)")
    s.require_password_allowed()
    s.user = None
    if len(cmd.args) == 2:
        response = cmd.args[1]
    else:
        s.conn.write(b"+ \r\n")
        response = (await s.read_line()).rstrip(b"\r\n")
        if response.strip() == b"*":
            raise Pop3Error("authentication cancelled")  # RFC 5034 §4
    creds = decode_plain(response)
    await s.login(creds.authcid, creds.password, creds.authzid)


async def cmd_quit(s: Session, cmd: Command) -> None:
    """RFC 1939 §6: QUIT in TRANSACTION enters UPDATE and removes the DELE'd messages."""
    arity(cmd, 0, 0)
    s.finished = True
    if s.state == AUTHORIZATION or s.drop is None:
        s.reply(True, "bye")
        return
    s.state = UPDATE
    drop = s.drop
    if s.lock_lost:
        await s.release()
        s.reply(False, "maildrop lock lost; nothing was deleted", "SYS/TEMP")
        return
    doomed = [drop.entries[n - 1].message.uid for n in sorted(drop.deleted)]
    seen = [drop.entries[n - 1].message.uid for n in sorted(drop.retrieved - drop.deleted)]
    try:
        if doomed:
            await s.store.expunge(drop.folder_id, doomed, only_deleted=False)
    except Unavailable as exc:
        log.warning("pop3: UPDATE failed for %s: %s", s.email, exc)
        await s.release()
        s.reply(False, "some deleted messages not removed; try again later", "SYS/TEMP")
        return
    if seen:  # advisory for POP3: a full disk must not turn a good QUIT into -ERR
        try:
            await s.store.store_flags(drop.folder_id, seen, ["\\Seen"], "add")
        except Unavailable as exc:
            log.warning("pop3: \\Seen not recorded for %s: %s", s.email, exc)
    # released before the reply, so a client that reconnects at once is not IN-USE
    await s.release()
    left = len(drop.entries) - len(drop.deleted)
    log.info("pop3: quit %s: %d deleted", s.email, len(doomed))
    s.reply(True, f"{s.services.hostname} POP3 server signing off "
                  f"({left} message{'s' if left != 1 else ''} left)")


async def cmd_stat(s: Session, cmd: Command) -> None:
    arity(cmd, 0, 0)
    assert s.drop is not None
    count, size = s.drop.totals()
    s.reply(True, f"{count} {size}")  # RFC 1939 §5: exactly "+OK nn mm"


async def cmd_list(s: Session, cmd: Command) -> None:
    arity(cmd, 0, 1)
    assert s.drop is not None
    if cmd.args:
        e = s.entry(cmd.args[0])
        s.reply(True, f"{e.number} {e.size}")
        return
    count, size = s.drop.totals()
    body = b"".join(b"%d %d\r\n" % (e.number, e.size) for e in s.drop.live())
    await s.multiline(f"{count} messages ({size} octets)", body + b".\r\n")


async def cmd_uidl(s: Session, cmd: Command) -> None:
    """RFC 1939 §7: the unique-id is the store row id (see maildrop.py)."""
    arity(cmd, 0, 1)
    assert s.drop is not None
    if cmd.args:
        e = s.entry(cmd.args[0])
        s.reply(True, f"{e.number} {e.uidl}")
        return
    body = b"".join(b"%d %s\r\n" % (e.number, e.uidl.encode()) for e in s.drop.live())
    await s.multiline("unique-id listing follows", body + b".\r\n")


async def cmd_retr(s: Session, cmd: Command) -> None:
    arity(cmd, 1, 1)
    assert s.drop is not None
    e = s.entry(cmd.args[0])
    data = await s.wire(e)
    s.drop.retrieved.add(e.number)
    await s.multiline(f"{e.size} octets", stuffed(data))


async def cmd_top(s: Session, cmd: Command) -> None:
    arity(cmd, 2, 2)
    e = s.entry(cmd.args[0])
    lines = number(cmd.args[1], "line count")
    data = await s.wire(e)
    await s.multiline("top of message follows", stuffed(top_of(data, lines)))


async def cmd_dele(s: Session, cmd: Command) -> None:
    arity(cmd, 1, 1)
    assert s.drop is not None
    e = s.entry(cmd.args[0])
    s.drop.deleted.add(e.number)
    s.reply(True, f"message {e.number} deleted")


async def cmd_rset(s: Session, cmd: Command) -> None:
    arity(cmd, 0, 0)
    assert s.drop is not None
    s.drop.deleted.clear()
    count, size = s.drop.totals()
    s.reply(True, f"maildrop has {count} message{'s' if count != 1 else ''} "
                  f"({size} octets)")


async def cmd_noop(s: Session, cmd: Command) -> None:
    arity(cmd, 0, 0)
    s.reply(True, "")


# Per-state command tables (RFC 1939 §4-§6; CAPA RFC 2449; STLS RFC 2595; AUTH RFC 5034).
COMMANDS: dict[str, dict[bytes, Handler]] = {
    AUTHORIZATION: {
        b"CAPA": cmd_capa, b"STLS": cmd_stls, b"USER": cmd_user, b"PASS": cmd_pass,
        b"AUTH": cmd_auth, b"QUIT": cmd_quit,
    },
    TRANSACTION: {
        b"CAPA": cmd_capa, b"STAT": cmd_stat, b"LIST": cmd_list, b"RETR": cmd_retr,
        b"TOP": cmd_top, b"DELE": cmd_dele, b"RSET": cmd_rset, b"NOOP": cmd_noop,
        b"UIDL": cmd_uidl, b"QUIT": cmd_quit,
    },
    UPDATE: {},
}
KNOWN = frozenset(k for table in COMMANDS.values() for k in table)
