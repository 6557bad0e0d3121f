"""Where the octets of one DATA/BDAT go while they arrive: memory, then a spool file.

Implementation notes (invariants; docs/behaviour.md §12 "Big messages"):
- A message is kept in memory while it is at most ``threshold`` octets AND the
  server-wide in-flight budget (``MessageBudget``) has room for it; every octet held in
  memory is reserved from that budget. Past the threshold, or as soon as the budget is
  spent, the content moves to a spool file under the blob store's ``tmp/`` (the data
  directory's file system, so acceptance is a rename) and its reservation is given
  back: a spooled message holds at most ``PIECE`` octets of buffer (plus its first
  ``head_limit`` octets, kept for the header checks). With spooling off
  (``threshold`` 0), a spent budget refuses the message as ``NO_MEMORY``
  (452 4.3.1), as before.
- The spool file's SHA-256 (the blob id) is computed while it is written, in the same
  worker thread as the write; the event loop never writes or hashes a piece itself.
- What ``policy.headers.check_message`` checks over a whole message in memory is checked
  piece by piece on a spooled one (bare CR/LF, NUL, line length) plus the header checks
  on the kept head, so both paths refuse the same content with the same reply.
- MIME nesting (docs/behaviour.md §12 "MIME bombs"): a part can only nest deeper through
  a ``Content-Type`` field of its own (multipart, message/rfc822) or as a digest's child,
  so a message with k ``Content-Type`` fields nests at most 2k levels. The count is kept
  while spooling; only a message whose count allows the limit is parsed whole, one such
  message at a time (``BIG_WORK``), so the exact check never multiplies memory.
- Every way out removes the spool file: a refusal while reading (too big, long line:
  the file goes at once and the rest is read and dropped), a refusal after the end of
  data, the connection lost mid-transfer (``abort``), a failed acceptance. Only
  ``BlobStore.put_file`` takes it over (renamed into the store). A crash leaves a
  temp file named like the blob store's own, swept at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..memory import MessageBudget

PIECE = 256 * 1024  # octets buffered before a write to the spool file
CONTENT_TYPE = b"content-type"
# One exact MIME parse of a spooled message at a time (CPU-bound, and its memory is the
# message's size): the budget for heavy work on big messages.
BIG_WORK = asyncio.Semaphore(1)


class DataState(Enum):
    OK = "ok"
    TOO_BIG = "too_big"
    LINE_TOO_LONG = "line_too_long"
    NO_MEMORY = "no_memory"  # the server-wide in-flight budget is spent


@dataclass(frozen=True)
class StreamDefect:
    """What the piece-by-piece checks found (the first one), as ``check_message``
    would say it about the whole message."""

    code: int
    enhanced: str
    text: str

    @property
    def reply(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


BARE_EOL = StreamDefect(554, "5.6.0", "Message contains a bare CR or LF; lines must end "
                        "with CRLF (RFC 5321 §2.3.8)")
NUL = StreamDefect(554, "5.6.0", "Message contains a NUL character")


class _StreamChecks:
    """Bare CR/LF, NUL and over-long lines over pieces cut anywhere, plus the count of
    ``Content-Type`` field names (case-insensitive) for the MIME nesting bound."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._long = re.compile(rb"(?m)^[^\r\n]{%d}" % (max_line - 1))
        self.bare = False
        self.nul = False
        self.long_line = 0  # number of the first line that is too long (1-based)
        self.lines = 0  # complete lines seen
        self.run = 0  # octets of the current (unfinished) line
        self.pending_cr = False
        self.tail = b""  # last octets, lowercased: a field name cut between pieces
        self.content_types = 0

    def feed(self, piece: bytes) -> None:
        if not piece:
            return
        if not self.nul and b"\x00" in piece:
            self.nul = True
        if not self.bare:
            data = b"\r" + piece if self.pending_cr else piece
            self.pending_cr = data.endswith(b"\r")
            if self.pending_cr:
                data = data[:-1]
            crlf = data.count(b"\r\n")
            if data.count(b"\r") != crlf or data.count(b"\n") != crlf:
                self.bare = True
        if not self.long_line:
            first = _first_eol(piece)
            if first < 0:
                self.run += len(piece)
                if self.run >= self.max_line - 1:
                    self.long_line = self.lines + 1
            else:
                if self.run + first >= self.max_line - 1:
                    self.long_line = self.lines + 1
                else:
                    m = self._long.search(piece, first)
                    if m is not None:
                        self.long_line = self.lines + piece.count(b"\n", 0, m.start()) + 1
                self.run = len(piece) - _last_eol(piece) - 1
        self.lines += piece.count(b"\n")
        low = self.tail + piece.lower()
        self.content_types += low.count(CONTENT_TYPE)
        self.tail = low[-(len(CONTENT_TYPE) - 1):]

    def finish(self) -> None:
        if self.pending_cr:  # content ending in a lone CR
            self.bare = True
            self.pending_cr = False
        if self.run >= self.max_line - 1 and not self.long_line:
            self.long_line = self.lines + 1

    def defect(self) -> StreamDefect | None:
        if self.bare:
            return BARE_EOL
        if self.nul:
            return NUL
        if self.long_line:
            return StreamDefect(554, "5.6.0", f"Line {self.long_line} longer than "
                                f"{self.max_line} octets (RFC 5321 §4.5.3.1.6)")
        return None


def _first_eol(b: bytes) -> int:
    cr, lf = b.find(b"\r"), b.find(b"\n")
    return lf if cr < 0 else cr if lf < 0 else min(cr, lf)


def _last_eol(b: bytes) -> int:
    return max(b.rfind(b"\r"), b.rfind(b"\n"))


class SpoolFile:
    """A message being written to ``path``, hashed as it goes (worker threads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._hash = hashlib.sha256()
        self._fd: int | None = None
        self.blob_id = ""
        # ``discard`` may come from the loop while a worker thread writes (the client
        # went away mid-transfer): the descriptor is closed by whoever holds the lock
        # once the discard is asked, never under a write in flight (a reused number).
        self._lock = threading.Lock()
        self._discarded = False

    def _write_sync(self, piece: bytes) -> None:
        with self._lock:
            if self._discarded:
                raise OSError(errno.ECANCELED, "spool file discarded")
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            view = memoryview(piece)
            while view:
                view = view[os.write(self._fd, view):]
            self._hash.update(piece)
            self.size += len(piece)
            if self._discarded:
                self._cleanup()
        if self._discarded and self._lock.acquire(blocking=False):  # asked meanwhile
            try:
                self._cleanup()
            finally:
                self._lock.release()

    async def write(self, piece: bytes) -> None:
        await asyncio.to_thread(self._write_sync, piece)

    async def close(self) -> None:
        """Done writing: the file is complete (not yet fsynced: ``put_file`` does it)."""
        await asyncio.to_thread(self._close_sync)

    def _close_sync(self) -> None:
        with self._lock:
            if self._discarded:
                raise OSError(errno.ECANCELED, "spool file discarded")
            if self._fd is None:  # nothing written: an empty file still
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(self._fd)
            self._fd = None
            self.blob_id = self._hash.hexdigest()

    def _cleanup(self) -> None:  # with the lock held
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)

    def discard(self) -> None:
        """Remove the file (idempotent; never raises, never waits): at once, or by the
        worker thread when its write in flight ends."""
        self._discarded = True
        if self._lock.acquire(blocking=False):
            try:
                self._cleanup()
            finally:
                self._lock.release()

    def read_sync(self) -> bytes:
        return self.path.read_bytes()


def spool_path(directory: Path) -> Path:
    """A fresh spool file name in the blob store's temp directory: ``<name>.<pid>.<ns>``,
    the pattern ``BlobStore.sweep_temp`` knows (a dead writer's file is swept)."""
    return directory / f"spool-{secrets.token_hex(8)}.{os.getpid()}.{time.monotonic_ns()}"


@dataclass
class MessageContent:
    """The content of one DATA/BDAT (dot-unstuffed, without the end marker), in memory
    (``data``) or spooled (``spool``, complete and closed). ``head``: the whole content
    in memory, else its first octets (the header section, bounded)."""

    size: int
    data: bytes | None = None
    spool: SpoolFile | None = None
    head: bytes = b""
    defect: StreamDefect | None = None  # spooled: what the streaming checks found
    content_types: int = 0  # spooled: ``Content-Type`` field names seen

    @property
    def spooled(self) -> bool:
        return self.spool is not None

    async def read(self) -> bytes:
        """All the octets (a spooled message is read from its file in a thread)."""
        if self.data is not None:
            return self.data
        assert self.spool is not None
        return await asyncio.to_thread(self.spool.read_sync)

    def discard(self) -> None:
        if self.spool is not None:
            self.spool.discard()


class MessageSink:
    """Collects the octets of one message (see the module notes). ``feed`` the
    unstuffed octets as they arrive, then ``finish``; ``abort`` on any error."""

    def __init__(self, budget: MessageBudget | None, *, max_size: int, max_line: int,
                 threshold: int = 0, spool_dir: Path | None = None,
                 head_limit: int = 512 * 1024) -> None:
        self.budget = budget
        self.max_size = max_size
        self.max_line = max_line
        self.threshold = threshold if spool_dir is not None else 0
        self.spool_dir = spool_dir
        self.head_limit = head_limit
        self.state = DataState.OK
        self.size = 0  # octets fed (after the transparency dot is removed)
        self.reserved = 0
        self.buf = bytearray()
        self.head = b""
        self.spool: SpoolFile | None = None
        self.checks: _StreamChecks | None = None

    @property
    def ok(self) -> bool:
        return self.state is DataState.OK

    def drop(self, state: DataState) -> None:
        """Refuse the message: nothing more is kept, the spool file goes at once."""
        self.state = state
        self.buf = bytearray()
        self.head = b""
        self.release()
        if self.spool is not None:
            self.spool.discard()
            self.spool = None

    def release(self) -> None:
        """Give back the budget held for the in-memory content (when done with it)."""
        if self.budget is not None and self.reserved:
            self.budget.release(self.reserved)
        self.reserved = 0

    def push(self, data: bytes) -> bool:
        """The fast path, without a coroutine per line: keep ``data`` in the buffer
        when nothing else has to happen (True); False means ``await feed(data)``."""
        n = len(data)
        if self.state is not DataState.OK or self.size + n > self.max_size:
            return False
        if self.spool is not None:
            if len(self.buf) + n >= PIECE or len(self.head) < self.head_limit:
                return False
        elif ((self.threshold and self.size + n > self.threshold) or (
                self.budget is not None and self.budget.used + n > self.budget.maximum)):
            return False
        elif self.budget is not None:
            self.budget.try_reserve(n)  # room was checked just above
            self.reserved += n
        self.size += n
        self.buf += data
        return True

    async def feed(self, data: bytes) -> None:
        if self.state is not DataState.OK:
            return
        self.size += len(data)
        if self.size > self.max_size:
            self.drop(DataState.TOO_BIG)
            return
        if self.spool is not None:
            if len(self.head) < self.head_limit:  # spooled early: the head is not whole
                self.head += data[:self.head_limit - len(self.head)]
            self.buf += data
            if len(self.buf) >= PIECE:
                await self._flush()
            return
        if self.threshold and self.size > self.threshold:
            self.buf += data
            await self._start_spool()
            return
        if self.budget is not None and not self.budget.try_reserve(len(data)):
            if not self.threshold:
                self.drop(DataState.NO_MEMORY)
                return
            self.buf += data  # memory is short: to disk, whatever the size
            await self._start_spool()
            return
        self.reserved += len(data)
        self.buf += data

    async def _start_spool(self) -> None:
        assert self.spool_dir is not None
        self.spool = SpoolFile(spool_path(self.spool_dir))
        self.checks = _StreamChecks(self.max_line)
        self.head = bytes(self.buf[:self.head_limit])
        self.release()  # the octets go to disk: no longer held against the budget
        await self._flush()

    async def _flush(self) -> None:
        assert self.spool is not None and self.checks is not None
        piece = bytes(self.buf)
        self.buf = bytearray()
        self.checks.feed(piece)
        spool = self.spool
        try:
            await spool.write(piece)
        except OSError:  # the disk is full or failing: 452 4.3.1 after the end of data
            self.drop(DataState.NO_MEMORY)

    async def finish(self) -> MessageContent:
        """The message (state OK), or an empty content for a refused one."""
        if self.state is not DataState.OK:
            return MessageContent(self.size)
        if self.spool is None:
            data = bytes(self.buf)
            self.buf = bytearray()
            return MessageContent(self.size, data=data, head=data)
        assert self.checks is not None
        if self.buf:
            await self._flush()
        spool = self.spool
        await spool.close()
        self.checks.finish()
        self.spool = None  # handed over: the caller discards it now
        return MessageContent(self.size, spool=spool, head=self.head,
                              defect=self.checks.defect(),
                              content_types=self.checks.content_types)

    def abort(self) -> None:
        """The transfer ended abnormally: release everything, remove the file."""
        self.drop(self.state if self.state is not DataState.OK else DataState.TOO_BIG)
