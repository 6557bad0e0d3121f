"""Authentication shared by SMTP AUTH, IMAP LOGIN/AUTHENTICATE and POP3 USER/PASS/AUTH.

- The user name is the full address; the secret is the address's own password or one
  of its app passwords (only app passwords when the address is set so). docs/behaviour.md §2.
- Unknown address and wrong password are indistinguishable: same outcome, and one full
  Argon2 computation either way (``Passwords.verify`` hashes against a dummy).
- An authorization identity (SASL PLAIN authzid, RFC 4616 §2), if given, must equal
  the authentication identity; otherwise it is a failure like any other.
- ``LoginGuard`` slows then refuses repeated failures of one (client network, address)
  pair; the network as a whole is slowed by its failures and refused only past a much
  higher threshold spread over many addresses (a spray), so a correct login of an
  untouched address from a shared network (an office, a carrier NAT) still works. The
  decisions are pure (``decide``, ``locks_after``); the counters live in the store
  (shared by every node, kept across restarts). docs/behaviour.md §2.
- Every success and failure goes to the activity log; refusals are aggregated (one row
  per network, address and minute). When the disk is full these writes are skipped with
  a log line, so reading mail keeps working (docs/behaviour.md §12).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from ..config import AuthSettings
from ..store.base import Address, InsufficientStorage
from ..store.events import AddressDeleted, CredentialRevoked, CredentialsChanged, Event
from ..store.throttle import NETWORK_WIDE, ThrottleFacts
from .passwords import Passwords

log = logging.getLogger("mailstack.auth")
T = TypeVar("T")

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


@dataclass(frozen=True)
class GuardLock:
    """A lock to store after a failure: ``address`` from ``network`` (``NETWORK_WIDE``
    for the whole network) until ``until``."""

    network: str
    address: str
    until: float


def _delay(s: AuthSettings, failures: int) -> float:
    over = failures - s.slow_after_failures
    if over < 0:
        return 0.0
    return min(s.max_delay_seconds, 0.25 * (2 ** min(over, 20)))


def decide(facts: ThrottleFacts, s: AuthSettings, now: float) -> GuardVerdict:
    """May a login of the address from the network be tried now, and how slowly?

    - The pair (network, address) that failed ``lock_after_failures`` times is refused.
    - A whole network is refused only when it is locked (a spray: see ``locks_after``).
    - Failures from the network against any address slow every attempt from it (an
      office or a carrier NAT is slowed, never locked out by one user's mistakes).
    - An address attacked from many networks slows the networks that never failed
      against it (the real user elsewhere), never refuses them.
    """
    if facts.net_locked_until > now:
        return GuardVerdict(False, retry_at=facts.net_locked_until)
    if facts.pair_locked_until > now:
        return GuardVerdict(False, retry_at=facts.pair_locked_until)
    failures = max(facts.pair_failures, facts.net_failures)
    if facts.addr_failures >= s.lock_after_failures:
        failures = max(failures, s.slow_after_failures)
    return GuardVerdict(True, delay=_delay(s, failures))


def locks_after(facts: ThrottleFacts, s: AuthSettings, network: str, address: str,
                now: float) -> list[GuardLock]:
    """The locks a failure (already counted in ``facts``) brings about."""
    out = []
    if facts.pair_failures >= s.lock_after_failures:
        out.append(GuardLock(network, address, now + s.lockout_seconds))
    if (facts.net_failures >= s.network_lock_after_failures
            and facts.net_addresses >= s.network_lock_min_addresses):
        out.append(GuardLock(network, NETWORK_WIDE, now + s.lockout_seconds))
    return out


class ThrottleStore(Protocol):
    """Where the guard keeps its counters (``mailstack.store.Store``)."""

    async def throttle_facts(self, network: str, address: str,
                             since: float) -> ThrottleFacts: ...
    async def record_login_failure(self, network: str, address: str, now: float,
                                   window: float) -> None: ...
    async def lock_logins(self, network: str, address: str, until: float,
                          now: float) -> None: ...
    async def clear_login_failures(self, network: str, address: str) -> None: ...


class LoginGuard:
    """Failure counters and locks kept in the store: they survive a restart and every
    worker and node shares them. The decisions are the pure ``decide``/``locks_after``
    (a clock goes in)."""

    def __init__(self, settings: AuthSettings, store: ThrottleStore,
                 clock: Callable[[], float] = time.time) -> None:
        self.s = settings
        self.store = store
        self.clock = clock

    async def check(self, network: str, address: str) -> GuardVerdict:
        now = self.clock()
        facts = await self.store.throttle_facts(network, address,
                                                now - self.s.failure_window_seconds)
        return decide(facts, self.s, now)

    async def failure(self, network: str, address: str) -> None:
        now = self.clock()
        window = self.s.failure_window_seconds
        await self.store.record_login_failure(network, address, now, window)
        facts = await self.store.throttle_facts(network, address, now - window)
        for lock in locks_after(facts, self.s, network, address, now):
            await self.store.lock_logins(lock.network, lock.address, lock.until, now)

    async def success(self, network: str, address: str) -> None:
        await self.store.clear_login_failures(network, address)


def session_ended_by(event: Event, epoch: int, credential: int) -> bool:
    """Does ``event`` end a session that logged in at credential ``epoch`` with
    ``credential`` (0: the address's password, else an app password id)? A new password
    ends every session of the address; a revoked app password only those that used it;
    "app passwords only" only those that used the address's password. docs/behaviour.md §2."""
    if isinstance(event, AddressDeleted):
        return True
    if isinstance(event, CredentialsChanged):
        return event.epoch > epoch
    if isinstance(event, CredentialRevoked):
        return event.app_password_id == credential
    return False


class CredentialCheck(Protocol):
    async def session_credential_valid(self, address_id: int, epoch: int,
                                       credential: int) -> bool: ...


async def credential_holds(store: CredentialCheck, addr: Address | None, epoch: int,
                           credential: int) -> bool:
    """Re-check of a session's credential against ``addr`` as just read (after
    subscribing to events, after a ``Resync``, periodically): the same rule as
    ``session_ended_by``; one more read only for app-password sessions."""
    if addr is None or addr.credential_epoch > epoch:
        return False
    if credential == 0:
        return not addr.app_passwords_only
    return await store.session_credential_valid(addr.id, epoch, credential)


class AuthDirectory(Protocol):
    """What authentication needs from the store (mailstack.store.Store provides it)."""

    async def get_address(self, address: str) -> Address | None: ...
    async def app_password_hashes(self, address_id: int) -> list[tuple[int, str]]: ...
    async def touch_app_password(self, app_id: int) -> None: ...
    async def note_network(self, address_id: int, network: str) -> bool: ...
    async def log_activity(self, event: str, *, address: str | None = None,
                           client_ip: str | None = None, protocol: str | None = None,
                           detail: str = "") -> None: ...
    async def log_attempt(self, event: str, *, address: str, network: str, client_ip: str,
                          protocol: str, detail: str = "", bucket: float = 60.0) -> None: ...


@dataclass(frozen=True)
class AuthResult:
    status: str  # "ok" | "failed" | "refused"
    address_id: int = 0
    email: str = ""
    credential_epoch: int = 0
    credential: int = 0  # which secret: 0 the address's password, else the app password id
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
        verdict = await self.guard.check(net, key)
        if not verdict.allowed:
            # one row per network, address and minute, with a count (docs/behaviour.md §12)
            await self._best_effort(self.store.log_attempt(
                "login_refused", address=key, network=net, client_ip=client_ip,
                protocol=protocol, detail="throttled"))
            return AuthResult("refused", retry_at=verdict.retry_at)
        addr = await self.store.get_address(key) if "@" in key else None
        ok, app_id = await self._check_secret(addr, secret)
        if ok and authzid and authzid.strip().lower() != key:
            ok = False  # RFC 4616 §2: we do not let one identity act as another
        if verdict.delay:
            await asyncio.sleep(verdict.delay)
        if not ok or addr is None:
            await self._best_effort(self.guard.failure(net, key))
            await self._best_effort(self.store.log_activity(
                "login_fail", address=key, client_ip=client_ip, protocol=protocol))
            if addr is not None and self.notices is not None:
                self.notices.failed_login(addr.id, addr.email, client_ip, protocol)
            return AuthResult("failed")
        # Reading mail must keep working when the disk is full: what a correct login
        # writes (counters, activity, last use) is best-effort (docs/behaviour.md §12).
        await self._best_effort(self.guard.success(net, key))
        if app_id is not None:
            await self._best_effort(self.store.touch_app_password(app_id))
        new_net = bool(await self._best_effort(self.store.note_network(addr.id, net)))
        await self._best_effort(self.store.log_activity(
            "login_ok", address=key, client_ip=client_ip, protocol=protocol,
            detail=("app password" if app_id is not None else "password")
            + ("; new network" if new_net else "")))
        if new_net and self.notices is not None:
            self.notices.login_from_new_network(addr.id, addr.email, client_ip, protocol)
        return AuthResult("ok", addr.id, addr.email, addr.credential_epoch,
                          credential=app_id or 0, new_network=new_net)

    @staticmethod
    async def _best_effort(write: Awaitable[T]) -> T | None:
        """A write that must not fail a login when the disk is full (one log line)."""
        try:
            return await write
        except InsufficientStorage as exc:
            log.warning("auth: not recorded, storage full: %s", exc)
            return None

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
