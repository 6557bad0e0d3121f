"""What every front-end is handed: settings, store, authentication, TLS, clock.

Built once by the composition root (``app.py``); front-ends never build their own.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import metrics
from .autoreplies import Autoresponder
from .config import Settings
from .memory import HandshakeLimiter, MessageBudget
from .notices import Notifier
from .outbound.dkim import DkimSigner
from .policy.auth import Authenticator, AuthResult, LoginGuard
from .policy.passwords import Passwords
from .store import Store


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
    acme_challenges: dict[str, str] = field(default_factory=dict)
    handshakes: HandshakeLimiter = field(default_factory=lambda: HandshakeLimiter(256))
    message_budget: MessageBudget = field(default_factory=lambda: MessageBudget(512 << 20))

    @property
    def hostname(self) -> str:
        return self.settings.server.hostname

    @classmethod
    def build(cls, settings: Settings, store: Store, server_ssl: ssl.SSLContext | None,
              clock: Callable[[], float] = time.time) -> Services:
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
                   message_budget=MessageBudget(settings.smtp.max_inflight_message_bytes))


class CountingAuthenticator(Authenticator):
    """The authenticator every front-end uses, counting outcomes per protocol."""

    async def authenticate(self, username: str, secret: str, *, client_ip: str,
                           protocol: str, authzid: str | None = None) -> AuthResult:
        result = await super().authenticate(username, secret, client_ip=client_ip,
                                            protocol=protocol, authzid=authzid)
        metrics.login(protocol, result.status)
        return result
