from mailstack.app import App
from tests.conftest import add_mailbox


async def test_app_starts_and_stops(app: App) -> None:
    assert app.store is not None
    addr = await add_mailbox(app, "anna@example.com")
    folders = [f.name for f in await app.store.list_folders(addr.id)]
    assert sorted(folders) == ["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"]
