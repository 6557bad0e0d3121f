"""Shared fixtures: both store backends, a running app on ephemeral ports, TLS.

Every test that takes ``backend`` (directly or through ``store``/``app``) runs on
SQLite and on PostgreSQL. PostgreSQL comes from ``MAILSTACK_TEST_PG`` (default: the
local server, user postgres, database test); each test gets its own schema. Outside CI
the PostgreSQL half is skipped, saying why, when no server answers; in CI (``CI=true``)
it fails instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from mailstack.app import App
from mailstack.config import Settings, settings_from_dict
from mailstack.store import Store
from mailstack.tls import ensure_self_signed

PG_DSN = os.environ.get("MAILSTACK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
_pg_state: dict[str, Any] = {}


def _pg_available() -> str | None:
    """None if PostgreSQL answers, else the reason."""
    if "reason" not in _pg_state:
        import asyncpg

        async def probe() -> None:
            conn = await asyncpg.connect(PG_DSN, timeout=5)
            await conn.close()

        try:
            asyncio.run(probe())
            _pg_state["reason"] = None
        except Exception as exc:  # any failure: not reachable
            _pg_state["reason"] = f"PostgreSQL at {PG_DSN} not reachable: {exc!r}"
    return _pg_state["reason"]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        reason = _pg_available()
        if reason:
            if os.environ.get("CI") == "true":
                pytest.fail(f"{reason} (CI must run the PostgreSQL tests)")
            pytest.skip(reason)
    return str(request.param)


@pytest.fixture
async def db_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'mailstack.db'}"
        return
    import asyncpg

    schema = "t_" + uuid.uuid4().hex[:16]
    conn = await asyncpg.connect(PG_DSN)
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    await conn.close()
    base = PG_DSN.replace("postgresql://", "postgresql+asyncpg://", 1)
    yield f"{base}?schema={schema}"
    conn = await asyncpg.connect(PG_DSN)
    await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    await conn.close()


@pytest.fixture
async def store(db_url: str, tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(db_url, tmp_path / "blobs")
    await s.open()
    yield s
    await s.close()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    ensure_self_signed(cert, key, "mail.example.net")
    return cert, key


@pytest.fixture
def client_ssl(tls_files: tuple[Path, Path]) -> ssl.SSLContext:
    """A client context trusting the test certificate (host name mail.example.net,
    also valid for localhost and 127.0.0.1)."""
    ctx = ssl.create_default_context(cafile=str(tls_files[0]))
    return ctx


def make_settings(tmp_path: Path, db_url: str, tls_files: tuple[Path, Path],
                  **sections: dict[str, Any]) -> Settings:
    """Settings for a test server: loopback, ephemeral ports, fast Argon2, plaintext
    auth allowed on loopback (tests that check refusal turn it off)."""
    listeners = {name: {"address": "127.0.0.1", "port": 0}
                 for name in ("smtp", "submissions", "submission", "imaps", "imap",
                              "pop3s", "pop3", "https", "http", "metrics")}
    data: dict[str, Any] = {
        "server": {"hostname": "mail.example.net", "data_dir": str(tmp_path / "data"),
                   "database_url": db_url, "allow_plaintext_auth_on_loopback": True,
                   "shutdown_grace_seconds": 0.5},
        "tls": {"cert_file": str(tls_files[0]), "key_file": str(tls_files[1])},
        "listeners": listeners,
        "auth": {"argon2_time_cost": 1, "argon2_memory_kib": 64, "argon2_parallelism": 1,
                 "max_delay_seconds": 0.2},
        # No delivery to the internet unless a test asks (tests/outbound turn it on
        # with a fake resolver: never a real DNS query).
        "outbound": {"enabled": False},
        # No SPF/DKIM/DMARC DNS either (tests/smtp/test_sender_auth.py turns it on
        # against the loopback DNS rig).
        "sender_auth": {"enabled": False},
    }
    for section, values in sections.items():
        merged = dict(data.get(section, {}))
        for k, v in values.items():
            if isinstance(v, dict) and isinstance(merged.get(k), dict):
                merged[k] = {**merged[k], **v}
            else:
                merged[k] = v
        data[section] = merged
    return settings_from_dict(data)


@pytest.fixture
def settings_factory(tmp_path: Path, db_url: str, tls_files: tuple[Path, Path]
                     ) -> Callable[..., Settings]:
    def factory(**sections: dict[str, Any]) -> Settings:
        return make_settings(tmp_path, db_url, tls_files, **sections)
    return factory


@pytest.fixture
async def app_factory(settings_factory: Callable[..., Settings]
                      ) -> AsyncIterator[Callable[..., Any]]:
    """``await app_factory(**sections)`` starts an App; all are stopped at teardown."""
    started: list[App] = []

    async def factory(clock: Callable[[], float] | None = None,
                      **sections: dict[str, Any]) -> App:
        kwargs: dict[str, Any] = {"clock": clock} if clock else {}
        app = App(settings_factory(**sections), **kwargs)
        await app.start()
        started.append(app)
        return app

    yield factory
    for app in started:
        await app.stop(grace=0)


@pytest.fixture
async def app(app_factory: Callable[..., Any]) -> App:
    result: App = await app_factory()
    return result


async def add_mailbox(app: App, address: str, password: str = "secret", *,
                      plan: str = "standard", kind: str = "mailbox") -> Any:
    """Create the domain (if needed) and an address with ``password``."""
    assert app.store is not None and app.services is not None
    local, _, domain = address.rpartition("@")
    if await app.store.get_domain(domain) is None:
        await app.store.add_domain(domain, plan)
    pw_hash = await app.services.passwords.hash(password)
    return await app.store.add_address(local, domain, kind=kind, password_hash=pw_hash)


def replace(settings: Settings, **kw: Any) -> Settings:
    return dataclasses.replace(settings, **kw)
