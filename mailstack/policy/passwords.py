"""Password hashing: Argon2id only (docs/behaviour.md §2), verified off the event loop.

``verify`` always does one full Argon2 computation, also when the hash is missing (an
unknown address is checked against a dummy hash) so the reply time does not tell
whether an address exists.
"""

from __future__ import annotations

import asyncio
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


class Passwords:
    def __init__(self, time_cost: int = 3, memory_kib: int = 65536, parallelism: int = 4):
        self._ph = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib,
                                  parallelism=parallelism)
        self._dummy = self._ph.hash(secrets.token_urlsafe(16))

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
        return await asyncio.to_thread(self._verify_sync, stored, password)

    async def verify_any(self, hashes: list[str], password: str) -> int | None:
        """Index of the first hash ``password`` matches, or None."""
        def run() -> int | None:
            for i, h in enumerate(hashes):
                if self._verify_sync(h, password):
                    return i
            return None
        return await asyncio.to_thread(run)
