"""Per-domain sender-authentication settings and the Junk folders quarantine uses, in
the store (both backends; docs/behaviour.md §5 "sender authentication")."""

from __future__ import annotations

import pytest

from mailstack.store import NotFound, Store


async def test_dmarc_action_per_domain(store: Store) -> None:
    await store.add_domain("example.com", "standard")
    await store.add_domain("other.example", "standard")
    assert await store.dmarc_actions(["example.com", "other.example"]) == {}
    await store.set_dmarc_action("Example.COM", "quarantine")
    await store.set_dmarc_action("other.example", "mark")
    await store.set_dmarc_action("other.example", "reject")  # replaced, not added
    assert await store.dmarc_actions(["example.com", "OTHER.example", "x.example"]) == {
        "example.com": "quarantine", "other.example": "reject"}
    await store.set_dmarc_action("example.com", None)
    assert await store.dmarc_actions(["example.com"]) == {}
    with pytest.raises(NotFound):
        await store.set_dmarc_action("nothosted.example", "mark")
    with pytest.raises(ValueError):
        await store.set_dmarc_action("example.com", "drop")
    assert await store.dmarc_actions(["example.com", "other.example"]) == {
        "other.example": "reject"}
    await store.remove_domain("other.example")  # the setting goes with the domain
    assert await store.dmarc_actions(["other.example"]) == {}


async def test_junk_folders(store: Store) -> None:
    await store.add_domain("example.com", "standard")
    anna = await store.add_address("Anna", "example.com")
    found = await store.junk_folders(["anna@example.com", "nobody@example.com", "bad"])
    junk = await store.get_folder(anna.id, "Junk")
    assert found == {"anna@example.com": (junk.id, "Anna@example.com")}
    await store.delete_folder(anna.id, "Junk")
    assert await store.junk_folders(["anna@example.com"]) == {}
