"""Fixtures for the HTTP side: a running app (every listener on an ephemeral port) with
a hosted domain, and an aiohttp client that trusts the test certificate."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from mailstack.app import App
from tests.conftest import add_mailbox

ADDR = "anna@example.com"


@pytest.fixture
async def web_app(app_factory: Callable[..., Any]) -> App:
    app: App = await app_factory(web={"metrics_blob_size_interval_seconds": 0})
    await add_mailbox(app, ADDR)
    return app


@pytest.fixture
async def http(client_ssl: ssl.SSLContext) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=client_ssl)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


def url(app: App, listener: str, path: str) -> str:
    scheme = "https" if listener == "https" else "http"
    return f"{scheme}://127.0.0.1:{app.ports[listener]}{path}"
