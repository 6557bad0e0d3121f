"""Reading the DATA section (RFC 5321 §4.1.1.4, §4.5.2) without smuggling.

Invariants (docs/behaviour.md §12 "SMTP smuggling", CVE-2023-51764 class):
- Only ``<CRLF>.<CRLF>`` ends the data: the reader splits on CRLF alone, and a line is
  the end marker only when it is exactly ``.<CRLF>`` *and* starts right after a CRLF
  (the first line of DATA counts as starting after one). ``\\n.\\n``, ``\\r.\\r``,
  ``\\n.\\r\\n``, ``\\r\\n.\\n`` and ``\\r.\\r\\n`` are plain bytes inside a line.
- Bare CR or bare LF anywhere in the content makes the whole DATA refused (the caller
  runs ``policy.headers.check_message``); one DATA never yields two messages.
- Memory stays bounded: past ``max_size`` octets, or on a line longer than the stream
  limit, the bytes are read and dropped until the end marker, then refused
  (RFC 5321 §4.2.5: reply only after the end of data).
- The content goes to a ``spool.MessageSink``: in one ``bytearray`` (no object per
  line) while it is small, every octet kept reserved from the server-wide ``budget`` of
  in-flight message octets; past the sink's threshold (or when the budget is spent) to
  a spool file (``smtp/spool.py``). Without spooling, a spent budget means the rest is
  read and dropped and the DATA is refused as ``NO_MEMORY`` (452 4.3.1: the client
  retries later). The caller releases the sink (``release``) when it is done with the
  content, and discards a spooled file it did not hand to the store.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..memory import MessageBudget
from .spool import DataState, MessageContent, MessageSink

__all__ = ["DataResult", "DataState", "read_data"]


@dataclass(frozen=True)
class DataResult:
    state: DataState
    message: MessageContent  # empty unless OK
    size: int  # octets received (before unstuffing), marker excluded

    @property
    def content(self) -> bytes:
        """The content held in memory (b"" for a refused or a spooled message)."""
        return self.message.data or b""


async def read_data(reader: asyncio.StreamReader, max_size: int, max_line: int,
                    budget: MessageBudget | None = None, *,
                    sink: MessageSink | None = None) -> DataResult:
    """Read up to the end marker. ``max_line``: longest line incl. CRLF (plus the
    transparency dot). Raises ``asyncio.IncompleteReadError`` on EOF (the sink is
    aborted: budget given back, spool file removed)."""
    if sink is None:
        sink = MessageSink(budget, max_size=max_size, max_line=max_line)
    size = 0
    at_line_start = True
    try:
        while True:
            try:
                chunk = await reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError as exc:
                # A line longer than the stream limit: drop what was scanned (never a
                # partial CRLF: asyncio keeps the last separator-length-1 bytes).
                chunk = await reader.readexactly(exc.consumed)
                size += len(chunk)
                at_line_start = False
                if sink.ok:
                    sink.drop(DataState.LINE_TOO_LONG)
                continue
            if at_line_start and chunk == b".\r\n":
                break
            size += len(chunk)
            if sink.ok:
                if size > max_size:
                    sink.drop(DataState.TOO_BIG)
                elif at_line_start and len(chunk) > max_line + 1:
                    sink.drop(DataState.LINE_TOO_LONG)
                else:
                    # RFC 5321 §4.5.2: remove one leading dot of a line.
                    if at_line_start and chunk[:1] == b".":
                        chunk = chunk[1:]
                    if not sink.push(chunk):
                        await sink.feed(chunk)
            at_line_start = True
        message = await sink.finish()
    except BaseException:
        sink.abort()
        raise
    return DataResult(sink.state, message, size)
