"""Giving memory back to the operating system after bursts of connections.

Why RSS stayed high after thousands of half-open TLS connections closed (measured with
``bench/tls_flood.py``): each pending handshake holds an ``SSLProtocol`` with a 256 KiB
receive buffer. glibc serves allocations above ``M_MMAP_THRESHOLD`` (128 KiB) with
``mmap`` and unmaps them on free, but its *dynamic* threshold rises to the size of the
largest mmapped chunk freed, after which the same 256 KiB buffers come from the heap;
freed in random order they leave a fragmented heap glibc does not return. Two remedies,
both no-ops outside glibc:

- ``pin_mmap_threshold()``: a fixed ``M_MMAP_THRESHOLD`` turns the dynamic adjustment
  off, so large buffers stay mmapped and go back to the system when freed;
- ``Trimmer``: after a burst of closed connections, ``malloc_trim(0)`` (in a thread)
  releases free heap pages.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
from typing import Any

log = logging.getLogger("mailstack.memory")

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
_libc: Any = None


def _glibc() -> Any:
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            lib.malloc_trim  # noqa: B018 - only glibc has it
            lib.mallopt  # noqa: B018
            _libc = lib
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def pin_mmap_threshold(size: int = 128 * 1024) -> bool:
    """Fix glibc's mmap threshold at ``size`` (turns the dynamic threshold off)."""
    lib = _glibc()
    return bool(lib and lib.mallopt(M_MMAP_THRESHOLD, size))


def malloc_trim() -> bool:
    """Return free heap memory to the system (glibc); True if some was released."""
    lib = _glibc()
    return bool(lib and lib.malloc_trim(0))


def freeze_heap() -> int:
    """Move every object alive now (modules, classes, compiled SQL, settings: what
    start-up built) out of the cyclic garbage collector's reach; returns how many.

    Why (measured with ``bench.mailbox_size``, docs in bench/README.md): a full
    (generation 2) collection walks every tracked object; with all front-ends, SQLAlchemy
    and the outbound stack imported that is 60-80 ms, and it lands inside whichever
    command allocates enough to trigger it (the first SELECT of a 10k mailbox, a FETCH,
    an APPEND), as latency for that client. Start-up objects live as long as the process,
    so scanning them finds nothing. Garbage is collected first so none of it is kept.
    ``thaw_heap()`` undoes it (``App.stop``: tests start many apps in one process)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def thaw_heap() -> None:
    gc.unfreeze()


def rss_bytes() -> int:
    """Resident set size of this process (Linux), 0 elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Trimmer:
    """Counts closed connections; after ``burst`` of them, trims once the loop has been
    quiet for ``delay`` seconds (never more than one trim in flight)."""

    def __init__(self, burst: int = 256, delay: float = 1.0) -> None:
        self.burst = burst
        self.delay = delay
        self.closed = 0
        self.trims = 0
        self._timer: asyncio.TimerHandle | None = None
        self._running = False

    def note_closed(self) -> None:
        self.closed += 1
        if self.closed < self.burst:
            return
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(self.delay, self._start)

    def _start(self) -> None:
        self._timer = None
        if self._running:
            return
        self.closed = 0
        self._running = True
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(malloc_trim))
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[bool]) -> None:
        self._running = False
        self.trims += 1
        if not task.cancelled() and task.exception() is not None:
            log.warning("malloc_trim failed: %r", task.exception())


class MessageBudget:
    """Octets of message content held in memory by SMTP sessions, all connections
    together (DATA being read, BDAT chunks, messages being checked and stored)."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.used = 0
        self.refused = 0

    def try_reserve(self, n: int) -> bool:
        if self.used + n > self.maximum:
            self.refused += 1
            return False
        self.used += n
        return True

    def release(self, n: int) -> None:
        self.used = max(0, self.used - n)


class HandshakeLimiter:
    """Pending TLS handshakes, all listeners together (docs/behaviour.md §1, §12)."""

    def __init__(self, maximum: int, trimmer: Trimmer | None = None) -> None:
        self.maximum = maximum
        self.pending = 0
        self.refused = 0
        self.trimmer = trimmer or Trimmer()

    def try_acquire(self) -> bool:
        if self.pending >= self.maximum:
            self.refused += 1
            return False
        self.pending += 1
        return True

    def release(self) -> None:
        self.pending = max(0, self.pending - 1)
