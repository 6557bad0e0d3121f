"""COMPRESS=DEFLATE (RFC 4978): raw deflate (RFC 1951, no zlib header) in both
directions after the tagged OK.

Implementation notes (invariants):
- Input is inflated on demand, never ahead of the reader: ``InflateReader`` decompresses
  with a bounded ``max_length`` into a buffer that never holds more than the stream's
  line limit (``limit``) plus what a pending ``readexactly`` asked for, so memory stays
  as flat as without compression. A line longer than the limit inside the compressed
  stream ends the session (a compression bomb is cut; it is never drained by
  inflating gigabytes); literals are bounded by the parser's limits, as always.
- While inflating a long run the reader yields to the event loop between chunks.
- Output is compressed as it is written and flushed with Z_SYNC_FLUSH on every drain,
  so each response reaches the client whole (RFC 4978 §4).
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Any, cast

from mailstack.netio import Conn

CHUNK = 64 * 1024


class BombError(ConnectionError):
    """An over-long line inside the compressed stream."""


class InflateReader:
    """The subset of ``asyncio.StreamReader`` that ``Conn`` uses, over deflated input."""

    def __init__(self, raw: asyncio.StreamReader, limit: int) -> None:
        self.raw = raw
        self.limit = limit
        self.z = zlib.decompressobj(-15)
        self.buf = bytearray()
        self.eof = False

    async def _fill(self, want: int) -> bool:
        """Inflate up to ``want`` more octets into the buffer; False at end of input."""
        while True:
            data = self.z.unconsumed_tail
            if data:
                await asyncio.sleep(0)  # a long run of output: let others in
            else:
                if self.eof or self.z.eof:
                    return False
                data = await self.raw.read(CHUNK)
                if not data:
                    self.eof = True
                    return False
            try:
                out = self.z.decompress(data, max(1, want))
            except zlib.error as exc:
                raise ConnectionResetError(f"bad deflate data: {exc}") from None
            if out:
                self.buf += out
                return True

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        start = 0
        while True:
            i = self.buf.find(separator, start)
            if i >= 0:
                line = bytes(self.buf[:i + len(separator)])
                del self.buf[:i + len(separator)]
                return line
            if len(self.buf) > self.limit:
                raise BombError("line too long in the compressed stream")
            start = max(0, len(self.buf) - len(separator) + 1)
            if not await self._fill(self.limit + 1 - len(self.buf)):
                partial = bytes(self.buf)
                self.buf.clear()
                raise asyncio.IncompleteReadError(partial, None)

    async def readexactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not await self._fill(min(n - len(self.buf), CHUNK)):
                partial = bytes(self.buf)
                self.buf.clear()
                raise asyncio.IncompleteReadError(partial, n)
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data


class DeflateWriter:
    """The subset of ``asyncio.StreamWriter`` that ``Conn`` uses, deflating output."""

    def __init__(self, raw: asyncio.StreamWriter) -> None:
        self.raw = raw
        self.z = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)

    def write(self, data: bytes) -> None:
        out = self.z.compress(data)
        if out:
            self.raw.write(out)

    async def drain(self) -> None:
        self.raw.write(self.z.flush(zlib.Z_SYNC_FLUSH))
        await self.raw.drain()

    def close(self) -> None:
        try:
            self.raw.write(self.z.flush(zlib.Z_SYNC_FLUSH))
        except (RuntimeError, zlib.error):
            pass
        self.raw.close()

    async def wait_closed(self) -> None:
        await self.raw.wait_closed()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.raw.get_extra_info(name, default)


def start(conn: Conn, limit: int) -> None:
    """Switch a connection to deflate in both directions (after the tagged OK went
    out, uncompressed)."""
    conn.reader = cast(asyncio.StreamReader, InflateReader(conn.reader, limit))
    conn.writer = cast(asyncio.StreamWriter, DeflateWriter(conn.writer))
