"""``mailstack serve --workers N``: one supervisor process, N worker processes serving the
same ports (docs/behaviour.md §10 "Workers").

Implementation notes (invariants):
- The supervisor binds every listener before it forks: one socket per (listener, worker
  slot), all with ``SO_REUSEPORT`` on the same port, so the kernel spreads new
  connections over the slots (no shared accept queue, no thundering herd). Port 0 is
  chosen once, by slot 0's socket; the other slots bind the port it got. Privileged
  ports are bound once, by the supervisor, before anything else runs.
- The supervisor keeps every socket open. A worker that dies is forked again into the
  same slot and gets the same socket back: connections the kernel queued for that slot
  meanwhile wait for the new worker instead of being reset.
- Each worker builds its own event loop, store connections and TLS context after the
  fork (nothing with a thread or a socket to the database is made before it).
- What must run once runs in worker 0 (the outbound queue runner, the garbage
  collector, the importer's job runner); the others wake worker 0's queue runner through
  a datagram socket pair when they queue mail. Everything else that is shared lives in
  the store (login throttle, claims, locks, the change log that carries IDLE wake-ups
  and credential changes) or in ``SharedCounts`` (open connections per client).
- SIGTERM/SIGINT to the supervisor: every worker gets SIGTERM and shuts down as a
  single process does; after ``shutdown_grace_seconds`` + 10 s a worker still running
  gets SIGKILL. A worker whose supervisor died is killed by the kernel
  (``PR_SET_PDEATHSIG``, SIGKILL): no orphans, and the ports are free at once for the
  next start, as after the crash of a single process (durability is the same: a 250 is
  only ever sent after the commit).
- SO_REUSEPORT would let a second server bind ports the first still serves, and split
  the traffic between them; a plain bind of each port first (``_probe``) gives the usual
  "address in use" instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import logging
import mmap
import os
import pathlib
import re
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field, fields
from typing import Any

from .config import ListenerSettings, Settings

log = logging.getLogger("mailstack")

BACKLOG = 100  # asyncio's default for start_server/create_server
SINGLE_SOCKET = ("metrics",)  # served by worker 0 only: counters stay one series
PR_SET_PDEATHSIG = 1


def default_workers() -> int:
    """The number of cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# --- open connections per client, shared by the workers --------------------------------


class SharedCounts:
    """Open connections per (listener, client key), summed over every worker, in a table
    of shared memory made before the fork. Each worker writes only its own column, so a
    worker that died is forgotten by zeroing its column (``reset_worker``); every access
    holds a POSIX record lock on the table's file (released by the kernel if its holder
    dies, unlike a semaphore).

    Slots: 16 bytes of key digest, then one unsigned 32-bit count per worker. Open
    addressing with linear probing; a slot whose counts are all zero may be taken by
    another key (a lookup never stops at it, only at a never-used slot). When more than
    half the slots have been used, the table is rebuilt with the live keys only."""

    KEY = 16

    def __init__(self, workers: int, slots: int = 1 << 15) -> None:
        self.workers = workers
        self.slots = slots
        self.slot_size = self.KEY + 4 * workers
        self.size = 8 + slots * self.slot_size  # header: used-slot count
        self.fd = os.memfd_create("mailstack-conns", 0)
        os.ftruncate(self.fd, self.size)
        self.mem = mmap.mmap(self.fd, self.size, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        self.worker = 0  # the column this process writes (set after the fork)
        self._row = struct.Struct(f"<{workers}I")

    @contextlib.contextmanager
    def _locked(self) -> Any:
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def _digest(self, scope: str, key: str) -> bytes:
        d = hashlib.blake2b(f"{scope}\0{key}".encode(), digest_size=self.KEY).digest()
        return d if d != bytes(self.KEY) else b"\1" + d[1:]  # all-zero marks "never used"

    def _counts(self, off: int) -> tuple[int, ...]:
        return self._row.unpack_from(self.mem, off + self.KEY)

    def _find(self, digest: bytes, *, insert: bool) -> int | None:
        """Offset of the slot holding ``digest``; with ``insert``, a slot for it."""
        mem, size = self.mem, self.slot_size
        i = int.from_bytes(digest[:8], "little") % self.slots
        free: int | None = None
        empty = bytes(self.KEY)
        for _ in range(self.slots):
            off = 8 + i * size
            k = mem[off:off + self.KEY]
            if k == digest:
                return off
            if k == empty:
                if not insert:
                    return None
                if free is None:
                    free = off
                    used = struct.unpack_from("<Q", mem, 0)[0] + 1
                    struct.pack_into("<Q", mem, 0, used)
                mem[free:free + self.KEY] = digest
                return free
            if insert and free is None and not any(self._counts(off)):
                free = off
            i = (i + 1) % self.slots
        if insert and free is not None:
            mem[free:free + self.KEY] = digest
        return free if insert else None

    def _rebuild(self) -> None:
        live = []
        for i in range(self.slots):
            off = 8 + i * self.slot_size
            counts = self._counts(off)
            if any(counts):
                live.append((bytes(self.mem[off:off + self.KEY]), counts))
        self.mem[:] = bytes(self.size)
        for digest, counts in live:
            at = self._find(digest, insert=True)
            assert at is not None
            self._row.pack_into(self.mem, at + self.KEY, *counts)

    def acquire(self, scope: str, key: str, cap: int) -> bool:
        """Count one more connection of ``key`` unless the workers together already
        hold ``cap``; False: refused (nothing counted)."""
        digest = self._digest(scope, key)
        with self._locked():
            if struct.unpack_from("<Q", self.mem, 0)[0] > self.slots // 2:
                self._rebuild()
            off = self._find(digest, insert=True)
            if off is None:  # full of live keys: fail open rather than refuse everyone
                return True
            counts = list(self._counts(off))
            if sum(counts) >= cap:
                return False
            counts[self.worker] += 1
            self._row.pack_into(self.mem, off + self.KEY, *counts)
            return True

    def release(self, scope: str, key: str) -> None:
        digest = self._digest(scope, key)
        with self._locked():
            off = self._find(digest, insert=False)
            if off is None:
                return
            counts = list(self._counts(off))
            if counts[self.worker] > 0:
                counts[self.worker] -= 1
                self._row.pack_into(self.mem, off + self.KEY, *counts)

    def count(self, scope: str, key: str) -> int:
        with self._locked():
            off = self._find(self._digest(scope, key), insert=False)
            return 0 if off is None else sum(self._counts(off))

    def reset_worker(self, worker: int) -> None:
        """Forget what ``worker`` counted (it died, and its connections with it)."""
        with self._locked():
            at = self.KEY + 4 * worker
            for i in range(self.slots):
                struct.pack_into("<I", self.mem, 8 + i * self.slot_size + at, 0)


# --- what a worker is handed -------------------------------------------------------------


@dataclass
class WorkerInfo:
    """A worker's place: its index, its listening sockets, the shared tables."""

    index: int
    count: int
    sockets: dict[str, socket.socket]
    counts: SharedCounts
    wake_send: socket.socket  # any worker: "mail was queued"
    wake_recv: socket.socket  # worker 0 reads it

    @property
    def primary(self) -> bool:
        return self.index == 0

    def wake_queue(self) -> None:
        with contextlib.suppress(OSError):  # a full buffer already says "wake up"
            self.wake_send.send(b"q", socket.MSG_DONTWAIT)


def _bind(name: str, ls: ListenerSettings, port: int) -> socket.socket:
    infos = socket.getaddrinfo(ls.address or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    if len({info[4][0] for info in infos}) != 1:
        raise RuntimeError(f"listener {name}: address {ls.address!r} names "
                           f"{len(infos)} addresses; with --workers give one IP address")
    family, kind, proto, _c, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:  # as asyncio does: IPv6 only
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"listener {name}: cannot listen on {ls.address}:{port}: "
                           f"{exc.strerror or exc}") from exc
    return sock


def _probe(name: str, ls: ListenerSettings) -> None:
    """Fail as a single process would if anything listens on the port already (a
    socket with SO_REUSEPORT of another server would otherwise share it silently)."""
    if ls.port == 0:
        return
    infos = socket.getaddrinfo(ls.address or None, ls.port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    family, kind, proto, _c, addr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            probe.bind(addr)
        except OSError as exc:
            raise RuntimeError(f"listener {name}: cannot listen on {ls.address}:{ls.port}: "
                               f"{exc.strerror or exc}") from exc


def bind_listeners(settings: Settings, workers: int) -> dict[str, list[socket.socket]]:
    """Every enabled listener's sockets, one per worker slot (one for ``metrics``)."""
    out: dict[str, list[socket.socket]] = {}
    try:
        for f in fields(settings.listeners):
            ls: ListenerSettings = getattr(settings.listeners, f.name)
            if not ls.enabled:
                continue
            _probe(f.name, ls)
            first = _bind(f.name, ls, ls.port)
            out[f.name] = [first]
            port = int(first.getsockname()[1])
            for _ in range(1, 1 if f.name in SINGLE_SOCKET else workers):
                out[f.name].append(_bind(f.name, ls, port))
    except BaseException:
        for socks in out.values():
            for s in socks:
                s.close()
        raise
    return out


# --- ACME HTTP-01 answers every worker can give -----------------------------------------

TOKEN = re.compile(r"[A-Za-z0-9_-]{1,200}")  # base64url (RFC 8555 §8.3)
DNS_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,252}")  # TLS-ALPN-01 names (RFC 8737 §3)


class DirChallenges(MutableMapping[str, str]):
    """``Services.acme_challenges`` (HTTP-01 token -> key authorization) and
    ``Services.acme_alpn`` (TLS-ALPN-01 name -> key authorization), kept as files in
    the data dir, so the CA's validation request is answered whichever worker the
    kernel gives it to (RFC 8555 §8.3, RFC 8737 §3). Keys that do not match ``key``
    (base64url tokens by default) are never looked up."""

    def __init__(self, root: pathlib.Path, key: re.Pattern[str] = TOKEN) -> None:
        self.root = root
        self.key = key

    def _path(self, token: str) -> pathlib.Path:
        if not self.key.fullmatch(token):
            raise KeyError(token)
        return self.root / token

    def __getitem__(self, token: str) -> str:
        try:
            return self._path(token).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            raise KeyError(token) from None

    def __setitem__(self, token: str, value: str) -> None:
        path = self._path(token)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{token}.{os.getpid()}")
        tmp.write_text(value, encoding="ascii")
        os.replace(tmp, path)

    def __delitem__(self, token: str) -> None:
        try:
            self._path(token).unlink()
        except OSError:
            raise KeyError(token) from None

    def __iter__(self) -> Iterator[str]:
        try:
            names = [p.name for p in self.root.iterdir()]
        except OSError:
            names = []
        return iter([n for n in names if self.key.fullmatch(n)])

    def __len__(self) -> int:
        return sum(1 for _ in self)


# --- the supervisor ----------------------------------------------------------------------


def _set_parent_death_signal() -> None:
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class _Slot:
    index: int
    pid: int = 0
    started: float = 0.0
    failures: int = 0  # quick deaths in a row (a crash loop backs off)
    restart_at: float = 0.0


@dataclass
class Supervisor:
    settings: Settings
    workers: int
    run_worker: Callable[[WorkerInfo], int]  # in the child; its return is the exit code
    sockets: dict[str, list[socket.socket]] = field(default_factory=dict)
    quick_death: float = 10.0  # a worker dying sooner than this after its start ...
    backoff: tuple[float, float] = (0.5, 30.0)  # ... is restarted after these delays

    def __post_init__(self) -> None:
        self.counts = SharedCounts(self.workers)
        self.wake_recv, self.wake_send = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.slots = [_Slot(i) for i in range(self.workers)]
        self.stopping = False
        self.stop_deadline = 0.0
        self.pid = os.getpid()

    @property
    def ports(self) -> dict[str, int]:
        return {name: int(socks[0].getsockname()[1]) for name, socks in self.sockets.items()}

    def pids(self) -> list[int]:
        return [s.pid for s in self.slots if s.pid]

    # --- life cycle ----------------------------------------------------------------------
    def run(self, on_started: Callable[[Supervisor], None] | None = None, *,
            noted: list[int] | None = None) -> int:
        """Fork the workers, restart those that die, stop all on SIGTERM/SIGINT.
        ``noted``: signals that came during the preparation (``signals_noted``), looked
        at once our own handlers are in place: then nothing is forked."""
        if threading.active_count() > 1:  # fork copies no thread: none may hold a lock
            log.warning("workers: %d threads alive before fork", threading.active_count())
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._pipe = (r, w)
        old_wakeup = signal.set_wakeup_fd(w)
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)}
        try:
            if noted:
                return 0
            for slot in self.slots:
                if not self.stopping:
                    self._spawn(slot)
            if on_started is not None:
                on_started(self)
            self._loop(r)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(old_wakeup)
            os.close(r)
            os.close(w)
            for socks in self.sockets.values():
                for s in socks:
                    s.close()
        log.info("stopped")
        return 0

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
            self.stop()

    def stop(self) -> None:
        self.stopping = True
        grace = self.settings.server.shutdown_grace_seconds
        self.stop_deadline = time.monotonic() + grace + 10.0
        log.info("shutting down %d workers", len(self.pids()))
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _loop(self, wake_fd: int) -> None:
        while True:
            self._reap()
            now = time.monotonic()
            if self.stopping:
                if not self.pids():
                    return
                if now > self.stop_deadline:
                    for pid in self.pids():
                        log.warning("worker pid %d did not stop in time: killed", pid)
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    self.stop_deadline = now + 5.0
            else:
                for slot in self.slots:
                    if not slot.pid and slot.restart_at <= now:
                        self._spawn(slot)
            timeout = 1.0
            waiting = [s.restart_at for s in self.slots if not s.pid]
            if waiting and not self.stopping:
                timeout = max(0.0, min(timeout, min(waiting) - now))
            with contextlib.suppress(InterruptedError):
                select.select([wake_fd], [], [], timeout)
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_fd, 512):
                    pass

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue
            slot.pid = 0
            self.counts.reset_worker(slot.index)  # its connections died with it
            if self.stopping:
                continue
            how = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                   else f"exit code {os.waitstatus_to_exitcode(status)}")
            now = time.monotonic()
            slot.failures = slot.failures + 1 if now - slot.started < self.quick_death else 0
            first, most = self.backoff
            delay = 0.0 if slot.failures == 0 else min(first * 2 ** (slot.failures - 1), most)
            slot.restart_at = now + delay
            log.warning("worker %d (pid %d) ended (%s); restarting it%s", slot.index, pid,
                        how, f" in {delay:.1f} s" if delay else "")

    def _spawn(self, slot: _Slot) -> None:
        # Signals wait until each side has its handlers: the child must never run the
        # supervisor's, and the supervisor must know the pid before a stop.
        handled = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
        signal.pthread_sigmask(signal.SIG_BLOCK, handled)
        pid = os.fork()
        if pid:
            slot.pid, slot.started = pid, time.monotonic()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
            log.info("worker %d started (pid %d)", slot.index, pid)
            return
        code = 1
        try:  # the child: never returns to the caller
            _set_parent_death_signal()
            if os.getppid() != self.pid:  # the supervisor died before prctl took effect
                os._exit(0)
            signal.set_wakeup_fd(-1)
            for sig in handled:
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
            os.close(self._pipe[0])
            os.close(self._pipe[1])
            mine: dict[str, socket.socket] = {}
            for name, socks in self.sockets.items():
                for i, s in enumerate(socks):
                    if i == slot.index:
                        mine[name] = s
                    else:
                        s.close()
            self.counts.worker = slot.index
            if slot.index != 0:
                self.wake_recv.close()
            code = self.run_worker(WorkerInfo(slot.index, self.workers, mine, self.counts,
                                              self.wake_send, self.wake_recv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            with contextlib.suppress(Exception):
                log.exception("worker %d failed", slot.index)
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)


@contextlib.contextmanager
def signals_noted() -> Iterator[list[int]]:
    """While the supervisor prepares (migrations, binding): SIGTERM/SIGINT are noted,
    not fatal, so a stop asked for during start-up ends the server cleanly."""
    noted: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _f: noted.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield noted
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True
