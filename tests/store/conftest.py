"""Fixtures of the store tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mailstack.store import Store


@pytest.fixture
async def sq(tmp_path: Path) -> AsyncIterator[tuple[Store, Any, Any]]:
    """A SQLite store with example.com, anna@example.com and her INBOX."""
    s = Store(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}", tmp_path / "blobs")
    await s.open()
    await s.add_domain("example.com", "standard")
    addr = await s.add_address("anna", "example.com")
    inbox = await s.get_folder(addr.id, "INBOX")
    assert inbox is not None
    yield s, addr, inbox
    await s.close()
