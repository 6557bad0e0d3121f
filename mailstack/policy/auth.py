"""Authentication shared by SMTP AUTH, IMAP LOGIN/AUTHENTICATE and POP3 USER/PASS/AUTH.

- The user name is the full address; the secret is the address's own password or one
  of its app passwords (only app passwords when the address is set so). docs/behaviour.md §2.
- Unknown address and wrong password are indistinguishable: same outcome, and one full
  Argon2 computation either way (``Passwords.verify`` hashes against a dummy).
- An authorization identity (SASL PLAIN authzid, RFC 4616 §2), if given, must equal
  the authentication identity; otherwise it is a failure like any other.
- ``LoginGuard`` (pure: a clock goes in) slows then refuses repeated failures per client
  network and per address, while a correct login from a network that has not failed
  against that address still works.
- Every success, failure and refusal goes to the activity log.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..config import AuthSettings
from ..store.base import Address
from .passwords import Passwords

LOOPBACK_V4 = ipaddress.ip_network("127.0.0.0/8")


def is_loopback(ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def may_send_password(tls_active: bool, client_ip: str, allow_loopback: bool) -> bool:
    """No password over an unencrypted connection, except from loopback when the
    operator allows it (docs/behaviour.md §1; RFC 4954 §4, RFC 3501 §6.2.3 LOGINDISABLED)."""
    return tls_active or (allow_loopback and is_loopback(client_ip))


def client_network(ip: str, v4_prefix: int = 24, v6_prefix: int = 64) -> str:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        else:
            return str(ipaddress.ip_network(f"{addr}/{v6_prefix}", strict=False))
    return str(ipaddress.ip_network(f"{addr}/{v4_prefix}", strict=False))


@dataclass(frozen=True)
class GuardVerdict:
    allowed: bool
    delay: float = 0.0  # seconds to wait before answering
    retry_at: float = 0.0  # when refused: the time attempts are accepted again


class LoginGuard:
    """Failure counters in one process (front-ends on several nodes each keep theirs;
    the counts are per node, a documented limitation)."""

    def __init__(self, settings: AuthSettings, clock: Callable[[], float] = time.time):
        self.s = settings
        self.clock = clock
        self._net: dict[str, deque[float]] = defaultdict(deque)
        self._addr: dict[str, deque[float]] = defaultdict(deque)
        self._pair: dict[tuple[str, str], deque[float]] = defaultdict(deque)
        self._locked_net: dict[str, float] = {}
        self._locked_addr: dict[str, float] = {}

    def _count(self, q: deque[float], now: float) -> int:
        horizon = now - self.s.failure_window_seconds
        while q and q[0] < horizon:
            q.popleft()
        return len(q)

    def _delay(self, failures: int) -> float:
        over = failures - self.s.slow_after_failures
        if over < 0:
            return 0.0
        return min(self.s.max_delay_seconds, 0.25 * (2 ** over))

    def check(self, network: str, address: str) -> GuardVerdict:
        now = self.clock()
        until = self._locked_net.get(network, 0.0)
        if until > now:
            return GuardVerdict(False, retry_at=until)
        until = self._locked_addr.get(address, 0.0)
        if until > now and self._count(self._pair[(address, network)], now) > 0:
            # The address is under attack; networks that failed against it are refused,
            # a clean network (the real user elsewhere) is only slowed.
            return GuardVerdict(False, retry_at=until)
        failures = max(self._count(self._net[network], now),
                       self._count(self._pair[(address, network)], now))
        if until > now:
            failures = max(failures, self.s.slow_after_failures)
        return GuardVerdict(True, delay=self._delay(failures))

    def failure(self, network: str, address: str) -> None:
        now = self.clock()
        for q in (self._net[network], self._addr[address], self._pair[(address, network)]):
            q.append(now)
        if self._count(self._net[network], now) >= self.s.lock_after_failures:
            self._locked_net[network] = now + self.s.lockout_seconds
        if self._count(self._addr[address], now) >= self.s.lock_after_failures:
            self._locked_addr[address] = now + self.s.lockout_seconds

    def success(self, network: str, address: str) -> None:
        self._pair.pop((address, network), None)


class AuthDirectory(Protocol):
    """What authentication needs from the store (mailstack.store.Store provides it)."""

    async def get_address(self, address: str) -> Address | None: ...
    async def app_password_hashes(self, address_id: int) -> list[tuple[int, str]]: ...
    async def touch_app_password(self, app_id: int) -> None: ...
    async def note_network(self, address_id: int, network: str) -> bool: ...
    async def log_activity(self, event: str, *, address: str | None = None,
                           client_ip: str | None = None, protocol: str | None = None,
                           detail: str = "") -> None: ...


@dataclass(frozen=True)
class AuthResult:
    status: str  # "ok" | "failed" | "refused"
    address_id: int = 0
    email: str = ""
    credential_epoch: int = 0
    retry_at: float = 0.0
    new_network: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def refusal_text(self) -> str:
        when = time.strftime("%H:%M:%S UTC", time.gmtime(self.retry_at))
        return f"Too many failed logins; try again after {when}"


class Notices(Protocol):
    """Where security notices go (``mailstack.notices.Notifier``)."""

    def login_from_new_network(self, address_id: int, email_addr: str, client_ip: str,
                               protocol: str) -> None: ...
    def failed_login(self, address_id: int, email_addr: str, client_ip: str,
                     protocol: str) -> None: ...


class Authenticator:
    def __init__(self, store: AuthDirectory, passwords: Passwords, guard: LoginGuard,
                 settings: AuthSettings, notices: Notices | None = None) -> None:
        self.store = store
        self.passwords = passwords
        self.guard = guard
        self.settings = settings
        self.notices = notices

    async def authenticate(self, username: str, secret: str, *, client_ip: str,
                           protocol: str, authzid: str | None = None) -> AuthResult:
        key = username.strip().lower()
        net = client_network(client_ip, self.settings.ipv4_prefix, self.settings.ipv6_prefix)
        verdict = self.guard.check(net, key)
        if not verdict.allowed:
            await self.store.log_activity("login_refused", address=key, client_ip=client_ip,
                                          protocol=protocol, detail="throttled")
            return AuthResult("refused", retry_at=verdict.retry_at)
        addr = await self.store.get_address(key) if "@" in key else None
        ok, app_id = await self._check_secret(addr, secret)
        if ok and authzid and authzid.strip().lower() != key:
            ok = False  # RFC 4616 §2: we do not let one identity act as another
        if verdict.delay:
            await asyncio.sleep(verdict.delay)
        if not ok or addr is None:
            self.guard.failure(net, key)
            await self.store.log_activity("login_fail", address=key, client_ip=client_ip,
                                          protocol=protocol)
            if addr is not None and self.notices is not None:
                self.notices.failed_login(addr.id, addr.email, client_ip, protocol)
            return AuthResult("failed")
        self.guard.success(net, key)
        if app_id is not None:
            await self.store.touch_app_password(app_id)
        new_net = await self.store.note_network(addr.id, net)
        await self.store.log_activity(
            "login_ok", address=key, client_ip=client_ip, protocol=protocol,
            detail=("app password" if app_id is not None else "password")
            + ("; new network" if new_net else ""))
        if new_net and self.notices is not None:
            self.notices.login_from_new_network(addr.id, addr.email, client_ip, protocol)
        return AuthResult("ok", addr.id, addr.email, addr.credential_epoch,
                          new_network=new_net)

    async def _check_secret(self, addr: Address | None, secret: str) -> tuple[bool, int | None]:
        if addr is None:
            await self.passwords.verify(None, secret)  # same cost as a real check
            return False, None
        if not addr.app_passwords_only and addr.password_hash:
            if await self.passwords.verify(addr.password_hash, secret):
                return True, None
        else:
            await self.passwords.verify(None, secret)
        apps = await self.store.app_password_hashes(addr.id)
        if apps:
            idx = await self.passwords.verify_any([h for _, h in apps], secret)
            if idx is not None:
                return True, apps[idx][0]
        return False, None
