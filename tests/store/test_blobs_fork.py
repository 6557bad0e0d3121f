"""A process forked after its parent stored blobs (``serve --workers``: the supervisor
may have written before it forks its workers) stores blobs too: the directory-fsync
thread pool of the parent is not inherited half-alive (store/blobs.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from mailstack.store.blobs import BlobStore


def test_a_forked_child_stores_blobs(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    async def parent_puts() -> None:  # several at once: the parent's pool has threads
        await asyncio.gather(*(blobs.put(b"parent %d\r\n" % i) for i in range(40)))

    asyncio.run(parent_puts())
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if its own put completes in time
        code = 1
        try:
            blob_id = asyncio.run(blobs.put(b"from the child\r\n"))
            code = 0 if blobs.path_of(blob_id).read_bytes() == b"from the child\r\n" else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)  # hung waiting for the parent's pool threads
    os.waitpid(pid, 0)
    raise AssertionError("the forked child could not store a blob")
