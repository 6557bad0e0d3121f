"""Authentication policy without sockets: the login guard with a fake clock, and the
authenticator against a real store (both backends)."""

from __future__ import annotations

import dataclasses

import pytest

from mailstack.config import AuthSettings
from mailstack.policy.auth import (
    Authenticator,
    GuardLock,
    GuardVerdict,
    LoginGuard,
    client_network,
    decide,
    is_loopback,
    locks_after,
    may_send_password,
)
from mailstack.policy.passwords import Passwords
from mailstack.store import Store, ThrottleFacts


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


SETTINGS = AuthSettings(argon2_time_cost=1, argon2_memory_kib=64, argon2_parallelism=1,
                        slow_after_failures=3, lock_after_failures=5,
                        failure_window_seconds=600, lockout_seconds=300, max_delay_seconds=2)


def test_decide_pair_lock_network_slow() -> None:
    """Pure decisions: the failed pair is refused, its network only slowed."""
    now = 1000.0
    assert decide(ThrottleFacts(), SETTINGS, now) == GuardVerdict(True, 0.0)
    slowed = decide(ThrottleFacts(net_failures=4, net_addresses=1), SETTINGS, now)
    assert slowed.allowed and 0 < slowed.delay <= 2
    locked = decide(ThrottleFacts(pair_failures=5, pair_locked_until=now + 300,
                                  net_failures=5, net_addresses=1), SETTINGS, now)
    assert not locked.allowed and locked.retry_at == now + 300
    assert decide(ThrottleFacts(net_locked_until=now + 1), SETTINGS, now).allowed is False
    attacked = decide(ThrottleFacts(addr_failures=5), SETTINGS, now)
    assert attacked.allowed and attacked.delay > 0  # the real user elsewhere: slowed
    # locks: the pair at lock_after_failures; the network only past the spray threshold
    assert locks_after(ThrottleFacts(pair_failures=5, net_failures=5, net_addresses=1),
                       SETTINGS, "n", "a", now) == [GuardLock("n", "a", now + 300)]
    spray = ThrottleFacts(pair_failures=1, net_failures=SETTINGS.network_lock_after_failures,
                          net_addresses=SETTINGS.network_lock_min_addresses)
    assert locks_after(spray, SETTINGS, "n", "a", now) == [GuardLock("n", "*", now + 300)]
    one_address = ThrottleFacts(pair_failures=4, net_failures=1000, net_addresses=1)
    assert locks_after(one_address, SETTINGS, "n", "a", now) == []


async def test_guard_slows_then_refuses_pair_only(store: Store) -> None:
    clock = Clock()
    g = LoginGuard(SETTINGS, store, clock)
    net, addr = "198.51.100.0/24", "anna@example.com"
    delays = []
    for _ in range(5):
        v = await g.check(net, addr)
        assert v.allowed
        delays.append(v.delay)
        await g.failure(net, addr)
    assert delays[:3] == [0, 0, 0] and 0 < delays[3] < delays[4] <= 2
    refused = await g.check(net, addr)
    assert not refused.allowed and refused.retry_at == clock.now + 300
    # the same network is only slowed for other addresses (no collateral lockout)
    colleague = await g.check(net, "bob@example.com")
    assert colleague.allowed and colleague.delay > 0
    # a clean network can still log in to the attacked address
    assert (await g.check("203.0.113.0/24", addr)).allowed
    # the state is in the store: a new guard (a restart, another node) sees it
    assert not (await LoginGuard(SETTINGS, store, clock).check(net, addr)).allowed
    clock.now += 301
    assert (await g.check(net, addr)).allowed


async def test_guard_spray_locks_the_network(store: Store) -> None:
    clock = Clock()
    s = dataclasses.replace(SETTINGS, network_lock_after_failures=12,
                            network_lock_min_addresses=4)
    g = LoginGuard(s, store, clock)
    net = "198.51.100.0/24"
    for i in range(12):
        assert (await g.check(net, f"user{i % 4}@example.com")).allowed
        await g.failure(net, f"user{i % 4}@example.com")
    refused = await g.check(net, "untouched@example.com")
    assert not refused.allowed and refused.retry_at == clock.now + 300
    assert (await g.check("203.0.113.0/24", "untouched@example.com")).allowed
    assert await store.unlock_logins(network=net) > 0
    assert (await g.check(net, "untouched@example.com")).allowed


async def test_guard_address_attack_from_many_networks(store: Store) -> None:
    clock = Clock()
    g = LoginGuard(SETTINGS, store, clock)
    addr = "anna@example.com"
    for i in range(5):
        await g.failure(f"10.0.{i}.0/24", addr)
    await g.failure("10.0.1.0/24", addr)
    for _ in range(4):
        await g.failure("10.0.1.0/24", addr)
    assert not (await g.check("10.0.1.0/24", addr)).allowed  # failed against it: refused
    clean = await g.check("192.0.2.0/24", addr)  # the real user elsewhere
    assert clean.allowed and clean.delay > 0


def test_password_transport_rules() -> None:
    assert may_send_password(True, "198.51.100.7", False)
    assert not may_send_password(False, "198.51.100.7", True)
    assert not may_send_password(False, "127.0.0.1", False)
    assert may_send_password(False, "127.0.0.1", True)
    assert may_send_password(False, "::1", True)
    assert is_loopback("::ffff:127.0.0.1") and not is_loopback("garbage")
    assert client_network("198.51.100.77") == "198.51.100.0/24"
    assert client_network("2001:db8::1") == "2001:db8::/64"


@pytest.fixture
async def auth(store: Store) -> tuple[Authenticator, Store, Clock]:
    clock = Clock()
    pw = Passwords(1, 64, 1)
    await store.add_domain("example.com", "standard")
    await store.add_address("anna", "example.com", password_hash=pw.hash_sync("right"))
    return Authenticator(store, pw, LoginGuard(SETTINGS, store, clock), SETTINGS), store, clock


async def test_authenticate_outcomes(auth: tuple[Authenticator, Store, Clock]) -> None:
    a, store, _ = auth
    ok = await a.authenticate("Anna@Example.com", "right", client_ip="192.0.2.1",
                              protocol="imap")
    assert ok.ok and ok.email == "anna@example.com"
    assert not ok.new_network  # the first login sets the baseline
    again = await a.authenticate("anna@example.com", "right", client_ip="192.0.2.9",
                                 protocol="imap")
    assert again.ok and not again.new_network  # same /24
    elsewhere = await a.authenticate("anna@example.com", "right", client_ip="203.0.113.1",
                                     protocol="imap")
    assert elsewhere.ok and elsewhere.new_network
    wrong = await a.authenticate("anna@example.com", "wrong", client_ip="192.0.2.1",
                                 protocol="smtp")
    unknown = await a.authenticate("nobody@example.com", "right", client_ip="192.0.2.1",
                                   protocol="smtp")
    assert wrong.status == unknown.status == "failed"
    other_authz = await a.authenticate("anna@example.com", "right", client_ip="192.0.2.1",
                                       protocol="smtp", authzid="bob@example.com")
    assert other_authz.status == "failed"
    events = [e.event for e in await store.list_activity("anna@example.com")]
    assert events.count("login_ok") == 3 and events.count("login_fail") == 2


async def test_app_passwords_and_app_only(auth: tuple[Authenticator, Store, Clock]) -> None:
    a, store, _ = auth
    addr = await store.get_address("anna@example.com")
    assert addr is not None
    await store.add_app_password(addr.id, "phone", a.passwords.hash_sync("app-secret"))
    assert (await a.authenticate("anna@example.com", "app-secret", client_ip="192.0.2.1",
                                 protocol="imap")).ok
    await store.set_app_passwords_only(addr.id, True)
    assert not (await a.authenticate("anna@example.com", "right", client_ip="192.0.2.2",
                                     protocol="imap")).ok
    assert (await a.authenticate("anna@example.com", "app-secret", client_ip="192.0.2.3",
                                 protocol="imap")).ok
    await store.revoke_app_password(addr.id, "phone")
    assert not (await a.authenticate("anna@example.com", "app-secret", client_ip="192.0.2.4",
                                     protocol="imap")).ok


async def test_throttle_refuses_then_other_network_works(
        auth: tuple[Authenticator, Store, Clock]) -> None:
    a, store, _ = auth
    for _ in range(5):
        r = await a.authenticate("anna@example.com", "bad", client_ip="198.51.100.5",
                                 protocol="smtp")
        assert r.status == "failed"
    r = await a.authenticate("anna@example.com", "right", client_ip="198.51.100.5",
                             protocol="smtp")
    assert r.status == "refused" and "try again after" in r.refusal_text()
    assert (await a.authenticate("anna@example.com", "right", client_ip="203.0.113.5",
                                 protocol="smtp")).ok
    assert "login_refused" in [e.event for e in await store.list_activity("anna@example.com")]
