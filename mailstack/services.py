"""What every front-end is handed: settings, store, authentication, TLS, clock.

Built once by the composition root (``app.py``); front-ends never build their own.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import metrics
from .autoreplies import Autoresponder
from .config import Settings
from .memory import HandshakeLimiter, MessageBudget
from .notices import Notifier
from .outbound.dkim import DkimSigner
from .policy.auth import Authenticator, AuthResult, LoginGuard
from .policy.limits import ConnectionCounter, ConnVerdict
from .policy.passwords import Passwords
from .store import Store

if TYPE_CHECKING:
    from .workers import SharedCounts, WorkerInfo


@dataclass
class Services:
    settings: Settings
    store: Store
    passwords: Passwords
    guard: LoginGuard
    auth: Authenticator
    server_ssl: ssl.SSLContext | None
    notifier: Notifier
    autoreplies: Autoresponder
    clock: Callable[[], float] = field(default=time.time)
    # listener name -> port it bound (filled by the App as listeners start)
    bound_ports: dict[str, int] = field(default_factory=dict)
    # ACME HTTP-01 (RFC 8555 §8.3): token -> key authorization, served on port 80
    acme_challenges: MutableMapping[str, str] = field(default_factory=dict)
    # ACME TLS-ALPN-01 (RFC 8737): name -> key authorization; its challenge certificate
    # is served on the https listener to ClientHellos offering acme-tls/1 (web/tlsalpn.py)
    acme_alpn: MutableMapping[str, str] = field(default_factory=dict)
    handshakes: HandshakeLimiter = field(default_factory=lambda: HandshakeLimiter(256))
    message_budget: MessageBudget = field(default_factory=lambda: MessageBudget(512 << 20))
    # ``serve --workers N``: this worker's place (sockets bound by the supervisor, the
    # connection counts shared by all workers); None in a single process
    worker: WorkerInfo | None = None

    @property
    def hostname(self) -> str:
        return self.settings.server.hostname

    @property
    def shared_counts(self) -> SharedCounts | None:
        """Open connections per client counted over every worker (None: one process)."""
        return self.worker.counts if self.worker is not None else None

    def listen_socket(self, name: str) -> socket.socket | None:
        """The socket the supervisor bound for listener ``name`` (None: bind it)."""
        return self.worker.sockets.get(name) if self.worker is not None else None

    def bind_args(self, name: str, address: str, port: int) -> dict[str, Any]:
        """Keyword arguments for ``loop.create_server``: the supervisor's socket in a
        worker, else the address and port to bind."""
        sock = self.listen_socket(name)
        return {"sock": sock} if sock is not None else {"host": address, "port": port}

    def connection_counter(self, scope: str, per_client: int, *, ipv6_prefix: int = 64
                           ) -> ConnectionCounter:
        """Open connections per client network; summed over all workers when there
        are several (docs/behaviour.md §10)."""
        shared = self.shared_counts
        if shared is None:
            return ConnectionCounter(per_client, ipv6_prefix=ipv6_prefix)
        return SharedConnectionCounter(per_client, ipv6_prefix=ipv6_prefix, shared=shared,
                                       scope=scope)

    @classmethod
    def build(cls, settings: Settings, store: Store, server_ssl: ssl.SSLContext | None,
              clock: Callable[[], float] = time.time, *,
              worker: WorkerInfo | None = None) -> Services:
        a = settings.auth
        passwords = Passwords(a.argon2_time_cost, a.argon2_memory_kib, a.argon2_parallelism,
                              cache_seconds=a.credential_cache_seconds,
                              cache_size=a.credential_cache_size)
        guard = LoginGuard(a, store, clock)
        notifier = Notifier(store, settings.server.hostname, a, clock,
                            quota=settings.quota, plan_of=settings.plan)
        auth = CountingAuthenticator(store, passwords, guard, a, notifier)
        # replies that leave for the internet are DKIM-signed like all outbound mail
        autoreplies = Autoresponder(store, settings.autoresponder, settings.server.hostname,
                                    clock, signer=DkimSigner(store).sign)
        return cls(settings, store, passwords, guard, auth, server_ssl, notifier,
                   autoreplies, clock,
                   handshakes=HandshakeLimiter(settings.server.max_pending_tls_handshakes),
                   message_budget=MessageBudget(settings.smtp.max_inflight_message_bytes),
                   worker=worker)


class SharedConnectionCounter(ConnectionCounter):
    """A ``ConnectionCounter`` whose cap holds over every worker: this process counts
    as before, and the table shared by the workers must also have room."""

    def __init__(self, per_client: int, *, ipv6_prefix: int, shared: SharedCounts,
                 scope: str) -> None:
        super().__init__(per_client, ipv6_prefix=ipv6_prefix)
        self.shared = shared
        self.scope = scope

    def acquire(self, ip: str) -> ConnVerdict:
        verdict = super().acquire(ip)
        if verdict.allowed and not self.shared.acquire(self.scope, self.client_key(ip),
                                                       self.per_client):
            super().release(ip)
            return ConnVerdict(False, 421, "4.7.0",
                               "Too many connections from your address, try again later")
        return verdict

    def release(self, ip: str) -> None:
        super().release(ip)
        self.shared.release(self.scope, self.client_key(ip))


class CountingAuthenticator(Authenticator):
    """The authenticator every front-end uses, counting outcomes per protocol."""

    async def authenticate(self, username: str, secret: str, *, client_ip: str,
                           protocol: str, authzid: str | None = None) -> AuthResult:
        result = await super().authenticate(username, secret, client_ip=client_ip,
                                            protocol=protocol, authzid=authzid)
        metrics.login(protocol, result.status)
        return result
