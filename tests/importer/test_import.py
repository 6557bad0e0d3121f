"""Import from another provider (docs/behaviour.md §9) against a real Dovecot: every
message arrives once with its flags and internal date, in the mapped folder; a repeated
import copies nothing; failures are clear and fast; a dropped connection resumes; the
target gets a confirmation message with the counts."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

from mailstack.app import App
from mailstack.store import Store
from tests.importer.conftest import (
    SOURCE_PW,
    TARGET,
    Key,
    copied_count,
    fill_source,
    read_mailbox,
    start_job,
    target_client,
    wait_confirmations,
    wait_job,
)
from tests.importer.dovecot import Dovecot

# Where each source folder's mail must end up on our side.
MAPPED = {"INBOX": "INBOX", "Sent": "Sent", "Sent Items": "Sent", "Drafts": "Drafts",
          "Trash": "Trash", "Projects": "Projects", "Projects/2024": "Projects/2024",
          "Projects/2024/Q1": "Projects/2024/Q1", "Grüße & Co": "Grüße & Co"}


async def _source(dovecot: Dovecot, user: str) -> dict[str, Counter[Key]]:
    def work() -> dict[str, Counter[Key]]:
        c = dovecot.client(user)
        try:
            return read_mailbox(c)
        finally:
            c.logout()
    return await asyncio.to_thread(work)


async def _target(app: App) -> dict[str, Counter[Key]]:
    def work() -> dict[str, Counter[Key]]:
        c = target_client(app)
        try:
            return read_mailbox(c)
        finally:
            c.logout()
    return await asyncio.to_thread(work)


def _expected(source: dict[str, Counter[Key]]) -> dict[str, Counter[Key]]:
    out: dict[str, Counter[Key]] = {}
    for folder, msgs in source.items():
        target = MAPPED[folder]
        bucket = out.setdefault(target, Counter())
        for key in msgs:  # the same bytes twice in one target folder: one copy
            bucket[key] = 1 if target == "Sent" else msgs[key]
    return out


def _imported(target: dict[str, Counter[Key]], expected: dict[str, Counter[Key]]
              ) -> dict[str, Counter[Key]]:
    """The target's folders of ``expected``, without our own confirmation messages
    (every message whose bytes are not among the source's)."""
    known = {k[2] for msgs in expected.values() for k in msgs}
    return {folder: Counter({k: v for k, v in target.get(folder, Counter()).items()
                             if k[2] in known}) for folder in expected}


async def test_whole_mailbox_moves_in_once(import_app: App, dovecot: Dovecot,
                                           source_user: str) -> None:
    await asyncio.to_thread(fill_source, dovecot, source_user, count=60,
                            big=10 * 1024 * 1024)
    source = await _source(dovecot, source_user)
    job_id = await start_job(import_app, "127.0.0.1", dovecot.port, source_user, SOURCE_PW)
    job = await wait_job(import_app, job_id)
    assert job.state == "done", job.last_error
    assert len(await wait_confirmations(import_app, 1)) == 1
    expected = _expected(source)
    target = await _target(import_app)
    n_expected = sum(sum(c.values()) for c in expected.values())
    assert job.copied == n_expected  # the Sent/Sent Items twin counted once
    assert _imported(target, expected) == expected
    # nothing but the confirmation message besides the imported ones
    assert sum(map(len, target.values())) == sum(map(len, expected.values())) + 1
    # special-use folders are ours, not new ones
    assert "Sent Items" not in target
    # the password is forgotten when the job ends
    assert job.secret is None
    # every message (imported, and the confirmation) got its SORT/THREAD keys when
    # it was stored (RFC 5256; none is left for the first SORT to compute)
    assert import_app.store is not None
    address = await import_app.store.get_address(TARGET)
    assert address is not None
    for folder in await import_app.store.list_folders(address.id):
        assert await import_app.store.unkeyed_messages(folder.id) == [], folder.name

    # A second import of the same account copies nothing.
    again = await wait_job(import_app, await start_job(
        import_app, "127.0.0.1", dovecot.port, source_user, SOURCE_PW))
    assert again.state == "done" and again.copied == 0 and again.skipped == 0
    assert _imported(await _target(import_app), expected) == expected
    texts = await wait_confirmations(import_app, 2)
    assert sorted(copied_count(t) for t in texts) == [0, n_expected]


async def test_wrong_password_fails_at_once_with_a_clear_error(
        import_app: App, dovecot: Dovecot, source_user: str) -> None:
    job = await wait_job(import_app, await start_job(
        import_app, "127.0.0.1", dovecot.port, source_user, "wrong-password"), timeout=30)
    assert job.state == "failed"
    assert "refused the user name or password" in job.last_error
    assert job.copied == 0 and job.secret is None
    texts = await wait_confirmations(import_app, 1)
    assert len(texts) == 1 and b"stopped" in texts[0]


async def test_unreachable_source_fails_at_once(import_app: App) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    job = await wait_job(import_app, await start_job(
        import_app, "127.0.0.1", port, "someone", "pw"), timeout=30)
    assert job.state == "failed" and "cannot reach 127.0.0.1" in job.last_error


async def test_message_over_the_plan_limit_is_skipped_and_listed(
        import_app: App, dovecot: Dovecot, source_user: str) -> None:
    assert import_app.store is not None
    await import_app.store.set_domain_plan("example.com", "small")  # 200,000 octets
    await asyncio.to_thread(fill_source, dovecot, source_user, count=6, big=300_000)
    job = await wait_job(import_app, await start_job(
        import_app, "127.0.0.1", dovecot.port, source_user, SOURCE_PW))
    assert job.state == "done"
    assert job.skipped == 1
    (folder, _uid, why), = job.skipped_detail
    assert folder == "INBOX" and "larger than the plan's limit" in why
    import hashlib

    from tests.importer.conftest import msg

    big = hashlib.sha256(msg(9005, subject="big", size=300_000)).hexdigest()
    source = await _source(dovecot, source_user)
    assert any(k[2] == big for k in source["INBOX"])  # the source has it...
    target = await _target(import_app)
    assert not any(k[2] == big for k in target["INBOX"])  # ...we do not
    expected = _expected(source)
    expected["INBOX"] = Counter({k: v for k, v in expected["INBOX"].items() if k[2] != big})
    assert _imported(target, expected) == expected
    texts = await wait_confirmations(import_app, 1)
    assert b"larger than the plan's limit" in texts[0]


class _DroppingProxy:
    """A loopback TCP proxy to Dovecot that cuts the first connection after ``cut``
    octets from the server (a provider dropping us mid-folder), then forwards."""

    def __init__(self, port: int, cut: int) -> None:
        self.target, self.cut, self.connections = port, cut, 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        limit = self.cut if self.connections == 1 else None
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       budget: int | None) -> None:
            sent = 0
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if budget is not None and sent + len(data) > budget:
                        dst.write(data[:budget - sent])
                        break
                    dst.write(data)
                    sent += len(data)
                    await dst.drain()
            for x in (dst, w, uw):
                x.close()

        await asyncio.gather(pipe(r, uw, None), pipe(ur, w, limit))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_dropped_connection_is_resumed_without_duplicates(
        import_app: App, dovecot: Dovecot, source_user: str) -> None:
    await asyncio.to_thread(fill_source, dovecot, source_user, count=80)
    source = await _source(dovecot, source_user)
    proxy = _DroppingProxy(dovecot.port, cut=8_000)
    port = await proxy.start()
    try:
        job = await wait_job(import_app, await start_job(
            import_app, "127.0.0.1", port, source_user, SOURCE_PW))
    finally:
        await proxy.close()
    assert proxy.connections >= 2  # it was cut and came back
    assert job.state == "done", job.last_error
    expected = _expected(source)
    assert _imported(await _target(import_app), expected) == expected


async def test_cancelled_job_stops_and_forgets_the_password(import_app: App) -> None:
    assert import_app.store is not None and import_app.importer is not None
    await import_app.importer.stop()  # nothing runs it: it stays queued
    import_app.importer = None
    job_id = await start_job_no_wake(import_app)
    assert await import_app.store.cancel_import_job(job_id)
    job = await import_app.store.get_import_job(job_id)
    assert job is not None and job.state == "cancelled" and job.secret is None
    assert not await import_app.store.cancel_import_job(job_id)  # already ended


async def start_job_no_wake(app: App) -> int:
    from mailstack.importer import secret
    from mailstack.store import NewImportJob

    store: Store | None = app.store
    assert store is not None
    addr = await store.get_address(TARGET)
    assert addr is not None
    (job_id,) = await store.create_import_jobs([NewImportJob(
        addr.id, "127.0.0.1", 1, "none", "x", secret.seal(app.settings.data_dir, "pw"))])
    return job_id


async def test_concurrency_caps_per_node_and_per_source_host(
        app_factory: object) -> None:
    """At most ``max_jobs`` at once, and ``max_jobs_per_host`` against one host: with
    caps 2 and 1, three jobs (two on one host) run as two, on different hosts."""
    from tests.conftest import add_mailbox
    from tests.importer.conftest import FAST, TARGET_PW

    app: App = await app_factory(  # type: ignore[operator]
        importer={**FAST, "max_jobs": 2, "max_jobs_per_host": 1, "timeout_seconds": 30.0})
    await add_mailbox(app, TARGET, TARGET_PW)
    assert app.store is not None and app.importer is not None
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.append(w)  # never greets: the job waits in connect

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        ids = [await start_job(app, host, port, "u", "pw")
               for host in ("127.0.0.1", "127.0.0.1", "localhost")]
        for _ in range(100):
            states = [(await app.store.get_import_job(i)) for i in ids]
            if sum(1 for j in states if j and j.state == "running") == 2:
                break
            await asyncio.sleep(0.05)
        running = [j for j in states if j and j.state == "running"]
        assert sorted(j.host for j in running) == ["127.0.0.1", "localhost"]
        assert [j.state for j in states if j].count("queued") == 1
    finally:
        await app.importer.stop()
        app.importer = None
        for w in accepted:
            w.close()
        server.close()
