"""The composition root: build store, services and listeners from settings; run until
SIGTERM/SIGINT; shut down cleanly (sessions told, listeners closed, store closed).

Front-ends plug in through ``FRONTENDS``: listener name -> (module, role). A front-end
module exposes ``build(services, name, role, listener_settings) -> FrontEnd``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import fields
from typing import IO, TYPE_CHECKING, Any, Protocol

from . import metrics
from .config import ListenerSettings, Settings
from .importer.runner import ImportRunner
from .memory import freeze_heap, pin_mmap_threshold, thaw_heap
from .services import Services
from .store import Store
from .store.backup import hold_data_dir
from .tls import ensure_self_signed, load_first_cert, server_context
from .workers import DNS_NAME, DirChallenges

if TYPE_CHECKING:
    from .web.acme import AcmeManager
    from .workers import WorkerInfo

LISTENING_FILE = "listening.json"

if TYPE_CHECKING:
    from .outbound.routing import Resolver
    from .outbound.runner import QueueRunner, TlsPolicy

log = logging.getLogger("mailstack")

# listener name -> (front-end module, role the module gives it)
FRONTENDS: dict[str, tuple[str, str]] = {
    "smtp": ("mailstack.smtp", "mx"),
    "submissions": ("mailstack.smtp", "submission"),
    "submission": ("mailstack.smtp", "submission"),
    "imaps": ("mailstack.imap", "imap"),
    "imap": ("mailstack.imap", "imap"),
    "pop3s": ("mailstack.pop3", "pop3"),
    "pop3": ("mailstack.pop3", "pop3"),
    "https": ("mailstack.web", "https"),
    "http": ("mailstack.web", "http"),
    "metrics": ("mailstack.web", "metrics"),
}


class FrontEnd(Protocol):
    name: str
    port: int

    async def start(self) -> None: ...
    async def close(self, grace: float = 0.0) -> None: ...


class App:
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time,
                 generate_cert: bool = False, resolver: Resolver | None = None,
                 tls_policy: TlsPolicy | None = None,
                 worker: WorkerInfo | None = None) -> None:
        """``resolver``/``tls_policy``: for the outbound runner (tests give fakes).
        ``worker``: one of ``serve --workers N``'s processes (mailstack/workers.py):
        listeners on the supervisor's sockets; what must run once only in worker 0."""
        self.settings = settings
        self.clock = clock
        self.generate_cert = generate_cert
        self.resolver = resolver
        self.tls_policy = tls_policy
        self.runner: QueueRunner | None = None
        self.store: Store | None = None
        self.services: Services | None = None
        self.frontends: dict[str, FrontEnd] = {}
        self._gc_task: asyncio.Task[None] | None = None
        self._dir_lock: IO[bytes] | None = None  # tells `mailstack restore` we run
        self.importer: ImportRunner | None = None
        self.acme: AcmeManager | None = None
        self._acme_task: asyncio.Task[None] | None = None
        self._security_task: asyncio.Task[None] | None = None
        self._queue_task: asyncio.Task[None] | None = None
        self._queue_stats = (0.0, 0.0)  # waiting rows, age of the oldest (for /metrics)
        self.worker = worker
        self._wake_task: asyncio.Task[None] | None = None

    @property
    def runs_singletons(self) -> bool:
        """This process runs what must run once per box: the outbound queue runner,
        the blob collector, the importer's job runner (worker 0, or the only process)."""
        return self.worker is None or self.worker.primary

    @property
    def ports(self) -> dict[str, int]:
        return {name: fe.port for name, fe in self.frontends.items()}

    async def start(self) -> None:
        s = self.settings
        if self.generate_cert or (s.tls.acme and not (s.cert_path.exists()
                                                      and s.key_path.exists())):
            # with ACME: a stand-in until the first certificate arrives (then swapped in)
            ensure_self_signed(s.cert_path, s.key_path, s.server.hostname)
        ctx = None
        if s.cert_path.exists() and s.key_path.exists():
            ctx = server_context(s.cert_path, s.key_path, s.tls.min_version)
            with contextlib.suppress(OSError, ValueError, IndexError):
                metrics.CERT_EXPIRY.set(
                    load_first_cert(s.cert_path).not_valid_after_utc.timestamp())
        pin_mmap_threshold()  # big TLS buffers go back to the system (memory.py)
        self.store = await Store.open_from_settings(s, self.clock)
        if self.worker is not None:  # SQLite: the workers' writes queue in the kernel
            self.store.share_writer_queue(s.data_dir / "sqlite-writers.lock")
        self.services = Services.build(s, self.store, ctx, self.clock, worker=self.worker)
        # ACME answers as files, seen by every worker (and node sharing the data dir):
        # HTTP-01 on port 80, TLS-ALPN-01 on the https listener
        self.services.acme_challenges = DirChallenges(s.acme_dir / "challenges")
        self.services.acme_alpn = DirChallenges(s.acme_dir / "alpn", DNS_NAME)
        self._dir_lock = hold_data_dir(s.data_dir)
        try:
            for f in fields(s.listeners):
                ls: ListenerSettings = getattr(s.listeners, f.name)
                if not ls.enabled:
                    continue
                if self.worker is not None and f.name not in self.worker.sockets:
                    continue  # e.g. metrics: worker 0 only
                if ls.tls != "none" and ctx is None:
                    raise RuntimeError(f"listener {f.name} needs TLS but {s.cert_path} / "
                                       f"{s.key_path} do not exist (use --dev to generate "
                                       "a self-signed certificate)")
                module_name, role = FRONTENDS[f.name]
                module = importlib.import_module(module_name)
                fe: FrontEnd = module.build(self.services, f.name, role, ls)
                await fe.start()
                self.frontends[f.name] = fe
                self.services.bound_ports[f.name] = fe.port
                log.info("listening: %s on %s:%d (%s)", f.name, ls.address, fe.port, ls.tls)
        except BaseException:
            await self.stop()
            raise
        if self.worker is not None:
            self._wake_task = asyncio.create_task(self._queue_wakeups(self.worker))
        if s.server.blob_gc_interval_seconds > 0 and self.runs_singletons:
            self._gc_task = asyncio.create_task(self._collect_garbage_forever())
        # delivery to the internet (docs/behaviour.md §6)
        if s.outbound.enabled and self.runs_singletons:
            from .outbound.runner import QueueRunner, opportunistic
            from .outbound.security import TransportSecurity

            policy = self.tls_policy
            if policy is None and self.resolver is None:  # production: DANE, MTA-STS
                security = TransportSecurity.from_settings(s, self.store, self.clock)
                self._security_task = asyncio.create_task(self._security_forever(security))
                policy = security
            self.runner = QueueRunner(self.store, s, resolver=self.resolver,
                                      clock=self.clock, tls_policy=policy or opportunistic)
            self.runner.start()
            self._queue_task = asyncio.create_task(self._queue_gauges_forever())
        if s.importer.enabled and self.runs_singletons:
            self.importer = ImportRunner(self.store, s, clock=self.clock,
                                         cafile=s.importer.ca_file or None)
            await self.importer.start()
        if s.tls.acme and self.services.server_ssl is not None:
            from .web.acme import AcmeManager

            ctx = self.services.server_ssl
            self.acme = AcmeManager(s, self.store, self.services.acme_challenges,
                                    lambda: [ctx], clock=self.clock,
                                    alpn=self.services.acme_alpn)
            self._acme_task = asyncio.create_task(self.acme.run_forever())
        if self.worker is None:  # the supervisor writes it for its workers
            write_listening(s, self.ports)
        # start-up objects out of the cyclic GC's full scans (no 60-80 ms pauses inside
        # clients' commands; memory.py says why)
        log.debug("heap frozen: %d objects", freeze_heap())

    async def _queue_wakeups(self, worker: WorkerInfo) -> None:
        """Mail queued by any worker starts worker 0's queue runner at once: the others
        pass their store's wake-up on through the supervisor's socket pair."""
        assert self.store is not None
        wakeup = self.store.queue_wakeup
        if not worker.primary:
            while True:
                await wakeup.wait()
                wakeup.clear()
                worker.wake_queue()
        loop = asyncio.get_running_loop()
        sock = worker.wake_recv
        sock.setblocking(False)
        while True:
            try:
                await loop.sock_recv(sock, 512)
            except OSError:
                await asyncio.sleep(1)
            wakeup.set()

    async def _queue_gauges_forever(self) -> None:
        """The outbound queue's size and oldest age for /metrics, read every 15 s (a scrape
        must not wait on the database)."""
        removers = [
            metrics.register_gauge("queue_size", "Messages waiting in the outbound queue.",
                                   lambda: self._queue_stats[0]),
            metrics.register_gauge("queue_oldest_age_seconds", "Age of the oldest message "
                                   "waiting in the outbound queue.",
                                   lambda: self._queue_stats[1])]
        try:
            while self.store is not None:
                with contextlib.suppress(Exception):  # database away: keep the last value
                    st = await self.store.queue_stats()
                    self._queue_stats = (float(st.waiting), st.oldest_age)
                await asyncio.sleep(15)
        finally:
            for remove in removers:
                remove()

    async def _security_forever(self, security: Any) -> None:
        """Start-up check of the validating resolver, then once a minute: TLS-RPT counts
        to the store, and yesterday's TLS reports sent if no node has sent them yet
        (docs/behaviour.md §6)."""
        from .outbound.dkim import DkimSigner
        from .outbound.reports import deliver_report

        assert self.store is not None
        store = self.store
        signer = DkimSigner(store)
        lifetime = self.settings.outbound.lifetime_seconds

        async def deliver(_sender: str, rcpt: str, message: bytes) -> None:
            # empty return path: a report is never answered by a report (RFC 3464 §2)
            await deliver_report(store, rcpt, await signer.sign(message) + message,
                                 lifetime=lifetime)

        daily = security.daily_reports(self.settings, store, store.node_id, deliver)
        try:
            await security.start()
        except Exception:
            log.exception("outbound: DNSSEC resolver check failed")
        while True:
            try:
                await security.flush_results()
            except Exception:
                log.exception("outbound: storing TLS report counts failed; kept")
            if self.settings.outbound_tls.tls_reporting:
                try:
                    await daily.run_once()
                except Exception:
                    log.exception("outbound: sending TLS reports failed; tried again later")
            await asyncio.sleep(60)

    async def _collect_garbage_forever(self) -> None:
        s = self.settings.server
        while True:
            await asyncio.sleep(s.blob_gc_interval_seconds)
            if self.store is None:
                return
            try:
                removed = await self.store.collect_garbage(s.blob_gc_min_age_seconds)
                if removed:
                    log.info("blob collector: %d unreferenced message files removed",
                             removed)
                await self.store.prune_login_throttle(
                    self.clock() - self.settings.auth.failure_window_seconds, self.clock())
            except Exception:
                log.exception("blob collector failed; trying again later")

    async def stop(self, grace: float | None = None) -> None:
        grace = self.settings.server.shutdown_grace_seconds if grace is None else grace
        if self.runner is not None:
            await self.runner.stop()
            self.runner = None
        if self.importer is not None:
            await self.importer.stop()
            self.importer = None
        for task in (self._gc_task, self._acme_task, self._security_task, self._queue_task,
                     self._wake_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._gc_task = self._acme_task = self._security_task = self._queue_task = None
        self._wake_task = None
        await asyncio.gather(*(fe.close(grace) for fe in self.frontends.values()),
                             return_exceptions=True)
        if self.frontends and self.worker is None:
            remove_listening(self.settings)
        self.frontends.clear()
        if self.services is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.services.notifier.drain(), 5)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.services.autoreplies.drain(), 5)
            await self.services.autoreplies.close()
        if self.store is not None:
            await self.store.close()
            self.store = None
        if self._dir_lock is not None:
            self._dir_lock.close()
            self._dir_lock = None
        thaw_heap()

    async def run_until_signal(self, on_started: Callable[[App], None] | None = None
                               ) -> None:
        """Start, call ``on_started``, serve until SIGTERM/SIGINT, then stop cleanly.
        Handlers are installed before starting, so a signal during start-up is kept."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            if on_started is not None:
                on_started(self)
            await stop.wait()
            log.info("shutting down")
        finally:
            await self.stop()


def write_listening(settings: Settings, ports: dict[str, int]) -> None:
    """Record the ports this process listens on and the host name clients are told, in
    ``<data_dir>/listening.json``, so ``mailstack client-settings`` prints the ports
    actually in use (dev mode's +10000, ephemeral ports). Best effort."""
    record = {"pid": os.getpid(), "hostname": settings.client_hostname, "ports": ports}
    with contextlib.suppress(OSError):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        tmp = settings.data_dir / f".{LISTENING_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, settings.data_dir / LISTENING_FILE)


def remove_listening(settings: Settings) -> None:
    path = settings.data_dir / LISTENING_FILE
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
            path.unlink()


def read_listening(settings: Settings) -> dict[str, Any] | None:
    """The record of a server process that is still running, or None."""
    try:
        record = json.loads((settings.data_dir / LISTENING_FILE).read_text(encoding="utf-8"))
        os.kill(int(record["pid"]), 0)
    except PermissionError:
        pass  # running, as another user
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if isinstance(record.get("ports"), dict) else None
