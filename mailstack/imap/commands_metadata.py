"""METADATA (RFC 5464): GETMETADATA and SETMETADATA for the server ("") and mailboxes,
``/private`` and ``/shared`` entries.

Invariants:
- An address is the only user of its mailboxes, so ``/private`` and ``/shared`` entries
  are both kept per address (and per mailbox); names compare case-insensitively
  (stored lower-case).
- Limits come from the settings: a value over ``imap.metadata_max_value_size`` gets
  ``NO [METADATA MAXSIZE n]``, more than ``imap.metadata_max_entries`` entries per
  address ``NO [METADATA TOOMANY]`` (RFC 5464 §4.3); a refused SETMETADATA changes
  nothing (one store transaction).
- Requested entries that do not exist are answered NIL, as Dovecot does; entries
  larger than MAXSIZE are left out and the largest size is told with
  ``OK [METADATA LONGENTRIES n]`` (RFC 5464 §4.2.1).
- Deleting a mailbox deletes its entries; renaming keeps them (they follow the folder).
"""

from __future__ import annotations

from mailstack.imap import respond
from mailstack.imap import types as t
from mailstack.imap.session import Session


async def _folder_id(s: Session, mailbox: str) -> int:
    if mailbox == "":
        return 0
    folder = await s.store.get_folder(s.address_id, mailbox)
    if folder is None:
        raise respond.No(f"No such mailbox: {mailbox}", "NONEXISTENT")
    return folder.id


def _value(value: bytes) -> bytes:
    if b"\x00" in value:
        return respond.literal(value, binary=True)
    return respond.string(value)


async def getmetadata(s: Session, c: t.GetMetadata) -> str | None:
    folder_id = await _folder_id(s, c.mailbox)
    found = await s.store.metadata_get(s.address_id, folder_id, c.entries, c.depth)
    have = {name for name, _ in found}
    longest = 0
    items: list[bytes] = []
    for name, value in found:
        if c.maxsize is not None and len(value) > c.maxsize:
            longest = max(longest, len(value))
            continue
        items.append(respond.string(name) + b" " + _value(value))
    for name in c.entries:  # asked for and absent: NIL
        if name.lower() not in have:
            items.append(respond.string(name.lower()) + b" NIL")
    if items:
        s.send(b"* METADATA " + respond.mailbox(c.mailbox, s.utf8) + b" ("
               + b" ".join(items) + b")\r\n")
    if longest:
        return f"[METADATA LONGENTRIES {longest}] GETMETADATA completed"
    return None


async def setmetadata(s: Session, c: t.SetMetadata) -> str | None:
    limit = s.settings.imap.metadata_max_value_size
    for _name, value in c.items:
        if value is not None and len(value) > limit:
            raise respond.No("Metadata value too big", f"METADATA MAXSIZE {limit}")
    folder_id = await _folder_id(s, c.mailbox)
    if not await s.store.metadata_set(s.address_id, folder_id, c.items,
                                      s.settings.imap.metadata_max_entries):
        raise respond.No("Too many metadata entries", "METADATA TOOMANY")
    return None
