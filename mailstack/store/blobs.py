"""Immutable message blobs named by their SHA-256, on the local file system.

Write order (HOSTILE.md, RFC 5321 §6.1): bytes -> temp file in ``tmp/`` -> fsync ->
rename into ``ab/cd/<hash>`` -> fsync the directory. Only after that may a database row
refer to the blob, so a row never points at a half-written file. A crash leaves at
worst a temp file (swept at start) or an unreferenced blob (swept by ``gc``).

All file work runs in a thread: nothing blocks the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from pathlib import Path

_HEX = re.compile(r"^[0-9a-f]{64}$")


class BlobError(Exception):
    """The blob could not be written or read (disk full, I/O error, bad id)."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path_of(self, blob_id: str) -> Path:
        if not _HEX.match(blob_id):  # never build a path from anything but a hash
            raise BlobError(f"bad blob id {blob_id!r}")
        return self.root / blob_id[:2] / blob_id[2:4] / blob_id

    def sweep_temp(self) -> int:
        """Remove temp files left by a crash; returns how many."""
        n = 0
        for p in self.tmp.iterdir():
            p.unlink(missing_ok=True)
            n += 1
        return n

    def _put_sync(self, data: bytes) -> str:
        blob_id = hashlib.sha256(data).hexdigest()
        final = self.path_of(blob_id)
        if final.exists():
            return blob_id  # content-addressed: identical bytes already durable
        tmp = self.tmp / f"{blob_id}.{os.getpid()}.{time.monotonic_ns()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise BlobError(f"cannot store message: {exc.strerror}") from exc
        return blob_id

    async def put(self, data: bytes) -> str:
        """Store ``data`` durably; returns its id once it is on disk."""
        return await asyncio.to_thread(self._put_sync, data)

    def get_sync(self, blob_id: str) -> bytes:
        try:
            return self.path_of(blob_id).read_bytes()
        except OSError as exc:
            raise BlobError(f"cannot read blob {blob_id}: {exc.strerror}") from exc

    async def get(self, blob_id: str) -> bytes:
        return await asyncio.to_thread(self.get_sync, blob_id)

    def delete_sync(self, blob_id: str) -> None:
        self.path_of(blob_id).unlink(missing_ok=True)

    def all_ids_older_than(self, age_seconds: float) -> list[str]:
        cutoff = time.time() - age_seconds
        found = []
        for p in self.root.glob("??/??/*"):
            if _HEX.match(p.name) and p.stat().st_mtime < cutoff:
                found.append(p.name)
        return found
