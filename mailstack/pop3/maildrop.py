"""The POP3 maildrop: INBOX as a numbered snapshot fixed at login, and the wire form of
its messages.

Implementation notes (invariants):
- Message numbers and sizes are fixed for the whole session (RFC 1939 §5): the snapshot
  is taken once, after the maildrop lock is held. Mail arriving later is seen by the
  next session; a message another protocol (IMAP) expunged meanwhile answers
  ``-ERR`` when retrieved but keeps its number.
- The wire form of a message has CRLF line endings: a bare LF becomes CRLF and a last
  line without a terminator gets one (RFC 1939 §3). Sizes (STAT, LIST, RETR) are the
  octet count of that wire form, without byte-stuffing and without the terminating
  ``.`` line, so a client can trust them.
- Computing the wire size needs the bytes, so the shape of each blob (bare LFs, first
  and last byte) is cached per blob id: blobs are immutable and content-addressed, so a
  cached shape is never stale.
- UIDL (RFC 1939 §7) is the store's message row id: the id comes from SQLite
  AUTOINCREMENT or a PostgreSQL sequence, so it is never reused, survives INBOX being
  renamed or recreated (new rows, new ids), and is the same in every session. A message
  moved out of INBOX and back is a new row, hence a new UIDL (it is downloaded again,
  which is what a user who moved it back wants).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass

from ..store import Message, Store, Unavailable
from ..store.blobs import BlobError

_CACHE_MAX = 50_000


@dataclass(frozen=True)
class Shape:
    """What the wire size of some bytes depends on, besides their length."""

    length: int
    bare_lf: int  # LF not preceded by CR
    starts_lf: bool
    ends_cr: bool
    ends_lf: bool


def shape_of(data: bytes) -> Shape:
    lf = data.count(b"\n")
    return Shape(len(data), lf - data.count(b"\r\n"), data[:1] == b"\n",
                 data[-1:] == b"\r", data[-1:] == b"\n")


def wire_size(prefix: Shape, body: Shape) -> int:
    """Octets of the CRLF wire form of prefix + body (see ``wire_form``)."""
    length = prefix.length + body.length
    if length == 0:
        return 0
    bare = prefix.bare_lf + body.bare_lf
    if prefix.ends_cr and body.starts_lf:
        bare -= 1  # the CR at the end of the prefix and the LF of the body make a CRLF
    ends_lf = body.ends_lf if body.length else prefix.ends_lf
    return length + bare + (0 if ends_lf else 2)


def wire_form(data: bytes) -> bytes:
    """CRLF line endings everywhere, and a terminated last line (RFC 1939 §3)."""
    out = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if out and not out.endswith(b"\n"):
        out += b"\r\n"
    return out


def stuffed(wire: bytes) -> bytes:
    """Byte-stuff lines starting with "." and add the terminating line (RFC 1939 §3)."""
    out = wire.replace(b"\r\n.", b"\r\n..")
    if out.startswith(b"."):
        out = b"." + out
    return out + b".\r\n"


def top_of(wire: bytes, lines: int) -> bytes:
    """The header, the blank line and the first ``lines`` body lines (RFC 1939 §7 TOP)."""
    if wire.startswith(b"\r\n"):
        head_end = 0
    else:
        idx = wire.find(b"\r\n\r\n")
        if idx < 0:
            return wire  # no body at all: the whole message is header
        head_end = idx + 2
    body_start = head_end + 2
    end = body_start
    for _ in range(lines):
        nl = wire.find(b"\r\n", end)
        if nl < 0:
            end = len(wire)
            break
        end = nl + 2
    return wire[:end]


class ShapeCache:
    """Shapes of immutable blobs, least recently used dropped first."""

    def __init__(self, maximum: int = _CACHE_MAX) -> None:
        self.maximum = maximum
        self._shapes: OrderedDict[str, Shape] = OrderedDict()

    def get(self, blob_id: str) -> Shape | None:
        shape = self._shapes.get(blob_id)
        if shape is not None:
            self._shapes.move_to_end(blob_id)
        return shape

    def put(self, blob_id: str, shape: Shape) -> None:
        self._shapes[blob_id] = shape
        self._shapes.move_to_end(blob_id)
        while len(self._shapes) > self.maximum:
            self._shapes.popitem(last=False)

    async def fill(self, store: Store, blob_ids: list[str]) -> None:
        """The shapes of every blob not cached yet, read in ONE thread hop (a cold
        session's maildrop: one hop, not one per message)."""
        missing = list(dict.fromkeys(b for b in blob_ids if self.get(b) is None))
        if not missing:
            return

        def read() -> list[Shape]:
            return [shape_of(store.blobs.get_sync(b)) for b in missing]

        try:
            shapes = await asyncio.to_thread(read)
        except BlobError as exc:
            raise Unavailable(str(exc)) from exc
        for blob_id, shape in zip(missing, shapes, strict=True):
            self.put(blob_id, shape)

    async def shape(self, store: Store, blob_id: str) -> Shape:
        cached = self.get(blob_id)
        if cached is not None:
            return cached

        def read() -> Shape:
            return shape_of(store.blobs.get_sync(blob_id))

        try:
            shape = await asyncio.to_thread(read)  # file read and counting off the loop
        except BlobError as exc:
            raise Unavailable(str(exc)) from exc
        self.put(blob_id, shape)
        return shape


@dataclass(frozen=True)
class Entry:
    number: int
    message: Message
    size: int  # octets of the wire form

    @property
    def uidl(self) -> str:
        return str(self.message.id)


class Maildrop:
    """The session's view of INBOX; deletion marks live here until QUIT."""

    def __init__(self, folder_id: int, entries: list[Entry]) -> None:
        self.folder_id = folder_id
        self.entries = entries
        self.deleted: set[int] = set()
        self.retrieved: set[int] = set()

    @classmethod
    async def load(cls, store: Store, folder_id: int, cache: ShapeCache) -> Maildrop:
        messages = await store.list_messages(folder_id)
        await cache.fill(store, [m.blob_id for m in messages])
        entries = []
        for n, msg in enumerate(messages, start=1):
            body = await cache.shape(store, msg.blob_id)
            entries.append(Entry(n, msg, wire_size(shape_of(msg.prefix), body)))
        return cls(folder_id, entries)

    def entry(self, number: int) -> Entry | None:
        """A live (not deleted) message by number, else None."""
        if 1 <= number <= len(self.entries) and number not in self.deleted:
            return self.entries[number - 1]
        return None

    def exists(self, number: int) -> bool:
        return 1 <= number <= len(self.entries)

    def live(self) -> list[Entry]:
        return [e for e in self.entries if e.number not in self.deleted]

    def totals(self) -> tuple[int, int]:
        live = self.live()
        return len(live), sum(e.size for e in live)

    async def wire_bytes(self, store: Store, entry: Entry) -> bytes | None:
        """The message in wire form; None if another session expunged it meanwhile
        (the presence check and the read are one store call)."""
        data = await store.present_message_bytes(self.folder_id, entry.message.uid,
                                                 entry.message.id, entry.message.size)
        if data is None:
            return None
        if len(data) > 1 << 20:
            return await asyncio.to_thread(wire_form, data)
        return wire_form(data)

