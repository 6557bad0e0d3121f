"""What every front-end is handed: settings, store, authentication, TLS, clock.

Built once by the composition root (``app.py``); front-ends never build their own.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import Settings
from .memory import HandshakeLimiter, MessageBudget
from .notices import Notifier
from .policy.auth import Authenticator, LoginGuard
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
    clock: Callable[[], float] = field(default=time.time)
    handshakes: HandshakeLimiter = field(default_factory=lambda: HandshakeLimiter(256))
    message_budget: MessageBudget = field(default_factory=lambda: MessageBudget(512 << 20))

    @property
    def hostname(self) -> str:
        return self.settings.server.hostname

    @classmethod
    def build(cls, settings: Settings, store: Store, server_ssl: ssl.SSLContext | None,
              clock: Callable[[], float] = time.time) -> Services:
        a = settings.auth
        passwords = Passwords(a.argon2_time_cost, a.argon2_memory_kib, a.argon2_parallelism)
        guard = LoginGuard(a, store, clock)
        notifier = Notifier(store, settings.server.hostname, a, clock)
        auth = Authenticator(store, passwords, guard, a, notifier)
        handshakes = HandshakeLimiter(settings.server.max_pending_tls_handshakes)
        budget = MessageBudget(settings.smtp.max_inflight_message_bytes)
        return cls(settings, store, passwords, guard, auth, server_ssl, notifier, clock,
                   handshakes, budget)
