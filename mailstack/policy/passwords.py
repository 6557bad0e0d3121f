"""Password hashing: Argon2id only (docs/behaviour.md §2), verified off the event loop.

``verify`` does one full Argon2 computation, also when the hash is missing (an unknown
address is checked against a dummy hash) so the reply time does not tell whether an
address exists.

Verified-credential cache (the model is Dovecot's ``auth_cache``): a phone that logs in
every minute should cost one Argon2 per cache lifetime, not one per login. Only
SUCCESSFUL checks are remembered, as an HMAC (a per-process random key) of the stored
hash and the offered password, with an expiry; bounded in size (least recently used
entries go first). Invalidation needs no bookkeeping: a changed password or a revoked
app password is a different (or absent) stored hash, so no entry matches it any more.
A failed attempt always pays the full Argon2 cost, so timing still tells nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


class Passwords:
    def __init__(self, time_cost: int = 3, memory_kib: int = 65536, parallelism: int = 4,
                 *, cache_seconds: float = 0.0, cache_size: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ph = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib,
                                  parallelism=parallelism)
        self._dummy = self._ph.hash(secrets.token_urlsafe(16))
        self.cache_seconds = cache_seconds
        self.cache_size = cache_size
        self._clock = clock
        self._cache_key = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, float] = OrderedDict()
        self.cache_hits = 0  # for tests and metrics

    # --- the verified-credential cache -----------------------------------------------
    def _cache_id(self, stored: str, password: str) -> bytes:
        return hmac.new(self._cache_key, stored.encode() + b"\0" + password.encode(),
                        hashlib.sha256).digest()

    def _cached(self, stored: str | None, password: str) -> bool:
        if stored is None or self.cache_seconds <= 0:
            return False
        key = self._cache_id(stored, password)
        expires = self._cache.get(key)
        if expires is None:
            return False
        if expires <= self._clock():
            del self._cache[key]
            return False
        self._cache.move_to_end(key)
        self.cache_hits += 1
        return True

    def _remember(self, stored: str, password: str) -> None:
        if self.cache_seconds <= 0:
            return
        self._cache[self._cache_id(stored, password)] = self._clock() + self.cache_seconds
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def hash_sync(self, password: str) -> str:
        return self._ph.hash(password)

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._ph.hash, password)

    def _verify_sync(self, stored: str | None, password: str) -> bool:
        try:
            self._ph.verify(stored or self._dummy, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return stored is not None

    async def verify(self, stored: str | None, password: str) -> bool:
        if self._cached(stored, password):
            return True
        ok = await asyncio.to_thread(self._verify_sync, stored, password)
        if ok and stored is not None:
            self._remember(stored, password)
        return ok

    async def verify_any(self, hashes: list[str], password: str) -> int | None:
        """Index of the first hash ``password`` matches, or None."""
        for i, h in enumerate(hashes):
            if self._cached(h, password):
                return i

        def run() -> int | None:
            for i, h in enumerate(hashes):
                if self._verify_sync(h, password):
                    return i
            return None
        idx = await asyncio.to_thread(run)
        if idx is not None:
            self._remember(hashes[idx], password)
        return idx


MIN_PASSWORD_LENGTH = 8


def password_problem(password: str) -> str | None:
    """Why ``password`` may not be chosen (the web pages' rule, the same as the
    command line's), or None. Never echoes the password."""
    if not password:
        return "the password is empty"
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"the password is shorter than {MIN_PASSWORD_LENGTH} characters"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in password):
        return "the password contains a control character"
    return None


def new_app_password() -> str:
    """Four groups of four lowercase letters: easy to type on a phone, ~75 bits."""
    import string

    letters = string.ascii_lowercase
    return "-".join("".join(secrets.choice(letters) for _ in range(4)) for _ in range(4))
