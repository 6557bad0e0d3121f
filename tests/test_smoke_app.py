import gc
from typing import Any

from mailstack.app import App
from tests.conftest import add_mailbox


async def test_app_starts_and_stops(app: App) -> None:
    assert app.store is not None
    addr = await add_mailbox(app, "anna@example.com")
    folders = [f.name for f in await app.store.list_folders(addr.id)]
    assert sorted(folders) == ["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"]


async def test_startup_heap_frozen_while_running(app_factory: Any) -> None:
    """Start-up objects are kept out of the cyclic GC's full scans while the app runs
    (memory.freeze_heap: no 60-80 ms pauses inside clients' commands) and handed back
    when it stops (many apps start in one test process)."""
    gc.unfreeze()
    app = await app_factory()
    assert gc.get_freeze_count() > 10_000  # modules, classes, compiled SQL...
    assert app.store is not None
    addr = await add_mailbox(app, "bert@example.com")  # the app keeps working
    assert await app.store.get_folder(addr.id, "INBOX") is not None
    await app.stop(grace=0)
    assert gc.get_freeze_count() == 0
