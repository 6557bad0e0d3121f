"""One IMAP session: its state, the per-state command tables and the single place
where a command's outcome becomes a tagged reply.

Implementation notes (invariants):
- States follow RFC 9051 §3: not authenticated -> authenticated -> selected -> logout.
  ``TABLES`` says which commands each state accepts; the dispatcher checks it once.
- Three kinds of error, caught once per command in :meth:`Session.execute`:
  ``respond.Bad`` -> BAD, ``respond.No`` (and store refusals) -> NO [CODE], anything
  else -> logged with context and ``NO [SERVERBUG]``. The session survives all three.
- Store ``Unavailable`` (database or disk down) -> ``NO [UNAVAILABLE]``; nothing stored.
- After every command in the selected state, pending changes from other sessions are
  flushed before the tagged reply, except EXPUNGE during FETCH/STORE/SEARCH
  (non-UID forms), RFC 9051 §7.5.1.
- ``enabled`` holds the extensions the client switched on (ENABLE, RFC 5161). CONDSTORE
  is also switched on by any CONDSTORE-enabling command (RFC 7162 §3.1) and stays on
  for the connection; QRESYNC implies CONDSTORE (RFC 7162 §3.2.3).
- Every command runs holding ``busy``; NOTIFY (RFC 5465) writes its unsolicited
  updates only while holding it too, so they never land inside a command's responses.
- A password change (CredentialsChanged with a newer epoch), the deletion of the
  address, or the revocation of the very credential the session logged in with (its
  app password; the password itself when "app passwords only" is turned on) ends the
  session at once with ``* BYE`` (docs/behaviour.md §2), via a watcher task on its own
  event subscription, so an idle connection (or one in IDLE) is cut too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from mailstack.config import ListenerSettings
from mailstack.imap import respond
from mailstack.imap import types as t
from mailstack.imap.mailbox_view import MailboxView
from mailstack.imap.parser import CommandReader, Limits
from mailstack.netio import Conn
from mailstack.policy.auth import credential_holds, session_ended_by
from mailstack.services import Services
from mailstack.store import (
    AlreadyExists,
    Conflict,
    LimitReached,
    NotFound,
    Resync,
    Subscription,
    Unavailable,
)

if TYPE_CHECKING:
    from mailstack.imap.commands_notify import Notifier

log = logging.getLogger("mailstack.imap")

NOT_AUTH, AUTH, SELECTED, LOGOUT = "not-authenticated", "authenticated", "selected", "logout"

ANSWERED = "\x00answered"  # a handler that already sent its tagged reply returns this

Handler = Callable[["Session", Any], Awaitable[str | None]]

BASE_CAPS = (
    "IMAP4rev2",
    "IMAP4rev1",
    "LITERAL+",
    "SASL-IR",
    "ENABLE",
    "IDLE",
    "NAMESPACE",
    "ID",
    "UIDPLUS",
    "MOVE",
    "UNSELECT",
    "CHILDREN",
    "SPECIAL-USE",
    "LIST-EXTENDED",
    "LIST-STATUS",
    "ESEARCH",
    "SEARCHRES",
    "STATUS=SIZE",
    "BINARY",
    "UTF8=ACCEPT",
    "CONDSTORE",
    "QRESYNC",
    "MULTIAPPEND",
    "SORT",
    "SORT=DISPLAY",
    "ESORT",
    "CONTEXT=SEARCH",
    "CONTEXT=SORT",
    "THREAD=ORDEREDSUBJECT",
    "THREAD=REFERENCES",
    "CATENATE",
    "METADATA",
    "NOTIFY",
    "QUOTA",
    "QUOTA=RES-STORAGE",
    "QUOTA=RES-MESSAGE",
)
AUTH_CAPS = ("COMPRESS=DEFLATE",)  # only after login (RFC 4978 §3)


class SessionEnd(Exception):
    """Close the connection after sending ``text`` as ``* BYE`` (if set)."""

    def __init__(self, text: str | None = None) -> None:
        super().__init__(text)
        self.text = text


class Session:
    def __init__(
        self,
        services: Services,
        conn: Conn,
        listener: ListenerSettings,
        read_line: Callable[[], Awaitable[bytes]],
    ) -> None:
        self.services = services
        self.store = services.store
        self.settings = services.settings
        self.conn = conn
        self.listener = listener
        self.read_line = read_line  # used by IDLE and AUTHENTICATE continuations
        self.state = NOT_AUTH
        s = self.settings.imap
        self.reader = CommandReader(
            Limits(
                max_line=s.max_line_length,
                max_literal=s.max_literal_before_login,
                max_append_literal=s.max_literal_before_login,
                max_total_literal=s.max_literal_before_login * 4,
            )
        )
        self.address_id = 0
        self.email = ""
        self.epoch = 0
        self.credential = 0  # 0: logged in with the address's password, else app password id
        self.max_message_size = 0
        self.plan = self.settings.plan(self.settings.smtp.default_plan)
        self.enabled: set[str] = set()
        self.compressed = False  # COMPRESS=DEFLATE active (RFC 4978)
        # held by every command; NOTIFY writes only while it holds it (RFC 5465)
        self.busy = asyncio.Lock()
        self.idling = False
        self.notifier: Notifier | None = None
        self.view: MailboxView | None = None
        self.sub: Subscription | None = None
        self._watch_sub: Subscription | None = None
        self._watcher: asyncio.Task[None] | None = None

    # --- small helpers -------------------------------------------------------------
    @property
    def utf8(self) -> bool:
        return "UTF8=ACCEPT" in self.enabled

    @property
    def rev2(self) -> bool:
        return "IMAP4REV2" in self.enabled

    @property
    def condstore(self) -> bool:
        return "CONDSTORE" in self.enabled

    @property
    def qresync(self) -> bool:
        return "QRESYNC" in self.enabled

    def enable_condstore(self) -> None:
        """RFC 7162 §3.1: a CONDSTORE-enabling command was seen; from now on every
        FETCH response caused by a flag change carries UID and MODSEQ."""
        first = "CONDSTORE" not in self.enabled
        self.enabled.add("CONDSTORE")
        if self.view is not None:
            self.view.condstore = True
            if first:  # RFC 7162 §3.1: tell the mailbox's HIGHESTMODSEQ at once
                self.send(respond.untagged(
                    f"OK [HIGHESTMODSEQ {self.view.reported_modseq}] Highest"))

    def send(self, data: bytes) -> None:
        self.conn.write(data)

    def capabilities(self) -> str:
        caps = list(BASE_CAPS)
        if self.state == NOT_AUTH:
            if self.listener.tls == "starttls" and not self.conn.tls:
                caps.append("STARTTLS")
            if self.may_send_password():
                caps.append("AUTH=PLAIN")
            else:
                caps.append("LOGINDISABLED")  # RFC 9051 §6.2.3
        else:
            caps.extend(AUTH_CAPS)
        return " ".join(caps)

    def may_send_password(self) -> bool:
        from mailstack.policy.auth import may_send_password

        return may_send_password(
            self.conn.tls,
            self.conn.client_ip,
            self.settings.server.allow_plaintext_auth_on_loopback,
        )

    def require_view(self) -> MailboxView:
        if self.view is None:
            raise respond.Bad("no mailbox selected")
        return self.view

    # --- login / logout ------------------------------------------------------------
    async def logged_in(self, address_id: int, email: str, epoch: int,
                        credential: int = 0) -> None:
        self.address_id, self.email, self.epoch = address_id, email, epoch
        self.credential = credential
        self.conn.login = email  # for the connection's close line (mailstack.logs)
        self.sub = self.store.events.subscribe(address_id)
        self._watch_sub = self.store.events.subscribe(address_id)
        # read after subscribing: a change in between is not missed
        addr = await self.store.get_address_by_id(address_id)
        if addr is None or not await credential_holds(self.store, addr, epoch, credential):
            raise SessionEnd("Credentials changed; log in again")
        plan = self.settings.plans.get(addr.plan) or self.settings.plan(
            self.settings.smtp.default_plan
        )
        self.max_message_size = plan.max_message_size
        self.plan = plan
        s = self.settings.imap
        self.reader.limits = Limits(
            max_line=s.max_line_length,
            max_literal=max(64 * 1024, s.max_line_length),
            max_append_literal=plan.max_message_size,
            max_total_literal=plan.max_message_size + 1024 * 1024,
            max_literals=64,
        )
        self.state = AUTH
        self._watcher = asyncio.create_task(self._watch(self._watch_sub))

    async def _watch(self, sub: Subscription) -> None:
        """Cut the session when the credential it logged in with stops working: a new
        password, the address deleted, its app password revoked, "app passwords only"
        for a password login (docs/behaviour.md §2). After ``Resync`` (change events may
        have been missed during a database outage) the credential is checked again."""
        while True:
            ev = await sub.queue.get()
            stale = session_ended_by(ev, self.epoch, self.credential)
            if isinstance(ev, Resync):
                try:
                    addr = await self.store.get_address_by_id(self.address_id)
                    stale = not await credential_holds(
                        self.store, addr, self.epoch, self.credential
                    )
                except Unavailable as exc:
                    log.warning("imap: cannot re-check %s after resync: %s", self.email, exc)
                    continue
            if stale:
                log.info(
                    "imap: %s credentials changed; closing session from %s",
                    self.email,
                    self.conn.client_ip,
                )
                self.send(respond.untagged("BYE Credentials changed; log in again"))
                await self.conn.drain()
                await self.conn.close()
                return

    def close(self) -> None:
        if self.notifier is not None:
            self.notifier.close()
            self.notifier = None
        if self._watcher is not None and self._watcher is not asyncio.current_task():
            self._watcher.cancel()
        for sub in (self.sub, self._watch_sub):
            if sub is not None:
                sub.close()
        self.sub = self._watch_sub = None

    def deselect(self) -> None:
        self.view = None
        if self.state == SELECTED:
            self.state = AUTH

    # --- dispatch ------------------------------------------------------------------
    async def execute(self, cmd: t.Command) -> None:
        from mailstack.imap.commands import TABLES

        handler = TABLES[self.state].get(type(cmd))
        name = cmd.NAME
        if handler is None:
            self.send(respond.tagged(cmd.tag, "BAD", f"{name} not allowed now"))
            return
        async with self.busy:
            await self._execute(cmd, handler, name)
        await self.conn.drain()

    async def _execute(self, cmd: t.Command, handler: Handler, name: str) -> None:
        try:
            text = await handler(self, cmd)
            if text != ANSWERED:
                await self._flush(cmd)
                self.send(respond.tagged(cmd.tag, "OK", text or f"{name} completed"))
        except respond.Bad as exc:
            self.send(respond.tagged(cmd.tag, "BAD", exc.text, exc.code))
        except respond.No as exc:
            await self._flush_quietly(cmd)
            self.send(respond.tagged(cmd.tag, "NO", exc.text, exc.code))
        except Unavailable as exc:
            log.warning("imap: store unavailable during %s for %s: %s", name, self.email, exc)
            self.send(
                respond.tagged(cmd.tag, "NO", "Temporary failure; try again later", "UNAVAILABLE")
            )
        except NotFound as exc:
            self.send(respond.tagged(cmd.tag, "NO", str(exc), "NONEXISTENT"))
        except AlreadyExists as exc:
            self.send(respond.tagged(cmd.tag, "NO", str(exc), "ALREADYEXISTS"))
        except (Conflict, LimitReached) as exc:
            self.send(respond.tagged(cmd.tag, "NO", str(exc), "CANNOT"))
        except (SessionEnd, ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception(
                "imap: %s failed for %s from %s", name, self.email or "-", self.conn.client_ip
            )
            self.send(respond.tagged(cmd.tag, "NO", "Internal server error", "SERVERBUG"))

    @staticmethod
    def expunge_allowed(cmd: t.Command) -> bool:
        # RFC 9051 §7.5.1: no EXPUNGE while answering FETCH, STORE or SEARCH.
        if isinstance(cmd, t.Fetch | t.Store | t.Search):
            return cmd.uid
        return True

    async def _flush(self, cmd: t.Command) -> None:
        if self.view is not None and self.state == SELECTED:
            from mailstack.imap.contexts import flush_view  # + RFC 5267 live results

            for line in await flush_view(self, self.view,
                                         allow_expunge=self.expunge_allowed(cmd),
                                         force=isinstance(cmd, t.Store)):
                self.send(line)
        elif self.sub is not None:
            while not self.sub.queue.empty():  # nothing selected: nothing to report
                self.sub.queue.get_nowait()

    async def _flush_quietly(self, cmd: t.Command) -> None:
        with contextlib.suppress(Unavailable):
            await self._flush(cmd)
