"""What SMTP acceptance needs from the store beyond the other mixins.

Implementation notes (invariants):
- ``accept_message`` is the one write an accepted SMTP transaction makes: every local
  copy (one row per final mailbox), every queued remote recipient and the sender's
  send-log entry go into ONE transaction. Either all of it is committed or nothing
  is, so a ``451 4.3.0`` after a failure means "nothing stored" and a ``250`` means
  "everything stored" (RFC 5321 §6.1, HOSTILE.md "durability").
- The blob must be durable (``put_blob``) before this is called; events for the new
  messages are published only after the commit.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import and_, insert, select

from . import schema as t
from .base import Message
from .mailbox import DeliveryTarget, MailboxMixin
from .queue import queue_row


class SmtpMixin(MailboxMixin):
    async def accept_message(self, blob_id: str, blob_size: int,
                             targets: Sequence[DeliveryTarget], *, sender: str,
                             remote: Sequence[str], remote_prefix: bytes = b"",
                             sender_address_id: int | None = None,
                             counted_recipients: int = 0,
                             queue_lifetime: float = 5 * 86400,
                             at: float | None = None) -> list[Message]:
        """Deliver local copies, queue remote recipients and count the send, atomically.
        ``at``: the time to record (the front-end's clock), default the store's."""
        now = self.clock() if at is None else at
        async with self._write() as (conn, events):
            copies = await self._insert_copies(conn, events, blob_id, blob_size, targets,
                                               now, now)
            if remote:
                await conn.execute(insert(t.outbound_queue), [queue_row(
                    now=now, sender=sender, recipient=rcpt, blob_id=blob_id,
                    blob_size=blob_size, prefix=remote_prefix, lifetime=queue_lifetime)
                    for rcpt in remote])
            if sender_address_id is not None and counted_recipients > 0:
                await conn.execute(insert(t.send_log).values(
                    address_id=sender_address_id, at=now, recipients=counted_recipients))
        return copies

    async def addresses_granted_to(self, login: str, permission: str) -> list[str]:
        """Addresses a user whose login is ``login`` holds ``permission`` on."""
        async with self._read() as conn:
            rows = (await conn.execute(
                select(t.addresses.c.local_part, t.domains.c.name, t.grants.c.permissions)
                .select_from(t.grants.join(t.users).join(t.addresses).join(t.domains))
                .where(and_(t.users.c.login == login.lower())))).all()
        return [f"{r.local_part}@{r.name}" for r in rows
                if permission in r.permissions.split(",")]
