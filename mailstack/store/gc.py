"""Blob garbage collection: remove message files no row refers to any more.

Messages are rows over shared immutable blobs; expunging, deleting a folder or removing
an address deletes rows, never files. ``collect_garbage`` removes the files nothing
refers to (no message, no queued delivery).

Invariant: a blob is written (and fsynced) BEFORE the transaction that refers to it
commits, so a young unreferenced blob may be one whose transaction is still running.
Only blobs whose file is older than ``min_age`` are candidates, and ``BlobStore.put``
refreshes the file time when identical bytes arrive again, so a blob about to be
referenced anew is young again. The check and the unlink happen per blob, the age being
checked once more just before the unlink.
"""

from __future__ import annotations

import asyncio
import os
import time

from sqlalchemy import select

from . import schema as t
from .base import StoreBase


class GcMixin(StoreBase):
    async def referenced_blobs(self, blob_ids: list[str]) -> set[str]:
        found: set[str] = set()
        async with self._read() as conn:
            for i in range(0, len(blob_ids), 500):
                chunk = blob_ids[i:i + 500]
                for table in (t.messages, t.outbound_queue):
                    rows = await conn.execute(select(table.c.blob_id).distinct().where(
                        table.c.blob_id.in_(chunk)))
                    found.update(r.blob_id for r in rows)
        return found

    async def collect_garbage(self, min_age: float = 3600.0) -> int:
        """Delete unreferenced blobs older than ``min_age`` seconds; returns how many."""
        candidates = await asyncio.to_thread(self.blobs.all_ids_older_than, min_age)
        removed = 0
        for i in range(0, len(candidates), 500):
            chunk = candidates[i:i + 500]
            live = await self.referenced_blobs(chunk)
            dead = [b for b in chunk if b not in live]
            removed += await asyncio.to_thread(self._unlink_old, dead, min_age)
        return removed

    def _unlink_old(self, blob_ids: list[str], min_age: float) -> int:
        cutoff = time.time() - min_age
        n = 0
        for blob_id in blob_ids:
            path = self.blobs.path_of(blob_id)
            try:
                if path.stat().st_mtime >= cutoff:
                    continue  # touched again since the scan: about to be referenced
                os.unlink(path)
                n += 1
            except FileNotFoundError:
                continue
        return n
