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
- The content accumulates in one ``bytearray`` (no object per line), and every octet
  kept is reserved from the server-wide ``budget`` of in-flight message octets; when
  the budget is spent the rest is read and dropped and the DATA is refused as
  ``NO_MEMORY`` (452 4.3.1: the client retries later). The caller releases
  ``DataResult.reserved`` when it is done with the content.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import Enum

from ..memory import MessageBudget


class DataState(Enum):
    OK = "ok"
    TOO_BIG = "too_big"
    LINE_TOO_LONG = "line_too_long"
    NO_MEMORY = "no_memory"  # the server-wide in-flight budget is spent


@dataclass(frozen=True)
class DataResult:
    state: DataState
    content: bytes  # dot-unstuffed, without the end marker; empty unless OK
    size: int  # octets received (before unstuffing), marker excluded
    reserved: int = 0  # octets of the budget held for ``content``: release when done


async def read_data(reader: asyncio.StreamReader, max_size: int, max_line: int,
                    budget: MessageBudget | None = None) -> DataResult:
    """Read up to the end marker. ``max_line``: longest line incl. CRLF (plus the
    transparency dot). Raises ``asyncio.IncompleteReadError`` on EOF (the budget
    reserved so far is given back)."""
    content = bytearray()
    size = 0
    reserved = 0
    state = DataState.OK
    at_line_start = True

    def drop(new_state: DataState) -> None:
        nonlocal state, reserved
        state = new_state
        content.clear()
        if budget is not None:
            budget.release(reserved)
        reserved = 0

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
                if state is DataState.OK:
                    drop(DataState.LINE_TOO_LONG)
                continue
            if at_line_start and chunk == b".\r\n":
                break
            size += len(chunk)
            if state is DataState.OK:
                if size > max_size:
                    drop(DataState.TOO_BIG)
                elif at_line_start and len(chunk) > max_line + 1:
                    drop(DataState.LINE_TOO_LONG)
                elif budget is not None and not budget.try_reserve(len(chunk)):
                    drop(DataState.NO_MEMORY)
                else:
                    if budget is not None:
                        reserved += len(chunk)
                    # RFC 5321 §4.5.2: remove one leading dot of a line.
                    content += chunk[1:] if at_line_start and chunk[:1] == b"." else chunk
            at_line_start = True
    except BaseException:
        if budget is not None:
            budget.release(reserved)
        raise
    if state is not DataState.OK:
        return DataResult(state, b"", size)
    return DataResult(state, bytes(content), size, reserved)
