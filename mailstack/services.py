"""What every front-end is handed: settings, store, authentication, TLS, clock.

Built once by the composition root (``app.py``); front-ends never build their own.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import Settings
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
        guard = LoginGuard(a, clock)
        notifier = Notifier(store, settings.server.hostname, a, clock)
        auth = Authenticator(store, passwords, guard, a, notifier)
        return cls(settings, store, passwords, guard, auth, server_ssl, notifier, clock)
